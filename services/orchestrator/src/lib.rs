//! SvcAnalysisOrchestrator: consumes `RequestAnalysis` commands, publishes `AnalysisStarted`,
//! runs the analysis through an [`Analyzer`], publishes `AnalysisCompleted`, then acks.
//!
//! Owns: the command-processing loop, its idempotency (a bounded memory of finished analyses),
//! poison handling, reconnects and graceful shutdown. The service is a function of its ports
//! ([`run`]), so the same code runs on RabbitMQ, on broker-mem and inside a turmoil simulation.
//!
//! Must never depend on: lapin, `tokio::net`, `std::time::{SystemTime, Instant}`, randomness or
//! OS threads. Time is `tokio::time` (simulated under turmoil) and the `Clock` port.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod analyzer;
mod processor;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use ports::{BusError, ConsumeOptions, Ports};
use thiserror::Error;

pub use analyzer::{Analyzer, BuiltinAnalyzer};
use processor::Processor;

/// How the orchestrator runs.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// Commands processed at once; also the consumer's prefetch.
    pub concurrency: u16,
    /// Finished analyses remembered to skip redelivered commands (oldest forgotten first).
    pub finished_memory_count_max: usize,
    /// First wait before re-consuming after the broker link fails; doubles up to the max.
    pub reconnect_backoff_min: Duration,
    /// Longest wait between reconnect attempts.
    pub reconnect_backoff_max: Duration,
    /// How long a command whose events the broker or the adapter refused (a nack, a 404, no
    /// channel free) is held before it is requeued: the bound on how fast a lasting refusal
    /// makes it run again.
    pub refused_requeue_delay: Duration,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        OrchestratorConfig {
            concurrency: 8,
            finished_memory_count_max: 100_000,
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(5),
            refused_requeue_delay: Duration::from_secs(1),
        }
    }
}

/// Why the orchestrator stopped.
#[derive(Debug, Error)]
pub enum OrchestratorError {
    /// Declaring the topology failed for good.
    #[error("declaring the orchestrator topology: {0}")]
    Declare(#[source] BusError),
    /// The configuration breaks a limit.
    #[error("invalid configuration: {0}")]
    Config(&'static str),
}

/// Runs the orchestrator until `shutdown` resolves: declares its topology, consumes the command
/// queue (re-consuming with backoff whenever the link fails), and finishes in-flight analyses
/// before returning.
pub async fn run(
    ports: Ports,
    analyzer: Arc<dyn Analyzer>,
    config: OrchestratorConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), OrchestratorError> {
    if config.concurrency == 0 {
        return Err(OrchestratorError::Config("concurrency must be at least 1"));
    }
    let shutdown = shutdown.boxed().shared();
    let processor = Arc::new(Processor::new(
        ports.clone(),
        analyzer,
        config.finished_memory_count_max,
        config.refused_requeue_delay,
        shutdown.clone(),
    ));
    let mut backoff = config.reconnect_backoff_min;
    let mut declared = false;
    loop {
        if shutdown.peek().is_some() {
            return Ok(());
        }
        if !declared {
            match ports
                .bus
                .declare(&contracts::Topology::orchestrator())
                .await
            {
                Ok(()) => declared = true,
                // A refusal (e.g. 406 inequivalent arguments) will not heal by retrying.
                Err(e @ BusError::Refused { .. }) => return Err(OrchestratorError::Declare(e)),
                Err(e) => tracing::warn!(error = %e, "declare failed; retrying"),
            }
        }
        if declared {
            let options = ConsumeOptions {
                prefetch: config.concurrency,
            };
            match ports.bus.consume(contracts::QUEUE_COMMANDS, options).await {
                Ok(mut deliveries) => {
                    tracing::info!(queue = contracts::QUEUE_COMMANDS, "consuming");
                    backoff = config.reconnect_backoff_min;
                    let concurrency = usize::from(config.concurrency);
                    // `by_ref`: the consumer (and its channel) must outlive the in-flight
                    // analyses so their acks land; dropping it early would requeue them.
                    deliveries
                        .by_ref()
                        .take_until(shutdown.clone())
                        .for_each_concurrent(concurrency, |delivery| {
                            let processor = processor.clone();
                            async move {
                                match delivery {
                                    Ok(delivery) => processor.process(delivery).await,
                                    Err(e) => tracing::warn!(error = %e, "command stream failed"),
                                }
                            }
                        })
                        .await;
                    if shutdown.peek().is_some() {
                        tracing::info!("shut down: in-flight analyses finished");
                        return Ok(());
                    }
                    tracing::warn!("command stream ended; re-consuming");
                }
                // The command queue is gone (deleted under a live connection, where the
                // adapters do not declare again): declare the topology again first.
                Err(e @ BusError::Refused { code: 404, .. }) => {
                    tracing::warn!(error = %e, "command queue missing; declaring again");
                    declared = false;
                }
                Err(e) => tracing::warn!(error = %e, "consume failed; retrying"),
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.clone() => return Ok(()),
        }
        backoff = (backoff * 2).min(config.reconnect_backoff_max);
    }
}
