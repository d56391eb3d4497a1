//! Queues: ready messages in enqueue order, and the consumers that compete for them.
//!
//! Every enqueued message gets a broker-wide sequence number. The ready list stays sorted by it,
//! which is what makes a requeued message land in its original position (RabbitMQ classic
//! queues: ahead of everything enqueued after it) without any bookkeeping of positions.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::channel::ChannelId;
use crate::connection::ConnectionId;
use crate::error::{Fault, ReplyCode};
use crate::exchange::bool_str;
use crate::message::Message;

/// Flags of `queue.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// Survives a broker restart (recorded and checked for equivalence; no restart yet).
    pub durable: bool,
    /// Only the declaring connection may use it (others get 405); deleted when that connection
    /// closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes away (a queue that never had one is kept).
    pub auto_delete: bool,
    /// Only check that the queue exists (404 if not); nothing is created or compared.
    pub passive: bool,
}

/// The answer to `queue.declare`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclareOk {
    /// The queue's name (server-generated `amq.gen-<n>` when declared with an empty name).
    pub name: String,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

/// A queue as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueInfo {
    /// Name.
    pub name: String,
    /// Declared durable.
    pub durable: bool,
    /// Declared exclusive.
    pub exclusive: bool,
    /// Declared auto-delete.
    pub auto_delete: bool,
    /// Ready messages.
    pub ready: usize,
    /// Messages delivered and not yet settled.
    pub unacked: usize,
    /// Consumers.
    pub consumers: usize,
}

/// A message in a queue, or out of it while unacked (so it can go back where it was).
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    /// Broker-wide enqueue order.
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
}

/// A consumer as the queue knows it: its channel and tag.
pub(crate) type ConsumerKey = (ChannelId, String);

#[derive(Debug)]
pub(crate) struct Queue {
    /// Distinguishes this queue from an earlier one of the same name.
    pub id: u64,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection that declared it exclusive.
    pub owner: Option<ConnectionId>,
    /// Sorted by `seq`.
    ready: VecDeque<Queued>,
    /// Delivered from this queue and not settled yet.
    pub unacked: usize,
    /// Round-robin order: the front is the next consumer offered a message.
    consumers: VecDeque<ConsumerKey>,
    /// Whether the consumer (at most one then) asked for exclusive use.
    pub exclusive_consumer: bool,
}

impl Queue {
    pub(crate) fn new(id: u64, options: QueueOptions, owner: Option<ConnectionId>) -> Queue {
        Queue {
            id,
            durable: options.durable,
            auto_delete: options.auto_delete,
            owner,
            ready: VecDeque::new(),
            unacked: 0,
            consumers: VecDeque::new(),
            exclusive_consumer: false,
        }
    }

    /// RabbitMQ's checks when a connection redeclares (or passively declares, binds, consumes
    /// from) a queue: an exclusive queue is locked to its owner.
    pub(crate) fn check_access(&self, name: &str, connection: ConnectionId) -> Result<(), Fault> {
        match self.owner {
            Some(owner) if owner != connection => Err(Fault::locked_queue(name)),
            _ => Ok(()),
        }
    }

    /// RabbitMQ's equivalence check for a redeclare.
    pub(crate) fn check_equivalent(&self, name: &str, options: QueueOptions) -> Result<(), Fault> {
        if options.exclusive != self.owner.is_some() {
            return Err(Fault::locked_queue(name));
        }
        let flags = [
            ("durable", options.durable, self.durable),
            ("auto_delete", options.auto_delete, self.auto_delete),
        ];
        for (arg, received, current) in flags {
            if received != current {
                return Err(Fault::channel(
                    ReplyCode::PreconditionFailed,
                    format!(
                        "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': received \
                         '{}' but current is '{}'",
                        crate::VHOST,
                        bool_str(received),
                        bool_str(current)
                    ),
                ));
            }
        }
        Ok(())
    }

    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub(crate) fn ready_body_bytes(&self) -> usize {
        self.ready
            .iter()
            .map(|queued| queued.message.body.len())
            .sum()
    }

    pub(crate) fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    /// A newly published message: it is the newest, so it goes to the back.
    pub(crate) fn enqueue(&mut self, entry: Queued) {
        debug_assert!(self.ready.back().is_none_or(|last| last.seq < entry.seq));
        self.ready.push_back(entry);
    }

    /// A message coming back from a consumer: to its original position.
    pub(crate) fn requeue(&mut self, entry: Queued) {
        let position = self.ready.partition_point(|queued| queued.seq < entry.seq);
        debug_assert!(
            self.ready
                .get(position)
                .is_none_or(|next| next.seq != entry.seq)
        );
        self.ready.insert(position, entry);
    }

    pub(crate) fn pop_ready(&mut self) -> Option<Queued> {
        self.ready.pop_front()
    }

    /// Everything ready, for the queue's deletion.
    pub(crate) fn drain_ready(&mut self) -> impl Iterator<Item = Queued> + '_ {
        self.ready.drain(..)
    }

    pub(crate) fn add_consumer(&mut self, key: ConsumerKey, exclusive: bool) {
        self.consumers.push_back(key);
        self.exclusive_consumer = exclusive;
    }

    pub(crate) fn remove_consumer(&mut self, key: &ConsumerKey) {
        self.consumers.retain(|k| k != key);
        if self.consumers.is_empty() {
            self.exclusive_consumer = false;
        }
    }

    pub(crate) fn consumers(&self) -> impl Iterator<Item = &ConsumerKey> {
        self.consumers.iter()
    }

    /// The next consumer in round-robin order that `has_credit`, which then moves to the back.
    /// Consumers without credit keep their turn. None when every consumer is blocked.
    pub(crate) fn next_consumer(
        &mut self,
        has_credit: impl Fn(&ConsumerKey) -> bool,
    ) -> Option<ConsumerKey> {
        let position = self.consumers.iter().position(has_credit)?;
        let key = self.consumers.remove(position)?;
        self.consumers.push_back(key.clone());
        Some(key)
    }

    pub(crate) fn info(&self, name: &str) -> QueueInfo {
        QueueInfo {
            name: name.to_owned(),
            durable: self.durable,
            exclusive: self.owner.is_some(),
            auto_delete: self.auto_delete,
            ready: self.ready.len(),
            unacked: self.unacked,
            consumers: self.consumers.len(),
        }
    }

    pub(crate) fn is_sorted(&self) -> bool {
        self.ready
            .iter()
            .zip(self.ready.iter().skip(1))
            .all(|(a, b)| a.seq < b.seq)
    }
}
