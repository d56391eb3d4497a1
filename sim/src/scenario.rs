//! Declarative scenarios: `scenarios/*.toml` files that `cargo test` runs, each a workload and the
//! seeds to run it under.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::simulation::SimConfig;

/// Most seeds one scenario file may list (keeps `cargo test` bounded).
pub const SEEDS_MAX: usize = 64;

/// One scenario file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What the scenario shows.
    pub name: String,
    /// Seeds to run it under.
    pub seeds: Vec<u64>,
    /// Console clients.
    pub clients: usize,
    /// Analyses each client requests.
    pub analyses_per_client: usize,
    /// Simulated duration of each analysis, ms.
    #[serde(default = "default_analysis_ms")]
    pub analysis_ms: u64,
    /// Longest simulated link latency, ms.
    #[serde(default = "default_latency_ms")]
    pub max_latency_ms: u64,
    /// Orchestrator concurrency.
    #[serde(default = "default_concurrency")]
    pub orchestrator_concurrency: u16,
}

fn default_analysis_ms() -> u64 {
    250
}
fn default_latency_ms() -> u64 {
    20
}
fn default_concurrency() -> u16 {
    4
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let scenario: Scenario =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        if scenario.seeds.is_empty() || scenario.seeds.len() > SEEDS_MAX {
            return Err(format!("{}: list 1 to {SEEDS_MAX} seeds", path.display()));
        }
        Ok(scenario)
    }

    /// The simulation configuration for one of its seeds.
    pub fn config(&self, seed: u64) -> SimConfig {
        SimConfig {
            seed,
            clients: self.clients,
            analyses_per_client: self.analyses_per_client,
            analysis_duration: Duration::from_millis(self.analysis_ms),
            max_message_latency: Duration::from_millis(self.max_latency_ms),
            orchestrator_concurrency: self.orchestrator_concurrency,
            ..SimConfig::default()
        }
    }
}
