//! The registry: every analysis the gateway knows, who owns it, and the events recorded for it.
//!
//! Why it exists: a GraphQL subscription is registered lazily (when the client's `subscribe`
//! is first polled), so an `AnalysisStarted` can easily arrive before anybody listens. Recording
//! events here and keeping the accumulated state in a `watch` channel per analysis means a
//! subscriber reads "everything so far" and then follows changes, atomically: nothing is lost
//! however late it subscribes (research §2.3, §2.4).
//!
//! Recording is idempotent per (analysis, event type), the same key the contract's uuid v5
//! message ids encode, so a redelivered or republished event changes nothing and is never
//! announced twice, also after its analysis has been evicted or forgotten: the registry keeps
//! which events it announced for as many removed analyses as it holds live ones (a repeat
//! later than that is announced again). The registry is bounded, by count and by the bytes of
//! the events it holds: past either it evicts the oldest completed analyses first, then
//! incomplete ones older than a time-to-live, and otherwise refuses new analyses (events of
//! those it has are still recorded: the count limit bounds them).

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contracts::{AnalysisCompleted, AnalysisStarted, Event};
use tokio::sync::{broadcast, watch};
use uuid::Uuid;

use crate::config::LIVE_EVENTS_CAPACITY;

/// Who requested an analysis: the caller identity, `None` for anonymous callers.
pub(crate) type Owner = Option<String>;

/// One recorded event, shared cheaply between subscribers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Recorded {
    Started(Arc<AnalysisStarted>),
    Completed(Arc<AnalysisCompleted>),
}

/// What is known about one analysis so far. Only ever grows: `started` and `completed` are set
/// once each and never replaced.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Snapshot {
    pub(crate) started: Option<Arc<AnalysisStarted>>,
    pub(crate) completed: Option<Arc<AnalysisCompleted>>,
}

/// An event as announced to the subscriptions that follow all of a caller's analyses.
#[derive(Debug, Clone)]
pub(crate) struct LiveEvent {
    pub(crate) owner: Owner,
    pub(crate) event: Recorded,
}

/// The outcome of recording an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recording {
    /// First time: recorded and announced.
    New,
    /// Already recorded (same analysis, same type): nothing changed.
    Repeat,
    /// Unknown analysis and no room to remember it: dropped (and logged).
    NoRoom,
}

/// The registry is full of analyses that may not be evicted yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RegistryFull;

/// Where an entry sits in the eviction order: by creation while incomplete, by completion after.
#[derive(Debug, Clone, Copy)]
enum Slot {
    Incomplete(u64),
    Completed(u64),
}

struct Entry {
    owner: Owner,
    created_unix_ms: i64,
    /// What its recorded events weigh (see `event_bytes`).
    bytes: usize,
    slot: Slot,
    /// The accumulated state; subscribers hold receivers. Dropping the entry closes them.
    state: watch::Sender<Snapshot>,
}

/// Which events were announced for an analysis no longer in the registry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Announced {
    started: bool,
    completed: bool,
}

impl Announced {
    fn of(snapshot: &Snapshot) -> Announced {
        Announced {
            started: snapshot.started.is_some(),
            completed: snapshot.completed.is_some(),
        }
    }

    fn includes(self, event: &Event) -> bool {
        match event {
            Event::Started(_) => self.started,
            Event::Completed(_) => self.completed,
        }
    }
}

#[derive(Default)]
struct Inner {
    entries: BTreeMap<Uuid, Entry>,
    /// Incomplete analyses, oldest first.
    incomplete: BTreeMap<u64, Uuid>,
    /// Completed analyses, earliest completion first: the first to evict.
    completed: BTreeMap<u64, Uuid>,
    next_seq: u64,
    /// Analyses removed after something was announced for them, so that a late repeat (the
    /// broker delivers at least once) is not announced again. At most `capacity` ids.
    gone: BTreeMap<Uuid, Announced>,
    /// `gone`'s ids, oldest first: the first to drop.
    gone_order: VecDeque<Uuid>,
    /// The entries' `bytes`, summed.
    bytes: usize,
}

/// Analyses by id (a `BTreeMap`, so nothing depends on hash order), bounded by `capacity`.
pub(crate) struct Registry {
    inner: Mutex<Inner>,
    live: broadcast::Sender<LiveEvent>,
    capacity: usize,
    /// Past this many bytes of recorded events, no new analysis is taken until evictions
    /// bring it back under.
    bytes_max: usize,
    incomplete_ttl_ms: i64,
}

impl Registry {
    pub(crate) fn new(capacity: usize, incomplete_ttl: Duration) -> Registry {
        assert!(capacity > 0, "a registry must hold at least one analysis");
        Registry {
            inner: Mutex::new(Inner::default()),
            live: broadcast::channel(LIVE_EVENTS_CAPACITY).0,
            capacity,
            bytes_max: usize::MAX,
            incomplete_ttl_ms: i64::try_from(incomplete_ttl.as_millis()).unwrap_or(i64::MAX),
        }
    }

    /// Bounds the bytes of the events held too (see the module doc).
    pub(crate) fn with_bytes_max(mut self, bytes_max: usize) -> Registry {
        self.bytes_max = bytes_max;
        self
    }

    /// Remembers a new analysis in state REQUESTED. Called before its command is published, so
    /// its events always find it.
    pub(crate) fn register(
        &self,
        id: Uuid,
        owner: Owner,
        now_unix_ms: i64,
    ) -> Result<(), RegistryFull> {
        let mut inner = self.lock();
        if inner.entries.contains_key(&id) {
            // Ids are fresh, so only an event that raced ahead of a restarted gateway's
            // registration can get here; its recorded state is the truth, keep it.
            tracing::warn!(analysis_id = %id, "analysis registered twice; keeping the first");
            return Ok(());
        }
        if !inner.make_room(
            self.capacity,
            self.bytes_max,
            self.incomplete_ttl_ms,
            now_unix_ms,
        ) {
            return Err(RegistryFull);
        }
        inner.insert(id, owner, now_unix_ms);
        Ok(())
    }

    /// Forgets an analysis whose command was never published. Its subscribers' streams end.
    pub(crate) fn forget(&self, id: Uuid) {
        let mut inner = self.lock();
        if let Some(entry) = inner.entries.remove(&id) {
            inner.unslot(entry.slot);
            inner.bytes -= entry.bytes;
            // Its command may have been published after all, and an event announced.
            inner.bury(id, &entry, self.capacity);
        }
    }

    /// Records an event and announces it if it is new. An event for an unknown analysis (one
    /// requested before a gateway restart, say) is recorded with owner = its `requestedBy`.
    pub(crate) fn record(&self, event: Event, now_unix_ms: i64) -> Recording {
        let id = event.analysis_id();
        let mut inner = self.lock();
        if inner.gone.get(&id).is_some_and(|a| a.includes(&event)) {
            return Recording::Repeat;
        }
        if !inner.entries.contains_key(&id) {
            if !inner.make_room(
                self.capacity,
                self.bytes_max,
                self.incomplete_ttl_ms,
                now_unix_ms,
            ) {
                tracing::warn!(analysis_id = %id, kind = event.kind().as_str(),
                    "registry full of running analyses; event for an unknown analysis dropped");
                return Recording::NoRoom;
            }
            inner.insert(id, event.requested_by().map(str::to_owned), now_unix_ms);
        }
        let weight = event_bytes(&event);
        let Inner {
            entries,
            incomplete,
            completed,
            next_seq,
            bytes,
            ..
        } = &mut *inner;
        let entry = entries
            .get_mut(&id)
            .expect("entry exists: found or inserted above");
        if entry.owner.as_deref() != event.requested_by() {
            tracing::warn!(analysis_id = %id, "event's requestedBy differs from the registered owner; keeping the owner");
        }
        let recorded = match event {
            Event::Started(started) => {
                if entry.state.borrow().started.is_some() {
                    return Recording::Repeat;
                }
                let started = Arc::new(started);
                entry
                    .state
                    .send_modify(|s| s.started = Some(started.clone()));
                Recorded::Started(started)
            }
            Event::Completed(done) => {
                if entry.state.borrow().completed.is_some() {
                    return Recording::Repeat;
                }
                let done = Arc::new(done);
                entry
                    .state
                    .send_modify(|s| s.completed = Some(done.clone()));
                if let Slot::Incomplete(seq) = entry.slot {
                    incomplete.remove(&seq);
                    entry.slot = Slot::Completed(*next_seq);
                    completed.insert(*next_seq, id);
                    *next_seq += 1;
                }
                Recorded::Completed(done)
            }
        };
        entry.bytes += weight;
        *bytes += weight;
        // Announced under the lock, so the live order is the recording order. No receivers is
        // not an error: nobody follows all analyses right now.
        let _ = self.live.send(LiveEvent {
            owner: entry.owner.clone(),
            event: recorded,
        });
        // Back under the byte budget if completed analyses can be let go (this one too: its
        // followers still read what it holds).
        while inner.bytes > self.bytes_max && inner.evict_oldest_completed(self.capacity) {}
        Recording::New
    }

    /// What is known about the caller's analysis; `None` if unknown or someone else's.
    pub(crate) fn snapshot(&self, id: Uuid, caller: &Owner) -> Option<Snapshot> {
        let inner = self.lock();
        let entry = inner.entries.get(&id).filter(|e| &e.owner == caller)?;
        let snapshot = entry.state.borrow().clone();
        Some(snapshot)
    }

    /// Follows the caller's analysis: the receiver holds everything recorded so far and sees
    /// every later change; it closes when the entry is evicted or forgotten. `None` if unknown
    /// or someone else's.
    pub(crate) fn watch(&self, id: Uuid, caller: &Owner) -> Option<watch::Receiver<Snapshot>> {
        let inner = self.lock();
        let entry = inner.entries.get(&id).filter(|e| &e.owner == caller)?;
        Some(entry.state.subscribe())
    }

    /// Every newly recorded event from now on, of every owner.
    pub(crate) fn live(&self) -> broadcast::Receiver<LiveEvent> {
        self.live.subscribe()
    }

    /// Analyses remembered.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Removed analyses whose announced events are remembered.
    #[cfg(test)]
    pub(crate) fn gone_len(&self) -> usize {
        let inner = self.lock();
        debug_assert_eq!(inner.gone.len(), inner.gone_order.len());
        inner.gone.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Never held across an await and no code under it panics, so poisoning is a bug.
        self.inner.lock().expect("registry lock poisoned")
    }
}

impl Inner {
    fn insert(&mut self, id: Uuid, owner: Owner, now_unix_ms: i64) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let state = watch::Sender::new(Snapshot::default());
        let entry = Entry {
            owner,
            created_unix_ms: now_unix_ms,
            bytes: 0,
            slot: Slot::Incomplete(seq),
            state,
        };
        self.incomplete.insert(seq, id);
        let previous = self.entries.insert(id, entry);
        debug_assert!(previous.is_none(), "insert is only called for unknown ids");
    }

    fn unslot(&mut self, slot: Slot) {
        match slot {
            Slot::Incomplete(seq) => self.incomplete.remove(&seq),
            Slot::Completed(seq) => self.completed.remove(&seq),
        };
    }

    /// Remembers what was announced for a removed entry (nothing to remember if nothing was),
    /// dropping the oldest such record past `capacity`.
    fn bury(&mut self, id: Uuid, entry: &Entry, capacity: usize) {
        let announced = Announced::of(&entry.state.borrow());
        if announced == Announced::default() {
            return;
        }
        if let Some(known) = self.gone.get_mut(&id) {
            // Revived by a later event and removed again: it keeps its place in the order.
            known.started |= announced.started;
            known.completed |= announced.completed;
            return;
        }
        if self.gone_order.len() >= capacity
            && let Some(oldest) = self.gone_order.pop_front()
        {
            self.gone.remove(&oldest);
        }
        self.gone.insert(id, announced);
        self.gone_order.push_back(id);
    }

    /// Makes room for one more entry, within `capacity` entries and `bytes_max` bytes; false if
    /// every entry must be kept.
    fn make_room(
        &mut self,
        capacity: usize,
        bytes_max: usize,
        incomplete_ttl_ms: i64,
        now_unix_ms: i64,
    ) -> bool {
        // Each turn removes an entry, so this ends.
        while self.entries.len() >= capacity || self.bytes > bytes_max {
            debug_assert!(
                self.entries.len() <= capacity,
                "the registry never exceeds its capacity"
            );
            if self.evict_oldest_completed(capacity) {
                continue;
            }
            let oldest = self
                .incomplete
                .first_key_value()
                .map(|(&seq, &id)| (seq, id));
            let Some((seq, id)) = oldest else {
                return false;
            };
            let created = self.entries[&id].created_unix_ms;
            if now_unix_ms.saturating_sub(created) < incomplete_ttl_ms {
                return false;
            }
            self.incomplete.remove(&seq);
            if let Some(entry) = self.entries.remove(&id) {
                self.bytes -= entry.bytes;
                self.bury(id, &entry, capacity);
            }
            tracing::warn!(analysis_id = %id, "evicted an analysis that never completed");
        }
        true
    }

    /// Evicts the analysis that completed first; false if none has.
    fn evict_oldest_completed(&mut self, capacity: usize) -> bool {
        let Some((_, id)) = self.completed.pop_first() else {
            return false;
        };
        if let Some(entry) = self.entries.remove(&id) {
            self.bytes -= entry.bytes;
            self.bury(id, &entry, capacity);
        }
        tracing::debug!(analysis_id = %id, "evicted the oldest completed analysis");
        true
    }
}

/// What an event weighs in the registry: its text and its result as JSON, about its size on
/// the wire (the contract allows 64 KiB), without serializing it.
fn event_bytes(event: &Event) -> usize {
    /// Counts the bytes written.
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let text = |s: &str| s.len();
    let requested_by = event.requested_by().map_or(0, text);
    // Field names, ids and punctuation: a small constant.
    const ENVELOPE_BYTES: usize = 160;
    ENVELOPE_BYTES
        + requested_by
        + match event {
            Event::Started(e) => text(&e.asset_id) + text(&e.analysis_type) + text(&e.started_at),
            Event::Completed(e) => {
                let mut result = Counter(0);
                if let Some(value) = &e.result {
                    let _ = serde_json::to_writer(&mut result, value);
                }
                text(&e.asset_id)
                    + text(&e.analysis_type)
                    + text(&e.completed_at)
                    + e.error.as_deref().map_or(0, text)
                    + result.0
            }
        }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contracts::AnalysisStatus;

    fn started(id: u128, by: &str) -> Event {
        Event::Started(AnalysisStarted {
            analysis_id: Uuid::from_u128(id),
            asset_id: "press-1".into(),
            analysis_type: "utilization".into(),
            requested_by: Some(by.into()),
            started_at: "2026-01-01T00:00:00.000Z".into(),
        })
    }

    fn completed(id: u128, by: &str) -> Event {
        Event::Completed(AnalysisCompleted {
            analysis_id: Uuid::from_u128(id),
            asset_id: "press-1".into(),
            analysis_type: "utilization".into(),
            requested_by: Some(by.into()),
            status: AnalysisStatus::Succeeded,
            result: None,
            error: None,
            completed_at: "2026-01-01T00:00:01.000Z".into(),
        })
    }

    fn alice() -> Owner {
        Some("alice".into())
    }

    #[test]
    fn repeated_event_changes_nothing_and_is_announced_once() {
        let registry = Registry::new(4, Duration::from_secs(60));
        let mut live = registry.live();
        registry.register(Uuid::from_u128(1), alice(), 0).unwrap();
        assert_eq!(registry.record(started(1, "alice"), 0), Recording::New);
        assert_eq!(registry.record(started(1, "alice"), 0), Recording::Repeat);
        assert!(live.try_recv().is_ok());
        assert!(live.try_recv().is_err(), "a repeat is never announced");
    }

    #[test]
    fn repeat_after_eviction_is_not_announced_again() {
        let registry = Registry::new(1, Duration::from_secs(60));
        let mut live = registry.live();
        registry.register(Uuid::from_u128(1), alice(), 0).unwrap();
        assert_eq!(registry.record(started(1, "alice"), 0), Recording::New);
        assert_eq!(registry.record(completed(1, "alice"), 0), Recording::New);
        // 1 completed: registering 2 evicts it.
        registry.register(Uuid::from_u128(2), alice(), 0).unwrap();
        assert!(registry.snapshot(Uuid::from_u128(1), &alice()).is_none());
        assert_eq!(registry.record(completed(1, "alice"), 0), Recording::Repeat);
        assert_eq!(registry.record(started(1, "alice"), 0), Recording::Repeat);
        assert!(live.try_recv().is_ok() && live.try_recv().is_ok());
        assert!(live.try_recv().is_err(), "a late repeat is never announced");
        assert_eq!(registry.len(), 1, "a repeat takes no slot");
    }

    #[test]
    fn repeat_after_forget_is_not_announced_again_but_the_next_event_is() {
        let registry = Registry::new(4, Duration::from_secs(60));
        registry.register(Uuid::from_u128(1), alice(), 0).unwrap();
        // The command went out after all, and its Started raced the failed publish's forget.
        assert_eq!(registry.record(started(1, "alice"), 0), Recording::New);
        registry.forget(Uuid::from_u128(1));
        assert_eq!(registry.record(started(1, "alice"), 0), Recording::Repeat);
        assert_eq!(registry.record(completed(1, "alice"), 0), Recording::New);
        assert_eq!(registry.record(completed(1, "alice"), 0), Recording::Repeat);
    }

    #[test]
    fn removed_analyses_remembered_are_bounded_by_the_capacity() {
        let registry = Registry::new(2, Duration::ZERO);
        for id in 0..10 {
            registry.register(Uuid::from_u128(id), alice(), 0).unwrap();
            assert_eq!(registry.record(started(id, "alice"), 0), Recording::New);
            assert!(registry.gone_len() <= 2, "{}", registry.gone_len());
        }
        assert_eq!(registry.gone_len(), 2);
        // The two removed last are remembered; the oldest one is not any more.
        assert_eq!(registry.record(started(7, "alice"), 0), Recording::Repeat);
        assert_eq!(registry.record(started(0, "alice"), 0), Recording::New);
        // An analysis that was forgotten before anything was announced leaves no record.
        registry.register(Uuid::from_u128(20), alice(), 0).unwrap();
        let before = registry.gone_len();
        registry.forget(Uuid::from_u128(20));
        assert_eq!(registry.gone_len(), before);
    }

    #[test]
    fn unknown_analysis_is_recorded_with_its_requester_as_owner() {
        let registry = Registry::new(4, Duration::from_secs(60));
        assert_eq!(registry.record(completed(9, "bob"), 0), Recording::New);
        assert!(registry.snapshot(Uuid::from_u128(9), &alice()).is_none());
        let snap = registry
            .snapshot(Uuid::from_u128(9), &Some("bob".into()))
            .unwrap();
        assert!(snap.completed.is_some() && snap.started.is_none());
    }

    #[test]
    fn full_registry_evicts_oldest_completed_first_then_refuses() {
        let registry = Registry::new(2, Duration::from_secs(60));
        registry.register(Uuid::from_u128(1), alice(), 0).unwrap();
        registry.register(Uuid::from_u128(2), alice(), 0).unwrap();
        registry.record(completed(2, "alice"), 0);
        registry.record(completed(1, "alice"), 0);
        // 2 completed first, so 2 goes first.
        registry.register(Uuid::from_u128(3), alice(), 0).unwrap();
        assert!(registry.snapshot(Uuid::from_u128(2), &alice()).is_none());
        assert!(registry.snapshot(Uuid::from_u128(1), &alice()).is_some());
        registry.register(Uuid::from_u128(4), alice(), 0).unwrap();
        assert!(registry.snapshot(Uuid::from_u128(1), &alice()).is_none());
        // 3 and 4 are running and young: no room.
        assert_eq!(
            registry.register(Uuid::from_u128(5), alice(), 1_000),
            Err(RegistryFull)
        );
        assert_eq!(
            registry.record(started(6, "alice"), 1_000),
            Recording::NoRoom
        );
        assert_eq!(registry.len(), 2);
    }

    #[test]
    fn incomplete_analysis_past_its_ttl_may_be_evicted() {
        let registry = Registry::new(1, Duration::from_secs(60));
        registry.register(Uuid::from_u128(1), alice(), 0).unwrap();
        assert_eq!(
            registry.register(Uuid::from_u128(2), alice(), 59_999),
            Err(RegistryFull)
        );
        registry
            .register(Uuid::from_u128(2), alice(), 60_000)
            .unwrap();
        assert!(registry.snapshot(Uuid::from_u128(1), &alice()).is_none());
    }

    #[test]
    fn watcher_sees_everything_recorded_before_it_subscribed() {
        let registry = Registry::new(4, Duration::from_secs(60));
        registry.register(Uuid::from_u128(1), alice(), 0).unwrap();
        registry.record(started(1, "alice"), 0);
        registry.record(completed(1, "alice"), 0);
        let rx = registry.watch(Uuid::from_u128(1), &alice()).unwrap();
        let snap = rx.borrow();
        assert!(snap.started.is_some() && snap.completed.is_some());
    }

    #[test]
    fn forgetting_closes_the_watchers() {
        let registry = Registry::new(4, Duration::from_secs(60));
        registry.register(Uuid::from_u128(1), alice(), 0).unwrap();
        let rx = registry.watch(Uuid::from_u128(1), &alice()).unwrap();
        registry.forget(Uuid::from_u128(1));
        assert!(rx.has_changed().is_err());
        assert_eq!(registry.len(), 0);
    }

    fn completed_with_result(id: u128, result_bytes: usize) -> Event {
        let Event::Completed(mut done) = completed(id, "alice") else {
            unreachable!()
        };
        done.result = Some(serde_json::json!({ "blob": "x".repeat(result_bytes) }));
        Event::Completed(done)
    }

    #[test]
    fn the_bytes_of_events_held_are_bounded_too() {
        // Room for many analyses, but only about two large results.
        let registry = Registry::new(100, Duration::from_secs(60)).with_bytes_max(25_000);
        for id in 1..=3 {
            registry.register(Uuid::from_u128(id), alice(), 0).unwrap();
        }
        assert_eq!(
            registry.record(completed_with_result(1, 10_000), 1),
            Recording::New
        );
        assert_eq!(
            registry.record(completed_with_result(2, 10_000), 2),
            Recording::New
        );
        assert_eq!(registry.len(), 3);
        // A third large result: the oldest completed analysis goes to make room.
        assert_eq!(
            registry.record(completed_with_result(3, 10_000), 3),
            Recording::New
        );
        assert!(registry.snapshot(Uuid::from_u128(1), &alice()).is_none());
        assert!(registry.snapshot(Uuid::from_u128(3), &alice()).is_some());
        assert!(registry.lock().bytes <= 25_000, "{}", registry.lock().bytes);
        // Over the budget with nothing completed to let go: new analyses are refused.
        let registry = Registry::new(100, Duration::from_secs(60)).with_bytes_max(5_000);
        registry.register(Uuid::from_u128(1), alice(), 0).unwrap();
        let big_start = Event::Started(AnalysisStarted {
            analysis_type: "x".repeat(10_000),
            ..match started(1, "alice") {
                Event::Started(s) => s,
                Event::Completed(_) => unreachable!(),
            }
        });
        assert_eq!(registry.record(big_start, 1), Recording::New);
        assert_eq!(
            registry.register(Uuid::from_u128(2), alice(), 2),
            Err(RegistryFull)
        );
        // Once it completes, it may go, and there is room again.
        assert_eq!(registry.record(completed(1, "alice"), 3), Recording::New);
        assert_eq!(registry.register(Uuid::from_u128(2), alice(), 4), Ok(()));
    }
}
