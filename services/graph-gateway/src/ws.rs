//! One GraphQL WebSocket (`graphql-transport-ws` or legacy `graphql-ws`), served by
//! async-graphql with what it lacks (see `shared/research/graphql-auth.md` §1.2, §1.4):
//!
//! - graphql-transport-ws close codes as its PROTOCOL.md says: 4400 for an invalid message,
//!   4401 for `subscribe` before `connection_ack`, 4403 when `connection_init` is refused,
//!   4408 when no `connection_init` comes within the init timeout, 4409 for a duplicate active
//!   id, 4429 for a second `connection_init`;
//! - a cap on active subscriptions per socket (one more closes it with 4400);
//! - server pings (WebSocket ping frames) every keep-alive interval, and a write timeout;
//! - the socket closed with 4401 when its bearer token expires (oauth2-proxy and Kong only
//!   authenticate the handshake);
//! - close reasons that fit a close frame, and 1001 on graceful shutdown.
//!
//! async-graphql reads the client and writes the server messages in one task per socket; we
//! wrap its input stream (to check and count client messages) and give it a channel as its sink;
//! a writer owns the real socket, sees every server message on its way out, and adds pings and
//! timed closes. Nothing is forked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_graphql::Data;
use async_graphql_axum::{GraphQLProtocol, GraphQLWebSocket};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt, future};
use serde::Deserialize;
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;

use crate::config::{JwtAuth, WS_WRITE_TIMEOUT};
use crate::schema::{Caller, GatewaySchema};
use crate::shutdown::Signal;

/// Longest close reason a close frame can carry (125-byte control payload minus the code).
const CLOSE_REASON_BYTES_MAX: usize = 123;
/// graphql-transport-ws: invalid message (and, here, too many subscriptions).
const CLOSE_BAD_REQUEST: u16 = 4400;
/// graphql-transport-ws: `subscribe` before `connection_ack`; also our code for an expired token.
const CLOSE_UNAUTHORIZED: u16 = 4401;
/// graphql-transport-ws: `connection_init` refused.
const CLOSE_FORBIDDEN: u16 = 4403;
/// graphql-transport-ws: no `connection_init` in time.
const CLOSE_INIT_TIMEOUT: u16 = 4408;
/// graphql-transport-ws: an id already in use.
const CLOSE_DUPLICATE_ID: u16 = 4409;
/// graphql-transport-ws: a second `connection_init`.
const CLOSE_TOO_MANY_INITS: u16 = 4429;
/// Close code for a message over `WS_MESSAGE_BYTES_MAX` (RFC 6455 "message too big").
const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;
/// Longest we try to hand our close frame to a peer that may be stuck.
const CLOSE_SEND_TIMEOUT: Duration = Duration::from_secs(1);
/// Close code on graceful shutdown (RFC 6455 "going away").
const CLOSE_GOING_AWAY: u16 = 1001;
/// Longest subscription id a client may choose: ids are kept per socket, and the `complete`
/// that frees one's slot must stay short enough to be read on its way out.
const SUBSCRIPTION_ID_BYTES_MAX: usize = 128;
/// Longest server message read on its way out (an ack or a `complete`: its id, each byte
/// escaped to at most 6 in JSON, and the envelope); results are longer and are not parsed.
const OBSERVED_MESSAGE_BYTES_MAX: usize = 64 + 6 * SUBSCRIPTION_ID_BYTES_MAX;
/// Server messages queued between async-graphql and the writer.
const OUTGOING_CAPACITY: usize = 64;

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
    /// The subscriptions running on this socket.
    subscriptions: Subscriptions,
    /// Set when we end the socket ourselves, to say why.
    close: Option<(u16, String)>,
    /// The client sent `connection_init`.
    initialised: bool,
    /// The server sent `connection_ack` (so `connection_init` was accepted).
    acked: bool,
    /// When the socket's token expires.
    expires_at: Option<Instant>,
    /// graphql-transport-ws (else the legacy graphql-ws).
    modern: bool,
}

/// The subscriptions async-graphql runs for one socket, counted as it counts them. Every one
/// ends with exactly one server `complete`: when its stream ends, or as the answer to the
/// client's `complete` for a stream still running (async-graphql 7's `websocket.rs`; it never
/// sends `error`). A client's `complete` frees the slot at once, since async-graphql reads it
/// before anything the client sends after; the server's answer to it must then free nothing.
/// (Freeing the slot at every server `complete` let a client that sends `complete X` and
/// `subscribe X` back to back run any number of subscriptions: the answer to the first freed
/// the new one's slot.)
#[derive(Debug, Default)]
struct Subscriptions {
    /// Ids running, by the client's account: each holds a slot, and may not be reused until
    /// completed (graphql-transport-ws' 4409).
    running: BTreeSet<String>,
    /// Ids the client completed, with how many server `complete`s for them are still to come
    /// that free nothing. At most one per slot ever held at once, and each is used up.
    answers_owed: BTreeMap<String, usize>,
}

impl Subscriptions {
    /// Slots held.
    fn count(&self) -> usize {
        self.running.len()
    }

    fn is_running(&self, id: &str) -> bool {
        self.running.contains(id)
    }

    fn start(&mut self, id: &str) {
        self.running.insert(id.to_owned());
    }

    /// The client completed `id`.
    fn client_completed(&mut self, id: &str) {
        if self.running.remove(id) {
            *self.answers_owed.entry(id.to_owned()).or_default() += 1;
        }
    }

    /// The server sent `complete` for `id`: the answer to the client's, or the end of its
    /// stream. (If the stream had ended just before the client's `complete`, async-graphql
    /// answers nothing, and its end counts as the answer.)
    fn server_completed(&mut self, id: &str) {
        match self.answers_owed.get_mut(id) {
            Some(owed) if *owed > 1 => *owed -= 1,
            Some(_) => {
                self.answers_owed.remove(id);
            }
            None => {
                self.running.remove(id);
            }
        }
    }
}

impl Tracking {
    fn close_with(&mut self, code: u16, reason: impl Into<String>) {
        self.close.get_or_insert((code, reason.into()));
    }
}

/// Everything a socket needs besides the socket itself.
pub(crate) struct Session {
    pub(crate) schema: GatewaySchema,
    pub(crate) protocol: GraphQLProtocol,
    /// `graphql-transport-ws` (else legacy `graphql-ws`).
    pub(crate) modern: bool,
    pub(crate) data: Data,
    pub(crate) subscriptions_max: usize,
    pub(crate) shutdown: Signal,
    /// Held while the socket is open; graceful shutdown waits until every copy is dropped.
    pub(crate) open: mpsc::Sender<()>,
    pub(crate) init_timeout: Duration,
    pub(crate) keepalive: Duration,
    /// Time left on the upgrade's token, when it had one.
    pub(crate) expires_in: Option<Duration>,
    /// Set when `connection_init` must carry the token (JWT auth on, none on the upgrade).
    pub(crate) init_auth: Option<JwtAuth>,
    /// This socket's place under the WebSocket cap.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// Serves one upgraded socket until the client leaves, breaks a rule, or the gateway stops.
pub(crate) async fn serve(socket: WebSocket, session: Session) {
    let Session {
        schema,
        protocol,
        modern,
        data,
        subscriptions_max,
        shutdown,
        open,
        init_timeout,
        keepalive,
        expires_in,
        init_auth,
        permit,
    } = session;
    let tracking = Arc::new(Mutex::new(Tracking {
        expires_at: expires_in.map(|d| Instant::now() + d), // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
        modern,
        ..Tracking::default()
    }));
    let (sink, stream) = socket.split();
    let (outgoing_tx, outgoing_rx) = futures::channel::mpsc::channel::<Message>(OUTGOING_CAPACITY);

    let until_shutdown = {
        let mut shutdown = shutdown.clone();
        async move { shutdown.wait().await }
    };
    let input = stream.take_until(until_shutdown).take_while({
        let tracking = tracking.clone();
        move |message| future::ready(admit(&tracking, message, subscriptions_max, modern))
    });
    let graphql_sink = outgoing_tx.sink_map_err(axum::Error::new);
    let graphql = GraphQLWebSocket::new_with_pair(graphql_sink, input, schema, protocol)
        .with_data(data)
        .on_connection_init({
            let tracking = tracking.clone();
            move |payload| connection_init(payload, init_auth, tracking)
        })
        .serve();
    let writer = write(
        sink,
        outgoing_rx,
        tracking.clone(),
        Instant::now() + init_timeout, // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
        keepalive,
        shutdown,
    );
    tokio::pin!(graphql, writer);
    tokio::select! {
        // async-graphql is done (the client left or broke a rule): its sink is dropped, so the
        // writer drains what is queued, closes, and returns.
        () = &mut graphql => writer.await,
        // The writer closed the socket itself (timeout, expiry, dead peer): drop async-graphql.
        () = &mut writer => {}
    }
    drop(permit);
    drop(open);
}

/// `connection_init`: accepted as is without JWT auth, or when the upgrade carried the token;
/// otherwise the payload must hold a valid one, whose `sub` becomes the caller.
async fn connection_init(
    payload: serde_json::Value,
    init_auth: Option<JwtAuth>,
    tracking: Arc<Mutex<Tracking>>,
) -> async_graphql::Result<Data> {
    let Some(auth) = init_auth else {
        return Ok(Data::default());
    };
    let token = ["Authorization", "authorization"]
        .iter()
        .find_map(|k| payload.get(*k).and_then(serde_json::Value::as_str))
        .and_then(jwt_auth::bearer)
        .or_else(|| payload.get("token").and_then(serde_json::Value::as_str))
        .ok_or_else(|| async_graphql::Error::new("Forbidden: no bearer token"))?;
    let claims = auth.0.verify(token).await.map_err(|e| {
        tracing::info!(error = %e, "connection_init token refused");
        async_graphql::Error::new("Forbidden")
    })?;
    tracking
        .lock()
        .expect("socket tracking poisoned")
        .expires_at = Some(Instant::now() + auth.0.remaining(&claims)); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
    let mut data = Data::default();
    data.insert(Caller(Some(claims.sub)));
    Ok(data)
}

/// Owns the socket's sink: forwards async-graphql's messages (seen by [`observe`]), pings every
/// `keepalive`, and closes the socket itself on init timeout (4408), token expiry (4401), a
/// stuck peer, or when async-graphql is done (with the reason [`admit`] recorded, or 1001 on
/// shutdown).
async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut outgoing: futures::channel::mpsc::Receiver<Message>,
    tracking: Arc<Mutex<Tracking>>,
    init_deadline: Instant,
    keepalive: Duration,
    shutdown: Signal,
) {
    let mut ping = tokio::time::interval_at(Instant::now() + keepalive, keepalive); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
    let close = loop {
        let deadline = {
            let t = tracking.lock().expect("socket tracking poisoned");
            if !t.initialised && !t.acked {
                Some((
                    init_deadline,
                    CLOSE_INIT_TIMEOUT,
                    "Connection initialisation timeout",
                ))
            } else {
                t.expires_at
                    .map(|at| (at, CLOSE_UNAUTHORIZED, "Unauthorized: token expired"))
            }
        };
        let sleep = async {
            match deadline {
                Some((at, ..)) => tokio::time::sleep_until(at).await,
                None => future::pending().await,
            }
        };
        tokio::select! {
            message = outgoing.next() => {
                let Some(message) = message else {
                    let t = tracking.lock().expect("socket tracking poisoned");
                    break t.close.clone().or_else(|| {
                        shutdown
                            .is_pulled()
                            .then(|| (CLOSE_GOING_AWAY, "server shutting down".to_owned()))
                    });
                };
                let message = observe(&tracking, message);
                let is_close = matches!(message, Message::Close(_));
                match tokio::time::timeout(WS_WRITE_TIMEOUT, sink.send(message)).await {
                    Ok(Ok(())) if !is_close => {}
                    Ok(Ok(())) => return,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "WebSocket write failed");
                        return;
                    }
                    Err(_) => {
                        tracing::warn!("WebSocket peer stuck; closing");
                        return;
                    }
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(WS_WRITE_TIMEOUT, sink.send(Message::Ping(Default::default()))).await {
                    Ok(Ok(())) => {}
                    _ => {
                        tracing::debug!("WebSocket ping failed; closing");
                        return;
                    }
                }
            }
            () = sleep => {
                let (_, code, reason) = deadline.expect("slept on a deadline");
                tracing::info!(code, reason, "closing WebSocket");
                break Some((code, reason.to_owned()));
            }
        }
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: truncate(&reason).into(),
        };
        // The peer may already be gone or stuck; nothing more to do then.
        let _ =
            tokio::time::timeout(CLOSE_SEND_TIMEOUT, sink.send(Message::Close(Some(frame)))).await;
    }
}

/// Whether a client message may go on to async-graphql. Checks graphql-transport-ws' rules and
/// counts subscriptions; refusing a message ends the input, which ends the socket with the code
/// recorded here.
fn admit(
    tracking: &Mutex<Tracking>,
    message: &Result<Message, axum::Error>,
    subscriptions_max: usize,
    modern: bool,
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
                t.close_with(CLOSE_MESSAGE_TOO_BIG, "message larger than 64 KiB");
            }
            return false;
        }
    };
    let envelope = serde_json::from_str::<Envelope<'_>>(text.as_str());
    let mut t = tracking.lock().expect("socket tracking poisoned");
    let Ok(Envelope { kind, id }) = envelope else {
        if modern {
            t.close_with(CLOSE_BAD_REQUEST, "Invalid message received");
            return false;
        }
        // The legacy protocol's errors are async-graphql's to handle.
        return true;
    };
    if id
        .as_ref()
        .is_some_and(|id| id.len() > SUBSCRIPTION_ID_BYTES_MAX)
    {
        let reason = format!("subscription id longer than {SUBSCRIPTION_ID_BYTES_MAX} bytes");
        t.close_with(CLOSE_BAD_REQUEST, reason);
        return false;
    }
    if !modern {
        return admit_legacy(&mut t, kind, id.as_deref(), subscriptions_max);
    }
    match (kind, id) {
        ("connection_init", _) => {
            if t.initialised {
                t.close_with(CLOSE_TOO_MANY_INITS, "Too many initialisation requests");
                return false;
            }
            t.initialised = true;
        }
        ("ping" | "pong", _) => {}
        ("subscribe", Some(id)) => {
            if !t.acked {
                t.close_with(CLOSE_UNAUTHORIZED, "Unauthorized");
                return false;
            }
            if t.subscriptions.is_running(id.as_ref()) {
                let reason = format!("Subscriber for {id} already exists");
                t.close_with(CLOSE_DUPLICATE_ID, reason);
                return false;
            }
            if t.subscriptions.count() >= subscriptions_max {
                tracing::warn!(
                    subscriptions_max,
                    "too many subscriptions on one socket; closing it"
                );
                t.close_with(CLOSE_BAD_REQUEST, "too many subscriptions on this socket");
                return false;
            }
            t.subscriptions.start(id.as_ref());
        }
        ("complete", Some(id)) => {
            t.subscriptions.client_completed(id.as_ref());
        }
        _ => {
            t.close_with(CLOSE_BAD_REQUEST, "Invalid message received");
            return false;
        }
    }
    true
}

/// The legacy `graphql-ws` protocol: only the subscription cap is ours.
fn admit_legacy(t: &mut Tracking, kind: &str, id: Option<&str>, subscriptions_max: usize) -> bool {
    let Some(id) = id else {
        return true;
    };
    match kind {
        "start" => {
            // A start under a running id replaces that subscription in async-graphql, unless it
            // ended already and its `complete` is still on its way out, which would then free
            // the new one's slot: counted as a stop and a start, so that `complete` frees
            // nothing. (If the old one was still running, no `complete` comes for it, and the
            // new one's own end is taken for it: the slot stays held until the socket closes,
            // which errs on the safe side.)
            t.subscriptions.client_completed(id);
            if t.subscriptions.count() >= subscriptions_max {
                tracing::warn!(
                    subscriptions_max,
                    "too many subscriptions on one socket; closing it"
                );
                t.close_with(CLOSE_BAD_REQUEST, "too many subscriptions on this socket");
                return false;
            }
            t.subscriptions.start(id);
        }
        "stop" => {
            t.subscriptions.client_completed(id);
        }
        _ => {}
    }
    true
}

/// Sees a server message on its way out: `connection_ack` opens the socket for subscriptions, a
/// `complete` may free its subscription's slot (see [`Subscriptions`]), async-graphql's own close
/// codes are mapped to graphql-transport-ws' (a refused `connection_init` is 1002 from
/// async-graphql, 4403 in the spec; a message it cannot read is 1002 too, 4400 in the spec), and
/// a close reason is cut to what a close frame can carry (a longer one would make the frame
/// invalid and the client would see 1006 instead of the code).
fn observe(tracking: &Mutex<Tracking>, message: Message) -> Message {
    match message {
        Message::Text(text) => {
            // Only short messages can be an ack or a `complete`; don't parse results.
            if text.len() <= OBSERVED_MESSAGE_BYTES_MAX
                && let Ok(Envelope { kind, id }) =
                    serde_json::from_str::<Envelope<'_>>(text.as_str())
            {
                let mut t = tracking.lock().expect("socket tracking poisoned");
                match (kind, id) {
                    ("connection_ack", _) => t.acked = true,
                    ("complete", Some(id)) => {
                        t.subscriptions.server_completed(id.as_ref());
                    }
                    _ => {}
                }
            }
            Message::Text(text)
        }
        Message::Close(frame) => {
            let (acked, modern) = {
                let t = tracking.lock().expect("socket tracking poisoned");
                (t.acked, t.modern)
            };
            Message::Close(frame.map(|f| match f.code {
                1002 if !acked => CloseFrame {
                    code: CLOSE_FORBIDDEN,
                    reason: "Forbidden".into(),
                },
                // async-graphql could not read a message that passed `admit` (a `subscribe`
                // without a usable payload): graphql-transport-ws says 4400.
                1002 if modern => CloseFrame {
                    code: CLOSE_BAD_REQUEST,
                    reason: truncate(&format!("Invalid message received: {}", f.reason)).into(),
                },
                1011 if !acked => CloseFrame {
                    code: CLOSE_UNAUTHORIZED,
                    reason: "Unauthorized".into(),
                },
                _ => CloseFrame {
                    code: f.code,
                    reason: truncate(f.reason.as_str()).into(),
                },
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
    fn a_slot_is_freed_once_however_the_client_and_the_server_end_a_subscription() {
        let mut subs = Subscriptions::default();
        subs.start("a");
        subs.start("b");
        // The client ends "a" and starts it again before the server's answer goes out.
        subs.client_completed("a");
        subs.start("a");
        assert_eq!(subs.count(), 2);
        subs.server_completed("a"); // the answer to the client's `complete`
        assert_eq!(
            subs.count(),
            2,
            "the answer freed the new subscription's slot"
        );
        assert!(subs.is_running("a"));
        // The new "a" ends on its own.
        subs.server_completed("a");
        assert_eq!(subs.count(), 1);
        // "b" ended on its own just before the client's `complete` (no answer comes then).
        subs.client_completed("b");
        assert_eq!(subs.count(), 0);
        subs.start("b");
        subs.server_completed("b"); // the old one's end
        assert_eq!(subs.count(), 1, "the old end freed the new one's slot");
        assert!(subs.answers_owed.is_empty());
        // A `complete` for an id that is not running changes nothing.
        subs.client_completed("zzz");
        assert_eq!(subs.count(), 1);
        assert!(subs.answers_owed.is_empty());
    }

    #[test]
    fn long_close_reasons_are_cut_on_a_char_boundary() {
        assert_eq!(truncate("short"), "short");
        let long = "é".repeat(100);
        let cut = truncate(&long);
        assert!(cut.len() <= CLOSE_REASON_BYTES_MAX && long.starts_with(cut));
    }

    #[test]
    fn finished_subscriptions_free_their_slot() {
        let tracking = Mutex::new(Tracking {
            acked: true,
            initialised: true,
            ..Tracking::default()
        });
        let subscribe = |id: &str| {
            Ok(Message::text(format!(
                r#"{{"type":"subscribe","id":"{id}","payload":{{}}}}"#
            )))
        };
        assert!(admit(&tracking, &subscribe("1"), 1, true));
        observe(&tracking, Message::text(r#"{"type":"complete","id":"1"}"#));
        assert!(admit(&tracking, &subscribe("2"), 1, true));
        assert!(!admit(&tracking, &subscribe("3"), 1, true));
        assert_eq!(
            tracking.lock().unwrap().close.as_ref().map(|c| c.0),
            Some(CLOSE_BAD_REQUEST)
        );
    }

    /// The legacy protocol replaces a subscription started again under its id; when the old
    /// one had already ended, its `complete` is still to come and must not free the new one's
    /// slot.
    #[test]
    fn a_legacy_start_under_a_running_id_keeps_the_cap() {
        let tracking = Mutex::new(Tracking {
            acked: true,
            initialised: true,
            ..Tracking::default()
        });
        let start = |id: &str| {
            Ok(Message::text(format!(
                r#"{{"type":"start","id":"{id}","payload":{{}}}}"#
            )))
        };
        assert!(admit(&tracking, &start("a"), 2, false)); // ends at once
        assert!(admit(&tracking, &start("a"), 2, false)); // a live one, same id
        assert!(admit(&tracking, &start("b"), 2, false));
        // The first "a"'s complete, only now on its way out.
        observe(&tracking, Message::text(r#"{"type":"complete","id":"a"}"#));
        assert!(
            !admit(&tracking, &start("c"), 2, false),
            "a third subscription ran"
        );
        assert_eq!(
            tracking.lock().unwrap().close.as_ref().map(|c| c.0),
            Some(CLOSE_BAD_REQUEST)
        );
    }
}
