//! Shared pieces of warren's criterion benches.
#![forbid(unsafe_code)]

use std::time::Duration;

use client_console::{AnalysisInput, ConsoleConfig};

/// Runs `count` analyses concurrently through the whole flow (HTTP mutation, WebSocket
/// subscription, broker, orchestrator) and fails unless every one completed.
pub async fn complete_analyses(url: &str, count: usize) -> anyhow::Result<()> {
    let mut console = ConsoleConfig::from_url(url)?;
    console.timeout = Duration::from_secs(60);
    let runs = (0..count).map(|i| {
        let console = console.clone();
        let input = AnalysisInput {
            asset_id: format!("bench-{i}"),
            analysis_type: "utilization".into(),
            parameters: None,
        };
        async move { client_console::run(&ports::TokioNet, &console, &input, |_| {}).await }
    });
    for outcome in futures::future::join_all(runs).await {
        anyhow::ensure!(
            outcome?.events.len() == 2,
            "an analysis did not produce both events"
        );
    }
    Ok(())
}

/// A fresh RabbitMQ vhost for a bench run, or `None` (with a `SKIPPED` line) when RabbitMQ is
/// not reachable.
pub async fn rabbitmq_url() -> Option<ports::testing::RabbitVhost> {
    match ports::testing::RabbitVhost::create("bench").await {
        Ok(vhost) => vhost,
        Err(e) => {
            eprintln!("SKIPPED RabbitMQ benches: {e}");
            None
        }
    }
}
