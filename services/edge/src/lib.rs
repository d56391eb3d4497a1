//! The edge of warren: the three services between a client and the gateway, as stand-ins that
//! behave like the real ones (see `ci/` for the real Kong and oauth2-proxy configuration).
//!
//! Owns:
//! - [`issuer`]: a development OIDC issuer (discovery, JWKS with RS256 key rotation, minting);
//! - [`auth_proxy`]: the oauth2-proxy role (bearer JWT validation, identity headers);
//! - [`kong`]: the Kong role (the `/graphql` route, forwarded headers, rate limits, timeouts,
//!   body limit);
//! - [`jwt`]: token validation against a discovered JWKS, also used by the gateway to
//!   re-validate tokens itself;
//! - [`proxy`]: HTTP forwarding with WebSocket upgrades, shared by the two proxies.
//!
//! Each role is a library function of its ports: a listener and a [`ports::Net`] to connect
//! upstream (tokio or turmoil TCP), a [`ports::Clock`] for token times. Must never depend on:
//! the gateway or any other service crate, `tokio::net`, the OS clock, threads, or OS randomness
//! (the one exception, [`issuer::KeySeed::Os`], is real mode only and says so).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth_proxy;
pub mod issuer;
/// The bearer-JWT validator (its own crate, shared with the gateway).
pub use jwt_auth as jwt;
/// Minimal HTTP/1 client over a `Net` (from the validator's crate).
pub use jwt_auth::http_client;
pub mod kong;
pub mod proxy;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

pub use auth_proxy::AuthProxyConfig;
pub use issuer::{Issuer, IssuerConfig, KeySeed, MintRequest};
pub use jwt::{Claims, DiscoveredJwks, TokenError, Verifier, VerifierConfig};
pub use kong::EdgeConfig;

/// Serves the dev issuer on `listener` until `shutdown`.
pub async fn run_issuer<L>(
    listener: L,
    issuer: Arc<Issuer>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    auth_proxy::serve(listener, issuer.router(), shutdown).await
}

/// Attempts to load the issuer's keys before the auth proxy serves (oauth2-proxy needs its
/// issuer at startup too); 100 ms apart, doubling up to 2 s.
pub const STARTUP_KEY_ATTEMPTS_MAX: u32 = 8;

/// Serves the auth proxy on `listener` until `shutdown`, validating against `verifier`. Loads
/// the keys first, retrying a few times; an issuer still not up is only logged (an unknown `kid`
/// fetches again, rate-limited), so the proxy answers 403 until it is.
pub async fn run_auth_proxy<N, L>(
    net: N,
    listener: L,
    config: AuthProxyConfig,
    verifier: Arc<Verifier>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    N: ports::Net,
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let mut pause = std::time::Duration::from_millis(100);
    for attempt in 1..=STARTUP_KEY_ATTEMPTS_MAX {
        match verifier.refresh().await {
            Ok(_) => break,
            Err(e) if attempt == STARTUP_KEY_ATTEMPTS_MAX => {
                tracing::warn!(error = %e, "no keys from the issuer yet; serving anyway");
            }
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(std::time::Duration::from_secs(2));
            }
        }
    }
    auth_proxy::serve(
        listener,
        auth_proxy::router(net, &config, verifier),
        shutdown,
    )
    .await
}

/// Serves the edge on `listener` until `shutdown`.
pub async fn run_edge<N, L>(
    net: N,
    listener: L,
    config: EdgeConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    N: ports::Net,
    L: axum::serve::Listener<Addr = SocketAddr>,
{
    let port = listener.local_addr()?.port();
    auth_proxy::serve(listener, kong::router(net, config, port), shutdown).await
}
