//! At-least-once dead-lettering, as RabbitMQ 3.10 runs it for a quorum queue with
//! `x-dead-letter-strategy: at-least-once`, a dead-letter exchange and `x-overflow:
//! reject-publish` (rabbit_fifo's discards and rabbit_fifo_dlx_worker). The queue keeps each
//! message it dead-letters until the dead-letter exchange routes it to queues that all take it:
//! - the worker takes up to [`WORKER_PREFETCH`] kept messages at a time, in the order they were
//!   dead-lettered, and forwards each as it takes it. One that every queue it routes to takes
//!   is settled and leaves the source queue, and the worker takes the next;
//! - one that routes nowhere (no exchange, no binding) or that a full queue refuses stays
//!   with the worker (a quorum `reject-publish` queue knows the worker as a publisher of its
//!   own, told to stop while the queue is over its limit, as a channel is). [`RETRY_MS`]
//!   after the first such message the worker routes again each that was never delivered or
//!   whose delivery is that old, to the queues that have not taken it yet, and starts the
//!   timer again while any is left (probed on 3.10.8: messages rejected into an exchange with
//!   no binding arrived 180 s after the reject, 179 s after the binding that made them
//!   routable; one a quorum queue over its limit refused, at the first retry that found the
//!   queue back at 80 %);
//! - kept messages count toward the queue's length limits (rabbit_fifo's `is_over_limit` and
//!   `is_below_soft_limit`), not among its ready messages (`queue.declare-ok`; probed).
//!
//! The first delivery routes by the keys at-most-once dead-lettering routes by (`BCC`
//! included); a later one by the dead-letter routing key or, without one, the keys of the
//! newest `x-death` entry, as the worker does. A queue deleted (or expired) drops what it
//! keeps; a broker restart keeps it, and the new worker takes it afresh, forwarding what
//! routes by then at once (the deletion and the worker's prefetch follow RabbitMQ's source;
//! the rest was probed).

use std::collections::VecDeque;

use smol_str::SmolStr;

use super::Engine;
use crate::message::{DeathReason, Message, is_cycle};
use crate::queue::Publisher;

/// How many kept messages the worker takes at a time (RabbitMQ's
/// `dead_letter_worker_consumer_prefetch`, 32 by default).
pub(crate) const WORKER_PREFETCH: usize = 32;

/// How long the worker waits before it routes again what it could not deliver (RabbitMQ's
/// `dead_letter_worker_publisher_confirm_timeout`, 180 s by default).
pub(crate) const RETRY_MS: u64 = 180_000;

/// A message a queue dead-lettered and keeps until it is delivered.
#[derive(Debug, Clone)]
pub(crate) struct DeadLetter {
    /// As republished: the dead-letter exchange's name and the new `x-death` entry.
    pub message: Message,
    pub reason: DeathReason,
    /// The routing keys of the first delivery (routing key first), and of the later ones.
    pub first_keys: Vec<SmolStr>,
    pub retry_keys: Vec<SmolStr>,
    /// Whether the worker has taken it.
    taken: bool,
    /// When it was last delivered to queues, on the engine's clock; None: never.
    delivered_at_ms: Option<u64>,
    /// The queues that took it.
    taken_by: Vec<SmolStr>,
}

impl DeadLetter {
    pub(crate) fn new(
        message: Message,
        reason: DeathReason,
        first_keys: Vec<SmolStr>,
        retry_keys: Vec<SmolStr>,
    ) -> DeadLetter {
        DeadLetter {
            message,
            reason,
            first_keys,
            retry_keys,
            taken: false,
            delivered_at_ms: None,
            taken_by: Vec::new(),
        }
    }
}

/// What a queue keeps of the messages it dead-lettered at least once; empty for other queues.
#[derive(Debug, Default)]
pub(crate) struct DeadLetters {
    /// In the order they were dead-lettered; those the worker took come first.
    kept: VecDeque<DeadLetter>,
    /// Body bytes of `kept` (they count toward `x-max-length-bytes`).
    bytes: usize,
    /// When the worker routes again what it holds; None while it holds nothing undelivered.
    pub retry_at_ms: Option<u64>,
}

impl DeadLetters {
    pub(crate) fn len(&self) -> usize {
        self.kept.len()
    }

    pub(crate) fn body_bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    fn push(&mut self, letter: DeadLetter) {
        self.bytes += letter.message.body.len();
        self.kept.push_back(letter);
    }

    fn remove(&mut self, at: usize) -> Option<DeadLetter> {
        let letter = self.kept.remove(at)?;
        self.bytes -= letter.message.body.len();
        Some(letter)
    }

    fn taken(&self) -> usize {
        self.kept.iter().take_while(|letter| letter.taken).count()
    }

    /// Takes everything out (the queue's deletion).
    pub(crate) fn drain(&mut self) -> impl Iterator<Item = DeadLetter> + '_ {
        self.bytes = 0;
        self.retry_at_ms = None;
        self.kept.drain(..)
    }

    /// The worker is gone (a broker restart): a new one takes everything afresh.
    pub(crate) fn give_back(&mut self) {
        self.retry_at_ms = None;
        for letter in &mut self.kept {
            letter.taken = false;
            letter.delivered_at_ms = None;
        }
    }
}

impl Engine {
    /// Keeps a message `queue_name` dead-letters at least once, and lets the worker take
    /// what it can.
    pub(super) fn keep_dead_letter(&mut self, queue_name: &str, letter: DeadLetter) {
        let Some(queue) = self.queues.get_mut(queue_name) else {
            return;
        };
        self.held.add(&letter.message);
        queue.dead_letters.push(letter);
        queue.note_length();
        self.forward_dead_letters(queue_name);
    }

    /// The worker takes kept messages while it has room, delivering each as it takes it,
    /// then sets its timer if it holds any it could not deliver.
    pub(super) fn forward_dead_letters(&mut self, queue_name: &str) {
        // Bounded: each turn takes one more message, or settles (removes) one.
        loop {
            let Some(queue) = self.queues.get_mut(queue_name) else {
                return;
            };
            let letters = &mut queue.dead_letters;
            let at = letters.taken();
            if at >= WORKER_PREFETCH || at >= letters.kept.len() {
                break;
            }
            letters.kept[at].taken = true;
            if self.deliver_dead_letter(queue_name, at, false) {
                self.settle_dead_letter(queue_name, at);
            }
        }
        let now_ms = self.now_ms;
        let Some(queue) = self.queues.get_mut(queue_name) else {
            return;
        };
        let letters = &mut queue.dead_letters;
        if letters.taken() == 0 {
            letters.retry_at_ms = None;
        } else if letters.retry_at_ms.is_none() {
            let at = now_ms.saturating_add(RETRY_MS);
            letters.retry_at_ms = Some(at);
            self.alarm.note(at);
        }
    }

    /// The workers whose timer is due route again what they hold (see the module's notes).
    pub(super) fn retry_dead_letters(&mut self) {
        let now_ms = self.now_ms;
        let due: Vec<SmolStr> = (self.queues.iter())
            .filter(|(_, q)| q.dead_letters.retry_at_ms.is_some_and(|at| at <= now_ms))
            .map(|(name, _)| name.clone())
            .collect();
        for queue_name in due {
            let Some(queue) = self.queues.get_mut(&queue_name) else {
                continue;
            };
            queue.dead_letters.retry_at_ms = None;
            let mut at = 0;
            // Bounded by the worker's prefetch: each turn settles one or moves on.
            while let Some(queue) = self.queues.get(&queue_name)
                && let Some(letter) = queue.dead_letters.kept.get(at)
                && letter.taken
            {
                let due = (letter.delivered_at_ms)
                    .is_none_or(|at_ms| at_ms.saturating_add(RETRY_MS) <= now_ms);
                if due && self.deliver_dead_letter(&queue_name, at, true) {
                    self.settle_dead_letter(&queue_name, at);
                } else {
                    at += 1;
                }
            }
            self.forward_dead_letters(&queue_name);
        }
    }

    /// Routes the `at`th kept message of `queue_name` through the queue's dead-letter
    /// exchange and enqueues it in every queue that has not taken it yet. True when it is
    /// delivered: every queue it routes to has taken it (or, on a retry, it routes nowhere
    /// now but some queue took it before).
    fn deliver_dead_letter(&mut self, queue_name: &str, at: usize, retry: bool) -> bool {
        let Some(queue) = self.queues.get(queue_name) else {
            return false;
        };
        let Some(letter) = queue.dead_letters.kept.get(at) else {
            return false;
        };
        // A missing exchange routes nowhere: the message stays.
        if !self
            .exchanges
            .contains_key(letter.message.exchange.as_str())
        {
            return false;
        }
        let keys = if retry {
            &letter.retry_keys
        } else {
            &letter.first_keys
        };
        let mut targets = self.route_dead_letter(&letter.message, keys);
        if retry && targets.is_empty() && !letter.taken_by.is_empty() {
            return true;
        }
        let properties = &letter.message.properties;
        targets.retain(|target| {
            !letter.taken_by.contains(target)
                && (letter.reason == DeathReason::Rejected || !is_cycle(properties, target))
        });
        if targets.is_empty() {
            return false;
        }
        let body_bytes = letter.message.body.len();
        if self.over_ceiling(targets.len(), body_bytes).is_some() {
            tracing::warn!(
                queue = queue_name,
                "dead-lettered message kept: broker full"
            );
            return false;
        }
        let message = letter.message.clone();
        let worker = Some(Publisher::DeadLetterWorker(queue.id));
        let mut took = Vec::new();
        let mut all = true;
        for target in targets {
            if self.enqueue(&target, usize::MAX, &message, worker) {
                took.push(target);
            } else {
                all = false;
            }
        }
        let now_ms = self.now_ms;
        if let Some(letter) =
            (self.queues.get_mut(queue_name)).and_then(|queue| queue.dead_letters.kept.get_mut(at))
        {
            letter.delivered_at_ms = Some(now_ms);
            letter.taken_by.extend(took);
        }
        all
    }

    /// A kept message is delivered: it leaves the queue, which may take publishes again.
    fn settle_dead_letter(&mut self, queue_name: &str, at: usize) {
        let Some(queue) = self.queues.get_mut(queue_name) else {
            return;
        };
        if let Some(letter) = queue.dead_letters.remove(at) {
            queue.note_length();
            self.held.release(&letter.message);
        }
    }
}
