//! Messages as the broker holds them: AMQP basic properties, a body, and where they were
//! published. The broker never looks inside properties or bodies (no TTL, no priorities yet);
//! it carries them intact from publisher to consumer.

use std::collections::BTreeMap;

use bytes::Bytes;

/// An AMQP field table (message headers, arguments). Ordered, so it prints and compares the
/// same way every run.
pub type FieldTable = BTreeMap<String, FieldValue>;

/// A value in a [`FieldTable`]. AMQP's many integer and float widths are folded into `I64` and
/// `F64`, which hold every one of them exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `V`: no value.
    Void,
    /// `t`.
    Bool(bool),
    /// `b`, `B`, `s`, `u`, `I`, `i`, `l`.
    I64(i64),
    /// `f`, `d`.
    F64(f64),
    /// `S`: a long string that is valid UTF-8.
    String(String),
    /// `x`: a byte array (or a long string that is not UTF-8).
    Bytes(Bytes),
    /// `T`: seconds since the Unix epoch.
    Timestamp(u64),
    /// `A`.
    Array(Vec<FieldValue>),
    /// `F`.
    Table(FieldTable),
}

/// AMQP basic properties, all optional as on the wire.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// MIME type of the body.
    pub content_type: Option<String>,
    /// MIME content encoding of the body.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Priority 0-9 (carried, not acted on: classic queues need `x-max-priority`).
    pub priority: Option<u8>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Address to reply to.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a string (carried, not acted on yet).
    pub expiration: Option<String>,
    /// Message id.
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Message type name; AMQP calls this property `type`.
    pub kind: Option<String>,
    /// Publishing user; if set it must be the connection's user (RabbitMQ's rule).
    pub user_id: Option<String>,
    /// Publishing application.
    pub app_id: Option<String>,
}

/// The broker's answer to a publish (publisher confirms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// The broker took responsibility: the message is in every queue it routed to (possibly
    /// none: RabbitMQ acks unroutable messages that are not mandatory).
    Ack,
    /// The broker refused the message and enqueued it nowhere; the publisher may retry later.
    Nack {
        /// Why, for logs (AMQP's `basic.nack` carries no reason; the in-process client can).
        reason: String,
    },
}

/// One published message, shared by every queue it was routed to.
#[derive(Debug)]
pub(crate) struct Message {
    pub exchange: String,
    pub routing_key: String,
    pub properties: Properties,
    pub body: Bytes,
}
