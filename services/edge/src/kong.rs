//! The Kong role, as configured in `ci/kong.yml`: one route, `/graphql` (HTTP and WebSocket), to
//! the auth proxy, with
//!
//! - upstream headers `X-Forwarded-For` (appended), `X-Forwarded-Proto`, `X-Forwarded-Host`,
//!   `X-Forwarded-Port`, `X-Forwarded-Path`, `X-Real-IP` and `X-Kong-Request-Id` (also on the
//!   response, as Kong's default `headers` setting does);
//! - per-client rate limiting (the `rate-limiting` plugin, `policy: local`, `limit_by: ip`):
//!   **429** `{"message":"API rate limit exceeded"}` with `Retry-After` and `RateLimit-*`;
//!   a WebSocket handshake counts as one request;
//! - upstream timeouts (`connect_timeout`, `read_timeout`): **502** when the upstream cannot be
//!   reached, **504** when it does not answer in time; `read_timeout` also cuts a WebSocket
//!   tunnel idle that long (the gateway's pings keep live ones open);
//! - a body size limit (the `request-size-limiting` plugin): **413**
//!   `{"message":"Request size limit exceeded"}`;
//! - anything but `/graphql`: **404** `{"message":"no Route matched with those values"}`.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use crate::proxy::{self, ProxyError, Upstream};

/// Kong's service timeout default (`connect_timeout`, `read_timeout`).
pub const UPSTREAM_TIMEOUT_DEFAULT: Duration = Duration::from_secs(60);
/// Largest request body by default (the gateway's own limit, so it never sees what it refuses).
pub const BODY_BYTES_MAX_DEFAULT: usize = 64 * 1024;
/// Requests per client per window by default.
pub const RATE_LIMIT_DEFAULT: u32 = 100;
/// Rate-limit window by default (Kong's `second` limit).
pub const RATE_WINDOW_DEFAULT: Duration = Duration::from_secs(1);
/// Most clients tracked by the rate limiter; past it, expired windows are swept, and if none
/// has expired the new client is refused (429) rather than the map growing.
pub const RATE_CLIENTS_MAX: usize = 100_000;
/// The one route.
pub const ROUTE: &str = "/graphql";

/// What the edge does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// The auth proxy, `host:port`.
    pub upstream: String,
    /// Longest wait for the upstream connection.
    pub connect_timeout: Duration,
    /// Longest wait for the upstream's response headers.
    pub read_timeout: Duration,
    /// Largest request body.
    pub body_bytes_max: usize,
    /// Requests per client IP per `rate_window`.
    pub rate_limit: u32,
    /// The rate-limit window.
    pub rate_window: Duration,
    /// Prefix of request ids (e.g. the instance name), followed by a counter.
    pub request_id_prefix: String,
}

impl EdgeConfig {
    /// Kong's defaults, forwarding to `upstream`.
    pub fn new(upstream: impl Into<String>) -> EdgeConfig {
        EdgeConfig {
            upstream: upstream.into(),
            connect_timeout: UPSTREAM_TIMEOUT_DEFAULT,
            read_timeout: UPSTREAM_TIMEOUT_DEFAULT,
            body_bytes_max: BODY_BYTES_MAX_DEFAULT,
            rate_limit: RATE_LIMIT_DEFAULT,
            rate_window: RATE_WINDOW_DEFAULT,
            request_id_prefix: "edge".into(),
        }
    }
}

struct Window {
    started: Instant,
    count: u32,
}

/// Fixed-window counters per client IP (Kong's `local` policy).
struct RateLimiter {
    limit: u32,
    window: Duration,
    clients: Mutex<BTreeMap<IpAddr, Window>>,
}

/// A refused request: how long until the window resets.
struct RateLimited(Duration);

impl RateLimiter {
    /// Counts one request; `Ok(remaining)` or `Err` with the time until the window resets.
    fn admit(&self, ip: IpAddr, now: Instant) -> Result<u32, RateLimited> {
        let mut clients = self.clients.lock().expect("rate limiter poisoned");
        if !clients.contains_key(&ip) && clients.len() >= RATE_CLIENTS_MAX {
            let window = self.window;
            clients.retain(|_, w| now.duration_since(w.started) < window);
            if clients.len() >= RATE_CLIENTS_MAX {
                return Err(RateLimited(self.window));
            }
        }
        let w = clients.entry(ip).or_insert(Window {
            started: now,
            count: 0,
        });
        if now.duration_since(w.started) >= self.window {
            *w = Window {
                started: now,
                count: 0,
            };
        }
        if w.count >= self.limit {
            return Err(RateLimited(
                self.window.saturating_sub(now.duration_since(w.started)),
            ));
        }
        w.count += 1;
        Ok(self.limit - w.count)
    }
}

struct EdgeState<N> {
    config: EdgeConfig,
    upstream: Upstream<N>,
    limiter: RateLimiter,
    requests: AtomicU64,
    /// The port we listen on, for `X-Forwarded-Port`.
    port: u16,
}

/// The edge's HTTP surface; `listen_port` is reported upstream as `X-Forwarded-Port`. Serve it
/// with [`crate::auth_proxy::serve`] (it needs the peer address).
pub fn router<N: ports::Net>(net: N, config: EdgeConfig, listen_port: u16) -> Router {
    let state = Arc::new(EdgeState {
        upstream: Upstream {
            net,
            authority: config.upstream.clone(),
            connect_timeout: config.connect_timeout,
            read_timeout: config.read_timeout,
            // As Kong's nginx proxy_read_timeout: between WebSocket frames too.
            tunnel_idle_timeout: Some(config.read_timeout),
        },
        limiter: RateLimiter {
            limit: config.rate_limit,
            window: config.rate_window,
            clients: Mutex::new(BTreeMap::new()),
        },
        requests: AtomicU64::new(0),
        port: listen_port,
        config,
    });
    Router::new().fallback(route::<N>).with_state(state)
}

fn kong_message(status: StatusCode, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        Body::from(serde_json::json!({ "message": message }).to_string()),
    )
        .into_response()
}

fn routed(path: &str) -> bool {
    path == ROUTE || path.starts_with("/graphql/")
}

async fn route<N: ports::Net>(
    State(state): State<Arc<EdgeState<N>>>,
    ConnectInfo(crate::auth_proxy::PeerAddr(peer)): ConnectInfo<crate::auth_proxy::PeerAddr>,
    request: Request,
) -> Response {
    let started = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
    let n = state.requests.fetch_add(1, Ordering::Relaxed) + 1;
    let request_id = format!("{}-{n:08x}", state.config.request_id_prefix);
    let mut response = handle(&state, peer, request, &request_id).await;
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(&request_id) {
        headers.insert("x-kong-request-id", id);
    }
    let latency_ms = started.elapsed().as_millis().to_string();
    if let Ok(latency) = HeaderValue::from_str(&latency_ms) {
        headers.insert("x-kong-response-latency", latency);
    }
    headers.insert(header::VIA, HeaderValue::from_static("1.1 warren-edge"));
    response
}

async fn handle<N: ports::Net>(
    state: &EdgeState<N>,
    peer: SocketAddr,
    request: Request,
    request_id: &str,
) -> Response {
    if !routed(request.uri().path()) {
        return kong_message(StatusCode::NOT_FOUND, "no Route matched with those values");
    }
    let limit = state.config.rate_limit;
    let now = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
    let remaining = match state.limiter.admit(peer.ip(), now) {
        Ok(remaining) => remaining,
        Err(RateLimited(reset)) => {
            // Whole seconds, rounded up: a client waiting that long is admitted again.
            let reset_secs = reset.as_millis().div_ceil(1000).max(1).to_string();
            let mut response =
                kong_message(StatusCode::TOO_MANY_REQUESTS, "API rate limit exceeded");
            let headers = response.headers_mut();
            for (name, value) in [
                ("retry-after", reset_secs.clone()),
                ("ratelimit-limit", limit.to_string()),
                ("ratelimit-remaining", "0".into()),
                ("ratelimit-reset", reset_secs),
            ] {
                if let Ok(value) = HeaderValue::from_str(&value) {
                    headers.insert(name, value);
                }
            }
            return response;
        }
    };
    let request = match limit_body(request, state.config.body_bytes_max).await {
        Ok(request) => request,
        Err(response) => return response,
    };
    let add_headers = |headers: &mut HeaderMap| {
        add_upstream_headers(headers, peer, state.port, request_id);
    };
    let mut response = match proxy::forward(&state.upstream, request, add_headers).await {
        Ok(response) => response,
        Err(e @ (ProxyError::Timeout(_) | ProxyError::ConnectTimeout(_))) => {
            tracing::warn!(error = %e, "upstream timed out");
            return kong_message(
                StatusCode::GATEWAY_TIMEOUT,
                "The upstream server is timing out",
            );
        }
        Err(e) => {
            tracing::warn!(error = %e, "upstream failed");
            return kong_message(
                StatusCode::BAD_GATEWAY,
                "An invalid response was received from the upstream server",
            );
        }
    };
    let headers = response.headers_mut();
    headers.insert("ratelimit-limit", HeaderValue::from(limit));
    headers.insert("ratelimit-remaining", HeaderValue::from(remaining));
    response
}

/// Reads the body up to the limit (a declared `Content-Length` over it is refused before
/// reading); WebSocket handshakes have no body and keep their upgrade handle.
async fn limit_body(request: Request, body_bytes_max: usize) -> Result<Request, Response> {
    let too_large = || kong_message(StatusCode::PAYLOAD_TOO_LARGE, "Request size limit exceeded");
    if proxy::is_websocket_upgrade(request.method(), request.headers()) {
        return Ok(request);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > body_bytes_max as u64) {
        return Err(too_large());
    }
    let (parts, body) = request.into_parts();
    let bytes = match Limited::new(body, body_bytes_max).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => return Err(too_large()),
        Err(e) => {
            return Err(kong_message(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body failed: {e}"),
            ));
        }
    };
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

fn add_upstream_headers(headers: &mut HeaderMap, peer: SocketAddr, port: u16, request_id: &str) {
    // Client-sent forwarding headers are not trusted (Kong's default `trusted_ips` is empty):
    // ours replace them, except X-Forwarded-For, which is appended to.
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(|h| h.rsplit_once(':').map_or(h, |(host, _)| host).to_owned())
        .unwrap_or_default();
    proxy::append_forwarded_for(headers, peer.ip());
    let set = |headers: &mut HeaderMap, name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    set(headers, "x-forwarded-proto", "http");
    set(headers, "x-forwarded-host", &host);
    set(headers, "x-forwarded-port", &port.to_string());
    set(headers, "x-forwarded-path", ROUTE);
    set(headers, "x-real-ip", &peer.ip().to_string());
    set(headers, "x-kong-request-id", request_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_is_per_client_and_resets_with_the_window() {
        let limiter = RateLimiter {
            limit: 2,
            window: Duration::from_secs(1),
            clients: Mutex::new(BTreeMap::new()),
        };
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
        assert_eq!(limiter.admit(a, t0).ok(), Some(1));
        assert_eq!(limiter.admit(a, t0).ok(), Some(0));
        assert!(limiter.admit(a, t0 + Duration::from_millis(400)).is_err());
        assert_eq!(
            limiter.admit(b, t0).ok(),
            Some(1),
            "another client has its own window"
        );
        assert_eq!(limiter.admit(a, t0 + Duration::from_secs(1)).ok(), Some(1));
    }

    #[test]
    fn only_the_graphql_route_is_routed() {
        assert!(routed("/graphql"));
        assert!(routed("/graphql/x"));
        assert!(!routed("/graphqlx"));
        assert!(!routed("/admin"));
    }
}
