//! Helpers shared by the bus test binaries (`bus_contract.rs`, `rabbitmq_bus.rs`): one copy of
//! the test message, the waits, and the RabbitMQ inspection helpers.
//!
//! Each test binary uses a subset of these, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::time::Duration;

use contracts::{EXCHANGE_COMMANDS, Properties, Publication, ROUTING_KEY_REQUEST, Topology};
use futures::StreamExt as _;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use ports::testing::RabbitVhost;
use ports::{Deliveries, Delivery};

/// A delivery the broker owes us arrives well within this.
pub const DELIVERY_WAIT_MS: u64 = 10_000;
/// Long enough for a delivery that is (wrongly) on its way to arrive on localhost.
pub const SILENCE_MS: u64 = 700;
/// Polling limit for state the broker reaches asynchronously.
pub const SETTLE_WAIT_MS: u64 = 15_000;
pub const POLL_INTERVAL_MS: u64 = 20;
/// Polling interval for the management API (it learns about new connections with a delay).
pub const MANAGEMENT_POLL_INTERVAL_MS: u64 = 100;

/// A `RequestAnalysis` command with every contract property set; `n` makes bodies distinct.
pub fn command(n: u32) -> Publication {
    let analysis_id = format!("0190f3a0-0000-7000-8000-{n:012}");
    Publication {
        exchange: EXCHANGE_COMMANDS.into(),
        routing_key: ROUTING_KEY_REQUEST.into(),
        properties: Properties {
            content_type: Some("application/json".into()),
            delivery_mode: Some(2),
            message_id: Some(format!("6f1c2a9e-4b4d-5d0e-9c3a-{n:012}")),
            correlation_id: Some(analysis_id.clone()),
            kind: Some("RequestAnalysis".into()),
            timestamp: Some(1_764_000_000 + u64::from(n)),
            app_id: Some("graph-gateway".into()),
        },
        body: format!(r#"{{"analysisId":"{analysis_id}","assetId":"asset-{n}"}}"#).into_bytes(),
    }
}

pub async fn next_delivery(stream: &mut Deliveries) -> Delivery {
    match tokio::time::timeout(Duration::from_millis(DELIVERY_WAIT_MS), stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(error))) => panic!("the consumer failed: {error}"),
        Ok(None) => panic!("the consumer ended"),
        Err(_) => panic!("no delivery within {DELIVERY_WAIT_MS} ms"),
    }
}

pub async fn assert_silent(stream: &mut Deliveries, why: &str) {
    let next = tokio::time::timeout(Duration::from_millis(SILENCE_MS), stream.next()).await;
    if let Ok(item) = next {
        panic!("expected no delivery ({why}), got {item:?}");
    }
}

/// Ready messages and consumers of a RabbitMQ queue, by passive declare on a connection of its
/// own (the management API's counters lag by seconds; this is exact).
pub async fn rabbit_queue_state(amqp_url: &str, queue: &str) -> (u32, u32) {
    let connection = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
        .await
        .expect("connect for a passive declare");
    let channel = connection.create_channel().await.expect("open a channel");
    let options = QueueDeclareOptions {
        passive: true,
        ..Default::default()
    };
    let declared = channel
        .queue_declare(queue.into(), options, FieldTable::default())
        .await
        .expect("passive declare");
    let _ = connection.close(200, "OK".into()).await;
    (declared.message_count(), declared.consumer_count())
}

/// Force-closes the vhost's client connections, polling until the management API, which learns
/// about new connections with a delay, lists at least one.
pub async fn kill_connections(vhost: &RabbitVhost) {
    for _ in 0..SETTLE_WAIT_MS / MANAGEMENT_POLL_INTERVAL_MS {
        if vhost.close_connections().await.expect("close connections") > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(MANAGEMENT_POLL_INTERVAL_MS)).await;
    }
    panic!("the management API never listed the bus's connection");
}

pub fn sorted(mut topology: Topology) -> Topology {
    topology.exchanges.sort();
    topology.queues.sort();
    topology.bindings.sort();
    topology
}
