//! Consumers: a subscription of one channel to one queue, with its prefetch credit.
//!
//! RabbitMQ applies `basic.qos` (with `global = false`, what every client sends) per consumer,
//! and only to consumers started after it; so the prefetch is copied into the consumer when it
//! starts.

use smol_str::SmolStr;

use crate::delivery::Delivery;

use crate::limits::NO_ACK_BUFFER_MAX;
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
    /// The in-process client's buffer for this consumer, once it attached one
    /// (`Engine::attach_outlet`): deliveries go straight into it instead of through the event
    /// outbox, which saves a lookup and two moves per delivery. Its capacity is the consumer's
    /// window, so a send within credit cannot fail.
    pub outlet: Option<flume::Sender<Delivery>>,
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

    /// The most deliveries that can be waiting in this consumer's buffer at once; None when
    /// unlimited (manual acks with prefetch 0, bounded instead by the broker's held-messages
    /// ceiling).
    pub(crate) fn window(&self) -> Option<usize> {
        if self.no_ack {
            Some(NO_ACK_BUFFER_MAX)
        } else if self.prefetch == 0 {
            None
        } else {
            Some(usize::from(self.prefetch))
        }
    }
}
