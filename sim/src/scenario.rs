//! Declarative scenarios: `scenarios/*.toml`, each a system shape, a workload, a fault schedule,
//! the seeds to run it under, and the expected outcome (every checker passes, or the named
//! checkers must fail). `cargo test` runs every file (`sim/tests/scenarios.rs`).

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checker::CHECKERS;
use crate::faults::{Fault, ScheduledFault};
use crate::simulation::{BrokerLink, GatewayQueues, SimConfig, SimReport};

/// Most seeds one scenario file may list (keeps `cargo test` bounded).
pub const SEEDS_MAX: usize = 64;
/// Most faults one scenario may schedule.
pub const FAULTS_MAX: usize = 256;

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows.
    pub name: String,
    /// Seeds to run it under.
    pub seeds: Vec<u64>,
    /// Checkers that must fail (every other must pass); empty: all must pass.
    #[serde(default)]
    pub expect_failing: Vec<String>,
    /// The system's shape.
    #[serde(default)]
    pub services: Services,
    /// What the clients do.
    pub workload: Workload,
    /// The network.
    #[serde(default)]
    pub network: Network,
    /// Faults at simulated times.
    #[serde(default)]
    pub faults: Vec<ScheduledFault>,
    /// The heal phase.
    #[serde(default)]
    pub heal: Heal,
}

/// Replicas of each service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Services {
    /// Orchestrators (competing consumers).
    pub orchestrators: usize,
    /// Gateways.
    pub gateways: usize,
    /// Orchestrator concurrency (prefetch).
    pub orchestrator_concurrency: u16,
    /// `shared` (the contract's fixed queue names) or `per-instance` event queues per gateway.
    pub gateway_queues: GatewayQueues,
    /// `in-process` (the memory adapter) or `wire` (AMQP over simulated TCP to a `broker` host).
    pub broker_link: BrokerLink,
    /// Put the edge (issuer, auth proxy, Kong role) in front of every gateway.
    pub with_edge: bool,
}

impl Default for Services {
    fn default() -> Self {
        Services {
            orchestrators: 1,
            gateways: 1,
            orchestrator_concurrency: 4,
            gateway_queues: GatewayQueues::Shared,
            broker_link: BrokerLink::InProcess,
            with_edge: false,
        }
    }
}

/// The clients' workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workload {
    /// Console clients (one user each).
    pub clients: usize,
    /// Analyses per client.
    pub analyses_per_client: usize,
    /// Each client's analyses start evenly over this window, ms (0: all at once).
    #[serde(default)]
    pub arrival_spread_ms: u64,
    /// Simulated duration of each analysis, ms.
    #[serde(default = "default_analysis_ms")]
    pub analysis_ms: u64,
    /// Every n-th analysis fails on purpose (0: none).
    #[serde(default)]
    pub failing_every: usize,
}

/// Link behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Network {
    /// Longest message latency, ms.
    pub max_latency_ms: u64,
    /// Simulated time per step, ms (the time resolution).
    pub tick_ms: u64,
}

impl Default for Network {
    fn default() -> Self {
        Network {
            max_latency_ms: 20,
            tick_ms: 1,
        }
    }
}

/// When healing starts and how long convergence may take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Heal {
    /// Start of the heal phase, ms; default just after the last fault.
    pub at_ms: Option<u64>,
    /// All accepted work must finish within this long after healing, ms.
    pub converge_within_ms: u64,
}

impl Default for Heal {
    fn default() -> Self {
        Heal {
            at_ms: None,
            converge_within_ms: 120_000,
        }
    }
}

fn default_analysis_ms() -> u64 {
    250
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Scenario::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates scenario TOML.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let scenario: Scenario = toml::from_str(text).map_err(|e| e.to_string())?;
        scenario.validate()?;
        Ok(scenario)
    }

    /// The scenario that runs `config` (under its seed): the inverse of [`Scenario::config`].
    pub fn from_config(name: &str, config: &SimConfig) -> Scenario {
        Scenario {
            name: name.to_owned(),
            seeds: vec![config.seed],
            expect_failing: Vec::new(),
            services: Services {
                orchestrators: config.orchestrators,
                gateways: config.gateways,
                orchestrator_concurrency: config.orchestrator_concurrency,
                gateway_queues: config.gateway_queues,
                broker_link: config.broker_link,
                with_edge: config.with_edge,
            },
            workload: Workload {
                clients: config.clients,
                analyses_per_client: config.analyses_per_client,
                arrival_spread_ms: config.arrival_spread.as_millis() as u64,
                analysis_ms: config.analysis_duration.as_millis() as u64,
                failing_every: config.failing_every,
            },
            network: Network {
                max_latency_ms: config.max_message_latency.as_millis() as u64,
                tick_ms: config.tick.as_millis() as u64,
            },
            faults: config.faults.clone(),
            heal: Heal {
                at_ms: config.heal_at.map(|at| at.as_millis() as u64),
                converge_within_ms: config.converge_within.as_millis() as u64,
            },
        }
    }

    /// This scenario as a file that replays `report`'s run of `seed`: that seed alone, without
    /// the faults the run ended before (a scenario file must reach all of its faults), and with
    /// the heal time they had set kept, so that the replay runs the same.
    pub fn replaying(&self, seed: u64, report: &SimReport) -> Scenario {
        let mut scenario = self.clone();
        scenario.seeds = vec![seed];
        if scenario.heal.at_ms.is_none() && !report.faults_not_reached.is_empty() {
            let heal = self.config(seed).heal_time().as_millis();
            scenario.heal.at_ms = Some(u64::try_from(heal).unwrap_or(u64::MAX));
        }
        scenario
            .faults
            .retain(|f| !report.faults_not_reached.contains(f));
        scenario
    }

    /// The scenario as TOML, ready to paste into `scenarios/`.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("scenarios serialize")
    }

    fn validate(&self) -> Result<(), String> {
        if self.seeds.is_empty() || self.seeds.len() > SEEDS_MAX {
            return Err(format!("list 1 to {SEEDS_MAX} seeds"));
        }
        if self.faults.len() > FAULTS_MAX {
            return Err(format!("at most {FAULTS_MAX} faults"));
        }
        if self.services.orchestrators == 0
            || self.services.gateways == 0
            || self.workload.clients == 0
        {
            return Err("orchestrators, gateways and clients must each be at least 1".into());
        }
        if let Some(unknown) = self
            .expect_failing
            .iter()
            .find(|c| !CHECKERS.contains(&c.as_str()))
        {
            return Err(format!(
                "unknown checker {unknown:?}; checkers are {CHECKERS:?}"
            ));
        }
        let config = self.config(0);
        let hosts = config.hosts();
        let (queues, exchanges) = config.broker_names();
        let clients = config.client_hosts();
        for fault in &self.faults {
            // Clients are turmoil clients, not hosts: they cannot crash or restart.
            if let Fault::Crash { host } | Fault::Restart { host } = &fault.fault
                && clients.contains(host)
            {
                return Err(format!(
                    "fault at {} ms: {} names client {host:?}; only service hosts crash and \
                     restart (partition or hold a client instead)",
                    fault.at_ms,
                    fault.fault.kind()
                ));
            }
            // The broker arms a fault on any name; one that names nothing would never fire.
            if let Some(queue) = fault.fault.queue().filter(|q| !queues.contains(*q)) {
                return Err(format!(
                    "fault at {} ms names unknown queue {queue:?}; queues are {queues:?}",
                    fault.at_ms
                ));
            }
            if let Some(exchange) = fault.fault.exchange().filter(|x| !exchanges.contains(*x)) {
                return Err(format!(
                    "fault at {} ms names unknown exchange {exchange:?}; exchanges are {exchanges:?}",
                    fault.at_ms
                ));
            }
            if let Some(host) = fault
                .fault
                .hosts()
                .into_iter()
                .find(|h| !hosts.iter().any(|x| x == h))
            {
                return Err(format!(
                    "fault at {} ms names unknown host {host:?}; hosts are {hosts:?}",
                    fault.at_ms
                ));
            }
            // A link between a host and itself is no link.
            if let [a, b] = fault.fault.hosts().as_slice()
                && a == b
            {
                return Err(format!(
                    "fault at {} ms: {} names {a:?} on both sides of a link",
                    fault.at_ms,
                    fault.fault.kind()
                ));
            }
            // Healing runs once: a fault after it would last to the deadline, and the run
            // would report the system stuck.
            if let Some(heal) = self.heal.at_ms
                && fault.at_ms > heal
            {
                return Err(format!(
                    "fault at {} ms comes after the heal at {heal} ms; heal later, or leave \
                     heal.at_ms out (it is then just after the last fault)",
                    fault.at_ms
                ));
            }
        }
        Ok(())
    }

    /// The simulation configuration for one seed.
    pub fn config(&self, seed: u64) -> SimConfig {
        SimConfig {
            seed,
            clients: self.workload.clients,
            analyses_per_client: self.workload.analyses_per_client,
            arrival_spread: Duration::from_millis(self.workload.arrival_spread_ms),
            failing_every: self.workload.failing_every,
            analysis_duration: Duration::from_millis(self.workload.analysis_ms),
            orchestrators: self.services.orchestrators,
            gateways: self.services.gateways,
            orchestrator_concurrency: self.services.orchestrator_concurrency,
            max_message_latency: Duration::from_millis(self.network.max_latency_ms),
            faults: self.faults.clone(),
            heal_at: self.heal.at_ms.map(Duration::from_millis),
            converge_within: Duration::from_millis(self.heal.converge_within_ms),
            with_edge: self.services.with_edge,
            broker_link: self.services.broker_link,
            gateway_queues: self.services.gateway_queues,
            tick: Duration::from_millis(self.network.tick_ms.max(1)),
        }
    }

    /// Whether a run came out as the scenario expects; `Err` says how it did not.
    pub fn judge(&self, report: &SimReport) -> Result<(), String> {
        if let Some(e) = &report.run_error {
            return Err(format!("the simulation itself failed: {e}"));
        }
        if !report.faults_not_reached.is_empty() {
            let missed: Vec<String> = (report.faults_not_reached.iter())
                .map(|f| format!("{} at {} ms", f.fault.kind(), f.at_ms))
                .collect();
            return Err(format!(
                "the run was over after {} ms, before these faults: {}; schedule them earlier",
                report.simulated.as_millis(),
                missed.join(", ")
            ));
        }
        if !report.faults_never_fired.is_empty() {
            return Err(format!(
                "these broker faults never met the event they wait for, so they tested nothing: \
                 {}; aim them at a queue or exchange that is used after their time",
                report.faults_never_fired.join(", ")
            ));
        }
        let failing = report.findings.failing();
        let expected: BTreeSet<&str> = self.expect_failing.iter().map(String::as_str).collect();
        if failing == expected {
            return Ok(());
        }
        let unexpected: Vec<_> = report
            .violations
            .iter()
            .filter(|v| !expected.iter().any(|c| v.starts_with(&format!("[{c}]"))))
            .cloned()
            .collect();
        let missing: Vec<_> = expected.difference(&failing).collect();
        Err(format!(
            "expected failing checkers {expected:?}, got {failing:?}{}{}",
            if missing.is_empty() {
                String::new()
            } else {
                format!("; expected to fail but passed: {missing:?}")
            },
            if unexpected.is_empty() {
                String::new()
            } else {
                format!("\n{}", unexpected.join("\n"))
            }
        ))
    }
}
