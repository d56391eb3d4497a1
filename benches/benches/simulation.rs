//! What a simulated run costs: wall time per simulated analysis on the happy path, and time
//! compression (simulated seconds per wall second) on a scenario with long analyses.
//!
//! `cargo bench -p warren-benches --bench simulation`

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use warren_sim::SimConfig;
use warren_sim::simulation::run;

fn happy_path() -> SimConfig {
    SimConfig {
        seed: 1,
        clients: 3,
        analyses_per_client: 4,
        ..SimConfig::default()
    }
}

fn long_analyses() -> SimConfig {
    SimConfig {
        seed: 1,
        clients: 2,
        analyses_per_client: 3,
        analysis_duration: Duration::from_secs(600),
        orchestrator_concurrency: 6,
        ..SimConfig::default()
    }
}

fn bench_simulation(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulation");
    group.sample_size(10);

    let config = happy_path();
    let analyses = (config.clients * config.analyses_per_client) as u64;
    group.throughput(Throughput::Elements(analyses));
    group.bench_function("happy_path_12_analyses", |b| {
        b.iter(|| assert!(run(&config).violations.is_empty()))
    });

    let config = long_analyses();
    let simulated = run(&config).simulated;
    group.throughput(Throughput::Elements(1));
    group.bench_function("long_analyses_600s_each", |b| {
        b.iter(|| assert!(run(&config).violations.is_empty()))
    });
    group.finish();
    // Criterion prints the wall time per run; this is the simulated time one run covers, so the
    // time compression is `simulated / wall`.
    println!(
        "simulation/long_analyses_600s_each covers {:.1} s of simulated time per run",
        simulated.as_secs_f64()
    );
}

criterion_group!(benches, bench_simulation);
criterion_main!(benches);
