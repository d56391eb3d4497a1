//! The whole flow inside turmoil: several clients, many analyses, one seed, and the same trace
//! twice. One set of flow tests, run for both broker links: `in_process` (the memory adapter on
//! the shared in-process broker) and `wire` (the wire client over turmoil TCP to broker-mem's
//! AMQP server on the `broker` host). The wire-only fault tests (partitions, broker crashes) are
//! in `wire_flow.rs`.

mod support;

use std::time::Duration;

use support::{assert_clean, on};
use warren_sim::SimConfig;
use warren_sim::simulation::{BrokerLink, check_determinism, run};

/// `clients` clients of `analyses_per_client` analyses each, everything else default.
fn flow(link: BrokerLink, seed: u64, clients: usize, analyses_per_client: usize) -> SimConfig {
    on(
        link,
        SimConfig {
            seed,
            clients,
            analyses_per_client,
            ..SimConfig::default()
        },
    )
}

fn every_client_sees_started_then_completed_for_each_of_its_analyses(link: BrokerLink) {
    let config = flow(link, 7, 4, 5);
    let report = check_determinism(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_clean(&report);
    assert_eq!(report.findings.queue.accepted, 20);
    assert_eq!(report.findings.queue.completed, 20);
    let analyses: usize = report.clients.values().map(|c| c.analyses.len()).sum();
    assert_eq!(analyses, 20);
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

fn same_seed_same_trace_and_other_seeds_differ(link: BrokerLink) {
    let config = flow(link, 11, 2, 3);
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

/// Each seed's flow passes with `clients` clients of three analyses each, analyses taking
/// `analysis_duration`, and messages up to 100 ms late.
fn seeds_pass(
    link: BrokerLink,
    seeds: impl IntoIterator<Item = u64>,
    clients: usize,
    analysis_duration: Duration,
) {
    for seed in seeds {
        let config = on(
            link,
            SimConfig {
                seed,
                clients,
                analyses_per_client: 3,
                analysis_duration,
                max_message_latency: Duration::from_millis(100),
                ..SimConfig::default()
            },
        );
        assert_clean(&run(&config));
    }
}

fn many_seeds_pass_with_slow_analyses_and_slow_links(link: BrokerLink) {
    seeds_pass(link, 100..106, 3, Duration::from_secs(2));
}

fn other_seeds_pass_with_one_second_analyses_and_slow_links(link: BrokerLink) {
    seeds_pass(link, [11, 12, 101], 2, Duration::from_secs(1));
}

fn trace_difference_names_the_first_differing_event(link: BrokerLink) {
    let config = flow(link, 3, 1, 1);
    let a = run(&config).trace;
    let mut b = a.clone();
    b.lines[2].what.push_str(" tampered");
    let difference = a.first_difference(&b).expect("traces differ");
    assert!(difference.starts_with("event 2 differs"), "{difference}");
    assert_eq!(a.first_difference(&a.clone()), None);
}

macro_rules! link {
    ($module:ident, $link:expr) => {
        mod $module {
            link!(@tests $link;
                every_client_sees_started_then_completed_for_each_of_its_analyses,
                same_seed_same_trace_and_other_seeds_differ,
                many_seeds_pass_with_slow_analyses_and_slow_links,
                other_seeds_pass_with_one_second_analyses_and_slow_links,
                trace_difference_names_the_first_differing_event
            );
        }
    };
    (@tests $link:expr; $($test:ident),*) => {
        $(
            #[test]
            fn $test() {
                super::$test($link);
            }
        )*
    };
}

link!(in_process, warren_sim::simulation::BrokerLink::InProcess);
link!(wire, warren_sim::simulation::BrokerLink::Wire);
