//! Checkers: what must hold for every accepted `requestAnalysis`, judged from what the clients
//! saw, what the orchestrator did and what the broker still holds.
//!
//! Safety ("wrong") and liveness ("stuck") are reported apart, and the message flow is summed up
//! as a queue workload in Jepsen's terms: lost, duplicated, unexpected and recovered.

use std::collections::{BTreeMap, BTreeSet};

use client_console::EventKind;
use serde::Serialize;

use crate::hosts::{ClientRecord, Effects};

/// Names of the checkers, as scenarios refer to them in `expect_failing`.
pub const CHECKERS: &[&str] = &[
    "order",
    "once-per-subscription",
    "isolation",
    "unique-ids",
    "status",
    "effect-once",
    "accepted",
    "lost",
    "pending-commands",
];

/// Checkers that judge liveness (the rest judge safety).
const LIVENESS: &[&str] = &["accepted", "lost", "pending-commands"];

/// The message flow as a queue workload, in Jepsen's terms.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct QueueReport {
    /// Mutations the gateway accepted (the client got an analysisId).
    pub accepted: usize,
    /// Analyses a client gave up requesting: every attempt was refused or timed out.
    pub refused: usize,
    /// Accepted analyses whose owner saw AnalysisCompleted.
    pub completed: usize,
    /// Accepted analyses whose owner never saw AnalysisCompleted.
    pub lost: usize,
    /// Events a client received more than once (across re-subscriptions); harmless repeats.
    pub duplicated: usize,
    /// Events a client received for an analysis that was not its own.
    pub unexpected: usize,
    /// Completed analyses that needed a retry on the way (re-subscription or re-request).
    pub recovered: usize,
    /// Analyses the orchestrator ran to completion more than once.
    pub repeated_effects: usize,
}

/// The verdict of every checker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Findings {
    /// Checker name → what it found (empty: it passed).
    pub by_checker: BTreeMap<String, Vec<String>>,
    /// The workload summary.
    pub queue: QueueReport,
}

impl Findings {
    /// Checkers that found something.
    pub fn failing(&self) -> BTreeSet<&str> {
        self.by_checker
            .iter()
            .filter(|(_, f)| !f.is_empty())
            .map(|(c, _)| c.as_str())
            .collect()
    }

    /// Safety findings: the system did something wrong.
    pub fn wrong(&self) -> Vec<String> {
        self.collect(|c| !LIVENESS.contains(&c))
    }

    /// Liveness findings: the system did not finish its work by the deadline.
    pub fn stuck(&self) -> Vec<String> {
        self.collect(|c| LIVENESS.contains(&c))
    }

    fn collect(&self, keep: impl Fn(&str) -> bool) -> Vec<String> {
        self.by_checker
            .iter()
            .filter(|(c, _)| keep(c))
            .flat_map(|(c, f)| f.iter().map(move |x| format!("[{c}] {x}")))
            .collect()
    }
}

/// What the checkers look at.
pub(crate) struct Evidence<'a> {
    pub(crate) clients: &'a BTreeMap<String, ClientRecord>,
    pub(crate) expected_clients: &'a [String],
    pub(crate) effects: &'a Effects,
    /// Analyses expected to fail on purpose (by client host and index).
    pub(crate) failing: &'a dyn Fn(&str, usize) -> bool,
    /// A fault could explain a repeated effect (a crash or a broker fault happened).
    pub(crate) repeats_explained: bool,
    /// Messages still in the command queue (ready + unacked), if the broker can be inspected.
    pub(crate) pending_commands: Option<usize>,
    /// Why commands could be pending (e.g. every orchestrator crashed).
    pub(crate) pending_reason: Option<String>,
}

/// Runs every checker.
pub(crate) fn check(evidence: &Evidence<'_>) -> Findings {
    let mut found: BTreeMap<String, Vec<String>> = CHECKERS
        .iter()
        .map(|c| (c.to_string(), Vec::new()))
        .collect();
    let mut push = |checker: &str, finding: String| {
        found.get_mut(checker).expect("known checker").push(finding)
    };
    let mut queue = QueueReport::default();
    let mut owner_of: BTreeMap<&str, &str> = BTreeMap::new();

    for host in evidence.expected_clients {
        let Some(record) = evidence.clients.get(host) else {
            push("lost", format!("{host}: never started"));
            continue;
        };
        if !record.finished {
            push("lost", format!("{host}: workload unfinished"));
        }
        if !record.foreign_events.is_empty() {
            queue.unexpected += record.foreign_events.len();
            push(
                "isolation",
                format!(
                    "{host} ({}) was given another user's events when it asked for them: {:?}",
                    record.user, record.foreign_events
                ),
            );
        }
        for analysis in &record.analyses {
            let Some(id) = analysis.analysis_id.as_deref() else {
                // Never accepted: not a promise the system made, so not lost; but a system that
                // refuses every request must not pass for one that keeps its promises.
                queue.refused += 1;
                push(
                    "accepted",
                    format!(
                        "{host} analysis #{}: never accepted in {} attempts (errors: {:?})",
                        analysis.index, analysis.request_attempts, analysis.errors
                    ),
                );
                continue;
            };
            queue.accepted += 1;
            if let Some(other) = owner_of.insert(id, host) {
                push(
                    "unique-ids",
                    format!("analysis id {id} returned to both {other} and {host}"),
                );
            }
            if analysis.repeats_within_subscription > 0 {
                push(
                    "once-per-subscription",
                    format!(
                        "{host} analysis {id}: {} events arrived twice on one subscription",
                        analysis.repeats_within_subscription
                    ),
                );
            }
            if analysis.started_after_completed_within_subscription > 0 {
                push(
                    "order",
                    format!(
                        "{host} analysis {id}: AnalysisStarted after AnalysisCompleted on one \
                         subscription ({} times)",
                        analysis.started_after_completed_within_subscription
                    ),
                );
            }
            let mut seen = BTreeSet::new();
            let mut first_order = Vec::new();
            for event in &analysis.events {
                if event.analysis_id != id {
                    queue.unexpected += 1;
                    push(
                        "isolation",
                        format!(
                            "{host} following {id} received an event of {}",
                            event.analysis_id
                        ),
                    );
                    continue;
                }
                if seen.insert(event.kind) {
                    first_order.push(event.kind);
                } else {
                    queue.duplicated += 1;
                }
            }
            match first_order.as_slice() {
                [EventKind::Started, EventKind::Completed] => {
                    queue.completed += 1;
                    if analysis.follow_attempts > 1 || analysis.request_attempts > 1 {
                        queue.recovered += 1;
                    }
                    let status = analysis
                        .events
                        .iter()
                        .find(|e| e.kind == EventKind::Completed)
                        .and_then(|e| e.data.get("status"))
                        .and_then(|s| s.as_str());
                    let expected = if (evidence.failing)(host, analysis.index) {
                        "FAILED"
                    } else {
                        "SUCCEEDED"
                    };
                    if status != Some(expected) {
                        push(
                            "status",
                            format!("{host} analysis {id}: status {status:?}, expected {expected}"),
                        );
                    }
                }
                [EventKind::Started] | [] => {
                    queue.lost += 1;
                    push(
                        "lost",
                        format!(
                            "{host} analysis {id}: saw {first_order:?} only (errors: {:?})",
                            analysis.errors
                        ),
                    );
                }
                other => push(
                    "order",
                    format!(
                        "{host} analysis {id}: first saw {other:?}, expected Started then Completed"
                    ),
                ),
            }
        }
    }

    for (id, runs) in evidence.effects.lock().expect("effects poisoned").iter() {
        if *runs > 1 {
            queue.repeated_effects += 1;
            if !evidence.repeats_explained {
                push(
                    "effect-once",
                    format!(
                        "analysis {id} ran {runs} times with no fault that could make it run again"
                    ),
                );
            }
        }
    }

    if let Some(pending) = evidence.pending_commands.filter(|p| *p > 0) {
        let reason = evidence
            .pending_reason
            .clone()
            .unwrap_or_else(|| "no reason known".into());
        push(
            "pending-commands",
            format!("{pending} commands neither acked nor dead-lettered: {reason}"),
        );
    }
    Findings {
        by_checker: found,
        queue,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hosts::AnalysisRecord;
    use client_console::ReceivedEvent;

    fn event(kind: EventKind, id: &str) -> ReceivedEvent {
        ReceivedEvent {
            kind,
            analysis_id: id.to_owned(),
            data: serde_json::json!({ "status": "SUCCEEDED" }),
        }
    }

    fn findings(repeats_within_subscription: u32, follow_attempts: u32) -> Findings {
        let id = "a1";
        let record = ClientRecord {
            user: "alice".into(),
            analyses: vec![AnalysisRecord {
                index: 0,
                analysis_id: Some(id.into()),
                events: vec![
                    event(EventKind::Started, id),
                    event(EventKind::Started, id),
                    event(EventKind::Completed, id),
                ],
                follow_attempts,
                repeats_within_subscription,
                started_after_completed_within_subscription: 0,
                request_attempts: 1,
                errors: Vec::new(),
                done: true,
            }],
            finished: true,
            foreign_events: Vec::new(),
        };
        check_one(record)
    }

    /// The checkers on one client's record, with nothing else to explain or wait for.
    fn check_one(record: ClientRecord) -> Findings {
        let clients = BTreeMap::from([("client-0".to_owned(), record)]);
        check(&Evidence {
            clients: &clients,
            expected_clients: &["client-0".to_owned()],
            effects: &Effects::default(),
            failing: &|_, _| false,
            repeats_explained: false,
            pending_commands: Some(0),
            pending_reason: None,
        })
    }

    #[test]
    fn an_analysis_never_accepted_is_stuck_not_ignored() {
        let record = ClientRecord {
            user: "alice".into(),
            analyses: vec![AnalysisRecord {
                index: 0,
                request_attempts: 20,
                errors: vec!["request: UNAVAILABLE".into()],
                ..AnalysisRecord::default()
            }],
            finished: true,
            foreign_events: Vec::new(),
        };
        let found = check_one(record);
        assert_eq!(found.failing(), BTreeSet::from(["accepted"]));
        assert!(found.wrong().is_empty());
        assert!(found.stuck()[0].contains("never accepted in 20 attempts"));
        assert_eq!((found.queue.refused, found.queue.accepted), (1, 0));
    }

    #[test]
    fn an_event_twice_on_one_subscription_is_wrong_and_across_two_is_a_counted_repeat() {
        let once_each = findings(0, 2);
        assert!(once_each.wrong().is_empty(), "{:?}", once_each.wrong());
        assert_eq!(once_each.queue.duplicated, 1);
        let twice_on_one = findings(1, 1);
        assert_eq!(
            twice_on_one.failing(),
            BTreeSet::from(["once-per-subscription"])
        );
        assert_eq!(twice_on_one.queue.duplicated, 1);
    }

    #[test]
    fn started_after_completed_on_one_subscription_is_out_of_order_even_when_a_first_was_fine() {
        // The first subscription saw Started; a second replayed Completed, then Started.
        let id = "a1";
        let record = ClientRecord {
            user: "alice".into(),
            analyses: vec![AnalysisRecord {
                index: 0,
                analysis_id: Some(id.into()),
                events: vec![
                    event(EventKind::Started, id),
                    event(EventKind::Completed, id),
                    event(EventKind::Started, id),
                ],
                follow_attempts: 2,
                started_after_completed_within_subscription: 1,
                request_attempts: 1,
                done: true,
                ..AnalysisRecord::default()
            }],
            finished: true,
            foreign_events: Vec::new(),
        };
        let found = check_one(record);
        assert_eq!(found.failing(), BTreeSet::from(["order"]));
    }

    #[test]
    fn another_users_events_given_on_request_break_isolation() {
        let id = "a1";
        let record = ClientRecord {
            user: "alice".into(),
            analyses: vec![AnalysisRecord {
                index: 0,
                analysis_id: Some(id.into()),
                events: vec![
                    event(EventKind::Started, id),
                    event(EventKind::Completed, id),
                ],
                follow_attempts: 1,
                request_attempts: 1,
                done: true,
                ..AnalysisRecord::default()
            }],
            finished: true,
            foreign_events: vec!["b7 Started".into()],
        };
        let found = check_one(record);
        assert_eq!(found.failing(), BTreeSet::from(["isolation"]));
        assert_eq!(found.queue.unexpected, 1);
    }
}
