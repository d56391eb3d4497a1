//! A fixed number of direct 1→1 (or, with `topic`, topic with four patterns; with
//! `topic-alternating`, the same with two routing keys in turn, so that no publish reuses the
//! engine's memoized route) publish → deliver → ack rounds, for instruction-count profiling
//! (`valgrind --tool=callgrind`), which is exact where wall-clock benches on a shared VM are
//! not. The same shapes as the criterion bench.
//!
//! `cargo build --release -p broker-mem --example profile_round`
//! `valgrind --tool=callgrind target/release/examples/profile_round 100000 [topic|topic-alternating]`

use std::sync::Arc;

use broker_mem::{
    Broker, Bytes, ConsumeOptions, ExchangeKind, ExchangeOptions, Limits, Properties, QueueOptions,
};

fn main() {
    let rounds: u64 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let shape = std::env::args().nth(2).unwrap_or_default();
    let (kind, keys, routing_keys): (_, &[&str], &[&str]) = match shape.as_str() {
        "" => (ExchangeKind::Direct, &["k"], &["k"]),
        "topic" | "topic-alternating" => {
            let patterns = &["orders.*.created", "orders.#", "#.eu", "audit.*"];
            let keys: &[&str] = if shape == "topic" {
                &["orders.42.created"]
            } else {
                &["orders.42.created", "orders.43.created"]
            };
            (ExchangeKind::Topic, patterns, keys)
        }
        other => panic!("unknown shape '{other}': none, topic or topic-alternating"),
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
    for round in 0..rounds {
        let routing_key = routing_keys[round as usize % routing_keys.len()];
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
