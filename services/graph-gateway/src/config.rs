//! Every limit the gateway enforces, as a named constant, and the few that a deployment (or a
//! simulation scenario) may change, gathered in [`GatewayConfig`].

use std::sync::Arc;
use std::time::Duration;

use crate::error::GatewayError;

/// Analyses the registry remembers by default (see [`GatewayConfig::registry_capacity`]).
pub const REGISTRY_CAPACITY_DEFAULT: usize = 10_000;
/// Bytes of events the registry holds by default (see [`GatewayConfig::registry_bytes_max`]):
/// 10,000 analyses of about 13 KiB of events each.
pub const REGISTRY_BYTES_MAX_DEFAULT: usize = 128 * 1024 * 1024;
/// Unacknowledged deliveries per bridge consumer by default.
pub const BRIDGE_PREFETCH_DEFAULT: u16 = 32;
/// First pause before re-consuming an event queue; doubles up to `reconnect_backoff_max`.
pub const RECONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
/// Longest pause between attempts to re-consume an event queue, by default.
pub const RECONNECT_BACKOFF_MAX_DEFAULT: Duration = Duration::from_secs(10);
/// How long `analysisEvents` / `analysisStarted` wait for a missing `AnalysisStarted` once
/// `AnalysisCompleted` is known, by default. The orchestrator always publishes Started first,
/// but the two events travel on separate queues and a Started can be dead-lettered as poison;
/// without this bound such a subscription would hang forever.
pub const STARTED_WAIT_MAX_DEFAULT: Duration = Duration::from_secs(60);
/// Age after which an analysis that never completed may be evicted to make room, by default.
/// Its command may have been dead-lettered; without this its slot would leak forever.
pub const INCOMPLETE_TTL_DEFAULT: Duration = Duration::from_secs(60 * 60);
/// How long a graceful shutdown waits for open WebSockets to close, by default.
pub const SHUTDOWN_GRACE_DEFAULT: Duration = Duration::from_secs(5);

/// Largest HTTP request body; larger bodies get 413.
pub const HTTP_BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest WebSocket message (and frame) a client may send.
pub const WS_MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Active subscriptions on one WebSocket; async-graphql itself has no cap.
pub const WS_SUBSCRIPTIONS_MAX: usize = 16;
/// Deepest query selection.
pub const QUERY_DEPTH_MAX: usize = 8;
/// Most complex query (one point per field by default).
pub const QUERY_COMPLEXITY_MAX: usize = 256;
/// Most directives on one field.
pub const QUERY_DIRECTIVES_MAX: usize = 8;
/// Events buffered for the subscriptions without an `analysisId`; a subscriber that falls this
/// far behind skips to the oldest retained event (and the gap is logged).
pub const LIVE_EVENTS_CAPACITY: usize = 1024;
/// Longest caller identity (`X-Forwarded-User`) accepted.
pub const CALLER_BYTES_MAX: usize = 256;
/// Open WebSockets by default; one more is refused with 503 before the upgrade.
pub const WS_CONNECTIONS_MAX_DEFAULT: usize = 10_000;
/// How long a new socket may take to send `connection_init` by default; then 4408.
pub const WS_INIT_TIMEOUT_DEFAULT: Duration = Duration::from_secs(5);
/// Server WebSocket ping interval by default: under Kong's and nginx's 60 s idle cut, and it
/// finds dead peers (a failed write ends the socket).
pub const WS_KEEPALIVE_DEFAULT: Duration = Duration::from_secs(25);
/// Longest a single WebSocket write may take before the peer is considered stuck.
pub const WS_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// JWT validation for the gateway itself (defence in depth behind the auth proxy): with it,
/// every HTTP request and WebSocket needs a valid bearer token and the caller is its `sub`;
/// without it, the caller is the `X-Forwarded-User` header (trusting the proxy in front).
#[derive(Clone)]
pub struct JwtAuth(pub Arc<jwt_auth::Verifier>);

impl std::fmt::Debug for JwtAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("JwtAuth").field(self.0.config()).finish()
    }
}

impl PartialEq for JwtAuth {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for JwtAuth {}

/// What a deployment may tune. `Default` is production.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// Most analyses remembered; when full, the oldest completed ones are evicted first, then
    /// incomplete ones older than `incomplete_ttl`; otherwise `requestAnalysis` answers
    /// `OVERLOADED`. At least 1.
    pub registry_capacity: usize,
    /// Most bytes of recorded events held (each event up to the contract's 64 KiB). Past it,
    /// completed analyses are evicted, oldest first, and while it is still exceeded
    /// `requestAnalysis` answers `OVERLOADED`. At least 1.
    pub registry_bytes_max: usize,
    /// `None`: consume the contract's fixed event queues (`graph.subs.*`), right for one
    /// gateway. `Some(instance)`: declare and consume `graph.subs.*.<instance>`, each bound to the
    /// fanout exchanges, so that every replica gets every event (with the fixed names, replicas
    /// compete and each event reaches only one of them).
    pub instance_queues: Option<String>,
    /// Unacknowledged deliveries per event-queue consumer (`basic.qos`). At least 1.
    pub bridge_prefetch: u16,
    /// Longest pause between attempts to re-consume an event queue.
    pub reconnect_backoff_max: Duration,
    /// How long an ordered subscription waits for a missing `AnalysisStarted` once
    /// `AnalysisCompleted` is known; then it delivers `AnalysisCompleted` alone.
    pub started_wait_max: Duration,
    /// Age after which an analysis that never completed may be evicted to make room.
    pub incomplete_ttl: Duration,
    /// Active subscriptions per WebSocket; one more closes the socket with 4400.
    pub ws_subscriptions_max: usize,
    /// How long a graceful shutdown waits for open WebSockets to close.
    pub shutdown_grace: Duration,
    /// Bearer-token validation; `None` trusts `X-Forwarded-User` (see [`JwtAuth`]).
    pub auth: Option<JwtAuth>,
    /// Open WebSockets at most; more get 503 before the upgrade. At least 1.
    pub ws_connections_max: usize,
    /// How long a socket may take to send `connection_init` (then close 4408).
    pub ws_init_timeout: Duration,
    /// Interval of server pings on idle and busy sockets alike.
    pub ws_keepalive: Duration,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            registry_capacity: REGISTRY_CAPACITY_DEFAULT,
            registry_bytes_max: REGISTRY_BYTES_MAX_DEFAULT,
            instance_queues: None,
            bridge_prefetch: BRIDGE_PREFETCH_DEFAULT,
            reconnect_backoff_max: RECONNECT_BACKOFF_MAX_DEFAULT,
            started_wait_max: STARTED_WAIT_MAX_DEFAULT,
            incomplete_ttl: INCOMPLETE_TTL_DEFAULT,
            ws_subscriptions_max: WS_SUBSCRIPTIONS_MAX,
            shutdown_grace: SHUTDOWN_GRACE_DEFAULT,
            auth: None,
            ws_connections_max: WS_CONNECTIONS_MAX_DEFAULT,
            ws_init_timeout: WS_INIT_TIMEOUT_DEFAULT,
            ws_keepalive: WS_KEEPALIVE_DEFAULT,
        }
    }
}

impl GatewayConfig {
    /// Refuses settings that would break a limit rule (an unbounded or empty buffer).
    pub fn validate(&self) -> Result<(), GatewayError> {
        let refuse = |why: &str| Err(GatewayError::Config(why.into()));
        if self.registry_capacity == 0 {
            return refuse("registry_capacity must be at least 1");
        }
        if self.registry_bytes_max == 0 {
            return refuse("registry_bytes_max must be at least 1");
        }
        if self.bridge_prefetch == 0 {
            return refuse("bridge_prefetch must be at least 1 (0 means unbounded in AMQP)");
        }
        if self.reconnect_backoff_max < RECONNECT_BACKOFF_MIN {
            return refuse("reconnect_backoff_max must be at least 100 ms");
        }
        if self.ws_connections_max == 0 {
            return refuse("ws_connections_max must be at least 1");
        }
        if self.ws_init_timeout.is_zero() || self.ws_keepalive.is_zero() {
            return refuse("ws_init_timeout and ws_keepalive must be positive");
        }
        if self.ws_subscriptions_max == 0 {
            return refuse("ws_subscriptions_max must be at least 1");
        }
        Ok(())
    }
}
