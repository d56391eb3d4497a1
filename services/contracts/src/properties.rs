//! AMQP message properties and the publication envelope every warren message travels in.

use thiserror::Error;
use uuid::Uuid;

use crate::messages::MessageKind;

/// Largest message body, in bytes (`messages.md`: at most 64 KiB).
pub const BODY_BYTES_MAX: usize = 64 * 1024;
/// `content_type` of every message.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// `delivery_mode` 2: persistent.
pub const DELIVERY_MODE_PERSISTENT: u8 = 2;
/// `app_id` of messages the gateway publishes.
pub const APP_ID_GATEWAY: &str = "graph-gateway";
/// `app_id` of messages the orchestrator publishes.
pub const APP_ID_ORCHESTRATOR: &str = "svc-analysis-orchestrator";

/// The AMQP basic properties warren sets and reads. Every field is optional on the wire, so
/// messages from other services can be decoded and judged rather than refused at the door.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// MIME type of the body.
    pub content_type: Option<String>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Stable id of the logical message (uuid v5 of analysisId and type).
    pub message_id: Option<String>,
    /// The analysisId.
    pub correlation_id: Option<String>,
    /// The message name (`RequestAnalysis`, ...). AMQP calls this property `type`.
    pub kind: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// The publishing service.
    pub app_id: Option<String>,
}

/// A message ready to publish: where it goes, its properties and its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Target exchange.
    pub exchange: String,
    /// Routing key.
    pub routing_key: String,
    /// Basic properties.
    pub properties: Properties,
    /// UTF-8 JSON body, at most [`BODY_BYTES_MAX`] bytes.
    pub body: Vec<u8>,
}

/// Why a message could not be encoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EncodeError {
    /// The body is larger than the contract allows.
    #[error("{kind} body is {bytes} bytes; the limit is {BODY_BYTES_MAX}")]
    TooLarge {
        /// Message type.
        kind: &'static str,
        /// Encoded size.
        bytes: usize,
    },
}

/// Namespace of warren's uuid v5 message ids (itself `uuid5(URL, "urn:warren:message")`, written
/// out so that services in other languages can copy one constant).
const MESSAGE_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a9e_4b4d_5d0e_9c3a_1f7e_8b2d_4c61);

/// The stable id of a logical message: the same analysisId and type give the same id anywhere,
/// so any consumer can recognise a repeat.
pub fn message_id(analysis_id: Uuid, kind: MessageKind) -> Uuid {
    Uuid::new_v5(
        &MESSAGE_ID_NAMESPACE,
        format!("{analysis_id}/{}", kind.as_str()).as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_depends_only_on_analysis_and_type() {
        let a = Uuid::from_u128(1);
        let b = Uuid::from_u128(2);
        assert_eq!(
            message_id(a, MessageKind::Started),
            message_id(a, MessageKind::Started)
        );
        assert_ne!(
            message_id(a, MessageKind::Started),
            message_id(a, MessageKind::Completed)
        );
        assert_ne!(
            message_id(a, MessageKind::Started),
            message_id(b, MessageKind::Started)
        );
        assert_eq!(message_id(a, MessageKind::Started).get_version_num(), 5);
    }
}
