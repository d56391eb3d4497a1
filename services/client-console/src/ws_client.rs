//! GraphQL subscriptions over WebSocket, `graphql-transport-ws` protocol (the modern one; see
//! <https://github.com/enisdenjo/graphql-ws/blob/master/PROTOCOL.md>).

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::{ConsoleConfig, ConsoleError, EventKind, ReceivedEvent, graphql_error};

/// Largest message the console accepts from the gateway.
const MESSAGE_BYTES_MAX: usize = 64 * 1024;
/// Subprotocol negotiated with the gateway.
const SUBPROTOCOL: &str = "graphql-transport-ws";

const SUBSCRIPTION: &str = "subscription Follow($id: ID!) { analysisEvents(analysisId: $id) { \
    __typename \
    ... on AnalysisStarted { analysisId assetId analysisType startedAt } \
    ... on AnalysisCompleted { analysisId assetId analysisType status result error completedAt } } }";

/// An acknowledged `graphql-transport-ws` connection.
pub struct Subscriber<S> {
    socket: WebSocketStream<S>,
    next_id: u64,
}

impl<S> Subscriber<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    /// Opens the WebSocket and completes `connection_init` / `connection_ack`.
    pub async fn connect<N: ports::Net<Stream = S>>(
        net: &N,
        config: &ConsoleConfig,
    ) -> Result<Self, ConsoleError> {
        let stream =
            net.connect(&config.authority)
                .await
                .map_err(|source| ConsoleError::Connect {
                    addr: config.authority.clone(),
                    source,
                })?;
        let url = format!("ws://{}{}", config.authority, config.path);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| ConsoleError::WebSocket(e.to_string()))?;
        let headers = request.headers_mut();
        headers.insert(
            "sec-websocket-protocol",
            http::HeaderValue::from_static(SUBPROTOCOL),
        );
        for (name, value) in config.identity_headers()? {
            headers.insert(name, value);
        }
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MESSAGE_BYTES_MAX))
            .max_frame_size(Some(MESSAGE_BYTES_MAX));
        let (socket, _response) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(ws_config))
                .await
                .map_err(|e| ConsoleError::WebSocket(format!("upgrade to {url}: {e}")))?;
        let mut subscriber = Subscriber { socket, next_id: 1 };
        subscriber
            .send(json!({"type": "connection_init", "payload": {}}))
            .await?;
        loop {
            let message = subscriber.receive().await?;
            match message.get("type").and_then(Value::as_str) {
                Some("connection_ack") => return Ok(subscriber),
                Some("ping") => subscriber.send(json!({"type": "pong"})).await?,
                _ => {
                    return Err(ConsoleError::WebSocket(format!(
                        "expected connection_ack, got {message}"
                    )));
                }
            }
        }
    }

    /// Subscribes to one analysis's events and returns them once `AnalysisCompleted` arrived and
    /// the gateway completed the subscription.
    pub async fn follow(
        &mut self,
        analysis_id: &str,
        mut on_event: impl FnMut(&ReceivedEvent),
    ) -> Result<Vec<ReceivedEvent>, ConsoleError> {
        let id = self.next_id.to_string();
        self.next_id += 1;
        self.send(json!({
            "id": id, "type": "subscribe",
            "payload": {"query": SUBSCRIPTION, "variables": {"id": analysis_id}},
        }))
        .await?;
        let mut events = Vec::new();
        loop {
            let message = self.receive().await?;
            let for_us = message.get("id").and_then(Value::as_str) == Some(id.as_str());
            match message.get("type").and_then(Value::as_str) {
                Some("ping") => self.send(json!({"type": "pong"})).await?,
                Some("next") if for_us => {
                    let payload = message.get("payload").cloned().unwrap_or(Value::Null);
                    if let Some(error) = graphql_error(&payload) {
                        return Err(error);
                    }
                    let event = parse_event(&payload)?;
                    on_event(&event);
                    events.push(event);
                }
                Some("error") if for_us => {
                    let payload = message.get("payload").cloned().unwrap_or(Value::Null);
                    return Err(
                        graphql_error(&json!({"errors": payload})).unwrap_or_else(|| {
                            ConsoleError::WebSocket(format!("subscription error: {message}"))
                        }),
                    );
                }
                Some("complete") if for_us => break,
                _ => {}
            }
        }
        if !events.iter().any(|e| e.kind == EventKind::Completed) {
            return Err(ConsoleError::WebSocket(
                "subscription completed without AnalysisCompleted".into(),
            ));
        }
        Ok(events)
    }

    /// Closes the socket politely.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }

    async fn send(&mut self, message: Value) -> Result<(), ConsoleError> {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .map_err(|e| ConsoleError::WebSocket(e.to_string()))
    }

    async fn receive(&mut self) -> Result<Value, ConsoleError> {
        loop {
            let message = self
                .socket
                .next()
                .await
                .ok_or_else(|| ConsoleError::WebSocket("connection closed by the gateway".into()))?
                .map_err(|e| ConsoleError::WebSocket(e.to_string()))?;
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(text.as_str()).map_err(|e| {
                        ConsoleError::WebSocket(format!("bad message {text:?}: {e}"))
                    });
                }
                Message::Close(frame) => {
                    return Err(ConsoleError::WebSocket(format!(
                        "closed by the gateway: {frame:?}"
                    )));
                }
                // Pings are answered by tungstenite; binary frames are not part of the protocol.
                _ => continue,
            }
        }
    }
}

fn parse_event(payload: &Value) -> Result<ReceivedEvent, ConsoleError> {
    let data = payload
        .pointer("/data/analysisEvents")
        .cloned()
        .ok_or_else(|| ConsoleError::WebSocket(format!("event without data: {payload}")))?;
    let kind = match data.get("__typename").and_then(Value::as_str) {
        Some("AnalysisStarted") => EventKind::Started,
        Some("AnalysisCompleted") => EventKind::Completed,
        other => {
            return Err(ConsoleError::WebSocket(format!(
                "unknown event type {other:?}"
            )));
        }
    };
    let analysis_id = data
        .get("analysisId")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    Ok(ReceivedEvent {
        kind,
        analysis_id,
        data,
    })
}
