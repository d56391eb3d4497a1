//! Bindings: which queues and exchanges an exchange routes to, under which binding key and
//! arguments.
//!
//! Kept per exchange as an ordered map from `(binding key, destination)` to the distinct
//! argument tables bound with that pair (almost always one, empty), so a direct exchange finds
//! its destinations with one range scan and every listing comes out in the same order every run.
//! RabbitMQ identifies a binding by source, destination, key and arguments; so do we.

use std::collections::BTreeMap;

use smol_str::SmolStr;

use crate::message::FieldTable;

/// A binding of an exchange to a queue, as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BindingInfo {
    /// Source exchange.
    pub exchange: String,
    /// Destination queue.
    pub queue: String,
    /// Binding key (kept as declared, also for fanout exchanges, which ignore it).
    pub routing_key: String,
}

/// A binding of an exchange to another exchange (`exchange.bind`), as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExchangeBindingInfo {
    /// Source exchange: messages it routes with a matching key go on to `destination`.
    pub source: String,
    /// Destination exchange.
    pub destination: String,
    /// Binding key.
    pub routing_key: String,
}

/// Where a binding leads.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Destination {
    Queue(SmolStr),
    Exchange(SmolStr),
}

/// One exchange's bindings.
#[derive(Debug, Default)]
pub(crate) struct Bindings {
    /// `(binding key, destination)` to the distinct argument tables bound with it.
    map: BTreeMap<(SmolStr, Destination), Vec<FieldTable>>,
    len: usize,
}

impl Bindings {
    /// Adds a binding; false if it already existed (binding is idempotent).
    pub(crate) fn insert(
        &mut self,
        routing_key: &str,
        to: Destination,
        arguments: FieldTable,
    ) -> bool {
        let tables = self.map.entry((routing_key.into(), to)).or_default();
        if tables.contains(&arguments) {
            return false;
        }
        tables.push(arguments);
        self.len += 1;
        true
    }

    /// Removes one binding; false if there was no such binding.
    pub(crate) fn remove(
        &mut self,
        routing_key: &str,
        to: &Destination,
        arguments: &FieldTable,
    ) -> bool {
        let key = (SmolStr::new(routing_key), to.clone());
        let Some(tables) = self.map.get_mut(&key) else {
            return false;
        };
        let Some(position) = tables.iter().position(|t| t == arguments) else {
            return false;
        };
        tables.remove(position);
        if tables.is_empty() {
            self.map.remove(&key);
        }
        self.len -= 1;
        true
    }

    /// Removes every binding to `to`; returns how many there were.
    pub(crate) fn remove_destination(&mut self, to: &Destination) -> usize {
        let mut removed = 0;
        self.map.retain(|(_, d), tables| {
            if d == to {
                removed += tables.len();
                false
            } else {
                true
            }
        });
        self.len -= removed;
        removed
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Destinations bound with exactly `routing_key`.
    pub(crate) fn with_key<'a>(
        &'a self,
        routing_key: &'a str,
    ) -> impl Iterator<Item = &'a Destination> + 'a {
        // Inline up to 23 bytes: a lookup by a routing key of that size does not allocate.
        let from = (SmolStr::new(routing_key), Destination::Queue(SmolStr::default()));
        self.map
            .range(from..)
            .take_while(move |((key, _), _)| key == routing_key)
            .map(|((_, destination), _)| destination)
    }

    /// Every binding: key, destination, arguments.
    pub(crate) fn all(&self) -> impl Iterator<Item = (&str, &Destination, &FieldTable)> {
        self.map.iter().flat_map(|((key, destination), tables)| {
            tables.iter().map(move |t| (key.as_str(), destination, t))
        })
    }

    pub(crate) fn infos<'a>(&'a self, exchange: &'a str) -> impl Iterator<Item = BindingInfo> + 'a {
        self.all()
            .filter_map(move |(routing_key, destination, _)| match destination {
                Destination::Queue(queue) => Some(BindingInfo {
                    exchange: exchange.to_owned(),
                    queue: queue.to_string(),
                    routing_key: routing_key.to_owned(),
                }),
                Destination::Exchange(_) => None,
            })
    }

    pub(crate) fn exchange_infos<'a>(
        &'a self,
        source: &'a str,
    ) -> impl Iterator<Item = ExchangeBindingInfo> + 'a {
        self.all()
            .filter_map(move |(routing_key, destination, _)| match destination {
                Destination::Exchange(destination) => Some(ExchangeBindingInfo {
                    source: source.to_owned(),
                    destination: destination.to_string(),
                    routing_key: routing_key.to_owned(),
                }),
                Destination::Queue(_) => None,
            })
    }
}
