//! The fault catalog: what can go wrong, when, and how a run heals afterwards.
//!
//! Faults are scheduled at simulated times. After the last one comes the heal phase: every
//! partition is repaired, every held link released, every crashed host restarted and latency
//! set back to normal; then the system has a convergence deadline to finish all accepted work.
//! Missing that deadline is "stuck" (liveness), reported apart from "wrong" (safety).

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One fault.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Fault {
    /// The host's process dies; its connections drop (the broker requeues its unacked messages).
    Crash {
        /// Host name, e.g. `orchestrator-0`.
        host: String,
    },
    /// The host's process starts again (after a crash), or is restarted at once.
    Restart {
        /// Host name.
        host: String,
    },
    /// Messages between `a` and `b` are dropped both ways (turmoil never retransmits: open
    /// connections hang until a heartbeat or timeout notices).
    Partition {
        /// One side.
        a: String,
        /// The other side.
        b: String,
    },
    /// Ends a partition.
    Repair {
        /// One side.
        a: String,
        /// The other side.
        b: String,
    },
    /// Messages from `from` to `to` are dropped; the other way still works.
    PartitionOneway {
        /// Sender side.
        from: String,
        /// Receiver side.
        to: String,
    },
    /// Ends a one-way partition.
    RepairOneway {
        /// Sender side.
        from: String,
        /// Receiver side.
        to: String,
    },
    /// Messages between `a` and `b` are queued, not lost: a very slow link.
    Hold {
        /// One side.
        a: String,
        /// The other side.
        b: String,
    },
    /// Delivers everything held between `a` and `b`.
    Release {
        /// One side.
        a: String,
        /// The other side.
        b: String,
    },
    /// Sets the longest message latency on every link.
    Latency {
        /// Milliseconds.
        max_ms: u64,
    },
    /// The broker restarts: every connection closes (services reconnect), durable queues keep
    /// their persistent messages, everything else is lost, as in RabbitMQ.
    BrokerRestart,
    /// The queue's next delivery is handed over and a copy stays queued, marked redelivered (a
    /// lost ack): the consumer sees the message twice.
    DuplicateDelivery {
        /// Queue name.
        queue: String,
    },
    /// The queue's next delivery reaches its consumer only after `delay_ms`.
    DelayDelivery {
        /// Queue name.
        queue: String,
        /// Milliseconds.
        delay_ms: u64,
    },
    /// The broker nacks the next publish to `exchange` (the publisher sees a failed confirm).
    NackPublish {
        /// Exchange name.
        exchange: String,
    },
    /// The broker closes every channel consuming `queue` (406): their unacked deliveries are
    /// requeued and the consumers end, so the services must consume again.
    CloseConsumerChannels {
        /// Queue name.
        queue: String,
    },
    /// The queue's next delivery is lost on its way: counted unacked, never seen, back only when
    /// its channel closes. In process nothing closes it, so this finds missing per-message
    /// timeouts (expect `lost`).
    DropDelivery {
        /// Queue name.
        queue: String,
    },
}

impl Fault {
    /// A short name for counters ("which faults were reached").
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::Crash { .. } => "crash",
            Fault::Restart { .. } => "restart",
            Fault::Partition { .. } => "partition",
            Fault::Repair { .. } => "repair",
            Fault::PartitionOneway { .. } => "partition-oneway",
            Fault::RepairOneway { .. } => "repair-oneway",
            Fault::Hold { .. } => "hold",
            Fault::Release { .. } => "release",
            Fault::Latency { .. } => "latency",
            Fault::BrokerRestart => "broker-restart",
            Fault::DuplicateDelivery { .. } => "duplicate-delivery",
            Fault::DelayDelivery { .. } => "delay-delivery",
            Fault::DropDelivery { .. } => "drop-delivery",
            Fault::NackPublish { .. } => "nack-publish",
            Fault::CloseConsumerChannels { .. } => "close-consumer-channels",
        }
    }

    /// Hosts the fault names.
    pub fn hosts(&self) -> Vec<&str> {
        match self {
            Fault::Crash { host } | Fault::Restart { host } => vec![host],
            Fault::Partition { a, b }
            | Fault::Repair { a, b }
            | Fault::Hold { a, b }
            | Fault::Release { a, b } => {
                vec![a, b]
            }
            Fault::PartitionOneway { from, to } | Fault::RepairOneway { from, to } => {
                vec![from, to]
            }
            Fault::Latency { .. }
            | Fault::BrokerRestart
            | Fault::DuplicateDelivery { .. }
            | Fault::DelayDelivery { .. }
            | Fault::DropDelivery { .. }
            | Fault::NackPublish { .. }
            | Fault::CloseConsumerChannels { .. } => vec![],
        }
    }

    /// Whether this step ends an earlier fault (a repair, a restart, a release): one the run
    /// never reached only means that fault lasted to the end.
    pub fn undoes_another(&self) -> bool {
        matches!(
            self,
            Fault::Restart { .. }
                | Fault::Repair { .. }
                | Fault::RepairOneway { .. }
                | Fault::Release { .. }
        )
    }

    /// The broker queue the fault names, if any.
    pub fn queue(&self) -> Option<&str> {
        match self {
            Fault::DuplicateDelivery { queue }
            | Fault::DelayDelivery { queue, .. }
            | Fault::DropDelivery { queue }
            | Fault::CloseConsumerChannels { queue } => Some(queue),
            _ => None,
        }
    }

    /// The broker exchange the fault names, if any.
    pub fn exchange(&self) -> Option<&str> {
        match self {
            Fault::NackPublish { exchange } => Some(exchange),
            _ => None,
        }
    }
}

/// A fault at a simulated time.
// No `deny_unknown_fields` here: serde does not support it beside `flatten`; the flattened
// `Fault` still refuses fields its kind does not have.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ScheduledFault {
    /// Simulated milliseconds since the start.
    pub at_ms: u64,
    /// What happens.
    #[serde(flatten)]
    pub fault: Fault,
}

/// What the heal phase must undo, tracked while faults are applied.
#[derive(Debug, Default)]
pub(crate) struct Damage {
    pub(crate) crashed: BTreeSet<String>,
    pub(crate) partitions: BTreeSet<(String, String)>,
    pub(crate) oneway: BTreeSet<(String, String)>,
    pub(crate) held: BTreeSet<(String, String)>,
    pub(crate) latency_changed: bool,
    /// Broker hooks a broker restart disarmed before they fired: they never fired, though
    /// the broker no longer lists them.
    pub(crate) disarmed: Vec<broker_mem::ArmedFault>,
}

/// Applies one fault to the simulation and records what it broke.
pub(crate) fn apply(
    sim: &mut turmoil::Sim<'_>,
    broker: &broker_mem::Broker,
    fault: &Fault,
    damage: &mut Damage,
) {
    tracing::info!(target: "warren_sim::fault", fault = ?fault, "fault");
    match fault {
        Fault::Crash { host } => {
            sim.crash(host.as_str());
            damage.crashed.insert(host.clone());
        }
        Fault::Restart { host } => {
            sim.bounce(host.as_str());
            damage.crashed.remove(host);
        }
        Fault::Partition { a, b } => {
            sim.partition(a.as_str(), b.as_str());
            damage.partitions.insert((a.clone(), b.clone()));
        }
        Fault::Repair { a, b } => {
            sim.repair(a.as_str(), b.as_str());
            damage.partitions.remove(&(a.clone(), b.clone()));
            damage.partitions.remove(&(b.clone(), a.clone()));
        }
        Fault::PartitionOneway { from, to } => {
            sim.partition_oneway(from.as_str(), to.as_str());
            damage.oneway.insert((from.clone(), to.clone()));
        }
        Fault::RepairOneway { from, to } => {
            sim.repair_oneway(from.as_str(), to.as_str());
            damage.oneway.remove(&(from.clone(), to.clone()));
        }
        Fault::Hold { a, b } => {
            sim.hold(a.as_str(), b.as_str());
            damage.held.insert((a.clone(), b.clone()));
        }
        Fault::Release { a, b } => {
            sim.release(a.as_str(), b.as_str());
            damage.held.remove(&(a.clone(), b.clone()));
            damage.held.remove(&(b.clone(), a.clone()));
        }
        Fault::Latency { max_ms } => {
            sim.set_max_message_latency(Duration::from_millis(*max_ms));
            damage.latency_changed = true;
        }
        Fault::BrokerRestart => {
            let mut armed = broker.armed_faults();
            broker.restart();
            // What is still armed survived the restart; the rest was disarmed unfired.
            for kept in broker.armed_faults() {
                if let Some(at) = armed.iter().position(|a| *a == kept) {
                    armed.remove(at);
                }
            }
            damage.disarmed.extend(armed);
        }
        Fault::DuplicateDelivery { queue } => broker.duplicate_next_delivery(queue),
        Fault::DelayDelivery { queue, delay_ms } => broker.delay_next_delivery(queue, *delay_ms),
        Fault::DropDelivery { queue } => broker.drop_next_delivery(queue),
        Fault::NackPublish { exchange } => broker.nack_next_publish_to(exchange, false),
        Fault::CloseConsumerChannels { queue } => broker.force_close_consumer_channels(
            queue,
            broker_mem::ReplyCode::PreconditionFailed,
            "fault: channel closed by the broker",
        ),
    }
}

/// Undoes every fault still in effect: the start of the heal phase.
pub(crate) fn heal(sim: &mut turmoil::Sim<'_>, damage: &mut Damage, normal_latency: Duration) {
    tracing::info!(target: "warren_sim::fault", "heal");
    for (a, b) in std::mem::take(&mut damage.partitions) {
        sim.repair(a.as_str(), b.as_str());
    }
    for (from, to) in std::mem::take(&mut damage.oneway) {
        sim.repair_oneway(from.as_str(), to.as_str());
    }
    for (a, b) in std::mem::take(&mut damage.held) {
        sim.release(a.as_str(), b.as_str());
    }
    for host in std::mem::take(&mut damage.crashed) {
        sim.bounce(host.as_str());
    }
    if std::mem::take(&mut damage.latency_changed) {
        sim.set_max_message_latency(normal_latency);
    }
}
