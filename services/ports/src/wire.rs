//! The `wire` adapter: the [`Bus`] port as a thread-free AMQP 0-9-1 client on amq-protocol.
//!
//! Runs over any [`Net`]: tokio TCP against RabbitMQ or broker-mem's wire server, or turmoil TCP
//! inside a simulation, where lapin cannot run (its I/O loop is an OS thread). Everything is a
//! tokio task and every wait is `tokio::time`, so under turmoil a seed decides it all.
//!
//! Shape, as the rabbitmq adapter: one connection per bus; one publishing channel in confirm
//! mode shared by all publishers (confirms are awaited concurrently); a short-lived channel per
//! `declare`; a channel of its own per consumer, so dropping its stream closes exactly that
//! channel and the broker requeues exactly its unacked deliveries.
//!
//! Links die: the connection sends heartbeats and declares the broker dead after two silent
//! intervals (turmoil never retransmits, so a partition is only ever noticed this way). Then
//! in-flight publishes fail and are retried once on a new connection, which is opened with
//! exponential backoff and on which every topology declared so far is declared again; consumer
//! streams consume again on it (`resume_consumers`, on by default) and go on; deliveries of the
//! lost connection can no longer be settled (their ack fails) and the broker redelivers them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::constants::{FRAME_BODY, FRAME_END, FRAME_HEARTBEAT};
use amq_protocol::protocol::{
    AMQPClass, BasicProperties, basic, channel, confirm, connection, exchange, queue,
};
use amq_protocol::types::{FieldTable, LongString, ShortString};
use async_trait::async_trait;
use contracts::{BODY_BYTES_MAX, Publication, Topology};
use futures::StreamExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::amqp_properties::{amqp_properties, contract_properties, queue_arguments, short_string};
use crate::bus::{
    Acker, Bus, BusError, ConsumeOptions, Deliveries, Delivery, TOPOLOGIES_REMEMBERED_MAX,
};
use crate::net::Net;

/// Largest frame the client accepts and proposes.
/// Bytes written at a time under one write timeout (see `Connection::write`).
const WRITE_PIECE_BYTES: usize = 64 * 1024;

/// AMQP's `connection-forced` reply code: the broker closed the connection on purpose
/// (shutdown, restart, an operator), not because of anything the client did.
const CONNECTION_FORCED: u16 = 320;

const FRAME_MAX_BYTES: u32 = 131_072;
/// Frame type, channel and size before the payload; the end byte after it.
const FRAME_OVERHEAD_BYTES: usize = 8;
/// The channels one connection uses at most (publisher, declares, consumers).
const CHANNELS_MAX: u16 = 256;
/// Bytes asked of the stream per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// How a [`WireBus`] connects and how patient it is. Durations are `tokio::time`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireBusConfig {
    /// `host:port` of the broker.
    pub addr: String,
    /// PLAIN user.
    pub user: String,
    /// PLAIN password (never logged, never in errors).
    pub password: String,
    /// Virtual host.
    pub vhost: String,
    /// Heartbeat interval to ask for, in seconds (the smaller of this and the broker's wins;
    /// 0 asks for none, which leaves partitions undetected under turmoil).
    pub heartbeat_s: u16,
    /// One connection attempt (TCP and handshake) may take this long.
    pub connect_timeout: Duration,
    /// A request (declare, consume, ...) waits this long for its answer.
    pub rpc_timeout: Duration,
    /// A publish waits this long for its confirm.
    pub confirm_timeout: Duration,
    /// Connection attempts after a lost connection, before an operation gives up.
    pub reconnect_attempts_max: u32,
    /// Pause after the first failed attempt; doubles up to `reconnect_backoff_max`.
    pub reconnect_backoff_min: Duration,
    /// Longest pause between attempts.
    pub reconnect_backoff_max: Duration,
    /// A consumer stream whose connection is lost reconnects (with the backoff above), declares
    /// again and consumes again, instead of failing; it fails only when reconnecting does.
    pub resume_consumers: bool,
    /// Largest delivery body taken in; a larger one is rejected without requeue, never held
    /// (the contract's own 64 KiB is the consumers' to enforce, as with the other adapters).
    pub received_body_bytes_max: u64,
    /// A write to the broker that cannot finish in this long (the broker stopped reading, or
    /// a partition filled the link) ends the connection, which is then replaced; with
    /// heartbeats, at most twice the heartbeat interval.
    pub write_timeout: Duration,
}

impl Default for WireBusConfig {
    fn default() -> Self {
        WireBusConfig {
            addr: "127.0.0.1:5672".into(),
            user: "guest".into(),
            password: "guest".into(),
            vhost: "/".into(),
            heartbeat_s: 10,
            connect_timeout: Duration::from_secs(10),
            rpc_timeout: Duration::from_secs(30),
            confirm_timeout: Duration::from_secs(30),
            reconnect_attempts_max: 8,
            reconnect_backoff_min: Duration::from_millis(100),
            reconnect_backoff_max: Duration::from_secs(3),
            resume_consumers: true,
            // broker-mem's and RabbitMQ 4's largest message.
            received_body_bytes_max: 16 * 1024 * 1024,
            write_timeout: Duration::from_secs(30),
        }
    }
}

impl WireBusConfig {
    /// Reads `amqp://user:password@host:port/vhost` (vhost percent-decoded; `%2f` is `/`, an
    /// empty path is `/`). The rest of the configuration is the default.
    pub fn from_url(url: &str) -> Result<WireBusConfig, BusError> {
        let bad = |why: &str| BusError::Invalid(format!("AMQP URL: {why}"));
        let rest = url
            .strip_prefix("amqp://")
            .ok_or_else(|| bad("expected amqp://"))?;
        let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
        let path = path.split('?').next().unwrap_or_default();
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((userinfo, host)) => (Some(userinfo), host),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(info) => {
                let (user, password) = info.split_once(':').unwrap_or((info, ""));
                (percent_decode(user)?, percent_decode(password)?)
            }
            None => ("guest".into(), "guest".into()),
        };
        let addr = if host.contains(':') {
            host.to_owned()
        } else {
            format!("{host}:5672")
        };
        let vhost = if path.is_empty() {
            "/".to_owned()
        } else {
            percent_decode(path)?
        };
        Ok(WireBusConfig {
            addr,
            user,
            password,
            vhost,
            ..WireBusConfig::default()
        })
    }
}

fn percent_decode(text: &str) -> Result<String, BusError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| BusError::Invalid(format!("AMQP URL: bad escape in {text:?}")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| BusError::Invalid(format!("AMQP URL: {text:?} is not UTF-8")))
}

/// The [`Bus`] over AMQP 0-9-1 on a [`Net`]. Connects lazily, on first use.
pub struct WireBus<N: Net> {
    inner: Arc<Inner<N>>,
}

impl<N: Net> std::fmt::Debug for WireBus<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WireBus")
            .field("addr", &self.inner.config.addr)
            .field("vhost", &self.inner.config.vhost)
            .finish_non_exhaustive()
    }
}

struct Inner<N> {
    net: N,
    config: WireBusConfig,
    state: tokio::sync::Mutex<State>,
}

struct State {
    link: Option<Arc<Link>>,
    publisher: Option<Arc<Publisher>>,
    /// Declared so far; declared again on every new connection.
    topologies: Vec<Topology>,
    closed: bool,
}

impl<N: Net> WireBus<N> {
    /// A bus that will connect through `net` as `config` says.
    pub fn new(net: N, config: WireBusConfig) -> WireBus<N> {
        WireBus {
            inner: Arc::new(Inner {
                net,
                config,
                state: tokio::sync::Mutex::new(State {
                    link: None,
                    publisher: None,
                    topologies: Vec::new(),
                    closed: false,
                }),
            }),
        }
    }

    /// Connects now (one attempt), to fail fast on a wrong address or password.
    pub async fn connect(net: N, config: WireBusConfig) -> Result<WireBus<N>, BusError> {
        let bus = WireBus::new(net, config);
        let link = Link::open(&bus.inner.net, &bus.inner.config).await?;
        bus.inner.state.lock().await.link = Some(link);
        Ok(bus)
    }

    /// Closes the connection (`connection.close`); the broker requeues what consumers had not
    /// acked. Later operations fail with [`BusError::Closed`].
    pub async fn close(&self) -> Result<(), BusError> {
        let mut state = self.inner.state.lock().await;
        state.closed = true;
        state.publisher = None;
        if let Some(link) = state.link.take() {
            link.close(self.inner.config.rpc_timeout).await;
        }
        Ok(())
    }

    /// The live connection, reconnecting (and declaring again) if there is none.
    async fn link(&self, state: &mut State) -> Result<Arc<Link>, Failure> {
        if state.closed {
            return Err(Failure::Final(BusError::Closed));
        }
        if let Some(link) = &state.link
            && link.alive()
        {
            return Ok(link.clone());
        }
        state.link = None;
        state.publisher = None;
        let config = &self.inner.config;
        let mut backoff = config.reconnect_backoff_min;
        let mut last = String::new();
        for attempt in 1..=config.reconnect_attempts_max.max(1) {
            match Link::open(&self.inner.net, config).await {
                Ok(link) => {
                    for topology in &state.topologies {
                        // A topology the broker now refuses must not cost the connection: the
                        // operations that need it fail on their own, the others go on.
                        if let Err(error) = declare_on(&link, topology, config.rpc_timeout).await {
                            tracing::warn!(addr = %config.addr, %error, "declaring again after a reconnection failed");
                        }
                    }
                    tracing::info!(addr = %config.addr, attempt, "AMQP connection open");
                    state.link = Some(link.clone());
                    return Ok(link);
                }
                // Refusals (a wrong password, a missing vhost) will not heal by retrying.
                Err(error @ BusError::Refused { .. }) => return Err(Failure::Final(error)),
                Err(error) => {
                    tracing::warn!(addr = %config.addr, attempt, %error, "AMQP connection attempt failed");
                    last = error.to_string();
                }
            }
            if attempt < config.reconnect_attempts_max {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.reconnect_backoff_max);
            }
        }
        Err(Failure::Final(BusError::Connection(format!(
            "gave up on {} after {} attempts: {last}",
            config.addr, config.reconnect_attempts_max
        ))))
    }

    async fn publisher(&self) -> Result<Arc<Publisher>, Failure> {
        let mut state = self.inner.state.lock().await;
        if let Some(publisher) = &state.publisher
            && publisher.usable()
        {
            return Ok(publisher.clone());
        }
        let link = self.link(&mut state).await?;
        let mut chan = link.open_channel(self.inner.config.rpc_timeout).await?;
        let select = confirm::AMQPMethod::Select(confirm::Select { nowait: false });
        chan.call(AMQPClass::Confirm(select), "confirm.select", "")
            .await?;
        let publisher = Publisher::start(chan);
        state.publisher = Some(publisher.clone());
        Ok(publisher)
    }

    async fn publish_once(&self, message: &Outgoing) -> Result<(), Failure> {
        let publisher = self.publisher().await?;
        let confirm = publisher.publish(message)?;
        match tokio::time::timeout(self.inner.config.confirm_timeout, confirm).await {
            Ok(Ok(Ok(true))) => Ok(()),
            Ok(Ok(Ok(false))) => Err(Failure::Final(BusError::Nacked {
                exchange: message.exchange.clone(),
            })),
            // A channel closed by the broker fails every publish in flight on it, including
            // publishes that did nothing wrong; the retry on a fresh channel tells them apart.
            // The confirm listener cannot know which publish the broker refused, so the refusal
            // names this publish's exchange, as lapin's adapter does.
            Ok(Ok(Err(BusError::Refused {
                operation,
                target,
                code,
                text,
            }))) if target.is_empty() => Err(Failure::Retry(BusError::Refused {
                operation,
                target: message.exchange.clone(),
                code,
                text,
            })),
            // The connection went while the confirm was awaited: the broker may have the
            // message. Retried (a duplicate is allowed by the contract); should the retry fail,
            // the publish is reported unconfirmed, not lost.
            Ok(Ok(Err(BusError::Connection(detail)))) => {
                Err(Failure::Retry(BusError::Unconfirmed {
                    exchange: message.exchange.clone(),
                    detail,
                }))
            }
            Ok(Ok(Err(error))) => Err(Failure::Retry(error)),
            Ok(Err(_)) => Err(Failure::Retry(BusError::Unconfirmed {
                exchange: message.exchange.clone(),
                detail: "the connection was lost before the confirm".into(),
            })),
            // Final, not retried: the confirm may still come on a slow broker, and a retry
            // would then publish twice for certain.
            Err(_) => Err(Failure::Final(BusError::Unconfirmed {
                exchange: message.exchange.clone(),
                detail: format!("no confirm within {:?}", self.inner.config.confirm_timeout),
            })),
        }
    }

    async fn declare_once(&self, topology: &Topology) -> Result<(), Failure> {
        let link = self.link(&mut *self.inner.state.lock().await).await?;
        declare_on(&link, topology, self.inner.config.rpc_timeout)
            .await
            .map_err(Failure::from_error)?;
        // Remembered once the broker took it: one it refused is not declared again.
        let mut state = self.inner.state.lock().await;
        if !state.topologies.contains(topology) {
            if state.topologies.len() >= TOPOLOGIES_REMEMBERED_MAX {
                tracing::warn!(
                    addr = %self.inner.config.addr,
                    "more than {TOPOLOGIES_REMEMBERED_MAX} topologies declared on one bus; this one is not declared again after a reconnection"
                );
            } else {
                state.topologies.push(topology.clone());
            }
        }
        Ok(())
    }

    async fn consume_once(&self, queue: &str, prefetch: u16) -> Result<Deliveries, Failure> {
        let chan = self.open_consumer(queue, prefetch).await?;
        let subscription = Subscription {
            chan,
            queue: queue.to_owned(),
            prefetch,
            resume: self.inner.config.resume_consumers.then(|| WireBus {
                inner: self.inner.clone(),
            }),
            ended: false,
        };
        Ok(futures::stream::unfold(subscription, next_delivery).boxed())
    }

    /// A channel consuming `queue` (manual acks, `prefetch` unacked at most).
    async fn open_consumer(&self, queue: &str, prefetch: u16) -> Result<Chan, Failure> {
        let link = self.link(&mut *self.inner.state.lock().await).await?;
        let mut chan = link.open_channel(self.inner.config.rpc_timeout).await?;
        let qos = basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: prefetch,
            global: false,
        });
        chan.call(AMQPClass::Basic(qos), "basic.qos", queue).await?;
        let consume = basic::AMQPMethod::Consume(basic::Consume {
            queue: short_string("queue name", queue).map_err(Failure::Final)?,
            consumer_tag: ShortString::default(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        });
        chan.call(AMQPClass::Basic(consume), "basic.consume", queue)
            .await?;
        Ok(chan)
    }

    async fn with_one_retry<T, F, Fut>(&self, operation: &str, attempt: F) -> Result<T, BusError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        match attempt().await {
            Ok(value) => Ok(value),
            Err(Failure::Final(error)) => Err(error),
            Err(Failure::Retry(error)) => {
                tracing::warn!(operation, %error, "retrying once");
                attempt().await.map_err(Failure::into_error)
            }
        }
    }
}

#[async_trait]
impl<N: Net> Bus for WireBus<N> {
    async fn declare(&self, topology: &Topology) -> Result<(), BusError> {
        self.with_one_retry("declare", || self.declare_once(topology))
            .await
    }

    async fn publish(&self, publication: Publication) -> Result<(), BusError> {
        let message = outgoing(publication)?;
        let first = match self.publish_once(&message).await {
            Ok(()) => return Ok(()),
            Err(Failure::Final(error)) => return Err(error),
            Err(Failure::Retry(error)) => error,
        };
        tracing::warn!(operation = "basic.publish", error = %first, "retrying once");
        self.publish_once(&message)
            .await
            .map_err(|retry| BusError::after_publish_retry(first, retry.into_error()))
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Deliveries, BusError> {
        if options.prefetch == 0 {
            return Err(BusError::Invalid(format!(
                "consume {queue:?}: prefetch must be at least 1 (0 means unlimited in AMQP)"
            )));
        }
        short_string("queue name", queue)?;
        self.with_one_retry("basic.consume", || {
            self.consume_once(queue, options.prefetch)
        })
        .await
    }
}

/// How an attempt failed: worth one retry on a fresh connection or channel, or final.
enum Failure {
    Retry(BusError),
    Final(BusError),
}

impl Failure {
    fn into_error(self) -> BusError {
        match self {
            Failure::Retry(error) | Failure::Final(error) => error,
        }
    }

    /// Refusals are final; a lost connection is worth a retry.
    fn from_error(error: BusError) -> Failure {
        match error {
            BusError::Connection(_) => Failure::Retry(error),
            other => Failure::Final(other),
        }
    }
}

impl From<BusError> for Failure {
    fn from(error: BusError) -> Failure {
        Failure::from_error(error)
    }
}

async fn declare_on(
    link: &Arc<Link>,
    topology: &Topology,
    timeout: Duration,
) -> Result<(), BusError> {
    let mut chan = link.open_channel(timeout).await?;
    for decl in &topology.exchanges {
        let method = exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: short_string("exchange name", &decl.name)?,
            kind: decl.kind.as_str().into(),
            passive: false,
            durable: decl.durable,
            auto_delete: false,
            internal: false,
            nowait: false,
            arguments: FieldTable::default(),
        });
        chan.call(AMQPClass::Exchange(method), "exchange.declare", &decl.name)
            .await?;
    }
    for decl in &topology.queues {
        let method = queue::AMQPMethod::Declare(queue::Declare {
            queue: short_string("queue name", &decl.name)?,
            passive: false,
            durable: decl.durable,
            exclusive: false,
            auto_delete: false,
            nowait: false,
            arguments: queue_arguments(&decl.limits),
        });
        chan.call(AMQPClass::Queue(method), "queue.declare", &decl.name)
            .await?;
    }
    for binding in &topology.bindings {
        let target = format!("{} -> {}", binding.exchange, binding.queue);
        let method = queue::AMQPMethod::Bind(queue::Bind {
            queue: short_string("queue name", &binding.queue)?,
            exchange: short_string("exchange name", &binding.exchange)?,
            routing_key: short_string("routing key", &binding.routing_key)?,
            nowait: false,
            arguments: FieldTable::default(),
        });
        chan.call(AMQPClass::Queue(method), "queue.bind", &target)
            .await?;
    }
    chan.close();
    Ok(())
}

// ---------------------------------------------------------------------------------- the link

/// What the connection task hands a channel.
enum Incoming {
    Method(AMQPClass),
    Delivery(Box<RawDelivery>),
    /// The broker closed the channel.
    Closed {
        code: u16,
        text: String,
    },
}

struct RawDelivery {
    deliver: basic::Deliver,
    properties: BasicProperties,
    body: Vec<u8>,
}

/// Frames for the connection task to write. Those of a channel carry its closed flag: the broker
/// may close the channel while they wait, and frames written after its `close-ok` would land on
/// a closed channel, which RabbitMQ answers by closing the whole connection (504).
struct Outbound {
    bytes: Vec<u8>,
    /// The channel's flag that the broker closed it (our own close does not set it: frames
    /// queued before that close still go out, ahead of it).
    closed_by_broker: Option<Arc<AtomicBool>>,
}

impl Outbound {
    fn stale(&self) -> bool {
        self.closed_by_broker
            .as_ref()
            .is_some_and(|closed| closed.load(Ordering::SeqCst))
    }
}

/// A channel number's route in the connection task.
enum Route {
    Open {
        sender: mpsc::UnboundedSender<Incoming>,
        open: Arc<AtomicBool>,
        /// Set when the broker closes the channel (see [`Outbound`]).
        closed_by_broker: Arc<AtomicBool>,
    },
    /// We sent `channel.close`; the number is free once `close-ok` arrives.
    Closing,
}

type Routes = Arc<Mutex<BTreeMap<u16, Route>>>;

/// One AMQP connection. The connection task owns the socket; this is the handle.
struct Link {
    out: mpsc::UnboundedSender<Outbound>,
    routes: Routes,
    /// Set (with the reason) when the connection is dead.
    dead: watch::Receiver<Option<String>>,
    frame_max_bytes: u32,
    channel_max: u16,
}

impl Link {
    /// Connects and shakes hands, bounded by `connect_timeout`; then starts the connection task.
    async fn open<N: Net>(net: &N, config: &WireBusConfig) -> Result<Arc<Link>, BusError> {
        let attempt = async {
            let stream = net.connect(&config.addr).await.map_err(|error| {
                BusError::Connection(format!("cannot connect to {}: {error}", config.addr))
            })?;
            handshake(stream, config).await
        };
        match tokio::time::timeout(config.connect_timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(BusError::Connection(format!(
                "cannot connect to {}: no handshake within {:?}",
                config.addr, config.connect_timeout
            ))),
        }
    }

    fn alive(&self) -> bool {
        self.dead.borrow().is_none()
    }

    fn lost(&self) -> BusError {
        let reason = self
            .dead
            .borrow()
            .clone()
            .unwrap_or_else(|| "closed".into());
        BusError::Connection(format!("the AMQP connection was lost: {reason}"))
    }

    /// Sends frames of the connection itself, or that close a channel.
    fn send(&self, bytes: Vec<u8>) -> Result<(), BusError> {
        self.send_outbound(Outbound {
            bytes,
            closed_by_broker: None,
        })
    }

    /// Sends frames of a channel: dropped, not written, if the broker has closed it by the
    /// time they would go out (see [`Outbound`]).
    fn send_on(&self, closed_by_broker: &Arc<AtomicBool>, bytes: Vec<u8>) -> Result<(), BusError> {
        self.send_outbound(Outbound {
            bytes,
            closed_by_broker: Some(Arc::clone(closed_by_broker)),
        })
    }

    fn send_outbound(&self, outbound: Outbound) -> Result<(), BusError> {
        if !self.alive() {
            return Err(self.lost());
        }
        self.out.send(outbound).map_err(|_| self.lost())
    }

    async fn open_channel(self: &Arc<Link>, timeout: Duration) -> Result<Chan, BusError> {
        let (sender, receiver) = mpsc::unbounded_channel();
        let open = Arc::new(AtomicBool::new(true));
        let closed_by_broker = Arc::new(AtomicBool::new(false));
        let number = {
            let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
            let number = (1..=self.channel_max)
                .find(|n| !routes.contains_key(n))
                .ok_or_else(|| {
                    BusError::Invalid(format!("all {} channels are in use", self.channel_max))
                })?;
            routes.insert(
                number,
                Route::Open {
                    sender,
                    open: open.clone(),
                    closed_by_broker: closed_by_broker.clone(),
                },
            );
            number
        };
        let mut chan = Chan {
            number,
            link: self.clone(),
            receiver,
            open,
            closed_by_broker,
            timeout,
        };
        let method = channel::AMQPMethod::Open(channel::Open {});
        chan.call(AMQPClass::Channel(method), "channel.open", "")
            .await?;
        Ok(chan)
    }

    async fn close(&self, timeout: Duration) {
        let close = connection::AMQPMethod::Close(connection::Close {
            reply_code: 200,
            reply_text: "OK".into(),
            class_id: 0,
            method_id: 0,
        });
        if self
            .send(method_frame(0, AMQPClass::Connection(close)))
            .is_err()
        {
            return;
        }
        let mut dead = self.dead.clone();
        let _ = tokio::time::timeout(timeout, dead.wait_for(Option::is_some)).await;
    }
}

/// Reads frames from a stream, keeping what is left over. `next` is cancel-safe.
struct FrameReader<R> {
    reader: R,
    buffer: Vec<u8>,
}

enum Frame {
    Parsed(Box<AMQPFrame>),
    Body(u16, Vec<u8>),
    Heartbeat,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    async fn next(&mut self) -> Result<Frame, String> {
        loop {
            if let Some((frame, used)) = cut_frame(&self.buffer)? {
                self.buffer.drain(..used);
                return Ok(frame);
            }
            self.buffer.reserve(READ_CHUNK_BYTES);
            match self.reader.read_buf(&mut self.buffer).await {
                Ok(0) => return Err("the broker closed the stream".into()),
                Ok(_) => {}
                Err(error) => return Err(format!("read failed: {error}")),
            }
        }
    }
}

fn cut_frame(buffer: &[u8]) -> Result<Option<(Frame, usize)>, String> {
    if buffer.len() < 7 {
        return Ok(None);
    }
    let channel = u16::from_be_bytes([buffer[1], buffer[2]]);
    let size = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]) as usize;
    if size + FRAME_OVERHEAD_BYTES > FRAME_MAX_BYTES as usize {
        return Err(format!(
            "the broker sent a frame of {size} bytes, over frame_max"
        ));
    }
    let total = size + FRAME_OVERHEAD_BYTES;
    if buffer.len() < total {
        return Ok(None);
    }
    if buffer[total - 1] != FRAME_END {
        return Err("the broker sent a frame without its end byte".into());
    }
    let frame = match buffer[0] {
        FRAME_BODY => Frame::Body(channel, buffer[7..total - 1].to_vec()),
        FRAME_HEARTBEAT => Frame::Heartbeat,
        _ => match parse_frame(&buffer[..total]) {
            Ok((_, frame)) => Frame::Parsed(Box::new(frame)),
            Err(error) => return Err(format!("unparseable frame from the broker: {error}")),
        },
    };
    Ok(Some((frame, total)))
}

async fn handshake<S>(stream: S, config: &WireBusConfig) -> Result<Arc<Link>, BusError>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (reader, mut writer) = tokio::io::split(stream);
    let mut frames = FrameReader {
        reader,
        buffer: Vec::new(),
    };
    let io = |error: std::io::Error| BusError::Connection(format!("{}: {error}", config.addr));
    writer
        .write_all(b"AMQP\x00\x00\x09\x01")
        .await
        .map_err(io)?;
    expect_connection(&mut frames, config, "connection.start").await?;
    let mut response = Vec::new();
    response.push(0);
    response.extend_from_slice(config.user.as_bytes());
    response.push(0);
    response.extend_from_slice(config.password.as_bytes());
    let mut client_properties = FieldTable::default();
    client_properties.insert(
        "product".into(),
        amq_protocol::types::AMQPValue::LongString("warren wire client".into()),
    );
    let mut capabilities = FieldTable::default();
    for capability in [
        "publisher_confirms",
        "basic.nack",
        "consumer_cancel_notify",
        "authentication_failure_close",
    ] {
        capabilities.insert(
            capability.into(),
            amq_protocol::types::AMQPValue::Boolean(true),
        );
    }
    client_properties.insert(
        "capabilities".into(),
        amq_protocol::types::AMQPValue::FieldTable(capabilities),
    );
    let start_ok = connection::AMQPMethod::StartOk(connection::StartOk {
        client_properties,
        mechanism: "PLAIN".into(),
        response: LongString::from(response),
        locale: "en_US".into(),
    });
    writer
        .write_all(&method_frame(0, AMQPClass::Connection(start_ok)))
        .await
        .map_err(io)?;
    let tune = match expect_connection(&mut frames, config, "connection.tune").await? {
        connection::AMQPMethod::Tune(tune) => tune,
        _ => unreachable!("expect_connection checks the method"),
    };
    let heartbeat_s = match (tune.heartbeat, config.heartbeat_s) {
        (0, mine) | (mine, 0) => mine,
        (theirs, mine) => theirs.min(mine),
    };
    let frame_max_bytes = match tune.frame_max {
        0 => FRAME_MAX_BYTES,
        theirs => theirs.min(FRAME_MAX_BYTES),
    };
    let channel_max = match tune.channel_max {
        0 => CHANNELS_MAX,
        theirs => theirs.min(CHANNELS_MAX),
    };
    let tune_ok = connection::AMQPMethod::TuneOk(connection::TuneOk {
        channel_max,
        frame_max: frame_max_bytes,
        heartbeat: heartbeat_s,
    });
    let open = connection::AMQPMethod::Open(connection::Open {
        virtual_host: short_string("vhost", &config.vhost)?,
    });
    let mut bytes = method_frame(0, AMQPClass::Connection(tune_ok));
    bytes.extend(method_frame(0, AMQPClass::Connection(open)));
    writer.write_all(&bytes).await.map_err(io)?;
    expect_connection(&mut frames, config, "connection.open-ok").await?;

    let (out, out_receiver) = mpsc::unbounded_channel();
    let (dead_sender, dead) = watch::channel(None);
    let routes: Routes = Arc::default();
    let heartbeat = (heartbeat_s > 0).then(|| Duration::from_secs(u64::from(heartbeat_s)));
    // A blocked write stops the reading and the heartbeat checks of this task: it must not
    // outlast the time in which a silent broker is declared gone.
    let write_timeout = heartbeat.map_or(config.write_timeout, |h| config.write_timeout.min(h * 2));
    let task = Connection {
        frames,
        writer,
        out: out_receiver,
        routes: routes.clone(),
        dead: dead_sender,
        heartbeat,
        write_timeout,
        received_body_bytes_max: config.received_body_bytes_max,
        partial: BTreeMap::new(),
        pending: Vec::new(),
    };
    tokio::spawn(task.run());
    Ok(Arc::new(Link {
        out,
        routes,
        dead,
        frame_max_bytes,
        channel_max,
    }))
}

/// The next connection method of the handshake; a `connection.close` is the broker's refusal.
async fn expect_connection<R: AsyncRead + Unpin>(
    frames: &mut FrameReader<R>,
    config: &WireBusConfig,
    expected: &'static str,
) -> Result<connection::AMQPMethod, BusError> {
    loop {
        let frame = frames.next().await.map_err(|error| {
            BusError::Connection(format!("{} during the handshake: {error}", config.addr))
        })?;
        let method = match frame {
            Frame::Heartbeat => continue,
            Frame::Parsed(frame) => match *frame {
                AMQPFrame::Method(0, AMQPClass::Connection(method)) => method,
                _ => {
                    return Err(BusError::Connection(format!(
                        "{}: unexpected frame while waiting for {expected}",
                        config.addr
                    )));
                }
            },
            _ => {
                return Err(BusError::Connection(format!(
                    "{}: unexpected frame while waiting for {expected}",
                    config.addr
                )));
            }
        };
        let matches = matches!(
            (&method, expected),
            (connection::AMQPMethod::Start(_), "connection.start")
                | (connection::AMQPMethod::Tune(_), "connection.tune")
                | (connection::AMQPMethod::OpenOk(_), "connection.open-ok")
        );
        if matches {
            return Ok(method);
        }
        if let connection::AMQPMethod::Close(close) = method {
            // 320 CONNECTION_FORCED: the broker is shutting down or restarting, which a later
            // attempt outlives (lapin reports it as a lost connection too).
            if close.reply_code == CONNECTION_FORCED {
                return Err(BusError::Connection(format!(
                    "{}: the broker closed the connection during the handshake: {} {}",
                    config.addr, close.reply_code, close.reply_text
                )));
            }
            return Err(BusError::Refused {
                operation: "connection.open",
                target: format!(
                    "{} vhost {:?} as {:?}",
                    config.addr, config.vhost, config.user
                ),
                code: close.reply_code,
                text: close.reply_text.to_string(),
            });
        }
        return Err(BusError::Connection(format!(
            "{}: unexpected method while waiting for {expected}",
            config.addr
        )));
    }
}

/// The task that owns a connection's socket.
struct Connection<R, W> {
    frames: FrameReader<R>,
    writer: W,
    out: mpsc::UnboundedReceiver<Outbound>,
    routes: Routes,
    dead: watch::Sender<Option<String>>,
    heartbeat: Option<Duration>,
    /// See [`WireBusConfig::write_timeout`].
    write_timeout: Duration,
    /// See [`WireBusConfig::received_body_bytes_max`].
    received_body_bytes_max: u64,
    /// Deliveries whose header or body frames are still coming, by channel.
    partial: BTreeMap<u16, Partial>,
    /// Frames to write that handling an incoming frame produced (close-ok replies).
    pending: Vec<u8>,
}

enum Wake {
    Frame(Result<Frame, String>),
    Out(Option<Outbound>),
    Timer,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Connection<R, W> {
    async fn run(mut self) {
        let reason = self.serve().await;
        tracing::debug!(%reason, "AMQP connection ended");
        let _ = self.writer.shutdown().await;
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .for_each(|route| {
                if let Route::Open { open, .. } = route {
                    open.store(false, Ordering::SeqCst);
                }
            });
        self.dead.send_replace(Some(reason));
        // Dropping the routes ends every channel's receiver: consumers and confirms fail.
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Runs until the connection is dead; returns why.
    async fn serve(&mut self) -> String {
        let now = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
        let (mut last_read, mut last_write) = (now, now);
        loop {
            let deadline = self
                .heartbeat
                .map(|h| (last_write + h / 2).min(last_read + h * 2));
            let wake = tokio::select! {
                frame = self.frames.next() => Wake::Frame(frame),
                bytes = self.out.recv() => Wake::Out(bytes),
                () = sleep_until(deadline) => Wake::Timer,
            };
            match wake {
                Wake::Frame(Ok(frame)) => {
                    last_read = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
                    let over = self.on_frame(frame);
                    if !self.pending.is_empty() {
                        let pending = std::mem::take(&mut self.pending);
                        if let Err(error) = self.write(&pending).await {
                            return error;
                        }
                        last_write = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
                    }
                    if let Some(reason) = over {
                        return reason;
                    }
                }
                Wake::Frame(Err(reason)) => return reason,
                // Every handle is gone: nobody can use this connection any more.
                Wake::Out(None) => return "the bus let go of the connection".into(),
                Wake::Out(Some(first)) => {
                    let mut batch = Vec::new();
                    let mut next = Some(first);
                    while let Some(outbound) = next {
                        if outbound.stale() {
                            tracing::debug!("frames for a channel the broker closed dropped");
                        } else {
                            batch.extend_from_slice(&outbound.bytes);
                        }
                        next = self.out.try_recv().ok();
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    if let Err(error) = self.write(&batch).await {
                        return error;
                    }
                    last_write = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
                }
                Wake::Timer => {
                    let Some(heartbeat) = self.heartbeat else {
                        continue;
                    };
                    let now = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
                    if now >= last_read + heartbeat * 2 {
                        return format!(
                            "no frame from the broker for {:?} (missed heartbeats)",
                            heartbeat * 2
                        );
                    }
                    if now >= last_write + heartbeat / 2 {
                        if let Err(error) = self
                            .write(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END])
                            .await
                        {
                            return error;
                        }
                        last_write = now;
                    }
                }
            }
        }
    }

    /// Writes `bytes`, in pieces that must each go out within the write timeout: a write
    /// that makes no progress for that long ends the connection, a long one that does not.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        let limit = self.write_timeout;
        let stalled =
            || format!("a write made no progress for {limit:?}: the broker is not reading");
        for piece in bytes.chunks(WRITE_PIECE_BYTES) {
            tokio::time::timeout(limit, self.writer.write_all(piece))
                .await
                .map_err(|_| stalled())?
                .map_err(|error| format!("write failed: {error}"))?;
        }
        tokio::time::timeout(limit, self.writer.flush())
            .await
            .map_err(|_| stalled())?
            .map_err(|error| format!("write failed: {error}"))
    }

    /// Handles one frame; `Some(reason)` when the connection is over.
    fn on_frame(&mut self, frame: Frame) -> Option<String> {
        let frame = match frame {
            Frame::Heartbeat => return None,
            Frame::Body(number, body) => {
                if let Some(partial) = self.partial.get_mut(&number) {
                    partial.received += body.len() as u64;
                    // Past the limit the bytes are counted, not kept (see `complete_if_whole`).
                    if partial.size <= self.received_body_bytes_max {
                        partial.body.extend_from_slice(&body);
                    }
                    self.complete_if_whole(number);
                }
                return None;
            }
            Frame::Parsed(frame) => *frame,
        };
        match frame {
            AMQPFrame::Method(0, AMQPClass::Connection(method)) => match method {
                connection::AMQPMethod::Close(close) => {
                    let ok = connection::AMQPMethod::CloseOk(connection::CloseOk {});
                    self.pending
                        .extend(method_frame(0, AMQPClass::Connection(ok)));
                    Some(format!(
                        "the broker closed the connection: {} {}",
                        close.reply_code, close.reply_text
                    ))
                }
                connection::AMQPMethod::CloseOk(_) => Some("closed by the bus".into()),
                _ => None,
            },
            AMQPFrame::Method(number, AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver))) => {
                let partial = Partial {
                    deliver,
                    properties: None,
                    size: 0,
                    received: 0,
                    body: Vec::new(),
                };
                self.partial.insert(number, partial);
                None
            }
            AMQPFrame::Header(number, header) => {
                if let Some(partial) = self.partial.get_mut(&number) {
                    partial.properties = Some(header.properties);
                    partial.size = header.body_size;
                    // The size is the broker's word: what is reserved is bounded by ours.
                    let reserve = header.body_size.min(RESERVED_BODY_BYTES_MAX);
                    partial
                        .body
                        .reserve_exact(usize::try_from(reserve).unwrap_or(0));
                    self.complete_if_whole(number);
                }
                None
            }
            AMQPFrame::Method(number, AMQPClass::Channel(channel::AMQPMethod::Close(close))) => {
                let ok = channel::AMQPMethod::CloseOk(channel::CloseOk {});
                self.pending
                    .extend(method_frame(number, AMQPClass::Channel(ok)));
                self.partial.remove(&number);
                let route = self
                    .routes
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&number);
                if let Some(Route::Open {
                    sender,
                    open,
                    closed_by_broker,
                }) = route
                {
                    closed_by_broker.store(true, Ordering::SeqCst);
                    open.store(false, Ordering::SeqCst);
                    let _ = sender.send(Incoming::Closed {
                        code: close.reply_code,
                        text: close.reply_text.to_string(),
                    });
                }
                None
            }
            AMQPFrame::Method(number, AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))) => {
                let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
                if matches!(routes.get(&number), Some(Route::Closing)) {
                    routes.remove(&number);
                }
                None
            }
            AMQPFrame::Method(number, class) => {
                self.route(number, Incoming::Method(class));
                None
            }
            _ => None,
        }
    }

    /// Hands a delivery to its channel once its header and whole body are in.
    fn complete_if_whole(&mut self, number: u16) {
        let whole = self
            .partial
            .get(&number)
            .is_some_and(|p| p.properties.is_some() && p.received >= p.size);
        if !whole {
            return;
        }
        if let Some(partial) = self.partial.remove(&number) {
            if partial.size > self.received_body_bytes_max {
                // Never handed on: rejected without requeue (dead-lettered, where the queue
                // has a dead-letter exchange), as a consumer rejects any poison message.
                tracing::warn!(
                    channel = number,
                    delivery_tag = partial.deliver.delivery_tag,
                    size = partial.size,
                    limit = self.received_body_bytes_max,
                    "delivery larger than the bus takes; rejected without requeue"
                );
                let reject = basic::AMQPMethod::Reject(basic::Reject {
                    delivery_tag: partial.deliver.delivery_tag,
                    requeue: false,
                });
                self.pending
                    .extend(method_frame(number, AMQPClass::Basic(reject)));
                return;
            }
            let delivery = RawDelivery {
                deliver: partial.deliver,
                properties: partial.properties.unwrap_or_default(),
                body: partial.body,
            };
            self.route(number, Incoming::Delivery(Box::new(delivery)));
        }
    }

    fn route(&mut self, number: u16, incoming: Incoming) {
        let routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(Route::Open { sender, .. }) = routes.get(&number) {
            let _ = sender.send(incoming);
        }
    }
}

/// A delivery whose header or body is still coming.
struct Partial {
    deliver: basic::Deliver,
    properties: Option<BasicProperties>,
    /// The body's size, as the content header gives it.
    size: u64,
    /// Body bytes received so far.
    received: u64,
    body: Vec<u8>,
}

/// Most bytes reserved ahead for a body on the content header's word.
const RESERVED_BODY_BYTES_MAX: u64 = 64 * 1024;

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------- channels

/// One open channel and its incoming methods and deliveries.
struct Chan {
    number: u16,
    link: Arc<Link>,
    receiver: mpsc::UnboundedReceiver<Incoming>,
    /// Cleared when the channel closes (either side) or the connection dies.
    open: Arc<AtomicBool>,
    /// Set when the broker closes it (see [`Outbound`]).
    closed_by_broker: Arc<AtomicBool>,
    timeout: Duration,
}

impl Chan {
    fn send(&self, class: AMQPClass) -> Result<(), BusError> {
        self.link
            .send_on(&self.closed_by_broker, method_frame(self.number, class))
    }

    /// Sends a method and waits for the broker's answer: `Refused` with its reply code when the
    /// broker closes the channel instead.
    async fn call(
        &mut self,
        class: AMQPClass,
        operation: &'static str,
        target: &str,
    ) -> Result<AMQPClass, BusError> {
        self.send(class)?;
        let answer = tokio::time::timeout(self.timeout, self.receiver.recv()).await;
        match answer {
            Ok(Some(Incoming::Method(reply))) => Ok(reply),
            Ok(Some(Incoming::Closed { code, text })) => Err(BusError::Refused {
                operation,
                target: target.to_owned(),
                code,
                text,
            }),
            Ok(Some(Incoming::Delivery(_))) => Err(BusError::Connection(format!(
                "{operation} {target:?}: a delivery arrived instead of the answer"
            ))),
            Ok(None) => Err(self.link.lost()),
            Err(_) => Err(BusError::Connection(format!(
                "{operation} {target:?}: no answer within {:?}",
                self.timeout
            ))),
        }
    }

    /// Closes the channel (the broker requeues its unacked deliveries); the number is reused
    /// only after the broker's `close-ok`.
    fn close(&self) {
        if !self.open.swap(false, Ordering::SeqCst) {
            return;
        }
        {
            let mut routes = self
                .link
                .routes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(route) = routes.get_mut(&self.number) {
                *route = Route::Closing;
            }
        }
        let close = channel::AMQPMethod::Close(channel::Close {
            reply_code: 200,
            reply_text: "OK".into(),
            class_id: 0,
            method_id: 0,
        });
        // Untagged: the channel's own flag is already down.
        let _ = self
            .link
            .send(method_frame(self.number, AMQPClass::Channel(close)));
    }
}

impl Drop for Chan {
    fn drop(&mut self) {
        self.close();
    }
}

// ---------------------------------------------------------------------------------- publishing

type ConfirmResult = Result<bool, BusError>;

/// The publishing channel in confirm mode, and the publishes waiting for their confirm.
struct Publisher {
    link: Arc<Link>,
    number: u16,
    open: Arc<AtomicBool>,
    closed_by_broker: Arc<AtomicBool>,
    pending: Arc<Mutex<Pending>>,
}

#[derive(Default)]
struct Pending {
    /// Sequence number of the last publish.
    last: u64,
    waiting: BTreeMap<u64, oneshot::Sender<ConfirmResult>>,
    /// Set when the channel closed: later publishes must use a new one.
    failed: bool,
}

impl Publisher {
    /// Takes over a channel in confirm mode; a task resolves confirms as they arrive.
    fn start(chan: Chan) -> Arc<Publisher> {
        let publisher = Arc::new(Publisher {
            link: chan.link.clone(),
            number: chan.number,
            open: chan.open.clone(),
            closed_by_broker: chan.closed_by_broker.clone(),
            pending: Arc::default(),
        });
        tokio::spawn(confirm_loop(chan, publisher.pending.clone()));
        publisher
    }

    fn usable(&self) -> bool {
        self.link.alive()
            && self.open.load(Ordering::SeqCst)
            && !self
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .failed
    }

    /// Sends the publish; the receiver resolves with its confirm.
    fn publish(&self, message: &Outgoing) -> Result<oneshot::Receiver<ConfirmResult>, Failure> {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.failed {
            return Err(Failure::Retry(BusError::Connection(
                "the publishing channel closed".into(),
            )));
        }
        let frames = content_frames(self.number, message, self.link.frame_max_bytes);
        // Sequence numbers follow the order frames reach the connection task: both under this lock.
        self.link
            .send_on(&self.closed_by_broker, frames)
            .map_err(Failure::Retry)?;
        pending.last += 1;
        let (sender, receiver) = oneshot::channel();
        let seq = pending.last;
        pending.waiting.insert(seq, sender);
        Ok(receiver)
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        if self.open.swap(false, Ordering::SeqCst) {
            let close = channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "OK".into(),
                class_id: 0,
                method_id: 0,
            });
            if let Some(route) = self
                .link
                .routes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get_mut(&self.number)
            {
                *route = Route::Closing;
            }
            let _ = self
                .link
                .send(method_frame(self.number, AMQPClass::Channel(close)));
        }
    }
}

async fn confirm_loop(mut chan: Chan, pending: Arc<Mutex<Pending>>) {
    // The publisher owns closing; this task only listens.
    chan.open = Arc::new(AtomicBool::new(false));
    let failure = loop {
        match chan.receiver.recv().await {
            Some(Incoming::Method(AMQPClass::Basic(basic::AMQPMethod::Ack(ack)))) => {
                settle(&pending, ack.delivery_tag, ack.multiple, || Ok(true));
            }
            Some(Incoming::Method(AMQPClass::Basic(basic::AMQPMethod::Nack(nack)))) => {
                settle(&pending, nack.delivery_tag, nack.multiple, || Ok(false));
            }
            Some(Incoming::Closed { code, text }) => {
                break BusError::Refused {
                    operation: "basic.publish",
                    target: String::new(),
                    code,
                    text,
                };
            }
            Some(_) => {}
            None => break chan.link.lost(),
        }
    };
    let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
    pending.failed = true;
    for (_, waiter) in std::mem::take(&mut pending.waiting) {
        let _ = waiter.send(Err(failure.clone()));
    }
}

fn settle(pending: &Mutex<Pending>, tag: u64, multiple: bool, outcome: impl Fn() -> ConfirmResult) {
    let mut pending = pending.lock().unwrap_or_else(PoisonError::into_inner);
    let settled: Vec<oneshot::Sender<ConfirmResult>> = if multiple {
        let rest = pending.waiting.split_off(&(tag + 1));
        std::mem::replace(&mut pending.waiting, rest)
            .into_values()
            .collect()
    } else {
        pending.waiting.remove(&tag).into_iter().collect()
    };
    for waiter in settled {
        let _ = waiter.send(outcome());
    }
}

/// A publication checked and converted once, before any attempt.
struct Outgoing {
    exchange: String,
    routing_key: String,
    properties: BasicProperties,
    body: Vec<u8>,
}

fn outgoing(publication: Publication) -> Result<Outgoing, BusError> {
    let bytes = publication.body.len();
    if bytes > BODY_BYTES_MAX {
        return Err(BusError::Invalid(format!(
            "publish to {:?}: body is {bytes} bytes; the limit is {BODY_BYTES_MAX}",
            publication.exchange
        )));
    }
    short_string("exchange name", &publication.exchange)?;
    short_string("routing key", &publication.routing_key)?;
    Ok(Outgoing {
        properties: amqp_properties(&publication.properties)?,
        exchange: publication.exchange,
        routing_key: publication.routing_key,
        body: publication.body,
    })
}

/// `basic.publish`, its content header and its body frames, as one write.
fn content_frames(number: u16, message: &Outgoing, frame_max_bytes: u32) -> Vec<u8> {
    let publish = basic::AMQPMethod::Publish(basic::Publish {
        exchange: message.exchange.as_str().into(),
        routing_key: message.routing_key.as_str().into(),
        mandatory: false,
        immediate: false,
    });
    let mut bytes = method_frame(number, AMQPClass::Basic(publish));
    let header = AMQPContentHeader {
        class_id: 60,
        body_size: message.body.len() as u64,
        properties: message.properties.clone(),
    };
    bytes.extend(frame_bytes(&AMQPFrame::Header(number, header)));
    for chunk in message
        .body
        .chunks(frame_max_bytes as usize - FRAME_OVERHEAD_BYTES)
    {
        bytes.push(FRAME_BODY);
        bytes.extend_from_slice(&number.to_be_bytes());
        bytes.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
        bytes.extend_from_slice(chunk);
        bytes.push(FRAME_END);
    }
    bytes
}

fn method_frame(number: u16, class: AMQPClass) -> Vec<u8> {
    frame_bytes(&AMQPFrame::Method(number, class))
}

/// Serialises a frame built from checked values; amq-protocol fails only on a bug.
fn frame_bytes(frame: &AMQPFrame) -> Vec<u8> {
    match gen_frame(frame)(WriteContext::from(Vec::with_capacity(128))) {
        Ok(context) => context.write,
        Err(error) => {
            tracing::error!(%error, %frame, "cannot serialise frame");
            Vec::new()
        }
    }
}

// ---------------------------------------------------------------------------------- consuming

/// One consumer's channel: the state of its stream.
struct Subscription<N: Net> {
    chan: Chan,
    queue: String,
    prefetch: u16,
    /// The bus to consume again on after a lost connection (`resume_consumers`).
    resume: Option<WireBus<N>>,
    ended: bool,
}

async fn next_delivery<N: Net>(
    mut subscription: Subscription<N>,
) -> Option<(Result<Delivery, BusError>, Subscription<N>)> {
    if subscription.ended {
        return None;
    }
    loop {
        match subscription.chan.receiver.recv().await {
            Some(Incoming::Delivery(raw)) => {
                let delivery = port_delivery(raw, &subscription);
                return Some((Ok(delivery), subscription));
            }
            // consumer_cancel_notify: the queue was deleted. The stream just ends.
            Some(Incoming::Method(AMQPClass::Basic(basic::AMQPMethod::Cancel(_)))) => {
                subscription.ended = true;
                return None;
            }
            Some(Incoming::Method(_)) => {}
            Some(Incoming::Closed { code, text }) => {
                subscription.ended = true;
                let error = BusError::Refused {
                    operation: "basic.consume",
                    target: subscription.queue.clone(),
                    code,
                    text,
                };
                return Some((Err(error), subscription));
            }
            None => {
                let lost = subscription.chan.link.lost();
                if let Some(bus) = &subscription.resume {
                    // Deliveries of the lost channel cannot be settled any more; the broker
                    // redelivers them to whoever consumes next, possibly this stream.
                    tracing::info!(queue = %subscription.queue, %lost, "consuming again on a new connection");
                    match bus
                        .open_consumer(&subscription.queue, subscription.prefetch)
                        .await
                    {
                        Ok(chan) => {
                            subscription.chan = chan;
                            continue;
                        }
                        Err(failure) => {
                            subscription.ended = true;
                            return Some((Err(failure.into_error()), subscription));
                        }
                    }
                }
                subscription.ended = true;
                let error = BusError::Connection(format!(
                    "consumer of queue {:?} lost its channel: {lost}",
                    subscription.queue
                ));
                return Some((Err(error), subscription));
            }
        }
    }
}

fn port_delivery<N: Net>(raw: Box<RawDelivery>, subscription: &Subscription<N>) -> Delivery {
    let acker = WireAcker {
        link: subscription.chan.link.clone(),
        number: subscription.chan.number,
        open: subscription.chan.open.clone(),
        closed_by_broker: subscription.chan.closed_by_broker.clone(),
        delivery_tag: raw.deliver.delivery_tag,
        queue: subscription.queue.clone(),
    };
    Delivery::new(
        contract_properties(&raw.properties),
        raw.body,
        raw.deliver.redelivered,
        raw.deliver.exchange.to_string(),
        raw.deliver.routing_key.to_string(),
        Box::new(acker),
    )
}

/// Settles a delivery on the channel it came from, if that channel is still open.
struct WireAcker {
    link: Arc<Link>,
    number: u16,
    open: Arc<AtomicBool>,
    closed_by_broker: Arc<AtomicBool>,
    delivery_tag: u64,
    queue: String,
}

impl WireAcker {
    fn settle(&self, operation: &'static str, method: basic::AMQPMethod) -> Result<(), BusError> {
        if !self.open.load(Ordering::SeqCst) {
            return Err(BusError::Connection(format!(
                "{operation} on queue {:?}: the delivery's channel is closed; the broker will \
                 redeliver the message",
                self.queue
            )));
        }
        self.link
            .send_on(
                &self.closed_by_broker,
                method_frame(self.number, AMQPClass::Basic(method)),
            )
            .map_err(|error| {
                BusError::Connection(format!("{operation} on queue {:?}: {error}", self.queue))
            })
    }
}

#[async_trait]
impl Acker for WireAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let method = basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: self.delivery_tag,
            multiple: false,
        });
        self.settle("basic.ack", method)
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        let method = basic::AMQPMethod::Nack(basic::Nack {
            delivery_tag: self.delivery_tag,
            multiple: false,
            requeue,
        });
        self.settle("basic.nack", method)
    }

    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        let method = basic::AMQPMethod::Reject(basic::Reject {
            delivery_tag: self.delivery_tag,
            requeue,
        });
        self.settle("basic.reject", method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_read_like_rabbitmq_clients_do() {
        let config = WireBusConfig::from_url("amqp://u:p%40ss@broker:5673/%2f").unwrap();
        assert_eq!(
            (
                config.addr.as_str(),
                config.user.as_str(),
                config.password.as_str(),
                config.vhost.as_str()
            ),
            ("broker:5673", "u", "p@ss", "/")
        );
        let config = WireBusConfig::from_url("amqp://host/v1").unwrap();
        assert_eq!(
            (config.addr.as_str(), config.vhost.as_str()),
            ("host:5672", "v1")
        );
        assert!(WireBusConfig::from_url("http://host").is_err());
    }

    /// A connection task over `reader` and `writer` with no heartbeat, a 30 s write timeout
    /// and no channels; with the sender of its outgoing frames and its death notice.
    fn test_connection<R, W>(
        reader: R,
        writer: W,
    ) -> (
        Connection<R, W>,
        mpsc::UnboundedSender<Outbound>,
        watch::Receiver<Option<String>>,
    ) {
        let (out, out_receiver) = mpsc::unbounded_channel();
        let (dead, gone) = watch::channel(None);
        let connection = Connection {
            frames: FrameReader {
                reader,
                buffer: Vec::new(),
            },
            writer,
            out: out_receiver,
            routes: Routes::default(),
            dead,
            heartbeat: None,
            write_timeout: Duration::from_secs(30),
            received_body_bytes_max: 1024,
            partial: BTreeMap::new(),
            pending: Vec::new(),
        };
        (connection, out, gone)
    }

    /// A writer that never takes a byte: a broker that stopped reading, or a partitioned link
    /// whose buffer is full.
    struct Stuck;

    impl AsyncWrite for Stuck {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Pending
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Pending
        }

        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_the_broker_never_takes_ends_the_connection() {
        // Nothing ever arrives, and the stream stays open.
        let (reader, _broker_side) = tokio::io::duplex(64);
        let (connection, out, gone) = test_connection(reader, Stuck);
        let task = tokio::spawn(connection.run());
        out.send(Outbound {
            bytes: vec![FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END],
            closed_by_broker: None,
        })
        .unwrap();
        tokio::time::timeout(Duration::from_secs(600), task)
            .await
            .expect("the connection ended")
            .unwrap();
        let reason = gone.borrow().clone().unwrap_or_default();
        assert!(reason.contains("made no progress for 30s"), "{reason}");
    }

    /// A broker that closes with 320 CONNECTION_FORCED during the handshake (it is restarting):
    /// a lost connection, which the caller retries, not a refusal it gives up on.
    #[tokio::test]
    async fn a_handshake_the_broker_forces_closed_is_a_lost_connection() {
        use tokio::io::AsyncReadExt as _;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut header = [0; 8];
            socket.read_exact(&mut header).await.unwrap();
            let start = connection::AMQPMethod::Start(connection::Start {
                version_major: 0,
                version_minor: 9,
                server_properties: Default::default(),
                mechanisms: "PLAIN".into(),
                locales: "en_US".into(),
            });
            socket
                .write_all(&method_frame(0, AMQPClass::Connection(start)))
                .await
                .unwrap();
            let mut start_ok = [0; 512];
            let _ = socket.read(&mut start_ok).await.unwrap();
            let close = connection::AMQPMethod::Close(connection::Close {
                reply_code: CONNECTION_FORCED,
                reply_text: "CONNECTION_FORCED - broker forced connection closure".into(),
                class_id: 0,
                method_id: 0,
            });
            socket
                .write_all(&method_frame(0, AMQPClass::Connection(close)))
                .await
                .unwrap();
            let _ = socket.read(&mut start_ok).await;
        });
        let config = WireBusConfig {
            addr: addr.to_string(),
            ..WireBusConfig::default()
        };
        let error = WireBus::connect(crate::TokioNet, config).await.err();
        assert!(
            matches!(&error, Some(BusError::Connection(text)) if text.contains("320")),
            "{error:?}"
        );
    }

    /// Frames queued for a channel the broker has closed meanwhile are dropped, not written
    /// after its `close-ok` (RabbitMQ would close the whole connection); the connection's own,
    /// and a live channel's, go out.
    #[tokio::test]
    async fn frames_for_a_channel_the_broker_closed_are_not_written() {
        use tokio::io::AsyncReadExt as _;
        let (reader, _broker_writes) = tokio::io::duplex(64);
        let (writer, mut broker_reads) = tokio::io::duplex(4096);
        let (connection, out, _gone) = test_connection(reader, writer);
        let closed = Arc::new(AtomicBool::new(true));
        let open = Arc::new(AtomicBool::new(false));
        for (bytes, flag) in [
            (b"stale".to_vec(), Some(closed)),
            (b"live|".to_vec(), Some(open)),
            (b"conn|".to_vec(), None),
        ] {
            out.send(Outbound {
                bytes,
                closed_by_broker: flag,
            })
            .unwrap();
        }
        tokio::spawn(connection.run());
        let mut written = vec![0; 10];
        broker_reads.read_exact(&mut written).await.unwrap();
        assert_eq!(&written, b"live|conn|");
    }
}
