//! The embedded system on real loopback sockets, and the `warren demo` binary itself.

use std::time::Duration;

use client_console::{AnalysisInput, ConsoleConfig, EventKind};
use warren_sim::{RunningSystem, SystemConfig};

fn input(asset: &str) -> AnalysisInput {
    AnalysisInput {
        asset_id: asset.into(),
        analysis_type: "utilization".into(),
        parameters: None,
    }
}

#[tokio::test]
async fn console_receives_started_then_completed_over_real_sockets() {
    let config = SystemConfig {
        listen: "127.0.0.1:0".into(),
        analysis_duration: Duration::from_millis(20),
        ..SystemConfig::default()
    };
    let system = RunningSystem::start(config).await.unwrap();
    let mut console = ConsoleConfig::from_url(&system.graphql_url()).unwrap();
    console.user = Some("alice".into());
    console.timeout = Duration::from_secs(20);
    let runs = (0..10).map(|i| {
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
        assert!(
            outcome
                .events
                .iter()
                .all(|e| e.analysis_id == outcome.requested.analysis_id)
        );
        assert_eq!(outcome.events[1].data["status"], "SUCCEEDED");
    }
    let broker = system.broker.clone().unwrap();
    system.stop().await.unwrap();
    for queue in [
        contracts::QUEUE_COMMANDS,
        contracts::QUEUE_SUBS_STARTED,
        contracts::QUEUE_SUBS_COMPLETED,
    ] {
        assert_eq!(broker.queue_depth(queue), Some(0), "{queue} drained");
    }
}

#[tokio::test]
async fn failing_analysis_is_reported_failed_not_lost() {
    let config = SystemConfig {
        listen: "127.0.0.1:0".into(),
        analysis_duration: Duration::ZERO,
        ..SystemConfig::default()
    };
    let system = RunningSystem::start(config).await.unwrap();
    let console = ConsoleConfig::from_url(&system.graphql_url()).unwrap();
    let failing = AnalysisInput {
        parameters: Some(serde_json::json!({"fail": "sensor offline"})),
        ..input("press-1")
    };
    let outcome = client_console::run(&ports::TokioNet, &console, &failing, |_| {})
        .await
        .unwrap();
    let completed = &outcome.events[1].data;
    assert_eq!(
        (completed["status"].as_str(), completed["error"].as_str()),
        (Some("FAILED"), Some("sensor offline"))
    );
    system.stop().await.unwrap();
}

#[tokio::test]
async fn bad_input_is_refused_with_a_code() {
    let config = SystemConfig {
        listen: "127.0.0.1:0".into(),
        ..SystemConfig::default()
    };
    let system = RunningSystem::start(config).await.unwrap();
    let console = ConsoleConfig::from_url(&system.graphql_url()).unwrap();
    let bad = AnalysisInput {
        analysis_type: "Not Valid!".into(),
        ..input("press-1")
    };
    let error = client_console::request_analysis(&ports::TokioNet, &console, &bad)
        .await
        .unwrap_err();
    assert!(
        matches!(&error, client_console::ConsoleError::GraphQl { code, .. } if code == "BAD_USER_INPUT"),
        "{error}"
    );
    system.stop().await.unwrap();
}

#[test]
fn warren_demo_prints_started_and_completed_and_exits_zero() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(["demo", "--analysis-ms", "50"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let id_of = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("analysisId="))
            })
            .map(str::to_owned)
    };
    let started = id_of("AnalysisStarted").expect("an AnalysisStarted line");
    assert_eq!(Some(started), id_of("AnalysisCompleted"), "{stdout}");
}
