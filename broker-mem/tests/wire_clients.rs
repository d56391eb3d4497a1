//! AMQP clients in other languages against broker-mem's wire server and against RabbitMQ:
//! Node.js's amqplib, and Python's pika, kombu (Celery's messaging library, over py-amqp) and
//! aio-pika (asyncio, over aiormq and pamqp): the clients other teams' subscribers are most
//! often written with, four independent AMQP codecs. Each runs one scenario
//! (`tests/clients/`: typed headers and every property, confirms, mandatory returns,
//! `basic.get`, requeues, prefetch, dead-lettering with `x-death`, routing of every kind,
//! transactions, channel and connection errors) and prints what it saw as JSON. Both servers
//! must print the transcript kept beside the script, which RabbitMQ 3.10.8 printed; header
//! tables are compared in order, as these clients keep it.
//!
//! To write a transcript again after changing a scenario, run the script against RabbitMQ:
//! `node tests/clients/amqplib_client.js amqp://guest:guest@127.0.0.1:5672/VHOST >
//! tests/clients/amqplib.expected.json` (likewise `python3 tests/clients/pika_client.py`,
//! `kombu_client.py`, `aio_pika_client.py`).
//!
//! A client that is not installed skips with a `SKIPPED:` line, unless `WARREN_REQUIRE_CLIENTS`
//! is `1` or names it (`pika,kombu,aio-pika,amqplib`: ci/test.sh names those it installed); so
//! does the RabbitMQ half without RabbitMQ, unless `WARREN_REQUIRE_RABBITMQ=1`.
#![cfg(feature = "wire")]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use broker_mem::Broker;
use broker_mem::wire::{WireConfig, WireServer};
use ports::testing::RabbitVhost;

/// A scenario takes a few seconds; this is for a client that hangs.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

struct Client {
    name: &'static str,
    /// The program and the script it runs; the AMQP URL comes after.
    command: [&'static str; 2],
    /// A command that succeeds when the client library is installed.
    probe: &'static [&'static str],
    install_hint: &'static str,
}

const AMQPLIB: Client = Client {
    name: "amqplib",
    command: ["node", "amqplib_client.js"],
    probe: &["node", "-e", "require('amqplib')"],
    install_hint: "npm ci --prefix broker-mem/tests/clients",
};

const PIKA: Client = Client {
    name: "pika",
    command: ["python3", "pika_client.py"],
    probe: &["python3", "-c", "import pika"],
    install_hint: "python3 -m pip install -r broker-mem/tests/clients/requirements.txt",
};

const KOMBU: Client = Client {
    name: "kombu",
    command: ["python3", "kombu_client.py"],
    probe: &["python3", "-c", "import kombu"],
    install_hint: "python3 -m pip install -r broker-mem/tests/clients/requirements.txt",
};

const AIO_PIKA: Client = Client {
    name: "aio-pika",
    command: ["python3", "aio_pika_client.py"],
    probe: &["python3", "-c", "import aio_pika"],
    install_hint: "python3 -m pip install -r broker-mem/tests/clients/requirements.txt",
};

fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

impl Client {
    /// Whether the client can run here; panics when it cannot and `WARREN_REQUIRE_CLIENTS=1`.
    async fn available(&self) -> bool {
        let probe = tokio::process::Command::new(self.probe[0])
            .args(&self.probe[1..])
            .current_dir(clients_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .await;
        if matches!(probe, Ok(status) if status.success()) {
            return true;
        }
        let required = std::env::var("WARREN_REQUIRE_CLIENTS")
            .is_ok_and(|v| v.trim() == "1" || v.split(',').any(|name| name.trim() == self.name));
        assert!(
            !required,
            "WARREN_REQUIRE_CLIENTS=1 but {} is not installed ({})",
            self.name, self.install_hint
        );
        eprintln!(
            "SKIPPED: {} is not installed ({})",
            self.name, self.install_hint
        );
        false
    }

    /// The scenario's transcript against the server at `url`.
    async fn transcript(&self, url: &str) -> String {
        let run = tokio::process::Command::new(self.command[0])
            .arg(self.command[1])
            .arg(url)
            .current_dir(clients_dir())
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(CLIENT_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("{} did not finish within {CLIENT_TIMEOUT:?}", self.name))
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", self.command[0]));
        assert!(
            output.status.success(),
            "{} failed ({}) against {url}:\n{}",
            self.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).expect("a UTF-8 transcript")
    }

    fn expected(&self) -> String {
        let path = clients_dir().join(format!("{}.expected.json", self.name));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|error| panic!("cannot read {}: {error}", path.display()))
    }

    /// Runs the scenario against a fresh broker-mem wire server.
    async fn against_broker_mem(&self) {
        if !self.available().await {
            return;
        }
        let broker = Broker::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(WireServer::new(broker.clone(), WireConfig::default()).serve_tcp(listener));
        let transcript = self
            .transcript(&format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .await;
        same_transcript(self.name, "broker-mem", &self.expected(), &transcript);
        broker.check_invariants().expect("broker-mem bookkeeping");
    }

    /// Runs the scenario against RabbitMQ, in a vhost of its own: the kept transcript is what
    /// RabbitMQ gives.
    async fn against_rabbitmq(&self) {
        let Some(vhost) = RabbitVhost::create(&format!("client_{}", self.name))
            .await
            .expect("vhost")
        else {
            return;
        };
        if !self.available().await {
            return;
        }
        let transcript = self.transcript(vhost.amqp_url()).await;
        vhost.delete().await.expect("delete vhost");
        same_transcript(self.name, "RabbitMQ", &self.expected(), &transcript);
    }
}

/// Equal line by line; a failure lists each differing line with its number.
fn same_transcript(client: &str, server: &str, expected: &str, actual: &str) {
    if expected == actual {
        return;
    }
    let expected: Vec<&str> = expected.lines().collect();
    let actual: Vec<&str> = actual.lines().collect();
    let differing: Vec<String> = (0..expected.len().max(actual.len()))
        .filter(|&n| expected.get(n) != actual.get(n))
        .take(20)
        .map(|n| {
            let line = |lines: &[&str]| lines.get(n).copied().unwrap_or("(none)").to_owned();
            format!(
                "  line {}: expected {}\n  {:>width$} {server} {}",
                n + 1,
                line(&expected),
                "",
                line(&actual),
                width = format!("line {}:", n + 1).len()
            )
        })
        .collect();
    panic!(
        "{client} saw something else from {server} than from RabbitMQ (first differences):\n{}",
        differing.join("\n")
    );
}

#[tokio::test]
async fn amqplib_sees_from_broker_mem_what_it_sees_from_rabbitmq() {
    AMQPLIB.against_broker_mem().await;
}

#[tokio::test]
async fn amqplib_transcript_is_rabbitmqs() {
    AMQPLIB.against_rabbitmq().await;
}

#[tokio::test]
async fn pika_sees_from_broker_mem_what_it_sees_from_rabbitmq() {
    PIKA.against_broker_mem().await;
}

#[tokio::test]
async fn pika_transcript_is_rabbitmqs() {
    PIKA.against_rabbitmq().await;
}

#[tokio::test]
async fn kombu_sees_from_broker_mem_what_it_sees_from_rabbitmq() {
    KOMBU.against_broker_mem().await;
}

#[tokio::test]
async fn kombu_transcript_is_rabbitmqs() {
    KOMBU.against_rabbitmq().await;
}

#[tokio::test]
async fn aio_pika_sees_from_broker_mem_what_it_sees_from_rabbitmq() {
    AIO_PIKA.against_broker_mem().await;
}

#[tokio::test]
async fn aio_pika_transcript_is_rabbitmqs() {
    AIO_PIKA.against_rabbitmq().await;
}
