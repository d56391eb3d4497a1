//! The hardened gateway over a real loopback socket: JWT re-validation on HTTP and WebSocket,
//! per-user isolation, graphql-transport-ws close codes, keep-alive pings, the socket cap and
//! token expiry.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use edge::jwt::StaticJwks;
use edge::{Issuer, IssuerConfig, KeySeed, MintRequest, Verifier, VerifierConfig};
use futures::{SinkExt, StreamExt};
use graph_gateway::{GatewayConfig, JwtAuth};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{Value, json};
use support::*;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

const ISSUER: &str = "http://issuer.test";
const AUDIENCE: &str = "warren";

fn issuer() -> Arc<Issuer> {
    Arc::new(
        Issuer::new(
            IssuerConfig {
                issuer_url: ISSUER.into(),
                audience: AUDIENCE.into(),
            },
            Arc::new(FixedClock),
            KeySeed::Seeded(11),
        )
        .unwrap(),
    )
}

fn auth_for(issuer: &Issuer, leeway_secs: u64) -> JwtAuth {
    let jwks = serde_json::from_value(issuer.jwks()).unwrap();
    JwtAuth(Arc::new(Verifier::new(
        VerifierConfig {
            leeway_secs,
            ..VerifierConfig::new(ISSUER, AUDIENCE)
        },
        Arc::new(FixedClock),
        Arc::new(StaticJwks(jwks)),
    )))
}

async fn secured(issuer: &Issuer, config: GatewayConfig) -> Harness {
    Harness::with_config(GatewayConfig {
        auth: Some(auth_for(issuer, 30)),
        ..config
    })
    .await
}

fn token(issuer: &Issuer, sub: &str) -> String {
    issuer.mint(&MintRequest::new(sub)).unwrap()
}

/// POST /graphql with these headers; status and JSON.
async fn post(addr: SocketAddr, headers: &[(&str, &str)], body: Value) -> (u16, Value) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut request = hyper::Request::post("/graphql")
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = sender
        .send_request(
            request
                .body(Full::new(Bytes::from(body.to_string())))
                .unwrap(),
        )
        .await
        .unwrap();
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn request_as(addr: SocketAddr, token: &str) -> String {
    let auth = format!("Bearer {token}");
    let input = json!({"input": {"assetId": "press-17", "analysisType": "utilization"}});
    let (status, response) = post(
        addr,
        &[("authorization", &auth)],
        json!({"query": REQUEST, "variables": input}),
    )
    .await;
    assert_eq!(status, 200, "{response}");
    response["data"]["requestAnalysis"]["analysisId"]
        .as_str()
        .unwrap_or_else(|| panic!("{response}"))
        .to_owned()
}

/// A raw graphql-transport-ws socket (no `connection_init` sent); `Err` is the HTTP status of a
/// refused upgrade.
async fn raw_socket(
    addr: SocketAddr,
    token: Option<&str>,
) -> Result<WebSocketStream<TcpStream>, u16> {
    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("sec-websocket-protocol", TRANSPORT_WS.parse().unwrap());
    if let Some(token) = token {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let stream = TcpStream::connect(addr).await.unwrap();
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("{e}"),
    }
}

async fn send(socket: &mut WebSocketStream<TcpStream>, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .unwrap();
}

/// The next text message as JSON (pings skipped).
async fn next_text(socket: &mut WebSocketStream<TcpStream>) -> Value {
    loop {
        match tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("a message")
        {
            Some(Ok(Message::Text(text))) => return serde_json::from_str(text.as_str()).unwrap(),
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    }
}

/// The close code (and reason) the server ends the socket with.
async fn close_code(socket: &mut WebSocketStream<TcpStream>) -> (u16, String) {
    loop {
        match tokio::time::timeout(PATIENCE, socket.next())
            .await
            .expect("closed in time")
        {
            Some(Ok(Message::Close(Some(frame)))) => {
                return (u16::from(frame.code), frame.reason.as_str().to_owned());
            }
            Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return (1005, String::new()),
            Some(Ok(_)) => continue,
        }
    }
}

async fn acked(addr: SocketAddr, token: Option<&str>) -> WebSocketStream<TcpStream> {
    let mut socket = raw_socket(addr, token).await.unwrap();
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {}}),
    )
    .await;
    assert_eq!(next_text(&mut socket).await["type"], "connection_ack");
    socket
}

#[tokio::test]
async fn http_needs_a_valid_token_and_the_caller_is_its_sub() {
    let issuer = issuer();
    let h = secured(&issuer, GatewayConfig::default()).await;
    let query = json!({"query": "{ __typename }"});
    let (status, body) = post(h.addr, &[], query.clone()).await;
    assert_eq!(status, 401);
    assert_eq!(error_code(&body), "UNAUTHENTICATED");
    let (status, body) = post(h.addr, &[("x-forwarded-user", "alice")], query.clone()).await;
    assert_eq!(
        status, 401,
        "the proxy's header alone is not enough: {body}"
    );

    let forged = format!("{}x", token(&issuer, "alice"));
    let (status, body) = post(
        h.addr,
        &[("authorization", &format!("Bearer {forged}"))],
        query.clone(),
    )
    .await;
    assert_eq!((status, error_code(&body)), (403, "FORBIDDEN"));
    let other_aud = issuer
        .mint(&MintRequest {
            aud: Some("other".into()),
            ..MintRequest::new("alice")
        })
        .unwrap();
    let (status, _) = post(
        h.addr,
        &[("authorization", &format!("Bearer {other_aud}"))],
        query.clone(),
    )
    .await;
    assert_eq!(status, 403);

    let alice = token(&issuer, "alice");
    let bearer = format!("Bearer {alice}");
    let (status, body) = post(
        h.addr,
        &[("authorization", &bearer), ("x-forwarded-user", "bob")],
        query.clone(),
    )
    .await;
    assert_eq!(
        (status, error_code(&body)),
        (403, "FORBIDDEN"),
        "a header that disagrees with the token"
    );
    let (status, _) = post(
        h.addr,
        &[("authorization", &bearer), ("x-forwarded-user", "alice")],
        query,
    )
    .await;
    assert_eq!(status, 200);

    // Alice's analysis is hers alone.
    let id = request_as(h.addr, &alice).await;
    let bob = format!("Bearer {}", token(&issuer, "bob"));
    let lookup = json!({"query": ANALYSIS, "variables": {"id": id}});
    let (_, as_bob) = post(h.addr, &[("authorization", &bob)], lookup.clone()).await;
    assert_eq!(as_bob["data"]["analysis"], Value::Null, "{as_bob}");
    let (_, as_alice) = post(h.addr, &[("authorization", &bearer)], lookup).await;
    assert_eq!(
        as_alice["data"]["analysis"]["state"], "REQUESTED",
        "{as_alice}"
    );
}

#[tokio::test]
async fn a_user_never_receives_another_users_events() {
    let issuer = issuer();
    let mut h = secured(&issuer, GatewayConfig::default()).await;
    let (alice, bob) = (token(&issuer, "alice"), token(&issuer, "bob"));
    // Each follows all of their own analyses (no analysisId), and bob also tries alice's id.
    let all_completed = "subscription { analysisCompleted { analysisId } }";
    let mut alice_ws = acked(h.addr, Some(&alice)).await;
    let mut bob_ws = acked(h.addr, Some(&bob)).await;
    for socket in [&mut alice_ws, &mut bob_ws] {
        send(
            socket,
            json!({"id": "all", "type": "subscribe", "payload": {"query": all_completed}}),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alice_id = request_as(h.addr, &alice).await;
    let bob_id = request_as(h.addr, &bob).await;
    send(&mut bob_ws, json!({"id": "peek", "type": "subscribe", "payload": {"query": EVENTS, "variables": {"id": alice_id}}})).await;
    let peek = next_text(&mut bob_ws).await;
    assert_eq!(peek["id"], "peek");
    assert_eq!(
        peek["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND",
        "{peek}"
    );
    assert_complete(&next_text(&mut bob_ws).await, "peek");

    h.run_analysis(&alice_id, Some("alice")).await;
    h.run_analysis(&bob_id, Some("bob")).await;
    let got_alice = next_text(&mut alice_ws).await;
    assert_eq!(
        got_alice["payload"]["data"]["analysisCompleted"]["analysisId"],
        alice_id.as_str()
    );
    let got_bob = next_text(&mut bob_ws).await;
    assert_eq!(
        got_bob["payload"]["data"]["analysisCompleted"]["analysisId"],
        bob_id.as_str()
    );
    // Nothing else for either.
    for socket in [&mut alice_ws, &mut bob_ws] {
        if let Ok(Some(Ok(Message::Text(t)))) =
            tokio::time::timeout(Duration::from_millis(300), socket.next()).await
        {
            panic!("unexpected message {t}");
        }
    }
}

#[tokio::test]
async fn websocket_token_on_the_upgrade_or_in_connection_init() {
    let issuer = issuer();
    let h = secured(&issuer, GatewayConfig::default()).await;
    let alice = token(&issuer, "alice");
    assert_eq!(
        raw_socket(h.addr, Some(&format!("{alice}x"))).await.err(),
        Some(403)
    );

    // In connection_init's payload instead.
    let id = request_as(h.addr, &alice).await;
    let mut socket = raw_socket(h.addr, None).await.unwrap();
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {"Authorization": format!("Bearer {alice}")}}),
    )
    .await;
    assert_eq!(next_text(&mut socket).await["type"], "connection_ack");
    send(&mut socket, json!({"id": "1", "type": "subscribe", "payload": {"query": ANALYSIS, "variables": {"id": id}}})).await;
    let answer = next_text(&mut socket).await;
    assert_eq!(
        answer["payload"]["data"]["analysis"]["analysisId"],
        id.as_str(),
        "{answer}"
    );

    // Neither: 4403.
    let mut socket = raw_socket(h.addr, None).await.unwrap();
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {}}),
    )
    .await;
    assert_eq!(close_code(&mut socket).await.0, 4403);
    let mut socket = raw_socket(h.addr, None).await.unwrap();
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {"Authorization": "Bearer nope"}}),
    )
    .await;
    assert_eq!(
        close_code(&mut socket).await,
        (4403, "Forbidden".to_owned())
    );
}

#[tokio::test]
async fn protocol_violations_get_graphql_transport_ws_close_codes() {
    let h = Harness::with_config(GatewayConfig {
        ws_init_timeout: Duration::from_millis(300),
        ..GatewayConfig::default()
    })
    .await;
    // 4400: not JSON, and an unknown message type.
    let mut socket = acked(h.addr, None).await;
    socket.send(Message::text("not json")).await.unwrap();
    assert_eq!(close_code(&mut socket).await.0, 4400);
    let mut socket = acked(h.addr, None).await;
    send(&mut socket, json!({"type": "shout"})).await;
    assert_eq!(close_code(&mut socket).await.0, 4400);
    // 4400 too: a subscribe whose payload async-graphql cannot read (none, or a query that is
    // not a string).
    for subscribe in [
        json!({"id": "1", "type": "subscribe"}),
        json!({"id": "1", "type": "subscribe", "payload": {"query": 5}}),
    ] {
        let mut socket = acked(h.addr, None).await;
        send(&mut socket, subscribe).await;
        assert_eq!(close_code(&mut socket).await.0, 4400);
    }
    // 4401: subscribe before connection_ack.
    let mut socket = raw_socket(h.addr, None).await.unwrap();
    send(
        &mut socket,
        json!({"id": "1", "type": "subscribe", "payload": {"query": "{ __typename }"}}),
    )
    .await;
    assert_eq!(close_code(&mut socket).await.0, 4401);
    // 4408: no connection_init in time.
    let mut socket = raw_socket(h.addr, None).await.unwrap();
    assert_eq!(
        close_code(&mut socket).await,
        (4408, "Connection initialisation timeout".to_owned())
    );
    // 4409: an id already in use.
    let mut socket = acked(h.addr, None).await;
    let forever = "subscription { analysisCompleted { analysisId } }";
    for _ in 0..2 {
        send(
            &mut socket,
            json!({"id": "same", "type": "subscribe", "payload": {"query": forever}}),
        )
        .await;
    }
    assert_eq!(
        close_code(&mut socket).await,
        (4409, "Subscriber for same already exists".to_owned())
    );
    // 4429: a second connection_init.
    let mut socket = acked(h.addr, None).await;
    send(
        &mut socket,
        json!({"type": "connection_init", "payload": {}}),
    )
    .await;
    assert_eq!(close_code(&mut socket).await.0, 4429);
    // ping → pong, and the socket stays usable.
    let mut socket = acked(h.addr, None).await;
    send(&mut socket, json!({"type": "ping"})).await;
    assert_eq!(next_text(&mut socket).await["type"], "pong");
}

#[tokio::test]
async fn mutations_are_refused_over_websocket_and_get() {
    let h = Harness::start().await;
    let mut socket = acked(h.addr, None).await;
    let input = json!({"input": {"assetId": "press-17", "analysisType": "utilization"}});
    send(
        &mut socket,
        json!({"id": "m", "type": "subscribe", "payload": {"query": REQUEST, "variables": input}}),
    )
    .await;
    let answer = next_text(&mut socket).await;
    assert_eq!(
        answer["payload"]["errors"][0]["extensions"]["code"], "BAD_REQUEST",
        "{answer}"
    );
    // GET /graphql serves WebSocket handshakes only: no operation runs over a plain GET, a
    // query no more than a mutation, and nothing is published.
    let (status, _) = h.get("/graphql?query=mutation%7BrequestAnalysis(input:%7BassetId:%22a%22,analysisType:%22b%22%7D)%7BanalysisId%7D%7D").await;
    assert_eq!(status, 400);
    let (status, body) = h.get("/graphql?query=%7B__typename%7D").await;
    assert_eq!(status, 400, "{body}");
    assert!(!body.contains("Query"), "a query ran over GET: {body}");
    assert!(h.bus.published().is_empty());
}

#[tokio::test]
async fn the_server_pings_and_caps_open_sockets() {
    let h = Harness::with_config(GatewayConfig {
        ws_keepalive: Duration::from_millis(100),
        ws_connections_max: 1,
        ..GatewayConfig::default()
    })
    .await;
    let mut socket = acked(h.addr, None).await;
    let ping = tokio::time::timeout(PATIENCE, async {
        loop {
            if let Some(Ok(Message::Ping(_))) = socket.next().await {
                return;
            }
        }
    })
    .await;
    assert!(ping.is_ok(), "a ping within the keep-alive interval");
    assert_eq!(
        raw_socket(h.addr, None).await.err(),
        Some(503),
        "one socket at most"
    );
    drop(socket);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        raw_socket(h.addr, None).await.is_ok(),
        "a slot is free again"
    );
}

#[tokio::test]
async fn the_socket_closes_when_its_token_expires() {
    let issuer = issuer();
    let h = Harness::with_config(GatewayConfig {
        auth: Some(auth_for(&issuer, 0)),
        ..GatewayConfig::default()
    })
    .await;
    let short = issuer
        .mint(&MintRequest {
            ttl_secs: Some(1),
            ..MintRequest::new("alice")
        })
        .unwrap();
    let mut socket = acked(h.addr, Some(&short)).await;
    let started = tokio::time::Instant::now();
    assert_eq!(
        close_code(&mut socket).await,
        (4401, "Unauthorized: token expired".to_owned())
    );
    assert!(started.elapsed() < Duration::from_secs(3));
}
