//! A fixed number of direct 1→1 (or, with `topic`, topic with four patterns) publish → deliver →
//! ack rounds, for instruction-count profiling (`valgrind --tool=callgrind`), which is exact
//! where wall-clock benches on a shared VM are not. The same shapes as the criterion bench.
//!
//! `cargo build --release -p broker-mem --example profile_round`
//! `valgrind --tool=callgrind target/release/examples/profile_round 100000 [topic]`

use std::sync::Arc;

use broker_mem::{
    Broker, Bytes, ConsumeOptions, ExchangeKind, ExchangeOptions, Limits, Properties, QueueOptions,
};

fn main() {
    let rounds: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let topic = std::env::args().nth(2).as_deref() == Some("topic");
    let (kind, keys, routing_key): (_, &[&str], _) = if topic {
        let patterns = &["orders.*.created", "orders.#", "#.eu", "audit.*"];
        (ExchangeKind::Topic, patterns, "orders.42.created")
    } else {
        (ExchangeKind::Direct, &["k"], "k")
    };
    let broker = Broker::with_clock(Limits::default(), Arc::new(|| 0));
    let connection = broker.connect();
    let channel = connection.open_channel().expect("channel");
    channel
        .exchange_declare("x", kind, ExchangeOptions::default())
        .expect("exchange");
    channel.basic_qos(1_000).expect("qos");
    channel
        .queue_declare("q", QueueOptions::default())
        .expect("queue");
    for key in keys {
        channel.queue_bind("q", "x", key).expect("bind");
    }
    let consumer = channel
        .basic_consume("q", ConsumeOptions::default())
        .expect("consume");
    let body = Bytes::from_static(b"{\"analysisId\":\"0190f3a0-0000-7000\"}");
    for _ in 0..rounds {
        channel
            .basic_publish("x", routing_key, Properties::default(), body.clone())
            .expect("publish");
        let delivery = consumer.try_recv().expect("delivery");
        channel
            .basic_ack(delivery.delivery_tag, false)
            .expect("ack");
    }
    println!("{rounds} rounds");
}
