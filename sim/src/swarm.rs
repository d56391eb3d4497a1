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
            let (clients, orchestrators, analyses, concurrency, analysis_ms, spread_ms, latency_ms) =
                shape;
            // Faults start while the workload is still running, as far as its shape tells: a
            // fault that starts once everything is done tests nothing.
            let rounds = (clients * analyses).div_ceil(orchestrators * concurrency) as u64;
            let busy_ms = (FAULT_START_MIN_SPAN_MS + spread_ms + rounds * analysis_ms)
                .min(FAULT_START_MAX_MS);
            let faults = proptest::collection::vec(
                fault_pair(clients, orchestrators, enabled, busy_ms, latency_ms),
                0..=4,
            );
            (Just(shape), faults)
        })
        .prop_map(
            |(
                (clients, orchestrators, analyses, concurrency, analysis_ms, spread_ms, latency_ms),
                pairs,
            )| {
                let mut faults: Vec<ScheduledFault> =
                    apart(pairs).into_iter().flatten().collect();
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

/// The fault pairs, without those that overlap an earlier one on the same host or link: turmoil
/// keeps one state per link (a release ends a partition, a partition turns a hold into drops)
/// and a restart ends every crash of its host, so an overlapping pair would cut the other short.
fn apart(pairs: Vec<Vec<ScheduledFault>>) -> Vec<Vec<ScheduledFault>> {
    let mut kept: Vec<Vec<ScheduledFault>> = Vec::new();
    let span = |pair: &[ScheduledFault]| {
        let start = pair.first().map_or(0, |f| f.at_ms);
        (start, pair.last().map_or(start, |f| f.at_ms))
    };
    for pair in pairs {
        let target = pair.first().and_then(|f| held_target(&f.fault));
        let (start, end) = span(&pair);
        let overlaps = target.is_some()
            && kept.iter().any(|other| {
                let (other_start, other_end) = span(other);
                other.first().and_then(|f| held_target(&f.fault)) == target
                    && start <= other_end
                    && other_start <= end
            });
        if !overlaps {
            kept.push(pair);
        }
    }
    kept
}

/// The host or link a lasting fault holds until its undo, if it is one.
fn held_target(fault: &Fault) -> Option<(String, String)> {
    match fault {
        Fault::Crash { host } => Some((host.clone(), String::new())),
        Fault::Partition { a, b } | Fault::Hold { a, b } => {
            Some((a.clone().min(b.clone()), a.clone().max(b.clone())))
        }
        // Every link's: a later pair's undo would end an earlier one's latency.
        Fault::Latency { .. } => Some(("latency".into(), String::new())),
        _ => None,
    }
}

/// A fault and the step that undoes it, from the kinds this case enabled.
/// `busy_ms`: the latest start drawn; `normal_latency_ms`: the case's own latency, which a
/// latency fault's undo puts back.
fn fault_pair(
    clients: usize,
    orchestrators: usize,
    enabled: u16,
    busy_ms: u64,
    normal_latency_ms: u64,
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
                    // Undone like the others: as the last fault, the heal just after it
                    // would otherwise end it within a millisecond.
                    3 => vec![
                        at(at_ms, Fault::Latency { max_ms: latency_ms }),
                        at(
                            end,
                            Fault::Latency {
                                max_ms: normal_latency_ms,
                            },
                        ),
                    ],
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

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(at_ms: u64, end_ms: u64, first: Fault, undo: Fault) -> Vec<ScheduledFault> {
        vec![
            ScheduledFault {
                at_ms,
                fault: first,
            },
            ScheduledFault {
                at_ms: end_ms,
                fault: undo,
            },
        ]
    }

    #[test]
    fn pairs_that_overlap_on_one_host_or_link_are_left_out() {
        let crash = |host: &str| Fault::Crash { host: host.into() };
        let restart = |host: &str| Fault::Restart { host: host.into() };
        let hold = |a: &str, b: &str| Fault::Hold {
            a: a.into(),
            b: b.into(),
        };
        let release = |a: &str, b: &str| Fault::Release {
            a: a.into(),
            b: b.into(),
        };
        let partition = Fault::Partition {
            a: "gateway-0".into(),
            b: "client-0".into(),
        };
        let repair = Fault::Repair {
            a: "gateway-0".into(),
            b: "client-0".into(),
        };
        let pairs = vec![
            pair(100, 500, crash("orchestrator-0"), restart("orchestrator-0")),
            pair(300, 900, crash("orchestrator-0"), restart("orchestrator-0")), // overlaps
            pair(600, 900, crash("orchestrator-0"), restart("orchestrator-0")), // after
            pair(300, 900, crash("orchestrator-1"), restart("orchestrator-1")), // another host
            pair(
                100,
                500,
                hold("client-0", "gateway-0"),
                release("client-0", "gateway-0"),
            ),
            pair(400, 700, partition, repair), // the same link, either way round
        ];
        let kept = apart(pairs);
        let starts: Vec<(u64, &'static str)> = kept
            .iter()
            .map(|p| (p[0].at_ms, p[0].fault.kind()))
            .collect();
        assert_eq!(
            starts,
            [
                (100, "crash"),
                (600, "crash"),
                (300, "crash"),
                (100, "hold")
            ]
        );
    }

    #[test]
    fn every_drawn_latency_change_is_undone_at_its_end() {
        let mut seen = 0;
        for seed in 0..200 {
            let scenario = scenario_for_seed(seed);
            let raised = scenario
                .faults
                .iter()
                .filter(|f| matches!(f.fault, Fault::Latency { max_ms } if max_ms != scenario.network.max_latency_ms))
                .count();
            let restored = scenario
                .faults
                .iter()
                .filter(|f| matches!(f.fault, Fault::Latency { max_ms } if max_ms == scenario.network.max_latency_ms))
                .count();
            assert!(raised <= restored, "seed {seed}: {:?}", scenario.faults);
            seen += raised;
        }
        assert!(seen > 0, "no seed drew a latency change");
    }
}
