//! Faults only an AMQP link on simulated TCP can have: services use the wire client
//! (`ports::wire::WireBus`) to broker-mem's AMQP server on the `broker` host, so partitions
//! between a service and the broker are real network faults that only heartbeats can notice
//! (turmoil never retransmits). The flow tests both links share are in `simulated_flow.rs`.

mod support;

use std::time::Duration;

use support::{assert_clean, on};
use warren_sim::SimConfig;
use warren_sim::faults::{Fault, ScheduledFault};
use warren_sim::journal::Action;
use warren_sim::simulation::{BrokerLink, check_determinism, run};

fn wire(config: SimConfig) -> SimConfig {
    on(BrokerLink::Wire, config)
}

/// The orchestrator loses its AMQP link while it holds commands: both sides notice through
/// missed heartbeats, the broker requeues the in-flight commands, and after the link heals the
/// orchestrator reconnects, consumes again and gets them redelivered. Every client still sees
/// exactly one Started then one Completed per analysis.
#[test]
fn an_orchestrator_cut_off_from_the_broker_mid_flow_gets_its_commands_redelivered() {
    let config = wire(SimConfig {
        seed: 3,
        clients: 2,
        analyses_per_client: 3,
        analysis_duration: Duration::from_secs(3),
        faults: vec![
            ScheduledFault {
                at_ms: 1_000,
                fault: Fault::Partition {
                    a: "orchestrator-0".into(),
                    b: "broker".into(),
                },
            },
            ScheduledFault {
                at_ms: 8_000,
                fault: Fault::Repair {
                    a: "orchestrator-0".into(),
                    b: "broker".into(),
                },
            },
        ],
        ..SimConfig::default()
    });
    let report = check_determinism(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_clean(&report);
    assert_eq!(report.faults_applied.get("partition"), Some(&1));
    let redelivered = report
        .journal
        .iter()
        .filter(|e| e.host == "orchestrator-0" && e.redelivered)
        .filter(|e| matches!(e.action, Action::Delivered))
        .count();
    assert!(
        redelivered > 0,
        "the in-flight commands came back redelivered after the link healed"
    );
}

/// The broker host crashes and comes back (its state survives: broker-mem outlives the host's
/// process here, as a durable broker's would): every service loses its AMQP connection,
/// reconnects with backoff, declares again and consumes again.
#[test]
fn services_reconnect_after_the_broker_host_restarts() {
    let config = wire(SimConfig {
        seed: 5,
        clients: 2,
        analyses_per_client: 3,
        analysis_duration: Duration::from_secs(2),
        faults: vec![
            ScheduledFault {
                at_ms: 1_500,
                fault: Fault::Crash {
                    host: "broker".into(),
                },
            },
            ScheduledFault {
                at_ms: 4_000,
                fault: Fault::Restart {
                    host: "broker".into(),
                },
            },
        ],
        ..SimConfig::default()
    });
    let report = run(&config);
    assert_clean(&report);
    assert_eq!(report.faults_applied.get("crash"), Some(&1));
}
