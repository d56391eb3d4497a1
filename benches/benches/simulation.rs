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

    group.throughput(Throughput::Elements(1));
    let mut covered = Vec::new();
    for tick_ms in [1, 10] {
        let config = SimConfig {
            tick: Duration::from_millis(tick_ms),
            ..long_analyses()
        };
        covered.push((tick_ms, run(&config).simulated));
        group.bench_function(format!("long_analyses_600s_each_tick_{tick_ms}ms"), |b| {
            b.iter(|| assert!(run(&config).violations.is_empty()))
        });
    }
    group.finish();
    // Criterion prints the wall time per run; this is the simulated time one run covers, so the
    // time compression is `simulated / wall`.
    for (tick_ms, simulated) in covered {
        println!(
            "simulation/long_analyses_600s_each_tick_{tick_ms}ms covers {:.1} s of simulated time per run",
            simulated.as_secs_f64()
        );
    }
}

criterion_group!(benches, bench_simulation);
criterion_main!(benches);
