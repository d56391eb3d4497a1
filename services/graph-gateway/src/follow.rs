//! Following one analysis: turns the registry's accumulated state into the ordered events a
//! subscription with an `analysisId` delivers, each at most once, then ends.
//!
//! The receiver is taken before anything is read (the registry hands out a `watch` receiver that
//! already holds everything recorded so far), so there is no window in which an event can slip
//! between "read the snapshot" and "follow live".

use std::pin::Pin;
use std::time::Duration;

use futures::Stream;
use tokio::sync::watch;
use tokio::time::Sleep;

use crate::registry::{Recorded, Snapshot};

/// Which events a subscription wants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wanted {
    /// `analysisEvents`: Started, then Completed.
    Both,
    /// `analysisStarted(analysisId)`: Started only.
    Started,
    /// `analysisCompleted(analysisId)`: Completed only.
    Completed,
}

/// What woke a waiting follower.
enum Wake {
    Changed,
    Closed,
    StartedWaitOver,
}

pub(crate) struct Follower {
    rx: watch::Receiver<Snapshot>,
    wanted: Wanted,
    started_wait_max: Duration,
    /// Armed once Completed is known without Started; never re-armed, so the wait is bounded.
    started_deadline: Option<Pin<Box<Sleep>>>,
    sent_started: bool,
    /// Started will not be waited for any longer (waited long enough, or the entry is gone).
    started_abandoned: bool,
    closed: bool,
    finished: bool,
    /// Finished because the entry went away before the last wanted event.
    gone: bool,
}

/// The analysis's entry went away (evicted) before the follower's last event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gone;

impl Follower {
    pub(crate) fn new(
        rx: watch::Receiver<Snapshot>,
        wanted: Wanted,
        started_wait_max: Duration,
    ) -> Follower {
        Follower {
            rx,
            wanted,
            started_wait_max,
            started_deadline: None,
            sent_started: false,
            started_abandoned: false,
            closed: false,
            finished: false,
            gone: false,
        }
    }

    /// The events, then, if the entry went away before the last one, [`Gone`].
    pub(crate) fn into_stream(self) -> impl Stream<Item = Result<Recorded, Gone>> + Send + 'static {
        futures::stream::unfold(Some(self), |follower| async move {
            let mut follower = follower?;
            match follower.next().await {
                Some(event) => Some((Ok(event), Some(follower))),
                None if follower.gone => Some((Err(Gone), None)),
                None => None,
            }
        })
    }

    /// The next event, in order; `None` once the subscription is done.
    pub(crate) async fn next(&mut self) -> Option<Recorded> {
        loop {
            if self.finished {
                return None;
            }
            let snapshot = self.rx.borrow_and_update().clone();
            if let Some(event) = self.step(&snapshot) {
                return Some(event);
            }
            if self.finished {
                return None;
            }
            if self.closed {
                // The entry is gone (evicted after completing, or forgotten): deliver what is
                // left without waiting for a Started that can no longer arrive here, then end.
                if self.started_abandoned {
                    self.finished = true;
                    self.gone = true;
                } else {
                    self.started_abandoned = true;
                }
                continue;
            }
            match self.wait(&snapshot).await {
                Wake::Changed => {}
                Wake::Closed => self.closed = true,
                Wake::StartedWaitOver => {
                    tracing::warn!(
                        analysis_id = ?snapshot.completed.as_ref().map(|c| c.analysis_id),
                        wait = ?self.started_wait_max,
                        "AnalysisStarted never arrived after AnalysisCompleted; delivering without it"
                    );
                    self.started_abandoned = true;
                }
            }
        }
    }

    /// The event to deliver now, if any; marks the follower finished after its last event.
    fn step(&mut self, snapshot: &Snapshot) -> Option<Recorded> {
        match self.wanted {
            Wanted::Started => {
                if let Some(started) = &snapshot.started {
                    self.finished = true;
                    return Some(Recorded::Started(started.clone()));
                }
                if self.started_abandoned && snapshot.completed.is_some() {
                    self.finished = true;
                }
                None
            }
            Wanted::Both | Wanted::Completed => {
                if self.wanted == Wanted::Both
                    && !self.sent_started
                    && let Some(started) = &snapshot.started
                {
                    self.sent_started = true;
                    return Some(Recorded::Started(started.clone()));
                }
                let may_complete =
                    self.wanted == Wanted::Completed || self.sent_started || self.started_abandoned;
                match &snapshot.completed {
                    Some(done) if may_complete => {
                        self.finished = true;
                        Some(Recorded::Completed(done.clone()))
                    }
                    _ => None,
                }
            }
        }
    }

    async fn wait(&mut self, snapshot: &Snapshot) -> Wake {
        let waits_for_started = self.wanted != Wanted::Completed
            && !self.sent_started
            && snapshot.started.is_none()
            && snapshot.completed.is_some();
        if !waits_for_started {
            return match self.rx.changed().await {
                Ok(()) => Wake::Changed,
                Err(_) => Wake::Closed,
            };
        }
        let wait_max = self.started_wait_max;
        let deadline = self
            .started_deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait_max)));
        tokio::select! {
            biased;
            changed = self.rx.changed() => match changed {
                Ok(()) => Wake::Changed,
                Err(_) => Wake::Closed,
            },
            () = deadline.as_mut() => Wake::StartedWaitOver,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use contracts::{AnalysisCompleted, AnalysisStarted, AnalysisStatus};
    use uuid::Uuid;

    use super::*;

    fn started() -> Arc<AnalysisStarted> {
        Arc::new(AnalysisStarted {
            analysis_id: Uuid::from_u128(1),
            asset_id: "a".into(),
            analysis_type: "t".into(),
            requested_by: None,
            started_at: "2026-01-01T00:00:00.000Z".into(),
        })
    }

    fn completed() -> Arc<AnalysisCompleted> {
        Arc::new(AnalysisCompleted {
            analysis_id: Uuid::from_u128(1),
            asset_id: "a".into(),
            analysis_type: "t".into(),
            requested_by: None,
            status: AnalysisStatus::Succeeded,
            result: None,
            error: None,
            completed_at: "2026-01-01T00:00:01.000Z".into(),
        })
    }

    fn is_started(e: &Option<Recorded>) -> bool {
        matches!(e, Some(Recorded::Started(_)))
    }

    fn is_completed(e: &Option<Recorded>) -> bool {
        matches!(e, Some(Recorded::Completed(_)))
    }

    #[tokio::test(start_paused = true)]
    async fn completed_before_started_is_held_until_started_arrives() {
        let (tx, rx) = watch::channel(Snapshot::default());
        let mut follower = Follower::new(rx, Wanted::Both, Duration::from_secs(60));
        tx.send_modify(|s| s.completed = Some(completed()));
        let next = tokio::spawn(async move {
            let first = follower.next().await;
            let second = follower.next().await;
            let third = follower.next().await;
            (first, second, third)
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        tx.send_modify(|s| s.started = Some(started()));
        let (first, second, third) = next.await.unwrap();
        assert!(is_started(&first) && is_completed(&second) && third.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_started_that_never_comes_is_waited_for_a_bounded_time() {
        let (tx, rx) = watch::channel(Snapshot::default());
        tx.send_modify(|s| s.completed = Some(completed()));
        let mut both = Follower::new(rx.clone(), Wanted::Both, Duration::from_secs(60));
        let mut only_started = Follower::new(rx, Wanted::Started, Duration::from_secs(60));
        assert!(is_completed(&both.next().await));
        assert!(both.next().await.is_none());
        assert!(only_started.next().await.is_none());
        drop(tx);
    }

    #[tokio::test(start_paused = true)]
    async fn late_follower_replays_both_in_order_then_ends() {
        let (tx, rx) = watch::channel(Snapshot::default());
        tx.send_modify(|s| {
            s.started = Some(started());
            s.completed = Some(completed());
        });
        let mut follower = Follower::new(rx, Wanted::Both, Duration::from_secs(60));
        assert!(is_started(&follower.next().await));
        assert!(is_completed(&follower.next().await));
        assert!(follower.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn closed_entry_ends_the_follower_after_what_is_left() {
        let (tx, rx) = watch::channel(Snapshot::default());
        let mut completed_only =
            Follower::new(rx.clone(), Wanted::Completed, Duration::from_secs(60));
        let mut nothing = Follower::new(rx, Wanted::Both, Duration::from_secs(60));
        tx.send_modify(|s| s.completed = Some(completed()));
        drop(tx);
        assert!(is_completed(&completed_only.next().await));
        assert!(completed_only.next().await.is_none());
        // Completed without Started and the entry gone: Completed alone, without waiting.
        assert!(is_completed(&nothing.next().await));
        assert!(nothing.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_entry_evicted_before_the_last_event_ends_the_stream_with_gone() {
        use futures::StreamExt as _;
        let (tx, rx) = watch::channel(Snapshot::default());
        let both = Follower::new(rx.clone(), Wanted::Both, Duration::from_secs(60));
        let completed_only = Follower::new(rx, Wanted::Completed, Duration::from_secs(60));
        tx.send_modify(|s| s.started = Some(started()));
        drop(tx); // evicted while running
        let both: Vec<_> = both.into_stream().collect().await;
        assert!(matches!(
            both.as_slice(),
            [Ok(Recorded::Started(_)), Err(Gone)]
        ));
        let completed_only: Vec<_> = completed_only.into_stream().collect().await;
        assert!(matches!(completed_only.as_slice(), [Err(Gone)]));
        // An entry that goes after its last event ends the stream with no error.
        let (tx, rx) = watch::channel(Snapshot::default());
        let done = Follower::new(rx, Wanted::Completed, Duration::from_secs(60));
        tx.send_modify(|s| s.completed = Some(completed()));
        drop(tx);
        let done: Vec<_> = done.into_stream().collect().await;
        assert!(matches!(done.as_slice(), [Ok(Recorded::Completed(_))]));
    }
}
