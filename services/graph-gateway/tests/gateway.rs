//! The gateway's behaviour, over real loopback sockets, with a fake bus standing in for RabbitMQ.

mod support;

use std::time::Duration;

use axum::http::StatusCode;
use contracts::{
    APP_ID_GATEWAY, APP_ID_ORCHESTRATOR, MessageKind, Properties, Publication,
    QUEUE_SUBS_COMPLETED, QUEUE_SUBS_STARTED, Topology, decode_request, format_timestamp,
    message_id,
};
use futures::StreamExt as _;
use graph_gateway::GatewayConfig;
use ports::BusError;
use serde_json::{Value, json};
use support::*;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

const ALICE: Option<&str> = Some("alice");
const BOB: Option<&str> = Some("bob");

const STARTED_ANY: &str = "subscription { analysisStarted { analysisId } }";
const COMPLETED_ONE: &str = "subscription($id: ID) { analysisCompleted(analysisId: $id) { analysisId status result completedAt } }";

fn typename(payload: &Value) -> &str {
    payload["data"]["analysisEvents"]["__typename"]
        .as_str()
        .unwrap_or_else(|| panic!("not an event: {payload}"))
}

/// Reads `next` messages of `analysisEvents` subscription `sub` until `complete`; the typenames.
async fn events_until_complete(ws: &mut WsClient, sub: &str) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let message = ws.next().await;
        if message["type"] == "complete" {
            assert_complete(&message, sub);
            return seen;
        }
        seen.push(typename(&payload(&message, ws.protocol, sub)).to_owned());
    }
}

#[tokio::test]
async fn gateway_declares_its_topology_and_consumes_both_event_queues() {
    let h = Harness::start().await;
    assert_eq!(*h.bus.declared.lock().unwrap(), vec![Topology::gateway()]);
    let consumed = h.bus.consumed.lock().unwrap().clone();
    let prefetch = GatewayConfig::default().bridge_prefetch;
    assert_eq!(
        consumed,
        vec![
            (QUEUE_SUBS_STARTED.into(), prefetch),
            (QUEUE_SUBS_COMPLETED.into(), prefetch)
        ]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn mutation_publishes_a_contract_valid_request_and_registers_before_publishing() {
    let h = Harness::start().await;
    let (held_tx, mut held) = mpsc::unbounded_channel();
    *h.bus.publish_mode.lock().unwrap() = PublishMode::Hold(held_tx);
    let input = json!({"input": {"assetId": "press-17", "analysisType": "utilization", "parameters": {"window": "7d"}}});
    let harness = &h;
    let (response, ()) = tokio::join!(harness.graphql(ALICE, REQUEST, input), async {
        let HeldPublish {
            publication,
            confirm,
        } = held.recv().await.unwrap();
        let command =
            decode_request(publication.properties.kind.as_deref(), &publication.body).unwrap();
        // While the publish waits for its confirm, the analysis is already known.
        let analysis = harness
            .analysis(ALICE, &command.analysis_id.to_string())
            .await;
        assert_eq!(analysis["state"], "REQUESTED", "{analysis}");
        confirm.send(Ok(())).unwrap();
    });
    assert!(response.get("errors").is_none(), "{response}");

    let published = h.bus.published();
    assert_eq!(published.len(), 1);
    let Publication {
        exchange,
        routing_key,
        properties,
        body,
    } = &published[0];
    assert_eq!(
        (exchange.as_str(), routing_key.as_str()),
        ("analysis.commands", "request.analysis")
    );
    let command =
        decode_request(properties.kind.as_deref(), body).expect("a valid RequestAnalysis");
    let id = command.analysis_id;
    assert_eq!(
        *properties,
        Properties {
            content_type: Some("application/json".into()),
            delivery_mode: Some(2),
            message_id: Some(message_id(id, MessageKind::Request).to_string()),
            correlation_id: Some(id.to_string()),
            kind: Some("RequestAnalysis".into()),
            timestamp: Some(u64::try_from(NOW_UNIX_MS / 1000).unwrap()),
            app_id: Some(APP_ID_GATEWAY.into()),
        }
    );
    assert_eq!(command.asset_id, "press-17");
    assert_eq!(command.analysis_type, "utilization");
    assert_eq!(command.parameters, Some(json!({"window": "7d"})));
    assert_eq!(command.requested_by.as_deref(), Some("alice"));
    assert_eq!(command.requested_at, format_timestamp(NOW_UNIX_MS));
    let body: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(body["requestedBy"], "alice", "camelCase body: {body}");
    assert_eq!(
        response["data"]["requestAnalysis"],
        json!({"analysisId": id.to_string(), "requestedAt": format_timestamp(NOW_UNIX_MS)})
    );
    h.shutdown().await;
}

#[tokio::test]
async fn invalid_input_is_refused_with_bad_user_input_and_nothing_is_published() {
    let h = Harness::start().await;
    for input in [
        json!({"assetId": "", "analysisType": "utilization"}),
        json!({"assetId": "x".repeat(129), "analysisType": "utilization"}),
        json!({"assetId": "press-17", "analysisType": "Not Valid"}),
        json!({"assetId": "press-17", "analysisType": "t", "parameters": "p".repeat(16 * 1024)}),
    ] {
        let response = h.graphql(ALICE, REQUEST, json!({"input": input})).await;
        assert_eq!(error_code(&response), "BAD_USER_INPUT", "{response}");
        assert_eq!(response["data"], Value::Null);
    }
    assert!(h.bus.published().is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn publish_failure_is_unavailable_and_the_analysis_is_forgotten() {
    let h = Harness::start().await;
    *h.bus.publish_mode.lock().unwrap() =
        PublishMode::Fail(BusError::Connection("connection reset by peer".into()));
    let input = json!({"input": {"assetId": "press-17", "analysisType": "utilization"}});
    let response = h.graphql(ALICE, REQUEST, input).await;
    assert_eq!(error_code(&response), "UNAVAILABLE", "{response}");
    let attempted = h.bus.published();
    let command =
        decode_request(attempted[0].properties.kind.as_deref(), &attempted[0].body).unwrap();
    assert_eq!(
        h.analysis(ALICE, &command.analysis_id.to_string()).await,
        Value::Null
    );
    h.shutdown().await;
}

#[tokio::test]
async fn unconfirmed_publish_keeps_the_analysis_and_names_it() {
    let mut h = Harness::start().await;
    *h.bus.publish_mode.lock().unwrap() = PublishMode::Fail(BusError::Unconfirmed {
        exchange: "analysis.commands".into(),
        detail: "no confirm within 30s".into(),
    });
    let input = json!({"input": {"assetId": "press-17", "analysisType": "utilization"}});
    let response = h.graphql(ALICE, REQUEST, input).await;
    assert_eq!(error_code(&response), "UNCONFIRMED", "{response}");
    let attempted = h.bus.published();
    let command =
        decode_request(attempted[0].properties.kind.as_deref(), &attempted[0].body).unwrap();
    let id = command.analysis_id.to_string();
    assert_eq!(response["errors"][0]["extensions"]["analysisId"], id);
    // The command may be in the broker: the analysis is still the caller's to follow.
    assert_eq!(
        h.analysis(ALICE, &id).await["state"],
        "REQUESTED",
        "an unconfirmed analysis stays registered"
    );
    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    ws.subscribe("1", EVENTS, json!({"id": id})).await;
    h.run_analysis(&id, ALICE).await;
    let started = payload(&ws.next().await, TRANSPORT_WS, "1");
    assert_eq!(
        started["data"]["analysisEvents"]["__typename"],
        "AnalysisStarted"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn full_registry_is_overloaded() {
    let h = Harness::with_config(GatewayConfig {
        registry_capacity: 1,
        ..GatewayConfig::default()
    })
    .await;
    h.request_analysis(ALICE).await;
    let input = json!({"input": {"assetId": "press-17", "analysisType": "utilization"}});
    let response = h.graphql(ALICE, REQUEST, input).await;
    assert_eq!(error_code(&response), "OVERLOADED", "{response}");
    assert_eq!(
        h.bus.published().len(),
        1,
        "a refused request publishes nothing"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn an_event_the_full_registry_cannot_record_is_rejected_not_acked() {
    let mut h = Harness::with_config(GatewayConfig {
        registry_capacity: 1,
        ..GatewayConfig::default()
    })
    .await;
    h.request_analysis(ALICE).await;
    // Another analysis, unknown here (another replica's, or from before a restart).
    let stranger = Uuid::from_u128(77).to_string();
    h.push_started(&started(&stranger, ALICE));
    let (_, settled) = h.next_settled().await;
    assert_eq!(settled, Settled::Reject { requeue: false });
    h.shutdown().await;
}

#[tokio::test]
async fn analysis_events_over_graphql_transport_ws_yields_started_then_completed_then_complete() {
    let mut h = Harness::start().await;
    let id = h.request_analysis(ALICE).await;
    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    ws.subscribe("1", EVENTS, json!({"id": id})).await;
    h.run_analysis(&id, ALICE).await;

    let started = payload(&ws.next().await, TRANSPORT_WS, "1");
    assert_eq!(
        started["data"]["analysisEvents"],
        json!({"__typename": "AnalysisStarted", "analysisId": id, "assetId": "press-17",
               "analysisType": "utilization", "startedAt": format_timestamp(NOW_UNIX_MS + 1_000)})
    );
    let completed = payload(&ws.next().await, TRANSPORT_WS, "1");
    assert_eq!(
        completed["data"]["analysisEvents"],
        json!({"__typename": "AnalysisCompleted", "analysisId": id, "status": "SUCCEEDED",
               "result": {"utilization": 0.87}, "error": null, "completedAt": format_timestamp(NOW_UNIX_MS + 2_000)})
    );
    assert_complete(&ws.next().await, "1");
    h.shutdown().await;
}

#[tokio::test]
async fn late_subscriber_still_gets_started_then_completed() {
    let mut h = Harness::start().await;
    let id = h.request_analysis(ALICE).await;
    h.run_analysis(&id, ALICE).await;
    assert_eq!(h.analysis(ALICE, &id).await["state"], "COMPLETED");

    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    ws.subscribe("late", EVENTS, json!({"id": id})).await;
    assert_eq!(
        events_until_complete(&mut ws, "late").await,
        ["AnalysisStarted", "AnalysisCompleted"]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn completed_before_started_is_still_delivered_started_first() {
    let mut h = Harness::start().await;
    let id = h.request_analysis(ALICE).await;
    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    ws.subscribe("1", EVENTS, json!({"id": id})).await;
    h.push_completed(&completed(&id, ALICE));
    assert_eq!(h.next_settled().await.1, Settled::Ack);
    ws.quiet_for(Duration::from_millis(200)).await;
    h.push_started(&started(&id, ALICE));
    assert_eq!(
        events_until_complete(&mut ws, "1").await,
        ["AnalysisStarted", "AnalysisCompleted"]
    );
    h.shutdown().await;
}

#[tokio::test]
async fn repeated_events_are_delivered_once() {
    let mut h = Harness::start().await;
    let id = h.request_analysis(ALICE).await;
    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    ws.subscribe("1", EVENTS, json!({"id": id})).await;
    for _ in 0..3 {
        h.push_started(&started(&id, ALICE));
    }
    for _ in 0..3 {
        h.push_completed(&completed(&id, ALICE));
    }
    for _ in 0..6 {
        assert_eq!(
            h.next_settled().await.1,
            Settled::Ack,
            "repeats are acked, not requeued"
        );
    }
    assert_eq!(
        events_until_complete(&mut ws, "1").await,
        ["AnalysisStarted", "AnalysisCompleted"]
    );

    // A live subscription without an id sees a repeat once too.
    let mut live = h.ws(ALICE, TRANSPORT_WS).await;
    live.subscribe("all", STARTED_ANY, json!({})).await;
    let warm = warm_up(&mut h, &mut live, "all", ALICE).await;
    let (a, b) = (
        Uuid::from_u128(0xa).to_string(),
        Uuid::from_u128(0xb).to_string(),
    );
    h.push_started(&started(&a, ALICE));
    h.push_started(&started(&a, ALICE));
    h.push_started(&started(&b, ALICE));
    let seen = live_ids(&mut live, "all", &warm, 2).await;
    assert_eq!(seen, [a, b]);
    live.quiet_for(Duration::from_millis(200)).await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_repeat_after_its_analysis_was_evicted_is_not_announced_again() {
    // Room for two; an incomplete analysis may go at once (the test clock stands still).
    let mut h = Harness::with_config(GatewayConfig {
        registry_capacity: 2,
        incomplete_ttl: Duration::ZERO,
        ..GatewayConfig::default()
    })
    .await;
    let mut live = h.ws(ALICE, TRANSPORT_WS).await;
    live.subscribe("all", STARTED_ANY, json!({})).await;
    let warm = warm_up(&mut h, &mut live, "all", ALICE).await;
    let [a, b, c] = [0xa, 0xb, 0xc].map(|n| Uuid::from_u128(n).to_string());
    for id in [&a, &b, &c] {
        h.run_analysis(id, ALICE).await;
    }
    // c took a's place; the broker then delivers a's Started again.
    assert_eq!(h.analysis(ALICE, &a).await, Value::Null);
    h.push_started(&started(&a, ALICE));
    assert_eq!(h.next_settled().await.1, Settled::Ack);
    assert_eq!(
        live_ids(&mut live, "all", &warm, 3).await,
        [a.as_str(), b.as_str(), c.as_str()]
    );
    live.quiet_for(Duration::from_millis(200)).await;
    h.shutdown().await;
}

/// Makes sure the live (no-id) subscription `sub` is registered: pushes Started events for fresh
/// analyses of `owner` until one arrives. Returns the warm-up ids, to be skipped later.
async fn warm_up(
    h: &mut Harness,
    ws: &mut WsClient,
    sub: &str,
    owner: Option<&str>,
) -> Vec<String> {
    let mut warm = Vec::new();
    for n in 0..50u128 {
        let id = Uuid::from_u128(0xfeed_0000 + n).to_string();
        h.push_started(&started(&id, owner));
        assert_eq!(h.next_settled().await.1, Settled::Ack);
        warm.push(id);
        if let Ok(Some(Ok(message))) =
            tokio::time::timeout(Duration::from_millis(100), ws.socket.next()).await
        {
            let text = message.into_text().unwrap();
            let message: Value = serde_json::from_str(text.as_str()).unwrap();
            payload(&message, ws.protocol, sub);
            return warm;
        }
    }
    panic!("the live subscription never saw an event");
}

/// The next `count` analysis ids a live `analysisStarted` subscription delivers, skipping warm-ups.
async fn live_ids(ws: &mut WsClient, sub: &str, warm: &[String], count: usize) -> Vec<String> {
    let mut seen = Vec::new();
    while seen.len() < count {
        let message = ws.next().await;
        let id = payload(&message, ws.protocol, sub)["data"]["analysisStarted"]["analysisId"]
            .as_str()
            .unwrap()
            .to_owned();
        if !warm.contains(&id) {
            seen.push(id);
        }
    }
    seen
}

#[tokio::test]
async fn analysis_started_without_id_follows_only_the_callers_analyses() {
    let mut h = Harness::start().await;
    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    ws.subscribe("mine", STARTED_ANY, json!({})).await;
    let warm = warm_up(&mut h, &mut ws, "mine", ALICE).await;

    let bobs = h.request_analysis(BOB).await;
    let anonymous = Uuid::from_u128(0xa0).to_string();
    let alices = h.request_analysis(ALICE).await;
    h.push_started(&started(&bobs, BOB));
    h.push_started(&started(&anonymous, None));
    h.push_started(&started(&alices, ALICE));
    for _ in 0..3 {
        assert_eq!(h.next_settled().await.1, Settled::Ack);
    }
    // Events are announced in recording order, so had Bob's leaked it would come first.
    assert_eq!(live_ids(&mut ws, "mine", &warm, 1).await, [alices]);
    ws.quiet_for(Duration::from_millis(200)).await;
    h.shutdown().await;
}

#[tokio::test]
async fn legacy_graphql_ws_protocol_serves_analysis_completed() {
    let mut h = Harness::start().await;
    let id = h.request_analysis(ALICE).await;
    let mut ws = h.ws(ALICE, LEGACY_WS).await;
    ws.subscribe("7", COMPLETED_ONE, json!({"id": id})).await;
    h.run_analysis(&id, ALICE).await;
    let data = payload(&ws.next().await, LEGACY_WS, "7");
    assert_eq!(
        data["data"]["analysisCompleted"],
        json!({"analysisId": id, "status": "SUCCEEDED", "result": {"utilization": 0.87},
               "completedAt": format_timestamp(NOW_UNIX_MS + 2_000)})
    );
    assert_complete(&ws.next().await, "7");
    h.shutdown().await;
}

#[tokio::test]
async fn another_users_analysis_is_invisible() {
    let mut h = Harness::start().await;
    let id = h.request_analysis(ALICE).await;
    h.run_analysis(&id, ALICE).await;
    assert_eq!(h.analysis(ALICE, &id).await["state"], "COMPLETED");
    assert_eq!(h.analysis(BOB, &id).await, Value::Null);
    assert_eq!(
        h.analysis(None, &id).await,
        Value::Null,
        "anonymous is nobody's owner but its own"
    );

    let mut ws = h.ws(BOB, TRANSPORT_WS).await;
    for (sub, query) in [("1", EVENTS), ("2", COMPLETED_ONE)] {
        ws.subscribe(sub, query, json!({"id": id})).await;
        let response = payload(&ws.next().await, TRANSPORT_WS, sub);
        assert_eq!(error_code(&response), "NOT_FOUND", "{response}");
        assert_complete(&ws.next().await, sub);
    }
    // Exactly like an id nobody knows.
    ws.subscribe("3", EVENTS, json!({"id": Uuid::from_u128(3).to_string()}))
        .await;
    assert_eq!(
        error_code(&payload(&ws.next().await, TRANSPORT_WS, "3")),
        "NOT_FOUND"
    );
    h.shutdown().await;
}

#[tokio::test]
async fn poison_event_is_rejected_without_requeue() {
    let mut h = Harness::start().await;
    let poison = |kind: Option<&str>, body: &[u8]| Publication {
        exchange: "analysis.started".into(),
        routing_key: String::new(),
        properties: Properties {
            kind: kind.map(str::to_owned),
            message_id: Some("poison".into()),
            ..Properties::default()
        },
        body: body.to_vec(),
    };
    for p in [
        poison(Some("AnalysisStarted"), b"not json"),
        poison(Some("Bogus"), b"{}"),
        poison(None, b"{}"),
        poison(Some("RequestAnalysis"), b"{}"),
        poison(Some("AnalysisStarted"), br#"{"analysisId":"not-a-uuid"}"#),
    ] {
        let delivery = h.delivery(p, None);
        h.started_feed.send(Ok(delivery)).unwrap();
        assert_eq!(
            h.next_settled().await,
            (Some("poison".into()), Settled::Reject { requeue: false })
        );
    }
    // The bridge carries on.
    let id = h.request_analysis(ALICE).await;
    h.push_started(&started(&id, ALICE));
    assert_eq!(h.next_settled().await.1, Settled::Ack);
    assert_eq!(h.analysis(ALICE, &id).await["state"], "STARTED");
    h.shutdown().await;
}

#[tokio::test]
async fn events_are_acked_only_after_recording() {
    let mut h = Harness::start().await;
    let id = h.request_analysis(ALICE).await;
    let (open_gate, gate) = oneshot::channel();
    let event = started(&id, ALICE)
        .publication(APP_ID_ORCHESTRATOR, NOW_UNIX_MS)
        .unwrap();
    let delivery = h.delivery(event, Some(gate));
    h.started_feed.send(Ok(delivery)).unwrap();
    // The ack is in progress (held at the gate): the event must already be recorded.
    assert_eq!(h.next_settled().await.1, Settled::Ack);
    assert_eq!(h.analysis(ALICE, &id).await["state"], "STARTED");
    open_gate.send(()).unwrap();
    h.shutdown().await;
}

#[tokio::test]
async fn an_event_for_an_unknown_analysis_is_recorded_for_its_requester() {
    let mut h = Harness::start().await;
    let id = Uuid::from_u128(42).to_string();
    h.run_analysis(&id, BOB).await;
    assert_eq!(h.analysis(BOB, &id).await["state"], "COMPLETED");
    assert_eq!(h.analysis(ALICE, &id).await, Value::Null);
    h.shutdown().await;
}

#[tokio::test]
async fn bridge_consumes_again_after_its_stream_ends() {
    let mut h = Harness::start().await;
    let next_feed = h.bus.add_feed(QUEUE_SUBS_STARTED);
    // The broker cancels the consumer: the stream ends.
    let (ended, _) = mpsc::unbounded_channel();
    h.started_feed = ended;
    let id = h.request_analysis(ALICE).await;
    h.started_feed = next_feed;
    h.push_started(&started(&id, ALICE));
    assert_eq!(h.next_settled().await.1, Settled::Ack);
    assert_eq!(h.analysis(ALICE, &id).await["state"], "STARTED");
    let consumed = h.bus.consumed.lock().unwrap().clone();
    assert_eq!(
        consumed
            .iter()
            .filter(|(q, _)| q == QUEUE_SUBS_STARTED)
            .count(),
        2
    );
    h.shutdown().await;
}

#[tokio::test]
async fn oversized_post_is_refused_with_413() {
    let h = Harness::start().await;
    let query = format!("{{ __typename }} #{}", "x".repeat(64 * 1024));
    let body = serde_json::to_vec(&json!({"query": query})).unwrap();
    let (status, _) = h.post(ALICE, "application/json", body).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(h.bus.published().is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn bad_http_requests_get_clear_statuses() {
    let h = Harness::start().await;
    let (status, _) = h.post(ALICE, "text/plain", b"{}".to_vec()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, _) = h
        .post(ALICE, "application/json", b"{not json".to_vec())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = h.get("/graphql").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("POST"), "{body}");
    let (status, _) = h
        .post(Some(&"u".repeat(257)), "application/json", b"{}".to_vec())
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "an implausible caller identity"
    );
    let (status, body) = h.get("/healthz").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    h.shutdown().await;
}

#[tokio::test]
async fn query_limits_are_enforced() {
    let h = Harness::start().await;
    let deep = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { name } } } } } } } } }";
    let response = h.graphql(ALICE, deep, json!({})).await;
    let message = response["errors"][0]["message"]
        .as_str()
        .unwrap_or_default();
    assert!(message.contains("nested too deep"), "{response}");
    h.shutdown().await;
}

#[tokio::test]
async fn mutation_over_websocket_is_refused() {
    let h = Harness::start().await;
    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    ws.subscribe(
        "m",
        REQUEST,
        json!({"input": {"assetId": "press-17", "analysisType": "utilization"}}),
    )
    .await;
    let response = payload(&ws.next().await, TRANSPORT_WS, "m");
    assert_eq!(error_code(&response), "BAD_REQUEST", "{response}");
    assert!(h.bus.published().is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn too_many_subscriptions_on_one_socket_close_it() {
    let h = Harness::with_config(GatewayConfig {
        ws_subscriptions_max: 2,
        ..GatewayConfig::default()
    })
    .await;
    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    for sub in ["1", "2", "3"] {
        ws.subscribe(sub, STARTED_ANY, json!({})).await;
    }
    assert_eq!(ws.closed().await, 4400);
    h.shutdown().await;
}

#[tokio::test]
async fn completing_and_resubscribing_an_id_keeps_the_socket_within_its_cap() {
    let h = Harness::with_config(GatewayConfig {
        ws_subscriptions_max: 2,
        ..GatewayConfig::default()
    })
    .await;
    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    ws.subscribe("a", STARTED_ANY, json!({})).await;
    ws.subscribe("b", STARTED_ANY, json!({})).await;
    // Back to back: the server answers each `complete` with its own, after the next
    // `subscribe` went in.
    for _ in 0..3 {
        ws.send(json!({"type": "complete", "id": "a"})).await;
        ws.subscribe("a", STARTED_ANY, json!({})).await;
    }
    for _ in 0..3 {
        assert_complete(&ws.next().await, "a");
    }
    // "a" and "b" still hold both slots: a third subscription is one too many.
    ws.subscribe("c", STARTED_ANY, json!({})).await;
    assert_eq!(ws.closed().await, 4400);
    h.shutdown().await;
}

#[tokio::test]
async fn finished_subscriptions_free_their_slots_whatever_their_ids_and_ids_are_bounded() {
    let h = Harness::with_config(GatewayConfig {
        ws_subscriptions_max: 2,
        ..GatewayConfig::default()
    })
    .await;
    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    // Ids at the limit, of characters JSON escapes: their `complete`s are long.
    for n in 0..4 {
        let sub = format!("{n}{}", "\"".repeat(127));
        ws.subscribe(
            &sub,
            COMPLETED_ONE,
            json!({"id": Uuid::from_u128(9).to_string()}),
        )
        .await;
        let response = payload(&ws.next().await, TRANSPORT_WS, &sub);
        assert_eq!(error_code(&response), "NOT_FOUND", "{response}");
        assert_complete(&ws.next().await, &sub);
    }
    ws.subscribe(&"x".repeat(129), STARTED_ANY, json!({})).await;
    assert_eq!(ws.closed().await, 4400);
    h.shutdown().await;
}

#[tokio::test]
async fn oversized_websocket_message_closes_the_socket_with_1009() {
    let h = Harness::start().await;
    let mut ws = h.ws(ALICE, TRANSPORT_WS).await;
    let query = format!("{{ __typename }} #{}", "x".repeat(64 * 1024));
    ws.subscribe("big", &query, json!({})).await;
    assert_eq!(ws.closed().await, 1009);
    h.shutdown().await;
}

#[tokio::test]
async fn run_serves_until_shutdown_then_closes_websockets_and_returns() {
    let bus = std::sync::Arc::new(FakeBus::new());
    let _started = bus.add_feed(QUEUE_SUBS_STARTED);
    let _completed = bus.add_feed(QUEUE_SUBS_COMPLETED);
    let ports = ports::Ports {
        bus: bus.clone(),
        clock: std::sync::Arc::new(FixedClock),
        ids: std::sync::Arc::new(ports::SeededIds::new(1)),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = GatewayConfig::default();
    let server = tokio::spawn(graph_gateway::run(ports, listener, config, async {
        let _ = stopped.await;
    }));
    let mut ws = WsClient::connect(addr, ALICE, TRANSPORT_WS).await;
    ws.subscribe("1", STARTED_ANY, json!({})).await;
    stop.send(()).unwrap();
    assert_eq!(ws.closed().await, 1001);
    let result = tokio::time::timeout(PATIENCE, server)
        .await
        .expect("run returns")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
}
