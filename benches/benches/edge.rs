//! The cost of the edge, and subscription fan-out, embedded on broker-mem (zero-length analyses,
//! so the figures are the system's own overhead):
//!
//! - `edge/mutation_to_completed/{through_edge,direct}`: one `requestAnalysis` over HTTP until its
//!   `AnalysisCompleted` arrives on an already-open subscription socket, through edge + auth
//!   proxy + gateway vs straight to the gateway (which re-validates the token either way). Also
//!   prints p50/p99 over `LATENCY_SAMPLES` sequential analyses and the overhead ratio.
//! - `edge/fanout_1000`: one completed analysis reaching 1,000 concurrent subscribers
//!   (`analysisCompleted` without an id: all of the caller's analyses), mutation → last
//!   subscriber; prints p50/p99 of each subscriber's delay after the event's `completedAt`.
//!
//! `cargo bench -p warren-benches --bench edge`

use std::time::Duration;

use client_console::{AnalysisInput, ConsoleConfig, Subscriber};
use criterion::{Criterion, criterion_group, criterion_main};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use warren_sim::embedded::EdgeSetup;
use warren_sim::{BrokerChoice, RunningSystem, SystemConfig};

/// Sequential analyses per path for the printed percentiles.
const LATENCY_SAMPLES: usize = 300;
/// Concurrent subscribers in the fan-out bench.
const SUBSCRIBERS: usize = 1000;

fn input() -> AnalysisInput {
    AnalysisInput {
        asset_id: "bench".into(),
        analysis_type: "utilization".into(),
        parameters: None,
    }
}

/// Mutation → `AnalysisCompleted` on a warm subscriber socket.
async fn one_analysis(
    subscriber: &mut Subscriber<tokio::net::TcpStream>,
    console: &ConsoleConfig,
) -> Duration {
    let started = tokio::time::Instant::now();
    let requested = client_console::request_analysis(&ports::TokioNet, console, &input())
        .await
        .expect("mutation");
    let events = subscriber
        .follow(&requested.analysis_id, |_| {})
        .await
        .expect("events");
    assert_eq!(events.len(), 2);
    started.elapsed()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn bench_edge(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let system = rt
        .block_on(RunningSystem::start(SystemConfig {
            listen: "127.0.0.1:0".into(),
            broker: BrokerChoice::Embedded,
            analysis_duration: Duration::ZERO,
            orchestrator_concurrency: 32,
            edge: Some(EdgeSetup::any_port()),
        }))
        .expect("system");
    let token = system
        .edge
        .as_ref()
        .expect("edge")
        .token("bench")
        .expect("token");
    let console = |url: &str| {
        let mut c = ConsoleConfig::from_url(url).expect("url");
        c.token = Some(token.clone());
        c.timeout = Duration::from_secs(30);
        c
    };
    let paths = [
        ("through_edge", console(&system.public_url())),
        ("direct", console(&system.graphql_url())),
    ];

    let mut group = c.benchmark_group("edge/mutation_to_completed");
    group.sample_size(50);
    group.measurement_time(Duration::from_secs(10));
    let mut p50s = Vec::new();
    for (name, config) in &paths {
        let mut subscriber = rt
            .block_on(Subscriber::connect(&ports::TokioNet, config))
            .expect("subscriber");
        group.bench_function(*name, |b| {
            b.iter(|| rt.block_on(one_analysis(&mut subscriber, config)))
        });
        let mut samples: Vec<Duration> = (0..LATENCY_SAMPLES)
            .map(|_| rt.block_on(one_analysis(&mut subscriber, config)))
            .collect();
        samples.sort();
        let (p50, p99) = (percentile(&samples, 0.50), percentile(&samples, 0.99));
        println!(
            "FIGURE mutation_to_completed {name}: p50 {:.2} ms, p99 {:.2} ms ({LATENCY_SAMPLES} sequential analyses)",
            ms(p50),
            ms(p99)
        );
        p50s.push((p50, p99));
    }
    if let [(edge50, edge99), (direct50, direct99)] = p50s[..] {
        println!(
            "FIGURE edge overhead ratio: p50 {:.2}x, p99 {:.2}x",
            edge50.as_secs_f64() / direct50.as_secs_f64(),
            edge99.as_secs_f64() / direct99.as_secs_f64()
        );
    }
    group.finish();

    let mut group = c.benchmark_group("edge/fanout");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let gateway = system.gateway_addr;
    let mut sockets = rt.block_on(open_subscribers(gateway, &token, SUBSCRIBERS));
    let direct = paths[1].1.clone();
    let mut delays_ms: Vec<i64> = Vec::new();
    group.bench_function("fanout_1000", |b| {
        b.iter(|| {
            let delays = rt.block_on(fan_out(&mut sockets, &direct));
            delays_ms.extend(delays);
        })
    });
    delays_ms.sort_unstable();
    if !delays_ms.is_empty() {
        let at = |p: f64| delays_ms[((delays_ms.len() as f64 - 1.0) * p).round() as usize];
        println!(
            "FIGURE fanout {SUBSCRIBERS} subscribers: delay after completedAt p50 {} ms, p99 {} ms, max {} ms ({} deliveries)",
            at(0.5),
            at(0.99),
            delays_ms[delays_ms.len() - 1],
            delays_ms.len()
        );
    }
    group.finish();
    rt.block_on(system.stop()).expect("stop");
}

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

/// `count` acknowledged sockets, each subscribed to all of the caller's completed analyses.
async fn open_subscribers(gateway: std::net::SocketAddr, token: &str, count: usize) -> Vec<Socket> {
    let opens = (0..count).map(|_| async move {
        let stream = tokio::net::TcpStream::connect(gateway).await.expect("connect");
        let mut request = format!("ws://{gateway}/graphql")
            .into_client_request()
            .expect("request");
        let headers = request.headers_mut();
        headers.insert("sec-websocket-protocol", "graphql-transport-ws".parse().unwrap());
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        let (mut socket, _) = tokio_tungstenite::client_async(request, stream)
            .await
            .expect("upgrade");
        send(&mut socket, json!({"type": "connection_init", "payload": {}})).await;
        assert_eq!(next_text(&mut socket).await["type"], "connection_ack");
        send(
            &mut socket,
            json!({"id": "all", "type": "subscribe",
                   "payload": {"query": "subscription { analysisCompleted { analysisId completedAt } }"}}),
        )
        .await;
        socket
    });
    let sockets = futures::future::join_all(opens).await;
    // Subscriptions start lazily on the server: give them a moment to be registered.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sockets
}

async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("send");
}

async fn next_text(socket: &mut Socket) -> Value {
    loop {
        match socket.next().await.expect("open").expect("healthy") {
            Message::Text(text) => return serde_json::from_str(text.as_str()).expect("json"),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => continue,
        }
    }
}

/// Wall time (real mode), to compare with the event's `completedAt`.
fn wall_ms() -> i64 {
    ports::Clock::now_unix_ms(&ports::SystemClock)
}

/// One analysis; every socket receives its `AnalysisCompleted`; each one's delay (ms) after the
/// event's `completedAt`.
async fn fan_out(sockets: &mut [Socket], console: &ConsoleConfig) -> Vec<i64> {
    let requested = client_console::request_analysis(&ports::TokioNet, console, &input())
        .await
        .expect("mutation");
    let waits = sockets.iter_mut().map(|socket| {
        let id = requested.analysis_id.clone();
        async move {
            loop {
                let message = next_text(socket).await;
                let event = &message["payload"]["data"]["analysisCompleted"];
                if event["analysisId"] == id.as_str() {
                    let at = event["completedAt"].as_str().expect("completedAt");
                    let received = wall_ms();
                    return received
                        - chrono::DateTime::parse_from_rfc3339(at)
                            .expect("RFC 3339 completedAt")
                            .timestamp_millis();
                }
            }
        }
    });
    futures::future::join_all(waits).await
}

criterion_group!(benches, bench_edge);
criterion_main!(benches);
