//! Runs every `scenarios/*.toml` under each of its seeds.

use std::path::Path;

use warren_sim::scenario::Scenario;

#[test]
fn every_scenario_file_passes_under_each_seed() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no scenarios in {}", dir.display());
    for file in files {
        let scenario = Scenario::load(&file).unwrap();
        for &seed in &scenario.seeds {
            let report = warren_sim::simulation::run(&scenario.config(seed));
            assert!(
                report.violations.is_empty(),
                "scenario {:?} ({}) seed {seed}:\n{}\nreplay: {}",
                scenario.name,
                file.display(),
                report.violations.join("\n"),
                report.replay_command()
            );
        }
    }
}
