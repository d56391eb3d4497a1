//! `warren up` serves the embedded broker over AMQP: an outside AMQP client joins the running
//! system and sees the services' traffic.

use std::time::Duration;

use client_console::{AnalysisInput, ConsoleConfig};
use contracts::{Binding, EXCHANGE_COMPLETED, QueueDecl, QueueLimits, Topology};
use futures::StreamExt as _;
use ports::wire::{WireBus, WireBusConfig};
use ports::{Bus as _, ConsumeOptions, TokioNet};
use warren_sim::{RunningSystem, SystemConfig};

#[tokio::test]
async fn an_amqp_client_joins_the_embedded_system_and_sees_its_events() {
    let config = SystemConfig {
        listen: "127.0.0.1:0".into(),
        analysis_duration: Duration::from_millis(20),
        ..SystemConfig::default()
    };
    let system = RunningSystem::start(config).await.unwrap();
    let broker = system.broker.clone().expect("embedded broker");
    let (addr, _serving) = warren_sim::embedded::serve_amqp(&broker, "127.0.0.1:0")
        .await
        .unwrap();

    let url = format!("amqp://guest:guest@{addr}/%2f");
    let bus = WireBus::connect(TokioNet, WireBusConfig::from_url(&url).unwrap())
        .await
        .unwrap();
    let audit = Topology {
        queues: vec![QueueDecl {
            name: "audit.completed".into(),
            durable: false,
            limits: QueueLimits::default(),
        }],
        bindings: vec![Binding {
            exchange: EXCHANGE_COMPLETED.into(),
            queue: "audit.completed".into(),
            routing_key: String::new(),
        }],
        ..Topology::default()
    };
    bus.declare(&audit)
        .await
        .expect("the services declared the exchange already");
    let mut completed = bus
        .consume("audit.completed", ConsumeOptions::default())
        .await
        .unwrap();

    let mut console = ConsoleConfig::from_url(&system.graphql_url()).unwrap();
    console.user = Some("alice".into());
    let input = AnalysisInput {
        asset_id: "press-1".into(),
        analysis_type: "utilization".into(),
        parameters: None,
    };
    let outcome = client_console::run(&TokioNet, &console, &input, |_| {})
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), completed.next())
        .await
        .expect("in time")
        .expect("a delivery")
        .expect("no error");
    assert_eq!(
        delivery.properties.correlation_id.as_deref(),
        Some(outcome.requested.analysis_id.as_str())
    );
    delivery.ack().await.unwrap();
    drop(completed);
    bus.close().await.unwrap();
    system.stop().await.unwrap();
}
