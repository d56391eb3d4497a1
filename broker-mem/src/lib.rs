//! An in-memory RabbitMQ: a deterministic AMQP 0-9-1 broker engine and an in-process client.
//!
//! Owns: exchanges (direct, fanout and the default exchange `""`), queues, bindings, consumers
//! with per-consumer prefetch and round-robin dispatch, per-channel delivery tags and unacked
//! maps, ack / nack / reject, requeue to the original position, and RabbitMQ's channel errors
//! (403, 404, 405, 406) with RabbitMQ's reply texts. Where broker-mem and RabbitMQ differ,
//! broker-mem is wrong.
//!
//! Two layers:
//! - [`Engine`] is a pure, synchronous state machine. Every call runs to completion, including
//!   the dispatch it makes possible, and leaves what it delivered in an outbox
//!   ([`Engine::take_events`]). No clock, no randomness, no threads, no async: the same calls give
//!   the same deliveries, byte for byte.
//! - [`Broker`] wraps the engine in an `Arc<Mutex<_>>` (never held across an await) and hands
//!   out [`Connection`]s, [`Channel`]s and [`Consumer`]s; deliveries reach consumers through
//!   bounded flume channels. Dispatch is synchronous, so "run until idle" is implicit: when a
//!   call returns, every delivery it made possible is already in its consumer's buffer.
//!
//! Must never depend on: any other warren crate (anyone can use broker-mem alone), a clock, a
//! random source, an OS thread or a `HashMap` whose iteration order could leak into behaviour.
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
mod message;
mod queue;

pub use binding::BindingInfo;
pub use bytes::Bytes;
pub use channel::ChannelId;
pub use client::{Broker, Channel, Connection, Consumer, TryRecvError};
pub use connection::{ConnectionId, DEFAULT_USER};
pub use consumer::ConsumeOptions;
pub use delivery::Delivery;
pub use engine::{ConsumerEnd, Engine, Event, Usage};
pub use error::{AmqpError, Error, ReplyCode};
pub use exchange::{ExchangeInfo, ExchangeKind, ExchangeOptions};
pub use limits::{
    BINDINGS_MAX, CHANNELS_PER_CONNECTION_MAX, CONSUMERS_PER_CHANNEL_MAX, EXCHANGES_MAX,
    HELD_BODY_BYTES_MAX, HELD_MESSAGES_MAX, Limits, MESSAGE_BODY_BYTES_MAX, NAME_BYTES_MAX,
    NO_ACK_BUFFER_MAX, QUEUES_MAX,
};
pub use message::{Confirm, FieldTable, FieldValue, Properties};
pub use queue::{QueueDeclareOk, QueueInfo, QueueOptions};

/// The only virtual host broker-mem has; it appears in RabbitMQ's reply texts.
pub const VHOST: &str = "/";
