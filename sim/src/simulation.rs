//! The whole diagram inside a turmoil simulation, decided by one seed.
//!
//! Hosts: `orchestrator-N`, `gateway-N` and `client-N` (console clients), talking HTTP and
//! WebSocket over turmoil TCP. The broker is one broker-mem instance shared in process through
//! the memory adapter; every host runs on the simulation's single thread, so that sharing is
//! deterministic, and a crashed host's broker connection closes as a dead process's would. With
//! [`BrokerLink::Wire`] the same broker sits on a `broker` host behind its AMQP server, and each
//! service talks to it with the wire client over simulated TCP, so link faults hit AMQP too.
//!
//! A run has a fault phase (the scheduled faults), then a heal phase (every fault undone) with a
//! convergence deadline; then the checkers judge it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use broker_mem::ArmedFault;
use orchestrator::{BuiltinAnalyzer, OrchestratorConfig};
use ports::memory::MemoryBus;
use ports::wire::{WireBus, WireBusConfig};
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
    /// Put the edge in front of each gateway, as in production: hosts `issuer` (the dev OIDC
    /// issuer), `auth-N` (the oauth2-proxy role) and `edge-N` (the Kong role, on the gateway's
    /// port); clients talk to `edge-N` with a bearer token, and gateways re-validate it.
    pub with_edge: bool,
    /// How services reach the broker: in process, or over AMQP on simulated TCP to a `broker`
    /// host (so partitions, latency and crashes hit the AMQP links too).
    pub broker_link: BrokerLink,
    /// Which event queues the gateways consume.
    pub gateway_queues: GatewayQueues,
    /// Simulated time per step: the time resolution. 1 ms by default; a coarser tick makes
    /// long scenarios cheaper (fewer steps) at the cost of quantizing latencies to it.
    pub tick: Duration,
}

/// Which event queues gateway replicas consume.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GatewayQueues {
    /// The contract's fixed `graph.subs.*` names: replicas compete for each event.
    #[default]
    Shared,
    /// `graph.subs.*.gateway-N`: every replica gets every event.
    PerInstance,
}

/// How the simulated services reach broker-mem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BrokerLink {
    /// The memory adapter on the shared in-process broker: no network between service and
    /// broker.
    #[default]
    InProcess,
    /// The wire adapter (`ports::wire::WireBus`) over turmoil TCP to broker-mem's AMQP server on
    /// host [`BROKER_HOST`], port [`BROKER_PORT`]; heartbeats notice dead links.
    Wire,
}

/// The broker's host name in [`BrokerLink::Wire`] mode.
pub const BROKER_HOST: &str = "broker";
/// The AMQP port of the broker host.
pub const BROKER_PORT: u16 = 5672;
/// AMQP heartbeat on simulated links, in seconds: a partitioned link is declared dead after two
/// silent intervals.
const WIRE_HEARTBEAT_S: u16 = 1;

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
            with_edge: false,
            broker_link: BrokerLink::InProcess,
            gateway_queues: GatewayQueues::Shared,
            tick: Duration::from_millis(1),
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
        if self.broker_link == BrokerLink::Wire {
            hosts.push(BROKER_HOST.to_owned());
        }
        if self.with_edge {
            hosts.push("issuer".to_owned());
            hosts.extend(
                (0..self.gateways).flat_map(|i| [format!("auth-{i}"), format!("edge-{i}")]),
            );
        }
        hosts
    }

    /// The broker's queues and exchanges, by name, that this configuration's services declare:
    /// what a broker fault may name (a fault armed on any other name would never fire).
    pub fn broker_names(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let mut topologies = vec![contracts::Topology::orchestrator()];
        topologies.extend((0..self.gateways).map(|g| {
            let host = format!("gateway-{g}");
            let instance = (self.gateway_queues == GatewayQueues::PerInstance).then_some(host);
            contracts::Topology::gateway_for(instance.as_deref())
        }));
        let queues = topologies
            .iter()
            .flat_map(|t| t.queues.iter().map(|q| q.name.clone()))
            .collect();
        let exchanges = topologies
            .iter()
            .flat_map(|t| t.exchanges.iter().map(|x| x.name.clone()))
            .collect();
        (queues, exchanges)
    }

    /// The console clients' host names.
    pub(crate) fn client_hosts(&self) -> Vec<String> {
        (0..self.clients).map(|c| format!("client-{c}")).collect()
    }

    /// When the run gives up: the heal time, plus the convergence allowance, plus the time the
    /// workload needs at the least (its arrival window and its analyses run at full concurrency).
    pub fn deadline(&self) -> Duration {
        let slots = (self.orchestrators * usize::from(self.orchestrator_concurrency)).max(1);
        let rounds = (self.clients * self.analyses_per_client).div_ceil(slots) as u32;
        self.heal_time()
            + self.converge_within
            + self.arrival_spread
            + self.analysis_duration * rounds
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
    /// Scheduled faults the run never reached: it was over (clients done, broker idle) before
    /// their time. A scenario that schedules one fails its judgement. Steps that end a fault
    /// (repair, restart, release) are not listed: missing one only means the fault lasted.
    pub faults_not_reached: Vec<ScheduledFault>,
    /// Broker fault hooks the run reached and armed but that never met their event (no
    /// publish to that exchange, no delivery from that queue after their time): they tested
    /// nothing either, though the run was long enough.
    pub faults_never_fired: Vec<String>,
    /// Simulated time the run took.
    pub simulated: Duration,
    /// Every publish, delivery and settlement, per host, in order.
    pub journal: Vec<Entry>,
    /// What each custom subscriber host recorded (see [`crate::kit`]).
    pub subscriber_logs: BTreeMap<String, Vec<String>>,
}

impl SimReport {
    /// How to replay this run: its seed with the same scenario file; without one, the `sim run`
    /// flags when they say everything, else the whole configuration as a scenario to save.
    pub fn replay_command(&self, scenario_file: Option<&str>) -> String {
        let config = &self.config;
        if let Some(file) = scenario_file {
            return format!("cargo run -- sim run {file} --seed {}", config.seed);
        }
        let said_by_flags = SimConfig {
            seed: config.seed,
            clients: config.clients,
            analyses_per_client: config.analyses_per_client,
            analysis_duration: config.analysis_duration,
            ..SimConfig::default()
        };
        if *config == said_by_flags {
            return format!(
                "cargo run -- sim run --seed {} --clients {} --analyses {} --analysis-ms {}",
                config.seed,
                config.clients,
                config.analyses_per_client,
                config.analysis_duration.as_millis()
            );
        }
        let scenario = crate::scenario::Scenario::from_config("replay", config);
        format!(
            "save the scenario below as replay.toml, then `cargo run -- sim run replay.toml`\n{}",
            scenario.to_toml()
        )
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
        faults_not_reached: outcome.faults_not_reached,
        faults_never_fired: outcome.faults_never_fired,
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
    faults_not_reached: Vec<ScheduledFault>,
    faults_never_fired: Vec<String>,
    simulated: Duration,
    journal: Vec<Entry>,
    subscriber_logs: BTreeMap<String, Vec<String>>,
}

/// After the clients finish, the run goes on until the broker has held no ready or unacked
/// message for this many consecutive steps (ms), so subscribers finish too: "run until idle".
const IDLE_STEPS: u32 = 200;

fn simulate(config: &SimConfig, subscribers: &[SubscriberSpec], recorder: &Recorder) -> Outcome {
    let heal_at = config.heal_time();
    let deadline = config.deadline();
    let mut sim = turmoil::Builder::new()
        .rng_seed(config.seed)
        .epoch(UNIX_EPOCH + Duration::from_millis(EPOCH_UNIX_MS as u64))
        // The driver below enforces the convergence deadline; this is only a backstop.
        .simulation_duration(deadline + Duration::from_secs(1))
        .max_message_latency(config.max_message_latency)
        .tick_duration(config.tick)
        .enable_random_order()
        .build();
    // The broker's clock is the simulation's: the driver sets it before every step, so TTLs,
    // delays and x-death times are simulated too.
    let broker_now_ms = Arc::new(AtomicU64::new(EPOCH_UNIX_MS as u64));
    let broker = broker_mem::Broker::with_clock(broker_mem::Limits::default(), {
        let now = broker_now_ms.clone();
        Arc::new(move || now.load(Ordering::Relaxed))
    });
    if config.broker_link == BrokerLink::Wire {
        add_broker_host(&mut sim, &broker);
    }
    let effects: Effects = Arc::default();
    let observations: Observations = Arc::default();
    let journal = Journal::default();
    let logs = SubscriberLog::default();
    add_services(&mut sim, config, &broker, &effects, &journal);
    add_subscribers(&mut sim, config, subscribers, &broker, &journal, &logs);
    let issuer = config.with_edge.then(|| edge_hosts::add(&mut sim, config));
    add_clients(&mut sim, config, &observations, issuer.as_deref());

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
        broker_now_ms.store(
            EPOCH_UNIX_MS as u64 + now.as_millis() as u64,
            Ordering::Relaxed,
        );
        broker.tick();
        while let Some(fault) = schedule.next_if(|f| Duration::from_millis(f.at_ms) <= now) {
            faults::apply(&mut sim, &broker, &fault.fault, &mut damage);
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
    // Faults the run never reached (it went idle first): they tested nothing.
    let unreached: Vec<ScheduledFault> = schedule.collect();
    // Hooks armed on the broker that never met their event (no publish to that exchange, no
    // delivery from that queue after their time), and those a broker restart disarmed first.
    let mut never_fired = std::mem::take(&mut damage.disarmed);
    never_fired.extend(broker.armed_faults());
    let fired = |fault: &Fault| {
        let armed = |a: &&ArmedFault| match (fault, *a) {
            (Fault::NackPublish { exchange }, ArmedFault::NackPublish { exchange: e }) => {
                exchange == e
            }
            (Fault::DuplicateDelivery { queue }, ArmedFault::DuplicateDelivery { queue: q }) => {
                queue == q
            }
            _ => false,
        };
        let reached = (config.faults.iter())
            .filter(|f| f.fault == *fault && !unreached.contains(f))
            .count();
        reached > never_fired.iter().filter(armed).count()
    };
    // Only faults that happened, and that can make the orchestrators run an analysis again,
    // explain a repeat (judged per run, not per analysis):
    // - an orchestrator that stopped mid-analysis: its command comes back for another run;
    // - a broker restart, or a refused event: the run fails and its command runs again;
    // - an orchestrator's link cut or held: an event left unconfirmed fails the run;
    // - with competing orchestrators, a command delivered again (duplicated, its consumer's
    //   channel closed) can reach a replica that does not know the analysis is running.
    // A crash of any other host, and any fault on the gateways' own queues, explains nothing:
    // an orchestrator skips an analysis it is running or has finished.
    let competing = config.orchestrators > 1;
    let orchestrator = |host: &str| host.starts_with("orchestrator-");
    let repeats_explained = config.faults.iter().any(|f| {
        let explains = match &f.fault {
            Fault::Crash { host } | Fault::Restart { host } => orchestrator(host),
            Fault::BrokerRestart => true,
            fault @ Fault::NackPublish { exchange } => {
                exchange != contracts::EXCHANGE_COMMANDS && fired(fault)
            }
            fault @ Fault::DuplicateDelivery { queue } => {
                competing && queue == contracts::QUEUE_COMMANDS && fired(fault)
            }
            Fault::CloseConsumerChannels { queue } => {
                competing && queue == contracts::QUEUE_COMMANDS
            }
            // A link cut or held long enough for heartbeats to end it leaves an event
            // unconfirmed: the run fails and its command runs again, with one orchestrator too.
            Fault::Partition { a, b } | Fault::Hold { a, b } => orchestrator(a) || orchestrator(b),
            Fault::PartitionOneway { from, to } => orchestrator(from) || orchestrator(to),
            _ => false,
        };
        explains && !unreached.contains(f)
    });
    // A repair or restart never reached only means its fault lasted to the end.
    let faults_not_reached: Vec<ScheduledFault> = (unreached.into_iter())
        .filter(|f| !f.fault.undoes_another())
        .collect();
    let faults_never_fired: Vec<String> = never_fired.iter().map(|a| format!("{a:?}")).collect();
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
        repeats_explained,
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
        faults_not_reached,
        faults_never_fired,
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
    for (index, spec) in subscribers.iter().enumerate() {
        let (spec, broker, journal) = (spec.clone(), broker.clone(), journal.clone());
        let log = logs.for_host(&spec.host);
        let clock: Arc<dyn Clock> = Arc::new(SimClock {
            epoch_unix_ms: EPOCH_UNIX_MS,
        });
        let seed = config.seed;
        // Each subscriber, and each life of it, draws ids from a stream of its own (as the
        // gateways do): two must never hand out the same id.
        let lives = Arc::new(Mutex::new(0_u64));
        sim.host(spec.host.clone(), move || {
            let life = {
                let mut lives = lives.lock().expect("lives poisoned");
                *lives += 1;
                *lives
            };
            let bus = journal.wrap(&spec.host, Arc::new(MemoryBus::new(broker.clone())));
            let ports = Ports {
                bus,
                clock: clock.clone(),
                ids: Arc::new(SeededIds::new(
                    seed ^ 0x0005_ab5c ^ ((index as u64) << 32) ^ (life << 48),
                )),
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
        let (broker, journal, link) = (broker.clone(), journal.clone(), config.broker_link);
        move |host: &str, id_stream: u64| Ports {
            // Each (re)start of a host opens its own broker connection, as a restarted process
            // would; a crash drops it, which requeues that host's unacked messages.
            bus: journal.wrap(host, bus_for(link, &broker)),
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
        let with_edge = config.with_edge;
        let host = format!("gateway-{g}");
        let instance_queues =
            (config.gateway_queues == GatewayQueues::PerInstance).then(|| host.clone());
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
            let gateway_config = graph_gateway::GatewayConfig {
                auth: with_edge.then(edge_hosts::gateway_auth),
                instance_queues: instance_queues.clone(),
                ..graph_gateway::GatewayConfig::default()
            };
            // With the edge, the gateway hides behind it on its own host name and port.
            let port = if with_edge {
                edge_hosts::GATEWAY_BEHIND_EDGE_PORT
            } else {
                GATEWAY_PORT
            };
            async move {
                let listener = ports::Net::bind(&TurmoilNet, &format!("0.0.0.0:{port}")).await?;
                graph_gateway::run(ports, listener, gateway_config, std::future::pending()).await?;
                Ok(())
            }
        });
    }
}

/// The `broker` host: broker-mem's AMQP server on simulated TCP, serving the run's broker (so
/// the checkers can still look inside it). A restarted host serves the same broker state.
fn add_broker_host(sim: &mut turmoil::Sim<'_>, broker: &broker_mem::Broker) {
    let server = broker_mem::wire::WireServer::new(
        broker.clone(),
        broker_mem::wire::WireConfig {
            heartbeat_s: WIRE_HEARTBEAT_S,
            ..broker_mem::wire::WireConfig::default()
        },
    );
    sim.host(BROKER_HOST, move || {
        let server = server.clone();
        async move {
            let listener =
                turmoil::net::TcpListener::bind(format!("0.0.0.0:{BROKER_PORT}")).await?;
            loop {
                let (stream, peer) = listener.accept().await?;
                let server = server.clone();
                tokio::spawn(async move {
                    if let Err(error) = server.serve_connection(stream).await {
                        tracing::debug!(%peer, %error, "AMQP connection ended");
                    }
                });
            }
        }
    });
}

/// A service's bus for one life of its host.
fn bus_for(link: BrokerLink, broker: &broker_mem::Broker) -> Arc<dyn ports::Bus> {
    match link {
        BrokerLink::InProcess => Arc::new(MemoryBus::new(broker.clone())),
        BrokerLink::Wire => Arc::new(WireBus::new(
            TurmoilNet,
            WireBusConfig {
                addr: format!("{BROKER_HOST}:{BROKER_PORT}"),
                heartbeat_s: WIRE_HEARTBEAT_S,
                connect_timeout: Duration::from_secs(2),
                rpc_timeout: Duration::from_secs(5),
                confirm_timeout: Duration::from_secs(10),
                reconnect_attempts_max: 30,
                reconnect_backoff_max: Duration::from_secs(1),
                ..WireBusConfig::default()
            },
        )),
    }
}

fn add_clients(
    sim: &mut turmoil::Sim<'_>,
    config: &SimConfig,
    observations: &Observations,
    issuer: Option<&edge::Issuer>,
) {
    for (c, host) in config.client_hosts().into_iter().enumerate() {
        let user = format!("user-{c}");
        // With the edge: its host instead of the gateway's, and a token from the issuer.
        let (front, token) = match issuer {
            Some(issuer) => ("edge", Some(edge_hosts::token(issuer, &user))),
            None => ("gateway", None),
        };
        let plan = ClientPlan {
            host: host.clone(),
            user,
            token,
            gateway: format!("{front}-{}", c % config.gateways.max(1)),
            analyses: config.analyses_per_client,
            arrival_spread: config.arrival_spread,
            failing_every: config.failing_every,
            analysis_duration: config.analysis_duration,
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

/// The edge as simulated hosts (see [`SimConfig::with_edge`]).
mod edge_hosts {
    use std::sync::Arc;

    use edge::{AuthProxyConfig, EdgeConfig, Issuer, IssuerConfig, KeySeed, MintRequest};
    use ports::{Clock, SimClock, TurmoilNet};

    use super::{EPOCH_UNIX_MS, GATEWAY_PORT, SimConfig};

    const ISSUER_URL: &str = "http://issuer:9000";
    const AUDIENCE: &str = "warren";
    const AUTH_PORT: u16 = 4180;
    /// The edge takes the gateway's usual port on its own host; the gateway listens here.
    pub(super) const GATEWAY_BEHIND_EDGE_PORT: u16 = 8081;

    fn clock() -> Arc<dyn Clock> {
        Arc::new(SimClock {
            epoch_unix_ms: EPOCH_UNIX_MS,
        })
    }

    fn verifier() -> Arc<edge::Verifier> {
        Arc::new(edge::Verifier::new(
            edge::VerifierConfig::new(ISSUER_URL, AUDIENCE),
            clock(),
            Arc::new(edge::DiscoveredJwks::new(TurmoilNet, ISSUER_URL)),
        ))
    }

    /// The gateway's own validation, against the simulated issuer.
    pub(super) fn gateway_auth() -> graph_gateway::JwtAuth {
        graph_gateway::JwtAuth(verifier())
    }

    /// A token for `user`, minted at simulated time zero (valid for an hour of simulated time).
    pub(super) fn token(issuer: &Issuer, user: &str) -> String {
        issuer
            .mint(&MintRequest::new(user))
            .expect("the simulated issuer mints")
    }

    /// Adds `issuer`, and `auth-N` + `edge-N` per gateway; returns the issuer (keys from the seed).
    pub(super) fn add(sim: &mut turmoil::Sim<'_>, config: &SimConfig) -> Arc<Issuer> {
        let issuer = Arc::new(
            Issuer::new(
                IssuerConfig {
                    issuer_url: ISSUER_URL.into(),
                    audience: AUDIENCE.into(),
                },
                clock(),
                KeySeed::Seeded(config.seed),
            )
            .expect("issuer keys"),
        );
        let served = issuer.clone();
        sim.host("issuer", move || {
            let issuer = served.clone();
            async move {
                let listener = ports::Net::bind(&TurmoilNet, "0.0.0.0:9000").await?;
                edge::run_issuer(listener, issuer, std::future::pending()).await?;
                Ok(())
            }
        });
        for g in 0..config.gateways {
            sim.host(format!("auth-{g}"), move || async move {
                let listener =
                    ports::Net::bind(&TurmoilNet, &format!("0.0.0.0:{AUTH_PORT}")).await?;
                let upstream = format!("gateway-{g}:{GATEWAY_BEHIND_EDGE_PORT}");
                let config = AuthProxyConfig::new(upstream);
                edge::run_auth_proxy(
                    TurmoilNet,
                    listener,
                    config,
                    verifier(),
                    std::future::pending(),
                )
                .await?;
                Ok(())
            });
            sim.host(format!("edge-{g}"), move || async move {
                let listener =
                    ports::Net::bind(&TurmoilNet, &format!("0.0.0.0:{GATEWAY_PORT}")).await?;
                let config = EdgeConfig {
                    // Simulated clients retry hard under faults; the limit is not under test here.
                    rate_limit: 10_000,
                    request_id_prefix: format!("edge-{g}"),
                    ..EdgeConfig::new(format!("auth-{g}:{AUTH_PORT}"))
                };
                edge::run_edge(TurmoilNet, listener, config, std::future::pending()).await?;
                Ok(())
            });
        }
        issuer
    }
}
