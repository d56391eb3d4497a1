//! Fault hooks for tests and simulations: what a network or an operator does to a real
//! broker, on demand. Lose, duplicate or delay a queue's next delivery; nack a channel's next
//! publish; close a channel or a connection from the broker's side; restart the broker.
//! Each hook is deterministic: it fires on the next matching event, never at random (a
//! simulator draws the randomness from its seed and calls the hook).

use smol_str::SmolStr;

use super::{Engine, Event};
use crate::channel::ChannelId;
use crate::connection::ConnectionId;
use crate::delivery::Delivery;
use crate::error::{AmqpError, ReplyCode};
use crate::limits::FAULTS_ARMED_MAX;
use crate::queue::QueueType;

/// A fault armed against a queue's next delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum DeliveryFault {
    /// Recorded as delivered (unacked) but never handed over, as if the frame were lost.
    Drop,
    /// Handed over, and a copy stays in the queue (marked redelivered), as after a lost ack.
    Duplicate,
    /// Handed over only once the clock has moved on by this many milliseconds.
    Delay(u64),
}

/// A fault hook armed on a queue or an exchange that has not fired yet (see
/// [`Engine::armed_faults`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArmedFault {
    /// [`Engine::drop_next_delivery`].
    DropDelivery {
        /// The queue whose next delivery it waits for.
        queue: String,
    },
    /// [`Engine::duplicate_next_delivery`].
    DuplicateDelivery {
        /// The queue whose next delivery it waits for.
        queue: String,
    },
    /// [`Engine::delay_next_delivery`].
    DelayDelivery {
        /// The queue whose next delivery it waits for.
        queue: String,
        /// The delay it will add.
        delay_ms: u64,
    },
    /// [`Engine::nack_next_publish_to`].
    NackPublish {
        /// The exchange whose next publish it waits for.
        exchange: String,
    },
}

/// A delivery held back by [`DeliveryFault::Delay`].
#[derive(Debug)]
pub(super) struct Delayed {
    pub(super) due_ms: u64,
    pub(super) channel: ChannelId,
    /// The consumer it was made for (a later one may reuse the tag), and whether it was
    /// settled as it was sent (no-ack: it is not among the channel's unacked deliveries).
    pub(super) consumer_serial: u64,
    pub(super) no_ack: bool,
    pub(super) delivery: Delivery,
}

impl Engine {
    /// The next delivery from `queue` is lost on its way: the broker counts it as delivered
    /// and unacked, the consumer never sees it; it comes back when its channel closes.
    pub fn drop_next_delivery(&mut self, queue: &str) {
        self.arm(queue, DeliveryFault::Drop);
    }

    /// The next delivery from `queue` is handed over, and a copy stays in the queue marked
    /// redelivered (what a lost ack followed by a reconnect looks like): the consumer sees the
    /// message twice.
    pub fn duplicate_next_delivery(&mut self, queue: &str) {
        self.arm(queue, DeliveryFault::Duplicate);
    }

    /// The next delivery from `queue` reaches its consumer only once the clock has advanced by
    /// `delay_ms` (it is unacked, and counts against prefetch, meanwhile).
    pub fn delay_next_delivery(&mut self, queue: &str, delay_ms: u64) {
        self.arm(queue, DeliveryFault::Delay(delay_ms));
    }

    fn arm(&mut self, queue: &str, fault: DeliveryFault) {
        if self.delivery_faults.len() >= FAULTS_ARMED_MAX {
            tracing::warn!(queue, "too many armed faults; this one is ignored");
            return;
        }
        self.delivery_faults.push((queue.to_owned(), fault));
    }

    /// The next publish on `channel` is answered with a nack. With `enqueue` the message is
    /// routed all the same (a publisher that retries then duplicates it); without, it goes
    /// nowhere.
    pub fn nack_next_publish(&mut self, channel: ChannelId, enqueue: bool) {
        if let Some(state) = self.channels.get_mut(&channel) {
            state.nack_next_publish = Some(enqueue);
        }
    }

    /// The next publish to `exchange`, on whichever channel, is answered with a nack (with
    /// `enqueue`, routed all the same). For simulations, which know exchanges, not channels.
    pub fn nack_next_publish_to(&mut self, exchange: &str, enqueue: bool) {
        if self.publish_faults.len() >= FAULTS_ARMED_MAX {
            tracing::warn!(exchange, "too many armed faults; this one is ignored");
            return;
        }
        self.publish_faults.push((exchange.to_owned(), enqueue));
    }

    /// The hooks armed on a queue or an exchange that have not fired yet, deliveries' first,
    /// each in the order armed: a test tells a fault that happened from one that never met
    /// its event (a misspelt name, a queue nobody consumed). A restart disarms the delivery
    /// hooks; a channel's own `nack_next_publish` is not listed.
    pub fn armed_faults(&self) -> Vec<ArmedFault> {
        let deliveries = self.delivery_faults.iter().map(|(queue, fault)| {
            let queue = queue.clone();
            match *fault {
                DeliveryFault::Drop => ArmedFault::DropDelivery { queue },
                DeliveryFault::Duplicate => ArmedFault::DuplicateDelivery { queue },
                DeliveryFault::Delay(delay_ms) => ArmedFault::DelayDelivery { queue, delay_ms },
            }
        });
        let publishes = (self.publish_faults.iter()).map(|(exchange, _)| ArmedFault::NackPublish {
            exchange: exchange.clone(),
        });
        deliveries.chain(publishes).collect()
    }

    /// Takes the first publish fault armed for `exchange`.
    pub(super) fn take_publish_fault(&mut self, exchange: &str) -> Option<bool> {
        let position = self
            .publish_faults
            .iter()
            .position(|(e, _)| e == exchange)?;
        Some(self.publish_faults.remove(position).1)
    }

    /// The broker closes every open channel that has a consumer on `queue`, with this reply
    /// (what an operator or a broker-side error does to a subscriber): their unacked deliveries
    /// are requeued and the consumers end. For simulations, which know queues, not channels.
    pub fn force_close_consumer_channels(&mut self, queue: &str, code: ReplyCode, text: &str) {
        let channels: Vec<ChannelId> = self
            .channels
            .iter()
            .filter(|(_, state)| {
                state.closed.is_none() && state.consumers.values().any(|c| c.queue == queue)
            })
            .map(|(id, _)| *id)
            .collect();
        for channel in channels {
            self.force_close_channel(channel, code, text);
        }
    }

    /// The broker closes a channel (`channel.close` from the server) with this reply: its
    /// unacked deliveries are requeued, later calls on it get [`Error::ChannelClosed`](crate::Error::ChannelClosed).
    pub fn force_close_channel(&mut self, channel: ChannelId, code: ReplyCode, text: &str) {
        if self.channel_status(channel).is_err() {
            return;
        }
        self.close_by_broker(channel, AmqpError::new(code, text));
        self.run_until_idle();
    }

    /// Closes a channel from the broker's side: requeues what it had in flight, ends its
    /// consumers, keeps the reason for the client's next call, and tells the client
    /// ([`Event::ChannelClosed`]).
    pub(super) fn close_by_broker(&mut self, channel: ChannelId, reason: AmqpError) {
        self.shut_channel(channel);
        if let Some(state) = self.channels.get_mut(&channel) {
            state.closed = Some(reason.clone());
        }
        self.events.push(Event::ChannelClosed { channel, reason });
    }

    /// The broker closes a connection with this reply (320 CONNECTION_FORCED, say): every
    /// channel's unacked deliveries are requeued, its exclusive queues deleted, later calls get
    /// [`Error::ConnectionClosed`](crate::Error::ConnectionClosed).
    pub fn force_close_connection(
        &mut self,
        connection: ConnectionId,
        code: ReplyCode,
        text: &str,
    ) {
        self.close_connection_by_broker(connection, code, text);
        self.run_until_idle();
    }

    /// Closes a connection from the broker's side, without dispatching what its close
    /// requeued (the caller runs the queues): requeues what its channels had in flight,
    /// deletes its exclusive queues, keeps the reason for the client's next call, and tells
    /// the client ([`Event::ConnectionClosed`]).
    fn close_connection_by_broker(
        &mut self,
        connection: ConnectionId,
        code: ReplyCode,
        text: &str,
    ) {
        if self
            .connections
            .get(&connection)
            .is_none_or(|c| c.closed.is_some())
        {
            return;
        }
        self.shut_connection(connection);
        let reason = AmqpError::new(code, text);
        if let Some(state) = self.connections.get_mut(&connection) {
            state.closed = Some(reason.clone());
        }
        self.events
            .push(Event::ConnectionClosed { connection, reason });
    }

    /// A broker restart, as RabbitMQ does it: every connection is closed (320
    /// CONNECTION_FORCED), transient exchanges and queues are gone, durable classic queues keep
    /// only their persistent (`delivery_mode = 2`) messages, quorum queues all of theirs (those that had been delivered come back
    /// marked redelivered, and those kept to be dead-lettered at least once are forwarded
    /// again), bindings survive when both ends do. Delivery fault hooks (drop,
    /// duplicate, delay) and delayed deliveries are lost; publish hooks (nack) stay armed. The clock keeps running.
    pub fn restart(&mut self) {
        // Every connection goes before anything is dispatched again: what one connection's
        // close requeues must not reach a consumer of a connection that is still to close
        // (a no-ack consumer would take it for good).
        let connections: Vec<ConnectionId> = self.connections.keys().copied().collect();
        for connection in connections {
            self.close_connection_by_broker(
                connection,
                ReplyCode::ConnectionForced,
                "broker forced connection closure with reason 'shutdown'",
            );
        }
        self.delivery_faults.clear();
        self.delayed.clear();
        let transient: Vec<SmolStr> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.durable)
            .map(|(name, _)| name.clone())
            .collect();
        for queue in &transient {
            self.delete_queue(queue);
        }
        for queue in self.queues.values_mut() {
            // A recovered queue's `x-expires` time starts again, as in RabbitMQ.
            queue.last_used_ms = self.now_ms;
            // A quorum queue keeps every message, whatever its delivery mode: all of them went
            // through its Raft log (RabbitMQ 3.10, probed with a restart of the node).
            let quorum = queue.args.queue_type == QueueType::Quorum;
            for lost in queue.retain_ready(|entry| quorum || entry.message.persistent()) {
                self.held.release(&lost.message);
            }
        }
        // Heads changed (transient messages ahead of persistent ones are gone): the time
        // keeper looks again.
        self.alarm.ring();
        let transient: Vec<SmolStr> = self
            .exchanges
            .iter()
            .filter(|(_, x)| !x.durable)
            .map(|(name, _)| name.clone())
            .collect();
        for exchange in &transient {
            self.remove_exchange(exchange);
        }
        // The dead-letter workers start again and take what their queues kept afresh, as
        // publishers the queues have not met.
        for queue in self.queues.values_mut() {
            queue.forget_dead_letter_workers();
        }
        let keeping: Vec<SmolStr> = (self.queues.iter_mut())
            .filter(|(_, q)| !q.dead_letters.is_empty())
            .map(|(name, q)| {
                q.dead_letters.give_back();
                name.clone()
            })
            .collect();
        for queue in &keeping {
            self.forward_dead_letters(queue);
        }
        self.run_until_idle();
    }
}
