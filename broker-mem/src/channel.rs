//! Channels: the lane of a connection on which a client declares, publishes, consumes and
//! settles. Delivery tags and the unacked map are per channel, as in AMQP; closing a channel
//! (by the client or by an error) requeues every unacked delivery and cancels its consumers.

use std::fmt;

use smol_str::SmolStr;

use crate::connection::ConnectionId;
use crate::consumer::ConsumerState;
use crate::delivery::{Unacked, UnackedDeliveries};
use crate::engine::reply_to::ReplyConsumer;
use crate::engine::tx::Transaction;
use crate::error::AmqpError;
use crate::lookup::NameMap;

/// Identifies a channel for the broker's lifetime; never reused, so a stale handle can never
/// act on a newer channel that got the same AMQP channel number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChannelId {
    pub(crate) connection: ConnectionId,
    pub(crate) serial: u64,
}

impl ChannelId {
    /// The connection the channel belongs to.
    pub fn connection(self) -> ConnectionId {
        self.connection
    }
}

impl fmt::Display for ChannelId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "channel {} of {}", self.serial, self.connection)
    }
}

#[derive(Debug)]
pub(crate) struct ChannelState {
    /// AMQP channel number (not 0), unique among the connection's channels.
    pub number: u16,
    /// Set when an error closed the channel; the record (and its number) is kept until the
    /// client releases the channel, so later calls can say why.
    pub closed: Option<AmqpError>,
    /// `basic.qos` prefetch for consumers started from now on; 0 = unlimited.
    pub prefetch: u16,
    /// `basic.qos` with `global = true`: most unacked consumer deliveries on the whole channel
    /// (RabbitMQ's meaning of `global`); 0 = unlimited.
    pub global_prefetch: u16,
    /// What `global_prefetch` is held against: RabbitMQ's limiter volume (rabbit_limiter),
    /// which approximates the unacked count. Set to every unacked delivery (`basic.get`s
    /// included) when the limit is set on a channel without one, one up per delivery a classic
    /// queue makes to a consumer that acks, and down by the consumer deliveries (quorum ones
    /// too) each ack, nack, reject or recover settles, unless it is 0 (then it stays 0, and
    /// otherwise it may go below 0). 0 while the channel has no global limit.
    pub limiter_volume: i64,
    /// Unacked deliveries that came through consumers (not `basic.get`), for `global_prefetch`.
    pub consumer_unacked: usize,
    /// Fault hook: the next publish on this channel is nacked; true = enqueued all the same.
    pub nack_next_publish: Option<bool>,
    /// The last delivery tag handed out; tags start at 1.
    pub last_delivery_tag: u64,
    /// Deliveries not yet settled, by tag (ascending, which `multiple` relies on).
    pub unacked: UnackedDeliveries,
    /// Consumers by tag.
    pub consumers: NameMap<ConsumerState>,
    /// `tx.select`: the open transaction (empty after each commit or rollback).
    pub tx: Option<Transaction>,
    /// Its direct reply-to consumer, also among `consumers` (see `engine::reply_to`).
    pub reply_consumer: Option<ReplyConsumer>,
    /// The quorum `reject-publish` queues it has published to, each once: they know it as a
    /// publisher (see `Queue::would_overflow`) and forget it when it closes.
    pub known_by: Vec<SmolStr>,
    /// The queue the last successful `queue.declare` named: what an empty queue name means
    /// (see `engine::names`).
    pub last_declared_queue: Option<SmolStr>,
}

impl ChannelState {
    /// Every delivery the broker counts as unacked on this channel: those waiting for a
    /// settle, and those settled in a transaction that is not committed yet.
    pub(crate) fn all_unacked(&self) -> impl Iterator<Item = (&u64, &Unacked)> {
        let in_tx = self.tx.iter().flat_map(Transaction::settled);
        self.unacked.iter().chain(in_tx)
    }

    /// Whether the channel-wide (`global`) prefetch lets one more consumer delivery through.
    pub(crate) fn has_global_credit(&self) -> bool {
        self.global_prefetch == 0 || self.limiter_volume < i64::from(self.global_prefetch)
    }

    /// `basic.qos` with `global = true` (see `limiter_volume`); 0 lifts the limit.
    pub(crate) fn limit_globally(&mut self, prefetch_count: u16) {
        if prefetch_count == 0 {
            self.lift_global_limit();
            return;
        }
        if self.global_prefetch == 0 {
            self.limiter_volume = i64::try_from(self.unacked.len()).unwrap_or(i64::MAX);
        }
        self.global_prefetch = prefetch_count;
    }

    pub(crate) fn lift_global_limit(&mut self) {
        self.global_prefetch = 0;
        self.limiter_volume = 0;
    }

    /// One settle call (or one transaction's settle, at its commit) took `count` consumer
    /// deliveries off the channel: RabbitMQ's `rabbit_limiter:ack`. True when the channel has
    /// a global limit, whose consumers may now have credit.
    pub(crate) fn limiter_settled(&mut self, count: usize) -> bool {
        if self.global_prefetch == 0 || count == 0 {
            return false;
        }
        if self.limiter_volume != 0 {
            self.limiter_volume -= i64::try_from(count).unwrap_or(i64::MAX);
        }
        true
    }
}

impl ChannelState {
    pub(crate) fn new(number: u16) -> ChannelState {
        ChannelState {
            number,
            closed: None,
            prefetch: 0,
            global_prefetch: 0,
            limiter_volume: 0,
            consumer_unacked: 0,
            nack_next_publish: None,
            last_delivery_tag: 0,
            unacked: UnackedDeliveries::default(),
            consumers: NameMap::default(),
            tx: None,
            reply_consumer: None,
            known_by: Vec::new(),
            last_declared_queue: None,
        }
    }
}
