//! The engine's own deadlines, for whoever keeps its time.
//!
//! The engine acts only inside calls: each call first moves it to the clock's time. A broker
//! that nobody calls would never expire a message, so a server keeps its time the way
//! RabbitMQ's timers do (see `wire::WireServer::keep_time`): it asks for the next deadline,
//! sleeps until then and ticks, and is woken early when a call sets an earlier deadline.

use super::Engine;

/// What the time keeper was last told, and whether a call has set an earlier deadline since.
#[derive(Debug, Default)]
pub(super) struct Alarm {
    /// The deadline the keeper sleeps until; None: it sleeps until woken.
    wake_at_ms: Option<u64>,
    rang: bool,
}

impl Alarm {
    /// A deadline a call set: rings if it comes before the one the keeper sleeps until.
    /// Noting a deadline that turns out not to be one (a message behind the head, which is not
    /// checked until it is the head) only wakes the keeper once for nothing.
    pub(super) fn note(&mut self, at_ms: u64) {
        if self.wake_at_ms.is_none_or(|wake| at_ms < wake) {
            self.wake_at_ms = Some(at_ms);
            self.rang = true;
        }
    }

    /// Deadlines may have moved in ways not worth tracking one by one (a restart): the
    /// keeper looks again.
    pub(super) fn ring(&mut self) {
        self.rang = true;
    }
}

impl Engine {
    /// The earliest clock reading at which the engine has something to do by itself: a queue
    /// head's TTL, an unused queue's `x-expires`, a channel's consumer timeout, a dead-letter
    /// worker's retry (see `dead_letters`), a delayed delivery (fault hook). None: nothing
    /// happens until a call. A tick at that reading does it. [`Engine::take_alarm`] then reports calls that set an earlier one.
    /// Scans every queue and channel: for the time keeper (through
    /// [`crate::Broker::next_deadline_in_ms`]), not for every call; it also resets the alarm.
    pub(crate) fn next_due_ms(&mut self) -> Option<u64> {
        let delayed = self.delayed.iter().map(|d| d.due_ms);
        // A head is dropped once the clock is past its expiry (at its very millisecond it can
        // still be delivered; see `expire`).
        let heads = self
            .queues
            .values()
            .filter_map(|q| q.head_expires_at_ms())
            .map(|at| at.saturating_add(1));
        let unused = self
            .queues
            .values()
            .filter_map(|q| q.unused_expires_at_ms());
        let dead_letter_retries = self
            .queues
            .values()
            .filter_map(|q| q.dead_letters.retry_at_ms);
        let timeouts = self.limits.consumer_timeout_ms.map(|timeout_ms| {
            self.channels
                .values()
                .filter(|state| state.closed.is_none())
                .filter_map(|state| state.unacked.iter().next())
                .map(move |(_, unacked)| {
                    unacked
                        .delivered_at_ms
                        .saturating_add(timeout_ms)
                        .saturating_add(1)
                })
        });
        let due = delayed
            .chain(heads)
            .chain(unused)
            .chain(dead_letter_retries)
            .chain(timeouts.into_iter().flatten())
            .min();
        self.alarm = Alarm {
            wake_at_ms: due,
            rang: false,
        };
        due
    }

    /// Whether a call since the last [`Engine::next_due_ms`] set an earlier deadline than it
    /// reported; clears the flag.
    pub(crate) fn take_alarm(&mut self) -> bool {
        std::mem::take(&mut self.alarm.rang)
    }
}
