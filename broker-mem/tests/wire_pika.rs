//! A client in another language: Python's pika publishes, consumes, acks and nacks against the
//! wire server (script: `tests/pika_client.py`).
//!
//! Skips with a `SKIPPED:` line when python3 or pika is missing, unless `WARREN_REQUIRE_PIKA=1`
//! (ci/test.sh installs pika and sets it), which makes a missing pika a failure.
#![cfg(feature = "wire")]

use std::process::Stdio;
use std::time::Duration;

use broker_mem::Broker;
use broker_mem::wire::{WireConfig, WireServer};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/pika_client.py");

async fn pika_available() -> bool {
    let probe = tokio::process::Command::new("python3")
        .args(["-c", "import pika"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await;
    matches!(probe, Ok(status) if status.success())
}

#[tokio::test]
async fn pika_publishes_consumes_acks_and_nacks() {
    if !pika_available().await {
        let required = std::env::var("WARREN_REQUIRE_PIKA").is_ok_and(|v| v.trim() == "1");
        assert!(
            !required,
            "WARREN_REQUIRE_PIKA=1 but python3 with pika is not available"
        );
        eprintln!("SKIPPED: python3 with pika not available (python3 -m pip install pika)");
        return;
    }
    let broker = Broker::new();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(WireServer::new(broker.clone(), WireConfig::default()).serve_tcp(listener));

    let run = tokio::process::Command::new("python3")
        .arg(SCRIPT)
        .arg(port.to_string())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("pika finished within 60 s")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.trim() == "OK",
        "pika failed ({}):\nstdout: {stdout}\nstderr: {stderr}",
        output.status
    );
    assert_eq!(broker.queue_depth("py.work"), Some(0));
    assert_eq!(broker.unacked_count("py.work"), Some(0));
    broker.check_invariants().unwrap();
}
