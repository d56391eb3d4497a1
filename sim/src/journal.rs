//! What crossed the bus, per host: every publish, delivery and settlement, recorded by wrapping
//! each host's `Bus`. Tests assert on it ("what was published, consumed and acked"), and each
//! entry is also a trace event, so the determinism check covers the broker-level message order.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use contracts::{Publication, Topology};
use futures::StreamExt;
use ports::{Acker, Bus, BusError, ConsumeOptions, Deliveries, Delivery};
use serde::Serialize;

/// Most entries one run keeps; past it the journal stops growing (and says so in the trace).
pub const JOURNAL_ENTRIES_MAX: usize = 1_000_000;

/// What happened on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Action {
    /// A publish the broker confirmed.
    Published,
    /// A publish that failed.
    PublishFailed,
    /// A delivery handed to a consumer.
    Delivered,
    /// `basic.ack`.
    Acked,
    /// `basic.nack`, requeue or not.
    Nacked {
        /// Back to the queue?
        requeue: bool,
    },
    /// `basic.reject`, requeue or not.
    Rejected {
        /// Back to the queue?
        requeue: bool,
    },
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// The host whose bus it was.
    pub host: String,
    /// What happened.
    pub action: Action,
    /// The exchange (publishes) or queue (deliveries and settlements).
    pub target: String,
    /// The message's `type` property.
    pub kind: Option<String>,
    /// The message's `message_id` property.
    pub message_id: Option<String>,
    /// The broker had delivered it before.
    pub redelivered: bool,
}

/// A shared journal.
#[derive(Debug, Clone, Default)]
pub struct Journal {
    entries: Arc<Mutex<Vec<Entry>>>,
    /// Set at the first entry past the limit, which the trace is told of.
    full: Arc<AtomicBool>,
}

impl Journal {
    /// Every entry so far, in order.
    pub fn entries(&self) -> Vec<Entry> {
        self.entries.lock().expect("journal poisoned").clone()
    }

    /// Entries of one host.
    pub fn of_host(&self, host: &str) -> Vec<Entry> {
        self.entries()
            .into_iter()
            .filter(|e| e.host == host)
            .collect()
    }

    fn record(&self, entry: Entry) {
        tracing::info!(
            target: "warren_sim::journal",
            host = %entry.host, action = ?entry.action, target_name = %entry.target,
            kind = ?entry.kind, message_id = ?entry.message_id, redelivered = entry.redelivered,
            "bus"
        );
        let mut entries = self.entries.lock().expect("journal poisoned");
        if entries.len() < JOURNAL_ENTRIES_MAX {
            entries.push(entry);
        } else if !self.full.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                target: "warren_sim::journal",
                "journal full at {JOURNAL_ENTRIES_MAX} entries: later ones are in the trace only"
            );
        }
    }

    /// Wraps `bus` so that everything `host` does on it is journaled.
    pub fn wrap(&self, host: &str, bus: Arc<dyn Bus>) -> Arc<dyn Bus> {
        Arc::new(JournalBus {
            inner: bus,
            host: host.to_owned(),
            journal: self.clone(),
        })
    }
}

struct JournalBus {
    inner: Arc<dyn Bus>,
    host: String,
    journal: Journal,
}

#[async_trait]
impl Bus for JournalBus {
    async fn declare(&self, topology: &Topology) -> Result<(), BusError> {
        self.inner.declare(topology).await
    }

    async fn publish(&self, publication: Publication) -> Result<(), BusError> {
        let mut entry = Entry {
            host: self.host.clone(),
            action: Action::Published,
            target: publication.exchange.clone(),
            kind: publication.properties.kind.clone(),
            message_id: publication.properties.message_id.clone(),
            redelivered: false,
        };
        let result = self.inner.publish(publication).await;
        if result.is_err() {
            entry.action = Action::PublishFailed;
        }
        self.journal.record(entry);
        result
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Deliveries, BusError> {
        let deliveries = self.inner.consume(queue, options).await?;
        let (journal, host, queue) = (self.journal.clone(), self.host.clone(), queue.to_owned());
        Ok(deliveries
            .map(move |item| {
                item.map(|delivery| {
                    let entry = Entry {
                        host: host.clone(),
                        action: Action::Delivered,
                        target: queue.clone(),
                        kind: delivery.properties.kind.clone(),
                        message_id: delivery.properties.message_id.clone(),
                        redelivered: delivery.redelivered,
                    };
                    journal.record(entry.clone());
                    let (properties, body) = (delivery.properties.clone(), delivery.body.clone());
                    let (redelivered, exchange, routing_key) = (
                        delivery.redelivered,
                        delivery.exchange.clone(),
                        delivery.routing_key.clone(),
                    );
                    let acker = JournalAcker {
                        inner: delivery,
                        journal: journal.clone(),
                        entry,
                    };
                    Delivery::new(
                        properties,
                        body,
                        redelivered,
                        exchange,
                        routing_key,
                        Box::new(acker),
                    )
                })
            })
            .boxed())
    }
}

struct JournalAcker {
    inner: Delivery,
    journal: Journal,
    entry: Entry,
}

impl JournalAcker {
    /// Journals a settlement that the broker took.
    fn record_if_ok(
        journal: &Journal,
        entry: Entry,
        action: Action,
        result: &Result<(), BusError>,
    ) {
        if result.is_ok() {
            journal.record(Entry { action, ..entry });
        }
    }
}

#[async_trait]
impl Acker for JournalAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let JournalAcker {
            inner,
            journal,
            entry,
        } = *self;
        let result = inner.ack().await;
        JournalAcker::record_if_ok(&journal, entry, Action::Acked, &result);
        result
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        let JournalAcker {
            inner,
            journal,
            entry,
        } = *self;
        let result = inner.nack(requeue).await;
        JournalAcker::record_if_ok(&journal, entry, Action::Nacked { requeue }, &result);
        result
    }

    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        let JournalAcker {
            inner,
            journal,
            entry,
        } = *self;
        let result = inner.reject(requeue).await;
        JournalAcker::record_if_ok(&journal, entry, Action::Rejected { requeue }, &result);
        result
    }
}
