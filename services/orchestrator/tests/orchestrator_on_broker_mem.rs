//! The orchestrator against broker-mem through the memory adapter: the event sequence, poison,
//! failures, redelivery after completion, and a crash mid-analysis. Time is tokio's paused clock,
//! so long analyses cost nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use contracts::{Event, Properties, Publication, RequestAnalysis, Topology};
use futures::StreamExt;
use orchestrator::{BuiltinAnalyzer, OrchestratorConfig};
use ports::memory::MemoryBus;
use ports::{Bus, ConsumeOptions, Ports, SeededIds};
use serde_json::json;
use support::{Counting, request};
use tokio::sync::oneshot;
use uuid::Uuid;

mod support;

struct FixedClock;
impl ports::Clock for FixedClock {
    fn now_unix_ms(&self) -> i64 {
        1_767_225_600_000
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

    /// Polls `seen` (within 100 s of paused time) until it gives `wanted`.
    async fn wait_for<T: PartialEq + std::fmt::Debug>(
        &self,
        what: &str,
        wanted: T,
        seen: impl Fn(&broker_mem::Broker) -> T,
    ) {
        for _ in 0..10_000 {
            if seen(&self.broker) == wanted {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what} never reached {wanted:?}: {:?}", seen(&self.broker));
    }

    async fn wait_for_depth(&self, queue: &str, depth: usize) {
        let what = format!("{queue}'s depth");
        self.wait_for(&what, Some(depth), |b| b.queue_depth(queue))
            .await;
    }

    async fn wait_for_consumers(&self, queue: &str, count: usize) {
        let what = format!("{queue}'s consumers");
        self.wait_for(&what, Some(count), |b| b.consumer_count(queue))
            .await;
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

#[tokio::test(start_paused = true)]
async fn copy_of_a_running_command_is_held_unacked_until_that_run_settles() {
    // Two copies of one command (a publisher's retry, or a redelivery after a lost link): the
    // second must not be acked while the first is still running, or a failed first run whose
    // own settle is lost would leave the broker with no copy at all.
    let h = Harness::new(Duration::from_secs(10)).await;
    let (stop, task) = h.start();
    h.send(&request(9, None)).await;
    h.send(&request(9, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_STARTED, 1).await;
    h.wait_for_depth(contracts::QUEUE_COMMANDS, 0).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        h.broker.unacked_count(contracts::QUEUE_COMMANDS),
        Some(2),
        "the copy waits, unacked, for the running analysis"
    );
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    for _ in 0..100 {
        if h.broker.unacked_count(contracts::QUEUE_COMMANDS) == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(h.broker.unacked_count(contracts::QUEUE_COMMANDS), Some(0));
    assert_eq!(h.analyzer.runs.load(Ordering::SeqCst), 1, "run once");
    assert_eq!(h.broker.queue_depth(contracts::QUEUE_SUBS_STARTED), Some(1));
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn waiting_copy_runs_the_analysis_when_the_running_one_fails() {
    let h = Harness::new(Duration::from_secs(10)).await;
    let (stop, task) = h.start();
    let sent_at = tokio::time::Instant::now();
    h.send(&request(10, None)).await;
    h.send(&request(10, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_STARTED, 1).await;
    // The first run's Completed is refused: the waiting copy takes the analysis over.
    h.broker
        .nack_next_publish_to(contracts::EXCHANGE_COMPLETED, false);
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    // At once (10 s, then 10 s more), not after the refused run's requeue pause (1 s more),
    // which is when it would run if the copy had been acked on arrival.
    let took = sent_at.elapsed();
    assert!(
        took < Duration::from_millis(20_500),
        "Completed after {took:?}: the copy did not take over at once"
    );
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(
        h.broker.queue_depth(contracts::QUEUE_SUBS_COMPLETED),
        Some(1)
    );
    assert_eq!(h.broker.queue_depth(contracts::QUEUE_COMMANDS), Some(0));
    assert_eq!(h.broker.unacked_count(contracts::QUEUE_COMMANDS), Some(0));
    assert_eq!(h.analyzer.runs.load(Ordering::SeqCst), 2);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn refused_events_requeue_the_command_after_a_pause_not_at_once() {
    let h = Harness::new(Duration::ZERO).await;
    let (stop, task) = h.start();
    h.broker
        .nack_next_publish_to(contracts::EXCHANGE_STARTED, false);
    let sent_at = tokio::time::Instant::now();
    h.send(&request(11, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    let delay = OrchestratorConfig::default().refused_requeue_delay;
    assert!(
        sent_at.elapsed() >= delay,
        "requeued after {:?}, before the {delay:?} pause",
        sent_at.elapsed()
    );
    assert_eq!(h.broker.queue_depth(contracts::QUEUE_SUBS_STARTED), Some(1));
    assert_eq!(h.analyzer.runs.load(Ordering::SeqCst), 1);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn command_whose_completed_event_breaks_the_size_limit_is_rejected_not_looped() {
    // A command just within the body limit: its Completed (with the result, or even the
    // failure that replaces a refused result) is over it, so it can never be published.
    let h = Harness::new(Duration::ZERO).await;
    let (stop, task) = h.start();
    let mut big = request(12, None);
    big.requested_by = Some(String::new());
    let base = big.publication("test", 0).unwrap().body.len();
    big.requested_by = Some("a".repeat(contracts::BODY_BYTES_MAX - base));
    assert_eq!(
        big.publication("test", 0).unwrap().body.len(),
        contracts::BODY_BYTES_MAX
    );
    h.send(&big).await;
    h.send(&request(13, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h.broker.queue_depth(contracts::QUEUE_COMMANDS), Some(0));
    assert_eq!(h.broker.unacked_count(contracts::QUEUE_COMMANDS), Some(0));
    assert_eq!(
        h.analyzer.runs.load(Ordering::SeqCst),
        2,
        "each command ran once: the unpublishable one was not requeued"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn shutdown_requeues_a_waiting_copy_instead_of_starting_the_analysis_again() {
    let h = Harness::new(Duration::from_secs(10)).await;
    let (stop, task) = h.start();
    h.send(&request(14, None)).await;
    h.send(&request(14, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_STARTED, 1).await;
    h.wait_for_depth(contracts::QUEUE_COMMANDS, 0).await;
    // Stopping, and then the running copy's Completed is refused: the waiting copy must not
    // start a new ten-second analysis, and the refused one skips its pause.
    stop.send(()).unwrap();
    h.broker
        .nack_next_publish_to(contracts::EXCHANGE_COMPLETED, false);
    let stopped_at = tokio::time::Instant::now();
    task.await.unwrap().unwrap();
    // The running analysis finishes (about 10 s); a second one would take 10 s more.
    assert!(
        stopped_at.elapsed() < Duration::from_secs(15),
        "returned after {:?}",
        stopped_at.elapsed()
    );
    assert_eq!(h.analyzer.runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.broker.queue_depth(contracts::QUEUE_SUBS_COMPLETED),
        Some(0)
    );
    assert_eq!(
        h.broker.queue_depth(contracts::QUEUE_COMMANDS),
        Some(2),
        "both copies are back in the queue for the next orchestrator"
    );
}

/// An operator deletes the command queue under the orchestrator's live connection (on which
/// the adapters do not declare again): it declares the topology again, consumes again, and
/// runs what comes next.
#[tokio::test(start_paused = true)]
async fn a_command_queue_deleted_under_a_live_connection_is_declared_again() {
    let h = Harness::new(Duration::ZERO).await;
    let (stop, task) = h.start();
    h.wait_for_consumers(contracts::QUEUE_COMMANDS, 1).await;
    let operator = h.broker.connect();
    operator
        .open_channel()
        .unwrap()
        .queue_delete(contracts::QUEUE_COMMANDS, false, false)
        .unwrap();
    h.wait_for_consumers(contracts::QUEUE_COMMANDS, 1).await;
    h.send(&request(21, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}

/// Likewise an event exchange: the publish refused with 404 declares the topology again, and
/// the command, requeued after the pause, goes through.
#[tokio::test(start_paused = true)]
async fn an_event_exchange_deleted_under_a_live_connection_is_declared_again() {
    let h = Harness::new(Duration::ZERO).await;
    let (stop, task) = h.start();
    h.wait_for_consumers(contracts::QUEUE_COMMANDS, 1).await;
    let operator = h.broker.connect();
    operator
        .open_channel()
        .unwrap()
        .exchange_delete(contracts::EXCHANGE_STARTED, false)
        .unwrap();
    h.send(&request(22, None)).await;
    h.wait_for_depth(contracts::QUEUE_SUBS_COMPLETED, 1).await;
    assert!(
        h.broker
            .exchanges()
            .iter()
            .any(|x| x.name == contracts::EXCHANGE_STARTED),
        "declared again"
    );
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
