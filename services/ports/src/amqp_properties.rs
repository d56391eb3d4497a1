//! AMQP basic properties ↔ `contracts::Properties`, and checked short strings, shared by the
//! `rabbitmq` adapter (lapin re-exports amq-protocol's types) and the `wire` adapter.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::ShortString;
use contracts::Properties;

use crate::bus::BusError;

/// AMQP short strings (names, routing keys, most properties) are at most this many bytes.
pub(crate) const SHORT_STRING_BYTES_MAX: usize = 255;

/// `contracts::Properties` → AMQP basic properties (`kind` is AMQP's `type`).
pub(crate) fn amqp_properties(properties: &Properties) -> Result<BasicProperties, BusError> {
    let mut amqp = BasicProperties::default();
    if let Some(value) = &properties.content_type {
        amqp = amqp.with_content_type(short_string("content_type", value)?);
    }
    if let Some(value) = properties.delivery_mode {
        amqp = amqp.with_delivery_mode(value);
    }
    if let Some(value) = &properties.message_id {
        amqp = amqp.with_message_id(short_string("message_id", value)?);
    }
    if let Some(value) = &properties.correlation_id {
        amqp = amqp.with_correlation_id(short_string("correlation_id", value)?);
    }
    if let Some(value) = &properties.kind {
        amqp = amqp.with_type(short_string("type", value)?);
    }
    if let Some(value) = properties.timestamp {
        amqp = amqp.with_timestamp(value);
    }
    if let Some(value) = &properties.app_id {
        amqp = amqp.with_app_id(short_string("app_id", value)?);
    }
    Ok(amqp)
}

/// AMQP basic properties → `contracts::Properties`; fields warren does not use are dropped.
pub(crate) fn contract_properties(amqp: &BasicProperties) -> Properties {
    let text = |value: &Option<ShortString>| value.as_ref().map(|s| s.as_str().to_owned());
    Properties {
        content_type: text(amqp.content_type()),
        delivery_mode: *amqp.delivery_mode(),
        message_id: text(amqp.message_id()),
        correlation_id: text(amqp.correlation_id()),
        kind: text(amqp.kind()),
        timestamp: *amqp.timestamp(),
        app_id: text(amqp.app_id()),
    }
}

/// amq-protocol's (and so lapin's) `ShortString::from` panics past 255 bytes; this refuses
/// instead.
pub(crate) fn short_string(what: &str, value: &str) -> Result<ShortString, BusError> {
    ShortString::try_new(value).map_err(|_| {
        BusError::Invalid(format!(
            "{what} is {} bytes; AMQP allows at most {SHORT_STRING_BYTES_MAX}",
            value.len()
        ))
    })
}

/// A queue's limits as `queue.declare` arguments.
pub(crate) fn queue_arguments(limits: &contracts::QueueLimits) -> amq_protocol::types::FieldTable {
    let mut table = amq_protocol::types::FieldTable::default();
    for (name, value) in limits.arguments() {
        table.insert(
            name.into(),
            amq_protocol::types::AMQPValue::LongLongInt(value),
        );
    }
    table
}
