//! The in-process client: a [`Broker`] handle, [`Connection`]s, [`Channel`]s and
//! [`Consumer`]s, shaped like an AMQP client library but calling the engine directly.
//!
//! The engine sits behind a std `Mutex` held only for the duration of one synchronous call,
//! never across an await. The engine sends each delivery straight into its consumer's flume
//! channel as it makes it (`Engine::basic_consume_into`); prefetch credit bounds what a
//! consumer holds, and the engine keeps every buffer within `CONSUMER_BUFFER_MAX` besides.
//! After every call the client forwards the engine's other events: a consumer's end closes its
//! flume channel. Dropping a `Channel` or `Connection` closes it, which requeues everything it
//! had not acked.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use smol_str::SmolStr;
use thiserror::Error;

use crate::binding::{BindingInfo, ExchangeBindingInfo};
use crate::channel::ChannelId;
use crate::connection::{ConnectionId, DEFAULT_USER};
use crate::consumer::ConsumeOptions;
use crate::delivery::{Delivery, GetOk};
use crate::engine::{ArmedFault, ConsumerEnd, Engine, Event, Usage};
use crate::error::{Error, ReplyCode};
use crate::exchange::{ExchangeInfo, ExchangeKind, ExchangeOptions};
use crate::limits::Limits;
use crate::lookup::HandleMap;
use crate::message::{
    Confirm, DeadLettered, FieldTable, Message, Properties, PublishOptions, Published, Returned,
};
use crate::queue::{QueueArguments, QueueDeclareOk, QueueInfo, QueueOptions};

/// Where a [`Broker`] gets the time, in milliseconds: simulated time under a simulator, the
/// system clock in real mode ([`real_clock_ms`]).
pub type ClockFn = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Milliseconds since the Unix epoch from the system clock: the default clock of
/// [`Broker::new`], for real mode only (a simulation passes its own to [`Broker::with_clock`]).
pub fn real_clock_ms() -> u64 {
    // real-mode: the one place broker-mem reads the OS clock; simulations inject theirs.
    #[allow(clippy::disallowed_methods)]
    let now = std::time::SystemTime::now(); // allow-nondeterminism: real-mode default clock
    now.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
        })
}

/// A handle on one in-memory broker; clones share it. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct Broker {
    shared: Arc<Mutex<Shared>>,
    clock: ClockFn,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker").finish_non_exhaustive()
    }
}

impl Default for Broker {
    fn default() -> Self {
        Broker::new()
    }
}

/// A live consumer's buffer, which the engine sends deliveries straight into (see
/// `Engine::basic_consume_into`).
struct Outlet {
    /// A second end of the same flume channel, to take back deliveries whose channel closed:
    /// they have been requeued, and offering them to the consumer too would duplicate them.
    receiver: flume::Receiver<Delivery>,
    /// Tells this consumer from a later one that reused its tag.
    consumer_id: u64,
    no_ack: bool,
}

struct Shared {
    engine: Engine,
    outlets: HandleMap<(ChannelId, SmolStr), Outlet>,
    last_consumer_id: u64,
    /// Connections served by someone else (the wire server): every event of their channels goes
    /// to their tap instead of an outlet.
    taps: HandleMap<ConnectionId, flume::Sender<Event>>,
    /// The time keeper's doorbell, if one keeps this broker's time (see
    /// [`Broker::deadline_bell`]): rung when a call sets an earlier deadline.
    deadline_bell: Option<flume::Sender<()>>,
}

impl Shared {
    /// Forwards the engine's events to the consumers' flume channels, and rings the time
    /// keeper's bell if the call set an earlier deadline. Every engine call ends with this.
    fn flush(&mut self) {
        if let Some(ring) = &self.deadline_bell
            && self.engine.take_alarm()
        {
            // Full: it is already ringing.
            let _ = ring.try_send(());
        }
        if !self.engine.has_events() {
            return;
        }
        let Shared {
            engine,
            outlets,
            taps,
            ..
        } = self;
        for event in engine.drain_events() {
            let connection = match &event {
                Event::Deliver { channel, .. }
                | Event::ConsumerEnded { channel, .. }
                | Event::ChannelClosed { channel, .. } => channel.connection(),
                Event::ConnectionClosed { connection, .. } => *connection,
            };
            if let Some(tap) = taps.get(&connection) {
                // Unbounded: deliveries are bounded by prefetch credit (and the held ceilings),
                // and a tap whose reader is gone just drops them (its connection is closing).
                let _ = tap.send(event);
                continue;
            }
            match event {
                // An in-process consumer's deliveries never come this way (the engine sends
                // them into its buffer); only a consumer started on the engine directly,
                // which no buffer awaits.
                Event::Deliver { channel, delivery } => {
                    let consumer = delivery.consumer_tag;
                    tracing::error!(%channel, %consumer, "delivery to a consumer with no buffer");
                    debug_assert!(false, "delivery to a consumer with no buffer");
                }
                Event::ConsumerEnded {
                    channel,
                    consumer_tag,
                    reason,
                } => {
                    let Some(outlet) = outlets.shift_remove(&(channel, consumer_tag)) else {
                        continue;
                    };
                    if reason == ConsumerEnd::ChannelClosed && !outlet.no_ack {
                        let requeued = outlet.receiver.drain().count();
                        tracing::trace!(%channel, requeued, "dropped buffered deliveries of a closed channel");
                    }
                }
                // The channel's consumers ended with it (above); its next call reports why.
                Event::ChannelClosed { channel, reason } => {
                    tracing::debug!(%channel, %reason, "channel closed by the broker");
                }
                Event::ConnectionClosed { connection, reason } => {
                    tracing::debug!(?connection, %reason, "connection closed by the broker");
                }
            }
        }
    }
}

impl Broker {
    /// An empty broker with the default [`Limits`] on the system clock (real mode; see
    /// [`Broker::with_clock`] for simulations).
    pub fn new() -> Broker {
        Broker::with_limits(Limits::default())
    }

    /// An empty broker with the given limits, on the system clock.
    pub fn with_limits(limits: Limits) -> Broker {
        Broker::with_clock(limits, Arc::new(real_clock_ms))
    }

    /// An empty broker whose time comes from `clock` (milliseconds; an earlier reading than
    /// the last is ignored). Every call first moves the engine to the clock's time, so TTLs
    /// expire and delayed deliveries arrive in the clock's time; [`Broker::tick`] does that
    /// without another call.
    pub fn with_clock(limits: Limits, clock: ClockFn) -> Broker {
        let shared = Shared {
            engine: Engine::new(limits),
            outlets: HandleMap::default(),
            last_consumer_id: 0,
            taps: HandleMap::default(),
            deadline_bell: None,
        };
        Broker {
            shared: Arc::new(Mutex::new(shared)),
            clock,
        }
    }

    /// Catches up with the clock: expires messages, hands over delayed deliveries.
    pub fn tick(&self) {
        self.call(|_| ());
    }

    /// The engine's time, in milliseconds.
    pub fn now_ms(&self) -> u64 {
        self.call(|engine| engine.now_ms())
    }

    /// How long, in clock milliseconds, until the broker has something to do by itself (a
    /// TTL, `x-expires`, a consumer timeout, a delayed delivery):
    /// a [`Broker::tick`] then does it. None: nothing until a call. For a time keeper, with
    /// [`Broker::deadline_bell`]; it scans every queue and channel.
    pub fn next_deadline_in_ms(&self) -> Option<u64> {
        self.call(|engine| {
            let now_ms = engine.now_ms();
            engine
                .next_due_ms()
                .map(|due_ms| due_ms.saturating_sub(now_ms))
        })
    }

    /// A doorbell for this broker's time keeper: it rings when a call sets a deadline earlier
    /// than the one [`Broker::next_deadline_in_ms`] last reported (a message with a shorter
    /// TTL, say), so the keeper never sleeps past one. One keeper per broker: a second bell
    /// replaces the first.
    pub fn deadline_bell(&self) -> flume::Receiver<()> {
        let (ring, bell) = flume::bounded(1);
        self.lock().deadline_bell = Some(ring);
        bell
    }

    /// Restarts the broker (see [`Engine::restart`]): every connection is closed with 320,
    /// transient queues, exchanges and messages are lost, durable classic queues keep their
    /// persistent messages, quorum queues all of theirs.
    pub fn restart(&self) {
        self.call(Engine::restart);
    }

    /// Fault hook: the next delivery from `queue` is lost in transit
    /// ([`Engine::drop_next_delivery`]).
    pub fn drop_next_delivery(&self, queue: &str) {
        self.call(|engine| engine.drop_next_delivery(queue));
    }

    /// Fault hook: the next delivery from `queue` arrives twice
    /// ([`Engine::duplicate_next_delivery`]).
    pub fn duplicate_next_delivery(&self, queue: &str) {
        self.call(|engine| engine.duplicate_next_delivery(queue));
    }

    /// Fault hook: the next delivery from `queue` arrives `delay_ms` later on the clock
    /// ([`Engine::delay_next_delivery`]).
    pub fn delay_next_delivery(&self, queue: &str, delay_ms: u64) {
        self.call(|engine| engine.delay_next_delivery(queue, delay_ms));
    }

    /// Fault hook: the next publish on `channel` is nacked ([`Engine::nack_next_publish`]).
    pub fn nack_next_publish(&self, channel: ChannelId, enqueue: bool) {
        self.call(|engine| engine.nack_next_publish(channel, enqueue));
    }

    /// Fault hook: the next publish to `exchange` is nacked ([`Engine::nack_next_publish_to`]).
    pub fn nack_next_publish_to(&self, exchange: &str, enqueue: bool) {
        self.call(|engine| engine.nack_next_publish_to(exchange, enqueue));
    }

    /// Fault hook: the broker closes every channel consuming `queue`
    /// ([`Engine::force_close_consumer_channels`]).
    pub fn force_close_consumer_channels(&self, queue: &str, code: ReplyCode, text: &str) {
        self.call(|engine| engine.force_close_consumer_channels(queue, code, text));
    }

    /// Fault hook: the broker closes `channel` ([`Engine::force_close_channel`]).
    pub fn force_close_channel(&self, channel: ChannelId, code: ReplyCode, text: &str) {
        self.call(|engine| engine.force_close_channel(channel, code, text));
    }

    /// Fault hook: the broker closes `connection` with this reply.
    pub fn force_close_connection(&self, connection: ConnectionId, code: ReplyCode, text: &str) {
        self.call(|engine| engine.force_close_connection(connection, code, text));
    }

    /// Fault hooks armed on a queue or an exchange that have not fired yet
    /// ([`Engine::armed_faults`]).
    pub fn armed_faults(&self) -> Vec<ArmedFault> {
        self.call(|engine| engine.armed_faults())
    }

    /// Messages that left a queue unconsumed (rejected, expired, overflowed, past the delivery
    /// limit), oldest first.
    pub fn dead_lettered(&self) -> Vec<DeadLettered> {
        self.call(|engine| engine.dead_lettered())
    }

    /// Mandatory messages returned to their publishers, oldest first.
    pub fn returned(&self) -> Vec<Returned> {
        self.call(|engine| engine.returned())
    }

    /// Every exchange-to-exchange binding, sorted.
    pub fn exchange_bindings(&self) -> Vec<ExchangeBindingInfo> {
        self.call(|engine| engine.exchange_bindings())
    }

    /// A queue's arguments as the broker understood them; None if there is no such queue.
    pub fn queue_arguments(&self, queue: &str) -> Option<QueueArguments> {
        self.call(|engine| engine.queue_arguments(queue))
    }

    /// Opens a connection as RabbitMQ's default user `guest`.
    pub fn connect(&self) -> Connection {
        self.connect_as(DEFAULT_USER)
    }

    /// Opens a connection as `user` (which only matters for the `user_id` property check).
    pub fn connect_as(&self, user: &str) -> Connection {
        let id = self.call(|engine| engine.open_connection(user));
        Connection {
            broker: self.clone(),
            id,
        }
    }

    /// Ready messages in a queue; None if there is no such queue.
    pub fn queue_depth(&self, queue: &str) -> Option<usize> {
        self.call(|engine| engine.queue_depth(queue))
    }

    /// Delivered, unsettled messages of a queue; None if there is no such queue.
    pub fn unacked_count(&self, queue: &str) -> Option<usize> {
        self.call(|engine| engine.unacked_count(queue))
    }

    /// Consumers of a queue; None if there is no such queue.
    pub fn consumer_count(&self, queue: &str) -> Option<usize> {
        self.call(|engine| engine.consumer_count(queue))
    }

    /// Every exchange, sorted by name.
    pub fn exchanges(&self) -> Vec<ExchangeInfo> {
        self.call(|engine| engine.exchanges())
    }

    /// Every queue, sorted by name.
    pub fn queues(&self) -> Vec<QueueInfo> {
        self.call(|engine| engine.queues())
    }

    /// Every explicit binding, sorted.
    pub fn bindings(&self) -> Vec<BindingInfo> {
        self.call(|engine| engine.bindings())
    }

    /// What the broker holds, against its ceilings.
    pub fn usage(&self) -> Usage {
        self.call(|engine| engine.usage())
    }

    /// The engine's self-check (see [`Engine::check_invariants`]).
    pub fn check_invariants(&self) -> Result<(), String> {
        self.call(|engine| engine.check_invariants())
    }

    /// Opens a connection as `user` whose events (deliveries, consumer ends) go to the returned
    /// [`Tap`] instead of in-process consumers: for a server that speaks to its client some other
    /// way (broker-mem's wire server). Drive it with [`Broker::with_engine`]; close it with
    /// [`Broker::close_tapped`].
    pub fn connect_tapped(&self, user: &str) -> (ConnectionId, Tap) {
        let (sender, receiver) = flume::unbounded();
        let mut shared = self.lock();
        let id = shared.engine.open_connection(user);
        shared.taps.insert(id, sender);
        (id, Tap { receiver })
    }

    /// Closes a connection opened with [`Broker::connect_tapped`] (requeueing what its channels
    /// had not acked) and forgets its tap. Idempotent.
    pub fn close_tapped(&self, connection: ConnectionId) {
        let mut shared = self.lock_now();
        shared.engine.close_connection(connection);
        shared.flush();
        shared.taps.shift_remove(&connection);
    }

    /// One call on the engine itself, under the broker's lock (never held across an await), then
    /// its events forwarded to consumers and taps.
    pub fn with_engine<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        self.call(f)
    }

    /// A poisoned lock means a call panicked half-way; the engine validates before it mutates,
    /// so carrying on is no worse than the panic itself, and a `Drop` must not panic again.
    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// [`Broker::lock`] with the engine at the clock's time: every call that acts on the
    /// engine sees time as the wire server's calls do (a TTL that ran out has run out).
    fn lock_now(&self) -> MutexGuard<'_, Shared> {
        let now_ms = (self.clock)();
        let mut shared = self.lock();
        shared.engine.advance_to(now_ms);
        shared
    }

    /// One engine call at the clock's time, then its events forwarded.
    fn call<T>(&self, f: impl FnOnce(&mut Engine) -> T) -> T {
        self.call_shared(|shared| f(&mut shared.engine))
    }

    /// [`Broker::call`] with the whole shared state (engine and consumer outlets) in hand.
    fn call_shared<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        let mut shared = self.lock_now();
        let value = f(&mut shared);
        shared.flush();
        value
    }
}

/// A connection to the broker. Dropping it closes it: every channel on it closes (requeueing
/// unacked deliveries) and its exclusive queues are deleted.
#[derive(Debug)]
pub struct Connection {
    broker: Broker,
    id: ConnectionId,
}

impl Connection {
    /// This connection's id.
    pub fn id(&self) -> ConnectionId {
        self.id
    }

    /// The broker it is connected to.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Opens a channel (at most [`crate::CHANNELS_PER_CONNECTION_MAX`] at once). Channels are
    /// always in confirm mode.
    pub fn open_channel(&self) -> Result<Channel, Error> {
        let id = self.broker.call(|engine| engine.open_channel(self.id))?;
        Ok(Channel {
            broker: self.broker.clone(),
            id,
        })
    }

    /// Closes the connection and everything on it. Idempotent.
    pub fn close(&self) {
        self.broker.call(|engine| engine.close_connection(self.id));
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.close();
    }
}

/// An AMQP channel in confirm mode. `Send + Sync`: share it behind an `Arc`. Every method is
/// synchronous and has dispatched whatever it made deliverable by the time it returns. Any
/// channel error closes the channel; later calls return [`Error::ChannelClosed`] with the
/// original reply. Dropping it closes it.
#[derive(Debug)]
pub struct Channel {
    broker: Broker,
    id: ChannelId,
}

impl Channel {
    /// This channel's id.
    pub fn id(&self) -> ChannelId {
        self.id
    }

    /// Ok while the channel is open; otherwise why it closed.
    pub fn status(&self) -> Result<(), Error> {
        self.broker.call(|engine| engine.channel_status(self.id))
    }

    /// Whether the channel is open.
    pub fn is_open(&self) -> bool {
        self.status().is_ok()
    }

    /// `exchange.declare`.
    pub fn exchange_declare(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.exchange_declare(self.id, name, kind, options))
    }

    /// `queue.declare`; an empty name gets a server-generated `amq.gen-<n>`.
    pub fn queue_declare(
        &self,
        name: &str,
        options: QueueOptions,
    ) -> Result<QueueDeclareOk, Error> {
        self.broker
            .call(|engine| engine.queue_declare(self.id, name, options))
    }

    /// `queue.bind`.
    pub fn queue_bind(&self, queue: &str, exchange: &str, routing_key: &str) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.queue_bind(self.id, queue, exchange, routing_key))
    }

    /// `exchange.declare` with arguments (`alternate-exchange`).
    pub fn exchange_declare_with(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.exchange_declare_with(self.id, name, kind, options, arguments))
    }

    /// `exchange.delete`.
    pub fn exchange_delete(&self, name: &str, if_unused: bool) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.exchange_delete(self.id, name, if_unused))
    }

    /// `queue.declare` with arguments (see [`Engine::queue_declare_with`]).
    pub fn queue_declare_with(
        &self,
        name: &str,
        options: QueueOptions,
        arguments: &FieldTable,
    ) -> Result<QueueDeclareOk, Error> {
        self.broker
            .call(|engine| engine.queue_declare_with(self.id, name, options, arguments))
    }

    /// `queue.bind` with arguments (for a headers exchange).
    pub fn queue_bind_with(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.queue_bind_with(self.id, queue, exchange, routing_key, arguments))
    }

    /// `queue.unbind`.
    pub fn queue_unbind(
        &self,
        queue: &str,
        exchange: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.queue_unbind(self.id, queue, exchange, routing_key, arguments))
    }

    /// `exchange.bind`: `source` routes on to `destination`.
    pub fn exchange_bind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        self.broker.call(|engine| {
            engine.exchange_bind(self.id, destination, source, routing_key, arguments)
        })
    }

    /// `exchange.unbind`.
    pub fn exchange_unbind(
        &self,
        destination: &str,
        source: &str,
        routing_key: &str,
        arguments: &FieldTable,
    ) -> Result<(), Error> {
        self.broker.call(|engine| {
            engine.exchange_unbind(self.id, destination, source, routing_key, arguments)
        })
    }

    /// `queue.purge`: returns how many ready messages were dropped.
    pub fn queue_purge(&self, queue: &str) -> Result<u32, Error> {
        self.broker
            .call(|engine| engine.queue_purge(self.id, queue))
    }

    /// `queue.delete`: returns how many ready messages went with it.
    pub fn queue_delete(&self, queue: &str, if_unused: bool, if_empty: bool) -> Result<u32, Error> {
        self.broker
            .call(|engine| engine.queue_delete(self.id, queue, if_unused, if_empty))
    }

    /// `basic.qos` with RabbitMQ's `global` flag: true limits the whole channel at once.
    pub fn basic_qos_with(&self, prefetch_count: u16, global: bool) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.basic_qos_with(self.id, prefetch_count, global))
    }

    /// `basic.publish` with flags (mandatory): the return, if any, and the confirm.
    pub fn basic_publish_with(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: Properties,
        body: Bytes,
    ) -> Result<Published, Error> {
        let properties = Message::share_properties(properties);
        self.publish_shared(exchange, routing_key, options, properties, body)
    }

    /// A publish with its properties already shared: from here down a pointer is passed, not
    /// the few hundred bytes of the properties.
    fn publish_shared(
        &self,
        exchange: &str,
        routing_key: &str,
        options: PublishOptions,
        properties: Arc<Properties>,
        body: Bytes,
    ) -> Result<Published, Error> {
        self.broker.call(|engine| {
            engine.basic_publish_shared(self.id, exchange, routing_key, options, properties, body)
        })
    }

    /// `basic.get`.
    pub fn basic_get(&self, queue: &str, no_ack: bool) -> Result<Option<GetOk>, Error> {
        self.broker
            .call(|engine| engine.basic_get(self.id, queue, no_ack))
    }

    /// `basic.qos`: the prefetch of consumers started on this channel from now on (per
    /// consumer, as RabbitMQ does); 0 = unlimited. Lifts a global limit set before, as
    /// RabbitMQ 3.10 does.
    pub fn basic_qos(&self, prefetch_count: u16) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.basic_qos(self.id, prefetch_count))
    }

    /// `basic.publish`, answered by the publisher confirm.
    pub fn basic_publish(
        &self,
        exchange: &str,
        routing_key: &str,
        properties: Properties,
        body: Bytes,
    ) -> Result<Confirm, Error> {
        let properties = Message::share_properties(properties);
        let options = PublishOptions::default();
        self.publish_shared(exchange, routing_key, options, properties, body)
            .map(|published| published.confirm)
    }

    /// `basic.consume`. The consumer's buffer already holds whatever was ready (up to its
    /// prefetch) when this returns.
    pub fn basic_consume(&self, queue: &str, options: ConsumeOptions) -> Result<Consumer, Error> {
        let no_ack = options.no_ack;
        let mut shared = self.broker.lock_now();
        // Unbounded: the engine keeps it within `CONSUMER_BUFFER_MAX` (and, as long as the
        // client settles only what it has taken, within the consumer's prefetch).
        let (sender, receiver) = flume::unbounded();
        let starved = Arc::new(AtomicBool::new(false));
        let consumer = shared
            .engine
            .basic_consume_into(self.id, queue, options, sender, Arc::clone(&starved))
            .map(|tag| {
                shared.last_consumer_id += 1;
                let consumer_id = shared.last_consumer_id;
                let outlet = Outlet {
                    receiver: receiver.clone(),
                    consumer_id,
                    no_ack,
                };
                let tag = SmolStr::from(tag);
                shared.outlets.insert((self.id, tag.clone()), outlet);
                Consumer {
                    broker: self.broker.clone(),
                    channel: self.id,
                    tag,
                    consumer_id,
                    no_ack,
                    receiver,
                    starved,
                }
            });
        shared.flush();
        consumer
    }

    /// `basic.ack`; with `multiple`, every delivery up to the tag (all when it is 0).
    pub fn basic_ack(&self, delivery_tag: u64, multiple: bool) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.basic_ack(self.id, delivery_tag, multiple))
    }

    /// `basic.nack`.
    pub fn basic_nack(
        &self,
        delivery_tag: u64,
        multiple: bool,
        requeue: bool,
    ) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.basic_nack(self.id, delivery_tag, multiple, requeue))
    }

    /// `basic.reject`.
    pub fn basic_reject(&self, delivery_tag: u64, requeue: bool) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.basic_reject(self.id, delivery_tag, requeue))
    }

    /// `basic.recover` ([`Engine::basic_recover`]): every unacked delivery of this channel goes
    /// back to its queue and is delivered again under a new tag. Deliveries still waiting in
    /// this channel's consumer buffers are taken back first (their tags are void and their
    /// messages requeued), as a channel close does; over AMQP a client would still see them
    /// and get 406 when acking them. A consumer already cancelled keeps what its buffer holds,
    /// as an AMQP client does: acking those after the recover is that 406.
    pub fn basic_recover(&self, requeue: bool) -> Result<(), Error> {
        self.broker.call_shared(|shared| {
            // Emptied first: the recover redelivers at once, straight into these buffers. On an
            // open channel the recover either requeues them or (requeue = false) closes the
            // connection, which requeues them too.
            if shared.engine.channel_status(self.id).is_ok() {
                for ((channel, _), outlet) in &shared.outlets {
                    if *channel == self.id && !outlet.no_ack {
                        outlet.receiver.drain();
                    }
                }
            }
            shared.engine.basic_recover(self.id, requeue)
        })
    }

    /// `basic.cancel`: the consumer receives what is already in its buffer, then ends. Its
    /// unacked deliveries stay unacked on this channel.
    pub fn basic_cancel(&self, consumer_tag: &str) -> Result<(), Error> {
        self.broker
            .call(|engine| engine.basic_cancel(self.id, consumer_tag))
    }

    /// `tx.select`: from now on publishes are held until [`Channel::tx_commit`] (their
    /// [`Confirm`] is [`Confirm::Pending`]) and acks, nacks and rejects are applied only then.
    /// See [`Engine::tx_commit`].
    pub fn tx_select(&self) -> Result<(), Error> {
        self.broker.call(|engine| engine.tx_select(self.id))
    }

    /// `tx.commit`: the held publishes are enqueued, then the held settles applied. Returns
    /// the mandatory messages no queue took. When a queue refuses one of the publishes (its
    /// `reject-publish` limit), the rest is still done and the commit fails with 406
    /// `partial tx completion`, closing the channel, as in RabbitMQ; that commit's returns
    /// are then only in [`Broker::returned`], or beside the error from
    /// [`Channel::tx_commit_with_returns`].
    pub fn tx_commit(&self) -> Result<Vec<Returned>, Error> {
        self.broker.call(|engine| engine.tx_commit(self.id))
    }

    /// [`Channel::tx_commit`], with the mandatory messages no queue took handed back however
    /// the commit ends: a commit that fails part way (406 `partial tx completion`) has done
    /// its other publishes, and these are their returns (over the wire, the `basic.return`s
    /// RabbitMQ sends before its `channel.close`).
    pub fn tx_commit_with_returns(&self) -> (Vec<Returned>, Result<(), Error>) {
        let mut returned = Vec::new();
        let outcome = self
            .broker
            .call(|engine| engine.tx_commit_returning(self.id, &mut returned));
        (returned, outcome)
    }

    /// `tx.rollback`: the held publishes are dropped, the held settles undone (those
    /// deliveries are unacked again).
    pub fn tx_rollback(&self) -> Result<(), Error> {
        self.broker.call(|engine| engine.tx_rollback(self.id))
    }

    /// Closes the channel: its consumers end and its unacked deliveries are requeued. Closing
    /// twice is Ok; closing a channel that an error closed returns that error.
    pub fn close(&self) -> Result<(), Error> {
        self.broker.call(|engine| engine.close_channel(self.id))
    }
}

impl Drop for Channel {
    fn drop(&mut self) {
        // The cause of an earlier error close was already reported to the call that made it.
        let _ = self.close();
    }
}

/// The events of a connection opened with [`Broker::connect_tapped`], in the order the engine
/// produced them.
#[derive(Debug)]
pub struct Tap {
    receiver: flume::Receiver<Event>,
}

impl Tap {
    /// The next event; None once the connection's tap is removed.
    pub async fn recv(&self) -> Option<Event> {
        self.receiver.recv_async().await.ok()
    }

    /// The next event if one is waiting.
    pub fn try_recv(&self) -> Option<Event> {
        self.receiver.try_recv().ok()
    }
}

/// Why [`Consumer::try_recv`] returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TryRecvError {
    /// Nothing buffered right now.
    #[error("no delivery buffered")]
    Empty,
    /// The consumer was cancelled or its channel closed, and its buffer is empty.
    #[error("the consumer has ended")]
    Ended,
}

/// One consumer's deliveries. Dropping it cancels the consumer (`basic.cancel`: its unacked
/// deliveries stay on the channel until acked or the channel closes).
pub struct Consumer {
    broker: Broker,
    channel: ChannelId,
    tag: SmolStr,
    consumer_id: u64,
    no_ack: bool,
    receiver: flume::Receiver<Delivery>,
    /// Set by the engine when this consumer's buffer was full and a delivery waited for room.
    starved: Arc<AtomicBool>,
}

impl fmt::Debug for Consumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Consumer")
            .field("channel", &self.channel)
            .field("tag", &self.tag)
            .field("buffered", &self.receiver.len())
            .finish()
    }
}

impl Consumer {
    /// The consumer tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The channel it consumes on.
    pub fn channel(&self) -> ChannelId {
        self.channel
    }

    /// Deliveries waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.receiver.len()
    }

    /// The next delivery; None once the consumer has ended (cancelled, channel or connection
    /// closed, queue deleted) and its buffer is empty.
    pub async fn recv(&self) -> Option<Delivery> {
        let delivery = self.receiver.recv_async().await.ok()?;
        self.taken();
        Some(delivery)
    }

    /// The next delivery if one is buffered.
    pub fn try_recv(&self) -> Result<Delivery, TryRecvError> {
        match self.receiver.try_recv() {
            Ok(delivery) => {
                self.taken();
                Ok(delivery)
            }
            Err(flume::TryRecvError::Empty) => Err(TryRecvError::Empty),
            Err(flume::TryRecvError::Disconnected) => Err(TryRecvError::Ended),
        }
    }

    /// Whether the outlet in the broker is still this consumer's.
    fn is_current(&self, shared: &Shared) -> bool {
        let key = (self.channel, self.tag.clone());
        shared
            .outlets
            .get(&key)
            .is_some_and(|outlet| outlet.consumer_id == self.consumer_id)
    }

    /// A delivery left the buffer: an auto-ack consumer has room for one more, and a consumer
    /// whose buffer was full has room again. (Anything else takes without a call.)
    fn taken(&self) {
        // A plain load when not set: the usual take costs no call on the broker.
        let starved = self.starved.load(Ordering::Acquire);
        if !self.no_ack && !starved {
            return;
        }
        let mut shared = self.broker.lock_now();
        if self.is_current(&shared) {
            if self.no_ack {
                shared.engine.deliveries_taken(self.channel, &self.tag, 1);
            }
            if starved {
                self.starved.store(false, Ordering::Release);
                (shared.engine).consumer_buffer_drained(self.channel, &self.tag);
            }
            shared.flush();
        }
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let mut shared = self.broker.lock_now();
        if self.is_current(&shared) {
            // Fails only if the channel already closed, which ended this consumer anyway.
            let _ = shared.engine.basic_cancel(self.channel, &self.tag);
            shared.flush();
        }
    }
}
