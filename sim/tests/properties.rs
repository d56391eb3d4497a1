//! Property tests: proptest draws workloads and fault schedules (swarm-style: each case enables
//! a random subset of fault kinds) and every checker must pass once the system has healed. A
//! failure shrinks to a minimal scenario, printed as TOML ready to paste into `scenarios/`.

use proptest::prelude::*;
use warren_sim::swarm::scenario_strategy;

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn generated_workloads_and_faults_keep_every_promise(scenario in scenario_strategy(), seed in any::<u64>()) {
        let mut report = warren_sim::simulation::run(&scenario.config(seed));
        // The swarm draws fault times without knowing how long the run will be: a fault drawn
        // past its end tested nothing, but is no failure of the system.
        report.faults_not_reached.clear();
        let mut pasteable = scenario.clone();
        pasteable.seeds = vec![seed];
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
