//! The full flow through the edge: console → edge (Kong role) → auth proxy (oauth2-proxy role)
//! → gateway (re-validating the token) → broker → orchestrator, on real loopback sockets. (The
//! simulated version is `edge_simulated.rs`: a separate binary, because tracing's per-callsite
//! interest cache is process-wide and unscoped events from a concurrent test would perturb the
//! simulation's trace.)

use std::time::Duration;

use client_console::{AnalysisInput, ConsoleConfig, ConsoleError, EventKind};
use warren_sim::embedded::EdgeSetup;
use warren_sim::{RunningSystem, SystemConfig};

fn input(asset: &str) -> AnalysisInput {
    AnalysisInput {
        asset_id: asset.into(),
        analysis_type: "utilization".into(),
        parameters: None,
    }
}

#[tokio::test]
async fn console_completes_analyses_through_edge_and_auth_proxy() {
    let system = RunningSystem::start(SystemConfig {
        listen: "127.0.0.1:0".into(),
        analysis_duration: Duration::from_millis(20),
        edge: Some(EdgeSetup::any_port()),
        ..SystemConfig::default()
    })
    .await
    .unwrap();
    let edge = system.edge.as_ref().unwrap();
    let mut console = ConsoleConfig::from_url(&system.public_url()).unwrap();
    console.timeout = Duration::from_secs(20);

    // No token: the auth proxy's 401.
    let refused = client_console::run(&ports::TokioNet, &console, &input("a"), |_| {}).await;
    assert!(
        matches!(&refused, Err(ConsoleError::WebSocket(e)) if e.contains("401")),
        "{refused:?}"
    );

    // A token from the issuer's endpoint, as a real client would get one.
    let token = edge::issuer::fetch_token(
        &ports::TokioNet,
        &format!("http://{}", edge.issuer_addr),
        &edge::MintRequest::new("alice"),
    )
    .await
    .unwrap();
    console.token = Some(token);
    let runs = (0..5).map(|i| {
        let console = console.clone();
        async move {
            client_console::run(
                &ports::TokioNet,
                &console,
                &input(&format!("asset-{i}")),
                |_| {},
            )
            .await
        }
    });
    for outcome in futures::future::join_all(runs).await {
        let outcome = outcome.unwrap();
        let kinds: Vec<_> = outcome.events.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [EventKind::Started, EventKind::Completed]);
        assert_eq!(outcome.events[1].data["status"], "SUCCEEDED");
    }

    // A user claiming to be someone else in a header gets nowhere: the proxy replaces it.
    console.user = Some("mallory".into());
    let outcome = client_console::run(&ports::TokioNet, &console, &input("b"), |_| {}).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    system.stop().await.unwrap();
}

/// graphql-transport-ws close codes reach the client unchanged through both proxies' splices.
#[tokio::test]
async fn websocket_close_codes_pass_through_edge_and_auth_proxy() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let system = RunningSystem::start(SystemConfig {
        listen: "127.0.0.1:0".into(),
        edge: Some(EdgeSetup::any_port()),
        ..SystemConfig::default()
    })
    .await
    .unwrap();
    let edge = system.edge.as_ref().unwrap();
    let token = edge.token("alice").unwrap();
    let addr = edge.edge_addr;
    let open = || async {
        let mut request = format!("ws://{addr}/graphql")
            .into_client_request()
            .unwrap();
        let headers = request.headers_mut();
        headers.insert(
            "sec-websocket-protocol",
            "graphql-transport-ws".parse().unwrap(),
        );
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio_tungstenite::client_async(request, stream)
            .await
            .unwrap()
            .0
    };
    let close_code = |mut socket: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>| async move {
        loop {
            match tokio::time::timeout(Duration::from_secs(10), socket.next())
                .await
                .unwrap()
            {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(_)) => continue,
                other => panic!("no close frame: {other:?}"),
            }
        }
    };
    // Subscribe before connection_init: 4401.
    let mut socket = open().await;
    let subscribe = r#"{"id":"1","type":"subscribe","payload":{"query":"{ __typename }"}}"#;
    socket.send(Message::text(subscribe)).await.unwrap();
    assert_eq!(close_code(socket).await, 4401);
    // Two connection_inits: 4429.
    let mut socket = open().await;
    for _ in 0..2 {
        let init = r#"{"type":"connection_init","payload":{}}"#;
        socket.send(Message::text(init)).await.unwrap();
    }
    assert_eq!(close_code(socket).await, 4429);
    system.stop().await.unwrap();
}
