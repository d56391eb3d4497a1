//! One command, start to finish: decode, skip if known, Started, analyse, Completed, ack.
//!
//! At-least-once in, exactly-once at the edges: a command may arrive twice (redelivery after a
//! crash or a lost link), so every event carries a message id derived from the analysisId and
//! the type, and a command whose analysis this process already finished is acked without work.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use contracts::{
    APP_ID_ORCHESTRATOR, AnalysisCompleted, AnalysisStarted, AnalysisStatus, Publication,
    RequestAnalysis, format_timestamp,
};
use ports::{BusError, Delivery, Ports};
use uuid::Uuid;

use crate::Analyzer;

/// What this process knows about analyses: running now, or finished (bounded, FIFO eviction).
#[derive(Default)]
struct Memory {
    running: BTreeSet<Uuid>,
    finished: BTreeSet<Uuid>,
    finished_order: VecDeque<Uuid>,
}

pub(crate) struct Processor {
    ports: Ports,
    analyzer: Arc<dyn Analyzer>,
    memory: Mutex<Memory>,
    finished_count_max: usize,
}

enum Claim {
    Run,
    AlreadyFinished,
    AlreadyRunning,
}

impl Processor {
    pub(crate) fn new(
        ports: Ports,
        analyzer: Arc<dyn Analyzer>,
        finished_count_max: usize,
    ) -> Self {
        Processor {
            ports,
            analyzer,
            memory: Mutex::new(Memory::default()),
            finished_count_max,
        }
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
        match self.claim(id) {
            Claim::AlreadyFinished => {
                tracing::info!(analysis_id = %id, "command repeated after completion; acked without work");
                settle(delivery.ack().await);
                return;
            }
            Claim::AlreadyRunning => {
                // The running copy settles the analysis; if it fails it is requeued itself.
                tracing::info!(analysis_id = %id, "command repeated while running; acked without work");
                settle(delivery.ack().await);
                return;
            }
            Claim::Run => {}
        }
        let outcome = self.run_analysis(&request, delivery.redelivered).await;
        self.release(id, outcome.is_ok());
        match outcome {
            Ok(()) => settle(delivery.ack().await),
            Err(e) => {
                // The events may be partly out; requeue so the analysis runs again (same ids).
                tracing::warn!(analysis_id = %id, error = %e, "publishing failed; command requeued");
                settle(delivery.nack(true).await);
            }
        }
    }

    async fn run_analysis(
        &self,
        request: &RequestAnalysis,
        redelivered: bool,
    ) -> Result<(), BusError> {
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
            .map_err(|e| BusError::Invalid(e.to_string()))?,
        };
        self.publish(Ok(publication)).await?;
        tracing::info!(analysis_id = %id, ?status, "analysis completed");
        Ok(())
    }

    async fn publish(
        &self,
        publication: Result<Publication, contracts::EncodeError>,
    ) -> Result<(), BusError> {
        let publication = publication.map_err(|e| BusError::Invalid(e.to_string()))?;
        self.ports.bus.publish(publication).await
    }

    fn claim(&self, id: Uuid) -> Claim {
        let mut memory = self.memory.lock().expect("orchestrator memory poisoned");
        if memory.finished.contains(&id) {
            Claim::AlreadyFinished
        } else if !memory.running.insert(id) {
            Claim::AlreadyRunning
        } else {
            Claim::Run
        }
    }

    fn release(&self, id: Uuid, finished: bool) {
        let mut memory = self.memory.lock().expect("orchestrator memory poisoned");
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
