//! A team's own subscriber, tested inside the simulated system: an audit service that keeps its
//! own queue bound to `analysis.completed`, records every completion once (dropping repeats by
//! message id, as the contract asks), and acks. The orchestrator crashes mid-run; the audit must
//! still see every completed analysis exactly once.
//!
//! `cargo run -p warren-sim --example audit_subscriber`

use std::collections::BTreeSet;
use std::time::Duration;

use contracts::{ExchangeKind, Topology};
use futures::StreamExt;
use warren_sim::Harness;
use warren_sim::faults::Fault;

pub fn audit_topology() -> Topology {
    let mut topology = Topology::default();
    topology.exchanges.push(contracts::ExchangeDecl {
        name: contracts::EXCHANGE_COMPLETED.into(),
        kind: ExchangeKind::Fanout,
        durable: true,
    });
    topology.queues.push(contracts::QueueDecl {
        name: "audit.completed".into(),
        durable: true,
        limits: contracts::QueueLimits::default(),
    });
    topology.bindings.push(contracts::Binding {
        exchange: contracts::EXCHANGE_COMPLETED.into(),
        queue: "audit.completed".into(),
        routing_key: String::new(),
    });
    topology
}

pub fn main() {
    let report = Harness::new(2026)
        .workload(3, 4)
        .analysis_duration(Duration::from_millis(800))
        .fault(
            Duration::from_millis(500),
            Fault::Crash {
                host: "orchestrator-0".into(),
            },
        )
        .fault(
            Duration::from_millis(2500),
            Fault::Restart {
                host: "orchestrator-0".into(),
            },
        )
        .subscriber("audit", |ctx| async move {
            ctx.ports.bus.declare(&audit_topology()).await?;
            let mut seen = BTreeSet::new();
            let mut deliveries = ctx
                .ports
                .bus
                .consume("audit.completed", Default::default())
                .await?;
            while let Some(delivery) = deliveries.next().await {
                let delivery = delivery?;
                let event =
                    contracts::decode_event(delivery.properties.kind.as_deref(), &delivery.body)?;
                if seen.insert(delivery.properties.message_id.clone()) {
                    ctx.log.record(event.analysis_id().to_string());
                }
                delivery.ack().await?;
            }
            Ok(())
        })
        .run_deterministic()
        .expect("same seed, same trace");

    assert!(report.violations.is_empty(), "{:#?}", report.violations);
    let audited: BTreeSet<_> = report.subscriber_logs["audit"].iter().cloned().collect();
    assert_eq!(
        audited.len(),
        report.subscriber_logs["audit"].len(),
        "each completion audited once"
    );
    assert_eq!(
        audited.len(),
        report.findings.queue.completed,
        "every completed analysis audited"
    );
    let acked = report
        .journal
        .iter()
        .filter(|e| e.host == "audit" && e.action == warren_sim::journal::Action::Acked)
        .count();
    let delivered = report
        .journal
        .iter()
        .filter(|e| e.host == "audit" && e.action == warren_sim::journal::Action::Delivered)
        .count();
    assert_eq!(acked, delivered, "the audit acked everything it was given");
    println!(
        "audit saw {} completions exactly once ({} deliveries, {} acked); orchestrator crash survived; trace hash {:016x}",
        audited.len(),
        delivered,
        acked,
        report.trace_hash
    );
}
