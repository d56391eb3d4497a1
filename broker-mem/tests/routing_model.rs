//! A model-based property test of topology and routing: random sequences of exchange and
//! queue declares (direct, fanout, topic and headers exchanges, some with an alternate
//! exchange), binds and unbinds of queues and of exchanges to exchanges, deletes of either, and
//! publishes (mandatory or not, with and without headers, to the default exchange too) run
//! against broker-mem's `Engine` and against a reference model written from RabbitMQ's rules.
//! After every step the two must agree on the outcome (ok, or the reply code), on every
//! queue's depth, on whether a mandatory message came back, and on the full list of queue and
//! exchange bindings. proptest shrinks a failure to a minimal sequence.
//!
//! The rules the model states on its own (the contract suite checks each against RabbitMQ):
//! a redeclare with another type or alternate exchange is 406; binding a missing queue or
//! exchange is 404, unbinding is always Ok; deleting an exchange removes its bindings in both
//! directions, deleting a queue the bindings to it; a publish visits each exchange once, each
//! queue gets at most one copy, an exchange that matches no binding hands the message to its
//! alternate exchange, a mandatory message that reaches no queue comes back; publishing to a
//! missing exchange is 404.

use std::collections::{BTreeMap, BTreeSet};

use broker_mem::{
    Bytes, ChannelId, ConnectionId, Engine, Error, ExchangeKind, ExchangeOptions, FieldTable,
    FieldValue, Limits, Properties, PublishOptions, QueueOptions,
};
use proptest::prelude::*;

const EXCHANGES: [&str; 4] = ["x0", "x1", "x2", "x3"];
const QUEUES: [&str; 3] = ["q0", "q1", "q2"];
/// Binding keys: words, both wildcards, and a queue's name (for the default exchange).
const BINDING_KEYS: [&str; 7] = ["a", "b", "a.b", "a.*", "#", "*.b", "q0"];
const ROUTING_KEYS: [&str; 6] = ["a", "b", "a.b", "c", "q0", "q1"];
const KINDS: [ExchangeKind; 4] = [
    ExchangeKind::Direct,
    ExchangeKind::Fanout,
    ExchangeKind::Topic,
    ExchangeKind::Headers,
];

#[derive(Debug, Clone)]
enum Op {
    DeclareExchange {
        exchange: usize,
        kind: usize,
        alternate: Option<usize>,
    },
    DeclareQueue {
        queue: usize,
    },
    DeleteExchange {
        exchange: usize,
    },
    DeleteQueue {
        queue: usize,
    },
    BindQueue {
        queue: usize,
        exchange: usize,
        key: usize,
        arguments: usize,
    },
    UnbindQueue {
        queue: usize,
        exchange: usize,
        key: usize,
        arguments: usize,
    },
    BindExchange {
        destination: usize,
        source: usize,
        key: usize,
    },
    UnbindExchange {
        destination: usize,
        source: usize,
        key: usize,
    },
    Publish {
        /// `None`: the default exchange.
        exchange: Option<usize>,
        key: usize,
        headers: usize,
        mandatory: bool,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let exchange = 0..EXCHANGES.len();
    let queue = 0..QUEUES.len();
    let key = 0..BINDING_KEYS.len();
    prop_oneof![
        3 => (exchange.clone(), 0..KINDS.len(), proptest::option::weighted(0.3, 0..EXCHANGES.len()))
            .prop_map(|(exchange, kind, alternate)| Op::DeclareExchange { exchange, kind, alternate }),
        2 => queue.clone().prop_map(|queue| Op::DeclareQueue { queue }),
        1 => exchange.clone().prop_map(|exchange| Op::DeleteExchange { exchange }),
        1 => queue.clone().prop_map(|queue| Op::DeleteQueue { queue }),
        4 => (queue.clone(), exchange.clone(), key.clone(), 0..binding_arguments().len())
            .prop_map(|(queue, exchange, key, arguments)| Op::BindQueue { queue, exchange, key, arguments }),
        1 => (queue, exchange.clone(), key.clone(), 0..binding_arguments().len())
            .prop_map(|(queue, exchange, key, arguments)| Op::UnbindQueue { queue, exchange, key, arguments }),
        2 => (exchange.clone(), exchange.clone(), key.clone())
            .prop_map(|(destination, source, key)| Op::BindExchange { destination, source, key }),
        1 => (exchange.clone(), exchange.clone(), key)
            .prop_map(|(destination, source, key)| Op::UnbindExchange { destination, source, key }),
        5 => (
            proptest::option::weighted(0.85, exchange),
            0..ROUTING_KEYS.len(),
            0..message_headers().len(),
            any::<bool>(),
        )
            .prop_map(|(exchange, key, headers, mandatory)| Op::Publish { exchange, key, headers, mandatory }),
    ]
}

/// Binding arguments: none, and headers-exchange matches (`all`, `any`, presence only, and
/// the `-with-x` forms, which also match arguments starting with `x-`).
fn binding_arguments() -> Vec<FieldTable> {
    let table = |entries: &[(&str, FieldValue)]| -> FieldTable {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect()
    };
    let any = FieldValue::String("any".into());
    vec![
        FieldTable::new(),
        table(&[("h", FieldValue::I64(1))]),
        table(&[
            ("x-match", any.clone()),
            ("h", FieldValue::I64(1)),
            ("g", FieldValue::I64(2)),
        ]),
        table(&[("x-match", any), ("g", FieldValue::Void)]),
        table(&[("x-h", FieldValue::I64(1)), ("h", FieldValue::I64(1))]),
        table(&[
            ("x-match", FieldValue::String("all-with-x".into())),
            ("x-h", FieldValue::I64(1)),
            ("h", FieldValue::I64(1)),
        ]),
        table(&[
            ("x-match", FieldValue::String("any-with-x".into())),
            ("x-h", FieldValue::I64(1)),
            ("g", FieldValue::I64(2)),
        ]),
    ]
}

/// Message headers to publish with.
fn message_headers() -> Vec<Option<FieldTable>> {
    let table = |entries: &[(&str, i64)]| -> FieldTable {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), FieldValue::I64(*v)))
            .collect()
    };
    vec![
        None,
        Some(table(&[("h", 1)])),
        Some(table(&[("g", 2)])),
        Some(table(&[("h", 1), ("g", 2)])),
        Some(table(&[("h", 2)])),
        Some(table(&[("x-h", 1)])),
        Some(table(&[("x-h", 1), ("h", 1)])),
    ]
}

/// A binding in the model: key, destination (queue or exchange), arguments index.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum To {
    Queue(&'static str),
    Exchange(&'static str),
}

#[derive(Debug, Clone)]
struct ModelExchange {
    kind: ExchangeKind,
    alternate: Option<&'static str>,
    /// (binding key, destination, arguments index); a set, as binding is idempotent.
    bindings: BTreeSet<(&'static str, To, usize)>,
}

#[derive(Debug, Default)]
struct Model {
    exchanges: BTreeMap<&'static str, ModelExchange>,
    /// Queue name to ready messages.
    queues: BTreeMap<&'static str, usize>,
}

/// What a step did: Ok (with whether a mandatory message came back), or the reply code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Done,
    Published { returned: bool },
    Refused(u16),
}

impl Model {
    fn apply(&mut self, op: &Op) -> Outcome {
        match *op {
            Op::DeclareExchange {
                exchange,
                kind,
                alternate,
            } => {
                let name = EXCHANGES[exchange];
                let kind = KINDS[kind];
                let alternate = alternate.map(|a| EXCHANGES[a]);
                match self.exchanges.get(name) {
                    Some(existing) if existing.kind != kind || existing.alternate != alternate => {
                        Outcome::Refused(406)
                    }
                    Some(_) => Outcome::Done,
                    None => {
                        let exchange = ModelExchange {
                            kind,
                            alternate,
                            bindings: BTreeSet::new(),
                        };
                        self.exchanges.insert(name, exchange);
                        Outcome::Done
                    }
                }
            }
            Op::DeclareQueue { queue } => {
                self.queues.entry(QUEUES[queue]).or_insert(0);
                Outcome::Done
            }
            Op::DeleteExchange { exchange } => {
                let name = EXCHANGES[exchange];
                self.exchanges.remove(name);
                for other in self.exchanges.values_mut() {
                    other
                        .bindings
                        .retain(|(_, to, _)| *to != To::Exchange(name));
                }
                Outcome::Done
            }
            Op::DeleteQueue { queue } => {
                let name = QUEUES[queue];
                self.queues.remove(name);
                for exchange in self.exchanges.values_mut() {
                    exchange
                        .bindings
                        .retain(|(_, to, _)| *to != To::Queue(name));
                }
                Outcome::Done
            }
            Op::BindQueue {
                queue,
                exchange,
                key,
                arguments,
            } => {
                let (queue, exchange) = (QUEUES[queue], EXCHANGES[exchange]);
                if !self.queues.contains_key(queue) {
                    return Outcome::Refused(404);
                }
                let Some(source) = self.exchanges.get_mut(exchange) else {
                    return Outcome::Refused(404);
                };
                source
                    .bindings
                    .insert((BINDING_KEYS[key], To::Queue(queue), arguments));
                Outcome::Done
            }
            Op::UnbindQueue {
                queue,
                exchange,
                key,
                arguments,
            } => {
                if let Some(source) = self.exchanges.get_mut(EXCHANGES[exchange]) {
                    source.bindings.remove(&(
                        BINDING_KEYS[key],
                        To::Queue(QUEUES[queue]),
                        arguments,
                    ));
                }
                Outcome::Done
            }
            Op::BindExchange {
                destination,
                source,
                key,
            } => {
                let destination = EXCHANGES[destination];
                if !self.exchanges.contains_key(destination) {
                    return Outcome::Refused(404);
                }
                let Some(source) = self.exchanges.get_mut(EXCHANGES[source]) else {
                    return Outcome::Refused(404);
                };
                source
                    .bindings
                    .insert((BINDING_KEYS[key], To::Exchange(destination), 0));
                Outcome::Done
            }
            Op::UnbindExchange {
                destination,
                source,
                key,
            } => {
                if let Some(source) = self.exchanges.get_mut(EXCHANGES[source]) {
                    source.bindings.remove(&(
                        BINDING_KEYS[key],
                        To::Exchange(EXCHANGES[destination]),
                        0,
                    ));
                }
                Outcome::Done
            }
            Op::Publish {
                exchange,
                key,
                headers,
                mandatory,
            } => {
                let routing_key = ROUTING_KEYS[key];
                let headers = message_headers()[headers].clone().unwrap_or_default();
                let reached = match exchange {
                    None if self.queues.contains_key(routing_key) => {
                        BTreeSet::from([ROUTING_KEYS[key]])
                    }
                    None => BTreeSet::new(),
                    Some(exchange) => {
                        let name = EXCHANGES[exchange];
                        if !self.exchanges.contains_key(name) {
                            return Outcome::Refused(404);
                        }
                        self.route(name, routing_key, &headers)
                    }
                };
                for queue in &reached {
                    *self.queues.get_mut(queue).expect("routed to a live queue") += 1;
                }
                Outcome::Published {
                    returned: mandatory && reached.is_empty(),
                }
            }
        }
    }

    /// RabbitMQ's walk: each exchange once; an exchange that matches no binding passes the
    /// message to its alternate exchange.
    fn route(
        &self,
        exchange: &'static str,
        routing_key: &str,
        headers: &FieldTable,
    ) -> BTreeSet<&'static str> {
        let arguments = binding_arguments();
        let mut queues = BTreeSet::new();
        let mut visited = BTreeSet::new();
        let mut work = vec![exchange];
        while let Some(name) = work.pop() {
            if !visited.insert(name) {
                continue;
            }
            let Some(exchange) = self.exchanges.get(name) else {
                continue;
            };
            let mut matched = false;
            for (key, to, args) in &exchange.bindings {
                let matches = match exchange.kind {
                    ExchangeKind::Direct => *key == routing_key,
                    ExchangeKind::Fanout => true,
                    ExchangeKind::Topic => topic_matches(key, routing_key),
                    ExchangeKind::Headers => headers_match(&arguments[*args], headers),
                };
                if !matches {
                    continue;
                }
                matched = true;
                match to {
                    To::Queue(queue) => {
                        queues.insert(*queue);
                    }
                    To::Exchange(next) => work.push(next),
                }
            }
            if !matched && let Some(alternate) = exchange.alternate {
                work.push(alternate);
            }
        }
        queues
    }

    /// Queue bindings as `(exchange, queue, key)`, sorted, one per binding.
    fn queue_bindings(&self) -> Vec<(String, String, String)> {
        let mut all: Vec<(String, String, String)> = self
            .exchanges
            .iter()
            .flat_map(|(name, exchange)| {
                exchange
                    .bindings
                    .iter()
                    .filter_map(move |(key, to, _)| match to {
                        To::Queue(queue) => {
                            Some(((*name).to_owned(), (*queue).to_owned(), (*key).to_owned()))
                        }
                        To::Exchange(_) => None,
                    })
            })
            .collect();
        all.sort();
        all
    }

    /// Exchange bindings as `(source, destination, key)`, sorted.
    fn exchange_bindings(&self) -> Vec<(String, String, String)> {
        let mut all: Vec<(String, String, String)> = self
            .exchanges
            .iter()
            .flat_map(|(name, exchange)| {
                exchange
                    .bindings
                    .iter()
                    .filter_map(move |(key, to, _)| match to {
                        To::Exchange(destination) => Some((
                            (*name).to_owned(),
                            (*destination).to_owned(),
                            (*key).to_owned(),
                        )),
                        To::Queue(_) => None,
                    })
            })
            .collect();
        all.sort();
        all
    }
}

/// The textbook dynamic programme over words (`*` one word, `#` zero or more).
fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let words = |key: &str| -> Vec<String> {
        if key.is_empty() {
            Vec::new()
        } else {
            key.split('.').map(str::to_owned).collect()
        }
    };
    let (pattern, words) = (words(pattern), words(routing_key));
    let mut matches = vec![vec![false; words.len() + 1]; pattern.len() + 1];
    matches[pattern.len()][words.len()] = true;
    for i in (0..pattern.len()).rev() {
        for j in (0..=words.len()).rev() {
            matches[i][j] = match pattern[i].as_str() {
                "#" => matches[i + 1][j] || (j < words.len() && matches[i][j + 1]),
                "*" => j < words.len() && matches[i + 1][j + 1],
                word => j < words.len() && words[j] == word && matches[i + 1][j + 1],
            };
        }
    }
    matches[0][0]
}

/// `x-match` all (the default) or any over the arguments not starting with `x-`, or (the
/// `-with-x` forms) over every argument but `x-match`; a `Void` argument asks only for the
/// header's presence.
fn headers_match(arguments: &FieldTable, headers: &FieldTable) -> bool {
    let mode = match arguments.get("x-match") {
        Some(FieldValue::String(mode)) => mode.as_str(),
        _ => "all",
    };
    let any = mode.starts_with("any");
    let with_x = mode.ends_with("-with-x");
    let mut wanted = arguments
        .iter()
        .filter(|(key, _)| key.as_str() != "x-match" && (with_x || !key.starts_with("x-")));
    let matched = |(key, value): (&String, &FieldValue)| match headers.get(key) {
        None => false,
        Some(_) if *value == FieldValue::Void => true,
        Some(found) => found == value,
    };
    if any {
        wanted.any(matched)
    } else {
        wanted.all(matched)
    }
}

/// The engine under test and the channel the steps run on (reopened after a channel error).
struct Subject {
    engine: Engine,
    connection: ConnectionId,
    channel: ChannelId,
}

impl Subject {
    fn new() -> Subject {
        let mut engine = Engine::new(Limits::default());
        let connection = engine.open_connection("guest");
        let channel = engine.open_channel(connection).expect("channel");
        Subject {
            engine,
            connection,
            channel,
        }
    }

    fn apply(&mut self, op: &Op) -> Outcome {
        let ch = self.channel;
        let engine = &mut self.engine;
        let result: Result<Outcome, Error> = match *op {
            Op::DeclareExchange {
                exchange,
                kind,
                alternate,
            } => {
                let mut arguments = FieldTable::new();
                if let Some(alternate) = alternate {
                    arguments.insert(
                        "alternate-exchange".into(),
                        FieldValue::String(EXCHANGES[alternate].into()),
                    );
                }
                engine
                    .exchange_declare_with(
                        ch,
                        EXCHANGES[exchange],
                        KINDS[kind],
                        ExchangeOptions::default(),
                        &arguments,
                    )
                    .map(|()| Outcome::Done)
            }
            Op::DeclareQueue { queue } => engine
                .queue_declare(ch, QUEUES[queue], QueueOptions::default())
                .map(|_| Outcome::Done),
            Op::DeleteExchange { exchange } => engine
                .exchange_delete(ch, EXCHANGES[exchange], false)
                .map(|()| Outcome::Done),
            Op::DeleteQueue { queue } => engine
                .queue_delete(ch, QUEUES[queue], false, false)
                .map(|_| Outcome::Done),
            Op::BindQueue {
                queue,
                exchange,
                key,
                arguments,
            } => engine
                .queue_bind_with(
                    ch,
                    QUEUES[queue],
                    EXCHANGES[exchange],
                    BINDING_KEYS[key],
                    &binding_arguments()[arguments],
                )
                .map(|()| Outcome::Done),
            Op::UnbindQueue {
                queue,
                exchange,
                key,
                arguments,
            } => engine
                .queue_unbind(
                    ch,
                    QUEUES[queue],
                    EXCHANGES[exchange],
                    BINDING_KEYS[key],
                    &binding_arguments()[arguments],
                )
                .map(|()| Outcome::Done),
            Op::BindExchange {
                destination,
                source,
                key,
            } => engine
                .exchange_bind(
                    ch,
                    EXCHANGES[destination],
                    EXCHANGES[source],
                    BINDING_KEYS[key],
                    &FieldTable::new(),
                )
                .map(|()| Outcome::Done),
            Op::UnbindExchange {
                destination,
                source,
                key,
            } => engine
                .exchange_unbind(
                    ch,
                    EXCHANGES[destination],
                    EXCHANGES[source],
                    BINDING_KEYS[key],
                    &FieldTable::new(),
                )
                .map(|()| Outcome::Done),
            Op::Publish {
                exchange,
                key,
                headers,
                mandatory,
            } => {
                let properties = Properties {
                    headers: message_headers()[headers].clone(),
                    ..Properties::default()
                };
                engine
                    .basic_publish_with(
                        ch,
                        exchange.map_or("", |x| EXCHANGES[x]),
                        ROUTING_KEYS[key],
                        PublishOptions { mandatory },
                        properties,
                        Bytes::from_static(b"m"),
                    )
                    .map(|published| {
                        assert_eq!(published.confirm, broker_mem::Confirm::Ack);
                        Outcome::Published {
                            returned: published.returned.is_some(),
                        }
                    })
            }
        };
        match result {
            Ok(outcome) => outcome,
            Err(Error::Channel(reply)) => {
                let _ = self.engine.close_channel(self.channel);
                self.channel = self
                    .engine
                    .open_channel(self.connection)
                    .expect("a new channel");
                Outcome::Refused(reply.code.code())
            }
            Err(other) => panic!("unexpected error {other:?} for {op:?}"),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn topology_and_routing_follow_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let mut model = Model::default();
        let mut subject = Subject::new();
        for (step, op) in ops.iter().enumerate() {
            let expected = model.apply(op);
            let got = subject.apply(op);
            prop_assert_eq!(got, expected, "step {}: {:?}", step, op);
            for queue in QUEUES {
                prop_assert_eq!(
                    subject.engine.queue_depth(queue),
                    model.queues.get(queue).copied(),
                    "step {}: depth of {} after {:?}", step, queue, op
                );
            }
            let bindings: Vec<(String, String, String)> = subject
                .engine
                .bindings()
                .into_iter()
                .map(|b| (b.exchange, b.queue, b.routing_key))
                .collect();
            prop_assert_eq!(bindings, model.queue_bindings(), "step {}: {:?}", step, op);
            let exchange_bindings: Vec<(String, String, String)> = subject
                .engine
                .exchange_bindings()
                .into_iter()
                .map(|b| (b.source, b.destination, b.routing_key))
                .collect();
            prop_assert_eq!(exchange_bindings, model.exchange_bindings(), "step {}: {:?}", step, op);
        }
        subject.engine.check_invariants().map_err(TestCaseError::fail)?;
    }
}
