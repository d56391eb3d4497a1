//! `edge`: run one of the edge roles on real sockets.
//!
//! ```text
//! edge issuer     --listen 127.0.0.1:9000 --issuer-url http://127.0.0.1:9000 --audience warren
//! edge auth-proxy --listen 127.0.0.1:4180 --issuer-url http://127.0.0.1:9000 --client-id warren --upstream 127.0.0.1:8080
//! edge kong       --listen 127.0.0.1:8000 --upstream 127.0.0.1:4180
//! ```

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use edge::{AuthProxyConfig, EdgeConfig, Issuer, IssuerConfig, KeySeed, Verifier, VerifierConfig};
use ports::{Net, SystemClock, TokioNet};

/// warren's edge: the Kong role, the oauth2-proxy role, and a dev OIDC issuer.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    role: Role,
}

#[derive(Debug, Subcommand)]
enum Role {
    /// The dev OIDC issuer (discovery, JWKS, POST /token). Development only.
    Issuer {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: String,
        /// Public URL: the tokens' `iss`.
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        issuer_url: String,
        /// `aud` of minted tokens (the client id validators expect).
        #[arg(long, default_value = "warren")]
        audience: String,
        /// Derive keys from this seed (same seed, same keys); OS randomness without it.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// The oauth2-proxy role: validates bearer JWTs, passes X-Forwarded-User/Email upstream.
    AuthProxy {
        #[arg(long, default_value = "127.0.0.1:4180")]
        listen: String,
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        issuer_url: String,
        /// The audience tokens must carry.
        #[arg(long, default_value = "warren")]
        client_id: String,
        /// The gateway, host:port.
        #[arg(long, default_value = "127.0.0.1:8080")]
        upstream: String,
    },
    /// The Kong role: /graphql to the auth proxy, forwarded headers, rate limit, body limit.
    Kong {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: String,
        /// The auth proxy, host:port.
        #[arg(long, default_value = "127.0.0.1:4180")]
        upstream: String,
        /// Requests per client IP per second.
        #[arg(long, default_value_t = edge::kong::RATE_LIMIT_DEFAULT)]
        rate_limit: u32,
        /// Upstream connect and read timeout, seconds.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
}

/// Binds with Nagle off on accepted connections (small messages would wait for delayed ACKs).
async fn bind(
    listen: &str,
) -> anyhow::Result<
    impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr>,
> {
    use axum::serve::ListenerExt as _;
    let listener = TokioNet
        .bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    Ok(listener.tap_io(|stream| {
        let _ = stream.set_nodelay(true);
    }))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    match Cli::parse().role {
        Role::Issuer {
            listen,
            issuer_url,
            audience,
            seed,
        } => {
            let seed = seed.map_or(KeySeed::Os, KeySeed::Seeded);
            let issuer = Issuer::new(
                IssuerConfig {
                    issuer_url,
                    audience,
                },
                Arc::new(SystemClock),
                seed,
            )?;
            let listener = bind(&listen).await?;
            tracing::info!(%listen, "issuer listening");
            edge::run_issuer(listener, Arc::new(issuer), ctrl_c).await?;
        }
        Role::AuthProxy {
            listen,
            issuer_url,
            client_id,
            upstream,
        } => {
            // A URL the validator cannot fetch is refused at start, not at the first token.
            edge::http_client::parse_url(&issuer_url)
                .map_err(anyhow::Error::msg)
                .context("the issuer URL")?;
            let verifier = Verifier::new(
                VerifierConfig::new(issuer_url.clone(), client_id),
                Arc::new(SystemClock),
                Arc::new(edge::DiscoveredJwks::new(TokioNet, issuer_url)),
            );
            let listener = bind(&listen).await?;
            tracing::info!(%listen, "auth proxy listening");
            edge::run_auth_proxy(
                TokioNet,
                listener,
                AuthProxyConfig::new(upstream),
                Arc::new(verifier),
                ctrl_c,
            )
            .await?;
        }
        Role::Kong {
            listen,
            upstream,
            rate_limit,
            timeout_secs,
        } => {
            let config = EdgeConfig {
                rate_limit,
                connect_timeout: Duration::from_secs(timeout_secs),
                read_timeout: Duration::from_secs(timeout_secs),
                ..EdgeConfig::new(upstream)
            };
            let listener = bind(&listen).await?;
            tracing::info!(%listen, "edge listening");
            edge::run_edge(TokioNet, listener, config, ctrl_c).await?;
        }
    }
    Ok(())
}
