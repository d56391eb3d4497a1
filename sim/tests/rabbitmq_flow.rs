//! The full flow on real RabbitMQ: the same services, the lapin adapter, a vhost of its own.
//! Skips (saying so) when RabbitMQ is not reachable, unless WARREN_REQUIRE_RABBITMQ=1.

use std::time::Duration;

use client_console::{AnalysisInput, ConsoleConfig, EventKind};
use contracts::Topology;
use ports::testing::RabbitVhost;
use warren_sim::{BrokerChoice, RunningSystem, SystemConfig};

fn sorted(mut t: Topology) -> Topology {
    t.exchanges.sort();
    t.queues.sort();
    t.bindings.sort();
    t
}

#[tokio::test]
async fn full_flow_on_rabbitmq_declares_exactly_the_contract_and_completes_analyses() {
    let Some(vhost) = RabbitVhost::create("full-flow").await.unwrap() else {
        return;
    };
    let config = SystemConfig {
        listen: "127.0.0.1:0".into(),
        broker: BrokerChoice::RabbitMq(vhost.amqp_url().to_owned()),
        analysis_duration: Duration::from_millis(20),
        orchestrator_concurrency: 4,
        edge: None,
    };
    let system = RunningSystem::start(config).await.unwrap();
    assert_eq!(
        vhost.topology().await.unwrap(),
        sorted(Topology::contract()),
        "declared topology is the contract's"
    );

    let mut console = ConsoleConfig::from_url(&system.graphql_url()).unwrap();
    console.user = Some("alice".into());
    console.timeout = Duration::from_secs(30);
    let runs = (0..8).map(|i| {
        let console = console.clone();
        let input = AnalysisInput {
            asset_id: format!("press-{i}"),
            analysis_type: "utilization".into(),
            parameters: None,
        };
        async move { client_console::run(&ports::TokioNet, &console, &input, |_| {}).await }
    });
    for outcome in futures::future::join_all(runs).await {
        let outcome = outcome.unwrap();
        let kinds: Vec<_> = outcome.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Started, EventKind::Completed]);
        assert!(
            outcome
                .events
                .iter()
                .all(|e| e.analysis_id == outcome.requested.analysis_id)
        );
    }
    system.stop().await.unwrap();
    vhost.delete().await.unwrap();
}

#[tokio::test]
async fn command_sent_before_any_orchestrator_runs_waits_in_its_queue() {
    // The gateway declares the command queue itself, so nothing is dropped as unroutable.
    let Some(vhost) = RabbitVhost::create("early-command").await.unwrap() else {
        return;
    };
    let bus = std::sync::Arc::new(
        ports::rabbitmq::RabbitBus::connect(vhost.amqp_url())
            .await
            .unwrap(),
    );
    let gateway_ports = ports::Ports::real(bus.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let gateway = tokio::spawn(graph_gateway::run(
        gateway_ports,
        listener,
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let console = ConsoleConfig::from_url(&format!("http://{addr}/graphql")).unwrap();
    let input = AnalysisInput {
        asset_id: "press-1".into(),
        analysis_type: "utilization".into(),
        parameters: None,
    };
    let requested = client_console::request_analysis(&ports::TokioNet, &console, &input)
        .await
        .unwrap();

    // Only now does an orchestrator start; the subscription replays what it missed.
    let orchestrator_bus = std::sync::Arc::new(
        ports::rabbitmq::RabbitBus::connect(vhost.amqp_url())
            .await
            .unwrap(),
    );
    let (stop_o, stopped_o) = tokio::sync::oneshot::channel::<()>();
    let orchestrator = tokio::spawn(orchestrator::run(
        ports::Ports::real(orchestrator_bus),
        std::sync::Arc::new(orchestrator::BuiltinAnalyzer::default()),
        Default::default(),
        async {
            let _ = stopped_o.await;
        },
    ));
    let mut subscriber = client_console::Subscriber::connect(&ports::TokioNet, &console)
        .await
        .unwrap();
    let events = tokio::time::timeout(
        Duration::from_secs(30),
        subscriber.follow(&requested.analysis_id, |_| {}),
    )
    .await
    .expect("completed in time")
    .unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::Started, EventKind::Completed]
    );
    stop.send(()).unwrap();
    stop_o.send(()).unwrap();
    gateway.await.unwrap().unwrap();
    orchestrator.await.unwrap().unwrap();
    vhost.delete().await.unwrap();
}
