//! The oauth2-proxy role, as configured in `ci/oauth2-proxy.cfg` (`--skip-jwt-bearer-tokens`,
//! `--bearer-token-login-fallback=false`, `--api-route=^/graphql`, `--pass-user-headers`,
//! `--skip-auth-strip-headers`):
//!
//! - no `Authorization: Bearer <JWT-shaped token>` → **401**, `application/json`, body `{}`;
//! - a token that fails validation → **403**, `text/plain`, body `Forbidden`;
//! - a valid token → forwarded upstream with `X-Forwarded-User` = `sub`, `X-Forwarded-Email` =
//!   `email` (or `sub`), `Authorization` kept, client-sent copies of the identity headers
//!   stripped, `X-Forwarded-For` appended; WebSocket upgrades are proxied (the handshake is
//!   authenticated like any request; oauth2-proxy never re-checks a live socket, the gateway
//!   does).
//!
//! `GET /ping` answers `OK` without authentication, as oauth2-proxy's does.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::jwt::{Verifier, bearer, looks_like_jwt};
use crate::proxy::{self, Upstream};

/// oauth2-proxy's `--upstream-timeout` default: longest wait for the upstream's response headers.
pub const UPSTREAM_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);

/// Identity headers oauth2-proxy sets upstream and strips from clients (anti-spoofing).
pub const IDENTITY_HEADERS: [&str; 5] = [
    "x-forwarded-user",
    "x-forwarded-email",
    "x-forwarded-groups",
    "x-forwarded-preferred-username",
    "x-forwarded-access-token",
];

/// Where to forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthProxyConfig {
    /// The gateway, `host:port`.
    pub upstream: String,
    /// Longest wait for the upstream (connection and response headers).
    pub upstream_timeout: Duration,
}

impl AuthProxyConfig {
    /// Forwards to `upstream` with the default timeout.
    pub fn new(upstream: impl Into<String>) -> AuthProxyConfig {
        AuthProxyConfig {
            upstream: upstream.into(),
            upstream_timeout: UPSTREAM_TIMEOUT_DEFAULT,
        }
    }
}

struct AuthState<N> {
    upstream: Upstream<N>,
    verifier: Arc<Verifier>,
}

/// The auth proxy's HTTP surface. Serve it with
/// [`serve`] (it needs the peer address).
pub fn router<N: ports::Net>(net: N, config: &AuthProxyConfig, verifier: Arc<Verifier>) -> Router {
    let state = Arc::new(AuthState {
        upstream: Upstream {
            net,
            authority: config.upstream.clone(),
            connect_timeout: config.upstream_timeout,
            read_timeout: config.upstream_timeout,
            // oauth2-proxy puts no idle limit on a tunnel.
            tunnel_idle_timeout: None,
        },
        verifier,
    });
    Router::new()
        .route("/ping", get(|| async { "OK" }))
        .fallback(authenticate_and_forward::<N>)
        .with_state(state)
}

async fn authenticate_and_forward<N: ports::Net>(
    State(state): State<Arc<AuthState<N>>>,
    ConnectInfo(PeerAddr(peer)): ConnectInfo<PeerAddr>,
    request: Request<Body>,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .filter(|t| looks_like_jwt(t))
        .map(str::to_owned);
    let Some(token) = token else {
        return unauthorized();
    };
    let claims = match state.verifier.verify(&token).await {
        Ok(claims) => claims,
        Err(e) => {
            tracing::info!(error = %e, %peer, "bearer token refused");
            return forbidden();
        }
    };
    let (Ok(user), Ok(email)) = (
        HeaderValue::from_str(&claims.sub),
        HeaderValue::from_str(claims.email.as_deref().unwrap_or(&claims.sub)),
    ) else {
        return forbidden();
    };
    let identify = |headers: &mut axum::http::HeaderMap| {
        for name in IDENTITY_HEADERS {
            headers.remove(name);
        }
        headers.insert("x-forwarded-user", user);
        headers.insert("x-forwarded-email", email);
        proxy::append_forwarded_for(headers, peer.ip());
    };
    match proxy::forward(&state.upstream, request, identify).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(error = %e, "upstream failed");
            (StatusCode::BAD_GATEWAY, "Bad Gateway").into_response()
        }
    }
}

/// oauth2-proxy's answer on an API route without credentials.
fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from("{}"),
    )
        .into_response()
}

/// oauth2-proxy's answer to a bearer token that fails validation.
fn forbidden() -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "Forbidden",
    )
        .into_response()
}

/// The client's address, put into every request's extensions by [`serve`] (axum's own
/// `ConnectInfo` plumbing only knows tokio's listener, not turmoil's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Most connections [`serve`] holds open at once, WebSocket tunnels included; past it, new
/// connections wait in the listener's backlog (as nginx's do past `worker_connections`).
pub const CONNECTIONS_MAX: usize = 10_000;

/// Longest wait for a request's headers, from the connection's start or the end of the
/// previous response on a keep-alive connection: a client that sends nothing, or its headers a
/// byte at a time, is cut off then (nginx's `client_header_timeout` and Kong's keep-alive
/// timeout are both 60 s).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves `router` on `listener` until `shutdown` (connections already open finish on their
/// own), with each request's peer address as `ConnectInfo<PeerAddr>`, at most
/// [`CONNECTIONS_MAX`] connections at once and [`HEADER_READ_TIMEOUT`] for each request's
/// headers.
pub async fn serve<L>(
    listener: L,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    serve_with(
        listener,
        router,
        shutdown,
        CONNECTIONS_MAX,
        HEADER_READ_TIMEOUT,
    )
    .await
}

/// [`serve`] with other limits (the tests use small ones).
pub async fn serve_with<L>(
    mut listener: L,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    connections_max: usize,
    header_read_timeout: Duration,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    use tower::ServiceExt as _;
    let slots = Arc::new(tokio::sync::Semaphore::new(connections_max));
    tokio::pin!(shutdown);
    loop {
        // A slot first: at the limit, connections wait unaccepted.
        let slot = tokio::select! {
            () = &mut shutdown => return Ok(()),
            slot = Arc::clone(&slots).acquire_owned() => match slot {
                Ok(slot) => proxy::ConnectionSlot(Arc::new(slot)),
                Err(_) => return Ok(()),
            },
        };
        let (io, peer) = tokio::select! {
            () = &mut shutdown => return Ok(()),
            accepted = listener.accept() => accepted,
        };
        let router = router.clone();
        let request_slot = slot.clone();
        let service =
            hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                let extensions = request.extensions_mut();
                extensions.insert(axum::extract::ConnectInfo(PeerAddr(peer)));
                extensions.insert(request_slot.clone());
                router.clone().oneshot(request.map(Body::new))
            });
        tokio::spawn(async move {
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(header_read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service)
                .with_upgrades();
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
            // A WebSocket tunnel that took the connection over holds its own copy of the slot.
            drop(slot);
        });
    }
}
