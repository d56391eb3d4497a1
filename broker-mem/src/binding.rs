//! Bindings: which queues and exchanges an exchange routes to, under which binding key and
//! arguments.
//!
//! Kept per exchange as a hashed map from binding key (in binding order), then an ordered map
//! from destination, to the distinct argument tables bound with that pair (almost always one,
//! empty), so a direct exchange finds its destinations with one hashed lookup and every listing
//! comes out in the same order every run. Routing results do not depend on that order: the
//! engine sorts the queues a publish reaches.
//! RabbitMQ identifies a binding by source, destination, key and arguments; so do we.

use std::collections::BTreeMap;

use smol_str::SmolStr;

use crate::lookup::NameMap;
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
    /// Binding key, then destination, to the distinct argument tables bound with that pair.
    /// Keyed by the binding key first so a direct exchange finds its destinations with one
    /// lookup by the routing key, without building a key.
    map: NameMap<BTreeMap<Destination, Vec<FieldTable>>>,
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
        let tables = self
            .map
            .entry(routing_key.into())
            .or_default()
            .entry(to)
            .or_default();
        if tables.contains(&arguments) {
            return false;
        }
        tables.push(arguments);
        self.len += 1;
        true
    }

    /// Whether exactly this binding exists.
    pub(crate) fn contains(
        &self,
        routing_key: &str,
        to: &Destination,
        arguments: &FieldTable,
    ) -> bool {
        self.map
            .get(routing_key)
            .and_then(|destinations| destinations.get(to))
            .is_some_and(|tables| tables.contains(arguments))
    }

    /// Removes one binding; false if there was no such binding.
    pub(crate) fn remove(
        &mut self,
        routing_key: &str,
        to: &Destination,
        arguments: &FieldTable,
    ) -> bool {
        let Some(destinations) = self.map.get_mut(routing_key) else {
            return false;
        };
        let Some(tables) = destinations.get_mut(to) else {
            return false;
        };
        let Some(position) = tables.iter().position(|t| t == arguments) else {
            return false;
        };
        tables.remove(position);
        if tables.is_empty() {
            destinations.remove(to);
            if destinations.is_empty() {
                self.map.shift_remove(routing_key);
            }
        }
        self.len -= 1;
        true
    }

    /// Removes every binding to `to`; returns how many there were.
    pub(crate) fn remove_destination(&mut self, to: &Destination) -> usize {
        let mut removed = 0;
        self.map.retain(|_, destinations| {
            if let Some(tables) = destinations.remove(to) {
                removed += tables.len();
            }
            !destinations.is_empty()
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
        routing_key: &str,
    ) -> impl Iterator<Item = &'a Destination> + use<'a> {
        self.map
            .get(routing_key)
            .into_iter()
            .flat_map(|destinations| destinations.keys())
    }

    /// Every binding: key, destination, arguments.
    pub(crate) fn all(&self) -> impl Iterator<Item = (&str, &Destination, &FieldTable)> {
        self.map.iter().flat_map(|(key, destinations)| {
            destinations.iter().flat_map(move |(destination, tables)| {
                tables.iter().map(move |t| (key.as_str(), destination, t))
            })
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
