//! The broker as a pure state machine: AMQP methods in, deliveries and consumer ends out.
//!
//! Every method runs to completion. A call that makes messages deliverable (publish, consume,
//! ack, nack, reject, a channel or connection close) dispatches them before it returns and
//! leaves the deliveries in an outbox ([`Engine::take_events`]); there are no timers and no
//! background work, so the same calls always produce the same events.
//!
//! Each fallible method first checks the channel is open, then validates everything before it
//! changes anything: a refused call changes nothing except closing its channel (or connection),
//! which requeues what that channel had in flight. So a channel error never loses or duplicates
//! a message.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::binding::BindingInfo;
use crate::channel::{ChannelId, ChannelState};
use crate::connection::{ConnectionId, ConnectionState};
use crate::consumer::{ConsumeOptions, ConsumerState};
use crate::delivery::{Delivery, Unacked};
use crate::error::{AmqpError, Error, Fault, ReplyCode};
use crate::exchange::{
    DEFAULT_EXCHANGE, Exchange, ExchangeInfo, ExchangeKind, ExchangeOptions, PREDECLARED,
};
use crate::limits::{Limits, NAME_BYTES_MAX};
use crate::message::{Confirm, Message, Properties};
use crate::queue::{Queue, QueueDeclareOk, QueueInfo, QueueOptions, Queued};

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
        /// The delivery (it names its consumer); boxed because properties make it large.
        delivery: Box<Delivery>,
    },
    /// A consumer will receive nothing more.
    ConsumerEnded {
        /// The consumer's channel.
        channel: ChannelId,
        /// The consumer.
        consumer_tag: String,
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
    /// Acked, or nacked / rejected without requeue (dead-lettering is not implemented: dropped).
    Forget,
    /// Nacked or rejected with requeue, or in flight when its channel closed.
    Requeue,
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
    exchanges: BTreeMap<String, Exchange>,
    queues: BTreeMap<String, Queue>,
    connections: BTreeMap<ConnectionId, ConnectionState>,
    channels: BTreeMap<ChannelId, ChannelState>,
    counters: Counters,
    held: Usage,
    bindings_total: usize,
    /// Outbox; bounded by what one call can make deliverable (prefetch credit and queue
    /// lengths), and emptied by the client after every call.
    events: Vec<Event>,
}

impl Default for Engine {
    fn default() -> Self {
        Engine::new(Limits::default())
    }
}

impl Engine {
    /// An empty broker with RabbitMQ's pre-declared exchanges (`""`, `amq.direct`,
    /// `amq.fanout`).
    pub fn new(limits: Limits) -> Engine {
        let durable = ExchangeOptions {
            durable: true,
            ..ExchangeOptions::default()
        };
        let exchanges = PREDECLARED
            .iter()
            .map(|&(name, kind)| (name.to_owned(), Exchange::new(kind, durable)))
            .collect();
        Engine {
            limits,
            exchanges,
            queues: BTreeMap::new(),
            connections: BTreeMap::new(),
            channels: BTreeMap::new(),
            counters: Counters::default(),
            held: Usage::default(),
            bindings_total: 0,
            events: Vec::new(),
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
        self.connections.remove(&connection);
    }

    /// Opens a channel on the lowest free channel number.
    pub fn open_channel(&mut self, connection: ConnectionId) -> Result<ChannelId, Error> {
        let max = self.limits.channels_per_connection_max;
        let state = match self.connections.get_mut(&connection) {
            None => return Err(Error::Closed),
            Some(ConnectionState {
                closed: Some(reason),
                ..
            }) => {
                return Err(Error::ConnectionClosed(reason.clone()));
            }
            Some(state) => state,
        };
        let used: BTreeSet<u16> = state
            .channels
            .iter()
            .filter_map(|id| self.channels.get(id).map(|channel| channel.number))
            .collect();
        let Some(number) = (1..=max).find(|number| !used.contains(number)) else {
            return Err(Error::Invalid(format!(
                "{connection} has {max} channels open, the negotiated channel_max"
            )));
        };
        let id = ChannelId {
            connection,
            serial: next(&mut self.counters.channel),
        };
        state.channels.insert(id);
        self.channels.insert(id, ChannelState::new(number));
        Ok(id)
    }

    /// Ok while the channel is open; otherwise why not.
    pub fn channel_status(&self, channel: ChannelId) -> Result<(), Error> {
        match self.channels.get(&channel) {
            Some(ChannelState { closed: None, .. }) => Ok(()),
            Some(ChannelState {
                closed: Some(reason),
                ..
            }) => Err(Error::ChannelClosed(reason.clone())),
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
        match status {
            Err(Error::Closed) => Ok(()),
            other => other,
        }
    }

    // ---------------------------------------------------------------- AMQP methods

    /// `exchange.declare`.
    pub fn exchange_declare(
        &mut self,
        channel: ChannelId,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) -> Result<(), Error> {
        self.run(channel, |engine| {
            engine.declare_exchange(name, kind, options)
        })
    }

    /// `queue.declare`; an empty name gets a server-generated `amq.gen-<n>`.
    pub fn queue_declare(
        &mut self,
        channel: ChannelId,
        name: &str,
        options: QueueOptions,
    ) -> Result<QueueDeclareOk, Error> {
        self.run(channel, |engine| {
            engine.declare_queue(channel.connection, name, options)
        })
    }

    /// `queue.bind`.
    pub fn queue_bind(
        &mut self,
        channel: ChannelId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), Error> {
        self.run(channel, |engine| {
            engine.bind(channel.connection, queue, exchange, routing_key)
        })
    }

    /// `basic.qos` with `global = false`: the prefetch of consumers started on this channel from
    /// now on (RabbitMQ's per-consumer semantics; existing consumers keep theirs). 0 means
    /// unlimited.
    pub fn basic_qos(&mut self, channel: ChannelId, prefetch_count: u16) -> Result<(), Error> {
        self.run(channel, |engine| {
            if let Some(state) = engine.channels.get_mut(&channel) {
                state.prefetch = prefetch_count;
            }
            Ok(())
        })
    }

    /// `basic.publish` on a channel in confirm mode: routes and enqueues synchronously, then
    /// answers the confirm. Unroutable messages are dropped and acked (not mandatory).
    pub fn basic_publish(
        &mut self,
        channel: ChannelId,
        exchange: &str,
        routing_key: &str,
        properties: Properties,
        body: Bytes,
    ) -> Result<Confirm, Error> {
        self.run(channel, |engine| {
            engine.publish(channel.connection, exchange, routing_key, properties, body)
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
        self.run(channel, |engine| engine.consume(channel, queue, options))
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
        self.run(channel, |engine| {
            engine.settle(channel, delivery_tag, multiple, Outcome::Forget)
        })
    }

    /// `basic.nack`. Requeued messages go back to their original position with `redelivered`;
    /// the others are dropped (no dead-lettering yet).
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
            Outcome::Forget
        };
        self.run(channel, |engine| {
            engine.settle(channel, delivery_tag, multiple, outcome)
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
        self.dispatch(&queue);
    }

    // ---------------------------------------------------------------- introspection

    /// Ready messages in a queue.
    pub fn queue_depth(&self, queue: &str) -> Option<usize> {
        self.queues.get(queue).map(Queue::ready_len)
    }

    /// Messages of a queue delivered and not yet settled.
    pub fn unacked_count(&self, queue: &str) -> Option<usize> {
        self.queues.get(queue).map(|q| q.unacked)
    }

    /// Consumers of a queue.
    pub fn consumer_count(&self, queue: &str) -> Option<usize> {
        self.queues.get(queue).map(Queue::consumer_count)
    }

    /// Every exchange, sorted by name.
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        self.exchanges
            .iter()
            .map(|(name, exchange)| exchange.info(name))
            .collect()
    }

    /// Every queue, sorted by name.
    pub fn queues(&self) -> Vec<QueueInfo> {
        self.queues
            .iter()
            .map(|(name, queue)| queue.info(name))
            .collect()
    }

    /// Every explicit binding, sorted by exchange, then binding key, then queue. The default
    /// exchange's implicit bindings are not listed.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        self.exchanges
            .iter()
            .flat_map(|(name, exchange)| exchange.bindings.infos(name))
            .collect()
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
                return Err(format!("queue '{name}' is not in enqueue order"));
            }
            let unacked = self
                .all_unacked()
                .filter(|(_, u)| u.queue == *name && u.queue_id == queue.id);
            if unacked.count() != queue.unacked {
                return Err(format!("queue '{name}' counts {} unacked", queue.unacked));
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
        let ready = self.queues.values().map(Queue::ready_len).sum::<usize>();
        let ready_bytes = self
            .queues
            .values()
            .map(Queue::ready_body_bytes)
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
            if channel.closed.is_some()
                && !(channel.consumers.is_empty() && channel.unacked.is_empty())
            {
                return Err(format!("{id} is closed but holds consumers or deliveries"));
            }
            for (tag, consumer) in &channel.consumers {
                let unacked = channel
                    .unacked
                    .values()
                    .filter(|u| u.consumer_serial == consumer.serial);
                if unacked.count() != consumer.unacked {
                    return Err(format!(
                        "consumer '{tag}' on {id} counts {} unacked",
                        consumer.unacked
                    ));
                }
                let listed = self
                    .queues
                    .get(&consumer.queue)
                    .is_some_and(|q| q.consumers().any(|(c, t)| c == id && t == tag));
                if !listed {
                    return Err(format!(
                        "consumer '{tag}' on {id} is not listed by its queue"
                    ));
                }
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

    /// How many deliveries can wait in a consumer's buffer at once (None: unlimited). The
    /// in-process client sizes its flume channels with it.
    pub(crate) fn consumer_window(&self, channel: ChannelId, consumer_tag: &str) -> Option<usize> {
        self.channels
            .get(&channel)?
            .consumers
            .get(consumer_tag)?
            .window()
    }

    // ---------------------------------------------------------------- validation and effects

    /// Runs one AMQP method on an open channel and applies the consequences of a refusal.
    fn run<T>(
        &mut self,
        channel: ChannelId,
        method: impl FnOnce(&mut Engine) -> Result<T, Fault>,
    ) -> Result<T, Error> {
        self.channel_status(channel)?;
        match method(self) {
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
                self.shut_connection(channel.connection);
                if let Some(state) = self.connections.get_mut(&channel.connection) {
                    state.closed = Some(reason.clone());
                }
                Err(Error::Connection(reason))
            }
            Err(Fault::Invalid(text)) => Err(Error::Invalid(text)),
        }
    }

    fn declare_exchange(
        &mut self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) -> Result<(), Fault> {
        check_name("exchange name", name)?;
        if options.passive {
            return match self.exchanges.contains_key(name) {
                true => Ok(()),
                false => Err(Fault::not_found_exchange(name)),
            };
        }
        if name == DEFAULT_EXCHANGE {
            return Err(Fault::default_exchange());
        }
        check_not_reserved("exchange", name)?;
        if let Some(existing) = self.exchanges.get(name) {
            return existing.check_equivalent(name, kind, options);
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
        self.exchanges
            .insert(name.to_owned(), Exchange::new(kind, options));
        Ok(())
    }

    fn declare_queue(
        &mut self,
        connection: ConnectionId,
        name: &str,
        options: QueueOptions,
    ) -> Result<QueueDeclareOk, Fault> {
        check_name("queue name", name)?;
        if options.passive {
            let queue = self
                .queues
                .get(name)
                .ok_or_else(|| Fault::not_found_queue(name))?;
            queue.check_access(name, connection)?;
            return Ok(declare_ok(name, queue));
        }
        let name = if name.is_empty() {
            format!("amq.gen-{}", next(&mut self.counters.queue_name))
        } else {
            check_not_reserved("queue", name)?;
            name.to_owned()
        };
        if let Some(existing) = self.queues.get(&name) {
            existing.check_access(&name, connection)?;
            existing.check_equivalent(&name, options)?;
            return Ok(declare_ok(&name, existing));
        }
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
        let queue = Queue::new(next(&mut self.counters.queue_id), options, owner);
        let ok = declare_ok(&name, &queue);
        self.queues.insert(name, queue);
        Ok(ok)
    }

    fn bind(
        &mut self,
        connection: ConnectionId,
        queue: &str,
        exchange: &str,
        routing_key: &str,
    ) -> Result<(), Fault> {
        check_name("queue name", queue)?;
        check_name("exchange name", exchange)?;
        check_name("routing key", routing_key)?;
        if exchange == DEFAULT_EXCHANGE {
            return Err(Fault::default_exchange());
        }
        if !self.exchanges.contains_key(exchange) {
            return Err(Fault::not_found_exchange(exchange));
        }
        let target = self
            .queues
            .get(queue)
            .ok_or_else(|| Fault::not_found_queue(queue))?;
        target.check_access(queue, connection)?;
        if self.bindings_total >= self.limits.bindings_max {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "cannot bind queue '{queue}' to exchange '{exchange}': binding limit ({}) is reached",
                    self.limits.bindings_max
                ),
            ));
        }
        if let Some(source) = self.exchanges.get_mut(exchange)
            && source.bindings.insert(routing_key, queue)
        {
            self.bindings_total += 1;
        }
        Ok(())
    }

    fn publish(
        &mut self,
        connection: ConnectionId,
        exchange_name: &str,
        routing_key: &str,
        properties: Properties,
        body: Bytes,
    ) -> Result<Confirm, Fault> {
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
        let exchange = self
            .exchanges
            .get(exchange_name)
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
        let user = self
            .connections
            .get(&connection)
            .map_or("", |c| c.user.as_str());
        if let Some(claimed) = properties.user_id.as_deref()
            && claimed != user
        {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!("user_id property set to '{claimed}' but authenticated user was '{user}'"),
            ));
        }

        let mut targets = BTreeSet::new();
        if exchange_name == DEFAULT_EXCHANGE {
            if self.queues.contains_key(routing_key) {
                targets.insert(routing_key.to_owned());
            }
        } else {
            exchange.route(routing_key, &mut targets);
        }
        if targets.is_empty() {
            tracing::trace!(
                exchange = exchange_name,
                routing_key,
                "unroutable message dropped"
            );
            return Ok(Confirm::Ack);
        }
        if let Some(reason) = self.over_ceiling(targets.len(), body.len()) {
            tracing::warn!(exchange = exchange_name, routing_key, %reason, "publish nacked");
            return Ok(Confirm::Nack { reason });
        }

        let message = Arc::new(Message {
            exchange: exchange_name.to_owned(),
            routing_key: routing_key.to_owned(),
            properties,
            body,
        });
        for name in &targets {
            if let Some(queue) = self.queues.get_mut(name) {
                let seq = next(&mut self.counters.message_seq);
                queue.enqueue(Queued {
                    seq,
                    message: Arc::clone(&message),
                    redelivered: false,
                });
                self.held.add(&message);
            }
        }
        for name in &targets {
            self.dispatch(name);
        }
        Ok(Confirm::Ack)
    }

    /// Why `copies` more copies of a `body_bytes` body would break the held ceilings, if they
    /// would.
    fn over_ceiling(&self, copies: usize, body_bytes: usize) -> Option<String> {
        let messages = self.held.messages.saturating_add(copies);
        if messages > self.limits.held_messages_max {
            return Some(format!(
                "the broker holds {} messages; {copies} more would pass the limit of {}",
                self.held.messages, self.limits.held_messages_max
            ));
        }
        let bytes = self
            .held
            .body_bytes
            .saturating_add(copies.saturating_mul(body_bytes));
        if bytes > self.limits.held_body_bytes_max {
            return Some(format!(
                "the broker holds {} body bytes; {copies} copies of {body_bytes} more would pass the limit of {}",
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
    ) -> Result<String, Fault> {
        check_name("queue name", queue_name)?;
        check_name("consumer tag", &options.consumer_tag)?;
        let queue = self
            .queues
            .get(queue_name)
            .ok_or_else(|| Fault::not_found_queue(queue_name))?;
        queue.check_access(queue_name, channel.connection)?;
        let Some(state) = self.channels.get(&channel) else {
            return Err(Fault::Invalid(format!("{channel} is not open")));
        };
        let tag = if options.consumer_tag.is_empty() {
            loop {
                let tag = format!("amq.ctag-{}", next(&mut self.counters.consumer_tag));
                if !state.consumers.contains_key(&tag) {
                    break tag;
                }
            }
        } else if state.consumers.contains_key(&options.consumer_tag) {
            return Err(Fault::Connection(AmqpError::new(
                ReplyCode::NotAllowed,
                format!("attempt to reuse consumer tag '{}'", options.consumer_tag),
            )));
        } else {
            options.consumer_tag.clone()
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
        if queue.exclusive_consumer || (options.exclusive && queue.consumer_count() > 0) {
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
            queue: queue_name.to_owned(),
            no_ack: options.no_ack,
            prefetch: state.prefetch,
            unacked: 0,
            buffered: 0,
        };
        if let Some(state) = self.channels.get_mut(&channel) {
            state.consumers.insert(tag.clone(), consumer);
        }
        if let Some(queue) = self.queues.get_mut(queue_name) {
            queue.add_consumer((channel, tag.clone()), options.exclusive);
        }
        self.dispatch(queue_name);
        Ok(tag)
    }

    /// Removes a consumer from its channel and queue; deletes an auto-delete queue that lost
    /// its last consumer.
    fn cancel(&mut self, channel: ChannelId, consumer_tag: &str, reason: ConsumerEnd) {
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        let Some(consumer) = state.consumers.remove(consumer_tag) else {
            return;
        };
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
    ) -> Option<String> {
        self.events.push(Event::ConsumerEnded {
            channel,
            consumer_tag: consumer_tag.to_owned(),
            reason,
        });
        let queue = self.queues.get_mut(queue_name)?;
        queue.remove_consumer(&(channel, consumer_tag.to_owned()));
        (queue.auto_delete && queue.consumer_count() == 0).then(|| queue_name.to_owned())
    }

    /// ack / nack / reject of one tag or (`multiple`) every tag up to it.
    fn settle(
        &mut self,
        channel: ChannelId,
        delivery_tag: u64,
        multiple: bool,
        outcome: Outcome,
    ) -> Result<(), Fault> {
        let Some(state) = self.channels.get_mut(&channel) else {
            return Err(Fault::Invalid(format!("{channel} is not open")));
        };
        let settled: Vec<Unacked> = if multiple && delivery_tag == 0 {
            std::mem::take(&mut state.unacked).into_values().collect()
        } else if !state.unacked.contains_key(&delivery_tag) {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!("unknown delivery tag {delivery_tag}"),
            ));
        } else if multiple {
            let rest = match delivery_tag.checked_add(1) {
                Some(after) => state.unacked.split_off(&after),
                None => BTreeMap::new(),
            };
            std::mem::replace(&mut state.unacked, rest)
                .into_values()
                .collect()
        } else {
            state.unacked.remove(&delivery_tag).into_iter().collect()
        };
        let mut to_dispatch = BTreeSet::new();
        for unacked in settled {
            if let Some(queue) = self.finish(channel, unacked, outcome) {
                to_dispatch.insert(queue);
            }
        }
        for queue in &to_dispatch {
            self.dispatch(queue);
        }
        Ok(())
    }

    /// Takes a delivery (already removed from its channel's unacked map) off the books: its
    /// consumer gets the credit back, its queue counts one unacked less, and the message is
    /// requeued to its original position or forgotten. Returns the queue to dispatch, if it
    /// still exists.
    fn finish(&mut self, channel: ChannelId, unacked: Unacked, outcome: Outcome) -> Option<String> {
        let consumer = self
            .channels
            .get_mut(&channel)
            .and_then(|state| state.consumers.get_mut(&unacked.consumer_tag))
            .filter(|consumer| consumer.serial == unacked.consumer_serial);
        if let Some(consumer) = consumer {
            consumer.unacked -= 1;
        }
        let Unacked {
            queue: name,
            queue_id,
            entry,
            ..
        } = unacked;
        let Some(queue) = self.queues.get_mut(&name).filter(|q| q.id == queue_id) else {
            // Its queue was deleted while the message was out: nothing to return it to.
            self.held.release(&entry.message);
            return None;
        };
        queue.unacked -= 1;
        match outcome {
            Outcome::Requeue => queue.requeue(Queued {
                redelivered: true,
                ..entry
            }),
            Outcome::Forget => self.held.release(&entry.message),
        }
        Some(name)
    }

    /// Hands ready messages of a queue to its consumers, round-robin among those with prefetch
    /// credit, until the queue is empty or every consumer is blocked. Each turn delivers one
    /// message, so the loop is bounded by the queue's length.
    fn dispatch(&mut self, queue_name: &str) {
        let Engine {
            queues,
            channels,
            events,
            held,
            ..
        } = self;
        let Some(queue) = queues.get_mut(queue_name) else {
            return;
        };
        while queue.ready_len() > 0 {
            let has_credit = |(channel, tag): &(ChannelId, String)| {
                let consumer = channels
                    .get(channel)
                    .and_then(|state| state.consumers.get(tag));
                consumer.is_some_and(ConsumerState::has_credit)
            };
            let Some((channel_id, tag)) = queue.next_consumer(has_credit) else {
                break;
            };
            let Some(channel) = channels.get_mut(&channel_id) else {
                break;
            };
            let Some(consumer) = channel.consumers.get_mut(&tag) else {
                break;
            };
            let Some(entry) = queue.pop_ready() else {
                break;
            };
            channel.last_delivery_tag += 1;
            let delivery_tag = channel.last_delivery_tag;
            let delivery = Delivery::new(delivery_tag, &tag, &entry.message, entry.redelivered);
            if consumer.no_ack {
                consumer.buffered += 1;
                held.release(&entry.message);
            } else {
                consumer.unacked += 1;
                queue.unacked += 1;
                let unacked = Unacked {
                    queue: queue_name.to_owned(),
                    queue_id: queue.id,
                    consumer_tag: tag,
                    consumer_serial: consumer.serial,
                    entry,
                };
                channel.unacked.insert(delivery_tag, unacked);
            }
            let delivery = Box::new(delivery);
            events.push(Event::Deliver {
                channel: channel_id,
                delivery,
            });
        }
    }

    /// The consequences of closing a channel, keeping its record (an error close keeps it until
    /// the client releases it): consumers cancelled, unacked deliveries requeued and
    /// dispatched to whoever else consumes, auto-delete queues that lost their last consumer
    /// deleted.
    fn shut_channel(&mut self, channel: ChannelId) {
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        let consumers = std::mem::take(&mut state.consumers);
        let unacked = std::mem::take(&mut state.unacked);
        let mut orphaned = BTreeSet::new();
        for (tag, consumer) in consumers {
            orphaned.extend(self.detach(
                channel,
                &tag,
                &consumer.queue,
                ConsumerEnd::ChannelClosed,
            ));
        }
        let mut to_dispatch = BTreeSet::new();
        for (_, delivery) in unacked {
            to_dispatch.extend(self.finish(channel, delivery, Outcome::Requeue));
        }
        for queue in &orphaned {
            self.delete_queue(queue);
        }
        for queue in &to_dispatch {
            self.dispatch(queue);
        }
    }

    /// Forgets a channel record and frees its channel number.
    fn release_channel(&mut self, channel: ChannelId) {
        self.channels.remove(&channel);
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
            self.channels.remove(&channel);
        }
        let exclusive: Vec<String> = self
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
        let Some(mut queue) = self.queues.remove(name) else {
            return;
        };
        for entry in queue.drain_ready() {
            self.held.release(&entry.message);
        }
        let consumers: Vec<(ChannelId, String)> = queue.consumers().cloned().collect();
        for (channel, tag) in consumers {
            if let Some(state) = self.channels.get_mut(&channel) {
                state.consumers.remove(&tag);
            }
            self.events.push(Event::ConsumerEnded {
                channel,
                consumer_tag: tag,
                reason: ConsumerEnd::QueueDeleted,
            });
        }
        let mut emptied = Vec::new();
        for (exchange_name, exchange) in &mut self.exchanges {
            let removed = exchange.bindings.remove_queue(name);
            self.bindings_total -= removed;
            if removed > 0 && exchange.auto_delete && exchange.bindings.is_empty() {
                emptied.push(exchange_name.clone());
            }
        }
        for exchange in &emptied {
            self.exchanges.remove(exchange);
        }
        tracing::debug!(queue = name, "queue deleted");
    }

    fn all_unacked(&self) -> impl Iterator<Item = (&u64, &Unacked)> {
        self.channels
            .values()
            .flat_map(|channel| channel.unacked.iter())
    }
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
