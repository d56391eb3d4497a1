//! One command, start to finish: decode, skip if known, Started, analyse, Completed, ack.
//!
//! At-least-once in, exactly-once at the edges: a command may arrive twice (redelivery after a
//! crash or a lost link), so every event carries a message id derived from the analysisId and
//! the type, and a command whose analysis this process already finished is acked without work.
//! A copy that arrives while its analysis is running waits for that run's outcome: acking it at
//! once would leave the broker with no copy if the run then fails on a dead channel.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contracts::{
    APP_ID_ORCHESTRATOR, AnalysisCompleted, AnalysisStarted, AnalysisStatus, Publication,
    RequestAnalysis, format_timestamp,
};
use futures::future::{BoxFuture, Shared};
use ports::{BusError, Delivery, Ports};
use tokio::sync::watch;
use uuid::Uuid;

use crate::Analyzer;

/// What this process knows about analyses: running now, or finished (bounded, FIFO eviction).
#[derive(Default)]
struct Memory {
    /// Running analyses; the sender is dropped when the run ends, which wakes the copies of its
    /// command waiting for the outcome (bounded by the consumer's prefetch).
    running: BTreeMap<Uuid, watch::Sender<()>>,
    finished: BTreeSet<Uuid>,
    finished_order: VecDeque<Uuid>,
}

pub(crate) struct Processor {
    ports: Ports,
    analyzer: Arc<dyn Analyzer>,
    memory: Mutex<Memory>,
    finished_count_max: usize,
    refused_requeue_delay: Duration,
    /// Resolved once shutdown is asked for: in-flight runs finish, nothing new starts.
    shutdown: Shared<BoxFuture<'static, ()>>,
}

/// Why a run did not finish.
enum RunFailure {
    /// An event of this command breaks a limit of the contract (encoding it failed): no retry
    /// can publish it.
    Unpublishable(String),
    /// The bus failed or refused a publish: a later attempt may succeed.
    Bus(BusError),
}

impl std::fmt::Display for RunFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RunFailure::Unpublishable(reason) => write!(f, "event cannot be published: {reason}"),
            RunFailure::Bus(e) => e.fmt(f),
        }
    }
}

enum Claim {
    Run,
    AlreadyFinished,
    /// Resolves (with an error: the sender is gone) when the running copy's run ends.
    AlreadyRunning(watch::Receiver<()>),
}

impl Processor {
    pub(crate) fn new(
        ports: Ports,
        analyzer: Arc<dyn Analyzer>,
        finished_count_max: usize,
        refused_requeue_delay: Duration,
        shutdown: Shared<BoxFuture<'static, ()>>,
    ) -> Self {
        Processor {
            ports,
            analyzer,
            memory: Mutex::new(Memory::default()),
            finished_count_max,
            refused_requeue_delay,
            shutdown,
        }
    }

    fn shutting_down(&self) -> bool {
        self.shutdown.peek().is_some()
    }

    pub(crate) async fn process(&self, delivery: Delivery) {
        let request = match contracts::decode_request(
            delivery.properties.kind.as_deref(),
            &delivery.body,
        ) {
            Ok(request) => request,
            Err(e) => {
                // Poison: requeueing would loop forever; reject so a DLX (if any) keeps it.
                tracing::warn!(error = %e, message_id = ?delivery.properties.message_id, "poison command rejected");
                settle(delivery.reject(false).await);
                return;
            }
        };
        let id = request.analysis_id;
        let mut waited = false;
        loop {
            match self.claim(id) {
                Claim::Run if waited && self.shutting_down() => {
                    // The run this copy waited for failed, and the service is stopping: leave
                    // the analysis to the broker rather than start it now.
                    self.release(id, false);
                    tracing::info!(analysis_id = %id, "shutting down: command requeued, not run");
                    settle(delivery.nack(true).await);
                    return;
                }
                Claim::Run => break,
                Claim::AlreadyFinished => {
                    tracing::info!(analysis_id = %id, "command repeated after completion; acked without work");
                    settle(delivery.ack().await);
                    return;
                }
                Claim::AlreadyRunning(mut run_ended) => {
                    // Held unacked until the running copy settles: if that run fails and its
                    // own settle is lost (its channel died), this copy is the broker's last.
                    tracing::info!(analysis_id = %id, "command repeated while running; waiting for that run");
                    let _ = run_ended.changed().await;
                    waited = true;
                }
            }
        }
        let outcome = self.run_analysis(&request, delivery.redelivered).await;
        self.release(id, outcome.is_ok());
        match outcome {
            Ok(()) => settle(delivery.ack().await),
            Err(e @ RunFailure::Unpublishable(_)) => {
                // An event this command yields can never be published (it breaks a limit of
                // the contract): requeueing would run it again forever. Dead-letter it.
                tracing::error!(analysis_id = %id, error = %e, "events can never be published; command rejected");
                settle(delivery.reject(false).await);
            }
            Err(
                e @ RunFailure::Bus(
                    BusError::Refused { .. } | BusError::Nacked { .. } | BusError::Invalid(_),
                ),
            ) => {
                // The broker (or the adapter) refused an event: a missing exchange, a full
                // queue, no channel free. It may take it later. Requeued after a pause, not at
                // once, so a refusal that lasts is retried at a bounded rate, not in a loop.
                tracing::warn!(analysis_id = %id, error = %e, delay = ?self.refused_requeue_delay, "publishing refused; command requeued after a pause");
                // A missing exchange (404: deleted under a live connection, where the adapters
                // do not declare again) is declared again, so the retry can succeed.
                if matches!(e, RunFailure::Bus(BusError::Refused { code: 404, .. }))
                    && let Err(declare) = self
                        .ports
                        .bus
                        .declare(&contracts::Topology::orchestrator())
                        .await
                {
                    tracing::warn!(error = %declare, "declaring the topology again failed");
                }
                // A shutdown cuts the pause short: the broker keeps the command either way.
                tokio::select! {
                    () = tokio::time::sleep(self.refused_requeue_delay) => {}
                    () = self.shutdown.clone() => {}
                }
                settle(delivery.nack(true).await);
            }
            Err(e) => {
                // The link is gone, an event went unconfirmed, or the bus is closing: the events
                // may be partly out; requeue so the analysis runs again (same ids, so a consumer
                // drops what it already has). On a dead link the broker requeues.
                tracing::warn!(analysis_id = %id, error = %e, "publishing failed; command requeued");
                settle(delivery.nack(true).await);
            }
        }
    }

    async fn run_analysis(
        &self,
        request: &RequestAnalysis,
        redelivered: bool,
    ) -> Result<(), RunFailure> {
        let id = request.analysis_id;
        tracing::info!(analysis_id = %id, redelivered, "analysis starting");
        let started = AnalysisStarted {
            analysis_id: id,
            asset_id: request.asset_id.clone(),
            analysis_type: request.analysis_type.clone(),
            requested_by: request.requested_by.clone(),
            started_at: format_timestamp(self.ports.clock.now_unix_ms()),
        };
        self.publish(started.publication(APP_ID_ORCHESTRATOR, self.ports.clock.now_unix_ms()))
            .await?;
        let (status, result, error) = match self.analyzer.analyze(request).await {
            Ok(result) => (AnalysisStatus::Succeeded, Some(result), None),
            Err(reason) => (AnalysisStatus::Failed, None, Some(reason)),
        };
        let completed = AnalysisCompleted {
            analysis_id: id,
            asset_id: request.asset_id.clone(),
            analysis_type: request.analysis_type.clone(),
            requested_by: request.requested_by.clone(),
            status,
            result,
            error,
            completed_at: format_timestamp(self.ports.clock.now_unix_ms()),
        };
        let now = self.ports.clock.now_unix_ms();
        let publication = match completed.publication(APP_ID_ORCHESTRATOR, now) {
            Ok(p) => p,
            // A result too large for the contract is a failed analysis, not a lost one.
            Err(e) => AnalysisCompleted {
                status: AnalysisStatus::Failed,
                result: None,
                error: Some(format!("result refused: {e}")),
                ..completed
            }
            .publication(APP_ID_ORCHESTRATOR, now)
            .map_err(|e| RunFailure::Unpublishable(e.to_string()))?,
        };
        self.publish(Ok(publication)).await?;
        tracing::info!(analysis_id = %id, ?status, "analysis completed");
        Ok(())
    }

    async fn publish(
        &self,
        publication: Result<Publication, contracts::EncodeError>,
    ) -> Result<(), RunFailure> {
        let publication = publication.map_err(|e| RunFailure::Unpublishable(e.to_string()))?;
        self.ports
            .bus
            .publish(publication)
            .await
            .map_err(RunFailure::Bus)
    }

    fn claim(&self, id: Uuid) -> Claim {
        let mut memory = self.memory.lock().expect("orchestrator memory poisoned");
        if memory.finished.contains(&id) {
            Claim::AlreadyFinished
        } else if let Some(run) = memory.running.get(&id) {
            // Subscribed under the lock: a run that ends after this is seen by the receiver.
            Claim::AlreadyRunning(run.subscribe())
        } else {
            memory.running.insert(id, watch::Sender::new(()));
            Claim::Run
        }
    }

    fn release(&self, id: Uuid, finished: bool) {
        let mut memory = self.memory.lock().expect("orchestrator memory poisoned");
        // Dropping the sender wakes the copies waiting for this run; they claim again and
        // find it finished (ack) or free to run (this run failed).
        memory.running.remove(&id);
        if finished && memory.finished.insert(id) {
            memory.finished_order.push_back(id);
            while memory.finished_order.len() > self.finished_count_max {
                if let Some(oldest) = memory.finished_order.pop_front() {
                    memory.finished.remove(&oldest);
                }
            }
        }
    }
}

fn settle(result: Result<(), BusError>) {
    // A lost link while settling means the broker requeues the message itself.
    if let Err(e) = result {
        tracing::warn!(error = %e, "settling a command failed; the broker will redeliver it");
    }
}
