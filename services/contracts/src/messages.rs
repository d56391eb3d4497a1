//! The three messages of the diagram, their JSON bodies (camelCase, unknown fields ignored) and
//! the rules that make a body a poison message.

use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use thiserror::Error;
use uuid::Uuid;

use crate::properties::{
    BODY_BYTES_MAX, CONTENT_TYPE_JSON, DELIVERY_MODE_PERSISTENT, EncodeError, Properties,
    Publication, message_id,
};
use crate::topology::{
    EXCHANGE_COMMANDS, EXCHANGE_COMPLETED, EXCHANGE_STARTED, ROUTING_KEY_REQUEST,
};

/// `assetId`: 1 to 128 characters.
pub const ASSET_ID_CHARS_MAX: usize = 128;
/// `analysisType`: 1 to 64 characters of `[a-z0-9_-]`.
pub const ANALYSIS_TYPE_CHARS_MAX: usize = 64;
/// `parameters`: at most 16 KiB when serialized.
pub const PARAMETERS_BYTES_MAX: usize = 16 * 1024;

/// The message types, as they appear in the AMQP `type` property.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MessageKind {
    /// `RequestAnalysis`, a command.
    Request,
    /// `AnalysisStarted`, an event.
    Started,
    /// `AnalysisCompleted`, an event.
    Completed,
}

impl MessageKind {
    /// The `type` property value.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageKind::Request => "RequestAnalysis",
            MessageKind::Started => "AnalysisStarted",
            MessageKind::Completed => "AnalysisCompleted",
        }
    }

    /// Parses a `type` property value.
    pub fn parse(s: &str) -> Option<MessageKind> {
        match s {
            "RequestAnalysis" => Some(MessageKind::Request),
            "AnalysisStarted" => Some(MessageKind::Started),
            "AnalysisCompleted" => Some(MessageKind::Completed),
            _ => None,
        }
    }

    fn route(self) -> (&'static str, &'static str) {
        match self {
            MessageKind::Request => (EXCHANGE_COMMANDS, ROUTING_KEY_REQUEST),
            MessageKind::Started => (EXCHANGE_STARTED, ""),
            MessageKind::Completed => (EXCHANGE_COMPLETED, ""),
        }
    }
}

/// Formats milliseconds since the Unix epoch as RFC 3339 in UTC with millisecond precision.
pub fn format_timestamp(unix_ms: i64) -> String {
    DateTime::from_timestamp_millis(unix_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The command: analyse an asset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestAnalysis {
    /// Chosen by the gateway before publishing.
    pub analysis_id: Uuid,
    /// The asset (machine) to analyse.
    pub asset_id: String,
    /// What to compute.
    pub analysis_type: String,
    /// Free-form parameters or null.
    pub parameters: Option<Value>,
    /// The token's `sub`, or null.
    pub requested_by: Option<String>,
    /// RFC 3339.
    pub requested_at: String,
}

/// The event: the orchestrator has started an analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisStarted {
    /// The analysis.
    pub analysis_id: Uuid,
    /// Copied from the command.
    pub asset_id: String,
    /// Copied from the command.
    pub analysis_type: String,
    /// Copied from the command.
    pub requested_by: Option<String>,
    /// RFC 3339.
    pub started_at: String,
}

/// How an analysis ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AnalysisStatus {
    /// `result` holds the outcome.
    Succeeded,
    /// `error` says why.
    Failed,
}

/// The event: the orchestrator has finished an analysis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisCompleted {
    /// The analysis.
    pub analysis_id: Uuid,
    /// Copied from the command.
    pub asset_id: String,
    /// Copied from the command.
    pub analysis_type: String,
    /// Copied from the command.
    pub requested_by: Option<String>,
    /// SUCCEEDED or FAILED.
    pub status: AnalysisStatus,
    /// The outcome, or null.
    pub result: Option<Value>,
    /// Why it failed, or null.
    pub error: Option<String>,
    /// RFC 3339.
    pub completed_at: String,
}

/// Either event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// `AnalysisStarted`.
    Started(AnalysisStarted),
    /// `AnalysisCompleted`.
    Completed(AnalysisCompleted),
}

impl Event {
    /// The analysis the event is about.
    pub fn analysis_id(&self) -> Uuid {
        match self {
            Event::Started(e) => e.analysis_id,
            Event::Completed(e) => e.analysis_id,
        }
    }

    /// Which event it is.
    pub fn kind(&self) -> MessageKind {
        match self {
            Event::Started(_) => MessageKind::Started,
            Event::Completed(_) => MessageKind::Completed,
        }
    }

    /// Who requested the analysis.
    pub fn requested_by(&self) -> Option<&str> {
        match self {
            Event::Started(e) => e.requested_by.as_deref(),
            Event::Completed(e) => e.requested_by.as_deref(),
        }
    }
}

/// Why a received body is a poison message.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    /// No `type` property.
    #[error("message has no type property")]
    MissingType,
    /// A `type` warren does not know, or one not expected on this queue.
    #[error("unexpected message type {0:?}")]
    UnexpectedType(String),
    /// Larger than the contract allows.
    #[error("body is {0} bytes; the limit is {BODY_BYTES_MAX}")]
    TooLarge(usize),
    /// Not valid JSON for the type.
    #[error("body is not a valid {kind}: {reason}")]
    Invalid {
        /// The message type.
        kind: &'static str,
        /// What was wrong.
        reason: String,
    },
}

/// A message of the contract: knows its type, routing and analysis.
trait Message: Serialize {
    const KIND: MessageKind;
    fn analysis_id(&self) -> Uuid;

    fn publication(&self, app_id: &str, now_unix_ms: i64) -> Result<Publication, EncodeError> {
        let body = serde_json::to_vec(self).expect("contract messages always serialize");
        if body.len() > BODY_BYTES_MAX {
            return Err(EncodeError::TooLarge {
                kind: Self::KIND.as_str(),
                bytes: body.len(),
            });
        }
        let (exchange, routing_key) = Self::KIND.route();
        Ok(Publication {
            exchange: exchange.into(),
            routing_key: routing_key.into(),
            properties: Properties {
                content_type: Some(CONTENT_TYPE_JSON.into()),
                delivery_mode: Some(DELIVERY_MODE_PERSISTENT),
                message_id: Some(message_id(self.analysis_id(), Self::KIND).to_string()),
                correlation_id: Some(self.analysis_id().to_string()),
                kind: Some(Self::KIND.as_str().into()),
                timestamp: Some(u64::try_from(now_unix_ms.max(0) / 1000).unwrap_or(0)),
                app_id: Some(app_id.into()),
            },
            body,
        })
    }
}

macro_rules! message {
    ($ty:ty, $kind:expr) => {
        impl Message for $ty {
            const KIND: MessageKind = $kind;
            fn analysis_id(&self) -> Uuid {
                self.analysis_id
            }
        }
        impl $ty {
            /// The message with its exchange, routing key and contract properties.
            pub fn publication(
                &self,
                app_id: &str,
                now_unix_ms: i64,
            ) -> Result<Publication, EncodeError> {
                Message::publication(self, app_id, now_unix_ms)
            }
        }
    };
}
message!(RequestAnalysis, MessageKind::Request);
message!(AnalysisStarted, MessageKind::Started);
message!(AnalysisCompleted, MessageKind::Completed);

impl RequestAnalysis {
    /// Checks the field rules of the schema; the gateway refuses, the orchestrator dead-letters.
    pub fn validate(&self) -> Result<(), String> {
        validate_input(
            &self.asset_id,
            &self.analysis_type,
            self.parameters.as_ref(),
        )
    }
}

/// The input rules of `AnalysisInput`, shared by the gateway (which refuses bad input) and the
/// orchestrator (which treats a command that breaks them as poison).
pub fn validate_input(
    asset_id: &str,
    analysis_type: &str,
    parameters: Option<&Value>,
) -> Result<(), String> {
    let asset_chars = asset_id.chars().count();
    if asset_chars == 0 || asset_chars > ASSET_ID_CHARS_MAX {
        return Err(format!(
            "assetId must be 1 to {ASSET_ID_CHARS_MAX} characters"
        ));
    }
    let type_ok = (1..=ANALYSIS_TYPE_CHARS_MAX).contains(&analysis_type.len())
        && analysis_type
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if !type_ok {
        return Err(format!(
            "analysisType must be 1 to {ANALYSIS_TYPE_CHARS_MAX} characters of [a-z0-9_-]"
        ));
    }
    if let Some(parameters) = parameters {
        let bytes = serde_json::to_vec(parameters)
            .map(|v| v.len())
            .unwrap_or(usize::MAX);
        if bytes > PARAMETERS_BYTES_MAX {
            return Err(format!(
                "parameters are {bytes} bytes serialized; the limit is {PARAMETERS_BYTES_MAX}"
            ));
        }
    }
    Ok(())
}

fn decode_body<T: DeserializeOwned>(kind: MessageKind, body: &[u8]) -> Result<T, DecodeError> {
    if body.len() > BODY_BYTES_MAX {
        return Err(DecodeError::TooLarge(body.len()));
    }
    serde_json::from_slice(body).map_err(|e| DecodeError::Invalid {
        kind: kind.as_str(),
        reason: e.to_string(),
    })
}

fn kind_of(type_property: Option<&str>) -> Result<MessageKind, DecodeError> {
    let name = type_property.ok_or(DecodeError::MissingType)?;
    MessageKind::parse(name).ok_or_else(|| DecodeError::UnexpectedType(name.into()))
}

/// Decodes a command from the command queue; anything else there is poison.
pub fn decode_request(
    type_property: Option<&str>,
    body: &[u8],
) -> Result<RequestAnalysis, DecodeError> {
    match kind_of(type_property)? {
        MessageKind::Request => {
            let request: RequestAnalysis = decode_body(MessageKind::Request, body)?;
            request.validate().map_err(|reason| DecodeError::Invalid {
                kind: "RequestAnalysis",
                reason,
            })?;
            Ok(request)
        }
        other => Err(DecodeError::UnexpectedType(other.as_str().into())),
    }
}

/// Decodes an event from an event queue; anything else there is poison.
pub fn decode_event(type_property: Option<&str>, body: &[u8]) -> Result<Event, DecodeError> {
    match kind_of(type_property)? {
        MessageKind::Started => Ok(Event::Started(decode_body(MessageKind::Started, body)?)),
        MessageKind::Completed => Ok(Event::Completed(decode_body(MessageKind::Completed, body)?)),
        MessageKind::Request => Err(DecodeError::UnexpectedType("RequestAnalysis".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn request() -> RequestAnalysis {
        RequestAnalysis {
            analysis_id: Uuid::from_u128(7),
            asset_id: "press-17".into(),
            analysis_type: "utilization".into(),
            parameters: Some(json!({"window": "7d"})),
            requested_by: Some("alice".into()),
            requested_at: format_timestamp(1_700_000_000_123),
        }
    }

    #[test]
    fn request_carries_every_contract_property() {
        let p = request()
            .publication(crate::APP_ID_GATEWAY, 1_700_000_000_999)
            .unwrap();
        assert_eq!(
            (p.exchange.as_str(), p.routing_key.as_str()),
            ("analysis.commands", "request.analysis")
        );
        let props = &p.properties;
        assert_eq!(props.content_type.as_deref(), Some("application/json"));
        assert_eq!(props.delivery_mode, Some(2));
        assert_eq!(props.kind.as_deref(), Some("RequestAnalysis"));
        assert_eq!(props.timestamp, Some(1_700_000_000));
        assert_eq!(props.app_id.as_deref(), Some("graph-gateway"));
        assert_eq!(props.correlation_id, Some(Uuid::from_u128(7).to_string()));
        assert_eq!(
            props.message_id,
            Some(message_id(Uuid::from_u128(7), MessageKind::Request).to_string())
        );
    }

    #[test]
    fn body_is_camel_case_with_explicit_nulls() {
        let mut r = request();
        r.parameters = None;
        r.requested_by = None;
        let v: Value = serde_json::from_slice(&r.publication("x", 0).unwrap().body).unwrap();
        assert_eq!(
            v,
            json!({"analysisId": Uuid::from_u128(7), "assetId": "press-17", "analysisType": "utilization",
                   "parameters": null, "requestedBy": null, "requestedAt": "2023-11-14T22:13:20.123Z"})
        );
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = br#"{"analysisId":"00000000-0000-0000-0000-000000000007","assetId":"a","analysisType":"t",
            "requestedBy":null,"startedAt":"2023-01-01T00:00:00Z","futureField":[1,2]}"#;
        let e = decode_event(Some("AnalysisStarted"), body).unwrap();
        assert_eq!(e.kind(), MessageKind::Started);
    }

    #[test]
    fn poison_messages_say_why() {
        assert_eq!(decode_request(None, b"{}"), Err(DecodeError::MissingType));
        assert_eq!(
            decode_request(Some("Bogus"), b"{}"),
            Err(DecodeError::UnexpectedType("Bogus".into()))
        );
        assert!(matches!(
            decode_request(Some("RequestAnalysis"), b"not json"),
            Err(DecodeError::Invalid { .. })
        ));
        assert!(matches!(
            decode_event(Some("RequestAnalysis"), b"{}"),
            Err(DecodeError::UnexpectedType(_))
        ));
        let big = vec![b' '; BODY_BYTES_MAX + 1];
        assert_eq!(
            decode_request(Some("RequestAnalysis"), &big),
            Err(DecodeError::TooLarge(BODY_BYTES_MAX + 1))
        );
        let mut bad = request();
        bad.analysis_type = "Not Valid".into();
        let body = serde_json::to_vec(&bad).unwrap();
        assert!(matches!(
            decode_request(Some("RequestAnalysis"), &body),
            Err(DecodeError::Invalid { .. })
        ));
    }

    #[test]
    fn oversized_body_is_refused_at_encode() {
        let mut r = request();
        r.parameters = Some(Value::String("x".repeat(BODY_BYTES_MAX)));
        assert!(matches!(
            r.publication("x", 0),
            Err(EncodeError::TooLarge { .. })
        ));
    }

    #[test]
    fn input_rules_match_the_schema() {
        assert!(validate_input("a", "utilization", None).is_ok());
        assert!(validate_input("", "utilization", None).is_err());
        assert!(validate_input(&"é".repeat(128), "t", None).is_ok());
        assert!(validate_input(&"a".repeat(129), "t", None).is_err());
        assert!(validate_input("a", &"a".repeat(65), None).is_err());
        assert!(validate_input("a", "UPPER", None).is_err());
        assert!(
            validate_input(
                "a",
                "x",
                Some(&Value::String("p".repeat(PARAMETERS_BYTES_MAX)))
            )
            .is_err()
        );
    }

    proptest! {
        #[test]
        fn completed_round_trips(
            id in any::<u128>(), asset in "[a-zA-Z0-9 ]{1,40}", ty in "[a-z0-9_-]{1,20}",
            failed in any::<bool>(), n in any::<i64>(), by in proptest::option::of("[a-z]{1,8}"),
        ) {
            let e = AnalysisCompleted {
                analysis_id: Uuid::from_u128(id), asset_id: asset, analysis_type: ty, requested_by: by,
                status: if failed { AnalysisStatus::Failed } else { AnalysisStatus::Succeeded },
                result: (!failed).then(|| json!({"value": n})), error: failed.then(|| "boom".to_string()),
                completed_at: format_timestamp(n.rem_euclid(4_000_000_000_000)),
            };
            let p = e.publication(crate::APP_ID_ORCHESTRATOR, 0).unwrap();
            let back = decode_event(p.properties.kind.as_deref(), &p.body).unwrap();
            prop_assert_eq!(back, Event::Completed(e));
        }

        #[test]
        fn request_round_trips(id in any::<u128>(), asset in ".{1,128}", ty in "[a-z0-9_-]{1,64}") {
            let r = RequestAnalysis { analysis_id: Uuid::from_u128(id), asset_id: asset, analysis_type: ty,
                parameters: None, requested_by: None, requested_at: format_timestamp(0) };
            let p = r.publication("t", 0).unwrap();
            prop_assert_eq!(decode_request(p.properties.kind.as_deref(), &p.body).unwrap(), r);
        }
    }
}
