//! A model-based property test: random sequences of publishes, gets, acks, nacks (with and
//! without requeue, single and multiple), unknown tags, purges, channel closes and clock
//! advances run against broker-mem's `Engine` and against a small reference model of
//! RabbitMQ's rules; after every step the two must agree on what `basic.get` returns (body,
//! delivery tag, redelivered, message count), on each queue's depth, on what was dead-lettered
//! and why, and on how many messages the broker holds. proptest shrinks a failing sequence to
//! a minimal one.
//!
//! The model covers one queue with `x-message-ttl`, `x-max-length` (drop-head) and a
//! dead-letter exchange, one plain queue, a priority queue with a single active consumer, two
//! quorum queues (one with a soft `reject-publish` length limit and an `x-delivery-limit`,
//! where nacked messages are served first as a closed channel's returns are; one without
//! limits, where nacked messages go to the back; as RabbitMQ 3.10 does them), and the
//! dead-letter queue; consumers (at most one per lane) with a prefetch and a consumer
//! priority (`x-priority`), competing when two lanes consume the same queue (the highest
//! priority with credit first, round-robin among equals; or taking turns as the single
//! active one), cancelled or ended by a close. After every step the deliveries each lane received must be
//! the model's, tag by tag. Declares and binds are fixed at the start (the contract suite covers
//! them against RabbitMQ).
//!
//! No `proptest-state-machine`: every operation applies in every state (one that does not fit,
//! like an ack of an unknown tag, is itself a behaviour under test), so a plain `Vec<Op>`
//! strategy, which proptest already shrinks element by element, is all the machinery needed.

use std::collections::{BTreeMap, VecDeque};

use broker_mem::{
    Bytes, ChannelId, ConsumeOptions, Engine, Error, Event, ExchangeKind, ExchangeOptions,
    FieldTable, FieldValue, Limits, Properties, QueueOptions,
};
use proptest::prelude::*;

const TTL_MS: u64 = 50;
const MAX_LENGTH: usize = 3;
/// `x-max-priority` of queue 2; publishes carry priorities up to 4, so some are over it.
const MAX_PRIORITY: u8 = 3;
/// Queue 0 has the TTL, the length limit and the dead-letter exchange; queue 1 is plain;
/// queue 2 is a priority queue with a single active consumer; queue 3 is a quorum queue with
/// a length limit and a delivery limit; queue 4 is a quorum queue without limits.
const QUEUES: [&str; 5] = ["limited", "plain", "ranked", "quorum", "unlimited"];
const RANKED: usize = 2;
const QUORUM: usize = 3;
/// A quorum queue without a delivery limit, where a nacked message goes to the back.
const UNLIMITED: usize = 4;
/// The quorum queue's `x-max-length` with `reject-publish`: soft, so it can hold one more.
const QUORUM_MAX_LENGTH: usize = 2;
/// The quorum queue's `x-delivery-limit`: past it a message is dropped (no dead-letter
/// exchange) instead of requeued.
const DELIVERY_LIMIT: u64 = 2;
const DEAD: &str = "dead";
const LANES: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        queue: usize,
        priority: u8,
    },
    Get {
        lane: usize,
        queue: usize,
        no_ack: bool,
    },
    GetDead {
        lane: usize,
    },
    Ack {
        lane: usize,
        pick: usize,
        multiple: bool,
    },
    Nack {
        lane: usize,
        pick: usize,
        multiple: bool,
        requeue: bool,
    },
    AckUnknown {
        lane: usize,
    },
    Purge {
        lane: usize,
        queue: usize,
    },
    Reopen {
        lane: usize,
    },
    Advance {
        ms: u64,
    },
    Consume {
        lane: usize,
        queue: usize,
        prefetch: u16,
        priority: i64,
    },
    Cancel {
        lane: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let lane = 0..LANES;
    let queue = 0..QUEUES.len();
    prop_oneof![
        4 => (queue.clone(), 0..=MAX_PRIORITY + 1)
            .prop_map(|(queue, priority)| Op::Publish { queue, priority }),
        3 => (lane.clone(), queue.clone(), any::<bool>())
            .prop_map(|(lane, queue, no_ack)| Op::Get { lane, queue, no_ack }),
        1 => lane.clone().prop_map(|lane| Op::GetDead { lane }),
        2 => (lane.clone(), any::<usize>(), any::<bool>())
            .prop_map(|(lane, pick, multiple)| Op::Ack { lane, pick, multiple }),
        2 => (lane.clone(), any::<usize>(), any::<bool>(), any::<bool>())
            .prop_map(|(lane, pick, multiple, requeue)| Op::Nack { lane, pick, multiple, requeue }),
        1 => lane.clone().prop_map(|lane| Op::AckUnknown { lane }),
        1 => (lane.clone(), queue).prop_map(|(lane, queue)| Op::Purge { lane, queue }),
        1 => lane.prop_map(|lane| Op::Reopen { lane }),
        2 => (0u64..80).prop_map(|ms| Op::Advance { ms }),
        1 => (0..LANES, 0..QUEUES.len() + 1, 1u16..4)
            .prop_flat_map(|(lane, queue, prefetch)| (-1i64..2).prop_map(move |priority| {
                Op::Consume { lane, queue, prefetch, priority }
            })),
        1 => (0..LANES).prop_map(|lane| Op::Cancel { lane }),
    ]
}

/// A message as the model tracks it.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    seq: u64,
    /// The priority it is ordered by: as published, capped, in the priority queue; else 0.
    priority: u8,
    body: String,
    redelivered: bool,
    expires_at_ms: Option<u64>,
    /// Why it was dead-lettered, for messages in the dead-letter queue.
    death: Option<&'static str>,
    /// Times it came back to its queue (the quorum queue's delivery limit counts them).
    delivery_count: u64,
    /// Returned to a quorum queue by a closed channel (or requeued to the one with a delivery
    /// limit): served before the other messages.
    returned: bool,
}

/// A consumer as the model tracks it.
#[derive(Debug, Clone, Copy)]
struct ModelConsumer {
    queue: &'static str,
    prefetch: usize,
    priority: i64,
    serial: u64,
}

/// One delivery as a lane sees it: tag, body, redelivered.
type Seen = (u64, String, bool);

/// The reference model: RabbitMQ's rules, written as plainly as possible.
#[derive(Debug, Default)]
struct Model {
    now_ms: u64,
    seq: u64,
    published: u64,
    /// Ready messages per queue (`QUEUES` then `DEAD`), in position order.
    ready: BTreeMap<&'static str, VecDeque<Entry>>,
    /// Whether the publishing lane (lane 0) has been told to stop publishing to the quorum
    /// queue, which told it so when it went over its limit and tells it to go on at 80 % of it
    /// (RabbitMQ 3.10's soft limit); None until the lane's first publish there since it
    /// opened, which is refused only while the queue is over the limit.
    quorum_publisher_stopped: Option<bool>,
    /// Per lane: unacked by tag, with the queue it came from and the serial of the consumer
    /// it went to (0: `basic.get`); the last tag handed out.
    unacked: [BTreeMap<u64, (&'static str, Entry, u64)>; LANES],
    last_tag: [u64; LANES],
    consumers: [Option<ModelConsumer>; LANES],
    /// Per queue, the consuming lanes in round-robin order (the front is offered next).
    rotation: BTreeMap<&'static str, VecDeque<usize>>,
    /// Per classic queue, the lanes offered a message without credit, in the order they were
    /// blocked: they rejoin the round-robin at the back once they have credit again.
    blocked: BTreeMap<&'static str, Vec<usize>>,
    serial: u64,
    /// Deliveries made during the current step, per lane.
    delivered: [Vec<Seen>; LANES],
}

impl Model {
    fn new() -> Model {
        let mut model = Model::default();
        for q in QUEUES.into_iter().chain([DEAD]) {
            model.ready.insert(q, VecDeque::new());
            model.rotation.insert(q, VecDeque::new());
        }
        model
    }

    fn has_credit(&self, lane: usize) -> bool {
        let Some(consumer) = self.consumers[lane] else {
            return false;
        };
        let held = self.unacked[lane]
            .values()
            .filter(|(_, _, serial)| *serial == consumer.serial)
            .count();
        held < consumer.prefetch
    }

    /// Round-robin among the queue's consumers of the highest priority that have credit. A
    /// consumer without credit keeps its turn, except that on a classic queue one offered the
    /// message before the one that takes it (higher priority, or its turn first) is blocked,
    /// and rejoins at the back once it has credit (on a quorum queue a consumer goes to the
    /// back when a settle gives it credit again: see `settle`). The priority queue has a
    /// single active consumer: the first registered, credit or not, whatever its priority;
    /// when it goes, the highest priority left (see `detach`).
    fn dispatch(&mut self, queue: &'static str) {
        let classic = [DEAD, QUEUES[0], QUEUES[1]].contains(&queue);
        while !self.ready[queue].is_empty() {
            if classic {
                let blocked = self.blocked.entry(queue).or_default().clone();
                for lane in blocked {
                    if self.has_credit(lane) {
                        self.blocked.get_mut(queue).unwrap().retain(|l| *l != lane);
                        let rotation = self.rotation.get_mut(queue).unwrap();
                        rotation.retain(|l| *l != lane);
                        rotation.push_back(lane);
                    }
                }
            }
            let rotation = &self.rotation[queue];
            let lane = if queue == QUEUES[RANKED] {
                match rotation.front() {
                    Some(&lane) if self.has_credit(lane) => lane,
                    _ => return,
                }
            } else {
                let priority = |lane: usize| self.consumers[lane].unwrap().priority;
                let with_credit = rotation.iter().filter(|lane| self.has_credit(**lane));
                let highest = with_credit.map(|lane| priority(*lane)).max();
                let position = highest.and_then(|highest| {
                    (rotation.iter())
                        .position(|lane| priority(*lane) == highest && self.has_credit(*lane))
                });
                if classic {
                    // Offered first: a higher priority, or the same with its turn first.
                    let offered_first: Vec<usize> = (rotation.iter().enumerate())
                        .filter(|(at, lane)| match (highest, position) {
                            (Some(highest), Some(chosen)) => {
                                priority(**lane) > highest
                                    || (priority(**lane) == highest && *at < chosen)
                            }
                            _ => true,
                        })
                        .map(|(_, lane)| *lane)
                        .collect();
                    let blocked = self.blocked.get_mut(queue).unwrap();
                    for lane in offered_first {
                        if !blocked.contains(&lane) {
                            blocked.push(lane);
                        }
                    }
                }
                let Some(position) = position else {
                    return;
                };
                let rotation = self.rotation.get_mut(queue).unwrap();
                let lane = rotation.remove(position).unwrap();
                rotation.push_back(lane);
                lane
            };
            let entry = self.ready.get_mut(queue).unwrap().pop_front().unwrap();
            self.note_quorum_length();
            self.last_tag[lane] += 1;
            let tag = self.last_tag[lane];
            let serial = self.consumers[lane].unwrap().serial;
            self.delivered[lane].push((tag, entry.body.clone(), entry.redelivered));
            self.unacked[lane].insert(tag, (queue, entry, serial));
        }
    }

    /// What the engine does before a call returns: per queue, expire (sparing messages that
    /// expire this very millisecond and have not been handed out before, so a consumer can
    /// still take them), dispatch, expire.
    /// Dead-lettering feeds `dead`, so a second pass delivers what the first sent there.
    fn run(&mut self) {
        for _ in 0..2 {
            for queue in [
                DEAD,
                QUEUES[0],
                QUEUES[1],
                QUEUES[RANKED],
                QUEUES[QUORUM],
                QUEUES[UNLIMITED],
            ] {
                if queue == QUEUES[0] {
                    // A message that came back from a consumer is not spared (a classic queue).
                    self.expire_where(|entry, at, now| {
                        at < now || (at == now && entry.redelivered)
                    });
                }
                self.dispatch(queue);
                if queue == QUEUES[0] {
                    self.expire();
                }
            }
        }
    }

    fn consume(&mut self, lane: usize, queue: &'static str, prefetch: u16, priority: i64) {
        self.serial += 1;
        self.consumers[lane] = Some(ModelConsumer {
            queue,
            prefetch: usize::from(prefetch),
            priority,
            serial: self.serial,
        });
        self.rotation.get_mut(queue).unwrap().push_back(lane);
        self.run();
    }

    /// A cancel; the next consumer of a single-active queue takes over at once.
    fn cancel(&mut self, lane: usize) {
        self.detach(lane);
        self.run();
    }

    fn detach(&mut self, lane: usize) {
        if let Some(consumer) = self.consumers[lane].take() {
            let rotation = self.rotation.get_mut(consumer.queue).unwrap();
            let was_active = rotation.front() == Some(&lane);
            rotation.retain(|l| *l != lane);
            if let Some(blocked) = self.blocked.get_mut(consumer.queue) {
                blocked.retain(|l| *l != lane);
            }
            // The single active consumer's successor: the highest priority left, the earliest
            // registered among equals (a classic queue, as RabbitMQ 3.10 picks it). With two
            // lanes there is at most one left, but the rule is the engine's.
            if was_active && consumer.queue == QUEUES[RANKED] {
                let priority = |lane: &usize| self.consumers[*lane].unwrap().priority;
                let highest = rotation.iter().map(priority).max();
                if let Some(at) = rotation.iter().position(|l| Some(priority(l)) == highest)
                    && let Some(next) = rotation.remove(at)
                {
                    rotation.push_front(next);
                }
            }
        }
    }

    fn held(&self) -> usize {
        self.ready.values().map(VecDeque::len).sum::<usize>()
            + self.unacked.iter().map(BTreeMap::len).sum::<usize>()
    }

    /// Dead-letters from `limited` into `dead`; from `plain` the message is dropped.
    fn dead_letter(&mut self, queue: &'static str, entry: Entry, reason: &'static str) {
        if queue != QUEUES[0] {
            return;
        }
        self.seq += 1;
        let death = entry.death.or(Some(reason));
        let dead = Entry {
            seq: self.seq,
            redelivered: false,
            expires_at_ms: None,
            death,
            delivery_count: 0,
            returned: false,
            ..entry
        };
        self.ready.get_mut(DEAD).unwrap().push_back(dead);
    }

    /// RabbitMQ expires at the head only; with one TTL per queue, expiry follows position.
    fn expire(&mut self) {
        self.expire_where(|_, at, now| at <= now);
    }

    fn expire_where(&mut self, expired_at: impl Fn(&Entry, u64, u64) -> bool) {
        loop {
            let now = self.now_ms;
            let queue = self.ready.get_mut(QUEUES[0]).unwrap();
            let expired = queue
                .front()
                .is_some_and(|e| e.expires_at_ms.is_some_and(|at| expired_at(e, at, now)));
            if !expired {
                return;
            }
            let head = queue.pop_front().unwrap();
            self.dead_letter(QUEUES[0], head, "expired");
        }
    }

    /// The body published, and whether the queue took it (the quorum queue refuses while it is
    /// over its limit).
    fn publish(&mut self, queue: usize, priority: u8) -> (String, bool) {
        self.published += 1;
        self.seq += 1;
        let body = format!("m{}", self.published);
        let name = QUEUES[queue];
        if queue == QUORUM {
            let over = self.ready[QUEUES[QUORUM]].len() > QUORUM_MAX_LENGTH;
            if *self.quorum_publisher_stopped.get_or_insert(over) {
                return (body, false);
            }
        }
        let entry = Entry {
            seq: self.seq,
            priority: if queue == RANKED {
                priority.min(MAX_PRIORITY)
            } else {
                0
            },
            body: body.clone(),
            redelivered: false,
            expires_at_ms: (queue == 0).then_some(self.now_ms + TTL_MS),
            death: None,
            delivery_count: 0,
            returned: false,
        };
        self.insert(name, entry);
        self.drop_over_limit(name);
        (body, true)
    }

    /// `limited` is `drop-head`: past its length (after a publish or a requeue) its head is
    /// dead-lettered.
    fn drop_over_limit(&mut self, queue: &'static str) {
        if queue != QUEUES[0] {
            return;
        }
        while self.ready[queue].len() > MAX_LENGTH {
            let head = self.ready.get_mut(queue).unwrap().pop_front().unwrap();
            self.dead_letter(queue, head, "maxlen");
        }
    }

    fn get(&mut self, lane: usize, queue: &'static str, no_ack: bool) -> Option<(Entry, u64, u32)> {
        self.expire();
        let entry = self.ready.get_mut(queue).unwrap().pop_front()?;
        self.note_quorum_length();
        let left = u32::try_from(self.ready[queue].len()).unwrap();
        self.last_tag[lane] += 1;
        let tag = self.last_tag[lane];
        if !no_ack {
            self.unacked[lane].insert(tag, (queue, entry.clone(), 0));
        }
        Some((entry, tag, left))
    }

    /// A message back from a consumer: `returned` when its channel closed, else nacked.
    /// Classic queues put it where it was (and `limited` then drops its head if that takes it
    /// over its length). The quorum queues count it (`quorum` against its delivery limit),
    /// then put a returned one after earlier returns, ahead of everything else, and so a
    /// nacked one too where there is a delivery limit; `unlimited` puts a nacked one at the
    /// back.
    fn requeue(&mut self, queue: &'static str, entry: Entry, returned: bool) {
        let mut entry = Entry {
            redelivered: true,
            ..entry
        };
        if queue == QUEUES[QUORUM] || queue == QUEUES[UNLIMITED] {
            let limited = queue == QUEUES[QUORUM];
            entry.delivery_count += 1;
            if limited && entry.delivery_count > DELIVERY_LIMIT {
                self.dead_letter(queue, entry, "delivery_limit");
                return;
            }
            self.seq += 1;
            entry.seq = self.seq;
            entry.returned = returned || limited;
        }
        self.insert(queue, entry);
        self.drop_over_limit(queue);
    }

    /// Into its place: higher priority first, then the quorum queue's returns, then enqueue
    /// order (so a classic requeue lands where it was, and a publish at the back of its
    /// priority).
    fn insert(&mut self, queue: &'static str, entry: Entry) {
        let ready = self.ready.get_mut(queue).unwrap();
        let key = |e: &Entry| (std::cmp::Reverse(e.priority), !e.returned, e.seq);
        let position = ready.partition_point(|e| key(e) < key(&entry));
        ready.insert(position, entry);
        self.note_quorum_length();
    }

    /// After every change of the quorum queue's length: over the limit it tells its publisher
    /// to stop; at 80 % of the limit (rounded down) or below, to go on.
    fn note_quorum_length(&mut self) {
        let length = self.ready[QUEUES[QUORUM]].len();
        if let Some(stopped) = self.quorum_publisher_stopped.as_mut() {
            if length > QUORUM_MAX_LENGTH {
                *stopped = true;
            } else if length <= QUORUM_MAX_LENGTH * 4 / 5 {
                *stopped = false;
            }
        }
    }

    /// The tags a settle of `tag` covers.
    fn covered(&self, lane: usize, tag: u64, multiple: bool) -> Vec<u64> {
        if multiple {
            self.unacked[lane].range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        }
    }

    fn settle(&mut self, lane: usize, tags: &[u64], outcome: Option<bool>) {
        // RabbitMQ's channel settles in batches by queue and consumer tag, compared byte by
        // byte (a `basic.get`'s, which has no tag, first), each in tag order and its queue run
        // before the next batch (probed on 3.10.8: after a get and a consumer's delivery from
        // one quorum queue, a nack of both puts the get's back first).
        let batch = |model: &Model, tag: u64| {
            let (queue, _, serial) = &model.unacked[lane][&tag];
            let consumer_tag = match serial {
                0 => String::new(),
                serial => format!("amq.ctag-{serial}"),
            };
            (*queue, consumer_tag)
        };
        let mut batches: Vec<_> = tags.iter().map(|&tag| (batch(self, tag), tag)).collect();
        // Stable: each batch keeps its tag order.
        batches.sort_by(|a, b| a.0.cmp(&b.0));
        let mut last = None;
        for (batch, tag) in batches {
            if last.as_ref().is_some_and(|last| *last != batch) {
                self.run();
            }
            last = Some(batch);
            let blocked = !self.has_credit(lane);
            let (queue, entry, serial) = self.unacked[lane].remove(&tag).unwrap();
            // A quorum queue's consumer that gets credit back rejoins the round-robin at the
            // back (rabbit_fifo's service queue); a classic queue's keeps its turn unless it
            // was offered a message meanwhile (see `dispatch`).
            let current = self.consumers[lane].is_some_and(|c| c.serial == serial);
            let quorum = queue == QUEUES[QUORUM] || queue == QUEUES[UNLIMITED];
            if blocked && current && quorum {
                let rotation = self.rotation.get_mut(queue).unwrap();
                if let Some(at) = rotation.iter().position(|&l| l == lane) {
                    rotation.remove(at);
                    rotation.push_back(lane);
                }
            }
            match outcome {
                None => {}
                Some(true) => self.requeue(queue, entry, false),
                Some(false) => self.dead_letter(queue, entry, "rejected"),
            }
        }
        self.run();
    }

    /// A close takes the consumer away and requeues in one step, so a consumer taking over
    /// a single-active queue starts with the requeued messages.
    fn close(&mut self, lane: usize) {
        self.detach(lane);
        let unacked = std::mem::take(&mut self.unacked[lane]);
        for (_, (queue, entry, _)) in unacked {
            self.requeue(queue, entry, true);
        }
        self.last_tag[lane] = 0;
        if lane == 0 {
            // The next channel is a new publisher to the quorum queue.
            self.quorum_publisher_stopped = None;
        }
        self.run();
    }
}

struct World {
    engine: Engine,
    connection: broker_mem::ConnectionId,
    lanes: [ChannelId; LANES],
    /// The consumer tag on each lane, if it consumes.
    tags: [Option<String>; LANES],
    model: Model,
}

impl World {
    fn new() -> World {
        let mut engine = Engine::new(Limits::default());
        engine.advance_to(1_000);
        let connection = engine.open_connection("guest");
        let setup = engine.open_channel(connection).unwrap();
        let fanout = ExchangeKind::Fanout;
        engine
            .exchange_declare(setup, "dlx", fanout, ExchangeOptions::default())
            .unwrap();
        engine
            .queue_declare(setup, DEAD, QueueOptions::default())
            .unwrap();
        engine.queue_bind(setup, DEAD, "dlx", "").unwrap();
        let args: FieldTable = [
            ("x-message-ttl", FieldValue::I64(TTL_MS as i64)),
            ("x-max-length", FieldValue::I64(MAX_LENGTH as i64)),
            ("x-dead-letter-exchange", FieldValue::String("dlx".into())),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        engine
            .queue_declare_with(setup, QUEUES[0], QueueOptions::default(), &args)
            .unwrap();
        engine
            .queue_declare(setup, QUEUES[1], QueueOptions::default())
            .unwrap();
        let args: FieldTable = [
            ("x-max-priority", FieldValue::I64(i64::from(MAX_PRIORITY))),
            ("x-single-active-consumer", FieldValue::Bool(true)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        engine
            .queue_declare_with(setup, QUEUES[RANKED], QueueOptions::default(), &args)
            .unwrap();
        let args: FieldTable = [
            ("x-queue-type", FieldValue::String("quorum".into())),
            ("x-max-length", FieldValue::I64(QUORUM_MAX_LENGTH as i64)),
            ("x-overflow", FieldValue::String("reject-publish".into())),
            ("x-delivery-limit", FieldValue::I64(DELIVERY_LIMIT as i64)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let durable = QueueOptions {
            durable: true,
            ..QueueOptions::default()
        };
        engine
            .queue_declare_with(setup, QUEUES[QUORUM], durable, &args)
            .unwrap();
        let args: FieldTable = [(
            "x-queue-type".to_owned(),
            FieldValue::String("quorum".into()),
        )]
        .into_iter()
        .collect();
        engine
            .queue_declare_with(setup, QUEUES[UNLIMITED], durable, &args)
            .unwrap();
        engine.close_channel(setup).unwrap();
        let lanes = [(); LANES].map(|()| engine.open_channel(connection).unwrap());
        let mut model = Model::new();
        model.now_ms = 1_000;
        World {
            engine,
            connection,
            lanes,
            tags: [None, None],
            model,
        }
    }

    fn pick(&self, lane: usize, pick: usize) -> Option<u64> {
        let tags: Vec<u64> = self.model.unacked[lane].keys().copied().collect();
        (!tags.is_empty()).then(|| tags[pick % tags.len()])
    }

    fn reopen(&mut self, lane: usize) {
        self.tags[lane] = None;
        let _ = self.engine.close_channel(self.lanes[lane]);
        self.lanes[lane] = self.engine.open_channel(self.connection).unwrap();
    }

    fn get(&mut self, lane: usize, queue: &'static str, no_ack: bool) -> Result<(), TestCaseError> {
        let got = self
            .engine
            .basic_get(self.lanes[lane], queue, no_ack)
            .map_err(|e| TestCaseError::fail(format!("basic.get: {e}")))?;
        let expected = self.model.get(lane, queue, no_ack);
        match (got, expected) {
            (None, None) => {}
            (Some(ok), Some((entry, tag, left))) => {
                let d = &ok.delivery;
                prop_assert_eq!(&d.body[..], entry.body.as_bytes());
                prop_assert_eq!(d.delivery_tag, tag);
                prop_assert_eq!(
                    d.redelivered,
                    entry.redelivered,
                    "redelivered of {}",
                    entry.body
                );
                prop_assert_eq!(ok.message_count, left);
                let first_death = d
                    .properties
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("x-first-death-reason"))
                    .cloned();
                let expected = entry.death.map(|r| FieldValue::String(r.to_owned()));
                prop_assert_eq!(first_death, expected);
            }
            (got, expected) => {
                prop_assert!(
                    false,
                    "basic.get on {queue}: broker {got:?}, model {expected:?}"
                );
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Publish { queue, priority } => {
                let (body, accepted) = self.model.publish(queue, priority);
                let properties = Properties {
                    priority: Some(priority),
                    ..Properties::default()
                };
                let confirm = self.engine.basic_publish(
                    self.lanes[0],
                    "",
                    QUEUES[queue],
                    properties,
                    Bytes::from(body),
                );
                self.model.run();
                match confirm {
                    Ok(confirm) => prop_assert_eq!(
                        matches!(confirm, broker_mem::Confirm::Ack),
                        accepted,
                        "confirm of a publish to {}: {:?}",
                        QUEUES[queue],
                        confirm
                    ),
                    Err(error) => {
                        // Lane 0 was closed by an error: publish on a fresh one.
                        self.reopen(0);
                        self.model.close(0);
                        prop_assert!(false, "publish failed: {error:?}");
                    }
                }
            }
            Op::Get {
                lane,
                queue,
                no_ack,
            } => self.get(lane, QUEUES[queue], no_ack)?,
            Op::GetDead { lane } => self.get(lane, DEAD, true)?,
            Op::Ack {
                lane,
                pick,
                multiple,
            } => {
                let Some(tag) = self.pick(lane, pick) else {
                    return Ok(());
                };
                let tags = self.model.covered(lane, tag, multiple);
                self.engine
                    .basic_ack(self.lanes[lane], tag, multiple)
                    .map_err(|e| TestCaseError::fail(format!("ack: {e}")))?;
                self.model.settle(lane, &tags, None);
            }
            Op::Nack {
                lane,
                pick,
                multiple,
                requeue,
            } => {
                let Some(tag) = self.pick(lane, pick) else {
                    return Ok(());
                };
                let tags = self.model.covered(lane, tag, multiple);
                self.engine
                    .basic_nack(self.lanes[lane], tag, multiple, requeue)
                    .map_err(|e| TestCaseError::fail(format!("nack: {e}")))?;
                self.model.settle(lane, &tags, Some(requeue));
            }
            Op::AckUnknown { lane } => {
                let unknown = self.model.last_tag[lane] + 1;
                let error = self.engine.basic_ack(self.lanes[lane], unknown, false);
                let code = error
                    .as_ref()
                    .err()
                    .and_then(Error::reply)
                    .map(|r| r.code.code());
                prop_assert_eq!(code, Some(406));
                // The channel is closed: its unacked messages are back; a new one takes over.
                self.model.close(lane);
                self.reopen(lane);
            }
            Op::Purge { lane, queue } => {
                self.model.expire();
                let expected = self
                    .model
                    .ready
                    .get_mut(QUEUES[queue])
                    .unwrap()
                    .drain(..)
                    .count();
                self.model.note_quorum_length();
                let purged = self
                    .engine
                    .queue_purge(self.lanes[lane], QUEUES[queue])
                    .map_err(|e| TestCaseError::fail(format!("purge: {e}")))?;
                prop_assert_eq!(purged as usize, expected);
            }
            Op::Reopen { lane } => {
                self.model.close(lane);
                self.reopen(lane);
            }
            Op::Advance { ms } => {
                self.model.now_ms += ms;
                self.engine.advance_to(self.model.now_ms);
                self.model.run();
            }
            Op::Consume {
                lane,
                queue,
                prefetch,
                priority,
            } => {
                if self.tags[lane].is_some() {
                    return Ok(());
                }
                let name = QUEUES.get(queue).copied().unwrap_or(DEAD);
                let channel = self.lanes[lane];
                self.engine
                    .basic_qos(channel, prefetch)
                    .map_err(|e| TestCaseError::fail(format!("qos: {e}")))?;
                let options = ConsumeOptions {
                    arguments: FieldTable::from([(
                        "x-priority".to_owned(),
                        FieldValue::I64(priority),
                    )]),
                    ..ConsumeOptions::default()
                };
                let tag = self
                    .engine
                    .basic_consume(channel, name, options)
                    .map_err(|e| TestCaseError::fail(format!("consume: {e}")))?;
                self.tags[lane] = Some(tag);
                self.model.consume(lane, name, prefetch, priority);
            }
            Op::Cancel { lane } => {
                let Some(tag) = self.tags[lane].take() else {
                    return Ok(());
                };
                self.engine
                    .basic_cancel(self.lanes[lane], &tag)
                    .map_err(|e| TestCaseError::fail(format!("cancel: {e}")))?;
                self.model.cancel(lane);
            }
        }
        Ok(())
    }

    /// The deliveries of this step, per lane, must be the model's.
    fn check_deliveries(&mut self) -> Result<(), TestCaseError> {
        let mut seen: [Vec<Seen>; LANES] = Default::default();
        for event in self.engine.take_events() {
            if let Event::Deliver { channel, delivery } = event {
                let lane = self.lanes.iter().position(|l| *l == channel);
                let Some(lane) = lane else {
                    prop_assert!(false, "a delivery to a closed lane: {delivery:?}");
                    continue;
                };
                let body = String::from_utf8_lossy(&delivery.body).into_owned();
                seen[lane].push((delivery.delivery_tag, body, delivery.redelivered));
            }
        }
        let expected = std::mem::take(&mut self.model.delivered);
        prop_assert_eq!(seen, expected);
        Ok(())
    }

    fn check(&self) -> Result<(), TestCaseError> {
        for q in QUEUES.into_iter().chain([DEAD]) {
            prop_assert_eq!(
                self.engine.queue_depth(q),
                Some(self.model.ready[q].len()),
                "depth of {}",
                q
            );
        }
        prop_assert_eq!(self.engine.usage().messages, self.model.held());
        self.engine
            .check_invariants()
            .map_err(|e| TestCaseError::fail(format!("invariants: {e}")))
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn the_engine_agrees_with_the_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op)?;
            world.check_deliveries()?;
            world.check()?;
        }
    }
}
