//! The simulation with the edge in front of the gateway (`SimConfig::with_edge`): issuer, auth
//! proxy and Kong role as turmoil hosts, clients with bearer tokens, gateways re-validating.

use warren_sim::SimConfig;

#[test]
fn simulated_clients_complete_their_analyses_through_the_edge() {
    let config = SimConfig {
        seed: 21,
        clients: 2,
        analyses_per_client: 2,
        with_edge: true,
        ..SimConfig::default()
    };
    let report = warren_sim::simulation::check_determinism(&config).unwrap();
    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    let done: usize = report
        .clients
        .values()
        .map(|c| c.analyses.iter().filter(|a| a.done).count())
        .sum();
    assert_eq!(done, 4, "{:#?}", report.clients);
}
