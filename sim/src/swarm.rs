//! Generated scenarios: a workload and a fault schedule drawn from a strategy, swarm-style (each
//! case enables a random subset of fault kinds, so rare combinations get room to happen).
//!
//! The same proptest strategy serves the property tests (which shrink a failure to a minimal
//! scenario, printed as TOML to paste into `scenarios/`) and `warren sim explore --swarm`
//! (which draws one scenario per seed, deterministically).

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::faults::{Fault, ScheduledFault};
use crate::scenario::{Heal, Network, Scenario, Services, Workload};

/// Fault kinds a swarm case can enable.
const KINDS: [&str; 9] = [
    "orchestrator-crash",
    "client-partition",
    "client-hold",
    "latency",
    "broker-restart",
    "duplicate-delivery",
    "nack-publish",
    "delay-delivery",
    "close-consumer-channels",
];

/// Latest start of a generated fault.
const FAULT_START_MAX_MS: u64 = 6_000;
/// Span a fault may start in beyond the workload's own (connecting, first requests).
const FAULT_START_MIN_SPAN_MS: u64 = 500;

/// Queues a delivery fault (duplicate, delay, closed consumer channels) can hit.
const QUEUES: [&str; 3] = [
    contracts::QUEUE_COMMANDS,
    contracts::QUEUE_SUBS_STARTED,
    contracts::QUEUE_SUBS_COMPLETED,
];

/// Exchanges a nack-publish fault can hit.
const EXCHANGES: [&str; 3] = [
    contracts::EXCHANGE_COMMANDS,
    contracts::EXCHANGE_STARTED,
    contracts::EXCHANGE_COMPLETED,
];

/// A generated scenario: small enough to run in well under a second.
pub fn scenario_strategy() -> impl Strategy<Value = Scenario> {
    (
        1usize..=3,
        1usize..=3,
        1usize..=3,
        1usize..=4,
        0u64..=3_000,
        0u64..=2_000,
        1u64..=100,
    )
        .prop_flat_map(
            |(
                clients,
                orchestrators,
                analyses,
                concurrency,
                analysis_ms,
                spread_ms,
                latency_ms,
            )| {
                let enabled = proptest::bits::u16::between(0, KINDS.len());
                (
                    Just((
                        clients,
                        orchestrators,
                        analyses,
                        concurrency,
                        analysis_ms,
                        spread_ms,
                        latency_ms,
                    )),
                    enabled,
                )
            },
        )
        .prop_flat_map(|(shape, enabled)| {
            let (clients, orchestrators, analyses, concurrency, analysis_ms, spread_ms, _) = shape;
            // Faults start while the workload is still running, as far as its shape tells: a
            // fault that starts once everything is done tests nothing.
            let rounds = (clients * analyses).div_ceil(orchestrators * concurrency) as u64;
            let busy_ms = (FAULT_START_MIN_SPAN_MS + spread_ms + rounds * analysis_ms)
                .min(FAULT_START_MAX_MS);
            let faults = proptest::collection::vec(
                fault_pair(clients, orchestrators, enabled, busy_ms),
                0..=4,
            );
            (Just(shape), faults)
        })
        .prop_map(
            |(
                (clients, orchestrators, analyses, concurrency, analysis_ms, spread_ms, latency_ms),
                pairs,
            )| {
                let mut faults: Vec<ScheduledFault> = pairs.into_iter().flatten().collect();
                faults.sort();
                Scenario {
                    name: "generated".into(),
                    seeds: vec![0],
                    expect_failing: Vec::new(),
                    services: Services {
                        orchestrators,
                        gateways: 1,
                        orchestrator_concurrency: concurrency as u16,
                        ..Services::default()
                    },
                    workload: Workload {
                        clients,
                        analyses_per_client: analyses,
                        arrival_spread_ms: spread_ms,
                        analysis_ms,
                        failing_every: 0,
                    },
                    network: Network {
                        max_latency_ms: latency_ms,
                        ..Network::default()
                    },
                    faults,
                    heal: Heal {
                        at_ms: None,
                        converge_within_ms: 120_000,
                    },
                }
            },
        )
}

/// A fault and the step that undoes it, from the kinds this case enabled.
/// `busy_ms`: the latest start drawn.
fn fault_pair(
    clients: usize,
    orchestrators: usize,
    enabled: u16,
    busy_ms: u64,
) -> impl Strategy<Value = Vec<ScheduledFault>> {
    let kinds: Vec<usize> = (0..KINDS.len())
        .filter(|k| enabled & (1 << k) != 0)
        .collect();
    let kind = if kinds.is_empty() {
        Just(usize::MAX).boxed()
    } else {
        proptest::sample::select(kinds).boxed()
    };
    (
        kind,
        0u64..=busy_ms,
        100u64..=6_000,
        0..clients,
        0..orchestrators,
        50u64..=400,
    )
        .prop_map(
            move |(kind, at_ms, lasting_ms, client, orchestrator, latency_ms)| {
                let client = format!("client-{client}");
                let gateway = "gateway-0".to_owned();
                let orchestrator = format!("orchestrator-{orchestrator}");
                let at = |ms: u64, fault: Fault| ScheduledFault { at_ms: ms, fault };
                let end = at_ms + lasting_ms;
                match kind {
                    0 => vec![
                        at(
                            at_ms,
                            Fault::Crash {
                                host: orchestrator.clone(),
                            },
                        ),
                        at(end, Fault::Restart { host: orchestrator }),
                    ],
                    1 => vec![
                        at(
                            at_ms,
                            Fault::Partition {
                                a: client.clone(),
                                b: gateway.clone(),
                            },
                        ),
                        at(
                            end,
                            Fault::Repair {
                                a: client,
                                b: gateway,
                            },
                        ),
                    ],
                    2 => vec![
                        at(
                            at_ms,
                            Fault::Hold {
                                a: client.clone(),
                                b: gateway.clone(),
                            },
                        ),
                        at(
                            end,
                            Fault::Release {
                                a: client,
                                b: gateway,
                            },
                        ),
                    ],
                    3 => vec![at(at_ms, Fault::Latency { max_ms: latency_ms })],
                    4 => vec![at(at_ms, Fault::BrokerRestart)],
                    5 => vec![at(
                        at_ms,
                        Fault::DuplicateDelivery {
                            queue: QUEUES[(latency_ms % 3) as usize].to_owned(),
                        },
                    )],
                    6 => vec![at(
                        at_ms,
                        Fault::NackPublish {
                            exchange: EXCHANGES[(latency_ms % 3) as usize].to_owned(),
                        },
                    )],
                    7 => vec![at(
                        at_ms,
                        Fault::DelayDelivery {
                            queue: QUEUES[(latency_ms % 3) as usize].to_owned(),
                            delay_ms: latency_ms,
                        },
                    )],
                    8 => vec![at(
                        at_ms,
                        Fault::CloseConsumerChannels {
                            queue: QUEUES[(latency_ms % 3) as usize].to_owned(),
                        },
                    )],
                    _ => Vec::new(),
                }
            },
        )
}

/// The scenario that `seed` draws from [`scenario_strategy`]: the same seed always gives the same
/// scenario, in any process.
pub fn scenario_for_seed(seed: u64) -> Scenario {
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes);
    let mut runner = TestRunner::new_with_rng(Config::default(), rng);
    let mut scenario = scenario_strategy()
        .new_tree(&mut runner)
        .expect("strategy generates")
        .current();
    scenario.name = format!("swarm seed {seed}");
    scenario.seeds = vec![seed];
    scenario
}
