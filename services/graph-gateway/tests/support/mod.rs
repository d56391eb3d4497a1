//! A gateway on a real loopback socket, a fake bus behind it, and small HTTP and WebSocket
//! clients: enough to pin the gateway's behaviour without a broker.
#![allow(dead_code)] // each test binary uses a different part

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::http::{Request, StatusCode, header};
use contracts::{
    APP_ID_ORCHESTRATOR, AnalysisCompleted, AnalysisStarted, AnalysisStatus, Publication,
    QUEUE_SUBS_COMPLETED, QUEUE_SUBS_STARTED, Topology, format_timestamp,
};
use futures::{SinkExt, StreamExt};
use graph_gateway::{Gateway, GatewayConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use ports::{Acker, Bus, BusError, Clock, ConsumeOptions, Deliveries, Delivery, Ports, SeededIds};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use uuid::Uuid;

/// Wall time as the gateway sees it in every test.
pub const NOW_UNIX_MS: i64 = 1_700_000_000_123;
/// Longest a test waits for anything that should happen.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub const TRANSPORT_WS: &str = "graphql-transport-ws";
pub const LEGACY_WS: &str = "graphql-ws";

pub const EVENTS: &str = "subscription($id: ID!) { analysisEvents(analysisId: $id) { __typename \
    ... on AnalysisStarted { analysisId assetId analysisType startedAt } \
    ... on AnalysisCompleted { analysisId status result error completedAt } } }";
pub const REQUEST: &str = "mutation($input: AnalysisInput!) { requestAnalysis(input: $input) { analysisId requestedAt } }";
pub const ANALYSIS: &str = "query($id: ID!) { analysis(analysisId: $id) { analysisId state started { startedAt } completed { status } } }";

#[derive(Debug)]
pub struct FixedClock;

impl Clock for FixedClock {
    fn now_unix_ms(&self) -> i64 {
        NOW_UNIX_MS
    }
}

/// How the fake bus answers a publish.
pub enum PublishMode {
    Confirm,
    Fail(BusError),
    /// Hands each publish to the test, which confirms it when it likes.
    Hold(mpsc::UnboundedSender<HeldPublish>),
}

pub struct HeldPublish {
    pub publication: Publication,
    pub confirm: oneshot::Sender<Result<(), BusError>>,
}

/// How a delivery was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Ack,
    Nack { requeue: bool },
    Reject { requeue: bool },
}

type Feed = mpsc::UnboundedReceiver<Result<Delivery, BusError>>;

/// A bus that records what the gateway does and lets the test play the broker.
pub struct FakeBus {
    pub declared: Mutex<Vec<Topology>>,
    /// Every publish attempted, confirmed or not.
    pub published: Mutex<Vec<Publication>>,
    pub publish_mode: Mutex<PublishMode>,
    /// Per queue, the streams the next `consume` calls get; none left = the queue is unavailable.
    feeds: Mutex<BTreeMap<String, VecDeque<Feed>>>,
    pub consumed: Mutex<Vec<(String, u16)>>,
}

impl FakeBus {
    pub fn new() -> FakeBus {
        FakeBus {
            declared: Mutex::default(),
            published: Mutex::default(),
            publish_mode: Mutex::new(PublishMode::Confirm),
            feeds: Mutex::default(),
            consumed: Mutex::default(),
        }
    }

    /// A stream the next `consume(queue)` returns; push deliveries into the sender.
    pub fn add_feed(&self, queue: &str) -> mpsc::UnboundedSender<Result<Delivery, BusError>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.feeds
            .lock()
            .unwrap()
            .entry(queue.to_owned())
            .or_default()
            .push_back(rx);
        tx
    }

    pub fn published(&self) -> Vec<Publication> {
        self.published.lock().unwrap().clone()
    }
}

#[async_trait]
impl Bus for FakeBus {
    async fn declare(&self, topology: &Topology) -> Result<(), BusError> {
        self.declared.lock().unwrap().push(topology.clone());
        Ok(())
    }

    async fn publish(&self, publication: Publication) -> Result<(), BusError> {
        self.published.lock().unwrap().push(publication.clone());
        let held = match &*self.publish_mode.lock().unwrap() {
            PublishMode::Confirm => return Ok(()),
            PublishMode::Fail(e) => return Err(e.clone()),
            PublishMode::Hold(to_test) => {
                let (confirm, confirmed) = oneshot::channel();
                to_test
                    .send(HeldPublish {
                        publication,
                        confirm,
                    })
                    .unwrap();
                confirmed
            }
        };
        held.await.unwrap_or(Err(BusError::Closed))
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Deliveries, BusError> {
        self.consumed
            .lock()
            .unwrap()
            .push((queue.to_owned(), options.prefetch));
        let feed = self
            .feeds
            .lock()
            .unwrap()
            .get_mut(queue)
            .and_then(VecDeque::pop_front);
        let feed = feed.ok_or_else(|| BusError::Connection(format!("no feed for {queue}")))?;
        Ok(tokio_stream::wrappers::UnboundedReceiverStream::new(feed).boxed())
    }
}

/// Reports settlements to the test; optionally holds an ack until the test opens a gate.
struct FakeAcker {
    message_id: Option<String>,
    settled: mpsc::UnboundedSender<(Option<String>, Settled)>,
    gate: Option<oneshot::Receiver<()>>,
}

impl FakeAcker {
    async fn settle(self, how: Settled) -> Result<(), BusError> {
        let _ = self.settled.send((self.message_id, how));
        if let Some(gate) = self.gate {
            let _ = gate.await;
        }
        Ok(())
    }
}

#[async_trait]
impl Acker for FakeAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        self.settle(Settled::Ack).await
    }
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        self.settle(Settled::Nack { requeue }).await
    }
    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        self.settle(Settled::Reject { requeue }).await
    }
}

pub fn started(id: &str, by: Option<&str>) -> AnalysisStarted {
    AnalysisStarted {
        analysis_id: Uuid::parse_str(id).unwrap(),
        asset_id: "press-17".into(),
        analysis_type: "utilization".into(),
        requested_by: by.map(str::to_owned),
        started_at: format_timestamp(NOW_UNIX_MS + 1_000),
    }
}

pub fn completed(id: &str, by: Option<&str>) -> AnalysisCompleted {
    AnalysisCompleted {
        analysis_id: Uuid::parse_str(id).unwrap(),
        asset_id: "press-17".into(),
        analysis_type: "utilization".into(),
        requested_by: by.map(str::to_owned),
        status: AnalysisStatus::Succeeded,
        result: Some(json!({"utilization": 0.87})),
        error: None,
        completed_at: format_timestamp(NOW_UNIX_MS + 2_000),
    }
}

/// A gateway served on 127.0.0.1:0 with a fake bus.
pub struct Harness {
    pub bus: Arc<FakeBus>,
    pub addr: SocketAddr,
    pub started_feed: mpsc::UnboundedSender<Result<Delivery, BusError>>,
    pub completed_feed: mpsc::UnboundedSender<Result<Delivery, BusError>>,
    settled_tx: mpsc::UnboundedSender<(Option<String>, Settled)>,
    settled: mpsc::UnboundedReceiver<(Option<String>, Settled)>,
    http: Client<HttpConnector, Full<Bytes>>,
    gateway: Option<Gateway>,
    server: tokio::task::JoinHandle<()>,
}

impl Harness {
    pub async fn start() -> Harness {
        Harness::with_config(GatewayConfig::default()).await
    }

    pub async fn with_config(config: GatewayConfig) -> Harness {
        let bus = Arc::new(FakeBus::new());
        let started_feed = bus.add_feed(QUEUE_SUBS_STARTED);
        let completed_feed = bus.add_feed(QUEUE_SUBS_COMPLETED);
        let ports = Ports {
            bus: bus.clone(),
            clock: Arc::new(FixedClock),
            ids: Arc::new(SeededIds::new(7)),
        };
        let gateway = graph_gateway::start(ports, config)
            .await
            .expect("gateway starts");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = gateway.router();
        let server = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        let (settled_tx, settled) = mpsc::unbounded_channel();
        Harness {
            bus,
            addr,
            started_feed,
            completed_feed,
            settled_tx,
            settled,
            http: Client::builder(TokioExecutor::new()).build_http(),
            gateway: Some(gateway),
            server,
        }
    }

    /// POSTs raw bytes to /graphql.
    pub async fn post(
        &self,
        user: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut request = Request::post(format!("http://{}/graphql", self.addr))
            .header(header::CONTENT_TYPE, content_type);
        if let Some(user) = user {
            request = request.header("x-forwarded-user", user);
        }
        self.send(request.body(Full::new(Bytes::from(body))).unwrap())
            .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, String) {
        let request = Request::get(format!("http://{}{path}", self.addr))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(PATIENCE, self.http.request(request))
            .await
            .unwrap()
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> (StatusCode, Value) {
        let response = tokio::time::timeout(PATIENCE, self.http.request(request))
            .await
            .unwrap()
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
        (status, value)
    }

    /// A GraphQL operation over HTTP POST; the JSON response.
    pub async fn graphql(&self, user: Option<&str>, query: &str, variables: Value) -> Value {
        let body = serde_json::to_vec(&json!({"query": query, "variables": variables})).unwrap();
        let (status, response) = self.post(user, "application/json", body).await;
        assert_eq!(status, StatusCode::OK, "{response}");
        response
    }

    /// `requestAnalysis` with valid input; the new analysis id.
    pub async fn request_analysis(&self, user: Option<&str>) -> String {
        let input = json!({"input": {"assetId": "press-17", "analysisType": "utilization"}});
        let response = self.graphql(user, REQUEST, input).await;
        response["data"]["requestAnalysis"]["analysisId"]
            .as_str()
            .unwrap_or_else(|| panic!("{response}"))
            .to_owned()
    }

    /// `analysis(id)` as `user`: the analysis or null.
    pub async fn analysis(&self, user: Option<&str>, id: &str) -> Value {
        let response = self.graphql(user, ANALYSIS, json!({"id": id})).await;
        assert!(response.get("errors").is_none(), "{response}");
        response["data"]["analysis"].clone()
    }

    /// A delivery as the broker would hand it over; `gate` holds its ack until opened.
    pub fn delivery(
        &self,
        publication: Publication,
        gate: Option<oneshot::Receiver<()>>,
    ) -> Delivery {
        let acker = FakeAcker {
            message_id: publication.properties.message_id.clone(),
            settled: self.settled_tx.clone(),
            gate,
        };
        Delivery::new(
            publication.properties,
            publication.body,
            false,
            publication.exchange,
            publication.routing_key,
            Box::new(acker),
        )
    }

    pub fn push_started(&self, event: &AnalysisStarted) {
        let delivery = self.delivery(
            event.publication(APP_ID_ORCHESTRATOR, NOW_UNIX_MS).unwrap(),
            None,
        );
        self.started_feed.send(Ok(delivery)).unwrap();
    }

    pub fn push_completed(&self, event: &AnalysisCompleted) {
        let delivery = self.delivery(
            event.publication(APP_ID_ORCHESTRATOR, NOW_UNIX_MS).unwrap(),
            None,
        );
        self.completed_feed.send(Ok(delivery)).unwrap();
    }

    /// The next settlement of any delivery.
    pub async fn next_settled(&mut self) -> (Option<String>, Settled) {
        tokio::time::timeout(PATIENCE, self.settled.recv())
            .await
            .expect("a delivery is settled")
            .unwrap()
    }

    /// Pushes Started and Completed for `id` and waits until both are settled (so recorded).
    pub async fn run_analysis(&mut self, id: &str, by: Option<&str>) {
        self.push_started(&started(id, by));
        assert_eq!(self.next_settled().await.1, Settled::Ack);
        self.push_completed(&completed(id, by));
        assert_eq!(self.next_settled().await.1, Settled::Ack);
    }

    pub async fn ws(&self, user: Option<&str>, protocol: &'static str) -> WsClient {
        WsClient::connect(self.addr, user, protocol).await
    }

    pub async fn shutdown(mut self) {
        self.server.abort();
        if let Some(gateway) = self.gateway.take() {
            gateway.shutdown().await;
        }
    }
}

/// A GraphQL WebSocket client for either protocol, past `connection_ack`.
pub struct WsClient {
    pub socket: WebSocketStream<TcpStream>,
    pub protocol: &'static str,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr, user: Option<&str>, protocol: &'static str) -> WsClient {
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .unwrap();
        request
            .headers_mut()
            .insert("sec-websocket-protocol", protocol.parse().unwrap());
        if let Some(user) = user {
            request
                .headers_mut()
                .insert("x-forwarded-user", user.parse().unwrap());
        }
        let stream = TcpStream::connect(addr).await.unwrap();
        let (socket, response) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("upgrade");
        assert_eq!(response.headers()["sec-websocket-protocol"], protocol);
        let mut client = WsClient { socket, protocol };
        client
            .send(json!({"type": "connection_init", "payload": {}}))
            .await;
        assert_eq!(client.next().await["type"], "connection_ack");
        client
    }

    pub async fn send(&mut self, message: Value) {
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
    }

    /// Starts an operation (`subscribe`, or `start` in the legacy protocol).
    pub async fn subscribe(&mut self, id: &str, query: &str, variables: Value) {
        let kind = if self.protocol == LEGACY_WS {
            "start"
        } else {
            "subscribe"
        };
        self.send(
            json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}}),
        )
        .await;
    }

    /// The next protocol message (keep-alives skipped); panics on close or silence.
    pub async fn next(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("a message within the patience")
                .expect("socket open")
                .expect("socket healthy");
            match message {
                Message::Text(text) => {
                    let value: Value = serde_json::from_str(text.as_str()).unwrap();
                    if value["type"] == "ka" || value["type"] == "ping" {
                        continue;
                    }
                    return value;
                }
                Message::Close(frame) => panic!("socket closed: {frame:?}"),
                _ => continue,
            }
        }
    }

    /// Waits for the server's close frame; its code.
    pub async fn closed(&mut self) -> u16 {
        loop {
            let message = tokio::time::timeout(PATIENCE, self.socket.next())
                .await
                .expect("closed within the patience");
            match message {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) | None | Some(Err(_)) => return 1005,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Asserts nothing arrives for a while.
    pub async fn quiet_for(&mut self, time: Duration) {
        if let Ok(Some(Ok(message))) = tokio::time::timeout(time, self.socket.next()).await {
            panic!("expected silence, got {message:?}");
        }
    }
}

/// The payload of a `next` (or legacy `data`) message for subscription `id`.
pub fn payload(message: &Value, protocol: &str, id: &str) -> Value {
    let kind = if protocol == LEGACY_WS {
        "data"
    } else {
        "next"
    };
    assert_eq!(message["type"], kind, "{message}");
    assert_eq!(message["id"], id, "{message}");
    message["payload"].clone()
}

pub fn assert_complete(message: &Value, id: &str) {
    assert_eq!(message["type"], "complete", "{message}");
    assert_eq!(message["id"], id, "{message}");
}

/// The `extensions.code` of the first error of a GraphQL response.
pub fn error_code(response: &Value) -> &str {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {response}"))
}
