//! The whole diagram inside a turmoil simulation, decided by one seed.
//!
//! Hosts: `orchestrator-N`, `gateway-N` and `client-N` (console clients), talking HTTP and
//! WebSocket over turmoil TCP. The broker is one broker-mem instance shared in process through
//! the memory adapter; every host runs on the simulation's single thread, so that sharing is
//! deterministic, and a crashed host's broker connection closes as a dead process's would.
//!
//! A run has a fault phase (the scheduled faults), then a heal phase (every fault undone) with a
//! convergence deadline; then the checkers judge it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use orchestrator::{BuiltinAnalyzer, OrchestratorConfig};
use ports::memory::MemoryBus;
use ports::{Clock, Ids, Ports, SeededIds, SimClock, TurmoilNet};
use tracing_subscriber::layer::SubscriberExt as _;

use crate::checker::{self, Evidence, Findings};
use crate::faults::{self, Damage, Fault, ScheduledFault};
use crate::hosts::{self, ClientPlan, CountingAnalyzer, Effects, GATEWAY_PORT, Observations};
use crate::journal::{Entry, Journal};
use crate::kit::{SubscriberContext, SubscriberLog, SubscriberSpec};
use crate::trace::{Recorder, Trace};

/// Wall time at simulated time zero: 2026-01-01T00:00:00Z.
const EPOCH_UNIX_MS: i64 = 1_767_225_600_000;
/// Connection attempts a client makes while its gateway is still starting.
const CONNECT_ATTEMPTS_MAX: u32 = 50;

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Decides everything: network latencies, host order, task order, ids.
    pub seed: u64,
    /// Console clients, each its own host and user.
    pub clients: usize,
    /// Analyses each client requests.
    pub analyses_per_client: usize,
    /// Each client's analyses start evenly spread over this window (zero: all at once).
    pub arrival_spread: Duration,
    /// Every n-th analysis of a client fails on purpose (0: none).
    pub failing_every: usize,
    /// How long each analysis takes, simulated.
    pub analysis_duration: Duration,
    /// Orchestrator replicas (competing consumers on the command queue).
    pub orchestrators: usize,
    /// Gateway replicas; client `c` talks to gateway `c % gateways`.
    pub gateways: usize,
    /// Orchestrator concurrency (prefetch).
    pub orchestrator_concurrency: u16,
    /// Longest simulated message latency on any link (outside latency faults).
    pub max_message_latency: Duration,
    /// Faults, at simulated times.
    pub faults: Vec<ScheduledFault>,
    /// When the heal phase starts; by default just after the last fault.
    pub heal_at: Option<Duration>,
    /// After healing, the system must finish all accepted work within this much simulated time.
    pub converge_within: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            seed: 1,
            clients: 3,
            analyses_per_client: 4,
            arrival_spread: Duration::ZERO,
            failing_every: 0,
            analysis_duration: Duration::from_millis(250),
            orchestrators: 1,
            gateways: 1,
            orchestrator_concurrency: 4,
            max_message_latency: Duration::from_millis(20),
            faults: Vec::new(),
            heal_at: None,
            converge_within: Duration::from_secs(120),
        }
    }
}

impl SimConfig {
    /// Host names of this configuration, for fault schedules.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = (0..self.orchestrators)
            .map(|i| format!("orchestrator-{i}"))
            .collect();
        hosts.extend((0..self.gateways).map(|i| format!("gateway-{i}")));
        hosts.extend(self.client_hosts());
        hosts
    }

    fn client_hosts(&self) -> Vec<String> {
        (0..self.clients).map(|c| format!("client-{c}")).collect()
    }

    /// When the heal phase starts.
    pub fn heal_time(&self) -> Duration {
        self.heal_at.unwrap_or_else(|| {
            Duration::from_millis(self.faults.iter().map(|f| f.at_ms + 1).max().unwrap_or(0))
        })
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
    /// What each client saw.
    pub clients: BTreeMap<String, hosts::ClientRecord>,
    /// The checkers' verdicts and the queue report.
    pub findings: Findings,
    /// Every finding, safety then liveness, plus a failed run's own error; empty means correct.
    pub violations: Vec<String>,
    /// The turmoil run's own error (a host failed).
    pub run_error: Option<String>,
    /// The run hit its convergence deadline with work unfinished.
    pub deadline_passed: bool,
    /// Fault kinds applied, with counts.
    pub faults_applied: BTreeMap<String, usize>,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Every publish, delivery and settlement, per host, in order.
    pub journal: Vec<Entry>,
    /// What each custom subscriber host recorded (see [`crate::kit`]).
    pub subscriber_logs: BTreeMap<String, Vec<String>>,
}

impl SimReport {
    /// The command that replays this run's seed with the same scenario file.
    pub fn replay_command(&self, scenario_file: Option<&str>) -> String {
        match scenario_file {
            Some(file) => format!("cargo run -- sim run {file} --seed {}", self.config.seed),
            None => format!(
                "cargo run -- sim run --seed {} --clients {} --analyses {} --analysis-ms {}",
                self.config.seed,
                self.config.clients,
                self.config.analyses_per_client,
                self.config.analysis_duration.as_millis()
            ),
        }
    }
}

/// Runs one simulation and checks it.
pub fn run(config: &SimConfig) -> SimReport {
    run_with(config, &[])
}

/// Runs one simulation with extra subscriber hosts (see [`crate::kit::Harness`]) and checks it.
pub fn run_with(config: &SimConfig, subscribers: &[SubscriberSpec]) -> SimReport {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    let outcome =
        tracing::subscriber::with_default(subscriber, || simulate(config, subscribers, &recorder));
    let trace = recorder.take();
    let mut violations = outcome.findings.wrong();
    violations.extend(outcome.findings.stuck());
    if let Some(e) = &outcome.run_error {
        violations.insert(0, format!("simulation failed: {e}"));
    }
    SimReport {
        config: config.clone(),
        trace_hash: trace.hash(),
        trace,
        clients: outcome.clients,
        findings: outcome.findings,
        violations,
        run_error: outcome.run_error,
        deadline_passed: outcome.deadline_passed,
        faults_applied: outcome.faults_applied,
        simulated: outcome.simulated,
        journal: outcome.journal,
        subscriber_logs: outcome.subscriber_logs,
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

struct Outcome {
    clients: BTreeMap<String, hosts::ClientRecord>,
    findings: Findings,
    run_error: Option<String>,
    deadline_passed: bool,
    faults_applied: BTreeMap<String, usize>,
    simulated: Duration,
    journal: Vec<Entry>,
    subscriber_logs: BTreeMap<String, Vec<String>>,
}

/// After the clients finish, the run goes on until the broker has held no ready or unacked
/// message for this many consecutive steps (ms), so subscribers finish too: "run until idle".
const IDLE_STEPS: u32 = 200;

fn simulate(config: &SimConfig, subscribers: &[SubscriberSpec], recorder: &Recorder) -> Outcome {
    let heal_at = config.heal_time();
    let deadline = heal_at + config.converge_within;
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_UNIX_MS as u64))
        // The driver below enforces the convergence deadline; this is only a backstop.
        .simulation_duration(deadline + Duration::from_secs(1))
        .max_message_latency(config.max_message_latency)
        .enable_random_order()
        .build();
    let broker = broker_mem::Broker::new();
    let effects: Effects = Arc::default();
    let observations: Observations = Arc::default();
    let journal = Journal::default();
    let logs = SubscriberLog::default();
    add_services(&mut sim, config, &broker, &effects, &journal);
    add_subscribers(&mut sim, config, subscribers, &broker, &journal, &logs);
    add_clients(&mut sim, config, &observations);

    let mut schedule = config.faults.clone();
    schedule.sort_by_key(|f| f.at_ms);
    let mut schedule = schedule.into_iter().peekable();
    let mut damage = Damage::default();
    let mut faults_applied: BTreeMap<String, usize> = BTreeMap::new();
    let mut healed = config.faults.is_empty();
    let mut run_error = None;
    let mut deadline_passed = false;
    let mut clients_done = false;
    let mut idle_steps = 0;
    loop {
        let now = sim.elapsed();
        recorder.set_driver_time(now);
        while let Some(fault) = schedule.next_if(|f| Duration::from_millis(f.at_ms) <= now) {
            faults::apply(&mut sim, &fault.fault, &mut damage);
            *faults_applied
                .entry(fault.fault.kind().to_owned())
                .or_default() += 1;
        }
        if !healed && now >= heal_at {
            faults::heal(&mut sim, &mut damage, config.max_message_latency);
            healed = true;
        }
        if now > deadline {
            deadline_passed = true;
            break;
        }
        if clients_done {
            idle_steps = if broker_idle(&broker) {
                idle_steps + 1
            } else {
                0
            };
            if idle_steps >= IDLE_STEPS {
                break;
            }
        }
        match sim.step() {
            Ok(true) => clients_done = true,
            Ok(false) => {}
            Err(e) => {
                run_error = Some(e.to_string());
                break;
            }
        }
    }
    let simulated = sim.elapsed();
    // Let the services settle their last acks before judging what the broker still holds.
    let clients = std::mem::take(&mut *observations.lock().expect("observations poisoned"));
    let pending = broker.queue_depth(contracts::QUEUE_COMMANDS).unwrap_or(0)
        + broker.unacked_count(contracts::QUEUE_COMMANDS).unwrap_or(0);
    let crash_happened = config
        .faults
        .iter()
        .any(|f| matches!(f.fault, Fault::Crash { .. } | Fault::Restart { .. }));
    let failing_every = config.failing_every;
    let failing = move |_: &str, index: usize| {
        failing_every > 0 && index % failing_every == failing_every - 1
    };
    let expected_clients = config.client_hosts();
    let findings = checker::check(&Evidence {
        clients: &clients,
        expected_clients: &expected_clients,
        effects: &effects,
        failing: &failing,
        repeats_explained: crash_happened,
        pending_commands: Some(pending),
        pending_reason: deadline_passed.then(|| "the run hit its convergence deadline".to_owned()),
    });
    drop(sim);
    let journal = journal.entries();
    let subscriber_logs = logs.take();
    Outcome {
        clients,
        findings,
        run_error,
        deadline_passed,
        faults_applied,
        simulated,
        journal,
        subscriber_logs,
    }
}

/// No queue holds a ready or unacked message.
fn broker_idle(broker: &broker_mem::Broker) -> bool {
    broker.queues().iter().all(|q| {
        broker.queue_depth(&q.name).unwrap_or(0) == 0
            && broker.unacked_count(&q.name).unwrap_or(0) == 0
    })
}

fn add_subscribers(
    sim: &mut turmoil::Sim<'_>,
    config: &SimConfig,
    subscribers: &[SubscriberSpec],
    broker: &broker_mem::Broker,
    journal: &Journal,
    logs: &SubscriberLog,
) {
    for spec in subscribers {
        let (spec, broker, journal) = (spec.clone(), broker.clone(), journal.clone());
        let log = logs.for_host(&spec.host);
        let clock: Arc<dyn Clock> = Arc::new(SimClock {
            epoch_unix_ms: EPOCH_UNIX_MS,
        });
        let seed = config.seed;
        sim.host(spec.host.clone(), move || {
            let bus = journal.wrap(&spec.host, Arc::new(MemoryBus::new(broker.clone())));
            let ports = Ports {
                bus,
                clock: clock.clone(),
                ids: Arc::new(SeededIds::new(seed ^ 0x0005_ab5c)),
            };
            let context = SubscriberContext {
                ports,
                host: spec.host.clone(),
                log: log.clone(),
            };
            let body = (spec.body)(context);
            async move { body.await.map_err(Into::into) }
        });
    }
}

fn add_services(
    sim: &mut turmoil::Sim<'_>,
    config: &SimConfig,
    broker: &broker_mem::Broker,
    effects: &Effects,
    journal: &Journal,
) {
    let clock: Arc<dyn Clock> = Arc::new(SimClock {
        epoch_unix_ms: EPOCH_UNIX_MS,
    });
    // Ids come from the seed too, from a stream apart from the network's; each gateway its own.
    let ports_for = {
        let (broker, journal) = (broker.clone(), journal.clone());
        move |host: &str, id_stream: u64| Ports {
            // Each (re)start of a host opens its own broker connection, as a restarted process
            // would; a crash drops it, which requeues that host's unacked messages.
            bus: journal.wrap(host, Arc::new(MemoryBus::new(broker.clone()))),
            clock: clock.clone(),
            ids: Arc::new(SeededIds::new(id_stream)) as Arc<dyn Ids>,
        }
    };
    for o in 0..config.orchestrators {
        let ports_for = ports_for.clone();
        let orchestrator_config = OrchestratorConfig {
            concurrency: config.orchestrator_concurrency,
            ..OrchestratorConfig::default()
        };
        let analyzer = Arc::new(CountingAnalyzer {
            inner: BuiltinAnalyzer {
                duration: config.analysis_duration,
            },
            effects: effects.clone(),
        });
        let seed = config.seed;
        let host = format!("orchestrator-{o}");
        sim.host(host.clone(), move || {
            let ports = ports_for(&host, seed);
            let config = orchestrator_config.clone();
            let analyzer = analyzer.clone();
            async move {
                orchestrator::run(ports, analyzer, config, std::future::pending()).await?;
                Ok(())
            }
        });
    }
    for g in 0..config.gateways {
        let ports_for = ports_for.clone();
        // A restarted gateway must not hand out ids its previous life already gave: each life
        // draws from a stream of its own (derived from the seed, the replica and the restart).
        let lives = Arc::new(Mutex::new(0_u64));
        let seed = config.seed;
        let host = format!("gateway-{g}");
        sim.host(host.clone(), move || {
            let life = {
                let mut lives = lives.lock().expect("lives poisoned");
                *lives += 1;
                *lives
            };
            let ports = ports_for(
                &host,
                seed ^ 0x05ee_d1d5 ^ ((g as u64) << 32) ^ (life << 48),
            );
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
    }
}

fn add_clients(sim: &mut turmoil::Sim<'_>, config: &SimConfig, observations: &Observations) {
    for (c, host) in config.client_hosts().into_iter().enumerate() {
        let plan = ClientPlan {
            host: host.clone(),
            user: format!("user-{c}"),
            gateway: format!("gateway-{}", c % config.gateways.max(1)),
            analyses: config.analyses_per_client,
            arrival_spread: config.arrival_spread,
            failing_every: config.failing_every,
        };
        let observations = observations.clone();
        sim.client(host, async move {
            wait_for_gateway(&format!("{}:{GATEWAY_PORT}", plan.gateway)).await;
            hosts::run_client(plan, observations).await;
            Ok(())
        });
    }
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
