//! Consumers: a subscription of one channel to one queue, with its prefetch credit.
//!
//! RabbitMQ applies `basic.qos` (with `global = false`, what every client sends) per consumer,
//! and only to consumers started after it; so the prefetch is copied into the consumer when it
//! starts.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use smol_str::SmolStr;

use crate::delivery::Delivery;
use crate::limits::{CONSUMER_BUFFER_MAX, NO_ACK_BUFFER_MAX};
use crate::message::FieldTable;

/// Flags and arguments of `basic.consume`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConsumeOptions {
    /// The consumer's tag on its channel; empty lets the broker choose `amq.ctag-<n>`.
    pub consumer_tag: String,
    /// Deliveries count as acknowledged when sent (at most once); prefetch does not apply.
    pub no_ack: bool,
    /// Be the queue's only consumer (403 if it has others, and others get 403 after).
    pub exclusive: bool,
    /// `basic.consume` arguments. broker-mem acts on `x-priority` (an integer, default 0):
    /// a queue offers messages to its consumers of the highest priority that have credit, and
    /// to lower ones only while those are blocked (round-robin among equals).
    pub arguments: FieldTable,
}

#[derive(Debug)]
pub(crate) struct ConsumerState {
    /// Broker-wide, never reused, unlike tags.
    pub serial: u64,
    pub queue: SmolStr,
    pub no_ack: bool,
    /// Most unacked deliveries; 0 = unlimited (AMQP).
    pub prefetch: u16,
    /// Delivered to this consumer and not settled.
    pub unacked: usize,
    /// `no_ack` deliveries handed over and not yet taken by the client (see
    /// [`NO_ACK_BUFFER_MAX`]).
    pub buffered: usize,
    /// The in-process client's buffer for this consumer (`Engine::basic_consume_into`):
    /// deliveries go straight into it instead of through the event outbox, which saves a
    /// lookup and two moves per delivery.
    pub outlet: Option<ConsumerOutlet>,
}

/// The engine's end of an in-process consumer's buffer: an unbounded flume channel that the
/// engine keeps within [`CONSUMER_BUFFER_MAX`] (credit alone does not bound it: see there).
#[derive(Debug)]
pub(crate) struct ConsumerOutlet {
    sender: flume::Sender<Delivery>,
    /// How many deliveries the buffer holds at most: the client takes without telling the
    /// engine, so this is counted up per send and read back from the buffer (which takes its
    /// lock) only when it reaches the ceiling.
    held_at_most: usize,
    /// Set when the buffer was full and the consumer was passed over: the client's next take
    /// calls the broker (`Engine::consumer_buffer_drained`) so that deliveries go on.
    starved: Arc<AtomicBool>,
}

impl ConsumerOutlet {
    pub(crate) fn new(sender: flume::Sender<Delivery>, starved: Arc<AtomicBool>) -> Self {
        let held_at_most = sender.len();
        ConsumerOutlet {
            sender,
            held_at_most,
            starved,
        }
    }

    /// Whether the buffer can take one more; if not, the consumer is marked starved.
    pub(crate) fn has_room(&self) -> bool {
        if self.held_at_most < CONSUMER_BUFFER_MAX {
            return true;
        }
        let room = self.sender.len() < CONSUMER_BUFFER_MAX;
        if !room {
            self.starved.store(true, Ordering::Release);
        }
        room
    }

    pub(crate) fn send(&mut self, delivery: Delivery) {
        if self.held_at_most >= CONSUMER_BUFFER_MAX {
            self.held_at_most = self.sender.len();
        }
        self.held_at_most += 1;
        // Cannot fail: unbounded, and the client keeps a receiving end until the consumer
        // has ended.
        let sent = self.sender.send(delivery);
        debug_assert!(sent.is_ok(), "consumer buffer gone: {sent:?}");
    }
}

impl ConsumerState {
    /// May this consumer receive one more delivery now?
    pub(crate) fn has_credit(&self) -> bool {
        if self.no_ack {
            self.buffered < NO_ACK_BUFFER_MAX
        } else {
            self.prefetch == 0 || self.unacked < usize::from(self.prefetch)
        }
    }

    /// Whether a delivery can go to this consumer now: it has credit, and its in-process
    /// buffer, if any, has room.
    pub(crate) fn can_take(&self) -> bool {
        self.has_credit() && self.outlet.as_ref().is_none_or(ConsumerOutlet::has_room)
    }
}
