//! AMQP basic properties and field tables, between amq-protocol's types and broker-mem's.
//!
//! Each value keeps its AMQP type; the order of a table's keys is lost (amq-protocol's tables
//! are sorted maps). So the wire server reads tables with its own codec (`content`), which
//! keeps their order as RabbitMQ does, and falls back on these only where that codec did not
//! read a method's arguments.
//!
//! Public (with the `wire` feature) for AMQP clients built on amq-protocol, such as the
//! contract tests' lapin half.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{
    AMQPValue, DecimalValue, FieldArray, FieldTable as AmqpTable, ShortString,
};

use crate::message::{FieldTable, FieldValue, Properties};
use crate::wire::codec::short;

/// Wire properties to the engine's. (`..default()` keeps this compiling when the engine's
/// properties grow a field the wire does not carry.)
#[allow(clippy::needless_update)]
pub fn properties_in(amqp: &BasicProperties) -> Properties {
    let text = |value: &Option<ShortString>| value.as_ref().map(|s| s.as_str().to_owned());
    Properties {
        content_type: text(amqp.content_type()),
        content_encoding: text(amqp.content_encoding()),
        headers: amqp.headers().as_ref().map(table_in),
        delivery_mode: *amqp.delivery_mode(),
        priority: *amqp.priority(),
        correlation_id: text(amqp.correlation_id()),
        reply_to: text(amqp.reply_to()),
        expiration: text(amqp.expiration()),
        message_id: text(amqp.message_id()),
        timestamp: *amqp.timestamp(),
        kind: text(amqp.kind()),
        user_id: text(amqp.user_id()),
        app_id: text(amqp.app_id()),
        cluster_id: text(amqp.cluster_id()),
        ..Properties::default()
    }
}

/// The engine's properties to the wire's. Short strings longer than AMQP allows (255 bytes) are
/// cut at a character boundary; the wire server's own came from the wire, so they fit.
pub fn properties_out(properties: &Properties) -> BasicProperties {
    let s = |value: &String| ShortString::from(short(value));
    let mut amqp = BasicProperties::default();
    if let Some(v) = &properties.content_type {
        amqp = amqp.with_content_type(s(v));
    }
    if let Some(v) = &properties.content_encoding {
        amqp = amqp.with_content_encoding(s(v));
    }
    if let Some(v) = &properties.headers {
        amqp = amqp.with_headers(table_out(v));
    }
    if let Some(v) = properties.delivery_mode {
        amqp = amqp.with_delivery_mode(v);
    }
    if let Some(v) = properties.priority {
        amqp = amqp.with_priority(v);
    }
    if let Some(v) = &properties.correlation_id {
        amqp = amqp.with_correlation_id(s(v));
    }
    if let Some(v) = &properties.reply_to {
        amqp = amqp.with_reply_to(s(v));
    }
    if let Some(v) = &properties.expiration {
        amqp = amqp.with_expiration(s(v));
    }
    if let Some(v) = &properties.message_id {
        amqp = amqp.with_message_id(s(v));
    }
    if let Some(v) = properties.timestamp {
        amqp = amqp.with_timestamp(v);
    }
    if let Some(v) = &properties.kind {
        amqp = amqp.with_type(s(v));
    }
    if let Some(v) = &properties.user_id {
        amqp = amqp.with_user_id(s(v));
    }
    if let Some(v) = &properties.app_id {
        amqp = amqp.with_app_id(s(v));
    }
    if let Some(v) = &properties.cluster_id {
        amqp = amqp.with_cluster_id(s(v));
    }
    amqp
}

/// A wire field table to the engine's.
pub fn table_in(table: &AmqpTable) -> FieldTable {
    table
        .inner()
        .iter()
        .map(|(key, value)| (key.as_str().to_owned(), value_in(value)))
        .collect()
}

fn value_in(value: &AMQPValue) -> FieldValue {
    match value {
        AMQPValue::Boolean(v) => FieldValue::Bool(*v),
        AMQPValue::ShortShortInt(v) => FieldValue::I8(*v),
        AMQPValue::ShortShortUInt(v) => FieldValue::U8(*v),
        AMQPValue::ShortInt(v) => FieldValue::I16(*v),
        AMQPValue::ShortUInt(v) => FieldValue::U16(*v),
        AMQPValue::LongInt(v) => FieldValue::I32(*v),
        AMQPValue::LongUInt(v) => FieldValue::U32(*v),
        AMQPValue::LongLongInt(v) => FieldValue::I64(*v),
        AMQPValue::Float(v) => FieldValue::F32(*v),
        AMQPValue::Double(v) => FieldValue::F64(*v),
        AMQPValue::DecimalValue(d) => FieldValue::Decimal {
            scale: d.scale,
            value: d.value,
        },
        // Not in RabbitMQ's dialect of field tables; amq-protocol never reads one.
        AMQPValue::ShortString(v) => FieldValue::String(v.as_str().to_owned()),
        AMQPValue::LongString(v) => match std::str::from_utf8(v.as_bytes()) {
            Ok(text) => FieldValue::String(text.to_owned()),
            Err(_) => FieldValue::StringBytes(bytes::Bytes::copy_from_slice(v.as_bytes())),
        },
        AMQPValue::FieldArray(items) => {
            FieldValue::Array(items.as_slice().iter().map(value_in).collect())
        }
        AMQPValue::Timestamp(v) => FieldValue::Timestamp(*v),
        AMQPValue::FieldTable(t) => FieldValue::Table(table_in(t)),
        AMQPValue::ByteArray(v) => FieldValue::Bytes(bytes::Bytes::copy_from_slice(v.as_slice())),
        AMQPValue::Void => FieldValue::Void,
    }
}

/// The engine's field table to the wire's; over-long keys are cut as in [`properties_out`].
pub fn table_out(table: &FieldTable) -> AmqpTable {
    let mut out = AmqpTable::default();
    for (key, value) in table {
        out.insert(ShortString::from(short(key)), value_out(value));
    }
    out
}

fn value_out(value: &FieldValue) -> AMQPValue {
    match value {
        FieldValue::Void => AMQPValue::Void,
        FieldValue::Bool(v) => AMQPValue::Boolean(*v),
        FieldValue::I8(v) => AMQPValue::ShortShortInt(*v),
        FieldValue::U8(v) => AMQPValue::ShortShortUInt(*v),
        FieldValue::I16(v) => AMQPValue::ShortInt(*v),
        FieldValue::U16(v) => AMQPValue::ShortUInt(*v),
        FieldValue::I32(v) => AMQPValue::LongInt(*v),
        FieldValue::U32(v) => AMQPValue::LongUInt(*v),
        FieldValue::I64(v) => AMQPValue::LongLongInt(*v),
        FieldValue::F32(v) => AMQPValue::Float(*v),
        FieldValue::F64(v) => AMQPValue::Double(*v),
        FieldValue::Decimal { scale, value } => AMQPValue::DecimalValue(DecimalValue {
            scale: *scale,
            value: *value,
        }),
        FieldValue::String(v) => AMQPValue::LongString(v.as_str().into()),
        FieldValue::StringBytes(v) => AMQPValue::LongString(v.to_vec().into()),
        FieldValue::Bytes(v) => AMQPValue::ByteArray(v.to_vec().into()),
        FieldValue::Timestamp(v) => AMQPValue::Timestamp(*v),
        FieldValue::Array(items) => AMQPValue::FieldArray(FieldArray::from(
            items.iter().map(value_out).collect::<Vec<_>>(),
        )),
        FieldValue::Table(t) => AMQPValue::FieldTable(table_out(t)),
    }
}
