//! AMQP throughput on loopback, RabbitMQ against broker-mem's wire server, in one run.
//!
//! - `lapin`: one lapin publisher (publisher confirms, persistent 1 KiB messages, publishes
//!   pipelined, every confirm awaited) and one lapin consumer (prefetch 100, one ack per
//!   message) on one queue, each on its own connection. An iteration is [`BATCH`] messages
//!   published, confirmed, delivered and acked. The consumer does not wait for one ack to be
//!   written before taking the next delivery: lapin resolves an ack only after its I/O thread
//!   has written the frame, so acking in line caps any broker at about 10 k messages/s (we
//!   measured 9.97 k on broker-mem and 10.5 k on RabbitMQ that way), which measures lapin's
//!   thread hand-offs, not the broker.
//! - `wire_bus`: the same through the wire client (`ports::wire::WireBus`): concurrent confirmed
//!   publishes and a consumer stream acking each delivery.
//!
//! `cargo bench -p warren-benches --bench amqp` (RabbitMQ at `AMQP_URL`, default
//! 127.0.0.1:5672; without it the RabbitMQ cases are skipped).

use std::sync::Arc;
use std::time::Duration;

use broker_mem::Broker;
use broker_mem::wire::{WireConfig, WireServer};
use contracts::{Properties, Publication, QueueDecl, QueueLimits, Topology};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use ports::wire::{WireBus, WireBusConfig};
use ports::{Bus as _, ConsumeOptions, Deliveries, TokioNet};
use tokio::sync::Mutex;

/// Messages per measured iteration.
const BATCH: usize = 1_000;
/// Body size.
const BODY_BYTES: usize = 1_024;
/// One queue per client library, so a consumer of one case never takes another case's messages.
const QUEUE_LAPIN: &str = "bench.lapin";
const QUEUE_WIRE_BUS: &str = "bench.wire_bus";

struct LapinPair {
    _connections: (Connection, Connection),
    publisher: lapin::Channel,
    consumer: Arc<Mutex<lapin::Consumer>>,
}

async fn lapin_pair(url: &str) -> LapinPair {
    let publishing = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let consuming = Connection::connect(url, ConnectionProperties::default())
        .await
        .expect("connect");
    let publisher = publishing.create_channel().await.expect("channel");
    publisher
        .queue_declare(
            QUEUE_LAPIN.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("declare");
    publisher
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let channel = consuming.create_channel().await.expect("channel");
    channel
        .basic_qos(100, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = channel
        .basic_consume(
            QUEUE_LAPIN.into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    LapinPair {
        _connections: (publishing, consuming),
        publisher,
        consumer: Arc::new(Mutex::new(consumer)),
    }
}

async fn lapin_batch(pair: &LapinPair, body: &[u8]) {
    let consumer = pair.consumer.clone();
    let consume = async move {
        let mut consumer = consumer.lock().await;
        let mut acks = Vec::with_capacity(BATCH);
        for _ in 0..BATCH {
            let delivery = consumer.next().await.expect("delivery").expect("ok");
            acks.push(tokio::spawn(async move {
                delivery.acker.ack(BasicAckOptions::default()).await
            }));
        }
        for ack in acks {
            ack.await.expect("ack task").expect("ack");
        }
    };
    // Publishes are pipelined (all sent, then all confirms awaited), as a throughput-minded
    // publisher does; each is still confirmed individually.
    let publish = async {
        let sends = (0..BATCH).map(|_| {
            pair.publisher.basic_publish(
                "".into(),
                QUEUE_LAPIN.into(),
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
        });
        let confirms = futures::future::join_all(sends).await;
        for confirm in confirms {
            assert!(confirm.expect("publish").await.expect("confirm").is_ack());
        }
    };
    tokio::join!(consume, publish);
}

fn publication(body: &[u8]) -> Publication {
    Publication {
        exchange: String::new(),
        routing_key: QUEUE_WIRE_BUS.into(),
        properties: Properties {
            delivery_mode: Some(2),
            ..Properties::default()
        },
        body: body.to_vec(),
    }
}

async fn wire_bus_pair(url: &str) -> (Arc<WireBus<TokioNet>>, Arc<Mutex<Deliveries>>) {
    let config = WireBusConfig::from_url(url).expect("url");
    let publisher = Arc::new(WireBus::new(TokioNet, config.clone()));
    let consumer = WireBus::new(TokioNet, config);
    let topology = Topology {
        queues: vec![QueueDecl {
            name: QUEUE_WIRE_BUS.into(),
            durable: false,
            limits: QueueLimits::default(),
        }],
        ..Topology::default()
    };
    publisher.declare(&topology).await.expect("declare");
    let deliveries = consumer
        .consume(QUEUE_WIRE_BUS, ConsumeOptions { prefetch: 100 })
        .await
        .expect("consume");
    // The consumer's bus must outlive the stream: leak it for the bench's lifetime.
    std::mem::forget(consumer);
    (publisher, Arc::new(Mutex::new(deliveries)))
}

async fn wire_bus_batch(bus: &WireBus<TokioNet>, deliveries: &Mutex<Deliveries>, body: &[u8]) {
    let consume = async {
        let mut deliveries = deliveries.lock().await;
        for _ in 0..BATCH {
            let delivery = deliveries.next().await.expect("delivery").expect("ok");
            delivery.ack().await.expect("ack");
        }
    };
    let publish = async {
        let publishes = (0..BATCH).map(|_| bus.publish(publication(body)));
        for result in futures::future::join_all(publishes).await {
            result.expect("confirmed");
        }
    };
    tokio::join!(consume, publish);
}

async fn serve_broker_mem() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(WireServer::new(Broker::new(), WireConfig::default()).serve_tcp(listener));
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

fn bench_amqp(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let body = vec![b'x'; BODY_BYTES];
    let mem_url = rt.block_on(serve_broker_mem());
    let rabbit = rt.block_on(warren_benches::rabbitmq_url());

    let mut group = c.benchmark_group("amqp_lapin_confirmed_1KiB");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    let pair = rt.block_on(lapin_pair(&mem_url));
    group.bench_function("broker_mem_wire", |b| {
        b.to_async(&rt).iter(|| lapin_batch(&pair, &body))
    });
    if let Some(vhost) = &rabbit {
        let pair = rt.block_on(lapin_pair(vhost.amqp_url()));
        group.bench_function("rabbitmq", |b| {
            b.to_async(&rt).iter(|| lapin_batch(&pair, &body))
        });
    }
    group.finish();

    let mut group = c.benchmark_group("amqp_wire_bus_confirmed_1KiB");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    let (bus, deliveries) = rt.block_on(wire_bus_pair(&mem_url));
    group.bench_function("broker_mem_wire", |b| {
        b.to_async(&rt)
            .iter(|| wire_bus_batch(&bus, &deliveries, &body))
    });
    if let Some(vhost) = &rabbit {
        let (bus, deliveries) = rt.block_on(wire_bus_pair(vhost.amqp_url()));
        group.bench_function("rabbitmq", |b| {
            b.to_async(&rt)
                .iter(|| wire_bus_batch(&bus, &deliveries, &body))
        });
    }
    group.finish();
    if let Some(vhost) = rabbit {
        rt.block_on(vhost.delete()).expect("delete the bench vhost");
    }
}

criterion_group!(benches, bench_amqp);
criterion_main!(benches);
