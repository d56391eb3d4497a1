//! One bus contract, five pairings, the same expectations: lapin (`RabbitBus`) + RabbitMQ (the
//! truth), lapin + broker-mem's wire server, the wire client (`WireBus`) + broker-mem's wire
//! server, the wire client + RabbitMQ, and the memory adapter (`MemoryBus`) on broker-mem in
//! process. Where broker-mem and RabbitMQ differ, broker-mem is wrong.
//!
//! Tests specific to one adapter live after the contract: the wire client's here, lapin's in
//! `rabbitmq_bus.rs`. Shared helpers are in `support/mod.rs`.
//!
//! RabbitMQ pairings follow the skip rule of `ports::testing` (a `SKIPPED:` line without a
//! broker, a failure with `WARREN_REQUIRE_RABBITMQ=1`).
#![cfg(all(feature = "rabbitmq", feature = "wire"))]

mod support;

use std::sync::Arc;
use std::time::Duration;

use broker_mem::Broker;
use broker_mem::wire::{WireConfig, WireServer};
use contracts::{
    Binding, EXCHANGE_COMMANDS, ExchangeDecl, ExchangeKind, QUEUE_COMMANDS, QueueDecl, QueueLimits,
    ROUTING_KEY_REQUEST, Topology,
};
use futures::StreamExt as _;
use ports::rabbitmq::RabbitBus;
use ports::testing::RabbitVhost;
use ports::wire::{WireBus, WireBusConfig};
use ports::{Bus, BusError, ConsumeOptions, Deliveries, TokioNet};
use support::{
    POLL_INTERVAL_MS, SETTLE_WAIT_MS, assert_silent, command, kill_connections, next_delivery,
    rabbit_queue_state, sorted,
};

/// Where the bus under test is connected, and how to look inside that broker.
enum Target {
    Mem(Broker),
    Rabbit(RabbitVhost),
}

struct Fixture {
    bus: Arc<dyn Bus>,
    target: Target,
    /// Closes the bus (each adapter has its own `close`).
    close: Box<dyn FnOnce() -> futures::future::BoxFuture<'static, ()> + Send>,
}

async fn wire_server(broker: &Broker) -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    tokio::spawn(server.serve_tcp(listener));
    port
}

fn wire_bus(url: &str) -> Arc<WireBus<TokioNet>> {
    Arc::new(WireBus::new(
        TokioNet,
        WireBusConfig::from_url(url).unwrap(),
    ))
}

impl Fixture {
    async fn lapin_mem() -> Option<Fixture> {
        let broker = Broker::new();
        let port = wire_server(&broker).await;
        let bus = Arc::new(
            RabbitBus::connect(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
                .await
                .unwrap(),
        );
        let closing = bus.clone();
        Some(Fixture {
            bus,
            target: Target::Mem(broker),
            close: Box::new(move || Box::pin(async move { closing.close().await.unwrap() })),
        })
    }

    async fn wire_mem() -> Option<Fixture> {
        let broker = Broker::new();
        let port = wire_server(&broker).await;
        let bus = wire_bus(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"));
        let closing = bus.clone();
        Some(Fixture {
            bus,
            target: Target::Mem(broker),
            close: Box::new(move || Box::pin(async move { closing.close().await.unwrap() })),
        })
    }

    /// The memory adapter on a fresh broker-mem, in process. It has no `close`: dropping the
    /// bus closes its connection, which `teardown` does when it drops the fixture.
    #[cfg(feature = "memory")]
    async fn memory() -> Option<Fixture> {
        let broker = Broker::new();
        let bus = Arc::new(ports::memory::MemoryBus::new(broker.clone()));
        Some(Fixture {
            bus,
            target: Target::Mem(broker),
            close: Box::new(|| Box::pin(async {})),
        })
    }

    /// The truth.
    async fn lapin_rabbit(test: &str) -> Option<Fixture> {
        let vhost = RabbitVhost::create(&format!("lapin-{test}"))
            .await
            .unwrap()?;
        let bus = Arc::new(RabbitBus::connect(vhost.amqp_url()).await.unwrap());
        let closing = bus.clone();
        Some(Fixture {
            bus,
            target: Target::Rabbit(vhost),
            close: Box::new(move || Box::pin(async move { closing.close().await.unwrap() })),
        })
    }

    async fn wire_rabbit(test: &str) -> Option<Fixture> {
        let vhost = RabbitVhost::create(&format!("wire-{test}"))
            .await
            .unwrap()?;
        let bus = wire_bus(vhost.amqp_url());
        let closing = bus.clone();
        Some(Fixture {
            bus,
            target: Target::Rabbit(vhost),
            close: Box::new(move || Box::pin(async move { closing.close().await.unwrap() })),
        })
    }

    /// Declares the contract topology, publishes `command(n)` for each `n`, then consumes the
    /// commands queue.
    async fn publish_then_consume(
        &self,
        commands: std::ops::RangeInclusive<u32>,
        options: ConsumeOptions,
    ) -> Deliveries {
        self.bus.declare(&Topology::contract()).await.unwrap();
        for n in commands {
            self.bus.publish(command(n)).await.unwrap();
        }
        self.consume_commands(options).await
    }

    async fn consume_commands(&self, options: ConsumeOptions) -> Deliveries {
        self.bus.consume(QUEUE_COMMANDS, options).await.unwrap()
    }

    async fn teardown(self) {
        (self.close)().await;
        if let Target::Rabbit(vhost) = self.target {
            vhost.delete().await.unwrap();
        }
    }

    /// Ready messages of `queue` once it has no consumer (a dropped stream's channel closes
    /// asynchronously).
    async fn ready_after_consumers_left(&self, queue: &str) -> u32 {
        for _ in 0..SETTLE_WAIT_MS / POLL_INTERVAL_MS {
            let (ready, consumers) = match &self.target {
                Target::Mem(broker) => (
                    broker.queue_depth(queue).unwrap() as u32,
                    broker.consumer_count(queue).unwrap() as u32,
                ),
                Target::Rabbit(vhost) => rabbit_queue_state(vhost.amqp_url(), queue).await,
            };
            if consumers == 0 {
                return ready;
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
        panic!("queue {queue:?} still has a consumer after {SETTLE_WAIT_MS} ms");
    }

    async fn topology(&self) -> Topology {
        match &self.target {
            Target::Rabbit(vhost) => vhost.topology().await.unwrap(),
            Target::Mem(broker) => {
                let mut topology = Topology::default();
                for exchange in broker.exchanges() {
                    if exchange.name.is_empty() || exchange.name.starts_with("amq.") {
                        continue;
                    }
                    let kind = match exchange.kind.as_str() {
                        "fanout" => ExchangeKind::Fanout,
                        _ => ExchangeKind::Direct,
                    };
                    topology.exchanges.push(ExchangeDecl {
                        name: exchange.name,
                        kind,
                        durable: exchange.durable,
                    });
                }
                for queue in broker.queues() {
                    let arguments = broker.queue_arguments(&queue.name).unwrap_or_default();
                    topology.queues.push(QueueDecl {
                        name: queue.name,
                        durable: queue.durable,
                        limits: QueueLimits {
                            expires_ms: arguments.expires_ms,
                            max_length: arguments.max_length,
                            max_length_bytes: arguments.max_length_bytes,
                        },
                    });
                }
                for binding in broker.bindings() {
                    topology.bindings.push(Binding {
                        exchange: binding.exchange,
                        queue: binding.queue,
                        routing_key: binding.routing_key,
                    });
                }
                sorted(topology)
            }
        }
    }
}

// ------------------------------------------------------------------------------ the contract

async fn declared_topology_is_exactly_what_the_broker_lists(f: Fixture) {
    assert_eq!(f.topology().await, Topology::default());
    f.bus
        .declare(&Topology::contract())
        .await
        .expect("declare the contract topology");
    f.bus
        .declare(&Topology::contract())
        .await
        .expect("declaring again is idempotent");
    assert_eq!(f.topology().await, sorted(Topology::contract()));
    f.teardown().await;
}

async fn a_gateway_replicas_own_queues_are_declared_with_their_limits(f: Fixture) {
    let replica = Topology::gateway_for(Some("gw-2"));
    f.bus
        .declare(&replica)
        .await
        .expect("declare a replica's topology");
    f.bus
        .declare(&replica)
        .await
        .expect("declaring the same limits again is idempotent");
    let listed = f.topology().await;
    assert_eq!(listed, sorted(replica.clone()));
    assert!(
        listed
            .queues
            .iter()
            .any(|q| q.name == "graph.subs.started.gw-2"
                && q.limits == QueueLimits::gateway_instance()),
        "{listed:?}"
    );
    f.teardown().await;
}

async fn published_message_round_trips_every_contract_property(f: Fixture) {
    f.bus.declare(&Topology::contract()).await.unwrap();
    let sent = command(1);
    f.bus.publish(sent.clone()).await.unwrap();
    let mut stream = f.consume_commands(ConsumeOptions::default()).await;
    let delivery = next_delivery(&mut stream).await;
    assert_eq!(delivery.properties, sent.properties);
    assert_eq!(delivery.body, sent.body);
    assert_eq!(delivery.exchange, EXCHANGE_COMMANDS);
    assert_eq!(delivery.routing_key, ROUTING_KEY_REQUEST);
    assert!(!delivery.redelivered);
    delivery.ack().await.unwrap();
    drop(stream);
    assert_eq!(
        f.ready_after_consumers_left(QUEUE_COMMANDS).await,
        0,
        "acked is gone"
    );
    f.teardown().await;
}

/// How the test leaves its first delivery before the message comes back.
enum Unsettled {
    /// Drops the delivery without settling it, then its stream.
    Dropped,
    /// Drops the stream, then acks the delivery too late: the ack fails.
    AckedAfterTheStream,
}

async fn redelivered_after_its_stream_is_dropped(f: Fixture, unsettled: Unsettled) {
    let mut stream = f
        .publish_then_consume(1..=1, ConsumeOptions::default())
        .await;
    let first = next_delivery(&mut stream).await;
    assert!(!first.redelivered);
    match unsettled {
        Unsettled::Dropped => {
            drop(first); // never settled
            drop(stream);
        }
        Unsettled::AckedAfterTheStream => {
            drop(stream);
            let late = first.ack().await;
            assert!(matches!(late, Err(BusError::Connection(_))), "{late:?}");
        }
    }
    let mut stream = f.consume_commands(ConsumeOptions::default()).await;
    let again = next_delivery(&mut stream).await;
    assert!(
        again.redelivered,
        "the broker marks the second delivery as redelivered"
    );
    assert_eq!(again.body, command(1).body);
    again.ack().await.unwrap();
    drop(stream);
    f.teardown().await;
}

/// Settling a delivery after its stream was dropped fails, and the message comes back.
async fn unacked_delivery_is_redelivered_after_its_stream_is_dropped(f: Fixture) {
    redelivered_after_its_stream_is_dropped(f, Unsettled::AckedAfterTheStream).await;
}

/// Dropping a delivery without settling it settles nothing: once its stream is dropped too, the
/// message comes back.
async fn dropped_unsettled_delivery_is_redelivered_after_its_stream_is_dropped(f: Fixture) {
    redelivered_after_its_stream_is_dropped(f, Unsettled::Dropped).await;
}

async fn nack_without_requeue_drops_the_message(f: Fixture) {
    let mut stream = f
        .publish_then_consume(1..=1, ConsumeOptions::default())
        .await;
    next_delivery(&mut stream).await.nack(false).await.unwrap();
    assert_silent(&mut stream, "a nacked message without requeue is gone").await;
    drop(stream);
    // Had the message still been unacked, closing the consumer's channel would requeue it.
    assert_eq!(f.ready_after_consumers_left(QUEUE_COMMANDS).await, 0);
    f.teardown().await;
}

async fn reject_with_requeue_delivers_the_message_again(f: Fixture) {
    let mut stream = f
        .publish_then_consume(1..=1, ConsumeOptions::default())
        .await;
    next_delivery(&mut stream).await.reject(true).await.unwrap();
    let again = next_delivery(&mut stream).await;
    assert!(again.redelivered);
    again.ack().await.unwrap();
    drop(stream);
    f.teardown().await;
}

async fn prefetch_one_holds_back_the_next_delivery_until_ack(f: Fixture) {
    let mut stream = f
        .publish_then_consume(1..=3, ConsumeOptions { prefetch: 1 })
        .await;
    for n in 1..=3 {
        let delivery = next_delivery(&mut stream).await;
        assert_eq!(delivery.body, command(n).body, "in publish order");
        assert_silent(&mut stream, "prefetch 1 allows one unacked delivery").await;
        delivery.ack().await.unwrap();
    }
    drop(stream);
    f.teardown().await;
}

/// The broker's refusal as (operation, target, code, reply text); panics on anything else.
fn refusal<T>(result: Result<T, BusError>, expected: &str) -> (&'static str, String, u16, String) {
    match result {
        Err(BusError::Refused {
            operation,
            target,
            code,
            text,
        }) => (operation, target, code, text),
        Ok(_) => panic!("expected {expected}, got success"),
        Err(other) => panic!("expected {expected}, got {other:?}"),
    }
}

async fn publish_to_missing_exchange_is_refused_with_404_and_the_bus_recovers(f: Fixture) {
    f.bus.declare(&Topology::contract()).await.unwrap();
    let mut lost = command(1);
    lost.exchange = "no.such.exchange".into();
    let (operation, target, code, text) = refusal(f.bus.publish(lost).await, "a 404 refusal");
    assert_eq!(
        (operation, target.as_str(), code),
        ("basic.publish", "no.such.exchange", 404)
    );
    assert!(
        text.contains("NOT_FOUND - no exchange 'no.such.exchange'"),
        "{text}"
    );
    f.bus
        .publish(command(2))
        .await
        .expect("the bus reopens its publishing channel");
    let mut stream = f.consume_commands(ConsumeOptions::default()).await;
    let delivery = next_delivery(&mut stream).await;
    assert_eq!(delivery.body, command(2).body);
    delivery.ack().await.unwrap();
    drop(stream);
    f.teardown().await;
}

async fn inequivalent_redeclare_is_refused_with_406(f: Fixture) {
    f.bus.declare(&Topology::contract()).await.unwrap();
    let mut changed = Topology::contract();
    changed.exchanges[0].kind = ExchangeKind::Fanout;
    let (operation, target, code, text) = refusal(f.bus.declare(&changed).await, "a 406 refusal");
    assert_eq!(
        (operation, target.as_str(), code),
        ("exchange.declare", EXCHANGE_COMMANDS, 406)
    );
    assert!(text.contains("PRECONDITION_FAILED"), "{text}");
    let mut queue_changed = Topology::contract();
    queue_changed.queues[0].durable = false;
    let (operation, target, code, _) =
        refusal(f.bus.declare(&queue_changed).await, "a 406 refusal");
    assert_eq!(
        (operation, target.as_str(), code),
        ("queue.declare", QUEUE_COMMANDS, 406)
    );
    f.bus
        .declare(&Topology::contract())
        .await
        .expect("the original still declares");
    f.bus
        .publish(command(1))
        .await
        .expect("and the bus still publishes");
    assert_eq!(
        f.topology().await,
        sorted(Topology::contract()),
        "unchanged"
    );
    f.teardown().await;
}

async fn consuming_a_missing_queue_is_refused_with_404(f: Fixture) {
    let consumed = f
        .bus
        .consume("no.such.queue", ConsumeOptions::default())
        .await;
    let (operation, target, code, _) = refusal(consumed, "a 404 refusal");
    assert_eq!(
        (operation, target.as_str(), code),
        ("basic.consume", "no.such.queue", 404)
    );
    let refused = f
        .bus
        .consume(QUEUE_COMMANDS, ConsumeOptions { prefetch: 0 })
        .await
        .err();
    assert!(
        matches!(refused, Some(BusError::Invalid(_))),
        "prefetch 0 would be unbounded"
    );
    f.teardown().await;
}

async fn concurrent_publishes_are_each_confirmed_and_delivered_once(f: Fixture) {
    f.bus.declare(&Topology::contract()).await.unwrap();
    const PUBLISHES: u32 = 50;
    let publishes = (0..PUBLISHES).map(|n| f.bus.publish(command(n)));
    for result in futures::future::join_all(publishes).await {
        result.expect("every publish is confirmed");
    }
    let mut stream = f.consume_commands(ConsumeOptions { prefetch: 8 }).await;
    let mut ids = std::collections::BTreeSet::new();
    for _ in 0..PUBLISHES {
        let delivery = next_delivery(&mut stream).await;
        assert!(
            ids.insert(delivery.properties.message_id.clone()),
            "no duplicates"
        );
        delivery.ack().await.unwrap();
    }
    assert_silent(&mut stream, "exactly the published messages").await;
    drop(stream);
    f.teardown().await;
}

macro_rules! pairing {
    ($module:ident, $fixture:expr) => {
        mod $module {
            use super::*;
            pairing!(@tests $fixture;
                declared_topology_is_exactly_what_the_broker_lists,
                a_gateway_replicas_own_queues_are_declared_with_their_limits,
                published_message_round_trips_every_contract_property,
                unacked_delivery_is_redelivered_after_its_stream_is_dropped,
                dropped_unsettled_delivery_is_redelivered_after_its_stream_is_dropped,
                nack_without_requeue_drops_the_message,
                reject_with_requeue_delivers_the_message_again,
                prefetch_one_holds_back_the_next_delivery_until_ack,
                publish_to_missing_exchange_is_refused_with_404_and_the_bus_recovers,
                inequivalent_redeclare_is_refused_with_406,
                consuming_a_missing_queue_is_refused_with_404,
                concurrent_publishes_are_each_confirmed_and_delivered_once
            );
        }
    };
    (@tests $fixture:expr; $($test:ident),*) => {
        $(
            #[tokio::test]
            async fn $test() {
                let make = $fixture;
                if let Some(fixture) = make(stringify!($test)).await {
                    super::$test(fixture).await;
                }
            }
        )*
    };
}

pairing!(lapin_on_rabbitmq, |test: &'static str| {
    Fixture::lapin_rabbit(test)
});
pairing!(lapin_on_broker_mem, |_: &'static str| Fixture::lapin_mem());
pairing!(wire_on_broker_mem, |_: &'static str| Fixture::wire_mem());
pairing!(wire_on_rabbitmq, |test: &'static str| Fixture::wire_rabbit(
    test
));
#[cfg(feature = "memory")]
pairing!(memory_on_broker_mem, |_: &'static str| Fixture::memory());

/// The wire client notices a broker that closed its connection: the next publish reconnects
/// (declaring the topology again) and the consumer stream consumes again by itself.
#[tokio::test]
async fn wire_bus_reconnects_and_resumes_consuming_after_rabbitmq_closes_its_connection() {
    let Some(f) = Fixture::wire_rabbit("reconnects").await else {
        return;
    };
    let Target::Rabbit(vhost) = &f.target else {
        unreachable!()
    };
    let mut stream = f
        .publish_then_consume(1..=1, ConsumeOptions::default())
        .await;
    next_delivery(&mut stream).await.ack().await.unwrap();
    kill_connections(vhost).await;
    f.bus.publish(command(2)).await.expect("publish reconnects");
    let delivery = next_delivery(&mut stream).await;
    assert_eq!(delivery.body, command(2).body, "the same stream resumed");
    delivery.ack().await.unwrap();
    drop(stream);
    f.teardown().await;
}

/// Without `resume_consumers`, a lost connection ends the stream with an error (as lapin's
/// adapter does) and the service consumes again.
#[tokio::test]
async fn without_resume_a_lost_connection_fails_the_stream_once() {
    let broker = Broker::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    // Serves exactly one connection, in a task the test can kill.
    let serving = tokio::spawn(async move {
        let (stream, _) = listener.accept().await?;
        server
            .serve_connection(stream)
            .await
            .map_err(std::io::Error::other)
    });
    let mut config =
        WireBusConfig::from_url(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).unwrap();
    config.resume_consumers = false;
    let bus = WireBus::new(TokioNet, config);
    bus.declare(&Topology::contract()).await.unwrap();
    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .unwrap();
    serving.abort();
    let _ = serving.await;
    let after = tokio::time::timeout(Duration::from_secs(30), stream.next()).await;
    assert!(
        matches!(after, Ok(Some(Err(BusError::Connection(_))))),
        "{after:?}"
    );
    assert!(stream.next().await.is_none(), "and then ends");
    assert_eq!(
        broker.consumer_count(QUEUE_COMMANDS),
        Some(0),
        "the server forgot it"
    );
}

#[tokio::test]
async fn wrong_password_is_refused_with_403_and_names_no_secret() {
    let broker = Broker::new();
    let port = wire_server(&broker).await;
    let url = format!("amqp://guest:s3cret@127.0.0.1:{port}/%2f");
    let error = WireBus::connect(TokioNet, WireBusConfig::from_url(&url).unwrap())
        .await
        .unwrap_err();
    match &error {
        BusError::Refused { code, text, .. } => {
            assert_eq!(*code, 403);
            assert!(text.contains("ACCESS_REFUSED"), "{text}");
        }
        other => panic!("expected 403, got {other:?}"),
    }
    assert!(!error.to_string().contains("s3cret"), "{error}");
}

/// A delivery larger than `WireBusConfig::received_body_bytes_max` is never held: the wire
/// client rejects it without requeue and the next one arrives.
#[tokio::test]
async fn a_delivery_larger_than_the_wire_bus_takes_is_rejected_and_the_next_arrives() {
    let broker = Broker::new();
    let port = wire_server(&broker).await;
    let mut config =
        WireBusConfig::from_url(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f")).unwrap();
    config.received_body_bytes_max = 1024;
    let bus = WireBus::new(TokioNet, config);
    bus.declare(&Topology::contract()).await.unwrap();
    let publisher = broker.connect();
    let channel = publisher.open_channel().unwrap();
    for body in [vec![b'x'; 4096], b"small".to_vec()] {
        channel
            .basic_publish(
                "",
                QUEUE_COMMANDS,
                broker_mem::Properties::default(),
                body.into(),
            )
            .unwrap();
    }
    let mut stream = bus
        .consume(QUEUE_COMMANDS, ConsumeOptions::default())
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a delivery")
        .expect("the stream goes on")
        .expect("no error");
    assert_eq!(&delivery.body[..], b"small");
    assert_eq!(broker.queue_depth(QUEUE_COMMANDS), Some(0));
    // The reject went out before the small one arrived; the server takes it in its own time.
    let settled = async {
        while broker.unacked_count(QUEUE_COMMANDS) != Some(1) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), settled)
        .await
        .expect("the large one is settled, not held");
    assert_eq!(
        broker.queue_depth(QUEUE_COMMANDS),
        Some(0),
        "and not requeued"
    );
}
