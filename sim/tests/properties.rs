//! Property tests: proptest draws workloads and fault schedules (swarm-style: each case enables
//! a random subset of fault kinds) and every checker must pass once the system has healed. A
//! failure shrinks to a minimal scenario, printed as TOML ready to paste into `scenarios/`.

use proptest::prelude::*;
use warren_sim::swarm::scenario_strategy;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    // Seeds a scenario file can hold (TOML integers are signed).
    fn generated_workloads_and_faults_keep_every_promise(scenario in scenario_strategy(), seed in 0..=i64::MAX as u64) {
        let mut report = warren_sim::simulation::run(&scenario.config(seed));
        let pasteable = scenario.replaying(seed, &report);
        // The swarm draws fault times and targets without knowing how the run will go: a fault
        // drawn past its end, or a hook whose queue delivered nothing after it, tested nothing,
        // but is no failure of the system.
        report.faults_not_reached.clear();
        report.faults_never_fired.clear();
        prop_assert!(
            scenario.judge(&report).is_ok(),
            "{}\nqueue report: {:?}\nminimal scenario (paste into scenarios/):\n{}",
            scenario.judge(&report).unwrap_err(),
            report.findings.queue,
            pasteable.to_toml()
        );
    }
}

#[test]
fn the_same_seed_draws_the_same_swarm_scenario() {
    let a = warren_sim::swarm::scenario_for_seed(9);
    assert_eq!(a, warren_sim::swarm::scenario_for_seed(9));
    let differs =
        (10..20).any(|s| warren_sim::swarm::scenario_for_seed(s).to_toml() != a.to_toml());
    assert!(differs);
}

#[test]
fn a_broken_expectation_fails_and_prints_pasteable_toml() {
    // The checkers can fail: expecting `lost` on a healthy run is reported, with the difference.
    let mut scenario = warren_sim::swarm::scenario_for_seed(1);
    scenario.faults.clear();
    scenario.expect_failing = vec!["lost".into()];
    let report = warren_sim::simulation::run(&scenario.config(1));
    let error = scenario.judge(&report).unwrap_err();
    assert!(error.contains("expected to fail but passed"), "{error}");
    assert!(warren_sim::scenario::Scenario::parse(&scenario.to_toml()).is_ok());
}

#[test]
fn a_printed_scenario_replays_its_run_without_the_faults_it_never_reached() {
    // A run that ends long before its last fault.
    let mut scenario = warren_sim::swarm::scenario_for_seed(1);
    scenario.faults = vec![warren_sim::faults::ScheduledFault {
        at_ms: 3_600_000,
        fault: warren_sim::faults::Fault::BrokerRestart,
    }];
    let seed = i64::MAX as u64;
    let report = warren_sim::simulation::run(&scenario.config(seed));
    assert_eq!(report.faults_not_reached.len(), 1);
    let printed = scenario.replaying(seed, &report).to_toml();
    let replay =
        warren_sim::scenario::Scenario::parse(&printed).expect("the printed scenario parses");
    assert!(replay.faults.is_empty(), "{printed}");
    let again = warren_sim::simulation::run(&replay.config(seed));
    assert!(again.faults_not_reached.is_empty());
    assert_eq!(
        again.trace_hash, report.trace_hash,
        "the replay runs as the original did"
    );
}
