//! The whole flow inside turmoil: several clients, many analyses, one seed, and the same trace
//! twice.

use std::time::Duration;

use warren_sim::SimConfig;
use warren_sim::simulation::{check_determinism, run};

fn assert_clean(report: &warren_sim::SimReport) {
    assert!(
        report.violations.is_empty(),
        "violations:\n{}\nreplay: {}",
        report.violations.join("\n"),
        report.replay_command(None)
    );
}

#[test]
fn every_client_sees_started_then_completed_for_each_of_its_analyses() {
    let config = SimConfig {
        seed: 7,
        clients: 4,
        analyses_per_client: 5,
        ..SimConfig::default()
    };
    let report = check_determinism(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_clean(&report);
    assert_eq!(report.findings.queue.accepted, 20);
    assert_eq!(report.findings.queue.completed, 20);
    assert!(
        report
            .trace
            .lines
            .iter()
            .any(|l| l.host == "orchestrator-0"),
        "orchestrator events are traced"
    );
    assert!(
        report.trace.lines.iter().any(|l| l.host == "client-0"),
        "client events are traced"
    );
}

#[test]
fn same_seed_same_trace_and_other_seeds_differ() {
    let config = SimConfig {
        seed: 11,
        clients: 2,
        analyses_per_client: 3,
        ..SimConfig::default()
    };
    let a = run(&config);
    let b = run(&config);
    assert_clean(&a);
    assert_eq!(
        a.trace_hash,
        b.trace_hash,
        "{}",
        a.trace.first_difference(&b.trace).unwrap_or_default()
    );
    let c = run(&SimConfig { seed: 12, ..config });
    assert_clean(&c);
    assert_ne!(
        a.trace_hash, c.trace_hash,
        "a different seed should change timings"
    );
}

#[test]
fn many_seeds_pass_with_slow_analyses_and_slow_links() {
    for seed in 100..106 {
        let config = SimConfig {
            seed,
            clients: 3,
            analyses_per_client: 3,
            analysis_duration: Duration::from_secs(2),
            max_message_latency: Duration::from_millis(100),
            ..SimConfig::default()
        };
        assert_clean(&run(&config));
    }
}

#[test]
fn trace_difference_names_the_first_differing_event() {
    let config = SimConfig {
        seed: 3,
        clients: 1,
        analyses_per_client: 1,
        ..SimConfig::default()
    };
    let a = run(&config).trace;
    let mut b = a.clone();
    b.lines[2].what.push_str(" tampered");
    let difference = a.first_difference(&b).expect("traces differ");
    assert!(difference.starts_with("event 2 differs"), "{difference}");
    assert_eq!(a.first_difference(&a.clone()), None);
}
