//! `orchestrator`: SvcAnalysisOrchestrator against RabbitMQ.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use orchestrator::{BuiltinAnalyzer, OrchestratorConfig};

/// Consumes RequestAnalysis commands and publishes AnalysisStarted and AnalysisCompleted.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// AMQP URL of the broker.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// How long the built-in analyzer takes per analysis, in milliseconds.
    #[arg(long, env = "WARREN_ANALYSIS_DURATION_MS", default_value_t = 500)]
    analysis_duration_ms: u64,
    /// Commands processed at once (the consumer's prefetch).
    #[arg(long, env = "WARREN_CONCURRENCY", default_value_t = 8)]
    concurrency: u16,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let bus = ports::rabbitmq::RabbitBus::connect(&args.amqp_url)
        .await
        .context("connecting to RabbitMQ")?;
    let analyzer = Arc::new(BuiltinAnalyzer {
        duration: Duration::from_millis(args.analysis_duration_ms),
    });
    let config = OrchestratorConfig {
        concurrency: args.concurrency,
        ..OrchestratorConfig::default()
    };
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("Ctrl-C: finishing in-flight analyses");
    };
    orchestrator::run(
        ports::Ports::real(Arc::new(bus)),
        analyzer,
        config,
        shutdown,
    )
    .await?;
    Ok(())
}
