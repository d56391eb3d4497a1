//! ClientConsole: requests an analysis through the GraphQL API and follows its events.
//!
//! Owns: the client side of the two protocols the diagram's client speaks: GraphQL over HTTP
//! (`requestAnalysis`) and GraphQL subscriptions over WebSocket (`graphql-transport-ws`). The
//! console binary and the simulation's client hosts both use this library, over any
//! [`ports::Net`] (tokio TCP or turmoil TCP).
//!
//! Must never depend on: the gateway's code (it talks to it only over the wire), the OS clock
//! (timeouts are `tokio::time`), randomness that changes behaviour.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod http_client;
mod ws_client;

use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

pub use http_client::request_analysis;
pub use ws_client::Subscriber;

/// Where the gateway (or the edge in front of it) is, and how long to wait.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// `host:port` to connect to.
    pub authority: String,
    /// Path of the GraphQL endpoint, e.g. `/graphql`.
    pub path: String,
    /// Caller identity, sent as `X-Forwarded-User` (the header the auth proxy sets upstream):
    /// for talking to a gateway directly, without the edge.
    pub user: Option<String>,
    /// Bearer token, sent as `Authorization: Bearer <token>` on the HTTP request and on the
    /// WebSocket upgrade: what the edge and the auth proxy require.
    pub token: Option<String>,
    /// Longest wait for the whole exchange, from request to completion.
    pub timeout: Duration,
}

impl ConsoleConfig {
    /// Parses `http://host:port/path`.
    pub fn from_url(url: &str) -> Result<ConsoleConfig, ConsoleError> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| ConsoleError::Usage(format!("bad URL {url:?}: {e}")))?;
        if !matches!(uri.scheme_str(), Some("http") | None) {
            return Err(ConsoleError::Usage(format!(
                "only http:// URLs are supported, got {url:?}"
            )));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| ConsoleError::Usage(format!("URL {url:?} has no host")))?;
        let port = authority.port_u16().unwrap_or(80);
        Ok(ConsoleConfig {
            authority: format!("{}:{port}", authority.host()),
            path: uri.path().to_owned(),
            user: None,
            token: None,
            timeout: Duration::from_secs(30),
        })
    }
}

impl ConsoleConfig {
    /// The identity headers this configuration sends: `X-Forwarded-User` and `Authorization`.
    pub(crate) fn identity_headers(
        &self,
    ) -> Result<Vec<(&'static str, http::HeaderValue)>, ConsoleError> {
        let mut headers = Vec::new();
        if let Some(user) = &self.user {
            let value = http::HeaderValue::from_str(user)
                .map_err(|e| ConsoleError::Usage(format!("user: {e}")))?;
            headers.push(("x-forwarded-user", value));
        }
        if let Some(token) = &self.token {
            let mut value = http::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|e| ConsoleError::Usage(format!("token: {e}")))?;
            value.set_sensitive(true);
            headers.push(("authorization", value));
        }
        Ok(headers)
    }
}

/// What to analyse.
#[derive(Debug, Clone, PartialEq)]
pub struct AnalysisInput {
    /// The asset (machine).
    pub asset_id: String,
    /// What to compute.
    pub analysis_type: String,
    /// Free-form parameters.
    pub parameters: Option<Value>,
}

/// The gateway's answer to `requestAnalysis`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requested {
    /// The new analysis.
    pub analysis_id: String,
    /// RFC 3339.
    pub requested_at: String,
}

/// Which event arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EventKind {
    /// `AnalysisStarted`.
    Started,
    /// `AnalysisCompleted`.
    Completed,
}

/// One subscription event as received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// Which event.
    pub kind: EventKind,
    /// Its analysisId.
    pub analysis_id: String,
    /// The event object as the gateway sent it.
    pub data: Value,
}

/// Everything one analysis produced, in arrival order.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The mutation's answer.
    pub requested: Requested,
    /// Subscription events in arrival order.
    pub events: Vec<ReceivedEvent>,
}

/// Why the console failed.
#[derive(Debug, Error)]
pub enum ConsoleError {
    /// Bad flags or URL.
    #[error("{0}")]
    Usage(String),
    /// The network failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// HTTP failed or answered with an error status.
    #[error("HTTP: {0}")]
    Http(String),
    /// The WebSocket failed or the protocol was violated.
    #[error("WebSocket: {0}")]
    WebSocket(String),
    /// The gateway answered with GraphQL errors.
    #[error("GraphQL error {code}: {message}")]
    GraphQl {
        /// `extensions.code`, or `UNKNOWN`.
        code: String,
        /// The first error's message.
        message: String,
    },
    /// Nothing completed in time.
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(Duration, &'static str),
}

/// Requests one analysis and follows it to completion: connects the subscription socket first
/// (so it is warm), sends the mutation, subscribes to the new analysis's events (the gateway
/// replays what already happened), and returns once `AnalysisCompleted` arrives. `on_event` sees
/// each step as it happens.
pub async fn run<N: ports::Net>(
    net: &N,
    config: &ConsoleConfig,
    input: &AnalysisInput,
    mut on_event: impl FnMut(&Step<'_>),
) -> Result<Outcome, ConsoleError> {
    let work = async {
        let mut subscriber = Subscriber::connect(net, config).await?;
        let requested = request_analysis(net, config, input).await?;
        on_event(&Step::Requested(&requested));
        let events = subscriber
            .follow(&requested.analysis_id, |event| {
                on_event(&Step::Event(event))
            })
            .await?;
        subscriber.close().await;
        Ok(Outcome { requested, events })
    };
    tokio::time::timeout(config.timeout, work)
        .await
        .map_err(|_| ConsoleError::Timeout(config.timeout, "AnalysisCompleted"))?
}

/// A step of [`run`], for printing progress.
#[derive(Debug)]
pub enum Step<'a> {
    /// The mutation was accepted.
    Requested(&'a Requested),
    /// An event arrived.
    Event(&'a ReceivedEvent),
}

/// One line describing a step: what the console prints.
pub fn format_step(step: &Step<'_>) -> String {
    let text = |v: &Value, name: &str| {
        v.get(name)
            .map(|x| x.as_str().map_or_else(|| x.to_string(), str::to_owned))
            .unwrap_or_default()
    };
    match step {
        Step::Requested(r) => format!(
            "requested          analysisId={} requestedAt={}",
            r.analysis_id, r.requested_at
        ),
        Step::Event(e) if e.kind == EventKind::Started => format!(
            "AnalysisStarted    analysisId={} assetId={} analysisType={} startedAt={}",
            e.analysis_id,
            text(&e.data, "assetId"),
            text(&e.data, "analysisType"),
            text(&e.data, "startedAt")
        ),
        Step::Event(e) => format!(
            "AnalysisCompleted  analysisId={} status={} result={} error={} completedAt={}",
            e.analysis_id,
            text(&e.data, "status"),
            text(&e.data, "result"),
            text(&e.data, "error"),
            text(&e.data, "completedAt")
        ),
    }
}

/// The first GraphQL error of a response, if any.
fn graphql_error(response: &Value) -> Option<ConsoleError> {
    let error = response.get("errors")?.as_array()?.first()?;
    Some(ConsoleError::GraphQl {
        code: error
            .pointer("/extensions/code")
            .and_then(Value::as_str)
            .unwrap_or("UNKNOWN")
            .to_owned(),
        message: error
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_gives_authority_and_path() {
        let c = ConsoleConfig::from_url("http://127.0.0.1:8000/graphql").unwrap();
        assert_eq!(
            (c.authority.as_str(), c.path.as_str()),
            ("127.0.0.1:8000", "/graphql")
        );
        assert_eq!(
            ConsoleConfig::from_url("http://gateway/graphql")
                .unwrap()
                .authority,
            "gateway:80"
        );
        assert!(ConsoleConfig::from_url("https://x/graphql").is_err());
    }

    #[test]
    fn graphql_error_carries_code() {
        let v = serde_json::json!({"data": null, "errors": [{"message": "bad", "extensions": {"code": "BAD_USER_INPUT"}}]});
        match graphql_error(&v) {
            Some(ConsoleError::GraphQl { code, message }) => {
                assert_eq!((code.as_str(), message.as_str()), ("BAD_USER_INPUT", "bad"))
            }
            other => panic!("{other:?}"),
        }
    }
}
