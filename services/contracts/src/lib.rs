//! warren's wire contracts, exactly as `shared/contract/messages.md` states them.
//!
//! Owns: the three messages (`RequestAnalysis`, `AnalysisStarted`, `AnalysisCompleted`), their AMQP
//! properties, their deterministic message ids, the size limit on bodies, and the topology
//! (exchanges, queues, bindings) every service declares.
//!
//! Must never depend on: any IO, any broker client, any clock or random source. Timestamps and ids
//! are passed in by the caller, so the same inputs always give the same bytes.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod messages;
mod properties;
mod topology;

pub use messages::{
    ANALYSIS_TYPE_CHARS_MAX, ASSET_ID_CHARS_MAX, AnalysisCompleted, AnalysisStarted,
    AnalysisStatus, DecodeError, Event, MessageKind, PARAMETERS_BYTES_MAX, RequestAnalysis,
    decode_event, decode_request, format_timestamp, validate_input,
};
pub use properties::{
    APP_ID_GATEWAY, APP_ID_ORCHESTRATOR, BODY_BYTES_MAX, CONTENT_TYPE_JSON,
    DELIVERY_MODE_PERSISTENT, EncodeError, Properties, Publication, message_id,
};
pub use topology::{
    Binding, EXCHANGE_COMMANDS, EXCHANGE_COMPLETED, EXCHANGE_STARTED, ExchangeDecl, ExchangeKind,
    INSTANCE_QUEUE_EXPIRES_MS, INSTANCE_QUEUE_MAX_LENGTH, INSTANCE_QUEUE_MAX_LENGTH_BYTES,
    QUEUE_COMMANDS, QUEUE_SUBS_COMPLETED, QUEUE_SUBS_STARTED, QueueDecl, QueueLimits,
    ROUTING_KEY_REQUEST, Topology,
};
