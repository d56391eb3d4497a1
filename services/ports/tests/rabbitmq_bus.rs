//! What only lapin's adapter (`RabbitBus`) against a real RabbitMQ has to show: it reconnects
//! after the broker force-closes its connection, it abandons a connection the broker stops
//! answering on instead of hanging, a closed bus refuses work, connection errors
//! redact the password, and the per-test vhost guard cleans up. The bus contract itself (topology,
//! round trip, ack / nack / reject, prefetch, refusals, concurrent confirms) runs for lapin +
//! RabbitMQ, beside every other pairing, in `bus_contract.rs`.
//!
//! Each test runs in a vhost of its own (`ports::testing::RabbitVhost`), so they run in parallel
//! on one broker. Without a reachable broker each test prints `SKIPPED: ...` and passes, unless
//! `WARREN_REQUIRE_RABBITMQ=1` (CI), which makes it fail.
#![cfg(feature = "rabbitmq")]

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contracts::{QUEUE_COMMANDS, Topology};
use futures::StreamExt as _;
use ports::rabbitmq::{ROUND_TRIP_TIMEOUT_MS, RabbitBus};
use ports::testing::RabbitVhost;
use ports::{Bus as _, BusError, ConsumeOptions};
use support::{DELIVERY_WAIT_MS, command, kill_connections, next_delivery};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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

/// Another client, on its own connection, deletes the command queue; the connection and its
/// channel are handed back for more.
async fn delete_the_command_queue_behind_the_bus(
    vhost: &RabbitVhost,
) -> (lapin::Connection, lapin::Channel) {
    let other =
        lapin::Connection::connect(vhost.amqp_url(), lapin::ConnectionProperties::default())
            .await
            .expect("connect");
    let channel = other.create_channel().await.expect("channel");
    channel
        .queue_delete(QUEUE_COMMANDS.into(), Default::default())
        .await
        .expect("queue.delete");
    (other, channel)
}

async fn teardown(vhost: RabbitVhost, bus: RabbitBus) {
    bus.close().await.expect("close the bus");
    vhost.delete().await.expect("delete the test's vhost");
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

/// A broker that lost the topology (a recreated RabbitMQ, a deleted queue) gets it declared
/// again when the bus reconnects, as the wire client does: else every consume would be a 404
/// until the service restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_declares_its_topology_again_on_a_new_connection() {
    let Some((vhost, bus)) = setup("declares_again").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");
    // Another client deletes the command queue and its exchange behind the bus's back.
    let (other, channel) = delete_the_command_queue_behind_the_bus(&vhost).await;
    channel
        .exchange_delete(contracts::EXCHANGE_COMMANDS.into(), Default::default())
        .await
        .expect("exchange.delete");
    let _ = other.close(200, "OK".into()).await;

    kill_connections(&vhost).await;
    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume reconnects, and the queue is there again");
    bus.publish(command(1))
        .await
        .expect("publish to the exchange declared again");
    next_delivery(&mut stream).await.ack().await.expect("ack");
    drop(stream);
    teardown(vhost, bus).await;
}

#[tokio::test]
async fn a_remembered_topology_the_broker_now_refuses_does_not_stop_the_bus() {
    let Some((vhost, bus)) = setup("declare_again_refused").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");
    // Another client replaces the command queue with one of other arguments: declaring the
    // contract's again is now refused (406).
    let (other, channel) = delete_the_command_queue_behind_the_bus(&vhost).await;
    let mut arguments = lapin::types::FieldTable::default();
    arguments.insert(
        "x-max-length".into(),
        lapin::types::AMQPValue::LongLongInt(5),
    );
    channel
        .queue_declare(
            QUEUE_COMMANDS.into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await
        .expect("queue.declare with other arguments");
    let _ = other.close(200, "OK".into()).await;

    kill_connections(&vhost).await;
    // The refusal while declaring again on the new connection is logged, not fatal.
    bus.publish(command(1))
        .await
        .expect("publish on a new connection");
    let stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume the queue as it now is");
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

/// A broker that stops answering on an open connection (a wedged broker, a network path that
/// drops packets without a reset, or lapin leaving a call pending, amqp-rs/lapin#409) costs one
/// round-trip bound, not a hang: the bus abandons that connection and its retry reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bus_abandons_a_connection_the_broker_stops_answering_on() {
    let Some(vhost) = RabbitVhost::create("abandons_silent_connection")
        .await
        .expect("create the test's vhost")
    else {
        return;
    };
    let proxy = FreezingProxy::start(vhost.amqp_url()).await;
    let bus = RabbitBus::connect(&proxy.amqp_url(vhost.amqp_url()))
        .await
        .expect("connect through the proxy");
    bus.declare(&Topology::contract()).await.expect("declare");
    assert_eq!(proxy.connections(), 1);

    proxy.freeze_open_connections();
    // The channel.open goes unanswered; the retry runs on a new connection.
    let bound = Duration::from_millis(3 * ROUND_TRIP_TIMEOUT_MS);
    let declared = tokio::time::timeout(bound, bus.declare(&Topology::contract())).await;
    assert!(
        matches!(declared, Ok(Ok(()))),
        "declare on a fresh connection: {declared:?}"
    );
    assert_eq!(proxy.connections(), 2, "the bus reconnected once");

    bus.publish(command(1)).await.expect("publish");
    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume");
    let delivery = next_delivery(&mut stream).await;
    assert_eq!(delivery.body, command(1).body);
    delivery.ack().await.expect("ack");
    drop(stream);
    teardown(vhost, bus).await;
}

/// A publish whose confirm never comes back is reported unconfirmed, not as not published: the
/// broker has the message. (The wire client, whose confirm timeout can be shortened; lapin's
/// adapter maps its own timeout the same way, after 30 s.)
#[cfg(feature = "wire")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_whose_confirm_never_comes_is_unconfirmed_and_the_broker_has_it() {
    let Some((vhost, bus)) = setup("unconfirmed_publish").await else {
        return;
    };
    bus.declare(&Topology::contract()).await.expect("declare");
    let proxy = FreezingProxy::start(vhost.amqp_url()).await;
    let mut config =
        ports::wire::WireBusConfig::from_url(&proxy.amqp_url(vhost.amqp_url())).expect("url");
    config.confirm_timeout = Duration::from_millis(500);
    let wire = ports::wire::WireBus::connect(ports::TokioNet, config)
        .await
        .expect("connect through the proxy");
    wire.publish(command(1))
        .await
        .expect("confirmed before the freeze");

    proxy.freeze_replies();
    let outcome = wire.publish(command(2)).await;
    assert!(
        matches!(&outcome, Err(BusError::Unconfirmed { exchange, .. }) if exchange == "analysis.commands"),
        "{outcome:?}"
    );
    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .expect("consume");
    for n in [1, 2] {
        let delivery = next_delivery(&mut stream).await;
        assert_eq!(delivery.body, command(n).body, "the broker took both");
        delivery.ack().await.expect("ack");
    }
    drop(stream);
    drop(wire);
    teardown(vhost, bus).await;
}

/// A TCP proxy to the broker whose open connections can be frozen: from then on it swallows
/// what either side sends (or only what the broker sends), and keeps both sockets open, so the
/// side frozen out hears nothing. New connections pass through as before.
struct FreezingProxy {
    port: u16,
    /// Per connection: the client-to-broker direction's flag, then the broker-to-client one's.
    freezes: Arc<Mutex<Vec<[Arc<AtomicBool>; 2]>>>,
}

impl FreezingProxy {
    async fn start(upstream_url: &str) -> FreezingProxy {
        let upstream = authority(upstream_url).to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let freezes: Arc<Mutex<Vec<[Arc<AtomicBool>; 2]>>> = Arc::default();
        let registry = freezes.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(broker) = tokio::net::TcpStream::connect(&upstream).await else {
                    continue;
                };
                let [requests, replies] = [(); 2].map(|()| Arc::new(AtomicBool::new(false)));
                (registry.lock().unwrap()).push([requests.clone(), replies.clone()]);
                let (client_read, client_write) = client.into_split();
                let (broker_read, broker_write) = broker.into_split();
                tokio::spawn(forward(client_read, broker_write, requests));
                tokio::spawn(forward(broker_read, client_write, replies));
            }
        });
        FreezingProxy { port, freezes }
    }

    /// `url` with the proxy in place of the broker's host and port.
    fn amqp_url(&self, url: &str) -> String {
        url.replacen(authority(url), &format!("127.0.0.1:{}", self.port), 1)
    }

    fn connections(&self) -> usize {
        self.freezes.lock().unwrap().len()
    }

    fn freeze_open_connections(&self) {
        for frozen in self.freezes.lock().unwrap().iter().flatten() {
            frozen.store(true, Ordering::SeqCst);
        }
    }

    /// The broker's side only: the client's frames still reach the broker, no answer comes back.
    fn freeze_replies(&self) {
        for [_, replies] in self.freezes.lock().unwrap().iter() {
            replies.store(true, Ordering::SeqCst);
        }
    }
}

/// `host:port` of `scheme://user:password@host:port/vhost`.
fn authority(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host)
}

/// Copies `from` to `to` until either closes, or swallows everything once `frozen` (the write
/// half is kept, so the peer sees an open, silent connection).
async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.load(Ordering::SeqCst) {
            continue;
        }
        if to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}
