//! `RabbitBus` against a real RabbitMQ: the truth the other bus adapters are held to.
//!
//! Each test runs in a vhost of its own (`ports::testing::RabbitVhost`), so they run in parallel
//! on one broker. Without a reachable broker each test prints `SKIPPED: ...` and passes, unless
//! `WARREN_REQUIRE_RABBITMQ=1` (CI), which makes it fail.
#![cfg(feature = "rabbitmq")]

use std::time::Duration;

use contracts::{
    EXCHANGE_COMMANDS, ExchangeKind, Properties, Publication, QUEUE_COMMANDS, ROUTING_KEY_REQUEST,
    Topology,
};
use futures::StreamExt as _;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use ports::rabbitmq::RabbitBus;
use ports::testing::RabbitVhost;
use ports::{Bus as _, BusError, ConsumeOptions, Deliveries, Delivery};

/// A delivery the broker owes us arrives well within this.
const DELIVERY_WAIT_MS: u64 = 10_000;
/// Long enough for a delivery that is (wrongly) on its way to arrive on localhost.
const SILENCE_MS: u64 = 700;
/// Polling limit for state the broker reaches asynchronously.
const SETTLE_WAIT_MS: u64 = 15_000;
const POLL_INTERVAL_MS: u64 = 100;

/// A fresh vhost and a bus connected to it; `None` when RabbitMQ is absent (skip rule).
async fn setup(test: &str) -> Option<(RabbitVhost, RabbitBus)> {
    let vhost = RabbitVhost::create(test)
        .await
        .expect("create the test's vhost")?;
    let bus = RabbitBus::connect(vhost.amqp_url())
        .await
        .expect("connect to the test's vhost");
    Some((vhost, bus))
}

async fn teardown(vhost: RabbitVhost, bus: RabbitBus) {
    bus.close().await.expect("close the bus");
    vhost.delete().await.expect("delete the test's vhost");
}

/// A `RequestAnalysis` command with every contract property set; `n` makes bodies distinct.
fn command(n: u32) -> Publication {
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

async fn next_delivery(stream: &mut Deliveries) -> Delivery {
    match tokio::time::timeout(Duration::from_millis(DELIVERY_WAIT_MS), stream.next()).await {
        Ok(Some(Ok(delivery))) => delivery,
        Ok(Some(Err(error))) => panic!("the consumer failed: {error}"),
        Ok(None) => panic!("the consumer ended"),
        Err(_) => panic!("no delivery within {DELIVERY_WAIT_MS} ms"),
    }
}

async fn assert_silent(stream: &mut Deliveries, why: &str) {
    let next = tokio::time::timeout(Duration::from_millis(SILENCE_MS), stream.next()).await;
    if let Ok(item) = next {
        panic!("expected no delivery ({why}), got {item:?}");
    }
}

/// Ready messages and consumers of a queue, by passive declare on a connection of its own (the
/// management API's counters lag by seconds; this is exact).
async fn queue_state(amqp_url: &str, queue: &str) -> (u32, u32) {
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

/// Waits until the queue has no consumer (a dropped stream's channel closes asynchronously),
/// then returns its ready messages.
async fn ready_after_consumers_left(amqp_url: &str, queue: &str) -> u32 {
    for _ in 0..SETTLE_WAIT_MS / POLL_INTERVAL_MS {
        let (ready, consumers) = queue_state(amqp_url, queue).await;
        if consumers == 0 {
            return ready;
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    panic!("queue {queue:?} still has a consumer after {SETTLE_WAIT_MS} ms");
}

fn sorted(mut topology: Topology) -> Topology {
    topology.exchanges.sort();
    topology.queues.sort();
    topology.bindings.sort();
    topology
}

#[tokio::test]
async fn declared_contract_topology_is_exactly_what_the_broker_lists() {
    let Some((vhost, bus)) = setup("declared_contract_topology").await else {
        return;
    };
    assert_eq!(
        vhost.topology().await.expect("list the empty vhost"),
        Topology::default()
    );

    bus.declare(&Topology::contract())
        .await
        .expect("declare the contract topology");
    bus.declare(&Topology::contract())
        .await
        .expect("declaring again is idempotent");

    let listed = vhost.topology().await.expect("list the vhost");
    assert_eq!(listed, sorted(Topology::contract()));
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn published_message_round_trips_every_contract_property() {
    let Some((vhost, bus)) = setup("round_trips_every_property").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");
    let sent = command(1);
    bus.publish(sent.clone())
        .await
        .expect("publish is confirmed");

    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume");
    let delivery = next_delivery(&mut stream).await;
    assert_eq!(delivery.properties, sent.properties);
    assert_eq!(delivery.body, sent.body);
    assert_eq!(delivery.exchange, EXCHANGE_COMMANDS);
    assert_eq!(delivery.routing_key, ROUTING_KEY_REQUEST);
    assert!(!delivery.redelivered);
    delivery.ack().await.expect("ack");

    drop(stream);
    assert_eq!(
        ready_after_consumers_left(vhost.amqp_url(), QUEUE_COMMANDS).await,
        0,
        "acked is gone"
    );
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn unacked_delivery_is_redelivered_after_its_stream_is_dropped() {
    let Some((vhost, bus)) = setup("unacked_is_redelivered").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");
    bus.publish(command(1)).await.expect("publish");

    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume");
    let first = next_delivery(&mut stream).await;
    assert!(!first.redelivered);
    drop(first); // never settled
    drop(stream);

    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume again");
    let again = next_delivery(&mut stream).await;
    assert!(
        again.redelivered,
        "the broker marks the second delivery as redelivered"
    );
    assert_eq!(again.body, command(1).body);
    again.ack().await.expect("ack");
    drop(stream);
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn nack_without_requeue_drops_the_message() {
    let Some((vhost, bus)) = setup("nack_without_requeue_drops").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");
    bus.publish(command(1)).await.expect("publish");

    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume");
    next_delivery(&mut stream)
        .await
        .nack(false)
        .await
        .expect("nack");
    assert_silent(
        &mut stream,
        "a nacked message without requeue is not redelivered",
    )
    .await;
    drop(stream);
    // Had the message still been unacked, closing the consumer's channel would requeue it.
    assert_eq!(
        ready_after_consumers_left(vhost.amqp_url(), QUEUE_COMMANDS).await,
        0
    );
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn reject_with_requeue_delivers_the_message_again() {
    let Some((vhost, bus)) = setup("reject_with_requeue").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");
    bus.publish(command(1)).await.expect("publish");

    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume");
    next_delivery(&mut stream)
        .await
        .reject(true)
        .await
        .expect("reject");
    let again = next_delivery(&mut stream).await;
    assert!(again.redelivered);
    again.ack().await.expect("ack");
    drop(stream);
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn prefetch_one_holds_back_the_next_delivery_until_ack() {
    let Some((vhost, bus)) = setup("prefetch_one").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");
    for n in 1..=3 {
        bus.publish(command(n)).await.expect("publish");
    }

    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions { prefetch: 1 })
        .await
        .expect("consume");
    for n in 1..=3 {
        let delivery = next_delivery(&mut stream).await;
        assert_eq!(delivery.body, command(n).body, "in publish order");
        assert_silent(&mut stream, "prefetch 1 allows one unacked delivery").await;
        delivery.ack().await.expect("ack");
    }
    drop(stream);
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn publish_to_missing_exchange_is_refused_with_404_and_the_bus_recovers() {
    let Some((vhost, bus)) = setup("missing_exchange_404").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");

    let mut lost = command(1);
    lost.exchange = "no.such.exchange".into();
    match bus.publish(lost).await {
        Err(BusError::Refused {
            operation,
            target,
            code,
            text,
        }) => {
            assert_eq!(
                (operation, target.as_str(), code),
                ("basic.publish", "no.such.exchange", 404)
            );
            assert!(text.contains("NOT_FOUND"), "RabbitMQ's reply text: {text}");
        }
        other => panic!("expected a 404 refusal, got {other:?}"),
    }

    bus.publish(command(2))
        .await
        .expect("the bus reopens its publishing channel");
    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume");
    let delivery = next_delivery(&mut stream).await;
    assert_eq!(delivery.body, command(2).body);
    delivery.ack().await.expect("ack");
    drop(stream);
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn inequivalent_redeclare_is_refused_with_406() {
    let Some((vhost, bus)) = setup("inequivalent_redeclare_406").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");

    let mut exchange_changed = Topology::contract();
    exchange_changed.exchanges[0].kind = ExchangeKind::Fanout;
    match bus.declare(&exchange_changed).await {
        Err(BusError::Refused {
            operation,
            target,
            code,
            text,
        }) => {
            assert_eq!(
                (operation, target.as_str(), code),
                ("exchange.declare", EXCHANGE_COMMANDS, 406)
            );
            assert!(
                text.contains("PRECONDITION_FAILED"),
                "RabbitMQ's reply text: {text}"
            );
        }
        other => panic!("expected a 406 refusal, got {other:?}"),
    }

    let mut queue_changed = Topology::contract();
    queue_changed.queues[0].durable = false;
    match bus.declare(&queue_changed).await {
        Err(BusError::Refused {
            operation,
            target,
            code,
            ..
        }) => {
            assert_eq!(
                (operation, target.as_str(), code),
                ("queue.declare", QUEUE_COMMANDS, 406)
            );
        }
        other => panic!("expected a 406 refusal, got {other:?}"),
    }

    bus.declare(&Topology::contract())
        .await
        .expect("the original still declares");
    bus.publish(command(1))
        .await
        .expect("and the bus still publishes");
    assert_eq!(
        vhost.topology().await.expect("list"),
        sorted(Topology::contract()),
        "unchanged"
    );
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn consuming_a_missing_queue_is_refused_with_404() {
    let Some((vhost, bus)) = setup("missing_queue_404").await else {
        return;
    };
    match bus
        .consume("no.such.queue", ConsumeOptions::default())
        .await
    {
        Err(BusError::Refused {
            operation,
            target,
            code,
            ..
        }) => {
            assert_eq!(
                (operation, target.as_str(), code),
                ("basic.consume", "no.such.queue", 404)
            );
        }
        Ok(_) => panic!("expected a 404 refusal, got a stream"),
        Err(other) => panic!("expected a 404 refusal, got {other:?}"),
    }
    let refused = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions { prefetch: 0 })
        .await
        .err();
    assert!(
        matches!(refused, Some(BusError::Invalid(_))),
        "prefetch 0 would be unbounded"
    );
    teardown(vhost, bus).await;
}

/// Force-closes the vhost's client connections, polling until the management API, which learns
/// about new connections with a delay, lists at least one.
async fn kill_connections(vhost: &RabbitVhost) {
    for _ in 0..SETTLE_WAIT_MS / POLL_INTERVAL_MS {
        if vhost.close_connections().await.expect("close connections") > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
    }
    panic!("the management API never listed the bus's connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_reconnects_after_the_broker_closes_its_connection() {
    let Some((vhost, bus)) = setup("reconnects_after_close").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");
    bus.publish(command(1)).await.expect("publish");
    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume");
    next_delivery(&mut stream).await.ack().await.expect("ack");

    kill_connections(&vhost).await;
    // The consumer hears about it: its stream fails (or ends) instead of hanging.
    let after = tokio::time::timeout(Duration::from_millis(DELIVERY_WAIT_MS), stream.next()).await;
    assert!(
        matches!(after, Ok(None | Some(Err(_)))),
        "the stream must end, got {after:?}"
    );
    drop(stream);
    // A publish finds the connection dead and reconnects.
    bus.publish(command(2)).await.expect("publish reconnects");

    kill_connections(&vhost).await;
    // So does a consume, which is what a service does when its stream fails.
    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume reconnects");
    let delivery = next_delivery(&mut stream).await;
    assert_eq!(delivery.body, command(2).body);
    delivery.ack().await.expect("ack");
    bus.publish(command(3))
        .await
        .expect("publish on the new connection's fresh channel");
    next_delivery(&mut stream).await.ack().await.expect("ack");
    drop(stream);
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn concurrent_publishes_are_each_confirmed_and_delivered_once() {
    let Some((vhost, bus)) = setup("concurrent_publishes").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");
    const PUBLISHES: u32 = 50;
    let publishes = (0..PUBLISHES).map(|n| bus.publish(command(n)));
    for result in futures::future::join_all(publishes).await {
        result.expect("every publish is confirmed");
    }

    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions { prefetch: 8 })
        .await
        .expect("consume");
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..PUBLISHES {
        let delivery = next_delivery(&mut stream).await;
        assert!(
            ids.insert(delivery.properties.message_id.clone()),
            "no duplicates"
        );
        delivery.ack().await.expect("ack");
    }
    assert_silent(&mut stream, "exactly the published messages").await;
    drop(stream);
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn closed_bus_refuses_further_work() {
    let Some((vhost, bus)) = setup("closed_bus_refuses").await else {
        return;
    };
    bus.close().await.expect("close");
    assert_eq!(bus.publish(command(1)).await, Err(BusError::Closed));
    assert_eq!(
        bus.declare(&Topology::contract()).await,
        Err(BusError::Closed)
    );
    assert!(matches!(
        bus.consume(QUEUE_COMMANDS, ConsumeOptions::default()).await,
        Err(BusError::Closed)
    ));
    vhost.delete().await.expect("delete the test's vhost");
}

/// Needs no broker: nothing listens on port 1.
#[tokio::test]
async fn connection_error_names_the_url_without_the_password() {
    let error = RabbitBus::connect("amqp://guest:s3cret@127.0.0.1:1/%2f")
        .await
        .expect_err("nothing listens on port 1");
    let BusError::Connection(text) = &error else {
        panic!("expected a connection error, got {error:?}")
    };
    assert!(
        text.contains("amqp://guest:***@127.0.0.1:1/%2f"),
        "names the URL: {text}"
    );
    assert!(!text.contains("s3cret"), "never the password: {text}");
}

#[tokio::test]
async fn vhost_guard_deletes_the_vhost_when_a_test_panics() {
    let Some(vhost) = RabbitVhost::create("vhost_guard_on_panic")
        .await
        .expect("create")
    else {
        return;
    };
    let url = vhost.amqp_url().to_owned();
    RabbitBus::connect(&url)
        .await
        .expect("the vhost exists")
        .close()
        .await
        .expect("close");

    let failing_test = tokio::spawn(async move {
        let _guard = vhost;
        panic!("deliberate panic, to exercise the vhost guard");
    });
    assert!(
        failing_test
            .await
            .expect_err("the task panicked")
            .is_panic()
    );

    let gone = RabbitBus::connect(&url).await;
    assert!(
        matches!(gone, Err(BusError::Connection(_))),
        "the vhost is deleted: {gone:?}"
    );
}
