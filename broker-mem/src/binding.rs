//! Bindings: which queues an exchange routes to, under which binding key.
//!
//! Kept per exchange as an ordered set of `(binding key, queue)`, so a direct exchange finds its
//! queues with one range scan and every listing comes out in the same order every run.

use std::collections::BTreeSet;

/// A binding as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BindingInfo {
    /// Source exchange.
    pub exchange: String,
    /// Destination queue.
    pub queue: String,
    /// Binding key (kept as declared, also for fanout exchanges, which ignore it).
    pub routing_key: String,
}

/// One exchange's bindings.
#[derive(Debug, Default)]
pub(crate) struct Bindings {
    /// `(binding key, queue)`.
    set: BTreeSet<(String, String)>,
}

impl Bindings {
    /// Adds a binding; false if it already existed (binding is idempotent).
    pub(crate) fn insert(&mut self, routing_key: &str, queue: &str) -> bool {
        self.set.insert((routing_key.to_owned(), queue.to_owned()))
    }

    /// Removes every binding to `queue`; returns how many there were.
    pub(crate) fn remove_queue(&mut self, queue: &str) -> usize {
        let before = self.set.len();
        self.set.retain(|(_, q)| q != queue);
        before - self.set.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.set.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Queues bound with exactly `routing_key`.
    pub(crate) fn queues_with_key(&self, routing_key: &str, targets: &mut BTreeSet<String>) {
        let from = (routing_key.to_owned(), String::new());
        let matching = self
            .set
            .range(from..)
            .take_while(|(key, _)| key == routing_key);
        targets.extend(matching.map(|(_, queue)| queue.clone()));
    }

    /// Every bound queue.
    pub(crate) fn all_queues(&self, targets: &mut BTreeSet<String>) {
        targets.extend(self.set.iter().map(|(_, queue)| queue.clone()));
    }

    pub(crate) fn infos<'a>(&'a self, exchange: &'a str) -> impl Iterator<Item = BindingInfo> + 'a {
        self.set
            .iter()
            .map(move |(routing_key, queue)| BindingInfo {
                exchange: exchange.to_owned(),
                queue: queue.clone(),
                routing_key: routing_key.clone(),
            })
    }
}
