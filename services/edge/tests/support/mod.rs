//! Shared test pieces: the three roles on loopback, a stub upstream that reports what reached
//! it, and a small raw HTTP client that shows statuses and headers.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocketUpgrade};
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use edge::{
    AuthProxyConfig, DiscoveredJwks, EdgeConfig, Issuer, IssuerConfig, KeySeed, Verifier,
    VerifierConfig,
};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ports::{Net, SystemClock, TokioNet};
use serde_json::{Value, json};
use tokio::sync::oneshot;

pub const AUDIENCE: &str = "warren";

/// Something that stops a served role when dropped.
pub struct Running {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

impl Running {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn stop_signal() -> (
    oneshot::Sender<()>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move {
        let _ = rx.await;
    })
}

/// The dev issuer on a free port, keys from `seed`.
pub async fn issuer(seed: u64) -> (Arc<Issuer>, Running) {
    let listener = TokioNet.bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let issuer = Arc::new(
        Issuer::new(
            IssuerConfig {
                issuer_url: format!("http://{addr}"),
                audience: AUDIENCE.into(),
            },
            Arc::new(SystemClock),
            KeySeed::Seeded(seed),
        )
        .unwrap(),
    );
    let (stop, stopped) = stop_signal();
    tokio::spawn(edge::run_issuer(listener, issuer.clone(), stopped));
    (issuer, Running { addr, _stop: stop })
}

pub fn verifier(issuer_url: &str) -> Arc<Verifier> {
    Arc::new(Verifier::new(
        VerifierConfig::new(issuer_url, AUDIENCE),
        Arc::new(SystemClock),
        Arc::new(DiscoveredJwks::new(TokioNet, issuer_url)),
    ))
}

pub async fn auth_proxy(verifier: Arc<Verifier>, upstream: SocketAddr) -> Running {
    let listener = TokioNet.bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = stop_signal();
    tokio::spawn(edge::run_auth_proxy(
        TokioNet,
        listener,
        AuthProxyConfig::new(upstream.to_string()),
        verifier,
        stopped,
    ));
    Running { addr, _stop: stop }
}

pub async fn kong(config: EdgeConfig) -> Running {
    let listener = TokioNet.bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = stop_signal();
    tokio::spawn(edge::run_edge(TokioNet, listener, config, stopped));
    Running { addr, _stop: stop }
}

/// A stub upstream: `POST /graphql` answers with the request headers it received as JSON
/// (`POST /graphql?sleep_ms=N` first sleeps); `GET /graphql` upgrades to a WebSocket that echoes
/// text messages, prefixed with the `x-forwarded-user` it saw.
pub async fn stub_upstream() -> Running {
    async fn echo_headers(
        query: axum::extract::Query<std::collections::BTreeMap<String, String>>,
        headers: HeaderMap,
    ) -> Json<Value> {
        if let Some(ms) = query.get("sleep_ms").and_then(|v| v.parse().ok()) {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let mut seen = serde_json::Map::new();
        for (name, value) in &headers {
            seen.insert(
                name.as_str().to_owned(),
                json!(value.to_str().unwrap_or("?")),
            );
        }
        Json(Value::Object(seen))
    }
    async fn echo_socket(upgrade: WebSocketUpgrade, headers: HeaderMap) -> impl IntoResponse {
        let user = headers
            .get("x-forwarded-user")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned();
        upgrade
            .protocols(["graphql-transport-ws"])
            .on_upgrade(move |mut socket| async move {
                while let Some(Ok(message)) = socket.next().await {
                    if let Message::Text(text) = message {
                        let reply = format!("{user}:{}", text.as_str());
                        if socket.send(Message::text(reply)).await.is_err() {
                            break;
                        }
                    }
                }
            })
    }
    let router = Router::new()
        .route("/graphql", post(echo_headers).get(echo_socket))
        .route("/graphql/x", get(|| async { "deeper" }));
    let listener = TokioNet.bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = stop_signal();
    tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(stopped)
            .await
    });
    Running { addr, _stop: stop }
}

/// What came back.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One request on a fresh connection; `headers` are added as given.
pub async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let stream = TokioNet.connect(&addr.to_string()).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut request = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string());
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = request.body(Full::new(body.into())).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request))
        .await
        .expect("answer within 10 s")
        .unwrap();
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        headers,
        body,
    }
}

/// POST `/graphql` with a bearer token (or none).
pub async fn post_graphql(addr: SocketAddr, token: Option<&str>, extra: &[(&str, &str)]) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers: Vec<(&str, &str)> = vec![("content-type", "application/json")];
    if let Some(auth) = &auth {
        headers.push(("authorization", auth));
    }
    headers.extend_from_slice(extra);
    send(
        addr,
        "POST",
        "/graphql",
        &headers,
        r#"{"query":"{__typename}"}"#,
    )
    .await
}

/// Opens a WebSocket at `ws://addr/graphql` with an optional bearer token; `Err` carries the
/// HTTP status of a refused handshake.
pub async fn websocket(
    addr: SocketAddr,
    token: Option<&str>,
) -> Result<tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>, u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let stream = TokioNet.connect(&addr.to_string()).await.unwrap();
    let mut request = format!("ws://{addr}/graphql")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        http::HeaderValue::from_static("graphql-transport-ws"),
    );
    if let Some(token) = token {
        request.headers_mut().insert(
            "authorization",
            http::HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
        );
    }
    match tokio_tungstenite::client_async(request, stream).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("WebSocket handshake failed: {e}"),
    }
}
