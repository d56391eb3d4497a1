//! An in-memory RabbitMQ: a deterministic AMQP 0-9-1 broker engine and an in-process client.
//!
//! Owns RabbitMQ's semantics, proven against RabbitMQ by one contract suite
//! (`tests/contract.rs`): direct, fanout, topic and headers exchanges, the default exchange,
//! exchange-to-exchange bindings, alternate and internal exchanges, mandatory publishes and
//! `basic.return`; durable, exclusive, auto-delete, server-named and quorum queues with
//! `x-message-ttl`, per-message `expiration`, length limits (`drop-head`, `reject-publish`),
//! dead-lettering with `x-death` and quorum `x-delivery-limit`; consumers with round-robin
//! dispatch, per-consumer and per-channel (`global`) prefetch, exclusive consumers,
//! `basic.get`, ack / nack / reject, requeue where RabbitMQ puts it, and RabbitMQ's channel
//! errors with its reply codes and texts. Plus what tests need: introspection, fault hooks
//! (drop, duplicate or delay a delivery, nack a confirm, force a close, restart the broker).
//! Where broker-mem and RabbitMQ differ, broker-mem is wrong (or the difference is listed in
//! the crate's README with its reason).
//!
//! Two layers:
//! - [`Engine`] is a pure, synchronous state machine. Every call runs to completion, including
//!   the expiry and dispatch it makes possible ("run until idle"), and leaves what it delivered
//!   in an outbox ([`Engine::take_events`]). Time is an input ([`Engine::advance_to`]); no
//!   clock, no randomness, no threads, no async: the same calls give the same deliveries, byte
//!   for byte.
//! - [`Broker`] wraps the engine in an `Arc<Mutex<_>>` (never held across an await) and hands
//!   out [`Connection`]s, [`Channel`]s and [`Consumer`]s; deliveries reach consumers through
//!   flume channels that prefetch credit and [`CONSUMER_BUFFER_MAX`] bound. Its time comes
//!   from a caller's clock ([`Broker::with_clock`]); the system clock is the default only for
//!   real mode ([`real_clock_ms`]). Dispatch is
//!   synchronous, so when a call returns, every delivery it made possible is already in its
//!   consumer's buffer.
//!
//! Must never depend on: any other warren crate (anyone can use broker-mem alone), the OS clock
//! (outside [`real_clock_ms`]), a random source, an OS thread or a `HashMap` whose iteration
//! order could leak into behaviour.
//!
//! ```
//! use broker_mem::{Broker, Bytes, ConsumeOptions, ExchangeKind, ExchangeOptions, Properties, QueueOptions};
//!
//! let broker = Broker::new();
//! let connection = broker.connect();
//! let channel = connection.open_channel().unwrap();
//! channel.exchange_declare("events", ExchangeKind::Fanout, ExchangeOptions::default()).unwrap();
//! channel.queue_declare("audit", QueueOptions::default()).unwrap();
//! channel.queue_bind("audit", "events", "").unwrap();
//! channel.basic_publish("events", "", Properties::default(), Bytes::from_static(b"hi")).unwrap();
//! assert_eq!(broker.queue_depth("audit"), Some(1));
//!
//! channel.basic_qos(1).unwrap();
//! let consumer = channel.basic_consume("audit", ConsumeOptions::default()).unwrap();
//! let delivery = consumer.try_recv().unwrap();
//! assert_eq!(&delivery.body[..], b"hi");
//! channel.basic_ack(delivery.delivery_tag, false).unwrap();
//! assert_eq!(broker.queue_depth("audit"), Some(0));
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod binding;
mod channel;
mod client;
mod connection;
mod consumer;
mod delivery;
mod engine;
mod error;
mod exchange;
mod limits;
mod lookup;
mod message;
mod queue;
#[cfg(feature = "wire")]
pub mod wire;

pub use binding::{BindingInfo, ExchangeBindingInfo};
pub use bytes::Bytes;
pub use channel::ChannelId;
pub use client::{
    Broker, Channel, ClockFn, Connection, Consumer, Tap, TryRecvError, real_clock_ms,
};
pub use connection::{ConnectionId, DEFAULT_USER};
pub use consumer::ConsumeOptions;
pub use delivery::{Delivery, GetOk};
pub use engine::{ArmedFault, ConsumerEnd, Engine, Event, Usage};
pub use error::{AmqpError, Error, ReplyCode};
pub use exchange::{ExchangeInfo, ExchangeKind, ExchangeOptions};
pub use limits::{
    BINDINGS_MAX, CHANNELS_PER_CONNECTION_MAX, CONSUMER_BUFFER_MAX, CONSUMER_TIMEOUT_MS,
    CONSUMERS_PER_CHANNEL_MAX, EXCHANGES_MAX, FAULTS_ARMED_MAX, HELD_BODY_BYTES_MAX,
    HELD_MESSAGES_MAX, IDLE_ROUNDS_MAX, INTROSPECTION_LOG_MAX, Limits, MESSAGE_BODY_BYTES_MAX,
    NAME_BYTES_MAX, NO_ACK_BUFFER_MAX, QUEUES_MAX, TX_PENDING_MAX,
};
pub use message::{
    Confirm, DeadLettered, DeathReason, FieldTable, FieldValue, Properties, PublishOptions,
    Published, REPLY_NO_ROUTE, Returned,
};
pub use queue::{Overflow, QueueArguments, QueueDeclareOk, QueueInfo, QueueOptions, QueueType};
pub use smol_str::SmolStr;

/// The only virtual host broker-mem has; it appears in RabbitMQ's reply texts.
pub const VHOST: &str = "/";
