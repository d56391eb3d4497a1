//! Conservation: whatever a client does (publish, consume, ack, nack, reject, cancel, break a
//! rule, close channels and connections), every routed message is in exactly one place:
//! acked, dropped by a nack/reject without requeue, ready, or unacked. Nothing is lost and
//! nothing is duplicated, and `redelivered = false` always means "never delivered before".
//! The second queue is a priority queue with a single active consumer, so requeues into
//! priority order and consumer hand-overs are held to the same account.

use std::collections::{BTreeMap, BTreeSet};

use broker_mem::{
    Broker, Bytes, Channel, Connection, ConsumeOptions, Consumer, Error, FieldTable, FieldValue,
    Properties, QueueOptions,
};
use proptest::prelude::*;

const QUEUES: [&str; 2] = ["q0", "q1"];
const CHANNELS: usize = 4;
const CONNECTIONS: usize = 2;

#[derive(Debug, Clone)]
enum Op {
    Publish {
        queue: usize,
        priority: u8,
    },
    Consume {
        channel: usize,
        queue: usize,
        prefetch: u16,
    },
    Ack {
        channel: usize,
        pick: usize,
        multiple: bool,
    },
    Nack {
        channel: usize,
        pick: usize,
        multiple: bool,
        requeue: bool,
    },
    Reject {
        channel: usize,
        pick: usize,
        requeue: bool,
    },
    AckUnknownTag {
        channel: usize,
    },
    Cancel {
        channel: usize,
    },
    CloseChannel {
        channel: usize,
    },
    CloseConnection {
        connection: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let channel = 0..CHANNELS;
    let queue = 0..QUEUES.len();
    prop_oneof![
        4 => (queue.clone(), 0..5u8).prop_map(|(queue, priority)| Op::Publish { queue, priority }),
        2 => (channel.clone(), queue, 0..4u16)
            .prop_map(|(channel, queue, prefetch)| Op::Consume { channel, queue, prefetch }),
        3 => (channel.clone(), any::<usize>(), any::<bool>())
            .prop_map(|(channel, pick, multiple)| Op::Ack { channel, pick, multiple }),
        2 => (channel.clone(), any::<usize>(), any::<bool>(), any::<bool>()).prop_map(
            |(channel, pick, multiple, requeue)| Op::Nack { channel, pick, multiple, requeue }
        ),
        1 => (channel.clone(), any::<usize>(), any::<bool>())
            .prop_map(|(channel, pick, requeue)| Op::Reject { channel, pick, requeue }),
        1 => channel.clone().prop_map(|channel| Op::AckUnknownTag { channel }),
        1 => channel.clone().prop_map(|channel| Op::Cancel { channel }),
        1 => channel.prop_map(|channel| Op::CloseChannel { channel }),
        1 => (0..CONNECTIONS).prop_map(|connection| Op::CloseConnection { connection }),
    ]
}

/// One client channel and what the test knows it holds.
#[derive(Default)]
struct Lane {
    channel: Option<Channel>,
    consumers: Vec<Consumer>,
    /// Received and not yet settled: delivery tag → message id.
    outstanding: BTreeMap<u64, String>,
    last_tag: u64,
}

struct World {
    broker: Broker,
    connections: Vec<Connection>,
    lanes: Vec<Lane>,
    published: BTreeSet<String>,
    acked: BTreeSet<String>,
    dropped: BTreeSet<String>,
    ever_delivered: BTreeSet<String>,
}

impl World {
    fn new() -> World {
        let broker = Broker::new();
        let connections: Vec<_> = (0..CONNECTIONS).map(|_| broker.connect()).collect();
        let setup = connections[0].open_channel().unwrap();
        let durable = QueueOptions {
            durable: true,
            ..QueueOptions::default()
        };
        setup.queue_declare(QUEUES[0], durable).unwrap();
        let prioritised_single_active = FieldTable::from([
            ("x-max-priority".to_owned(), FieldValue::I64(3)),
            (
                "x-single-active-consumer".to_owned(),
                FieldValue::Bool(true),
            ),
        ]);
        setup
            .queue_declare_with(QUEUES[1], durable, &prioritised_single_active)
            .unwrap();
        drop(setup);
        World {
            broker,
            connections,
            lanes: (0..CHANNELS).map(|_| Lane::default()).collect(),
            published: BTreeSet::new(),
            acked: BTreeSet::new(),
            dropped: BTreeSet::new(),
            ever_delivered: BTreeSet::new(),
        }
    }

    /// The lane's channel, reopened if it was closed (by the client or by an error); a closed
    /// channel's deliveries were requeued, so the test forgets them too.
    fn channel(&mut self, lane: usize) -> &Channel {
        let open = self.lanes[lane]
            .channel
            .as_ref()
            .is_some_and(Channel::is_open);
        if !open {
            self.forget(lane);
            let connection = &self.connections[lane % CONNECTIONS];
            self.lanes[lane].channel = Some(connection.open_channel().unwrap());
        }
        self.lanes[lane].channel.as_ref().unwrap()
    }

    fn forget(&mut self, lane: usize) {
        let lane = &mut self.lanes[lane];
        lane.consumers.clear();
        lane.outstanding.clear();
        lane.last_tag = 0;
        lane.channel = None;
    }

    /// Moves everything buffered for the lane's consumers into `outstanding`, checking tags and
    /// the redelivered flag on the way. Buffers are drained completely each time, so every new
    /// tag is above every tag seen before on the channel.
    fn receive(&mut self, lane: usize) -> Result<(), TestCaseError> {
        let Lane {
            consumers,
            outstanding,
            last_tag,
            ..
        } = &mut self.lanes[lane];
        let mut batch: Vec<_> = consumers
            .iter()
            .flat_map(|c| std::iter::from_fn(|| c.try_recv().ok()))
            .collect();
        batch.sort_by_key(|delivery| delivery.delivery_tag);
        for delivery in batch {
            let id = delivery.properties.message_id.clone().unwrap();
            prop_assert!(delivery.delivery_tag > *last_tag, "tags must increase");
            *last_tag = delivery.delivery_tag;
            if !delivery.redelivered {
                prop_assert!(
                    !self.ever_delivered.contains(&id),
                    "{id} delivered twice as new"
                );
            }
            self.ever_delivered.insert(id.clone());
            outstanding.insert(delivery.delivery_tag, id);
        }
        Ok(())
    }

    /// The outstanding tags a settle of `pick` covers, and the tag to send.
    fn pick(&self, lane: usize, pick: usize, multiple: bool) -> Option<(u64, Vec<u64>)> {
        let outstanding = &self.lanes[lane].outstanding;
        let tag = *outstanding.keys().nth(pick % outstanding.len().max(1))?;
        let covered = if multiple {
            outstanding.range(..=tag).map(|(t, _)| *t).collect()
        } else {
            vec![tag]
        };
        Some((tag, covered))
    }

    fn settled(&mut self, lane: usize, tags: &[u64], forgotten_into: Option<bool>) {
        for tag in tags {
            let id = self.lanes[lane].outstanding.remove(tag).unwrap();
            match forgotten_into {
                Some(true) => self.acked.insert(id),
                Some(false) => self.dropped.insert(id),
                None => false, // requeued: back in the broker
            };
        }
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        match *op {
            Op::Publish { queue, priority } => {
                let id = format!("m{}", self.published.len());
                let properties = Properties {
                    message_id: Some(id.clone()),
                    priority: Some(priority),
                    ..Properties::default()
                };
                let channel = self.channel(0);
                channel
                    .basic_publish("", QUEUES[queue], properties, Bytes::new())
                    .unwrap();
                self.published.insert(id);
            }
            Op::Consume {
                channel: lane,
                queue,
                prefetch,
            } => {
                let channel = self.channel(lane);
                channel.basic_qos(prefetch).unwrap();
                let consumer = channel
                    .basic_consume(QUEUES[queue], ConsumeOptions::default())
                    .unwrap();
                self.lanes[lane].consumers.push(consumer);
            }
            Op::Ack {
                channel: lane,
                pick,
                multiple,
            } => {
                self.channel(lane);
                self.receive(lane)?;
                if let Some((tag, covered)) = self.pick(lane, pick, multiple) {
                    self.channel(lane).basic_ack(tag, multiple).unwrap();
                    self.settled(lane, &covered, Some(true));
                }
            }
            Op::Nack {
                channel: lane,
                pick,
                multiple,
                requeue,
            } => {
                self.channel(lane);
                self.receive(lane)?;
                if let Some((tag, covered)) = self.pick(lane, pick, multiple) {
                    self.channel(lane)
                        .basic_nack(tag, multiple, requeue)
                        .unwrap();
                    self.settled(lane, &covered, (!requeue).then_some(false));
                }
            }
            Op::Reject {
                channel: lane,
                pick,
                requeue,
            } => {
                self.channel(lane);
                self.receive(lane)?;
                if let Some((tag, covered)) = self.pick(lane, pick, false) {
                    self.channel(lane).basic_reject(tag, requeue).unwrap();
                    self.settled(lane, &covered, (!requeue).then_some(false));
                }
            }
            Op::AckUnknownTag { channel: lane } => {
                let error = self
                    .channel(lane)
                    .basic_ack(u64::MAX / 2, false)
                    .unwrap_err();
                prop_assert!(
                    matches!(error, Error::Channel(ref reply) if reply.code.code() == 406)
                );
                self.forget(lane);
            }
            Op::Cancel { channel: lane } => {
                if let Some(consumer) = self.lanes[lane].consumers.first() {
                    let tag = consumer.tag().to_owned();
                    self.channel(lane).basic_cancel(&tag).unwrap();
                }
            }
            Op::CloseChannel { channel: lane } => {
                if let Some(channel) = &self.lanes[lane].channel {
                    let _ = channel.close();
                }
                self.forget(lane);
            }
            Op::CloseConnection { connection } => {
                self.connections[connection] = self.broker.connect();
                for lane in (0..CHANNELS).filter(|lane| lane % CONNECTIONS == connection) {
                    self.forget(lane);
                }
            }
        }
        Ok(())
    }

    /// Counts agree: routed = acked + dropped + ready + unacked.
    fn check_counts(&self) -> Result<(), TestCaseError> {
        if let Err(broken) = self.broker.check_invariants() {
            return Err(TestCaseError::fail(broken));
        }
        let ready: usize = QUEUES
            .iter()
            .map(|q| self.broker.queue_depth(q).unwrap())
            .sum();
        let unacked: usize = QUEUES
            .iter()
            .map(|q| self.broker.unacked_count(q).unwrap())
            .sum();
        let gone = self.acked.len() + self.dropped.len();
        prop_assert_eq!(self.published.len(), gone + ready + unacked);
        Ok(())
    }

    /// Closes everything, drains the queues and checks each message is in exactly one place.
    fn check_exactly_once(mut self) -> Result<(), TestCaseError> {
        for lane in 0..CHANNELS {
            self.forget(lane);
        }
        let mut remaining = Vec::new();
        let channel = self.channel(0);
        let consumers: Vec<_> = QUEUES
            .iter()
            .map(|q| {
                channel
                    .basic_consume(
                        q,
                        ConsumeOptions {
                            no_ack: true,
                            ..ConsumeOptions::default()
                        },
                    )
                    .unwrap()
            })
            .collect();
        for consumer in &consumers {
            while let Ok(delivery) = consumer.try_recv() {
                remaining.push(delivery.properties.message_id.clone().unwrap());
            }
        }
        let mut everywhere: Vec<String> = remaining;
        everywhere.extend(self.acked.iter().cloned());
        everywhere.extend(self.dropped.iter().cloned());
        everywhere.sort();
        let expected: Vec<String> = self.published.iter().cloned().collect();
        prop_assert_eq!(everywhere, expected);
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_routed_message_ends_up_exactly_once_in_acked_ready_or_unacked(
        ops in proptest::collection::vec(op(), 1..80)
    ) {
        let mut world = World::new();
        for op in &ops {
            world.apply(op)?;
            world.check_counts()?;
        }
        world.check_exactly_once()?;
    }
}
