//! The broker as a pure state machine: AMQP methods in, deliveries and consumer ends out.
//!
//! Every method runs to completion. A call that changes what can be delivered (publish,
//! consume, ack, nack, reject, a close, a clock advance) marks the queues it touched and, before
//! it returns, runs them until idle: expired heads are dropped or dead-lettered, ready messages
//! are dispatched to consumers with credit. Deliveries are left in an outbox
//! ([`Engine::take_events`]), or handed straight to a consumer's buffer when the in-process
//! client gave one (`Engine::basic_consume_into`). There are no timers and no background work:
//! time is an input ([`Engine::advance_to`]), so the same calls always produce the same events.
//!
//! Each fallible method first checks the channel is open, then validates everything before it
//! changes anything: a refused call changes nothing except closing its channel (or connection),
//! which requeues what that channel had in flight. So a channel error never loses or duplicates
//! a message.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use bytes::Bytes;
use smol_str::SmolStr;

use crate::binding::{BindingInfo, Destination, ExchangeBindingInfo};
use crate::channel::{ChannelId, ChannelState};
use crate::connection::{ConnectionId, ConnectionState};
use crate::consumer::{ConsumeOptions, ConsumerOutlet, ConsumerState};
use crate::delivery::{Delivery, GetOk, Unacked};
use crate::error::{AmqpError, Error, Fault, ReplyCode};
use crate::exchange::{
    DEFAULT_EXCHANGE, Exchange, ExchangeInfo, ExchangeKind, ExchangeOptions, PREDECLARED,
    check_x_match,
};
use crate::limits::{
    FAULTS_ARMED_MAX, IDLE_ROUNDS_MAX, INTROSPECTION_LOG_MAX, Limits, NAME_BYTES_MAX,
};
use crate::lookup::{HandleMap, NameMap, hinted_index};
use crate::message::{
    BccKeys, Confirm, DeadLettered, DeathReason, FieldTable, FieldValue, Message, Properties,
    PublishOptions, Published, REPLY_NO_ROUTE, Returned, add_death, header_routes, is_cycle,
};
use crate::queue::{
    Overflow, Publisher, Queue, QueueArguments, QueueDeclareOk, QueueInfo, QueueOptions, QueueSet,
    QueueType, Queued,
};

mod clock;
pub(crate) mod dead_letters;
mod fault;
pub use fault::ArmedFault;
mod names;
pub(crate) mod reply_to;
mod route_memo;
pub(crate) mod tx;

use clock::Alarm;
use dead_letters::DeadLetter;
use fault::{Delayed, DeliveryFault};
use names::{exchange_binding_names, stripped};
use reply_to::{REPLY_TO, is_reply_name};
use route_memo::RouteMemo;

/// Why a consumer stopped receiving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerEnd {
    /// The client cancelled it (`basic.cancel`). Its unacked deliveries stay on the channel.
    Cancelled,
    /// Its channel or connection closed; its unacked deliveries were requeued.
    ChannelClosed,
    /// Its queue was deleted (auto-delete, exclusive owner gone); RabbitMQ sends the consumer
    /// a `basic.cancel`.
    QueueDeleted,
}

/// What the engine tells clients, in the order it happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `basic.deliver` to a consumer on a channel.
    Deliver {
        /// The consumer's channel.
        channel: ChannelId,
        /// The delivery (it names its consumer).
        delivery: Delivery,
    },
    /// The broker closed a channel on its own (not in answer to a call on it): a fault hook,
    /// or a consumer acknowledgement timeout. Over AMQP it is a `channel.close` to the client.
    ChannelClosed {
        /// The channel.
        channel: ChannelId,
        /// The reply it was closed with.
        reason: AmqpError,
    },
    /// The broker closed a connection on its own: a fault hook, or a restart. Over AMQP it is
    /// a `connection.close` to the client.
    ConnectionClosed {
        /// The connection.
        connection: ConnectionId,
        /// The reply it was closed with.
        reason: AmqpError,
    },
    /// A consumer will receive nothing more.
    ConsumerEnded {
        /// The consumer's channel.
        channel: ChannelId,
        /// The consumer.
        consumer_tag: SmolStr,
        /// Why.
        reason: ConsumerEnd,
    },
}

/// What the broker holds, counted against [`Limits::held_messages_max`] and
/// [`Limits::held_body_bytes_max`]: ready and unacked messages, once per queue.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Messages.
    pub messages: usize,
    /// Body bytes.
    pub body_bytes: usize,
}

impl Usage {
    fn add(&mut self, message: &Message) {
        self.messages += 1;
        self.body_bytes += message.body.len();
    }

    fn release(&mut self, message: &Message) {
        debug_assert!(self.messages >= 1 && self.body_bytes >= message.body.len());
        self.messages = self.messages.saturating_sub(1);
        self.body_bytes = self.body_bytes.saturating_sub(message.body.len());
    }
}

/// What happens to a delivery when it is settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// Acked: forgotten.
    Ack,
    /// Nacked or rejected without requeue: dead-lettered if the queue has a dead-letter
    /// exchange, else dropped.
    Reject,
    /// Nacked or rejected with requeue, or recovered (`basic.recover`).
    Requeue,
    /// In flight when its channel closed. A classic queue treats it as a requeue; a quorum
    /// queue serves it before its other ready messages, where a requeue goes to the back
    /// (unless the queue has an `x-delivery-limit`: then it too is served first).
    Return,
}

/// Monotonic counters; every id and generated name comes from here, so they are the same in
/// every run.
#[derive(Debug, Default)]
struct Counters {
    connection: u64,
    channel: u64,
    queue_id: u64,
    queue_name: u64,
    consumer_tag: u64,
    consumer_serial: u64,
    message_seq: u64,
}

fn next(counter: &mut u64) -> u64 {
    *counter += 1;
    *counter
}

/// An in-memory AMQP 0-9-1 broker with one vhost (`/`). See the module docs.
#[derive(Debug)]
pub struct Engine {
    limits: Limits,
    exchanges: NameMap<Exchange>,
    queues: NameMap<Queue>,
    connections: HandleMap<ConnectionId, ConnectionState>,
    channels: HandleMap<ChannelId, ChannelState>,
    counters: Counters,
    held: Usage,
    bindings_total: usize,
    /// The engine's clock, in milliseconds; only [`Engine::advance_to`] moves it.
    now_ms: u64,
    /// Queues that may have something to expire or deliver; drained before every call returns.
    dirty: QueueSet,
    /// Outbox; bounded by what one call can make deliverable (prefetch credit and queue
    /// lengths), and emptied by the client after every call.
    events: Vec<Event>,
    /// Messages queues have dead-lettered and not yet republished, oldest first, while
    /// `republishing` (see `Engine::dead_letter`). Bounded by what one call can drop.
    dead_letters_pending: VecDeque<(SmolStr, Queued, DeathReason)>,
    /// Whether a publish or a republish is handing out its copies (dead letters wait).
    republishing: bool,
    /// Introspection logs, each at most [`INTROSPECTION_LOG_MAX`] long.
    dead_lettered: VecDeque<DeadLettered>,
    returned: VecDeque<Returned>,
    /// Fault hooks against queues' next deliveries, in arming order.
    delivery_faults: Vec<(String, DeliveryFault)>,
    delayed: Vec<Delayed>,
    /// Fault hooks against the next publish to an exchange (any channel): enqueue it or not.
    publish_faults: Vec<(String, bool)>,
    /// Changes to what routing depends on (exchanges, queues, bindings) so far.
    topology: u64,
    /// The last header-less publish's route, valid while `topology` stands. Its vectors are
    /// also where every publish routes to, so routing does not allocate.
    route_memo: RouteMemo,
    /// Deadlines set since the time keeper last asked (see `clock`).
    alarm: Alarm,
    /// Direct reply-to: the channel each live reply name belongs to (see `reply_to`).
    reply_channels: NameMap<ChannelId>,
    /// Where the last channel called on was in `channels`: a hint (see `open_channel_index`).
    /// Atomic only so that a lookup through `&self` can update it and the engine stays
    /// `Sync`; relaxed loads and stores are plain moves.
    last_channel_index: AtomicUsize,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(Limits::default())
    }
}

impl Engine {
    /// An empty broker with RabbitMQ's pre-declared exchanges (`""`, `amq.direct`,
    /// `amq.fanout`, `amq.topic`, `amq.headers`, `amq.match`, `amq.rabbitmq.trace`), its
    /// clock at 0.
    pub fn new(limits: Limits) -> Engine {
        let exchanges = PREDECLARED
            .iter()
            .map(|&(name, kind, internal)| {
                let options = ExchangeOptions {
                    durable: true,
                    internal,
                    ..ExchangeOptions::default()
                };
                (SmolStr::new_static(name), Exchange::new(kind, options))
            })
            .collect();
        Engine {
            limits,
            exchanges,
            queues: NameMap::default(),
            connections: HandleMap::default(),
            channels: HandleMap::default(),
            counters: Counters::default(),
            held: Usage::default(),
            bindings_total: 0,
            now_ms: 0,
            dirty: QueueSet::default(),
            dead_letters_pending: VecDeque::new(),
            republishing: false,
            events: Vec::new(),
            dead_lettered: VecDeque::new(),
            returned: VecDeque::new(),
            delivery_faults: Vec::new(),
            delayed: Vec::new(),
            publish_faults: Vec::new(),
            topology: 0,
            route_memo: RouteMemo::default(),
            alarm: Alarm::default(),
            reply_channels: NameMap::default(),
            last_channel_index: AtomicUsize::new(usize::MAX),
        }
    }

    /// The ceilings this broker enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Takes the events produced since the last call, oldest first.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Whether there are events to take (most calls make none: a publish without a waiting
    /// consumer, an ack).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Drains the events produced since the last call, oldest first, keeping the outbox's
    /// capacity (no allocation per call, unlike [`Engine::take_events`]).
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    // ---------------------------------------------------------------- time

    /// The engine's clock, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Moves the clock to `now_ms` (never backwards: an earlier time is ignored), then expires
    /// what has expired (dead-lettering it where configured), hands over delayed deliveries
    /// that are due, and dispatches. Under simulation the caller passes simulated time, so
    /// TTLs run on it.
    pub fn advance_to(&mut self, now_ms: u64) {
        if now_ms <= self.now_ms {
            return;
        }
        self.now_ms = now_ms;
        let due: Vec<Delayed>;
        (due, self.delayed) = std::mem::take(&mut self.delayed)
            .into_iter()
            .partition(|d| d.due_ms <= now_ms);
        for Delayed {
            channel,
            consumer_serial,
            no_ack,
            delivery,
            ..
        } in due
        {
            // Its channel closed on the way: an acked-mode delivery was requeued then, a no-ack
            // one is lost, as over a broken connection.
            let Some(state) = self
                .channels
                .get_mut(&channel)
                .filter(|c| c.closed.is_none())
            else {
                continue;
            };
            // An acked-mode delivery must still be unsettled: a recover requeues it on the way.
            let in_flight = no_ack
                || (state.unacked.get(delivery.delivery_tag))
                    .is_some_and(|unacked| unacked.consumer_serial == consumer_serial);
            let consumer = (state.consumers.get_mut(&delivery.consumer_tag))
                .filter(|consumer| consumer.serial == consumer_serial);
            match consumer {
                // Admitted when it was made: it does not wait for room in the buffer.
                Some(consumer) if in_flight => {
                    emit(
                        &mut self.events,
                        consumer.outlet.as_mut(),
                        channel,
                        delivery,
                    );
                }
                // Its consumer was cancelled on the way (a later one with the same tag is
                // another consumer): no one takes it. An acked-mode delivery stays unacked on
                // the channel until it is settled or the channel closes; a no-ack one is lost.
                _ => {
                    let delivery_tag = delivery.delivery_tag;
                    tracing::debug!(%channel, delivery_tag, "delayed delivery dropped: its consumer is gone or it was settled");
                }
            }
        }
        self.close_timed_out_channels();
        self.retry_dead_letters();
        // `x-expires`: unused queues whose time ran out go, messages and all (not
        // dead-lettered), as a `queue.delete` would.
        let expired: Vec<SmolStr> = self
            .queues
            .iter()
            .filter(|(_, q)| q.unused_expired(now_ms))
            .map(|(name, _)| name.clone())
            .collect();
        for queue in &expired {
            // Messages whose TTL ran out while the queue still existed are dead-lettered
            // first; what is left goes with the queue.
            let deadline = self.queues.get(queue).map_or(now_ms, |q| {
                q.args
                    .expires_ms
                    .map_or(now_ms, |expires| q.last_used_ms.saturating_add(expires))
            });
            // Bounded by the queue's length.
            while let Some(head) = self
                .queues
                .get_mut(queue)
                .and_then(|q| q.pop_expired(deadline, false))
            {
                self.dead_letter(queue, head, DeathReason::Expired);
            }
            tracing::debug!(queue = %queue, "queue expired (x-expires)");
            self.delete_queue(queue);
        }
        let with_messages: Vec<SmolStr> = self
            .queues
            .iter()
            .filter(|(_, q)| q.ready_len() > 0)
            .map(|(name, _)| name.clone())
            .collect();
        self.dirty.extend(with_messages);
        self.run_until_idle();
    }

    /// RabbitMQ's consumer timeout: a channel whose oldest unacked delivery has waited longer
    /// than [`Limits::consumer_timeout_ms`] is closed with 406 (RabbitMQ checks once a minute;
    /// here it happens as soon as the clock passes the timeout).
    fn close_timed_out_channels(&mut self) {
        let Some(timeout_ms) = self.limits.consumer_timeout_ms else {
            return;
        };
        let now_ms = self.now_ms;
        // Tags grow with delivery time, so the first unacked delivery is the oldest.
        let timed_out: Vec<(ChannelId, u16)> = self
            .channels
            .iter()
            .filter(|(_, state)| state.closed.is_none())
            .filter(|(_, state)| {
                state.unacked.iter().next().is_some_and(|(_, unacked)| {
                    now_ms.saturating_sub(unacked.delivered_at_ms) > timeout_ms
                })
            })
            .map(|(id, state)| (*id, state.number))
            .collect();
        for (channel, number) in timed_out {
            let text = format!(
                "delivery acknowledgement on channel {number} timed out. Timeout value used: \
                 {timeout_ms} ms. This timeout value can be configured, see consumers doc guide \
                 to learn more"
            );
            tracing::debug!(%channel, "consumer timeout");
            self.close_by_broker(
                channel,
                AmqpError::new(ReplyCode::PreconditionFailed, &text),
            );
        }
    }

    // ---------------------------------------------------------------- connections and channels

    /// Opens a connection authenticated as `user`.
    pub fn open_connection(&mut self, user: &str) -> ConnectionId {
        let id = ConnectionId(next(&mut self.counters.connection));
        let state = ConnectionState {
            user: user.to_owned(),
            closed: None,
            channels: BTreeSet::new(),
        };
        self.connections.insert(id, state);
        id
    }

    /// Closes a connection: closes its channels (requeueing their unacked deliveries), deletes
    /// its exclusive queues and forgets it. Idempotent.
    pub fn close_connection(&mut self, connection: ConnectionId) {
        self.shut_connection(connection);
        self.connections.shift_remove(&connection);
        self.run_until_idle();
    }

    /// Opens a channel on the lowest free channel number.
    pub fn open_channel(&mut self, connection: ConnectionId) -> Result<ChannelId, Error> {
        let max = self.limits.channels_per_connection_max;
        let used = self.channel_numbers(connection)?;
        let Some(number) = (1..=max).find(|number| !used.contains(number)) else {
            return Err(Error::Invalid(format!(
                "{connection} has {max} channels open, the negotiated channel_max"
            )));
        };
        self.open_channel_numbered(connection, number)
    }

    /// Opens a channel under the number the client chose (over the wire, the number in the
    /// frames; the wire server counts the channels open against the negotiated
    /// `channel_max`, as RabbitMQ does, whatever their numbers), so replies
    /// that name the channel, such as the consumer timeout's, name the client's number.
    /// Channel 0, a number already open on the connection, or a channel past
    /// `channels_per_connection_max` open at once is [`Error::Invalid`].
    pub fn open_channel_numbered(
        &mut self,
        connection: ConnectionId,
        number: u16,
    ) -> Result<ChannelId, Error> {
        let max = usize::from(self.limits.channels_per_connection_max);
        let used = self.channel_numbers(connection)?;
        if number == 0 {
            return Err(Error::Invalid("channel 0 is the connection's".to_owned()));
        }
        if used.contains(&number) {
            return Err(Error::Invalid(format!(
                "channel {number} is already open on {connection}"
            )));
        }
        if used.len() >= max {
            return Err(Error::Invalid(format!(
                "{connection} has {max} channels open, the limit"
            )));
        }
        let Some(state) = self.connections.get_mut(&connection) else {
            return Err(Error::Closed);
        };
        let id = ChannelId {
            connection,
            serial: next(&mut self.counters.channel),
        };
        state.channels.insert(id);
        self.channels.insert(id, ChannelState::new(number));
        Ok(id)
    }

    /// The channel numbers in use on an open connection (closed channels not yet forgotten
    /// included).
    fn channel_numbers(&self, connection: ConnectionId) -> Result<BTreeSet<u16>, Error> {
        match self.connections.get(&connection) {
            None => Err(Error::Closed),
            Some(ConnectionState {
                closed: Some(reason),
                ..
            }) => Err(Error::ConnectionClosed(reason.clone())),
            Some(state) => Ok(state
                .channels
                .iter()
                .filter_map(|id| self.channels.get(id).map(|channel| channel.number))
                .collect()),
        }
    }

    /// Ok while the channel is open; otherwise why not.
    pub fn channel_status(&self, channel: ChannelId) -> Result<(), Error> {
        self.open_channel_index(channel).map(drop)
    }

    /// The open channel's index in `channels`; otherwise why it is not open.
    fn open_channel_index(&self, channel: ChannelId) -> Result<usize, Error> {
        // A client usually makes many calls in a row on one channel: its index from the last
        // call is tried first, one comparison instead of a hash and a probe.
        let hint = self.last_channel_index.load(Ordering::Relaxed);
        if let Some((id, state)) = self.channels.get_index(hint)
            && *id == channel
            && state.closed.is_none()
        {
            return Ok(hint);
        }
        let found = self.channels.get_full(&channel);
        if let Some((index, _, _)) = found {
            self.last_channel_index.store(index, Ordering::Relaxed);
        }
        match found {
            Some((index, _, ChannelState { closed: None, .. })) => Ok(index),
            Some((
                _,
                _,
                ChannelState {
                    closed: Some(reason),
                    ..
                },
            )) => Err(Error::ChannelClosed(reason.clone())),
            None => match self.connections.get(&channel.connection) {
                Some(ConnectionState {
                    closed: Some(reason),
                    ..
                }) => Err(Error::ConnectionClosed(reason.clone())),
                _ => Err(Error::Closed),
            },
        }
    }

    /// Closes a channel: cancels its consumers, requeues its unacked deliveries (with
    /// `redelivered`), dispatches them, and releases its channel number. Closing a closed
    /// channel is Ok, except that a channel closed by an error reports that error (once: the
    /// channel is released either way).
    pub fn close_channel(&mut self, channel: ChannelId) -> Result<(), Error> {
        let status = self.channel_status(channel);
        self.shut_channel(channel);
        self.release_channel(channel);
        self.run_until_idle();
        match status {
            Err(Error::Closed) => Ok(()),
            other => other,
        }
    }

    // ---------------------------------------------------------------- AMQP methods

    /// `exchange.declare` without arguments.
    pub fn exchange_declare(
        &mut self,
        channel: ChannelId,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) -> Result<(), Error> {
        self.exchange_declare_with(channel, name, kind, options, &FieldTable::new())
    }

    /// `exchange.declare` with arguments (`alternate-exchange` is the one broker-mem acts on).
    pub fn exchange_declare_with(
        &mut self,
        channel: ChannelId,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        self.run(channel, |engine| {
            engine.declare_exchange(&stripped("exchange name", name)?, kind, options, arguments)
        })
    }

    /// `exchange.delete`. Deleting a missing exchange is Ok (RabbitMQ); with `if_unused`, an
    /// exchange that is the source of bindings is 406.
    pub fn exchange_delete(
        &mut self,
        channel: ChannelId,
        name: &str,
        if_unused: bool,
    ) -> Result<(), Error> {
        self.run(channel, |engine| {
            engine.delete_exchange(&stripped("exchange name", name)?, if_unused)
        })
    }

    /// `queue.declare` without arguments; an empty name gets a server-generated `amq.gen-<n>`.
    pub fn queue_declare(
        &mut self,
        channel: ChannelId,
        name: &str,
        options: QueueOptions,
    ) -> Result<QueueDeclareOk, Error> {
        self.queue_declare_with(channel, name, options, &FieldTable::new())
    }

    /// `queue.declare` with arguments (`x-message-ttl`, `x-max-length`, `x-max-length-bytes`,
    /// `x-overflow`, `x-dead-letter-exchange`, `x-dead-letter-routing-key`, `x-queue-type`,
    /// `x-delivery-limit`).
    pub fn queue_declare_with(
        &mut self,
        channel: ChannelId,
        name: &str,
        options: QueueOptions,
        arguments: &FieldTable,
    ) -> Result<QueueDeclareOk, Error> {
        self.run(channel, |engine| {
            // RabbitMQ recognises direct reply-to's pseudo-queue by the name as sent.
            let declared = if name.starts_with(REPLY_TO) {
                engine.declare_reply_to(&stripped("queue name", name)?)?
            } else {
                let name = stripped("queue name", name)?;
                engine.declare_queue(channel.connection, &name, options, arguments)?
            };
            engine.declared(channel, &declared.name);
            Ok(declared)
        })
    }

    /// `queue.bind` without arguments.
    pub fn queue_bind(
        &mut self,
        channel: ChannelId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), Error> {
        self.queue_bind_with(channel, queue, exchange, routing_key, &FieldTable::new())
    }

    /// `queue.bind` with arguments (a headers exchange matches on them).
    pub fn queue_bind_with(
        &mut self,
        channel: ChannelId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        self.run(channel, |engine| {
            let (queue, exchange, routing_key) =
                engine.binding_names(channel, queue, exchange, routing_key)?;
            let to = Destination::Queue(queue.into());
            engine.bind(channel.connection, &exchange, to, &routing_key, arguments)
        })
    }

    /// `queue.unbind`. Unbinding what is not bound is Ok; a missing queue or exchange is 404.
    pub fn queue_unbind(
        &mut self,
        channel: ChannelId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        self.run(channel, |engine| {
            let (queue, exchange, routing_key) =
                engine.binding_names(channel, queue, exchange, routing_key)?;
            let to = Destination::Queue(queue.into());
            engine.unbind(channel.connection, &exchange, to, &routing_key, arguments)
        })
    }

    /// `exchange.bind`: messages `source` routes with a matching key go on to `destination`.
    pub fn exchange_bind(
        &mut self,
        channel: ChannelId,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        self.run(channel, |engine| {
            let (to, source) = exchange_binding_names(destination, source)?;
            engine.bind(channel.connection, &source, to, routing_key, arguments)
        })
    }

    /// `exchange.unbind`.
    pub fn exchange_unbind(
        &mut self,
        channel: ChannelId,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        self.run(channel, |engine| {
            let (to, source) = exchange_binding_names(destination, source)?;
            engine.unbind(channel.connection, &source, to, routing_key, arguments)
        })
    }

    /// `queue.purge`: drops the ready messages (not the unacked ones, and without
    /// dead-lettering); returns how many.
    pub fn queue_purge(&mut self, channel: ChannelId, queue: &str) -> Result<u32, Error> {
        self.run(channel, |engine| {
            let queue = engine.queue_meant(channel, queue)?;
            let queue = &*queue;
            check_name("queue name", queue)?;
            let target = engine
                .queues
                .get_mut(queue)
                .ok_or_else(|| Fault::not_found_queue(queue))?;
            target.check_access(queue, channel.connection)?;
            let purged: Vec<Queued> = target.drain_ready().collect();
            for entry in &purged {
                engine.held.release(&entry.message);
            }
            Ok(u32::try_from(purged.len()).unwrap_or(u32::MAX))
        })
    }

    /// `queue.delete`: returns the ready messages it held. Its consumers are told (a
    /// `basic.cancel` from the broker); its unacked deliveries stay with their channels.
    /// Deleting a missing queue is Ok with 0 (RabbitMQ); `if_unused` refuses a queue with
    /// consumers and `if_empty` one with ready messages (406).
    pub fn queue_delete(
        &mut self,
        channel: ChannelId,
        queue: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<u32, Error> {
        self.run(channel, |engine| {
            let queue = stripped("queue name", &engine.queue_meant(channel, queue)?)?.into_owned();
            let queue = queue.as_str();
            let Some(target) = engine.queues.get(queue) else {
                return Ok(0);
            };
            target.check_access(queue, channel.connection)?;
            // RabbitMQ 3.10 refuses either flag on a quorum queue, closing the connection.
            let flag = match (if_unused, if_empty) {
                (true, _) => Some("if-unused"),
                (false, true) => Some("if-empty"),
                (false, false) => None,
            };
            if let Some(flag) = flag
                && target.args.queue_type == QueueType::Quorum
            {
                return Err(Fault::Connection(AmqpError::new(
                    ReplyCode::NotImplemented,
                    format!(
                        "cannot delete queue '{queue}' in vhost '{}'. queue.delete operations \
                         with {flag} flag set are not supported by quorum queues",
                        crate::VHOST
                    ),
                )));
            }
            // RabbitMQ checks `if-empty` first (rabbit_amqqueue_process; the differential
            // test found it).
            if if_empty && target.ready_len() > 0 {
                return Err(Fault::channel(
                    ReplyCode::PreconditionFailed,
                    format!("queue '{queue}' in vhost '{}' not empty", crate::VHOST),
                ));
            }
            if if_unused && target.consumer_count() > 0 {
                return Err(Fault::channel(
                    ReplyCode::PreconditionFailed,
                    format!("queue '{queue}' in vhost '{}' in use", crate::VHOST),
                ));
            }
            let count = u32::try_from(target.ready_len()).unwrap_or(u32::MAX);
            engine.delete_queue(queue);
            Ok(count)
        })
    }

    /// `basic.qos` with `global = false`: the prefetch of consumers started on this channel from
    /// now on (RabbitMQ's per-consumer semantics; existing consumers keep theirs). 0 means
    /// unlimited. It also lifts a global limit set before (RabbitMQ 3.10).
    pub fn basic_qos(&mut self, channel: ChannelId, prefetch_count: u16) -> Result<(), Error> {
        self.basic_qos_with(channel, prefetch_count, false)
    }

    /// `basic.qos`. With `global = true`, RabbitMQ's channel-wide limit: at most
    /// `prefetch_count` unacked consumer deliveries on the channel, shared by all its consumers,
    /// applied at once. Both limits hold together when the per-consumer qos comes first: a
    /// per-consumer qos after the global one lifts it, as in RabbitMQ 3.10 (probed).
    pub fn basic_qos_with(
        &mut self,
        channel: ChannelId,
        prefetch_count: u16,
        global: bool,
    ) -> Result<(), Error> {
        self.run(channel, |engine| {
            if let Some(state) = engine.channels.get_mut(&channel) {
                if global {
                    state.limit_globally(prefetch_count);
                } else {
                    state.prefetch = prefetch_count;
                    // RabbitMQ 3.10 (probed) lifts the channel's global limit on a per-consumer
                    // qos, whatever its count: consumers under it get more, and a quorum queue
                    // accepts a consumer again.
                    state.lift_global_limit();
                }
                // Either may give the channel's consumers credit.
                let queues: Vec<SmolStr> =
                    state.consumers.values().map(|c| c.queue.clone()).collect();
                engine.dirty.extend(queues);
            }
            Ok(())
        })
    }

    /// `basic.publish` on a channel in confirm mode, not mandatory: routes and enqueues
    /// synchronously, then answers the confirm. Unroutable messages are dropped and acked.
    pub fn basic_publish(
        &mut self,
        channel: ChannelId,
        exchange: &str,
        routing_key: &str,
        properties: Properties,
        body: Bytes,
    ) -> Result<Confirm, Error> {
        let options = PublishOptions::default();
        self.basic_publish_with(channel, exchange, routing_key, options, properties, body)
            .map(|published| published.confirm)
    }

    /// `basic.publish` with its flags: a mandatory message that no queue takes comes back as
    /// [`Published::returned`] (before the confirm, as in RabbitMQ).
    pub fn basic_publish_with(
        &mut self,
        channel: ChannelId,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: Properties,
        body: Bytes,
    ) -> Result<Published, Error> {
        let properties = Message::share_properties(properties);
        self.basic_publish_shared(channel, exchange, routing_key, options, properties, body)
    }

    /// [`Engine::basic_publish_with`] with the properties already shared: they are a few
    /// hundred bytes, and a pointer is cheaper to pass down than they are to move.
    pub(crate) fn basic_publish_shared(
        &mut self,
        channel: ChannelId,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: Arc<Properties>,
        body: Bytes,
    ) -> Result<Published, Error> {
        self.run_at(channel, |engine, channel_index| {
            let message = (exchange, routing_key, properties, body);
            engine.publish(channel, channel_index, message, options)
        })
    }

    /// `basic.consume`; returns the consumer tag. Ready messages are dispatched before it
    /// returns.
    pub fn basic_consume(
        &mut self,
        channel: ChannelId,
        queue: &str,
        options: ConsumeOptions,
    ) -> Result<String, Error> {
        self.run(channel, |engine| {
            let queue = engine.queue_meant(channel, queue)?;
            engine.consume(channel, &queue, options, None)
        })
    }

    /// [`Engine::basic_consume`] for the in-process client: the consumer's deliveries go
    /// straight into `buffer` (an unbounded flume channel, kept within
    /// [`CONSUMER_BUFFER_MAX`](crate::CONSUMER_BUFFER_MAX)) instead of the outbox, from the
    /// first. `starved` is set when the buffer is full and the consumer passed over; the
    /// client then calls [`Engine::consumer_buffer_drained`] at its next take.
    pub(crate) fn basic_consume_into(
        &mut self,
        channel: ChannelId,
        queue: &str,
        options: ConsumeOptions,
        buffer: flume::Sender<Delivery>,
        starved: Arc<AtomicBool>,
    ) -> Result<String, Error> {
        let outlet = ConsumerOutlet::new(buffer, starved);
        self.run(channel, |engine| {
            let queue = engine.queue_meant(channel, queue)?;
            engine.consume(channel, &queue, options, Some(outlet))
        })
    }

    /// `basic.get`: the queue's next ready message, or None (`basic.get-empty`). Prefetch does
    /// not apply. With `no_ack` the message is settled at once.
    pub fn basic_get(
        &mut self,
        channel: ChannelId,
        queue: &str,
        no_ack: bool,
    ) -> Result<Option<GetOk>, Error> {
        self.run(channel, |engine| {
            let queue = engine.queue_meant(channel, queue)?;
            engine.get(channel, &queue, no_ack)
        })
    }

    /// `basic.cancel`. Unacked deliveries of the consumer stay unacked on the channel (they are
    /// requeued only when the channel closes). An unknown tag is not an error (RabbitMQ).
    pub fn basic_cancel(&mut self, channel: ChannelId, consumer_tag: &str) -> Result<(), Error> {
        self.run(channel, |engine| {
            engine.cancel(channel, consumer_tag, ConsumerEnd::Cancelled);
            Ok(())
        })
    }

    /// `basic.ack`. With `multiple`, every unacked delivery up to `delivery_tag` (all of them
    /// when the tag is 0). An unknown tag is 406 and closes the channel.
    pub fn basic_ack(
        &mut self,
        channel: ChannelId,
        delivery_tag: u64,
        multiple: bool,
    ) -> Result<(), Error> {
        self.run_at(channel, |engine, channel_index| {
            engine.settle(channel, channel_index, delivery_tag, multiple, Outcome::Ack)
        })
    }

    /// `basic.nack`. Requeued messages go back with `redelivered`: to their original position
    /// in a classic queue, to the back of a quorum queue (RabbitMQ 3.10), or ahead of its other
    /// ready messages when it has an `x-delivery-limit`;
    /// the others are dead-lettered (reason `rejected`) if their queue has a dead-letter
    /// exchange, else dropped.
    pub fn basic_nack(
        &mut self,
        channel: ChannelId,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), Error> {
        let outcome = if requeue {
            Outcome::Requeue
        } else {
            Outcome::Reject
        };
        self.run_at(channel, |engine, channel_index| {
            engine.settle(channel, channel_index, delivery_tag, multiple, outcome)
        })
    }

    /// `basic.reject`: `basic.nack` of a single delivery.
    pub fn basic_reject(
        &mut self,
        channel: ChannelId,
        delivery_tag: u64,
        requeue: bool,
    ) -> Result<(), Error> {
        self.basic_nack(channel, delivery_tag, false, requeue)
    }

    /// `basic.recover` (and `basic.recover-async`): every unacked delivery on the channel, from
    /// consumers and `basic.get` alike, goes back to its queue (as a nack with requeue puts it) with
    /// `redelivered` and is dispatched again (possibly to the same consumer, under a new tag);
    /// the old tags are forgotten. Consumers stay. RabbitMQ does not implement
    /// `requeue = false` (redeliver to the same consumer): 540, which closes the connection.
    pub fn basic_recover(&mut self, channel: ChannelId, requeue: bool) -> Result<(), Error> {
        self.run(channel, |engine| {
            if !requeue {
                return Err(Fault::Connection(AmqpError::new(
                    ReplyCode::NotImplemented,
                    "requeue=false",
                )));
            }
            let Some(state) = engine.channels.get_mut(&channel) else {
                return Err(Fault::Invalid(format!("{channel} is not open")));
            };
            let unacked: Vec<Unacked> = state.unacked.take_all().collect();
            let through_consumers = through_consumers(&unacked);
            engine.finish_in_batches(channel, usize::MAX, unacked, Outcome::Requeue);
            if let Some(index) = engine.channels.get_index_of(&channel) {
                engine.limiter_settled(index, through_consumers);
            }
            Ok(())
        })
    }

    /// Reports that the client took `count` deliveries of a `no_ack` consumer out of its buffer,
    /// which gives the consumer room for more (see [`crate::NO_ACK_BUFFER_MAX`]). Ignored for
    /// closed channels and unknown consumers.
    pub fn deliveries_taken(&mut self, channel: ChannelId, consumer_tag: &str, count: usize) {
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        let Some(consumer) = state.consumers.get_mut(consumer_tag) else {
            return;
        };
        if !consumer.no_ack {
            return;
        }
        consumer.buffered = consumer.buffered.saturating_sub(count);
        let queue = consumer.queue.clone();
        self.dirty.insert(queue);
        self.run_until_idle();
    }

    // ---------------------------------------------------------------- introspection

    /// The number a channel is known by on its connection, while it has a record (open, or
    /// closed by an error and not yet released).
    pub fn channel_number(&self, channel: ChannelId) -> Option<u16> {
        self.channels.get(&channel).map(|state| state.number)
    }

    /// Ready messages in a queue.
    pub fn queue_depth(&self, queue: &str) -> Option<usize> {
        self.queues.get(queue).map(Queue::ready_len)
    }

    /// Messages of a queue delivered and not yet settled.
    pub fn unacked_count(&self, queue: &str) -> Option<usize> {
        self.queues.get(queue).map(|q| q.unacked)
    }

    /// Consumers of a queue, as `queue.declare-ok` counts them (a quorum queue counts a few
    /// that only settle, and with a single active consumer only the active one).
    pub fn consumer_count(&self, queue: &str) -> Option<usize> {
        self.queues.get(queue).map(Queue::consumer_count)
    }

    /// A queue's arguments as broker-mem understood them.
    pub fn queue_arguments(&self, queue: &str) -> Option<QueueArguments> {
        self.queues.get(queue).map(|q| q.args.clone())
    }

    /// Every exchange, sorted by name.
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        let mut all: Vec<ExchangeInfo> = self
            .exchanges
            .iter()
            .map(|(name, exchange)| exchange.info(name))
            .collect();
        all.sort();
        all
    }

    /// Every queue, sorted by name.
    pub fn queues(&self) -> Vec<QueueInfo> {
        let mut all: Vec<QueueInfo> = self
            .queues
            .iter()
            .map(|(name, queue)| queue.info(name))
            .collect();
        all.sort();
        all
    }

    /// Every explicit binding to a queue, sorted by exchange, then binding key, then queue.
    /// The default exchange's implicit bindings are not listed.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        let mut all: Vec<BindingInfo> = self
            .exchanges
            .iter()
            .flat_map(|(name, exchange)| exchange.bindings.infos(name))
            .collect();
        all.sort();
        all
    }

    /// Every exchange-to-exchange binding, sorted by source, then key, then destination.
    pub fn exchange_bindings(&self) -> Vec<ExchangeBindingInfo> {
        let mut all: Vec<ExchangeBindingInfo> = self
            .exchanges
            .iter()
            .flat_map(|(name, exchange)| exchange.bindings.exchange_infos(name))
            .collect();
        all.sort();
        all
    }

    /// Messages that left a queue by rejection, expiry, overflow or the delivery limit, oldest
    /// first (the last [`INTROSPECTION_LOG_MAX`]).
    pub fn dead_lettered(&self) -> Vec<DeadLettered> {
        self.dead_lettered.iter().cloned().collect()
    }

    /// Mandatory messages returned to their publishers, oldest first (the last
    /// [`INTROSPECTION_LOG_MAX`]).
    pub fn returned(&self) -> Vec<Returned> {
        self.returned.iter().cloned().collect()
    }

    /// What the broker holds now.
    pub fn usage(&self) -> Usage {
        self.held
    }

    /// Checks the engine's bookkeeping against its contents: held counts, per-queue and
    /// per-consumer unacked counts, queue order, consumer registrations, bindings. For tests
    /// and the simulator's checkers; Err describes the first inconsistency.
    pub fn check_invariants(&self) -> Result<(), String> {
        let mut held = Usage::default();
        for (name, queue) in &self.queues {
            if !queue.is_sorted() {
                return Err(format!("queue '{name}' is not in delivery order"));
            }
            let (mut unacked, mut gets) = (0, 0);
            for (_, u) in self.all_unacked() {
                if u.queue == *name && u.queue_id == queue.id {
                    unacked += 1;
                    gets += usize::from(u.consumer_serial == 0);
                }
            }
            if unacked != queue.unacked {
                return Err(format!("queue '{name}' counts {} unacked", queue.unacked));
            }
            for &(serial, holding) in &queue.cancelled_holding {
                let held = (self.all_unacked())
                    .filter(|(_, u)| u.queue == *name && u.consumer_serial == serial)
                    .count();
                if held != holding || holding == 0 {
                    return Err(format!(
                        "queue '{name}' counts {holding} deliveries held by cancelled consumer \
                         {serial}, which holds {held}"
                    ));
                }
            }
            let counted_gets = if queue.args.queue_type == QueueType::Quorum {
                gets
            } else {
                0
            };
            if queue.gets_unsettled != counted_gets {
                return Err(format!(
                    "queue '{name}' counts {} unsettled gets as consumers, holds {gets}",
                    queue.gets_unsettled
                ));
            }
            // A publisher is forgotten when it goes: the record stays within one entry per
            // open channel and per at-least-once queue.
            for publisher in queue.publishers() {
                let live = match publisher {
                    Publisher::Channel(channel) => (self.channels.get(channel))
                        .is_some_and(|c| c.closed.is_none() && c.known_by.contains(name)),
                    Publisher::DeadLetterWorker(id) => (self.queues.values())
                        .any(|q| q.id == *id && q.args.dead_letter_at_least_once),
                };
                if !live {
                    return Err(format!(
                        "queue '{name}' knows a publisher that is gone: {publisher:?}"
                    ));
                }
            }
            for (channel, tag) in queue.consumers() {
                let consumer = self
                    .channels
                    .get(channel)
                    .and_then(|c| c.consumers.get(tag));
                if consumer.is_none_or(|c| c.queue != *name) {
                    return Err(format!("queue '{name}' lists a missing consumer '{tag}'"));
                }
            }
        }
        // Kept to be dead-lettered at least once: held too.
        let ready = (self.queues.values())
            .map(|q| q.ready_len() + q.dead_letters.len())
            .sum::<usize>();
        let ready_bytes = (self.queues.values())
            .map(|q| q.ready_body_bytes() + q.dead_letters.body_bytes())
            .sum::<usize>();
        held.messages = ready + self.all_unacked().count();
        held.body_bytes = ready_bytes
            + self
                .all_unacked()
                .map(|(_, u)| u.entry.message.body.len())
                .sum::<usize>();
        if held != self.held {
            return Err(format!("held {:?} but counted {:?}", self.held, held));
        }
        for (id, channel) in &self.channels {
            let registered = self
                .connections
                .get(&id.connection)
                .is_some_and(|c| c.channels.contains(id));
            if !registered {
                return Err(format!("{id} is not registered with its connection"));
            }
            let through_consumers = channel
                .all_unacked()
                .filter(|(_, u)| u.consumer_serial != 0)
                .count();
            if through_consumers != channel.consumer_unacked {
                return Err(format!(
                    "{id} counts {} unacked consumer deliveries, holds {through_consumers}",
                    channel.consumer_unacked
                ));
            }
            if channel.closed.is_some()
                && !(channel.consumers.is_empty() && channel.unacked.is_empty())
            {
                return Err(format!("{id} is closed but holds consumers or deliveries"));
            }
            for (tag, consumer) in &channel.consumers {
                let unacked = channel
                    .all_unacked()
                    .filter(|(_, u)| u.consumer_serial == consumer.serial);
                if unacked.count() != consumer.unacked {
                    return Err(format!(
                        "consumer '{tag}' on {id} counts {} unacked",
                        consumer.unacked
                    ));
                }
                // A reply consumer is listed by the reply names instead of a queue.
                let listed = if consumer.queue == REPLY_TO {
                    channel.reply_consumer.as_ref().is_some_and(|reply| {
                        reply.tag == *tag && self.reply_channels.get(&reply.name) == Some(id)
                    })
                } else {
                    self.queues
                        .get(&consumer.queue)
                        .is_some_and(|q| q.consumers().any(|(c, t)| c == id && t == tag))
                };
                if !listed {
                    return Err(format!(
                        "consumer '{tag}' on {id} is not listed by its queue"
                    ));
                }
            }
        }
        for (name, id) in &self.reply_channels {
            let owned = self.channels.get(id).is_some_and(|channel| {
                (channel.reply_consumer.as_ref()).is_some_and(|reply| reply.name == *name)
            });
            if !owned {
                return Err(format!(
                    "reply name '{name}' points at {id}, which has no such consumer"
                ));
            }
        }
        let bindings = self
            .exchanges
            .values()
            .map(|e| e.bindings.len())
            .sum::<usize>();
        if bindings != self.bindings_total {
            return Err(format!(
                "{} bindings counted as {}",
                bindings, self.bindings_total
            ));
        }
        Ok(())
    }

    /// A consumer whose buffer was full has taken from it: what waited for room goes on.
    pub(crate) fn consumer_buffer_drained(&mut self, channel: ChannelId, consumer_tag: &str) {
        let consumer = self
            .channels
            .get(&channel)
            .and_then(|state| state.consumers.get(consumer_tag));
        if let Some(consumer) = consumer {
            let queue = consumer.queue.clone();
            self.dirty.insert(queue);
            self.run_until_idle();
        }
    }

    // ---------------------------------------------------------------- validation and effects

    /// Runs one AMQP method on an open channel, applies the consequences of a refusal, and
    /// runs the touched queues until idle.
    fn run<T>(
        &mut self,
        channel: ChannelId,
        method: impl FnOnce(&mut Engine) -> Result<T, Fault>,
    ) -> Result<T, Error> {
        self.run_at(channel, |engine, _| method(engine))
    }

    /// [`Engine::run`], handing the method the open channel's index in `channels` (valid until
    /// the method removes a channel), so that publish and settle, which run for every message,
    /// do not hash the channel again.
    fn run_at<T>(
        &mut self,
        channel: ChannelId,
        method: impl FnOnce(&mut Engine, usize) -> Result<T, Fault>,
    ) -> Result<T, Error> {
        let channel_index = self.open_channel_index(channel)?;
        let result = match method(self, channel_index) {
            Ok(value) => Ok(value),
            Err(Fault::Channel(reason)) => {
                tracing::debug!(%channel, error = %reason, "channel error");
                self.shut_channel(channel);
                if let Some(state) = self.channels.get_mut(&channel) {
                    state.closed = Some(reason.clone());
                }
                Err(Error::Channel(reason))
            }
            Err(Fault::Connection(reason)) => {
                tracing::debug!(connection = %channel.connection, error = %reason, "connection error");
                // The channel that broke the rule goes first, so a quorum queue serves its
                // returns before the other channels' (RabbitMQ 3.10, probed; the others
                // follow in channel order there most of the time, here always).
                self.shut_channel(channel);
                self.shut_connection(channel.connection);
                if let Some(state) = self.connections.get_mut(&channel.connection) {
                    state.closed = Some(reason.clone());
                }
                Err(Error::Connection(reason))
            }
            Err(Fault::Invalid(text)) => Err(Error::Invalid(text)),
        };
        self.run_until_idle();
        result
    }

    fn declare_exchange(
        &mut self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
        arguments: &FieldTable,
    ) -> Result<(), Fault> {
        check_name("exchange name", name)?;
        // Passive or not (RabbitMQ 3.10, probed).
        if name == DEFAULT_EXCHANGE {
            return Err(Fault::default_exchange());
        }
        if options.passive {
            return match self.exchanges.contains_key(name) {
                true => Ok(()),
                false => Err(Fault::not_found_exchange(name)),
            };
        }
        if let Some(existing) = self.exchanges.get(name) {
            existing.check_equivalent(name, kind, options)?;
            return existing.check_equivalent_arguments(name, arguments);
        }
        check_not_reserved("exchange", name)?;
        if let Some(value) = arguments.get("alternate-exchange")
            && value.as_longstr().is_none()
        {
            let owner = format!("exchange '{name}'");
            return Err(Fault::exchange_arg_type(
                "alternate-exchange",
                &owner,
                value,
            ));
        }
        if self.exchanges.len() >= self.limits.exchanges_max {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "cannot declare exchange '{name}': exchange limit in vhost '{}' ({}) is reached",
                    crate::VHOST,
                    self.limits.exchanges_max
                ),
            ));
        }
        let mut exchange = Exchange::new(kind, options);
        exchange.alternate = Exchange::alternate_from(arguments);
        self.exchanges.insert(name.into(), exchange);
        self.topology += 1;
        Ok(())
    }

    fn delete_exchange(&mut self, name: &str, if_unused: bool) -> Result<(), Fault> {
        check_name("exchange name", name)?;
        if name == DEFAULT_EXCHANGE {
            return Err(Fault::default_exchange());
        }
        if name.starts_with("amq.") {
            return Err(Fault::channel(
                ReplyCode::AccessRefused,
                format!(
                    "deletion of system exchange '{name}' in vhost '{}' not allowed",
                    crate::VHOST
                ),
            ));
        }
        let Some(exchange) = self.exchanges.get(name) else {
            return Ok(());
        };
        if if_unused && !exchange.bindings.is_empty() {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!("exchange '{name}' in vhost '{}' in use", crate::VHOST),
            ));
        }
        self.remove_exchange(name);
        Ok(())
    }

    /// Removes an exchange with its bindings, in both directions.
    fn remove_exchange(&mut self, name: &str) {
        let Some(exchange) = self.exchanges.shift_remove(name) else {
            return;
        };
        self.topology += 1;
        self.bindings_total -= exchange.bindings.len();
        self.remove_bindings_to(&Destination::Exchange(name.into()));
    }

    /// Removes every binding to `to`, then auto-delete exchanges left without bindings.
    fn remove_bindings_to(&mut self, to: &Destination) {
        let mut emptied = Vec::new();
        for (exchange_name, exchange) in &mut self.exchanges {
            let removed = exchange.bindings.remove_destination(to);
            if removed == 0 {
                continue;
            }
            self.bindings_total -= removed;
            self.topology += 1;
            if exchange.auto_delete && exchange.bindings.is_empty() {
                emptied.push(exchange_name.clone());
            }
        }
        for exchange in &emptied {
            self.remove_exchange(exchange);
        }
    }

    fn declare_queue(
        &mut self,
        connection: ConnectionId,
        name: &str,
        options: QueueOptions,
        arguments: &FieldTable,
    ) -> Result<QueueDeclareOk, Fault> {
        check_name("queue name", name)?;
        let now_ms = self.now_ms;
        if options.passive {
            let queue = self
                .queues
                .get_mut(name)
                .ok_or_else(|| Fault::not_found_queue(name))?;
            queue.check_access(name, connection)?;
            queue.declared_again(now_ms);
            return Ok(declare_ok(name, queue));
        }
        // An exclusive queue is never durable: RabbitMQ drops the flag before anything else
        // sees it (so redeclaring it either way is equivalent).
        let options = QueueOptions {
            durable: options.durable && !options.exclusive,
            ..options
        };
        let name = if name.is_empty() {
            smol_str::format_smolstr!("amq.gen-{}", next(&mut self.counters.queue_name))
        } else {
            check_not_reserved("queue", name)?;
            name.into()
        };
        if let Some(existing) = self.queues.get_mut(&name) {
            existing.check_access(&name, connection)?;
            existing.check_equivalent(&name, options)?;
            existing.check_equivalent_arguments(&name, arguments)?;
            existing.declared_again(now_ms);
            return Ok(declare_ok(&name, existing));
        }
        let args = QueueArguments::parse(&name, options, arguments)?;
        if self.queues.len() >= self.limits.queues_max {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "cannot declare queue '{name}': queue limit in vhost '{}' ({}) is reached",
                    crate::VHOST,
                    self.limits.queues_max
                ),
            ));
        }
        let owner = options.exclusive.then_some(connection);
        let id = next(&mut self.counters.queue_id);
        let mut queue = Queue::new(id, options, owner, arguments.clone(), args);
        queue.last_used_ms = now_ms;
        if let Some(at) = queue.unused_expires_at_ms() {
            self.alarm.note(at);
        }
        let ok = declare_ok(&name, &queue);
        self.queues.insert(name, queue);
        // The default exchange routes to it now.
        self.topology += 1;
        Ok(ok)
    }

    /// Checks that both ends of a binding exist and may be used by this connection.
    /// A bind's checks, in RabbitMQ 3.10's order (probed): names, both ends exist (the source
    /// first), a headers exchange's `x-match`, then the queue's owner.
    fn check_binding(
        &self,
        connection: ConnectionId,
        source: &str,
        to: &Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Fault> {
        check_name("exchange name", source)?;
        check_name("routing key", routing_key)?;
        if source == DEFAULT_EXCHANGE {
            return Err(Fault::default_exchange());
        }
        match to {
            Destination::Queue(queue) => check_name("queue name", queue)?,
            Destination::Exchange(exchange) => {
                check_name("exchange name", exchange)?;
                if exchange == DEFAULT_EXCHANGE {
                    return Err(Fault::default_exchange());
                }
            }
        }
        if !self.exchanges.contains_key(source) {
            return Err(Fault::not_found_exchange(source));
        }
        let target = match to {
            Destination::Queue(queue) => Some((
                queue,
                self.queues
                    .get(queue)
                    .ok_or_else(|| Fault::not_found_queue(queue))?,
            )),
            Destination::Exchange(exchange) => {
                if !self.exchanges.contains_key(exchange) {
                    return Err(Fault::not_found_exchange(exchange));
                }
                None
            }
        };
        if self
            .exchanges
            .get(source)
            .is_some_and(|exchange| exchange.kind == ExchangeKind::Headers)
        {
            check_x_match(arguments)?;
        }
        if let Some((name, queue)) = target {
            queue.check_access(name, connection)?;
        }
        Ok(())
    }

    fn bind(
        &mut self,
        connection: ConnectionId,
        source: &str,
        to: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Fault> {
        self.check_binding(connection, source, &to, routing_key, arguments)?;
        if self.bindings_total >= self.limits.bindings_max {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "cannot bind to exchange '{source}': binding limit ({}) is reached",
                    self.limits.bindings_max
                ),
            ));
        }
        if let Some(exchange) = self.exchanges.get_mut(source)
            && exchange.bindings.insert(routing_key, to, arguments.clone())
        {
            self.bindings_total += 1;
            self.topology += 1;
        }
        Ok(())
    }

    /// Unbinding is idempotent in RabbitMQ 3.10: a missing binding, exchange or queue is Ok.
    fn unbind(
        &mut self,
        connection: ConnectionId,
        source: &str,
        to: Destination,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Fault> {
        check_name("exchange name", source)?;
        check_name("routing key", routing_key)?;
        let default_destination =
            matches!(&to, Destination::Exchange(name) if name == DEFAULT_EXCHANGE);
        if source == DEFAULT_EXCHANGE || default_destination {
            return Err(Fault::default_exchange());
        }
        // Unbinding what is not bound is fine, even from an exclusive queue of another
        // connection (RabbitMQ 3.10, probed); only a real unbind checks the queue's owner.
        let bound = self
            .exchanges
            .get(source)
            .is_some_and(|exchange| exchange.bindings.contains(routing_key, &to, arguments));
        if !bound {
            return Ok(());
        }
        if let Destination::Queue(queue) = &to
            && let Some(target) = self.queues.get(queue)
        {
            target.check_access(queue, connection)?;
        }
        let Some(exchange) = self.exchanges.get_mut(source) else {
            return Ok(());
        };
        if exchange.bindings.remove(routing_key, &to, arguments) {
            self.bindings_total -= 1;
            self.topology += 1;
            if exchange.auto_delete && exchange.bindings.is_empty() {
                self.remove_exchange(source);
            }
        }
        Ok(())
    }

    /// `message` is (exchange, routing key, properties, body), as published.
    fn publish(
        &mut self,
        channel: ChannelId,
        channel_index: usize,
        (exchange_name, routing_key, properties, body): (&str, &str, Arc<Properties>, Bytes),
        options: PublishOptions,
    ) -> Result<Published, Fault> {
        check_name("exchange name", exchange_name)?;
        check_name("routing key", routing_key)?;
        if body.len() > self.limits.body_bytes_max {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "message size {} is larger than configured max size {}",
                    body.len(),
                    self.limits.body_bytes_max
                ),
            ));
        }
        // A memoized route vouches for the exchange too: it exists and is not internal.
        let memoized = properties.headers.is_none()
            && self
                .route_memo
                .answers(self.topology, exchange_name, routing_key);
        let (exchange_index, shared_name) = if memoized {
            (None, self.route_memo.exchange.clone())
        } else {
            let (index, shared_name, exchange) = self
                .exchanges
                .get_full(exchange_name)
                .ok_or_else(|| Fault::not_found_exchange(exchange_name))?;
            if exchange.internal {
                return Err(Fault::channel(
                    ReplyCode::AccessRefused,
                    format!(
                        "cannot publish to internal exchange '{exchange_name}' in vhost '{}'",
                        crate::VHOST
                    ),
                ));
            }
            // The exchange's own name, shared: the message keeps it without copying it.
            (Some(index), shared_name.clone())
        };
        let exchange_name = shared_name.as_str();
        let properties = self.address_reply_to(channel_index, properties)?;
        if let Some(claimed) = properties.user_id.as_deref() {
            let user = self
                .connections
                .get(&channel.connection)
                .map_or("", |c| c.user.as_str());
            if claimed != user {
                return Err(Fault::channel(
                    ReplyCode::PreconditionFailed,
                    format!(
                        "user_id property set to '{claimed}' but authenticated user was '{user}'"
                    ),
                ));
            }
        }

        if let Some(expiration) = properties.expiration.as_deref()
            && let Err(text) = crate::message::parse_expiration(expiration)
        {
            return Err(Fault::channel(ReplyCode::PreconditionFailed, text));
        }
        // Only set (and dropped) when there are headers: most publishes have none.
        let header_keys;
        let mut bcc = None;
        let (extra_keys, properties): (&[SmolStr], _) = match properties.headers.as_ref() {
            None => (&[], properties),
            Some(headers) => {
                let from_cc;
                (header_keys, from_cc) = header_routes(headers)
                    .map_err(|text| Fault::channel(ReplyCode::PreconditionFailed, text))?;
                // BCC routes the message but is not delivered with it; the message keeps its
                // keys for dead-lettering.
                let properties = if headers.contains_key("BCC") {
                    let mut without = Properties::clone(&properties);
                    if let Some(headers) = without.headers.as_mut() {
                        headers.remove("BCC");
                    }
                    Message::share_properties(without)
                } else {
                    properties
                };
                if header_keys.len() > from_cc {
                    bcc = Some(Box::new(BccKeys(header_keys[from_cc..].to_vec())));
                }
                (&header_keys, properties)
            }
        };
        // RabbitMQ reads the delivery mode as it makes the message (rabbit_basic:message,
        // after the CC and BCC headers): 1, 2 or none.
        if let Some(mode) = properties.delivery_mode
            && !matches!(mode, 1 | 2)
        {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!("invalid message: {{delivery_mode_unknown,{mode}}}"),
            ));
        }
        let in_tx = self
            .channels
            .get_index(channel_index)
            .is_some_and(|(_, state)| state.tx.is_some());
        // Confirm faults wait for a publish that is confirmed: a transaction's is not.
        let fault = if in_tx {
            None
        } else {
            self.channels
                .get_index_mut(channel_index)
                .and_then(|(_, state)| state.nack_next_publish.take())
                .or_else(|| self.take_publish_fault(exchange_name))
        };
        // The memo's vectors are borrowed out while the engine enqueues (and put back below;
        // nothing in between reads the memo): only they, not the whole memo, move.
        let mut queues = std::mem::take(&mut self.route_memo.queues);
        let mut hints = std::mem::take(&mut self.route_memo.hints);
        match exchange_index {
            None => self.check_memoized(&queues),
            Some(exchange_index) => {
                self.route_memo.topology = None;
                queues.clear();
                self.route(
                    exchange_index,
                    routing_key,
                    extra_keys,
                    properties.headers.as_ref(),
                    &mut queues,
                );
                hints.clear();
                hints.extend(
                    (queues.iter()).map(|q| self.queues.get_index_of(q).unwrap_or(usize::MAX)),
                );
                if properties.headers.is_none() {
                    let memo = &mut self.route_memo;
                    memo.topology = Some(self.topology);
                    memo.exchange = shared_name.clone();
                    memo.routing_key = routing_key.into();
                }
            }
        }
        let routing_key = if self.route_memo.topology.is_some() {
            self.route_memo.routing_key.clone()
        } else {
            routing_key.into()
        };
        let message = Message::new(shared_name, routing_key, properties, body, bcc);
        // Direct replies: the default exchange hands them over as it routes, whatever becomes
        // of the publish, and no queue counts as reached (see `reply_to`).
        // Each name once, in order, however many keys name it (RabbitMQ's `lists:usort`).
        if message.exchange.is_empty() {
            let keys = std::iter::once(&message.routing_key).chain(extra_keys);
            let names: BTreeSet<&SmolStr> = keys.filter(|key| is_reply_name(key)).collect();
            for name in names {
                self.deliver_reply(name, &message);
            }
        }
        let published = if in_tx {
            // Routed now, enqueued at the commit; no confirm. The default exchange's route is
            // the keys themselves, queue or not (RabbitMQ's route for it looks nothing up): the
            // commit looks the queues up, so one declared in between takes the message
            // (probed on 3.10.8).
            let targets = if message.exchange.is_empty() {
                let mut names: Vec<SmolStr> = std::iter::once(&message.routing_key)
                    .chain(extra_keys)
                    .cloned()
                    .collect();
                names.sort_unstable();
                names.dedup();
                names
            } else {
                queues.clone()
            };
            self.hold_publish(channel_index, targets, message, options)
                .map(|()| Published {
                    returned: None,
                    confirm: Confirm::Pending,
                })
        } else {
            Ok(self.enqueue_routed(channel, &queues, &hints, message, options, fault, false))
        };
        self.route_memo.queues = queues;
        self.route_memo.hints = hints;
        published
    }

    /// Debug builds: routes a memoized publish again and checks the memo gave the same queues,
    /// so a topology change that was not counted (see `RouteMemo`) fails the tests.
    fn check_memoized(&self, memoized: &[SmolStr]) {
        if cfg!(debug_assertions) {
            let route = &self.route_memo;
            let exchange = self.exchanges.get_full(route.exchange.as_str());
            let Some((index, _, exchange)) = exchange else {
                panic!("memoized route to a missing exchange '{}'", route.exchange);
            };
            assert!(!exchange.internal, "memoized route to an internal exchange");
            let mut queues = Vec::new();
            self.route(index, &route.routing_key, &[], None, &mut queues);
            assert_eq!(queues, memoized, "memoized route is stale");
        }
    }

    /// The second half of a publish on `channel`: the message in every queue it was routed
    /// to, or the reasons it was not (returned, nacked).
    /// `committing`: a transaction's commit: the held ceilings were already checked for the
    /// whole transaction, and a quorum queue's `reject-publish` drops its copy without
    /// refusing the publish (RabbitMQ 3.10.8, probed: the commit is ok, where a classic
    /// queue's refusal makes it a 406 `partial tx completion`).
    /// `hints`: where each target was in `queues` (see `hinted_index`); may be short or empty.
    #[allow(clippy::too_many_arguments)] // one caller in the engine, one in tx; all needed
    fn enqueue_routed(
        &mut self,
        channel: ChannelId,
        targets: &[SmolStr],
        hints: &[usize],
        message: Message,
        options: PublishOptions,
        fault: Option<bool>,
        committing: bool,
    ) -> Published {
        let mut returned = None;
        if targets.is_empty() && options.mandatory {
            let back = Returned {
                reply_code: REPLY_NO_ROUTE,
                reply_text: "NO_ROUTE".to_owned(),
                exchange: message.exchange.to_string(),
                routing_key: message.routing_key.to_string(),
                properties: Properties::clone(&message.properties),
                body: message.body.clone(),
            };
            push_bounded(&mut self.returned, back.clone());
            returned = Some(Box::new(back));
        }
        let nack = |reason: String| Confirm::Nack { reason };
        if fault == Some(false) {
            let confirm = nack("fault hook: nack_next_publish".to_owned());
            return Published { returned, confirm };
        }
        let over = (!committing)
            .then(|| self.over_ceiling(targets.len(), message.body.len()))
            .flatten();
        if let Some(reason) = over {
            tracing::warn!(exchange = %message.exchange, routing_key = %message.routing_key, %reason, "publish nacked");
            return Published {
                returned,
                confirm: nack(reason),
            };
        }
        let mut refused = Vec::new();
        // Every queue takes its copy before what those copies make them dead-letter is
        // republished (see `dead_letter`).
        let republishing = std::mem::replace(&mut self.republishing, true);
        for (at, name) in targets.iter().enumerate() {
            let hint = hints.get(at).copied().unwrap_or(usize::MAX);
            if self.enqueue(name, hint, &message, Some(Publisher::Channel(channel))) {
                continue;
            }
            // In a commit, a quorum queue's refusal only drops its copy (see `committing`).
            let dropped_quietly = committing
                && (self.queues.get(name)).is_some_and(|q| q.args.queue_type == QueueType::Quorum);
            if !dropped_quietly {
                refused.push(name.as_str());
            }
        }
        self.republishing = republishing;
        // The usual publish drops nothing: no call.
        if !republishing && !self.dead_letters_pending.is_empty() {
            self.republish_dead_letters();
        }
        let confirm = if !refused.is_empty() {
            nack(format!(
                "queue '{}' is full (x-overflow)",
                refused.join("', '")
            ))
        } else if fault == Some(true) {
            nack("fault hook: nack_next_publish (message enqueued)".to_owned())
        } else {
            Confirm::Ack
        };
        Published { returned, confirm }
    }

    /// The queues a message published to the exchange at `first` (its index in `exchanges`)
    /// reaches, into `queues` (sorted, each once however many paths lead to it): RabbitMQ's
    /// walk over exchange-to-exchange bindings (each exchange visited once, the routing key
    /// unchanged), with an exchange's alternate exchange taking over when the exchange itself
    /// routes to nothing.
    ///
    /// Allocation-free for a publish that touches one exchange: names are shared, `queues`
    /// keeps its capacity between publishes, and the lists of exchanges visited and to visit
    /// stay empty.
    fn route(
        &self,
        first: usize,
        routing_key: &str,
        extra_keys: &[SmolStr],
        headers: Option<&FieldTable>,
        queues: &mut Vec<SmolStr>,
    ) {
        let Some((first_name, first_exchange)) = self.exchanges.get_index(first) else {
            return;
        };
        let mut seen: Vec<&str> = Vec::new();
        let mut work: Vec<&str> = Vec::new();
        let mut next = Some((first_name.as_str(), first_exchange));
        // Bounded: each exchange is visited at most once. The published-to exchange counts as
        // seen from its first visit without being stored, so a publish that touches one
        // exchange never allocates.
        loop {
            let (name, exchange) = match next.take() {
                Some(first) => first,
                None => {
                    let Some(name) = work.pop() else {
                        break;
                    };
                    if name == first_name || seen.contains(&name) {
                        continue;
                    }
                    seen.push(name);
                    let Some(exchange) = self.exchanges.get(name) else {
                        continue;
                    };
                    (name, exchange)
                }
            };
            let mut routed = false;
            let mut route_by = |key: &str| {
                if name == DEFAULT_EXCHANGE {
                    if let Some((queue, _)) = self.queues.get_key_value(key) {
                        queues.push(queue.clone());
                        routed = true;
                    }
                } else {
                    exchange.route(key, headers, |destination| {
                        routed = true;
                        match destination {
                            Destination::Queue(queue) => queues.push(queue.clone()),
                            Destination::Exchange(next) => work.push(next),
                        }
                    });
                }
            };
            // All the keys at once: the alternate exchange takes over only if none routes.
            route_by(routing_key);
            for key in extra_keys {
                route_by(key);
            }
            if !routed && let Some(alternate) = &exchange.alternate {
                work.push(alternate);
            }
        }
        if queues.len() > 1 {
            queues.sort_unstable();
            queues.dedup();
        }
    }

    /// Marks a queue for the run-until-idle loop.
    fn mark(&mut self, queue_name: &SmolStr) {
        self.dirty.insert(queue_name.clone());
    }

    /// Puts a copy of `message` in a queue, applying its TTL and length limit. False when the
    /// queue refused it (`reject-publish`).
    /// `hint`: where the queue was in `queues` (see `hinted_index`), or anything.
    /// `publisher`: the channel that published it; None when it is dead-lettered.
    fn enqueue(
        &mut self,
        queue_name: &SmolStr,
        hint: usize,
        message: &Message,
        publisher: Option<Publisher>,
    ) -> bool {
        let now_ms = self.now_ms;
        let Some(at) = hinted_index(&self.queues, hint, queue_name) else {
            return true;
        };
        let Some((_, queue)) = self.queues.get_index_mut(at) else {
            return true;
        };
        // The queue is about to know the channel: the channel remembers it, to be forgotten
        // on its close.
        if let Some(Publisher::Channel(channel)) = publisher
            && queue.is_new_publisher(Publisher::Channel(channel))
            && let Some(state) = self.channels.get_mut(&channel)
            && !state.known_by.contains(queue_name)
        {
            state.known_by.push(queue_name.clone());
        }
        if queue.would_overflow(publisher, message.body.len()) {
            match queue.args.overflow {
                Overflow::DropHead => {}
                Overflow::RejectPublish => return false,
                Overflow::RejectPublishDlx => {
                    let entry = Queued {
                        seq: 0,
                        message: message.clone(),
                        redelivered: false,
                        expires_at_ms: None,
                        delivery_count: 0,
                        returned: false,
                    };
                    self.held.add(message);
                    self.dead_letter(queue_name, entry, DeathReason::Maxlen);
                    return false;
                }
            }
        }
        let ttl_ms = match (queue.args.message_ttl_ms, message.expiration_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let expires_at_ms = ttl_ms.map(|ttl| now_ms.saturating_add(ttl));
        if let Some(at) = expires_at_ms {
            self.alarm.note(at.saturating_add(1));
        }
        queue.enqueue(Queued {
            seq: next(&mut self.counters.message_seq),
            message: message.clone(),
            redelivered: false,
            expires_at_ms,
            delivery_count: 0,
            returned: false,
        });
        self.held.add(message);
        // Only `drop-head` drops: a quorum queue that refuses publishes may stand one
        // message over its limit. Checked first: the usual publish drops nothing. A message
        // over the limit on its own is offered to the consumers first (see
        // `Queue::offered_before_dropping`).
        if queue.must_drop_head() {
            if queue.ready_len() == 1 {
                queue.offered_before_dropping = true;
            } else {
                for head in queue.pop_over_limit() {
                    self.dead_letter(queue_name, head, DeathReason::Maxlen);
                }
            }
        }
        self.dirty.insert_hinted(queue_name.clone(), at);
        true
    }

    /// A message leaves `queue_name` without being consumed: logged, then republished to the
    /// queue's dead-letter exchange with an `x-death` entry (at most once, without confirms,
    /// as RabbitMQ's classic dead-lettering), or dropped if there is none.
    ///
    /// In RabbitMQ a queue dead-letters on its own, after the publish that made it drop has
    /// reached every queue it routes to (found by the differential test, 2026-11-28: a publish
    /// to two queues, the first dropping its head into the second, which is near its byte
    /// limit; RabbitMQ takes the publish there and refuses the dead letter). So while a publish
    /// (or a republish) hands out its copies, the dead letters wait, and go out in the order
    /// the queues dropped them.
    fn dead_letter(&mut self, queue_name: &str, entry: Queued, reason: DeathReason) {
        self.dead_letters_pending
            .push_back((SmolStr::from(queue_name), entry, reason));
        if !self.republishing {
            self.republish_dead_letters();
        }
    }

    /// Republishes the dead letters waiting (see `dead_letter`), and those they make in turn.
    fn republish_dead_letters(&mut self) {
        let republishing = std::mem::replace(&mut self.republishing, true);
        // Bounded as the republishing itself is: a message that would reach a queue it died
        // in already (but for a rejection) is dropped (`is_cycle`).
        while let Some((queue_name, entry, reason)) = self.dead_letters_pending.pop_front() {
            self.republish_dead_letter(&queue_name, entry, reason);
        }
        self.republishing = republishing;
    }

    fn republish_dead_letter(&mut self, queue_name: &str, entry: Queued, reason: DeathReason) {
        self.held.release(&entry.message);
        let (dlx, dlrk, at_least_once) = match self.queues.get(queue_name) {
            Some(queue) => (
                queue.args.dead_letter_exchange.clone(),
                queue.args.dead_letter_routing_key.clone(),
                queue.args.dead_letter_at_least_once,
            ),
            None => (None, None, false),
        };
        let message = &entry.message;
        push_bounded(
            &mut self.dead_lettered,
            DeadLettered {
                queue: queue_name.to_owned(),
                reason,
                dead_letter_exchange: dlx.clone(),
                exchange: message.exchange.to_string(),
                routing_key: message.routing_key.to_string(),
                body: message.body.clone(),
                at_ms: self.now_ms,
            },
        );
        let Some(dlx) = dlx else {
            return;
        };
        let mut properties = Properties::clone(&message.properties);
        // The keys it was routed by: its own and its CC (x-death lists those), and its BCC.
        let (cc, _) = properties
            .headers
            .as_ref()
            .map(|headers| header_routes(headers).unwrap_or_default())
            .unwrap_or_default();
        let mut death_keys = vec![message.routing_key.clone()];
        death_keys.extend(cc.iter().cloned());
        add_death(
            &mut properties,
            queue_name,
            reason,
            &message.exchange,
            &death_keys,
            self.now_ms / 1000,
        );
        // An at-least-once worker routes a message again by the dead-letter routing key or
        // the keys of its newest `x-death` entry.
        let retry_keys = match &dlrk {
            Some(dlrk) => vec![SmolStr::from(dlrk.as_str())],
            None => death_keys,
        };
        // Republished by the same keys, unless the queue names one; then CC and BCC go too.
        let (routing_key, extra_keys, bcc) = match dlrk {
            Some(dlrk) => {
                if let Some(headers) = properties.headers.as_mut() {
                    headers.remove("CC");
                }
                (SmolStr::from(dlrk), Vec::new(), None)
            }
            None => {
                let mut keys = cc;
                keys.extend(message.bcc.iter().flat_map(|bcc| bcc.0.iter().cloned()));
                (message.routing_key.clone(), keys, message.bcc.clone())
            }
        };
        let first_keys: Vec<SmolStr> = std::iter::once(routing_key.clone())
            .chain(extra_keys)
            .collect();
        let republished = Message::new(
            dlx.into(),
            routing_key,
            Message::share_properties(properties),
            message.body.clone(),
            bcc,
        );
        if at_least_once {
            let letter = DeadLetter::new(republished, reason, first_keys, retry_keys);
            self.keep_dead_letter(queue_name, letter);
            return;
        }
        // A dead-letter exchange that does not exist drops the message, as in RabbitMQ.
        let mut targets = self.route_dead_letter(&republished, &first_keys);
        let properties = &republished.properties;
        targets.retain(|queue| reason == DeathReason::Rejected || !is_cycle(properties, queue));
        if targets.is_empty() {
            return;
        }
        if self
            .over_ceiling(targets.len(), republished.body.len())
            .is_some()
        {
            tracing::warn!(
                queue = queue_name,
                "dead-lettered message dropped: broker full"
            );
            return;
        }
        for target in &targets {
            // A full reject-publish queue drops it: dead-lettering has no publisher to nack.
            self.enqueue(target, usize::MAX, &republished, None);
        }
    }

    /// The queues a dead-lettered message (as republished, to its dead-letter exchange)
    /// reaches by `keys` (the first is its routing key), before the cycle rule; none when
    /// the exchange does not exist.
    fn route_dead_letter(&self, message: &Message, keys: &[SmolStr]) -> Vec<SmolStr> {
        let mut targets = Vec::new();
        let exchange = self.exchanges.get_index_of(message.exchange.as_str());
        if let Some(index) = exchange
            && let Some((routing_key, extra_keys)) = keys.split_first()
        {
            let headers = message.properties.headers.as_ref();
            self.route(index, routing_key, extra_keys, headers, &mut targets);
        }
        targets
    }

    /// Why `copies` more copies of a `body_bytes` body would break the held ceilings, if they
    /// would.
    fn over_ceiling(&self, copies: usize, body_bytes: usize) -> Option<String> {
        self.over_ceiling_total(copies, copies.saturating_mul(body_bytes))
    }

    /// Why `copies` more messages of `bytes` body bytes in all would break the held ceilings,
    /// if they would.
    fn over_ceiling_total(&self, copies: usize, bytes: usize) -> Option<String> {
        let messages = self.held.messages.saturating_add(copies);
        if messages > self.limits.held_messages_max {
            return Some(format!(
                "the broker holds {} messages; {copies} more would pass the limit of {}",
                self.held.messages, self.limits.held_messages_max
            ));
        }
        let total = self.held.body_bytes.saturating_add(bytes);
        if total > self.limits.held_body_bytes_max {
            return Some(format!(
                "the broker holds {} body bytes; {copies} messages of {bytes} more would pass the limit of {}",
                self.held.body_bytes, self.limits.held_body_bytes_max
            ));
        }
        None
    }

    fn consume(
        &mut self,
        channel: ChannelId,
        queue_name: &str,
        options: ConsumeOptions,
        outlet: Option<ConsumerOutlet>,
    ) -> Result<String, Fault> {
        check_name("queue name", queue_name)?;
        check_name("consumer tag", &options.consumer_tag)?;
        let Some(state) = self.channels.get(&channel) else {
            return Err(Fault::Invalid(format!("{channel} is not open")));
        };
        // A reused tag is refused before the queue is looked up (rabbit_channel; probed), the
        // reply-to pseudo-queue's included.
        if state.consumers.contains_key(options.consumer_tag.as_str()) {
            return Err(Fault::Connection(AmqpError::new(
                ReplyCode::NotAllowed,
                format!("attempt to reuse consumer tag '{}'", options.consumer_tag),
            )));
        }
        if queue_name == REPLY_TO {
            return self.consume_reply_to(channel, &options, outlet);
        }
        let (queue_name, queue) = self
            .queues
            .get_key_value(queue_name)
            .ok_or_else(|| Fault::not_found_queue(queue_name))?;
        let queue_name = queue_name.clone();
        queue.check_access(&queue_name, channel.connection)?;
        let tag = if options.consumer_tag.is_empty() {
            loop {
                let tag =
                    smol_str::format_smolstr!("amq.ctag-{}", next(&mut self.counters.consumer_tag));
                if !state.consumers.contains_key(&tag) {
                    break tag;
                }
            }
        } else {
            SmolStr::from(&options.consumer_tag)
        };
        if state.consumers.len() >= self.limits.consumers_per_channel_max {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "the channel has {} consumers, the limit",
                    self.limits.consumers_per_channel_max
                ),
            ));
        }
        let priority = match options.arguments.get("x-priority") {
            None => 0,
            Some(value) if value.as_integer().is_some() => value.as_integer().unwrap_or(0),
            Some(other) => {
                return Err(Fault::channel(
                    ReplyCode::PreconditionFailed,
                    format!(
                        "invalid arg 'x-priority' for queue '{queue_name}' in vhost '{}': \
                         \"expected integer, got {}\"",
                        crate::VHOST,
                        other.type_name()
                    ),
                ));
            }
        };
        // RabbitMQ checks its other consume argument's type next (only a classic queue takes
        // it), and acts on it no more.
        let queue_type = queue.args.queue_type;
        if let Some(value) = options.arguments.get("x-cancel-on-ha-failover")
            && queue_type == QueueType::Classic
            && !matches!(value, FieldValue::Bool(_))
        {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "invalid arg 'x-cancel-on-ha-failover' for queue '{queue_name}' in vhost \
                     '{}': {{unacceptable_type,{}}}",
                    crate::VHOST,
                    value.type_name()
                ),
            ));
        }
        // Then an argument only another queue type takes, the first on the wire (probed on
        // 3.10.8, before the checks below).
        let foreign = queue_type.foreign_consume_arguments();
        if let Some(arg) = options
            .arguments
            .keys()
            .find(|key| foreign.contains(&key.as_str()))
        {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "invalid arg '{arg}' for queue '{queue_name}' in vhost '{}' of queue type {}",
                    crate::VHOST,
                    queue_type.module_name()
                ),
            ));
        }
        if queue_type == QueueType::Quorum && state.global_prefetch > 0 {
            return Err(Fault::Connection(AmqpError::new(
                ReplyCode::NotImplemented,
                format!(
                    "queue '{queue_name}' in vhost '{}' does not support global qos",
                    crate::VHOST
                ),
            )));
        }
        // RabbitMQ 3.10 (probed; still so in 3.13, rabbitmq-website#1973): a quorum queue
        // ignores the consumer's `exclusive` flag, so neither side of the check applies.
        let exclusive = options.exclusive && queue.args.queue_type != QueueType::Quorum;
        // A classic single-active-consumer queue refuses every exclusive consumer, even the
        // first (RabbitMQ 3.10's `exclusive_consume_unavailable`, probed).
        let refused = queue.args.single_active_consumer || queue.consumer_count() > 0;
        if queue.exclusive_consumer || (exclusive && refused) {
            return Err(Fault::channel(
                ReplyCode::AccessRefused,
                format!(
                    "queue '{queue_name}' in vhost '{}' in exclusive use",
                    crate::VHOST
                ),
            ));
        }

        let consumer = ConsumerState {
            serial: next(&mut self.counters.consumer_serial),
            queue: queue_name.clone(),
            no_ack: options.no_ack,
            prefetch: state.prefetch,
            unacked: 0,
            buffered: 0,
            outlet,
        };
        if let Some(state) = self.channels.get_mut(&channel) {
            state.consumers.insert(tag.clone(), consumer);
        }
        if let Some(queue) = self.queues.get_mut(&queue_name) {
            queue.add_consumer((channel, tag.clone()), exclusive, priority);
        }
        self.mark(&queue_name);
        Ok(tag.to_string())
    }

    fn get(
        &mut self,
        channel: ChannelId,
        queue_name: &str,
        no_ack: bool,
    ) -> Result<Option<GetOk>, Fault> {
        check_name("queue name", queue_name)?;
        let (index, queue_name, queue) = self
            .queues
            .get_full(queue_name)
            .ok_or_else(|| Fault::not_found_queue(queue_name))?;
        let queue_name = queue_name.clone();
        queue.check_access(&queue_name, channel.connection)?;
        if queue.args.queue_type == QueueType::Quorum && queue.args.single_active_consumer {
            return Err(Fault::channel(
                ReplyCode::ResourceLocked,
                format!(
                    "cannot obtain access to locked queue '{queue_name}' in vhost '{}'. \
                     basic.get operations are not supported by quorum queues with single active \
                     consumer",
                    crate::VHOST
                ),
            ));
        }
        let queue_name = &queue_name;
        if let Some((_, queue)) = self.queues.get_index_mut(index) {
            queue.last_used_ms = self.now_ms;
        }
        self.expire(index, false);
        let Some((_, queue)) = self.queues.get_index_mut(index) else {
            return Ok(None);
        };
        let Some(entry) = queue.pop_ready() else {
            return Ok(None);
        };
        let queue_id = queue.id;
        let quorum = queue.args.queue_type == QueueType::Quorum;
        let left_with_expired = queue.ready_len();
        // RabbitMQ drops the heads that expired behind it before it counts what is left; a
        // quorum queue's manual-ack get counts first, and drops them right after (3.10.8,
        // probed: the next look finds them gone).
        self.expire(index, false);
        let (left, head_expires_at_ms) = self
            .queues
            .get_index(index)
            .map_or((0, None), |(_, q)| (q.ready_len(), q.head_expires_at_ms()));
        let left = if quorum && !no_ack {
            left_with_expired
        } else {
            left
        };
        if let Some(at) = head_expires_at_ms {
            self.alarm.note(at.saturating_add(1));
        }
        let message_count = u32::try_from(left).unwrap_or(u32::MAX);
        let Some(state) = self.channels.get_mut(&channel) else {
            return Err(Fault::Invalid(format!("{channel} is not open")));
        };
        state.last_delivery_tag += 1;
        let delivery_tag = state.last_delivery_tag;
        // RabbitMQ 3.10 (probed): a quorum queue's `basic.get` names the count even on a
        // first delivery (0), where a consumer's first delivery has no such header.
        let delivery = make_delivery(delivery_tag, &SmolStr::default(), &entry, quorum);
        if no_ack {
            self.held.release(&entry.message);
        } else {
            if let Some(queue) = self.queues.get_mut(queue_name) {
                queue.unacked += 1;
                // A consumer of its own until settled (see `Queue::gets_unsettled`).
                if quorum {
                    queue.gets_unsettled += 1;
                }
            }
            let unacked = Unacked {
                queue: queue_name.clone(),
                queue_id,
                consumer_tag: SmolStr::default(),
                consumer_serial: 0,
                delivered_at_ms: self.now_ms,
                entry,
            };
            if let Some(timeout_ms) = self.limits.consumer_timeout_ms
                && state.unacked.is_empty()
            {
                self.alarm
                    .note(self.now_ms.saturating_add(timeout_ms).saturating_add(1));
            }
            state.unacked.insert(delivery_tag, unacked);
        }
        Ok(Some(GetOk {
            delivery,
            message_count,
        }))
    }

    /// Removes a consumer from its channel and queue; deletes an auto-delete queue that lost
    /// its last consumer.
    fn cancel(&mut self, channel: ChannelId, consumer_tag: &str, reason: ConsumerEnd) {
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        let Some(consumer) = state.consumers.shift_remove(consumer_tag) else {
            return;
        };
        // A quorum queue keeps counting a cancelled consumer until its deliveries are settled
        // (see `Queue::cancelled_holding`).
        if consumer.unacked > 0
            && let Some(queue) = self.queues.get_mut(&consumer.queue)
            && queue.args.queue_type == QueueType::Quorum
        {
            queue
                .cancelled_holding
                .push((consumer.serial, consumer.unacked));
        }
        if let Some(orphaned) = self.detach(channel, consumer_tag, &consumer.queue, reason) {
            self.delete_queue(&orphaned);
        }
    }

    /// Takes a removed consumer out of its queue's rotation and announces its end. Returns the
    /// queue if it is auto-delete and has just lost its last consumer.
    fn detach(
        &mut self,
        channel: ChannelId,
        consumer_tag: &str,
        queue_name: &str,
        reason: ConsumerEnd,
    ) -> Option<SmolStr> {
        let consumer_tag = SmolStr::from(consumer_tag);
        if queue_name == REPLY_TO {
            self.forget_reply_consumer(channel);
        }
        let now_ms = self.now_ms;
        let mut hand_over = false;
        let mut unused_expires_at_ms = None;
        let orphaned = self.queues.get_mut(queue_name).and_then(|queue| {
            queue.remove_consumer(&(channel, consumer_tag.clone()));
            queue.last_used_ms = now_ms;
            unused_expires_at_ms = queue.unused_expires_at_ms();
            // With a single active consumer the next one may now take what was waiting.
            hand_over = queue.args.single_active_consumer && queue.ready_len() > 0;
            (queue.auto_delete && queue.consumer_count() == 0).then(|| SmolStr::from(queue_name))
        });
        if let Some(at) = unused_expires_at_ms {
            self.alarm.note(at);
        }
        if hand_over {
            self.dirty.insert(SmolStr::from(queue_name));
        }
        self.events.push(Event::ConsumerEnded {
            channel,
            consumer_tag,
            reason,
        });
        orphaned
    }

    /// ack / nack / reject of one tag or (`multiple`) every tag up to it.
    fn settle(
        &mut self,
        channel: ChannelId,
        channel_index: usize,
        delivery_tag: u64,
        multiple: bool,
        outcome: Outcome,
    ) -> Result<(), Fault> {
        let Some((_, state)) = self.channels.get_index_mut(channel_index) else {
            return Err(Fault::Invalid(format!("{channel} is not open")));
        };
        let unknown = || {
            Fault::channel(
                ReplyCode::PreconditionFailed,
                format!("unknown delivery tag {delivery_tag}"),
            )
        };
        let in_tx = state.tx.is_some();
        // The usual case, one delivery outside a transaction, allocates nothing.
        if !multiple && !in_tx {
            let unacked = state.unacked.remove(&delivery_tag).ok_or_else(unknown)?;
            let through_consumer = usize::from(unacked.consumer_serial != 0);
            self.finish(channel, channel_index, unacked, outcome);
            self.limiter_settled(channel_index, through_consumer);
            return Ok(());
        }
        let settled = state
            .unacked
            .take_tagged(delivery_tag, multiple)
            .ok_or_else(unknown)?;
        if in_tx {
            return self.hold_settles(channel_index, settled, outcome);
        }
        let settled: Vec<Unacked> = settled.into_iter().map(|(_, unacked)| unacked).collect();
        let through_consumers = through_consumers(&settled);
        self.finish_in_batches(channel, channel_index, settled, outcome);
        self.limiter_settled(channel_index, through_consumers);
        Ok(())
    }

    /// Tells a channel's limiter that a settle took `count` consumer deliveries off it (see
    /// `ChannelState::limiter_volume`). RabbitMQ's channel does this after it has handed the
    /// settles to the queues, so the queues run again after it.
    /// `channel_index`: where the channel is in `channels` (settling removes no channel).
    fn limiter_settled(&mut self, channel_index: usize, count: usize) {
        let Some((_, state)) = self.channels.get_index_mut(channel_index) else {
            return;
        };
        if state.limiter_settled(count) {
            let queues: Vec<SmolStr> = state.consumers.values().map(|c| c.queue.clone()).collect();
            self.dirty.extend(queues);
        }
    }

    /// Settles deliveries as RabbitMQ's channel does (rabbit_channel's foreach_per_queue, probed
    /// on 3.10.8): in batches by queue and consumer tag, in that order byte by byte
    /// (`basic.get`'s, which have no tag, first), each batch finished and its queue run before
    /// the next. So what one batch's requeue or credit lets a queue deliver goes out before the
    /// next batch is settled: after a `basic.recover` with two consumers on one queue, the
    /// first consumer's messages are redelivered (round-robin) before the second's come back.
    fn finish_in_batches(
        &mut self,
        channel: ChannelId,
        channel_hint: usize,
        mut settled: Vec<Unacked>,
        outcome: Outcome,
    ) {
        // A stable sort: each batch keeps its tag order.
        settled.sort_by(|a, b| (&a.queue, &a.consumer_tag).cmp(&(&b.queue, &b.consumer_tag)));
        let mut batch: Option<(SmolStr, SmolStr)> = None;
        for unacked in settled {
            let key = (unacked.queue.clone(), unacked.consumer_tag.clone());
            // A new batch: the last one's queue runs first. (The last batch's runs with the
            // rest of the call's work.)
            if batch.as_ref().is_some_and(|last| *last != key) {
                self.run_until_idle();
            }
            batch = Some(key);
            self.finish(channel, channel_hint, unacked, outcome);
        }
    }

    /// Takes a delivery (already removed from its channel's unacked map) off the books: its
    /// consumer and channel get the credit back, its queue counts one unacked less, and the
    /// message is forgotten, dead-lettered or requeued (see `Outcome`). Marks the
    /// queues that may now deliver.
    /// `channel_hint`: where the channel is in `channels` (see `hinted_index`), or anything.
    fn finish(
        &mut self,
        channel: ChannelId,
        channel_hint: usize,
        unacked: Unacked,
        outcome: Outcome,
    ) {
        // Whether this settle gives a consumer that had no credit some back.
        let mut unblocked = false;
        let found = hinted_index(&self.channels, channel_hint, &channel);
        if let Some((_, state)) = found.and_then(|at| self.channels.get_index_mut(at)) {
            if unacked.consumer_serial != 0 {
                state.consumer_unacked -= 1;
                if state.global_prefetch > 0 {
                    let queues: Vec<SmolStr> =
                        state.consumers.values().map(|c| c.queue.clone()).collect();
                    self.dirty.extend(queues);
                }
            }
            let consumer = state
                .consumers
                .get_mut(&unacked.consumer_tag)
                .filter(|consumer| consumer.serial == unacked.consumer_serial);
            if let Some(consumer) = consumer {
                unblocked = !consumer.has_credit();
                consumer.unacked -= 1;
            }
        }
        let Unacked {
            queue: name,
            queue_id,
            consumer_tag,
            entry,
            ..
        } = unacked;
        let Some(queue) = self.queues.get_mut(&name).filter(|q| q.id == queue_id) else {
            // Its queue was deleted while the message was out: nothing to return it to.
            self.held.release(&entry.message);
            return;
        };
        queue.unacked -= 1;
        // A consumer that only settled goes with its last delivery; that is use, so the
        // queue's `x-expires` time starts again (probed on 3.10.8).
        if queue.has_settling_consumers() && queue.settled_by(unacked.consumer_serial) {
            queue.last_used_ms = self.now_ms;
            if let Some(at) = queue.unused_expires_at_ms() {
                self.alarm.note(at);
            }
        }
        if unblocked && queue.args.queue_type == QueueType::Quorum {
            queue.rejoin_at_back(&(channel, consumer_tag));
        }
        // The consumer's credit came back: dispatch, if there is something to dispatch.
        let back = matches!(outcome, Outcome::Requeue | Outcome::Return);
        if (queue.ready_len() > 0 || back) && !self.dirty.contains(&name) {
            self.dirty.insert(name.clone());
        }
        match outcome {
            Outcome::Ack => self.held.release(&entry.message),
            Outcome::Reject => self.dead_letter(&name, entry, DeathReason::Rejected),
            Outcome::Requeue | Outcome::Return => {
                let quorum = queue.args.queue_type == QueueType::Quorum;
                let delivery_count = entry.delivery_count + 1;
                let over_limit = quorum
                    && queue
                        .args
                        .delivery_limit
                        .is_some_and(|l| delivery_count > l);
                // RabbitMQ 3.10 (probed): a classic queue puts the message back where it was;
                // a quorum queue serves one returned by a closed channel first, and a nacked
                // (or recovered) one too when it has an `x-delivery-limit`, else appends that
                // to the back; in the order they come back.
                let (seq, returned) = if quorum {
                    let seq = next(&mut self.counters.message_seq);
                    let first = outcome == Outcome::Return || queue.args.delivery_limit.is_some();
                    (seq, first)
                } else {
                    (entry.seq, false)
                };
                queue.returns_batch |= returned;
                let entry = Queued {
                    seq,
                    returned,
                    redelivered: true,
                    delivery_count,
                    ..entry
                };
                if over_limit {
                    self.dead_letter(&name, entry, DeathReason::DeliveryLimit);
                    return;
                }
                if let Some(at) = entry.expires_at_ms {
                    self.alarm.note(at.saturating_add(1));
                }
                queue.requeue(entry);
                // Past the length limit, `drop-head` drops (RabbitMQ 3.10, probed): a classic
                // queue at once for a nack or a recover, one message at a time in tag order;
                // for a closed channel's messages, and in a quorum queue, `run_until_idle`
                // drops once the whole batch is back.
                if !quorum && outcome == Outcome::Requeue && queue.must_drop_head() {
                    for head in queue.pop_over_limit() {
                        self.dead_letter(&name, head, DeathReason::Maxlen);
                    }
                }
            }
        }
    }

    /// Runs the marked queues until nothing more can happen: expire heads, dispatch. A
    /// queue's work can mark others (dead-lettering), so this loops until none is marked.
    fn run_until_idle(&mut self) {
        for _ in 0..IDLE_ROUNDS_MAX {
            let Some((queue, hint)) = self.dirty.pop_first() else {
                return;
            };
            // Looked up once: dropping, expiring and dispatching never remove a queue, so the
            // index stays valid for all the steps.
            let found = hinted_index(&self.queues, hint, &queue);
            let Some((index, (_, state))) =
                found.and_then(|at| Some((at, self.queues.get_index(at)?)))
            else {
                continue;
            };
            // A requeue can leave a `drop-head` queue over its length limit (see `finish`;
            // RabbitMQ 3.10, probed): a classic queue drops the head before it delivers; a
            // quorum queue delivers first (the consumer that requeued may take one) and drops
            // what is still over after. (Delivering never takes a queue over; the usual queue
            // is within its limit and skips both.)
            // A message over the limit on its own is offered first too (see
            // `Queue::offered_before_dropping`).
            let deliver_first =
                state.args.queue_type == QueueType::Quorum || state.offered_before_dropping;
            let over = state.must_drop_head();
            if over && !deliver_first {
                self.drop_over_limit(index, false);
            }
            self.expire(index, true);
            self.dispatch(index);
            if deliver_first && let Some((_, queue)) = self.queues.get_index_mut(index) {
                let returns_batch = std::mem::take(&mut queue.returns_batch);
                queue.offered_before_dropping = false;
                if over {
                    self.drop_over_limit(index, returns_batch);
                }
            }
            // Dispatch stops at a head that expired by now (RabbitMQ drops expired heads after
            // every message it hands out); drop it and go on. Each turn drops one or more.
            while self.expire(index, false) {
                self.dispatch(index);
            }
            // Its head may be one that had waited behind others; its TTL is a deadline now.
            if let Some(at) = self
                .queues
                .get_index(index)
                .and_then(|(_, q)| q.head_expires_at_ms())
            {
                self.alarm.note(at.saturating_add(1));
            }
        }
        tracing::error!("run_until_idle did not reach idle; this is a bug");
        debug_assert!(false, "run_until_idle did not reach idle");
    }

    /// Dead-letters (reason `maxlen`) the heads a `drop-head` queue is over its length limit
    /// by, oldest first, or with `last_first` newest first (see `Queue::returns_batch`);
    /// nothing for a queue within it or one that refuses publishes instead.
    fn drop_over_limit(&mut self, queue_index: usize, last_first: bool) {
        let Some((queue_name, queue)) = self.queues.get_index_mut(queue_index) else {
            return;
        };
        if !queue.must_drop_head() {
            return;
        }
        let queue_name = queue_name.clone();
        let mut dropped = queue.pop_over_limit();
        if last_first {
            dropped.reverse();
        }
        for head in dropped {
            self.dead_letter(&queue_name, head, DeathReason::Maxlen);
        }
    }

    /// Drops (or dead-letters) expired messages at the head of a queue, as RabbitMQ does: only
    /// the head is checked, so an expired message behind a live one waits. With `strictly`,
    /// a message expiring at this very millisecond is kept, so a TTL of 0 still reaches a
    /// consumer that can take it at once; except, in a classic queue, one that came back from
    /// a consumer (see `Queue::pop_expired`). True when it dropped something.
    fn expire(&mut self, queue_index: usize, strictly: bool) -> bool {
        let now_ms = self.now_ms;
        let mut dropped = false;
        // Bounded by the queue's length.
        loop {
            let Some((queue_name, queue)) = self.queues.get_index_mut(queue_index) else {
                return dropped;
            };
            let Some(head) = queue.pop_expired(now_ms, strictly) else {
                return dropped;
            };
            let queue_name = queue_name.clone();
            self.dead_letter(&queue_name, head, DeathReason::Expired);
            dropped = true;
        }
    }

    /// Hands ready messages of a queue to its consumers, round-robin among those with prefetch
    /// credit (per consumer and per channel), until the queue is empty, every consumer is
    /// blocked, or (after the first) the head has expired by now: RabbitMQ drops expired heads
    /// after every message it hands out, so only a message delivered first, as it arrives,
    /// goes out at its very expiry (a TTL of 0). Each turn delivers one message, so the loop
    /// is bounded by the queue's length.
    fn dispatch(&mut self, queue_index: usize) {
        let Engine {
            queues,
            channels,
            events,
            held,
            delivery_faults,
            delayed,
            counters,
            now_ms,
            limits,
            alarm,
            ..
        } = self;
        let Some((queue_name, queue)) = queues.get_index_mut(queue_index) else {
            return;
        };
        let quorum = queue.args.queue_type == QueueType::Quorum;
        let mut delivered = false;
        while queue.ready_len() > 0 {
            if delivered && queue.head_expired(*now_ms) {
                break;
            }
            // The consumer's channel and its record by index, found while checking credit, so
            // they are hashed once per delivery (nothing is removed in between).
            let with_credit = |(channel, tag): &(ChannelId, SmolStr)| {
                let (channel_index, _, state) = channels.get_full(channel)?;
                let (consumer_index, _, consumer) = state.consumers.get_full(tag)?;
                // A quorum queue's consumers take credit from the queue, not from the
                // channel's limiter (RabbitMQ 3.10, probed): a global qos set after they
                // started does not hold them back. A classic queue asks the limiter for every
                // consumer, one that does not ack included (probed).
                let credit = consumer.can_take() && (quorum || state.has_global_credit());
                credit.then_some((channel_index, consumer_index))
            };
            let Some(((channel_id, tag), (channel_index, consumer_index))) =
                queue.next_consumer(with_credit)
            else {
                break;
            };
            let Some((_, channel)) = channels.get_index_mut(channel_index) else {
                break;
            };
            let Some((_, consumer)) = channel.consumers.get_index_mut(consumer_index) else {
                break;
            };
            let Some(entry) = queue.pop_ready() else {
                break;
            };
            delivered = true;
            let fault = delivery_faults
                .iter()
                .position(|(q, _)| q == queue_name)
                .map(|position| delivery_faults.remove(position).1);
            channel.last_delivery_tag += 1;
            let delivery_tag = channel.last_delivery_tag;
            let count_header = quorum && entry.delivery_count > 0;
            let delivery = make_delivery(delivery_tag, &tag, &entry, count_header);
            if fault == Some(DeliveryFault::Duplicate) {
                let copy = Queued {
                    seq: next(&mut counters.message_seq),
                    returned: false,
                    redelivered: true,
                    ..entry.clone()
                };
                held.add(&copy.message);
                queue.enqueue(copy);
            }
            if consumer.no_ack {
                consumer.buffered += 1;
                held.release(&entry.message);
            } else {
                consumer.unacked += 1;
                channel.consumer_unacked += 1;
                // A quorum queue does not ask the channel's limiter (see `limiter_volume`).
                if channel.global_prefetch > 0 && !quorum {
                    channel.limiter_volume += 1;
                }
                queue.unacked += 1;
                let unacked = Unacked {
                    queue: queue_name.clone(),
                    queue_id: queue.id,
                    consumer_tag: tag,
                    consumer_serial: consumer.serial,
                    delivered_at_ms: *now_ms,
                    entry,
                };
                // The channel's oldest unacked delivery sets its consumer timeout.
                if let Some(timeout_ms) = limits.consumer_timeout_ms
                    && channel.unacked.is_empty()
                {
                    alarm.note(now_ms.saturating_add(timeout_ms).saturating_add(1));
                }
                channel.unacked.insert(delivery_tag, unacked);
            }
            match fault {
                Some(DeliveryFault::Drop) => {
                    // A no-ack delivery was settled as it was sent; lost, it takes no place in
                    // the consumer's buffer.
                    if consumer.no_ack {
                        consumer.buffered -= 1;
                    }
                    tracing::debug!(
                        queue = %queue_name,
                        delivery_tag,
                        "fault hook: delivery dropped"
                    );
                }
                Some(DeliveryFault::Delay(delay_ms)) if delayed.len() < FAULTS_ARMED_MAX => {
                    alarm.note(now_ms.saturating_add(delay_ms));
                    delayed.push(Delayed {
                        due_ms: now_ms.saturating_add(delay_ms),
                        channel: channel_id,
                        consumer_serial: consumer.serial,
                        no_ack: consumer.no_ack,
                        delivery,
                    });
                }
                _ => emit(events, consumer.outlet.as_mut(), channel_id, delivery),
            }
        }
    }

    /// The consequences of closing a channel, keeping its record (an error close keeps it until
    /// the client releases it): consumers cancelled, unacked deliveries requeued (and marked
    /// for dispatch to whoever else consumes), auto-delete queues that lost their last consumer
    /// deleted.
    fn shut_channel(&mut self, channel: ChannelId) {
        // An open transaction goes first: its settled deliveries are requeued with the rest.
        self.roll_back(channel);
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        let consumers = std::mem::take(&mut state.consumers);
        let unacked: Vec<Unacked> = state.unacked.take_all().collect();
        for queue in std::mem::take(&mut state.known_by) {
            if let Some(queue) = self.queues.get_mut(&queue) {
                queue.forget_publisher(Publisher::Channel(channel));
            }
        }
        let mut orphaned = BTreeSet::new();
        for (tag, consumer) in consumers {
            orphaned.extend(self.detach(
                channel,
                &tag,
                &consumer.queue,
                ConsumerEnd::ChannelClosed,
            ));
        }
        for delivery in unacked {
            self.finish(channel, usize::MAX, delivery, Outcome::Return);
        }
        for queue in &orphaned {
            self.delete_queue(queue);
        }
    }

    /// Forgets a channel record and frees its channel number.
    fn release_channel(&mut self, channel: ChannelId) {
        self.channels.shift_remove(&channel);
        if let Some(connection) = self.connections.get_mut(&channel.connection) {
            connection.channels.remove(&channel);
        }
    }

    /// The consequences of closing a connection, keeping its record: every channel closed and
    /// released, exclusive queues deleted.
    fn shut_connection(&mut self, connection: ConnectionId) {
        let Some(state) = self.connections.get_mut(&connection) else {
            return;
        };
        let channels = std::mem::take(&mut state.channels);
        for channel in channels {
            self.shut_channel(channel);
            self.channels.shift_remove(&channel);
        }
        let exclusive: Vec<SmolStr> = self
            .queues
            .iter()
            .filter(|(_, queue)| queue.owner == Some(connection))
            .map(|(name, _)| name.clone())
            .collect();
        for queue in &exclusive {
            self.delete_queue(queue);
        }
    }

    /// Deletes a queue: its ready messages are dropped, its consumers told, its bindings
    /// removed, and auto-delete exchanges left without bindings deleted. Deliveries from it that
    /// are still unacked stay on their channels; settling them later just forgets them.
    fn delete_queue(&mut self, name: &str) {
        let Some(mut queue) = self.queues.shift_remove(name) else {
            return;
        };
        self.topology += 1;
        for entry in queue.drain_ready() {
            self.held.release(&entry.message);
        }
        for letter in queue.dead_letters.drain() {
            self.held.release(&letter.message);
        }
        // Its dead-letter worker stops with it.
        if queue.args.dead_letter_at_least_once {
            for other in self.queues.values_mut() {
                other.forget_publisher(Publisher::DeadLetterWorker(queue.id));
            }
        }
        let consumers: Vec<(ChannelId, SmolStr)> = queue.consumers().cloned().collect();
        for (channel, tag) in consumers {
            if let Some(state) = self.channels.get_mut(&channel) {
                state.consumers.shift_remove(&tag);
            }
            self.events.push(Event::ConsumerEnded {
                channel,
                consumer_tag: tag,
                reason: ConsumerEnd::QueueDeleted,
            });
        }
        self.remove_bindings_to(&Destination::Queue(name.into()));
        self.dirty.remove(name);
        tracing::debug!(queue = name, "queue deleted");
    }

    fn all_unacked(&self) -> impl Iterator<Item = (&u64, &Unacked)> {
        self.channels.values().flat_map(ChannelState::all_unacked)
    }
}

/// Hands a delivery to its consumer: straight into the in-process client's buffer when it
/// attached one, else into the outbox (for the wire server's tap, or the client's flush).
fn emit(
    events: &mut Vec<Event>,
    outlet: Option<&mut ConsumerOutlet>,
    channel: ChannelId,
    delivery: Delivery,
) {
    match outlet {
        Some(outlet) => outlet.send(delivery),
        None => events.push(Event::Deliver { channel, delivery }),
    }
}

/// A delivery of a queued message; with `count_header`, a quorum queue's `x-delivery-count`,
/// set as RabbitMQ sets it (`rabbit_basic:add_header`), which sorts the headers.
fn make_delivery(
    delivery_tag: u64,
    consumer_tag: &SmolStr,
    entry: &Queued,
    count_header: bool,
) -> Delivery {
    let mut delivery = Delivery::new(
        delivery_tag,
        consumer_tag,
        &entry.message,
        entry.redelivered,
    );
    if count_header {
        let count = i64::try_from(entry.delivery_count).unwrap_or(i64::MAX);
        // Copy-on-write: the broker's copy of the properties stays as published.
        let headers = Arc::make_mut(&mut delivery.properties)
            .headers
            .get_or_insert_with(FieldTable::new);
        headers.insert("x-delivery-count".into(), FieldValue::I64(count));
        headers.sort_keys();
    }
    delivery
}

/// How many of these settled deliveries went to consumers (not `basic.get`).
fn through_consumers(settled: &[Unacked]) -> usize {
    settled.iter().filter(|u| u.consumer_serial != 0).count()
}

/// Appends to an introspection log, dropping the oldest entry past [`INTROSPECTION_LOG_MAX`].
fn push_bounded<T>(log: &mut VecDeque<T>, item: T) {
    if log.len() >= INTROSPECTION_LOG_MAX {
        log.pop_front();
    }
    log.push_back(item);
}

fn declare_ok(name: &str, queue: &Queue) -> QueueDeclareOk {
    QueueDeclareOk {
        name: name.to_owned(),
        message_count: u32::try_from(queue.ready_len()).unwrap_or(u32::MAX),
        consumer_count: u32::try_from(queue.consumer_count()).unwrap_or(u32::MAX),
    }
}

/// Names travel as AMQP short strings; a client library refuses longer ones before sending.
fn check_name(what: &str, name: &str) -> Result<(), Fault> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Fault::Invalid(format!(
            "{what} is {} bytes; AMQP short strings hold at most {NAME_BYTES_MAX}",
            name.len()
        )));
    }
    Ok(())
}

/// RabbitMQ reserves the `amq.` prefix for the broker's own exchanges and queues.
fn check_not_reserved(what: &str, name: &str) -> Result<(), Fault> {
    if name.starts_with("amq.") {
        return Err(Fault::channel(
            ReplyCode::AccessRefused,
            format!("{what} name '{name}' contains reserved prefix 'amq.*'"),
        ));
    }
    Ok(())
}
