//! Differential property test: random sequences of AMQP operations run against broker-mem and
//! against a real RabbitMQ (3.10+, a fresh vhost per case), and the two transcripts (every
//! reply code and text, every `basic.get` answer, every confirm and return) must be the same.
//! (Texts are compared up to `TEXT_COMPARED_CHARS`; a `basic.get` by body, tag, redelivered,
//! count left, exchange, routing key and first death.) The contract suite checks the
//! behaviours someone thought of; this one looks for the ones nobody did, and proptest
//! shrinks a difference to a short sequence to read.
//!
//! Only operations whose outcome RabbitMQ fixes are used: declares (queues of several kinds,
//! some conflicting; direct, fanout, topic and headers exchanges, some with an alternate),
//! queue and exchange bindings (some with headers arguments), publishes with confirms (some
//! mandatory, with priorities, headers and `CC`), `basic.get`, acks, nacks, `basic.recover`,
//! transactions, purges, deletes and closes, on two connections. No consumers and no TTLs: their timing is
//! RabbitMQ's, not the test's. RabbitMQ dead-letters, requeues on a close and deletes
//! exclusive queues in the background, so after an operation that may do any of these the
//! RabbitMQ run waits a moment, and a run that differs is repeated before the difference
//! counts.
//!
//! Cases: `WARREN_DIFFERENTIAL_CASES` (default 24; each creates a vhost). Without a reachable
//! RabbitMQ the test prints `SKIPPED` and passes, unless `WARREN_REQUIRE_RABBITMQ=1`.

#[path = "contract/harness.rs"]
mod harness;

use broker_mem::{FieldTable, Properties};
use harness::{Amqp, Ch, Conn, Mem, QFlags, R, Rabbit, Reply, XFlags, i, norm, s, table};
use proptest::prelude::*;

const QUEUES: [&str; 3] = ["q0", "q1", "q2"];
/// The dead-letter target every dead-lettering queue kind names (declared at the start).
const DEAD: &str = "dead";
const EXCHANGES: [&str; 2] = ["x0", "x1"];
const EXCHANGE_KINDS: [&str; 4] = ["direct", "fanout", "topic", "headers"];
/// Routing keys, the queue names among them (the default exchange routes by those).
const KEYS: [&str; 6] = ["k0", "k1", "q0", "q1", "q2", "#"];
const CONNECTIONS: usize = 2;
/// How long the RabbitMQ run waits, by default, after an operation RabbitMQ finishes in the
/// background (`WARREN_DIFFERENTIAL_SETTLE_MS`; quorum queues go through their log, which
/// syncs to disk).
const SETTLE_MS: u64 = 60;
/// The longest a RabbitMQ run may take before the test gives up on it (a broker stuck in a
/// memory or disk alarm never confirms).
const RUN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(90);
/// Runs on RabbitMQ before a difference counts (see the test).
const RABBIT_RUNS: usize = 3;
/// Reply texts are compared up to here: RabbitMQ cuts a text at 255 bytes, and the test's
/// long vhost name (replaced by `/` before comparing) uses up some of them.
const TEXT_COMPARED_CHARS: usize = 180;

/// The kinds of queue a declare picks from: arguments, and whether it must be durable.
fn queue_arguments(kind: usize) -> FieldTable {
    match kind {
        0 => FieldTable::new(),
        1 => table(&[("x-max-length", i(2)), ("x-dead-letter-exchange", s("dlx"))]),
        2 => table(&[("x-max-length", i(2)), ("x-overflow", s("reject-publish"))]),
        3 => table(&[("x-dead-letter-exchange", s("dlx"))]),
        4 => table(&[("x-max-priority", i(3))]),
        5 => table(&[("x-queue-type", s("quorum"))]),
        _ => table(&[
            ("x-queue-type", s("quorum")),
            ("x-max-length", i(2)),
            ("x-overflow", s("reject-publish")),
            ("x-delivery-limit", i(1)),
            ("x-dead-letter-exchange", s("dlx")),
        ]),
    }
}
const QUEUE_KINDS: usize = 7;

/// Binding arguments (a headers exchange matches on them; the others ignore them).
fn binding_arguments(kind: usize) -> FieldTable {
    match kind {
        0 => FieldTable::new(),
        1 => table(&[("x-match", s("all")), ("kind", s("a"))]),
        2 => table(&[("x-match", s("any")), ("kind", s("b")), ("region", s("eu"))]),
        _ => table(&[("x-match", s("bogus"))]),
    }
}
const BINDING_KINDS: usize = 4;

/// Message headers: none, one a binding matches, and one that adds `CC` routing keys.
fn message_headers(kind: usize) -> Option<FieldTable> {
    match kind {
        0 => None,
        1 => Some(table(&[("kind", s("a"))])),
        _ => Some(table(&[
            ("kind", s("b")),
            ("CC", broker_mem::FieldValue::Array(vec![s("q1"), s("k1")])),
        ])),
    }
}
const HEADER_KINDS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    DeclareQueue {
        conn: usize,
        queue: usize,
        kind: usize,
        durable: bool,
        exclusive: bool,
    },
    DeclareExchange {
        conn: usize,
        exchange: usize,
        kind: usize,
        /// Name the other exchange as the alternate.
        alternate: bool,
    },
    BindExchange {
        conn: usize,
        destination: usize,
        source: usize,
        key: usize,
    },
    DeleteExchange {
        conn: usize,
        exchange: usize,
        if_unused: bool,
    },
    Bind {
        conn: usize,
        queue: usize,
        exchange: usize,
        key: usize,
        arguments: usize,
    },
    Unbind {
        conn: usize,
        queue: usize,
        exchange: usize,
        key: usize,
    },
    Publish {
        conn: usize,
        /// None: the default exchange.
        exchange: Option<usize>,
        key: usize,
        mandatory: bool,
        priority: u8,
        headers: usize,
    },
    Get {
        conn: usize,
        /// `QUEUES.len()`: the dead-letter queue.
        queue: usize,
        no_ack: bool,
    },
    Settle {
        conn: usize,
        pick: usize,
        multiple: bool,
        /// None: ack; Some(requeue): nack.
        nack: Option<bool>,
    },
    AckUnknown {
        conn: usize,
    },
    Recover {
        conn: usize,
    },
    /// Replace the slot's channel by a transactional one (the old one stays open).
    TxSelect {
        conn: usize,
    },
    TxCommit {
        conn: usize,
    },
    TxRollback {
        conn: usize,
    },
    Purge {
        conn: usize,
        queue: usize,
    },
    DeleteQueue {
        conn: usize,
        queue: usize,
        if_unused: bool,
        if_empty: bool,
    },
    CloseChannel {
        conn: usize,
    },
    CloseConnection {
        conn: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let conn = 0..CONNECTIONS;
    let queue = 0..QUEUES.len();
    let exchange = 0..EXCHANGES.len();
    let key = 0..KEYS.len();
    prop_oneof![
        3 => (conn.clone(), queue.clone(), 0..QUEUE_KINDS, any::<bool>(), prop::bool::weighted(0.2))
            .prop_map(|(conn, queue, kind, durable, exclusive)| Op::DeclareQueue {
                conn, queue, kind, durable, exclusive
            }),
        1 => (conn.clone(), exchange.clone(), 0..EXCHANGE_KINDS.len())
            .prop_flat_map(|(conn, exchange, kind)| prop::bool::weighted(0.2).prop_map(move |alternate| {
                Op::DeclareExchange { conn, exchange, kind, alternate }
            })),
        1 => (conn.clone(), exchange.clone(), exchange.clone(), key.clone())
            .prop_map(|(conn, destination, source, key)| Op::BindExchange {
                conn, destination, source, key
            }),
        1 => (conn.clone(), exchange.clone(), any::<bool>())
            .prop_map(|(conn, exchange, if_unused)| Op::DeleteExchange { conn, exchange, if_unused }),
        2 => (conn.clone(), queue.clone(), exchange.clone(), key.clone())
            .prop_flat_map(|(conn, queue, exchange, key)| (0..BINDING_KINDS).prop_map(move |arguments| {
                Op::Bind { conn, queue, exchange, key, arguments }
            })),
        1 => (conn.clone(), queue.clone(), exchange.clone(), key.clone())
            .prop_map(|(conn, queue, exchange, key)| Op::Unbind { conn, queue, exchange, key }),
        5 => (conn.clone(), prop::option::weighted(0.4, exchange), key, any::<bool>(), 0u8..5)
            .prop_flat_map(|(conn, exchange, key, mandatory, priority)| (0..HEADER_KINDS)
                .prop_map(move |headers| Op::Publish {
                    conn, exchange, key, mandatory, priority, headers
                })),
        4 => (conn.clone(), 0..QUEUES.len() + 1, any::<bool>())
            .prop_map(|(conn, queue, no_ack)| Op::Get { conn, queue, no_ack }),
        3 => (conn.clone(), any::<usize>(), any::<bool>(), prop::option::of(any::<bool>()))
            .prop_map(|(conn, pick, multiple, nack)| Op::Settle { conn, pick, multiple, nack }),
        1 => conn.clone().prop_map(|conn| Op::AckUnknown { conn }),
        1 => conn.clone().prop_map(|conn| Op::Recover { conn }),
        1 => conn.clone().prop_map(|conn| Op::TxSelect { conn }),
        2 => conn.clone().prop_map(|conn| Op::TxCommit { conn }),
        1 => conn.clone().prop_map(|conn| Op::TxRollback { conn }),
        1 => (conn.clone(), queue.clone()).prop_map(|(conn, queue)| Op::Purge { conn, queue }),
        1 => (conn.clone(), queue, any::<bool>(), any::<bool>())
            .prop_map(|(conn, queue, if_unused, if_empty)| Op::DeleteQueue {
                conn, queue, if_unused, if_empty
            }),
        1 => conn.clone().prop_map(|conn| Op::CloseChannel { conn }),
        1 => conn.prop_map(|conn| Op::CloseConnection { conn }),
    ]
}

/// One connection slot: its connection and channel (reopened when a close or an error ended
/// them), and the delivery tags its channel holds unsettled.
struct Slot {
    conn: Conn,
    ch: Ch,
    unacked: Vec<u64>,
}

/// Runs `ops` and writes down everything the broker answered.
async fn transcript(b: &mut impl Amqp, ops: &[Op]) -> Vec<String> {
    let mut slots = Vec::new();
    for _ in 0..CONNECTIONS {
        let conn = b.connection().await;
        let ch = b.channel(conn).await;
        slots.push(Slot {
            conn,
            ch,
            unacked: Vec::new(),
        });
    }
    let setup = slots[0].ch;
    b.exchange(setup, "dlx", "fanout").await;
    b.queue(setup, DEAD).await;
    b.bind(setup, DEAD, "dlx", "").await;
    let mut lines = Vec::new();
    for (n, op) in ops.iter().enumerate() {
        let line = apply(b, &mut slots, n, op).await;
        lines.push(format!("{n}: {op:?} -> {line}"));
    }
    lines
}

/// The answer as a line; a refusal as its code and (the start of) its text.
fn answer<T: std::fmt::Debug>(result: &R<T>) -> String {
    match result {
        Ok(value) => format!("ok {value:?}"),
        Err(Reply { code, text }) => {
            let text: String = norm(text).chars().take(TEXT_COMPARED_CHARS).collect();
            format!("{code} {text}")
        }
    }
}

/// Whether a reply closed the whole connection (AMQP hard errors).
fn closes_connection(code: u16) -> bool {
    matches!(code, 320 | 402 | 501..=506 | 530 | 540 | 541)
}

async fn apply(b: &mut impl Amqp, slots: &mut [Slot], n: usize, op: &Op) -> String {
    let conn = match *op {
        Op::DeclareQueue { conn, .. }
        | Op::DeclareExchange { conn, .. }
        | Op::BindExchange { conn, .. }
        | Op::Recover { conn }
        | Op::TxSelect { conn }
        | Op::TxCommit { conn }
        | Op::TxRollback { conn }
        | Op::DeleteExchange { conn, .. }
        | Op::Bind { conn, .. }
        | Op::Unbind { conn, .. }
        | Op::Publish { conn, .. }
        | Op::Get { conn, .. }
        | Op::Settle { conn, .. }
        | Op::AckUnknown { conn }
        | Op::Purge { conn, .. }
        | Op::DeleteQueue { conn, .. }
        | Op::CloseChannel { conn }
        | Op::CloseConnection { conn } => conn,
    };
    let ch = slots[conn].ch;
    let (line, code) = match *op {
        Op::DeclareQueue {
            queue,
            kind,
            durable,
            exclusive,
            ..
        } => {
            let flags = QFlags {
                durable,
                exclusive,
                ..QFlags::default()
            };
            let result = b
                .queue_declare(ch, QUEUES[queue], flags, queue_arguments(kind))
                .await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::DeclareExchange {
            exchange,
            kind,
            alternate,
            ..
        } => {
            let arguments = if alternate {
                let other = EXCHANGES[(exchange + 1) % EXCHANGES.len()];
                table(&[("alternate-exchange", s(other))])
            } else {
                FieldTable::new()
            };
            let result = b
                .exchange_declare(
                    ch,
                    EXCHANGES[exchange],
                    EXCHANGE_KINDS[kind],
                    XFlags::default(),
                    arguments,
                )
                .await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::BindExchange {
            destination,
            source,
            key,
            ..
        } => {
            let result = b
                .exchange_bind(
                    ch,
                    EXCHANGES[destination],
                    EXCHANGES[source],
                    KEYS[key],
                    FieldTable::new(),
                )
                .await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::DeleteExchange {
            exchange,
            if_unused,
            ..
        } => {
            let result = b.exchange_delete(ch, EXCHANGES[exchange], if_unused).await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::Bind {
            queue,
            exchange,
            key,
            arguments,
            ..
        } => {
            let result = b
                .queue_bind(
                    ch,
                    QUEUES[queue],
                    EXCHANGES[exchange],
                    KEYS[key],
                    binding_arguments(arguments),
                )
                .await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::Unbind {
            queue,
            exchange,
            key,
            ..
        } => {
            let result = b
                .queue_unbind(
                    ch,
                    QUEUES[queue],
                    EXCHANGES[exchange],
                    KEYS[key],
                    FieldTable::new(),
                )
                .await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::Publish {
            exchange,
            key,
            mandatory,
            priority,
            headers,
            ..
        } => {
            let exchange = exchange.map_or("", |x| EXCHANGES[x]);
            let properties = Properties {
                priority: Some(priority),
                headers: message_headers(headers),
                ..Properties::default()
            };
            let body = format!("m{n}");
            let result = b
                .publish(ch, exchange, KEYS[key], mandatory, properties, &body)
                .await;
            // Overflow may dead-letter, which RabbitMQ does in the background.
            b.sleep_ms(settle_ms()).await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::Get { queue, no_ack, .. } => {
            let name = QUEUES.get(queue).copied().unwrap_or(DEAD);
            let result = b.get(ch, name, no_ack).await;
            let line = match &result {
                Ok(Some((msg, count))) => {
                    if !no_ack {
                        slots[conn].unacked.push(msg.tag);
                    }
                    let death = msg
                        .header("x-first-death-reason")
                        .zip(msg.header("x-first-death-queue"));
                    format!(
                        "got {} tag {} redelivered {} left {count} exchange {:?} key {:?} death {death:?}",
                        msg.text(),
                        msg.tag,
                        msg.redelivered,
                        msg.exchange,
                        msg.routing_key
                    )
                }
                other => answer(other),
            };
            (line, result.err().map(|r| r.code))
        }
        Op::Settle {
            pick,
            multiple,
            nack,
            ..
        } => {
            let unacked = &mut slots[conn].unacked;
            if unacked.is_empty() {
                return "nothing to settle".to_owned();
            }
            let tag = unacked[pick % unacked.len()];
            unacked.retain(|t| if multiple { *t > tag } else { *t != tag });
            let result = match nack {
                None => b.ack(ch, tag, multiple).await,
                Some(requeue) => b.nack(ch, tag, multiple, requeue).await,
            };
            // A nack without requeue may dead-letter, in the background on RabbitMQ.
            b.sleep_ms(settle_ms()).await;
            (
                format!("tag {tag}: {}", answer(&result)),
                result.err().map(|r| r.code),
            )
        }
        Op::AckUnknown { .. } => {
            let unknown = 1_000;
            let result = b.ack(ch, unknown, false).await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::Recover { .. } => {
            let result = b.recover(ch, true).await;
            slots[conn].unacked.clear();
            // The requeue happens in the background on RabbitMQ.
            b.sleep_ms(settle_ms()).await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::TxSelect { .. } => {
            slots[conn].ch = b.tx_channel(slots[conn].conn).await;
            slots[conn].unacked.clear();
            ("tx channel".to_owned(), None)
        }
        Op::TxCommit { .. } => {
            let result = b.tx_commit(ch).await;
            // Committed nacks may dead-letter, in the background on RabbitMQ.
            b.sleep_ms(settle_ms()).await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::TxRollback { .. } => {
            let result = b.tx_rollback(ch).await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::Purge { queue, .. } => {
            let result = b.queue_purge(ch, QUEUES[queue]).await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::DeleteQueue {
            queue,
            if_unused,
            if_empty,
            ..
        } => {
            let result = b.queue_delete(ch, QUEUES[queue], if_unused, if_empty).await;
            (answer(&result), result.err().map(|r| r.code))
        }
        Op::CloseChannel { .. } => {
            b.close_channel(ch).await;
            slots[conn].unacked.clear();
            // The requeue happens in the background on RabbitMQ.
            b.sleep_ms(settle_ms()).await;
            slots[conn].ch = b.channel(slots[conn].conn).await;
            ("closed".to_owned(), None)
        }
        Op::CloseConnection { .. } => {
            b.close_connection(slots[conn].conn).await;
            // So do exclusive queues' deletion and the requeue.
            b.sleep_ms(settle_ms()).await;
            slots[conn].conn = b.connection().await;
            slots[conn].ch = b.channel(slots[conn].conn).await;
            slots[conn].unacked.clear();
            ("closed".to_owned(), None)
        }
    };
    // A refusal closed the channel (its unacked messages go back) or the connection.
    if let Some(code) = code {
        slots[conn].unacked.clear();
        b.sleep_ms(settle_ms()).await;
        if closes_connection(code) {
            slots[conn].conn = b.connection().await;
        }
        slots[conn].ch = b.channel(slots[conn].conn).await;
    }
    line
}

fn settle_ms() -> u64 {
    std::env::var("WARREN_DIFFERENTIAL_SETTLE_MS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SETTLE_MS)
}

fn cases() -> u32 {
    std::env::var("WARREN_DIFFERENTIAL_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(24)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        // Each shrinking step is a run on RabbitMQ (a vhost, then the operations).
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    })]

    #[test]
    fn broker_mem_answers_as_rabbitmq_does(ops in proptest::collection::vec(op(), 1..=30)) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime");
        let (mem, rabbit) = runtime.block_on(async {
            let mut mem = Mem::new();
            let mem_lines = transcript(&mut mem, &ops).await;
            mem.broker.check_invariants().expect("broker-mem bookkeeping");
            // RabbitMQ's background work (dead-lettering, requeues on close) can outlast the
            // pause after an operation on a loaded machine: a run that differs is repeated,
            // and only a difference RabbitMQ gives every time counts.
            let mut rabbit_lines = None;
            for _ in 0..RABBIT_RUNS {
                let Some(mut rabbit) = Rabbit::create("differential").await else {
                    // Unreachable now: keep what an earlier run answered, if any.
                    break;
                };
                let Ok(lines) =
                    tokio::time::timeout(RUN_TIMEOUT, transcript(&mut rabbit, &ops)).await
                else {
                    panic!("the RabbitMQ run took over {RUN_TIMEOUT:?}: is the broker in an alarm?");
                };
                rabbit.finish().await;
                let same = lines == mem_lines;
                rabbit_lines = Some(lines);
                if same {
                    break;
                }
            }
            (mem_lines, rabbit_lines)
        });
        let Some(rabbit) = rabbit else {
            return Ok(());
        };
        let first_difference = mem.iter().zip(&rabbit).find(|(mem, rabbit)| mem != rabbit);
        if let Some((mem, rabbit)) = first_difference {
            prop_assert_eq!(mem, rabbit, "broker-mem (left) and RabbitMQ (right) differ");
        }
        prop_assert_eq!(mem, rabbit);
    }
}
