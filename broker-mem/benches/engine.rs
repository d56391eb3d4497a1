//! publish → route → deliver → ack, in process, through broker-mem's in-process client: direct
//! 1→1, fanout 1→10 and topic; beside a bare flume channel pair (the ceiling for in-process
//! delivery) and the floor of the client's design (two lock trips and a delivery channel, no
//! broker work), and RabbitMQ through lapin (the anchor; skipped with a message when unreachable).
//! Also prints the memory one queued message costs, measured with a counting allocator.
//!
//! `cargo bench -p broker-mem --bench engine`

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker_mem::{
    Broker, Bytes, Channel, Connection, ConsumeOptions, Consumer, ExchangeKind, ExchangeOptions,
    Limits, Properties, QueueOptions,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// Counts live heap bytes, to measure memory per queued message. The bench binary is not part
/// of the library (which forbids `unsafe`); a global allocator cannot be written without it.
struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates every call to the system allocator unchanged; only counts sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Body of every benchmark message (a small JSON command is about this size).
const BODY: &[u8] = b"{\"analysisId\":\"0190f3a0-0000-7000\"}";
/// Prefetch of the benchmark consumers.
const PREFETCH: u16 = 1_000;
/// Messages per RabbitMQ batch (published with confirms in flight, then consumed and acked).
const RABBIT_BATCH: usize = 1_000;
/// Messages queued to measure memory per message.
const MEMORY_MESSAGES: usize = 100_000;

/// A broker on a fixed clock: the bench measures the engine, not `SystemTime::now`.
fn broker() -> Broker {
    Broker::with_clock(Limits::default(), Arc::new(|| 0))
}

struct Rig {
    _broker: Broker,
    _connection: Connection,
    channel: Channel,
    consumers: Vec<Consumer>,
}

impl Rig {
    /// `queues` queues bound to `exchange` with `key`, one consumer each on one channel.
    fn new(kind: ExchangeKind, queues: usize, keys: &[&str]) -> Rig {
        let broker = broker();
        let connection = broker.connect();
        let channel = connection.open_channel().unwrap();
        channel
            .exchange_declare("x", kind, ExchangeOptions::default())
            .unwrap();
        channel.basic_qos(PREFETCH).unwrap();
        let mut consumers = Vec::new();
        for n in 0..queues {
            let queue = format!("q{n}");
            channel
                .queue_declare(&queue, QueueOptions::default())
                .unwrap();
            for key in keys {
                channel.queue_bind(&queue, "x", key).unwrap();
            }
            consumers.push(
                channel
                    .basic_consume(&queue, ConsumeOptions::default())
                    .unwrap(),
            );
        }
        Rig {
            _broker: broker,
            _connection: connection,
            channel,
            consumers,
        }
    }

    /// One publish, every delivery it makes received and acked.
    fn round(&self, routing_key: &str) {
        self.channel
            .basic_publish(
                "x",
                routing_key,
                Properties::default(),
                Bytes::from_static(BODY),
            )
            .unwrap();
        for consumer in &self.consumers {
            let delivery = consumer.try_recv().unwrap();
            self.channel
                .basic_ack(delivery.delivery_tag, false)
                .unwrap();
        }
    }
}

fn bench_in_process(c: &mut Criterion) {
    let mut group = c.benchmark_group("publish_deliver_ack");
    group.throughput(Throughput::Elements(1));
    group.measurement_time(Duration::from_secs(5));

    let (sender, receiver) = flume::bounded::<Bytes>(1_024);
    group.bench_function("bare_flume_pair", |b| {
        b.iter(|| {
            sender.send(Bytes::from_static(BODY)).unwrap();
            receiver.recv().unwrap()
        })
    });

    // The floor of the client's design, with no broker work at all: a publish and an ack each
    // take the broker's lock once, and a delivery (128 bytes, a `Delivery`'s size) goes
    // through an unbounded flume channel, as a delivery goes into its consumer's buffer. A
    // direct round can be no faster than this.
    let lock = Mutex::new(0_u64);
    let (delivery_in, delivery_out) = flume::unbounded::<[u64; 16]>();
    group.bench_function("floor_two_lock_trips_and_a_delivery", |b| {
        b.iter(|| {
            {
                let mut calls = lock.lock().unwrap();
                *calls += 1;
                delivery_in.try_send([*calls; 16]).unwrap();
            }
            let delivery = delivery_out.try_recv().unwrap();
            *lock.lock().unwrap() = black_box(delivery)[15];
        })
    });

    let direct = Rig::new(ExchangeKind::Direct, 1, &["k"]);
    group.bench_function("direct_1_to_1", |b| b.iter(|| direct.round("k")));

    let topic = Rig::new(
        ExchangeKind::Topic,
        1,
        &["orders.*.created", "orders.#", "#.eu", "audit.*"],
    );
    // One routing key over and over: after the first, each publish reuses the engine's
    // memoized route (it keeps the last one while the topology stands).
    group.bench_function("topic_1_to_1_4_patterns", |b| {
        b.iter(|| topic.round("orders.42.created"))
    });
    // Two keys in turn: every publish misses the memo and walks the bindings.
    let mut turn = false;
    group.bench_function("topic_1_to_1_4_patterns_keys_alternating", |b| {
        b.iter(|| {
            turn = !turn;
            topic.round(if turn {
                "orders.42.created"
            } else {
                "orders.43.created"
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("publish_deliver_ack_fanout");
    // Ten deliveries (and acks) per publish: counted as deliveries.
    group.throughput(Throughput::Elements(10));
    group.measurement_time(Duration::from_secs(5));
    let fanout = Rig::new(ExchangeKind::Fanout, 10, &[""]);
    group.bench_function("fanout_1_to_10", |b| b.iter(|| fanout.round("")));
    group.finish();
}

fn bench_rabbitmq(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let Some(vhost) = runtime.block_on(async {
        ports::testing::RabbitVhost::create("broker-mem-bench")
            .await
            .expect("create the bench's vhost")
    }) else {
        eprintln!("SKIPPED: rabbitmq_lapin anchor (RabbitMQ not reachable)");
        return;
    };
    let (connection, channel, mut consumer) = runtime.block_on(rabbit_setup(vhost.amqp_url()));
    let mut group = c.benchmark_group("publish_deliver_ack");
    group.throughput(Throughput::Elements(RABBIT_BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.bench_function("rabbitmq_lapin_direct_1_to_1", |b| {
        b.iter_custom(|rounds| {
            runtime.block_on(async {
                // Wall time around the broker's work is the point here.
                #[allow(clippy::disallowed_methods)]
                let start = Instant::now();
                for _ in 0..rounds {
                    rabbit_batch(&channel, &mut consumer).await;
                }
                start.elapsed()
            })
        })
    });
    group.finish();
    runtime.block_on(async {
        let _ = connection.close(200, "bye".into()).await;
        vhost.delete().await.expect("delete the bench's vhost");
    });
}

async fn rabbit_setup(url: &str) -> (lapin::Connection, lapin::Channel, lapin::Consumer) {
    use lapin::options::{
        BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
        QueueBindOptions, QueueDeclareOptions,
    };
    use lapin::types::FieldTable;
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .expect("connect");
    let channel = connection.create_channel().await.expect("channel");
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let kind = lapin::ExchangeKind::Direct;
    channel
        .exchange_declare(
            "x".into(),
            kind,
            ExchangeDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("exchange");
    channel
        .queue_declare(
            "q".into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue");
    channel
        .queue_bind(
            "q".into(),
            "x".into(),
            "k".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("bind");
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await
        .expect("qos");
    let consumer = channel
        .basic_consume(
            "q".into(),
            "bench".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    (connection, channel, consumer)
}

/// RABBIT_BATCH publishes with confirms in flight, each confirm awaited, every delivery
/// received and acked.
async fn rabbit_batch(channel: &lapin::Channel, consumer: &mut lapin::Consumer) {
    use futures::StreamExt as _;
    use lapin::options::{BasicAckOptions, BasicPublishOptions};
    let mut confirms = Vec::with_capacity(RABBIT_BATCH);
    for _ in 0..RABBIT_BATCH {
        let confirm = channel
            .basic_publish(
                "x".into(),
                "k".into(),
                BasicPublishOptions::default(),
                BODY,
                lapin::BasicProperties::default(),
            )
            .await
            .expect("publish");
        confirms.push(confirm);
    }
    for confirm in confirms {
        confirm.await.expect("confirm");
    }
    for _ in 0..RABBIT_BATCH {
        let delivery = consumer
            .next()
            .await
            .expect("consumer open")
            .expect("delivery");
        channel
            .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
            .await
            .expect("ack");
    }
}

/// Heap bytes per message held in a queue (shared body included: `Bytes::from_static` would
/// hide it, so each body is a fresh allocation like a received one).
fn memory_per_queued_message() {
    let broker = broker();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel.queue_declare("q", QueueOptions::default()).unwrap();
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for _ in 0..MEMORY_MESSAGES {
        channel
            .basic_publish("", "q", Properties::default(), Bytes::copy_from_slice(BODY))
            .unwrap();
    }
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    let per_message = (after - before) as f64 / MEMORY_MESSAGES as f64;
    println!(
        "memory per queued message ({} body bytes, default properties, one queue): {per_message:.0} bytes",
        BODY.len()
    );
    assert_eq!(broker.queue_depth("q"), Some(MEMORY_MESSAGES));

    // A message with properties of its own takes one more allocation for them (plus their
    // strings: here one byte of `message_id`).
    channel.queue_declare("p", QueueOptions::default()).unwrap();
    let before = LIVE_BYTES.load(Ordering::Relaxed);
    for _ in 0..MEMORY_MESSAGES {
        let properties = Properties {
            message_id: Some("m".into()),
            ..Properties::default()
        };
        channel
            .basic_publish("", "p", properties, Bytes::copy_from_slice(BODY))
            .unwrap();
    }
    let after = LIVE_BYTES.load(Ordering::Relaxed);
    let with_properties = (after - before) as f64 / MEMORY_MESSAGES as f64;
    println!(
        "memory per queued message with its own properties (a 1-byte message_id): {with_properties:.0} bytes, {:.0} more",
        with_properties - per_message
    );
    assert_eq!(broker.queue_depth("p"), Some(MEMORY_MESSAGES));
}

fn bench_memory(_c: &mut Criterion) {
    memory_per_queued_message();
}

criterion_group!(benches, bench_memory, bench_in_process, bench_rabbitmq);
criterion_main!(benches);
