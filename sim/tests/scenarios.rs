//! Runs the regressions file first, then every `scenarios/*.toml` under each of its seeds, and
//! checks each scenario's first seed for determinism.

use std::path::{Path, PathBuf};

use warren_sim::scenario::Scenario;

fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios")
}

fn run_and_judge(file: &Path, scenario: &Scenario, seed: u64) {
    let report = warren_sim::simulation::run(&scenario.config(seed));
    if let Err(e) = scenario.judge(&report) {
        panic!(
            "scenario {:?} seed {seed}: {e}\nqueue report: {:?}\nreplay: {}",
            scenario.name,
            report.findings.queue,
            report.replay_command(Some(&file.display().to_string()))
        );
    }
}

#[test]
fn every_scenario_file_behaves_as_expected_under_each_seed() {
    let dir = scenarios_dir();
    for (file, seed) in warren_sim::regressions::load(&dir.join("regressions.txt")).unwrap() {
        let path = dir.join(&file);
        run_and_judge(&path, &Scenario::load(&path).unwrap(), seed);
    }
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "scenarios missing in {}", dir.display());
    for file in files {
        let scenario = Scenario::load(&file).unwrap();
        for &seed in &scenario.seeds {
            run_and_judge(&file, &scenario, seed);
        }
    }
}

#[test]
fn each_scenario_is_deterministic_under_its_first_seed() {
    let mut files: Vec<_> = std::fs::read_dir(scenarios_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for file in files {
        let scenario = Scenario::load(&file).unwrap();
        if let Err(e) =
            warren_sim::simulation::check_determinism(&scenario.config(scenario.seeds[0]))
        {
            panic!("{}: {e}", file.display());
        }
    }
}

#[test]
fn scenario_errors_name_the_problem() {
    let base = "name = 'x'\nseeds = [1]\n[workload]\nclients = 1\nanalyses_per_client = 1\n";
    assert!(Scenario::parse(base).is_ok());
    let unknown_host = format!("{base}[[faults]]\nat_ms = 1\nkind = 'crash'\nhost = 'nope'\n");
    assert!(
        Scenario::parse(&unknown_host)
            .unwrap_err()
            .contains("unknown host \"nope\"")
    );
    let unknown_checker = base.replace("seeds = [1]", "seeds = [1]\nexpect_failing = ['vibes']");
    assert!(
        Scenario::parse(&unknown_checker)
            .unwrap_err()
            .contains("unknown checker")
    );
    let crash_a_client = unknown_host.replace("nope", "client-0");
    assert!(
        Scenario::parse(&crash_a_client)
            .unwrap_err()
            .contains("names client \"client-0\"")
    );
    let typo = base.replace("clients", "clientz");
    assert!(Scenario::parse(&typo).is_err());
    let round_trip = Scenario::parse(
        &Scenario::parse(&unknown_host.replace("nope", "orchestrator-0"))
            .unwrap()
            .to_toml(),
    );
    assert!(round_trip.is_ok(), "{round_trip:?}");
}

#[test]
fn broker_faults_must_name_a_queue_or_exchange_the_system_has() {
    let base = "name = 'x'\nseeds = [1]\n[workload]\nclients = 1\nanalyses_per_client = 1\n";
    let fault = |kind: &str, key: &str, name: &str| {
        format!("{base}[[faults]]\nat_ms = 1\nkind = '{kind}'\n{key} = '{name}'\n")
    };
    // A typo would arm a fault that never fires: the scenario would pass having tested nothing.
    let typo = Scenario::parse(&fault("duplicate-delivery", "queue", "graph.subs.complete"));
    assert!(
        typo.unwrap_err()
            .contains("unknown queue \"graph.subs.complete\""),
    );
    let exchange = Scenario::parse(&fault("nack-publish", "exchange", "analysis.complete"));
    assert!(
        exchange
            .unwrap_err()
            .contains("unknown exchange \"analysis.complete\"")
    );
    assert!(
        Scenario::parse(&fault(
            "duplicate-delivery",
            "queue",
            "graph.subs.completed"
        ))
        .is_ok()
    );
    assert!(Scenario::parse(&fault("nack-publish", "exchange", "analysis.completed")).is_ok());
    // Per-instance gateway queues replace the fixed ones.
    let per_instance = |queue: &str| {
        fault("drop-delivery", "queue", queue).replace(
            "[workload]",
            "[services]\ngateway_queues = 'per-instance'\n[workload]",
        )
    };
    assert!(Scenario::parse(&per_instance("graph.subs.started.gateway-0")).is_ok());
    assert!(Scenario::parse(&per_instance("graph.subs.started")).is_err());
}

#[test]
fn a_fault_the_run_never_reaches_fails_the_scenario() {
    let late = "name = 'late'\nseeds = [1]\n[workload]\nclients = 1\nanalyses_per_client = 1\n\
                [[faults]]\nat_ms = 600000\nkind = 'crash'\nhost = 'orchestrator-0'\n";
    let scenario = Scenario::parse(late).unwrap();
    let report = warren_sim::simulation::run(&scenario.config(1));
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    assert_eq!(report.faults_not_reached.len(), 1);
    let verdict = scenario.judge(&report).unwrap_err();
    assert!(verdict.contains("crash at 600000 ms"), "{verdict}");
    // A repair left over only means its partition lasted to the end: nothing was missed.
    let lasting = "name = 'lasting'\nseeds = [1]\n[workload]\nclients = 1\nanalyses_per_client = 1\n\
                   [[faults]]\nat_ms = 1\nkind = 'partition'\na = 'client-0'\nb = 'orchestrator-0'\n\
                   [[faults]]\nat_ms = 600000\nkind = 'repair'\na = 'client-0'\nb = 'orchestrator-0'\n";
    let scenario = Scenario::parse(lasting).unwrap();
    let report = warren_sim::simulation::run(&scenario.config(1));
    assert!(report.faults_not_reached.is_empty());
    scenario.judge(&report).unwrap();
}

#[test]
fn a_replay_without_a_scenario_file_carries_the_whole_configuration() {
    let file = scenarios_dir().join("gateway-broker-partition.toml");
    let scenario = Scenario::load(&file).unwrap();
    let config = scenario.config(scenario.seeds[0]);
    let replay = Scenario::from_config("replay", &config);
    assert_eq!(replay.config(config.seed), config);
    assert_eq!(
        Scenario::parse(&replay.to_toml())
            .unwrap()
            .config(config.seed),
        config
    );
    // Plain flags when they say everything.
    let plain = warren_sim::SimConfig {
        seed: 5,
        ..warren_sim::SimConfig::default()
    };
    let plain_report = warren_sim::simulation::run(&plain);
    assert!(
        plain_report
            .replay_command(None)
            .starts_with("cargo run -- sim run --seed 5 ")
    );
}

#[test]
fn a_broker_fault_that_never_meets_its_event_is_reported() {
    // Started has gone out by 1 s; the analysis takes 2 s: nothing more leaves the queue.
    let text = "name = 'idle hook'\nseeds = [1]\n[workload]\nclients = 1\nanalyses_per_client = 1\n\
                analysis_ms = 2000\n[[faults]]\nat_ms = 1000\nkind = 'duplicate-delivery'\n\
                queue = 'graph.subs.started'\n";
    let scenario = Scenario::parse(text).unwrap();
    let report = warren_sim::simulation::run(&scenario.config(1));
    assert!(report.faults_not_reached.is_empty());
    assert_eq!(
        report.faults_never_fired,
        ["DuplicateDelivery { queue: \"graph.subs.started\" }"]
    );
    assert!(report.violations.is_empty(), "{:?}", report.violations);
    // A scenario file whose fault tested nothing fails, as one whose fault came too late does.
    let verdict = scenario.judge(&report).unwrap_err();
    assert!(verdict.contains("never met the event"), "{verdict}");
}

#[test]
fn a_link_to_itself_and_a_fault_after_the_heal_are_refused() {
    let base = "name = 'x'\nseeds = [1]\n[workload]\nclients = 1\nanalyses_per_client = 1\n";
    let itself = format!(
        "{base}[[faults]]\nat_ms = 10\nkind = 'partition'\na = 'gateway-0'\nb = 'gateway-0'\n"
    );
    let error = Scenario::parse(&itself).unwrap_err();
    assert!(error.contains("both sides of a link"), "{error}");
    let late = format!(
        "{base}[heal]\nat_ms = 100\n[[faults]]\nat_ms = 500\nkind = 'crash'\nhost = 'orchestrator-0'\n"
    );
    let error = Scenario::parse(&late).unwrap_err();
    assert!(error.contains("after the heal"), "{error}");
}

#[test]
fn a_broker_fault_a_restart_disarmed_is_reported_as_never_fired() {
    // The hook is armed after Started has gone out; the restart disarms it before anything
    // else leaves the queue, so it never fires, though the broker no longer lists it.
    let text = "name = 'disarmed hook'\nseeds = [1]\n[workload]\nclients = 1\nanalyses_per_client = 1\n\
                analysis_ms = 2000\n[[faults]]\nat_ms = 1000\nkind = 'duplicate-delivery'\n\
                queue = 'graph.subs.started'\n[[faults]]\nat_ms = 1500\nkind = 'broker-restart'\n";
    let scenario = Scenario::parse(text).unwrap();
    let report = warren_sim::simulation::run(&scenario.config(1));
    assert!(report.faults_not_reached.is_empty());
    assert_eq!(
        report.faults_applied.get("broker-restart"),
        Some(&1),
        "{:?}",
        report.faults_applied
    );
    assert_eq!(
        report.faults_never_fired,
        ["DuplicateDelivery { queue: \"graph.subs.started\" }"]
    );
}
