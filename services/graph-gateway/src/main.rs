//! `graph-gateway`: the GraphGateway against a real RabbitMQ.
//!
//! ```text
//! graph-gateway --listen 0.0.0.0:8080 --amqp-url amqp://guest:guest@127.0.0.1:5672/%2f
//! ```
//! Ctrl-C shuts it down gracefully.

use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use graph_gateway::GatewayConfig;
use ports::Net;

/// The GraphGateway: GraphQL over HTTP and WebSocket, fed by RabbitMQ.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address to serve HTTP and WebSocket on.
    #[arg(long, env = "WARREN_LISTEN", default_value = "0.0.0.0:8080")]
    listen: String,
    /// The RabbitMQ to publish commands to and consume events from.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Most analyses remembered at once.
    #[arg(long, default_value_t = graph_gateway::REGISTRY_CAPACITY_DEFAULT)]
    registry_capacity: usize,
    /// Consume per-instance event queues `graph.subs.*.<NAME>` (for running several gateway
    /// replicas; with the fixed names they would compete for events).
    #[arg(long, env = "WARREN_GATEWAY_INSTANCE")]
    instance_queues: Option<String>,
    /// Re-validate bearer JWTs against this OIDC issuer (discovery + JWKS); without it the
    /// caller is the X-Forwarded-User header of the auth proxy in front.
    #[arg(long, env = "WARREN_JWT_ISSUER_URL")]
    jwt_issuer_url: Option<String>,
    /// The audience (client id) tokens must carry.
    #[arg(long, env = "WARREN_JWT_AUDIENCE", default_value = "warren")]
    jwt_audience: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let bus = ports::rabbitmq::RabbitBus::connect(&args.amqp_url)
        .await
        .with_context(|| format!("connecting to RabbitMQ at {}", redact(&args.amqp_url)))?;
    let listener = {
        use axum::serve::ListenerExt as _;
        ports::TokioNet
            .bind(&args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?
            // Nagle off on accepted connections: small WebSocket messages would otherwise wait
            // for delayed ACKs (~40 ms).
            .tap_io(|stream| {
                let _ = stream.set_nodelay(true);
            })
    };
    // A URL the validator cannot fetch is refused here, not at the first token.
    if let Some(issuer_url) = &args.jwt_issuer_url {
        jwt_auth::http_client::parse_url(issuer_url)
            .map_err(anyhow::Error::msg)
            .context("the JWT issuer URL")?;
    }
    let auth = args.jwt_issuer_url.map(|issuer_url| {
        graph_gateway::JwtAuth(Arc::new(jwt_auth::Verifier::new(
            jwt_auth::VerifierConfig::new(issuer_url.clone(), args.jwt_audience.clone()),
            Arc::new(ports::SystemClock),
            Arc::new(jwt_auth::DiscoveredJwks::new(ports::TokioNet, issuer_url)),
        )))
    });
    let config = GatewayConfig {
        registry_capacity: args.registry_capacity,
        instance_queues: args.instance_queues,
        auth,
        ..GatewayConfig::default()
    };
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for Ctrl-C; stop the process another way");
            std::future::pending::<()>().await;
        }
    };
    graph_gateway::run(ports::Ports::real(Arc::new(bus)), listener, config, ctrl_c).await?;
    Ok(())
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}
