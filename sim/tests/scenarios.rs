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
    let typo = base.replace("clients", "clientz");
    assert!(Scenario::parse(&typo).is_err());
    let round_trip = Scenario::parse(
        &Scenario::parse(&unknown_host.replace("nope", "orchestrator-0"))
            .unwrap()
            .to_toml(),
    );
    assert!(round_trip.is_ok(), "{round_trip:?}");
}
