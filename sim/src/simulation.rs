//! The whole diagram inside a turmoil simulation, decided by one seed.
//!
//! Hosts: `orchestrator`, `gateway` and `client-N` (console clients), talking HTTP and WebSocket
//! over turmoil TCP. The broker is one broker-mem instance shared in process through the memory
//! adapter; every host runs on the simulation's single thread, so that sharing is deterministic.
//! (AMQP links over simulated TCP to a `broker` host come with the wire protocol.)

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use client_console::{AnalysisInput, ConsoleConfig, EventKind, Outcome, Step};
use orchestrator::{BuiltinAnalyzer, OrchestratorConfig};
use ports::memory::MemoryBus;
use ports::{Clock, Ids, Ports, SeededIds, SimClock, TurmoilNet};
use tracing_subscriber::layer::SubscriberExt as _;

use crate::trace::{Recorder, Trace};

/// Port the gateway listens on inside the simulation.
const GATEWAY_PORT: u16 = 8080;
/// Wall time at simulated time zero: 2026-01-01T00:00:00Z.
const EPOCH_UNIX_MS: i64 = 1_767_225_600_000;
/// Connection attempts a client makes while the gateway is still starting.
const CONNECT_ATTEMPTS_MAX: u32 = 50;

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Decides everything: network latencies, host order, task order, ids.
    pub seed: u64,
    /// Console clients, each its own host and user.
    pub clients: usize,
    /// Analyses each client requests (concurrently).
    pub analyses_per_client: usize,
    /// How long each analysis takes, simulated.
    pub analysis_duration: Duration,
    /// Orchestrator concurrency (prefetch).
    pub orchestrator_concurrency: u16,
    /// Longest simulated message latency on any link.
    pub max_message_latency: Duration,
    /// The run fails if clients are not done by then (simulated time).
    pub time_limit: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            clients: 3,
            analyses_per_client: 4,
            analysis_duration: Duration::from_millis(250),
            orchestrator_concurrency: 4,
            max_message_latency: Duration::from_millis(20),
            time_limit: Duration::from_secs(120),
        }
    }
}

/// What a run produced.
#[derive(Debug, Clone)]
pub struct SimReport {
    /// The configuration that ran.
    pub config: SimConfig,
    /// Every recorded event.
    pub trace: Trace,
    /// `trace.hash()`.
    pub trace_hash: u64,
    /// Each client's analyses: the outcome, or why it failed.
    pub outcomes: BTreeMap<String, Vec<Result<Outcome, String>>>,
    /// The turmoil run's own error (a host failed or the time limit passed).
    pub run_error: Option<String>,
    /// Checker findings; empty means the run was correct.
    pub violations: Vec<String>,
    /// Simulated time the run took.
    pub simulated: Duration,
}

impl SimReport {
    /// The command that replays this run.
    pub fn replay_command(&self) -> String {
        let c = &self.config;
        format!(
            "cargo run -- sim --seed {} --clients {} --analyses {} --analysis-ms {}",
            c.seed,
            c.clients,
            c.analyses_per_client,
            c.analysis_duration.as_millis()
        )
    }
}

/// Runs one simulation and checks it.
pub fn run(config: &SimConfig) -> SimReport {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let (outcomes, run_error, simulated) =
        tracing::subscriber::with_default(subscriber, || simulate(config));
    let trace = recorder.take();
    let violations = check(config, &outcomes, run_error.as_deref());
    SimReport {
        config: config.clone(),
        trace_hash: trace.hash(),
        trace,
        outcomes,
        run_error,
        violations,
        simulated,
    }
}

/// Runs the same configuration twice and compares traces; `Err` names the first differing event.
pub fn check_determinism(config: &SimConfig) -> Result<SimReport, String> {
    let first = run(config);
    let second = run(config);
    match first.trace.first_difference(&second.trace) {
        None => Ok(first),
        Some(difference) => Err(format!(
            "seed {} is not deterministic: trace hashes {:016x} and {:016x}; {difference}",
            config.seed, first.trace_hash, second.trace_hash
        )),
    }
}

type Outcomes = BTreeMap<String, Vec<Result<Outcome, String>>>;

fn simulate(config: &SimConfig) -> (Outcomes, Option<String>, Duration) {
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_UNIX_MS as u64))
        .simulation_duration(config.time_limit)
        .max_message_latency(config.max_message_latency)
        .enable_random_order()
        .build();
    let broker = broker_mem::Broker::new();
    let clock: Arc<dyn Clock> = Arc::new(SimClock {
        epoch_unix_ms: EPOCH_UNIX_MS,
    });
    // Ids come from the seed too, from a stream apart from the network's.
    let ids: Arc<dyn Ids> = Arc::new(SeededIds::new(config.seed ^ 0x05ee_d1d5));
    // Each (re)start of a host opens its own broker connection, as a restarted process would;
    // a crash drops it, which requeues that host's unacked messages.
    let ports_for = move |broker: &broker_mem::Broker| Ports {
        bus: Arc::new(MemoryBus::new(broker.clone())),
        clock: clock.clone(),
        ids: ids.clone(),
    };

    let orchestrator_broker = broker.clone();
    let orchestrator_ports = ports_for.clone();
    let orchestrator_config = OrchestratorConfig {
        concurrency: config.orchestrator_concurrency,
        ..OrchestratorConfig::default()
    };
    let analyzer = Arc::new(BuiltinAnalyzer {
        duration: config.analysis_duration,
    });
    sim.host("orchestrator", move || {
        let ports = orchestrator_ports(&orchestrator_broker);
        let config = orchestrator_config.clone();
        let analyzer = analyzer.clone();
        async move {
            orchestrator::run(ports, analyzer, config, std::future::pending()).await?;
            Ok(())
        }
    });

    sim.host("gateway", move || {
        let ports = ports_for(&broker);
        async move {
            let listener =
                ports::Net::bind(&TurmoilNet, &format!("0.0.0.0:{GATEWAY_PORT}")).await?;
            graph_gateway::run(
                ports,
                listener,
                graph_gateway::GatewayConfig::default(),
                std::future::pending(),
            )
            .await?;
            Ok(())
        }
    });

    let outcomes: Arc<Mutex<Outcomes>> = Arc::default();
    for c in 0..config.clients {
        let name = format!("client-{c}");
        let outcomes = outcomes.clone();
        let analyses = config.analyses_per_client;
        let host = name.clone();
        sim.client(name, async move {
            let results = run_client(&host, c, analyses).await;
            outcomes
                .lock()
                .expect("outcomes poisoned")
                .insert(host, results);
            Ok(())
        });
    }
    let run_error = sim.run().err().map(|e| e.to_string());
    let simulated = sim.elapsed();
    let outcomes = std::mem::take(&mut *outcomes.lock().expect("outcomes poisoned"));
    (outcomes, run_error, simulated)
}

async fn run_client(host: &str, client: usize, analyses: usize) -> Vec<Result<Outcome, String>> {
    let config = ConsoleConfig {
        authority: format!("gateway:{GATEWAY_PORT}"),
        path: "/graphql".into(),
        user: Some(format!("user-{client}")),
        timeout: Duration::from_secs(60),
    };
    wait_for_gateway(&config.authority).await;
    let runs = (0..analyses).map(|a| {
        let config = config.clone();
        let input = AnalysisInput {
            asset_id: format!("asset-{client}-{a}"),
            analysis_type: "utilization".into(),
            parameters: None,
        };
        async move {
            client_console::run(&TurmoilNet, &config, &input, |step| match step {
                Step::Requested(r) => tracing::info!(host, analysis_id = %r.analysis_id, "client requested"),
                Step::Event(e) => tracing::info!(host, analysis_id = %e.analysis_id, kind = ?e.kind, "client received"),
            })
            .await
            .map_err(|e| e.to_string())
        }
    });
    futures::future::join_all(runs).await
}

/// Waits until the gateway accepts connections (it binds once its topology is declared).
async fn wait_for_gateway(authority: &str) {
    for _ in 0..CONNECT_ATTEMPTS_MAX {
        if ports::Net::connect(&TurmoilNet, authority).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The skeleton's checker: every client saw exactly one Started then one Completed for each of
/// its analyses, with the right analysisId and status SUCCEEDED, and no analysis id twice.
fn check(config: &SimConfig, outcomes: &Outcomes, run_error: Option<&str>) -> Vec<String> {
    let mut violations = Vec::new();
    if let Some(e) = run_error {
        violations.push(format!("simulation failed: {e}"));
    }
    let mut ids = BTreeMap::new();
    for c in 0..config.clients {
        let host = format!("client-{c}");
        let Some(results) = outcomes.get(&host) else {
            violations.push(format!("{host}: did not finish"));
            continue;
        };
        for (a, result) in results.iter().enumerate() {
            let outcome = match result {
                Ok(outcome) => outcome,
                Err(e) => {
                    violations.push(format!("{host} analysis {a}: {e}"));
                    continue;
                }
            };
            let id = &outcome.requested.analysis_id;
            if let Some(other) = ids.insert(id.clone(), format!("{host}/{a}")) {
                violations.push(format!(
                    "analysis id {id} given to both {other} and {host}/{a}"
                ));
            }
            let kinds: Vec<_> = outcome.events.iter().map(|e| e.kind).collect();
            if kinds != [EventKind::Started, EventKind::Completed] {
                violations.push(format!(
                    "{host} analysis {id}: saw {kinds:?}, expected [Started, Completed]"
                ));
            }
            if let Some(e) = outcome.events.iter().find(|e| &e.analysis_id != id) {
                violations.push(format!(
                    "{host} analysis {id}: received an event of {}",
                    e.analysis_id
                ));
            }
            let status = outcome
                .events
                .last()
                .and_then(|e| e.data.get("status"))
                .and_then(|s| s.as_str());
            if status != Some("SUCCEEDED") {
                violations.push(format!("{host} analysis {id}: status {status:?}"));
            }
        }
    }
    violations
}
