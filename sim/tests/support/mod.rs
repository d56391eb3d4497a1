//! Helpers shared by the flow test binaries (`simulated_flow.rs`, `wire_flow.rs`).

use warren_sim::SimConfig;
use warren_sim::simulation::BrokerLink;

pub fn assert_clean(report: &warren_sim::SimReport) {
    assert!(
        report.violations.is_empty(),
        "violations:\n{}\nreplay: {}",
        report.violations.join("\n"),
        report.replay_command(None)
    );
}

/// `config` with the services reaching broker-mem over `broker_link`.
pub fn on(broker_link: BrokerLink, config: SimConfig) -> SimConfig {
    SimConfig {
        broker_link,
        ..config
    }
}
