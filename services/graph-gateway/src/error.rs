//! The gateway's errors: [`GatewayError`] for starting and running the service, and the GraphQL
//! error codes (`extensions.code`) clients can act on.

use ports::BusError;
use thiserror::Error;

/// Why the gateway could not start or stopped serving.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// A setting breaks a limit rule.
    #[error("invalid gateway configuration: {0}")]
    Config(String),
    /// The broker refused or could not take the gateway's topology.
    #[error("declaring the gateway topology failed: {0}")]
    Declare(#[source] BusError),
    /// The bridge could not start consuming an event queue.
    #[error("consuming queue {queue:?} failed: {source}")]
    Consume {
        /// The event queue.
        queue: String,
        /// What the bus said.
        #[source]
        source: BusError,
    },
    /// The HTTP server failed.
    #[error("serving HTTP failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// `extensions.code` values of GraphQL errors the gateway returns.
pub mod code {
    /// The input breaks a rule of the schema (the message says which).
    pub const BAD_USER_INPUT: &str = "BAD_USER_INPUT";
    /// The request is not allowed on this transport (a mutation over WebSocket).
    pub const BAD_REQUEST: &str = "BAD_REQUEST";
    /// No such analysis for this caller (unknown, or someone else's).
    pub const NOT_FOUND: &str = "NOT_FOUND";
    /// The broker did not take the command; nothing was requested. Retrying may succeed.
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    /// The command was sent but the broker never confirmed it: the analysis may run or not.
    /// `extensions.analysisId` names it, and the gateway keeps it registered, so the caller can
    /// follow or query it; a retry requests a second analysis.
    pub const UNCONFIRMED: &str = "UNCONFIRMED";
    /// The gateway remembers as many running analyses as it may. Retry later.
    pub const OVERLOADED: &str = "OVERLOADED";
    /// A subscription without `analysisId` fell too far behind the events (more than
    /// `LIVE_EVENTS_CAPACITY` recorded while it had not taken them): it ends with this error
    /// rather than skip events in silence. Subscribe again, and query to catch up.
    pub const LAGGED: &str = "LAGGED";
    /// The gateway stopped following the analysis before its last event (it made room for
    /// newer ones once the analysis had waited past `incomplete_ttl`): the subscription ends
    /// with this error, and `analysis(id)` is null from then on.
    pub const EVICTED: &str = "EVICTED";
    /// No bearer token (JWT auth on).
    pub const UNAUTHENTICATED: &str = "UNAUTHENTICATED";
    /// The bearer token is invalid, or the identity headers disagree with it.
    pub const FORBIDDEN: &str = "FORBIDDEN";
}

/// A GraphQL error carrying `extensions.code`.
pub(crate) fn graphql_error(
    code: &'static str,
    message: impl Into<String>,
) -> async_graphql::Error {
    use async_graphql::ErrorExtensions;
    async_graphql::Error::new(message).extend_with(|_, extensions| extensions.set("code", code))
}

/// A GraphQL error about one analysis: `extensions.code` and `extensions.analysisId`.
pub(crate) fn analysis_error(
    code: &'static str,
    analysis_id: uuid::Uuid,
    message: impl Into<String>,
) -> async_graphql::Error {
    use async_graphql::ErrorExtensions;
    async_graphql::Error::new(message).extend_with(|_, extensions| {
        extensions.set("code", code);
        extensions.set("analysisId", analysis_id.to_string());
    })
}
