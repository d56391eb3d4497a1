//! The orchestrator over AMQP (the wire client against broker-mem's wire server, real sockets,
//! real time): what only a lost connection shows. The wire client consumes again on a new
//! connection within the same stream, so a command in flight comes back as a copy while its
//! first run is still going.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use contracts::Topology;
use orchestrator::{BuiltinAnalyzer, OrchestratorConfig};
use ports::wire::{WireBus, WireBusConfig};
use ports::{Bus, Ports, SeededIds, SystemClock, TokioNet};
use support::{Counting, request};
use tokio::sync::oneshot;

mod support;

async fn wait_for_depth(broker: &broker_mem::Broker, queue: &str, depth: usize) {
    for _ in 0..1_000 {
        if broker.queue_depth(queue) == Some(depth) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{queue} never reached depth {depth}: {:?}",
        broker.queue_depth(queue)
    );
}

/// The run's channel dies with the broker's restart and the broker redelivers the command on
/// the new connection while that run is still analysing; then the run's Completed is refused.
/// The copy must not have been acked on arrival: it is the broker's last, and it runs the
/// analysis itself. (Acked at once, as before c44b03b, the analysis was lost: the failed run's
/// requeue went to a dead channel.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_redelivered_while_its_run_goes_on_survives_that_run_failing() {
    let broker = broker_mem::Broker::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = broker_mem::wire::WireServer::new(broker.clone(), Default::default());
    tokio::spawn(server.serve_tcp(listener));
    let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    let bus = |url: &str| WireBus::new(TokioNet, WireBusConfig::from_url(url).unwrap());

    let test_bus = bus(&url);
    test_bus.declare(&Topology::contract()).await.unwrap();
    let analyzer = Arc::new(Counting {
        inner: BuiltinAnalyzer {
            duration: Duration::from_secs(2),
        },
        runs: AtomicUsize::new(0),
    });
    let ports = Ports {
        bus: Arc::new(bus(&url)),
        clock: Arc::new(SystemClock),
        ids: Arc::new(SeededIds::new(1)),
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(orchestrator::run(
        ports,
        analyzer.clone(),
        OrchestratorConfig::default(),
        async {
            let _ = stopped.await;
        },
    ));
    test_bus
        .publish(
            request(1, None)
                .publication(contracts::APP_ID_GATEWAY, 0)
                .unwrap(),
        )
        .await
        .unwrap();
    wait_for_depth(&broker, contracts::QUEUE_SUBS_STARTED, 1).await;
    assert_eq!(analyzer.runs.load(Ordering::SeqCst), 1);

    // Mid-analysis: every connection goes; the command (persistent, durable queue) comes back
    // to the orchestrator's resumed consumer; the first run's Completed will be nacked.
    broker.nack_next_publish_to(contracts::EXCHANGE_COMPLETED, false);
    broker.restart();

    wait_for_depth(&broker, contracts::QUEUE_SUBS_COMPLETED, 1).await;
    // Give a wrongly acked or requeued copy time to show itself.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(broker.queue_depth(contracts::QUEUE_SUBS_COMPLETED), Some(1));
    assert_eq!(broker.queue_depth(contracts::QUEUE_COMMANDS), Some(0));
    assert_eq!(broker.unacked_count(contracts::QUEUE_COMMANDS), Some(0));
    assert_eq!(analyzer.runs.load(Ordering::SeqCst), 2);
    stop.send(()).unwrap();
    task.await.unwrap().unwrap();
}
