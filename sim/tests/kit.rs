//! The library for other teams (`warren_sim::Harness`): what a subscriber host gets.

use std::time::Duration;

use warren_sim::Harness;
use warren_sim::faults::Fault;

/// Each subscriber host, and each life of one after a restart, draws ids of its own: two never
/// hand out the same id (they did share one stream before).
#[test]
fn subscriber_hosts_and_their_restarts_draw_ids_of_their_own() {
    let draw = |context: warren_sim::kit::SubscriberContext| async move {
        for _ in 0..3 {
            context
                .log
                .record(context.ports.ids.analysis_id().to_string());
        }
        std::future::pending::<()>().await;
        Ok(())
    };
    let report = Harness::new(5)
        .workload(1, 1)
        .subscriber("audit-a", draw)
        .subscriber("audit-b", draw)
        .fault(
            Duration::from_millis(200),
            Fault::Restart {
                host: "audit-a".into(),
            },
        )
        .run();
    let a = &report.subscriber_logs["audit-a"];
    let b = &report.subscriber_logs["audit-b"];
    assert_eq!(a.len(), 6, "two lives of audit-a: {a:?}");
    assert_eq!(b.len(), 3, "{b:?}");
    let mut all: Vec<&String> = a.iter().chain(b).collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 9, "an id was drawn twice: {a:?} {b:?}");
}
