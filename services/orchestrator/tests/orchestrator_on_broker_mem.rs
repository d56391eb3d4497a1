//! The orchestrator against broker-mem through the memory adapter: the event sequence, poison,
//! failures, redelivery after completion, and a crash mid-analysis. Time is tokio's paused clock,
//! so long analyses cost nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use contracts::{Event, Properties, Publication, RequestAnalysis, Topology};
use futures::StreamExt;
use orchestrator::{Analyzer, BuiltinAnalyzer, OrchestratorConfig};
use ports::memory::MemoryBus;
use ports::{Bus, ConsumeOptions, Ports, SeededIds};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use uuid::Uuid;

struct FixedClock;
impl ports::Clock for FixedClock {
    fn now_unix_ms(&self) -> i64 {
        1_767_225_600_000
    }
}

/// Counts analyses actually run: the orchestrator's one side effect.
struct Counting {
    inner: BuiltinAnalyzer,
    runs: AtomicUsize,
}

#[async_trait]
impl Analyzer for Counting {
    async fn analyze(&self, request: &RequestAnalysis) -> Result<Value, String> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.inner.analyze(request).await
    }
}

struct Harness {
    broker: broker_mem::Broker,
    test_bus: MemoryBus,
    analyzer: Arc<Counting>,
}

impl Harness {
    async fn new(duration: Duration) -> Harness {
        let broker = broker_mem::Broker::new();
        let test_bus = MemoryBus::new(broker.clone());
        test_bus.declare(&Topology::contract()).await.unwrap();
        let analyzer = Arc::new(Counting {
            inner: BuiltinAnalyzer { duration },
            runs: AtomicUsize::new(0),
        });
        Harness {
            broker,
            test_bus,
            analyzer,
        }
    }

    /// Starts an orchestrator on its own connection; the sender stops it gracefully.
    fn start(
        &self,
    ) -> (
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), orchestrator::OrchestratorError>>,
    ) {
        let ports = Ports {
            bus: Arc::new(MemoryBus::new(self.broker.clone())),
            clock: Arc::new(FixedClock),
            ids: Arc::new(SeededIds::new(1)),
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(orchestrator::run(
            ports,
            self.analyzer.clone(),
            OrchestratorConfig::default(),
            async {
                let _ = stopped.await;
            },
        ));
        (stop, task)
    }

    async fn send(&self, request: &RequestAnalysis) {
        self.test_bus
            .publish(request.publication(contracts::APP_ID_GATEWAY, 0).unwrap())
            .await
            .unwrap();
    }

    async fn wait_for_depth(&self, queue: &str, depth: usize) {
        for _ in 0..10_000 {
            if self.broker.queue_depth(queue) == Some(depth) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "{queue} never reached depth {depth}: {:?}",
            self.broker.queue_depth(queue)
        );
    }

    /// Takes everything waiting in an event queue, acking it.
    async fn drain(&self, queue: &str) -> Vec<(Properties, Event)> {
        let mut deliveries = self
            .test_bus
            .consume(queue, ConsumeOptions { prefetch: 100 })
            .await
            .unwrap();
        let mut events = Vec::new();
        while self.broker.queue_depth(queue).unwrap_or(0) > 0
            || self.broker.unacked_count(queue).unwrap_or(0) > 0
        {
            let delivery = deliveries.next().await.unwrap().unwrap();
            let event =
                contracts::decode_event(delivery.properties.kind.as_deref(), &delivery.body)
                    .unwrap();
            events.push((delivery.properties.clone(), event));
            delivery.ack().await.unwrap();
        }
        events
    }
}

fn request(n: u128, parameters: Option<Value>) -> RequestAnalysis {
    RequestAnalysis {
        analysis_id: Uuid::from_u128(n),
        asset_id: format!("press-{n}"),
        analysis_type: "utilization".into(),
        parameters,
        requested_by: Some("alice".into()),
        requested_at: contracts::format_timestamp(0),
    }
}

#[tokio::test(start_paused = true)]
async fn command_becomes_started_then_completed_and_is_acked() {
    let h = Harness::new(Duration::from_secs(5)).await;
    let (stop, task) = h.start();
    h.send(&request(1, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    let started = h.drain(contracts::QUEUE_SUBS_STARTED).await;
    let completed = h.drain(contracts::QUEUE_SUBS_COMPLETED).await;
    assert_eq!(started.len(), 1);
    let (props, Event::Completed(done)) = &completed[0] else {
        panic!("not completed")
    };
    assert_eq!(done.status, contracts::AnalysisStatus::Succeeded);
    assert_eq!(done.requested_by.as_deref(), Some("alice"));
    assert_eq!(
        props.app_id.as_deref(),
        Some(contracts::APP_ID_ORCHESTRATOR)
    );
    assert_eq!(
        props.message_id,
        Some(
            contracts::message_id(Uuid::from_u128(1), contracts::MessageKind::Completed)
                .to_string()
        )
    );
    assert_eq!(props.correlation_id, Some(Uuid::from_u128(1).to_string()));
    h.wait_for_depth(contracts::QUEUE_COMMANDS, 0).await;
    assert_eq!(h.broker.unacked_count(contracts::QUEUE_COMMANDS), Some(0));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn failing_analysis_completes_as_failed_with_its_reason() {
    let h = Harness::new(Duration::ZERO).await;
    let (stop, task) = h.start();
    h.send(&request(2, Some(json!({"fail": "sensor offline"}))))
        .await;
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    let completed = h.drain(contracts::QUEUE_SUBS_COMPLETED).await;
    let (_, Event::Completed(done)) = &completed[0] else {
        panic!("not completed")
    };
    assert_eq!(
        (done.status, done.error.as_deref(), &done.result),
        (
            contracts::AnalysisStatus::Failed,
            Some("sensor offline"),
            &None
        )
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn poison_command_is_rejected_without_requeue_and_work_goes_on() {
    let h = Harness::new(Duration::ZERO).await;
    let (stop, task) = h.start();
    let mut poison = request(3, None).publication("test", 0).unwrap();
    poison.body = b"{not json".to_vec();
    h.test_bus.publish(poison).await.unwrap();
    let unknown = Publication {
        properties: Properties {
            kind: Some("DeleteEverything".into()),
            ..Default::default()
        },
        ..request(4, None).publication("test", 0).unwrap()
    };
    h.test_bus.publish(unknown).await.unwrap();
    h.send(&request(5, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    h.wait_for_depth(contracts::QUEUE_COMMANDS, 0).await;
    assert_eq!(
        h.broker.unacked_count(contracts::QUEUE_COMMANDS),
        Some(0),
        "poison is not held or requeued"
    );
    assert_eq!(h.analyzer.runs.load(Ordering::SeqCst), 1);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn repeated_command_after_completion_is_acked_without_running_again() {
    let h = Harness::new(Duration::from_secs(1)).await;
    let (stop, task) = h.start();
    h.send(&request(6, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    h.send(&request(6, None)).await;
    h.wait_for_depth(contracts::QUEUE_COMMANDS, 0).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.analyzer.runs.load(Ordering::SeqCst), 1);
    assert_eq!(h.broker.queue_depth(contracts::QUEUE_SUBS_STARTED), Some(1));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn crash_mid_analysis_runs_it_again_with_the_same_message_ids() {
    let h = Harness::new(Duration::from_secs(30)).await;
    let (_stop, crashed) = h.start();
    h.send(&request(7, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_STARTED, 1).await;
    crashed.abort(); // the process dies mid-analysis: its connection closes, the command is requeued
    let _ = crashed.await;
    h.wait_for_depth(contracts::QUEUE_COMMANDS, 1).await;

    let (stop, task) = h.start();
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    let started = h.drain(contracts::QUEUE_SUBS_STARTED).await;
    assert_eq!(
        started.len(),
        2,
        "Started is published again after the restart"
    );
    assert_eq!(
        started[0].0.message_id, started[1].0.message_id,
        "with the same message id"
    );
    assert_eq!(h.drain(contracts::QUEUE_SUBS_COMPLETED).await.len(), 1);
    assert_eq!(h.analyzer.runs.load(Ordering::SeqCst), 2);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_finishes_in_flight_analyses_before_returning() {
    let h = Harness::new(Duration::from_secs(10)).await;
    let (stop, task) = h.start();
    h.send(&request(8, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_STARTED, 1).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
    assert_eq!(
        h.broker.queue_depth(contracts::QUEUE_SUBS_COMPLETED),
        Some(1)
    );
    assert_eq!(h.broker.queue_depth(contracts::QUEUE_COMMANDS), Some(0));
    assert_eq!(h.broker.unacked_count(contracts::QUEUE_COMMANDS), Some(0));
}
