//! Completed analyses per second through the whole flow: client → gateway (HTTP + WebSocket) →
//! broker → orchestrator → broker → gateway → client, with zero-length analyses so the figure is
//! the system's overhead. Embedded on broker-mem and on RabbitMQ, in one run.
//!
//! `cargo bench -p warren-benches --bench flow`

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use warren_sim::{BrokerChoice, RunningSystem, SystemConfig};

/// Analyses in flight per measured batch.
const BATCH: usize = 32;

fn system_config(broker: BrokerChoice) -> SystemConfig {
    SystemConfig {
        listen: "127.0.0.1:0".into(),
        broker,
        analysis_duration: Duration::ZERO,
        orchestrator_concurrency: 32,
        edge: None,
    }
}

fn bench_flow(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let mut group = c.benchmark_group("completed_analyses");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.measurement_time(Duration::from_secs(10));

    let embedded = rt
        .block_on(RunningSystem::start(system_config(BrokerChoice::Embedded)))
        .expect("embedded system");
    let url = embedded.graphql_url();
    group.bench_function("embedded_broker_mem", |b| {
        b.to_async(&rt).iter(|| async {
            warren_benches::complete_analyses(&url, BATCH)
                .await
                .expect("flow")
        })
    });
    rt.block_on(embedded.stop()).expect("stop");

    match rt.block_on(warren_benches::rabbitmq_url()) {
        Some(amqp) => {
            let system = rt
                .block_on(RunningSystem::start(system_config(BrokerChoice::RabbitMq(
                    amqp.amqp_url().to_owned(),
                ))))
                .expect("system on RabbitMQ");
            let url = system.graphql_url();
            group.bench_function("rabbitmq", |b| {
                b.to_async(&rt).iter(|| async {
                    warren_benches::complete_analyses(&url, BATCH)
                        .await
                        .expect("flow")
                })
            });
            rt.block_on(system.stop()).expect("stop");
            rt.block_on(amqp.delete()).expect("delete bench vhost");
        }
        None => eprintln!("SKIPPED completed_analyses/rabbitmq: RabbitMQ not reachable"),
    }
    group.finish();
}

criterion_group!(benches, bench_flow);
criterion_main!(benches);
