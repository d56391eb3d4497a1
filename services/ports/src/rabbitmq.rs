//! The real-mode `Bus`: RabbitMQ through lapin.
//!
//! One AMQP connection per `RabbitBus`, one publishing channel in confirm mode shared by every
//! publisher (behind a mutex held only while the frame is handed to lapin, so confirms are awaited
//! concurrently), a short-lived channel per `declare`, and a channel of its own per consumer so
//! that `basic.qos` limits exactly that consumer and dropping its stream requeues exactly its
//! unacked deliveries.
//!
//! Failures: a channel-level error (RabbitMQ closes the channel with a soft reply code such as
//! 404 or 406) becomes [`BusError::Refused`] with the broker's code and text; anything else
//! (socket, heartbeat, connection closed) becomes [`BusError::Connection`]. When the connection
//! or the publishing channel is found dead, the bus reconnects (a bounded number of attempts
//! with exponential backoff on `tokio::time`), declares again every topology it declared before,
//! and retries the operation once. A consumer stream is not resumed: it ends with an error, and
//! the service consumes again, which reconnects.
//!
//! Every exchange with the broker is bounded in time ([`ROUND_TRIP_TIMEOUT_MS`],
//! [`CONFIRM_TIMEOUT_MS`]): lapin can leave a call pending forever when the broker closes the
//! connection under it (amqp-rs/lapin#409, open), and a service must hear about it rather than
//! hang. A call that outlives its bound abandons the connection it used, so the retry reconnects.
//!
//! Real mode only: lapin runs its socket I/O on an OS thread of its own (see DESIGN.md), so this
//! adapter never runs inside a simulation.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use contracts::{BODY_BYTES_MAX, ExchangeKind, Publication, Topology};
use futures::Stream;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::sync::Mutex;

use crate::amqp_properties::{amqp_properties, contract_properties, queue_arguments, short_string};
use crate::bus::{
    Acker, Bus, BusError, ConsumeOptions, Deliveries, Delivery, TOPOLOGIES_REMEMBERED_MAX,
};

/// Connection attempts when the connection is found dead, before giving up.
pub const RECONNECT_ATTEMPTS_MAX: u32 = 5;
/// Pause after the first failed reconnection attempt; doubles after each further failure.
const RECONNECT_BACKOFF_FIRST_MS: u64 = 100;
/// Longest pause between reconnection attempts.
const RECONNECT_BACKOFF_MAX_MS: u64 = 2_000;
/// One connection attempt (TCP, AMQP handshake, vhost open) may take this long.
const CONNECT_TIMEOUT_MS: u64 = 10_000;
/// A publish waits this long for the broker's confirm (a broker under a memory or disk alarm
/// blocks publishers indefinitely; a service must hear about it).
pub const CONFIRM_TIMEOUT_MS: u64 = 30_000;
/// Any other exchange with the broker (channel open and close, `confirm.select`, declares,
/// binds, `basic.qos`, `basic.consume`, handing a publish or a settlement to lapin, closing) may
/// take this long.
pub const ROUND_TRIP_TIMEOUT_MS: u64 = 10_000;
/// AMQP reply code of a normal close.
const REPLY_SUCCESS: u16 = 200;
/// Shown to RabbitMQ's management UI as the connection's name.
const CONNECTION_NAME: &str = "warren";

/// A [`Bus`] on RabbitMQ, through lapin.
pub struct RabbitBus {
    /// The URL as given, with credentials: needed to reconnect.
    url_with_credentials: String,
    /// The URL with its password masked: the only form that appears in errors and logs.
    url_redacted: String,
    /// The password, so that it can be scrubbed from lapin's error texts.
    password: Option<String>,
    link: Mutex<Link>,
    /// Set when a call on the connection outlived its bound: lapin may still report the
    /// connection as connected, so the next use replaces it instead of trusting that.
    connection_suspect: AtomicBool,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("url", &self.url_redacted)
            .finish_non_exhaustive()
    }
}

/// The connection and the publishing channel. `None` means "open it before use".
struct Link {
    connection: Option<Connection>,
    publisher: Option<Channel>,
    /// Declared so far; declared again on every new connection (a broker that lost them, as a
    /// recreated RabbitMQ does, would otherwise answer every consume with 404).
    topologies: Vec<Topology>,
    /// Set by [`RabbitBus::close`]; every later operation fails with [`BusError::Closed`].
    closed: bool,
}

/// How an attempt at an operation failed: worth one retry on a fresh connection and channel,
/// or final.
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
}

/// A publication converted to lapin's types, so that the conversion (which can fail on
/// over-long strings) happens once, before any attempt.
struct Outgoing {
    exchange: ShortString,
    routing_key: ShortString,
    properties: BasicProperties,
    body: Vec<u8>,
}

impl RabbitBus {
    /// Connects to `url` (for example `amqp://guest:guest@127.0.0.1:5672/%2f`). Fails fast:
    /// one attempt, bounded by a timeout; the error names the URL without its password.
    pub async fn connect(url: &str) -> Result<RabbitBus, BusError> {
        let bus = RabbitBus {
            url_with_credentials: url.to_owned(),
            url_redacted: redact_url(url),
            password: url_password(url),
            link: Mutex::new(Link {
                connection: None,
                publisher: None,
                topologies: Vec::new(),
                closed: false,
            }),
            connection_suspect: AtomicBool::new(false),
        };
        let connection = bus.open_connection().await.map_err(BusError::Connection)?;
        bus.link.lock().await.connection = Some(connection);
        tracing::info!(url = %bus.url_redacted, "connected to RabbitMQ");
        Ok(bus)
    }

    /// The broker URL with its password masked.
    pub fn url(&self) -> &str {
        &self.url_redacted
    }

    /// Closes the publishing channel and the connection. Consumers' channels close with the
    /// connection, which requeues their unacked deliveries. Later operations fail with
    /// [`BusError::Closed`].
    pub async fn close(&self) -> Result<(), BusError> {
        let mut link = self.link.lock().await;
        link.closed = true;
        if let Some(publisher) = link.publisher.take()
            && publisher.status().connected()
        {
            // The connection close below covers this channel too; a failure here changes nothing.
            let _ = bounded(publisher.close(REPLY_SUCCESS, "OK".into())).await;
        }
        let Some(connection) = link.connection.take() else {
            return Ok(());
        };
        if !connection.status().connected() {
            return Ok(());
        }
        match bounded(connection.close(REPLY_SUCCESS, "OK".into())).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(BusError::Connection(format!(
                "closing the connection to {}: {}",
                self.url_redacted,
                self.scrub(&error.to_string())
            ))),
            Err(Elapsed) => Err(BusError::Connection(format!(
                "closing the connection to {}: no answer within {ROUND_TRIP_TIMEOUT_MS} ms",
                self.url_redacted
            ))),
        }
    }

    /// One connection attempt, bounded by [`CONNECT_TIMEOUT_MS`]. The error text names the URL
    /// without its password.
    async fn open_connection(&self) -> Result<Connection, String> {
        let properties =
            ConnectionProperties::default().with_connection_name(CONNECTION_NAME.into());
        let attempt = Connection::connect(&self.url_with_credentials, properties);
        match tokio::time::timeout(Duration::from_millis(CONNECT_TIMEOUT_MS), attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(format!(
                "cannot connect to {}: {}",
                self.url_redacted,
                self.scrub(&error.to_string())
            )),
            Err(_) => Err(format!(
                "cannot connect to {}: no answer within {CONNECT_TIMEOUT_MS} ms",
                self.url_redacted
            )),
        }
    }

    /// The live connection, reconnecting first if it is missing or dead. Called with the link
    /// locked, so concurrent operations wait for one reconnection instead of each starting one.
    async fn connection<'l>(&self, link: &'l mut Link) -> Result<&'l Connection, Failure> {
        if link.closed {
            return Err(Failure::Final(BusError::Closed));
        }
        let suspect = self.connection_suspect.swap(false, Ordering::Relaxed);
        let alive = link
            .connection
            .as_ref()
            .is_some_and(|c| c.status().connected());
        if suspect || !alive {
            self.reconnect(link).await.map_err(Failure::Final)?;
        }
        link.connection
            .as_ref()
            .ok_or(Failure::Final(BusError::Closed))
    }

    /// Replaces a dead connection, with [`RECONNECT_ATTEMPTS_MAX`] attempts and exponential
    /// backoff. The lock on the link is held throughout, on purpose (see [`Self::connection`]).
    async fn reconnect(&self, link: &mut Link) -> Result<(), BusError> {
        link.publisher = None;
        link.connection = None;
        let mut backoff_ms = RECONNECT_BACKOFF_FIRST_MS;
        let mut last_error = String::new();
        for attempt in 1..=RECONNECT_ATTEMPTS_MAX {
            match self.open_connection().await {
                Ok(connection) => {
                    for topology in &link.topologies {
                        // A topology the broker now refuses (someone declared a queue again with
                        // other arguments) must not cost the connection: the operations that
                        // need it fail on their own, the others go on.
                        let declared = match self
                            .round_trip("channel.open", "", connection.create_channel())
                            .await
                        {
                            Ok(channel) => self.declare_on(&channel, topology).await,
                            Err(failure) => Err(failure),
                        };
                        if let Err(failure) = declared {
                            let error = failure.into_error();
                            tracing::warn!(url = %self.url_redacted, %error, "declaring again after a reconnection failed");
                        }
                    }
                    tracing::info!(url = %self.url_redacted, attempt, "reconnected to RabbitMQ");
                    link.connection = Some(connection);
                    return Ok(());
                }
                Err(error) => {
                    tracing::warn!(url = %self.url_redacted, attempt, %error, "reconnection failed");
                    last_error = error;
                }
            }
            if attempt < RECONNECT_ATTEMPTS_MAX {
                tokio::time::sleep(Duration::from_millis(backoff_ms)).await;
                backoff_ms = (backoff_ms * 2).min(RECONNECT_BACKOFF_MAX_MS);
            }
        }
        Err(BusError::Connection(format!(
            "gave up after {RECONNECT_ATTEMPTS_MAX} attempts: {last_error}"
        )))
    }

    /// The publishing channel in confirm mode, opening it (and the connection) if needed.
    async fn publisher(&self, link: &mut Link) -> Result<Channel, Failure> {
        if let Some(channel) = &link.publisher
            && channel.status().connected()
            && !self.connection_suspect.load(Ordering::Relaxed)
            && link
                .connection
                .as_ref()
                .is_some_and(|c| c.status().connected())
        {
            return Ok(channel.clone());
        }
        link.publisher = None;
        let channel = self.open_channel(link).await?;
        self.round_trip(
            "confirm.select",
            "",
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        link.publisher = Some(channel.clone());
        Ok(channel)
    }

    /// A new channel on the live connection.
    async fn open_channel(&self, link: &mut Link) -> Result<Channel, Failure> {
        let connection = self.connection(link).await?;
        self.round_trip("channel.open", "", connection.create_channel())
            .await
    }

    /// Runs `attempt` and, if it failed in a way a fresh connection or channel may cure, once
    /// more.
    async fn with_one_retry<T, F, Fut>(&self, operation: &str, attempt: F) -> Result<T, BusError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        match attempt().await {
            Ok(value) => Ok(value),
            Err(Failure::Final(error)) => Err(error),
            Err(Failure::Retry(error)) => {
                tracing::warn!(url = %self.url_redacted, operation, %error, "retrying once");
                attempt().await.map_err(Failure::into_error)
            }
        }
    }

    async fn declare_once(&self, topology: &Topology) -> Result<(), Failure> {
        let channel = self.open_channel(&mut *self.link.lock().await).await?;
        self.declare_on(&channel, topology).await?;
        // Remembered once the broker took it: one it refused is not declared again.
        let mut link = self.link.lock().await;
        if !link.topologies.contains(topology) {
            if link.topologies.len() >= TOPOLOGIES_REMEMBERED_MAX {
                tracing::warn!(
                    url = %self.url_redacted,
                    "more than {TOPOLOGIES_REMEMBERED_MAX} topologies declared on one bus; this one is not declared again after a reconnection"
                );
            } else {
                link.topologies.push(topology.clone());
            }
        }
        Ok(())
    }

    /// Declares `topology` on `channel`, then closes it.
    async fn declare_on(&self, channel: &Channel, topology: &Topology) -> Result<(), Failure> {
        for exchange in &topology.exchanges {
            let kind = match exchange.kind {
                ExchangeKind::Direct => lapin::ExchangeKind::Direct,
                ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            };
            let options = ExchangeDeclareOptions {
                durable: exchange.durable,
                ..Default::default()
            };
            let name = short_string("exchange name", &exchange.name).map_err(Failure::Final)?;
            self.round_trip(
                "exchange.declare",
                &exchange.name,
                channel.exchange_declare(name, kind, options, FieldTable::default()),
            )
            .await?;
        }
        for queue in &topology.queues {
            let options = QueueDeclareOptions {
                durable: queue.durable,
                ..Default::default()
            };
            let name = short_string("queue name", &queue.name).map_err(Failure::Final)?;
            self.round_trip(
                "queue.declare",
                &queue.name,
                channel.queue_declare(name, options, queue_arguments(&queue.limits)),
            )
            .await?;
        }
        for binding in &topology.bindings {
            let target = format!("{} -> {}", binding.exchange, binding.queue);
            let queue = short_string("queue name", &binding.queue).map_err(Failure::Final)?;
            let exchange =
                short_string("exchange name", &binding.exchange).map_err(Failure::Final)?;
            let key = short_string("routing key", &binding.routing_key).map_err(Failure::Final)?;
            let bind = channel.queue_bind(
                queue,
                exchange,
                key,
                QueueBindOptions::default(),
                FieldTable::default(),
            );
            self.round_trip("queue.bind", &target, bind).await?;
        }
        close_channel(channel).await;
        Ok(())
    }

    async fn publish_once(&self, message: &Outgoing) -> Result<(), Failure> {
        let exchange = message.exchange.as_str();
        // The lock covers only handing the frames to lapin: confirms are awaited concurrently.
        let confirm = {
            let mut link = self.link.lock().await;
            let channel = self.publisher(&mut link).await?;
            let publish = channel.basic_publish(
                message.exchange.clone(),
                message.routing_key.clone(),
                BasicPublishOptions {
                    mandatory: false,
                    immediate: false,
                },
                &message.body,
                message.properties.clone(),
            );
            match bounded(publish).await {
                Ok(handed) => {
                    handed.map_err(|error| self.failure("basic.publish", exchange, error))?
                }
                // lapin queues the frames before it waits for them to be written: on a
                // connection the broker has blocked (a resource alarm) they go out later. So
                // the publish may happen: unconfirmed, and final, not queued a second time.
                Err(Elapsed) => {
                    self.connection_suspect.store(true, Ordering::Relaxed);
                    return Err(Failure::Final(BusError::Unconfirmed {
                        exchange: exchange.to_owned(),
                        detail: format!(
                            "not written to {} within {ROUND_TRIP_TIMEOUT_MS} ms",
                            self.url_redacted
                        ),
                    }));
                }
            }
        };
        let timeout = Duration::from_millis(CONFIRM_TIMEOUT_MS);
        match tokio::time::timeout(timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(_))) => Ok(()),
            Ok(Ok(Confirmation::Nack(_))) => Err(Failure::Final(BusError::Nacked {
                exchange: exchange.to_owned(),
            })),
            Ok(Ok(Confirmation::NotRequested)) => Err(Failure::Retry(BusError::Connection(
                format!("publish to {exchange:?}: the channel was not in confirm mode"),
            ))),
            // A channel closed by the broker fails every publish in flight on it with the same
            // error, including publishes that did nothing wrong; the retry, on a fresh channel,
            // tells them apart. So even a refusal is retried once. A connection lost while
            // waiting leaves the publish unconfirmed: the retry may make a duplicate, which
            // the contract allows, and if it fails the publish is reported unconfirmed.
            Ok(Err(error)) => Err(Failure::Retry(
                match self.error("basic.publish", exchange, error) {
                    BusError::Connection(detail) => BusError::Unconfirmed {
                        exchange: exchange.to_owned(),
                        detail,
                    },
                    refused => refused,
                },
            )),
            // Final, not retried: the confirm may still come on a slow broker, and a retry
            // would then publish twice for certain. The connection is replaced on next use.
            Err(_) => {
                self.connection_suspect.store(true, Ordering::Relaxed);
                Err(Failure::Final(BusError::Unconfirmed {
                    exchange: exchange.to_owned(),
                    detail: format!(
                        "no confirm from {} within {CONFIRM_TIMEOUT_MS} ms",
                        self.url_redacted
                    ),
                }))
            }
        }
    }

    async fn consume_once(&self, queue: &str, prefetch: u16) -> Result<Deliveries, Failure> {
        let channel = self.open_channel(&mut *self.link.lock().await).await?;
        let consumed = self.start_consumer(&channel, queue, prefetch).await;
        match consumed {
            Ok(consumer) => Ok(Box::pin(ConsumerStream {
                consumer,
                channel: Some(channel),
                queue: queue.to_owned(),
                url_redacted: self.url_redacted.clone(),
                ended: false,
            })),
            Err(failure) => {
                close_channel(&channel).await;
                Err(failure)
            }
        }
    }

    async fn start_consumer(
        &self,
        channel: &Channel,
        queue: &str,
        prefetch: u16,
    ) -> Result<lapin::Consumer, Failure> {
        let qos = channel.basic_qos(prefetch, BasicQosOptions { global: false });
        self.round_trip("basic.qos", queue, qos).await?;
        let name = short_string("queue name", queue).map_err(Failure::Final)?;
        let consume = channel.basic_consume(
            name,
            ShortString::default(),
            BasicConsumeOptions {
                no_ack: false,
                ..Default::default()
            },
            FieldTable::default(),
        );
        self.round_trip("basic.consume", queue, consume).await
    }

    /// Awaits one lapin call, bounded by [`ROUND_TRIP_TIMEOUT_MS`]. A call that outlives it
    /// marks the connection suspect and is worth a retry, on a fresh connection.
    async fn round_trip<T>(
        &self,
        operation: &'static str,
        target: &str,
        call: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, Failure> {
        match bounded(call).await {
            Ok(result) => result.map_err(|error| self.failure(operation, target, error)),
            Err(Elapsed) => {
                self.connection_suspect.store(true, Ordering::Relaxed);
                let target = quoted(target);
                Err(Failure::Retry(BusError::Connection(format!(
                    "{operation}{target} on {}: no answer within {ROUND_TRIP_TIMEOUT_MS} ms",
                    self.url_redacted
                ))))
            }
        }
    }

    /// Classifies a lapin error: a refusal by the broker is final, anything else is worth a retry
    /// on a fresh connection and channel.
    fn failure(&self, operation: &'static str, target: &str, error: lapin::Error) -> Failure {
        let refused = error.is_amqp_soft_error();
        let error = self.error(operation, target, error);
        if refused {
            Failure::Final(error)
        } else {
            Failure::Retry(error)
        }
    }

    fn error(&self, operation: &'static str, target: &str, error: lapin::Error) -> BusError {
        map_error(operation, target, &self.url_redacted, error, |text| {
            self.scrub(text)
        })
    }

    /// Removes the password from a text that might quote the URL.
    fn scrub(&self, text: &str) -> String {
        match &self.password {
            Some(password) if !password.is_empty() => text.replace(password.as_str(), "***"),
            _ => text.to_owned(),
        }
    }
}

#[async_trait]
impl Bus for RabbitBus {
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
        tracing::warn!(url = %self.url_redacted, operation = "basic.publish", error = %first, "retrying once");
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
        self.with_one_retry("basic.consume", || {
            self.consume_once(queue, options.prefetch)
        })
        .await
    }
}

/// A soft AMQP error (the broker closed the channel with a reply code) becomes `Refused`;
/// everything else is a connection problem.
fn map_error(
    operation: &'static str,
    target: &str,
    url_redacted: &str,
    error: lapin::Error,
    scrub: impl Fn(&str) -> String,
) -> BusError {
    if let lapin::ErrorKind::ProtocolError(amqp) = error.kind()
        && error.is_amqp_soft_error()
    {
        return BusError::Refused {
            operation,
            target: target.to_owned(),
            code: amqp.get_id(),
            text: amqp.get_message().to_string(),
        };
    }
    BusError::Connection(format!(
        "{operation}{} on {url_redacted}: {}",
        quoted(target),
        scrub(&error.to_string())
    ))
}

/// ` "target"`, or nothing for an operation without one.
fn quoted(target: &str) -> String {
    if target.is_empty() {
        String::new()
    } else {
        format!(" {target:?}")
    }
}

/// A lapin call that outlived [`ROUND_TRIP_TIMEOUT_MS`].
struct Elapsed;

/// `call`, or [`Elapsed`] after [`ROUND_TRIP_TIMEOUT_MS`].
async fn bounded<T>(call: impl Future<Output = T>) -> Result<T, Elapsed> {
    tokio::time::timeout(Duration::from_millis(ROUND_TRIP_TIMEOUT_MS), call)
        .await
        .map_err(|_| Elapsed)
}

/// Closes a channel we are done with. Best effort: a channel the broker already closed, or a
/// dead connection, leaves nothing to clean up.
async fn close_channel(channel: &Channel) {
    if channel.status().connected() {
        let _ = bounded(channel.close(REPLY_SUCCESS, "OK".into())).await;
    }
}

/// Checks the contract's limits and converts to lapin's types.
fn outgoing(publication: Publication) -> Result<Outgoing, BusError> {
    let bytes = publication.body.len();
    if bytes > BODY_BYTES_MAX {
        return Err(BusError::Invalid(format!(
            "publish to {:?}: body is {bytes} bytes; the limit is {BODY_BYTES_MAX}",
            publication.exchange
        )));
    }
    Ok(Outgoing {
        exchange: short_string("exchange name", &publication.exchange)?,
        routing_key: short_string("routing key", &publication.routing_key)?,
        properties: amqp_properties(&publication.properties)?,
        body: publication.body,
    })
}

/// The URL with the password of its user info replaced by `***`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
    if user.len() == userinfo.len() {
        return url.to_owned();
    }
    format!("{scheme}://{user}:***@{host}{path}")
}

/// The password in the URL's user info, as written (percent-encoded or not).
fn url_password(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let (userinfo, _) = authority.rsplit_once('@')?;
    userinfo
        .split_once(':')
        .map(|(_, password)| password.to_owned())
}

/// One consumer's deliveries. Owns the consumer's channel: dropping the stream closes it, and
/// RabbitMQ requeues whatever was not acked.
struct ConsumerStream {
    consumer: lapin::Consumer,
    channel: Option<Channel>,
    queue: String,
    url_redacted: String,
    /// Set after the consumer ended or failed: a failed lapin consumer is not polled again.
    ended: bool,
}

impl Stream for ConsumerStream {
    type Item = Result<Delivery, BusError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.consumer).poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                tracing::info!(queue = %this.queue, "consumer cancelled");
                this.ended = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(delivery))) => {
                Poll::Ready(Some(Ok(self::delivery(delivery, &this.queue))))
            }
            Poll::Ready(Some(Err(error))) => {
                this.ended = true;
                let error = map_error(
                    "basic.consume",
                    &this.queue,
                    &this.url_redacted,
                    error,
                    str::to_owned,
                );
                tracing::warn!(queue = %this.queue, %error, "consumer failed");
                Poll::Ready(Some(Err(error)))
            }
        }
    }
}

impl Drop for ConsumerStream {
    fn drop(&mut self) {
        let Some(channel) = self.channel.take() else {
            return;
        };
        if !channel.status().connected() {
            return;
        }
        // Closing is a round trip, so it runs as a task. Without a runtime (a stream dropped
        // after its runtime shut down) lapin still closes the channel when its last handle goes.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { close_channel(&channel).await });
        }
    }
}

fn delivery(delivery: lapin::message::Delivery, queue: &str) -> Delivery {
    let acker = LapinAcker {
        acker: delivery.acker,
        queue: queue.to_owned(),
    };
    Delivery::new(
        contract_properties(&delivery.properties),
        delivery.data,
        delivery.redelivered,
        delivery.exchange.as_str().to_owned(),
        delivery.routing_key.as_str().to_owned(),
        Box::new(acker),
    )
}

/// Settles a delivery on the channel it came from.
struct LapinAcker {
    acker: lapin::Acker,
    queue: String,
}

impl LapinAcker {
    /// lapin answers `Ok(false)` when the acker was already used or its channel is gone; either
    /// way the broker did not hear this settlement, and will redeliver the message.
    fn settled(
        &self,
        operation: &'static str,
        result: Result<lapin::Result<bool>, Elapsed>,
    ) -> Result<(), BusError> {
        match result {
            Ok(Ok(true)) => Ok(()),
            Err(Elapsed) => Err(BusError::Connection(format!(
                "{operation} on queue {:?}: no answer within {ROUND_TRIP_TIMEOUT_MS} ms; unless \
                 the broker heard it, it will redeliver the message",
                self.queue
            ))),
            Ok(Ok(false)) => Err(BusError::Connection(format!(
                "{operation} on queue {:?}: the delivery's channel is closed; the broker will \
                 redeliver the message",
                self.queue
            ))),
            Ok(Err(error)) => Err(map_error(
                operation,
                &self.queue,
                "the broker",
                error,
                str::to_owned,
            )),
        }
    }
}

#[async_trait]
impl Acker for LapinAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let result = bounded(self.acker.ack(BasicAckOptions { multiple: false })).await;
        self.settled("basic.ack", result)
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        let options = BasicNackOptions {
            multiple: false,
            requeue,
        };
        let result = bounded(self.acker.nack(options)).await;
        self.settled("basic.nack", result)
    }

    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        let result = bounded(self.acker.reject(BasicRejectOptions { requeue })).await;
        self.settled("basic.reject", result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::Properties;

    use crate::amqp_properties::SHORT_STRING_BYTES_MAX;

    #[test]
    fn redacted_url_hides_only_the_password() {
        assert_eq!(
            redact_url("amqp://guest:s3cret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact_url("amqp://guest@host/v"), "amqp://guest@host/v");
        assert_eq!(redact_url("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(redact_url("amqp://u:p@ss@host"), "amqp://u:***@host");
        assert_eq!(
            url_password("amqp://u:p@ss@host/v").as_deref(),
            Some("p@ss")
        );
        assert_eq!(url_password("amqp://host/v"), None);
    }

    #[test]
    fn properties_round_trip_through_amqp() {
        let properties = Properties {
            content_type: Some("application/json".into()),
            delivery_mode: Some(2),
            message_id: Some("m".into()),
            correlation_id: Some("c".into()),
            kind: Some("AnalysisStarted".into()),
            timestamp: Some(1_700_000_000),
            app_id: Some("svc".into()),
        };
        let amqp = amqp_properties(&properties).expect("short strings");
        assert_eq!(
            amqp.kind().as_ref().map(ShortString::as_str),
            Some("AnalysisStarted")
        );
        assert_eq!(contract_properties(&amqp), properties);
        assert_eq!(
            contract_properties(&BasicProperties::default()),
            Properties::default()
        );
    }

    #[test]
    fn over_long_strings_and_bodies_are_refused_not_panicked_on() {
        let publication = |exchange: String, body: Vec<u8>| Publication {
            exchange,
            routing_key: String::new(),
            properties: Properties::default(),
            body,
        };
        let long = "x".repeat(SHORT_STRING_BYTES_MAX + 1);
        assert!(matches!(
            outgoing(publication(long, vec![])),
            Err(BusError::Invalid(_))
        ));
        let body = vec![b' '; BODY_BYTES_MAX + 1];
        assert!(matches!(
            outgoing(publication("e".into(), body)),
            Err(BusError::Invalid(_))
        ));
        assert!(outgoing(publication("e".into(), vec![b' '; BODY_BYTES_MAX])).is_ok());
    }
}
