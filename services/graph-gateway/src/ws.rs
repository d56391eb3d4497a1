//! One GraphQL WebSocket (`graphql-transport-ws` or legacy `graphql-ws`), served by
//! async-graphql with three additions it lacks: a cap on active subscriptions per socket, close
//! reasons that fit a close frame, and a close on graceful shutdown.
//!
//! async-graphql reads the client and writes the server messages in one task per socket; we wrap
//! its input stream (to count `subscribe`/`start` and `complete`/`stop`) and its sink (to see the
//! server's own `complete`), rather than fork it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use async_graphql::Data;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt, future};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::schema::GatewaySchema;
use crate::shutdown::Signal;

/// Longest close reason a close frame can carry (125-byte control payload minus the code).
const CLOSE_REASON_BYTES_MAX: usize = 123;
/// Close code when a client opens more subscriptions than allowed (4400: bad request, in
/// graphql-transport-ws's range of application codes).
const CLOSE_TOO_MANY_SUBSCRIPTIONS: u16 = 4400;
/// Close code for a message over `WS_MESSAGE_BYTES_MAX` (RFC 6455 "message too big").
const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
/// Longest we try to hand our close frame to a peer that may be stuck.
const CLOSE_SEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);
/// Close code on graceful shutdown (RFC 6455 "going away").
const CLOSE_GOING_AWAY: u16 = 1001;

/// The two fields of a client or server message we need to see.
#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(rename = "type", borrow)]
    kind: &'a str,
    #[serde(borrow)]
    id: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Default)]
struct Tracking {
    /// Ids of the subscriptions running on this socket.
    active: BTreeSet<String>,
    /// Set when we end the socket ourselves, to say why.
    close: Option<(u16, &'static str)>,
    /// async-graphql has already closed the socket.
    close_sent: bool,
}

/// Everything a socket needs besides the socket itself.
pub(crate) struct Session {
    pub(crate) schema: GatewaySchema,
    pub(crate) protocol: GraphQLProtocol,
    pub(crate) data: Data,
    pub(crate) subscriptions_max: usize,
    pub(crate) shutdown: Signal,
    /// Held while the socket is open; graceful shutdown waits until every copy is dropped.
    pub(crate) open: mpsc::Sender<()>,
}

/// Serves one upgraded socket until the client leaves, breaks a limit, or the gateway stops.
pub(crate) async fn serve(socket: WebSocket, session: Session) {
    let Session {
        schema,
        protocol,
        data,
        subscriptions_max,
        shutdown,
        open,
    } = session;
    let tracking = Arc::new(Mutex::new(Tracking::default()));
    let (mut sink, stream) = socket.split();

    let until_shutdown = {
        let mut shutdown = shutdown.clone();
        async move { shutdown.wait().await }
    };
    let input = stream.take_until(until_shutdown).take_while({
        let tracking = tracking.clone();
        move |message| future::ready(admit(&tracking, message, subscriptions_max))
    });
    let observed = (&mut sink).with({
        let tracking = tracking.clone();
        move |message: Message| future::ready(Ok::<_, axum::Error>(observe(&tracking, message)))
    });

    GraphQLWebSocket::new_with_pair(observed, input, schema, protocol)
        .with_data(data)
        .serve()
        .await;

    let (close, close_sent) = {
        let t = tracking.lock().expect("socket tracking poisoned");
        (t.close, t.close_sent)
    };
    let close = close.or_else(|| {
        shutdown
            .is_pulled()
            .then_some((CLOSE_GOING_AWAY, "server shutting down"))
    });
    if let (Some((code, reason)), false) = (close, close_sent) {
        let frame = CloseFrame {
            code,
            reason: reason.into(),
        };
        // The peer may already be gone or stuck; nothing more to do then.
        let _ =
            tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
    drop(open);
}

/// Whether a client message may go on to async-graphql. Counts subscriptions; refusing one ends
/// the input, which ends the socket with [`CLOSE_TOO_MANY_SUBSCRIPTIONS`].
fn admit(
    tracking: &Mutex<Tracking>,
    message: &Result<Message, axum::Error>,
    subscriptions_max: usize,
) -> bool {
    let text = match message {
        Ok(Message::Text(text)) => text,
        Ok(_) => return true,
        Err(e) => {
            let reason = e.to_string();
            tracing::debug!(error = %reason, "WebSocket read failed");
            // tungstenite reports an over-limit message as "Space limit exceeded: Message too
            // long: N > M" and, unlike for protocol errors, sends no close frame itself. The text
            // is the only way to tell (axum does not expose tungstenite's error type).
            if reason.contains("Message too long") {
                let mut t = tracking.lock().expect("socket tracking poisoned");
                t.close = Some((CLOSE_MESSAGE_TOO_BIG, "message larger than 64 KiB"));
            }
            return false;
        }
    };
    // Malformed messages are async-graphql's to refuse (it closes the socket).
    let Ok(Envelope { kind, id: Some(id) }) = serde_json::from_str::<Envelope<'_>>(text.as_str())
    else {
        return true;
    };
    let mut t = tracking.lock().expect("socket tracking poisoned");
    match kind {
        "subscribe" | "start" => {
            if !t.active.contains(id.as_ref()) && t.active.len() >= subscriptions_max {
                tracing::warn!(
                    subscriptions_max,
                    "too many subscriptions on one socket; closing it"
                );
                t.close = Some((
                    CLOSE_TOO_MANY_SUBSCRIPTIONS,
                    "too many subscriptions on this socket",
                ));
                return false;
            }
            t.active.insert(id.into_owned());
        }
        "complete" | "stop" => {
            t.active.remove(id.as_ref());
        }
        _ => {}
    }
    true
}

/// Sees a server message on its way out: a `complete` frees its subscription's slot, and a close
/// reason is cut to what a close frame can carry (a longer one would make the frame invalid and
/// the client would see 1006 instead of the code).
fn observe(tracking: &Mutex<Tracking>, message: Message) -> Message {
    match message {
        Message::Text(text) => {
            // Only short messages can be a `complete`; don't parse results.
            if text.len() <= 256
                && text.as_str().starts_with(r#"{"type":"complete""#)
                && let Ok(Envelope { id: Some(id), .. }) =
                    serde_json::from_str::<Envelope<'_>>(text.as_str())
            {
                let mut t = tracking.lock().expect("socket tracking poisoned");
                t.active.remove(id.as_ref());
            }
            Message::Text(text)
        }
        Message::Close(frame) => {
            tracking
                .lock()
                .expect("socket tracking poisoned")
                .close_sent = true;
            Message::Close(frame.map(|f| CloseFrame {
                code: f.code,
                reason: truncate(f.reason.as_str()).into(),
            }))
        }
        other => other,
    }
}

fn truncate(reason: &str) -> &str {
    if reason.len() <= CLOSE_REASON_BYTES_MAX {
        return reason;
    }
    let mut end = CLOSE_REASON_BYTES_MAX;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_close_reasons_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(100);
        let cut = truncate(&long);
        assert!(cut.len() <= CLOSE_REASON_BYTES_MAX && long.starts_with(cut));
    }

    #[test]
    fn finished_subscriptions_free_their_slot() {
        let tracking = Mutex::new(Tracking::default());
        let subscribe = |id: &str| {
            Ok(Message::text(format!(
                r#"{{"type":"subscribe","id":"{id}","payload":{{}}}}"#
            )))
        };
        assert!(admit(&tracking, &subscribe("1"), 1));
        assert!(
            admit(&tracking, &subscribe("1"), 1),
            "re-using an active id takes no new slot"
        );
        observe(&tracking, Message::text(r#"{"type":"complete","id":"1"}"#));
        assert!(admit(&tracking, &subscribe("2"), 1));
        assert!(!admit(&tracking, &subscribe("3"), 1));
        assert_eq!(
            tracking.lock().unwrap().close.map(|c| c.0),
            Some(CLOSE_TOO_MANY_SUBSCRIPTIONS)
        );
    }
}
