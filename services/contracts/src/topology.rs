//! The diagram's exchanges, queues and bindings. Every service declares what it uses at start;
//! declaring is idempotent, so declaring the whole topology from every service is safe.

/// Direct exchange for commands.
pub const EXCHANGE_COMMANDS: &str = "analysis.commands";
/// Fanout exchange for `AnalysisStarted`.
pub const EXCHANGE_STARTED: &str = "analysis.started";
/// Fanout exchange for `AnalysisCompleted`.
pub const EXCHANGE_COMPLETED: &str = "analysis.completed";
/// The orchestrators' command queue.
pub const QUEUE_COMMANDS: &str = "orchestrator.analysis.commands";
/// The gateway's queue of `AnalysisStarted` events.
pub const QUEUE_SUBS_STARTED: &str = "graph.subs.started";
/// The gateway's queue of `AnalysisCompleted` events.
pub const QUEUE_SUBS_COMPLETED: &str = "graph.subs.completed";
/// A gateway replica's own event queue is deleted after this long unused (no consumer, no
/// declare): a replica gone for good does not leave queues filling up for ever.
pub const INSTANCE_QUEUE_EXPIRES_MS: u64 = 30 * 60 * 1000;
/// Most events waiting in a gateway replica's own event queue; past it the oldest go.
pub const INSTANCE_QUEUE_MAX_LENGTH: u64 = 100_000;
/// Most body bytes waiting in a gateway replica's own event queue; past it the oldest go.
pub const INSTANCE_QUEUE_MAX_LENGTH_BYTES: u64 = 256 * 1024 * 1024;
/// Routing key of `RequestAnalysis` on `analysis.commands`.
pub const ROUTING_KEY_REQUEST: &str = "request.analysis";

/// AMQP exchange types warren uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExchangeKind {
    /// Routes on an exact routing key.
    Direct,
    /// Routes to every bound queue.
    Fanout,
}

impl ExchangeKind {
    /// The AMQP name of the type (`direct`, `fanout`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
        }
    }
}

/// One exchange to declare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExchangeDecl {
    /// Exchange name.
    pub name: String,
    /// Exchange type.
    pub kind: ExchangeKind,
    /// Survives a broker restart.
    pub durable: bool,
}

/// One queue to declare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueDecl {
    /// Queue name.
    pub name: String,
    /// Survives a broker restart.
    pub durable: bool,
    /// Bounds declared as queue arguments.
    pub limits: QueueLimits,
}

/// Bounds on a queue, declared as RabbitMQ's optional queue arguments. The contract's fixed
/// queues have none: every service may declare them, and the broker refuses (406) a declare
/// whose arguments differ from the first one's, so adding some would lock out services that
/// follow the contract as written. A gateway replica's own event queues have all three.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct QueueLimits {
    /// `x-expires`: deleted, messages and all, after this many milliseconds unused.
    pub expires_ms: Option<u64>,
    /// `x-max-length`: most ready messages; past it the oldest are dropped (`drop-head`).
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most ready body bytes; past it the oldest are dropped.
    pub max_length_bytes: Option<u64>,
}

impl QueueLimits {
    /// A gateway replica's own event queues: see [`INSTANCE_QUEUE_EXPIRES_MS`] and the
    /// constants beside it.
    pub fn gateway_instance() -> QueueLimits {
        QueueLimits {
            expires_ms: Some(INSTANCE_QUEUE_EXPIRES_MS),
            max_length: Some(INSTANCE_QUEUE_MAX_LENGTH),
            max_length_bytes: Some(INSTANCE_QUEUE_MAX_LENGTH_BYTES),
        }
    }

    /// The `queue.declare` arguments, by AMQP name, in a fixed order, as the signed 64-bit
    /// integers RabbitMQ's own clients send (a value past `i64::MAX` is sent as that).
    pub fn arguments(&self) -> Vec<(&'static str, i64)> {
        [
            ("x-expires", self.expires_ms),
            ("x-max-length", self.max_length),
            ("x-max-length-bytes", self.max_length_bytes),
        ]
        .into_iter()
        .filter_map(|(name, value)| Some((name, i64::try_from(value?).unwrap_or(i64::MAX))))
        .collect()
    }
}

/// A queue bound to an exchange with a routing key (empty for fanout).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Binding {
    /// Source exchange.
    pub exchange: String,
    /// Destination queue.
    pub queue: String,
    /// Binding key.
    pub routing_key: String,
}

/// A set of exchanges, queues and bindings, declared in that order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    /// Exchanges, declared first.
    pub exchanges: Vec<ExchangeDecl>,
    /// Queues, declared second.
    pub queues: Vec<QueueDecl>,
    /// Bindings, declared last.
    pub bindings: Vec<Binding>,
}

impl Topology {
    /// The topology of `contract/messages.md`, all durable.
    pub fn contract() -> Topology {
        let exchange = |name: &str, kind| ExchangeDecl {
            name: name.into(),
            kind,
            durable: true,
        };
        let queue = |name: &str| QueueDecl {
            name: name.into(),
            durable: true,
            limits: QueueLimits::default(),
        };
        let binding = |exchange: &str, queue: &str, routing_key: &str| Binding {
            exchange: exchange.into(),
            queue: queue.into(),
            routing_key: routing_key.into(),
        };
        Topology {
            exchanges: vec![
                exchange(EXCHANGE_COMMANDS, ExchangeKind::Direct),
                exchange(EXCHANGE_STARTED, ExchangeKind::Fanout),
                exchange(EXCHANGE_COMPLETED, ExchangeKind::Fanout),
            ],
            queues: vec![
                queue(QUEUE_COMMANDS),
                queue(QUEUE_SUBS_STARTED),
                queue(QUEUE_SUBS_COMPLETED),
            ],
            bindings: vec![
                binding(EXCHANGE_COMMANDS, QUEUE_COMMANDS, ROUTING_KEY_REQUEST),
                binding(EXCHANGE_STARTED, QUEUE_SUBS_STARTED, ""),
                binding(EXCHANGE_COMPLETED, QUEUE_SUBS_COMPLETED, ""),
            ],
        }
    }

    /// Only what the orchestrator uses: the command queue and both event exchanges.
    pub fn orchestrator() -> Topology {
        Topology::contract().restricted_to(&[QUEUE_COMMANDS])
    }

    /// What the gateway declares: the whole contract. It includes the command queue so that a
    /// command published before any orchestrator has started waits in its queue instead of
    /// being dropped as unroutable.
    pub fn gateway() -> Topology {
        Topology::contract()
    }

    /// What a gateway replica declares: with `instance`, its own event queues
    /// `graph.subs.started.<instance>` and `graph.subs.completed.<instance>` bound to the fanout
    /// exchanges in place of the fixed ones (so every replica gets every event), bounded by
    /// [`QueueLimits::gateway_instance`], plus the command queue; without, [`Topology::gateway`].
    pub fn gateway_for(instance: Option<&str>) -> Topology {
        let Some(instance) = instance else {
            return Topology::gateway();
        };
        let mut topology = Topology::contract().restricted_to(&[QUEUE_COMMANDS]);
        for (exchange, queue) in [
            (EXCHANGE_STARTED, QUEUE_SUBS_STARTED),
            (EXCHANGE_COMPLETED, QUEUE_SUBS_COMPLETED),
        ] {
            let name = format!("{queue}.{instance}");
            topology.queues.push(QueueDecl {
                name: name.clone(),
                durable: true,
                limits: QueueLimits::gateway_instance(),
            });
            topology.bindings.push(Binding {
                exchange: exchange.into(),
                queue: name,
                routing_key: String::new(),
            });
        }
        topology
    }

    /// The event queues a gateway consumes: Started's, then Completed's.
    pub fn subscription_queues(instance: Option<&str>) -> Vec<String> {
        [QUEUE_SUBS_STARTED, QUEUE_SUBS_COMPLETED]
            .iter()
            .map(|q| instance.map_or_else(|| (*q).to_owned(), |i| format!("{q}.{i}")))
            .collect()
    }

    /// Every exchange, plus only the named queues and their bindings.
    fn restricted_to(mut self, queues: &[&str]) -> Topology {
        self.queues.retain(|q| queues.contains(&q.name.as_str()));
        self.bindings.retain(|b| queues.contains(&b.queue.as_str()));
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_topology_matches_messages_md() {
        let t = Topology::contract();
        let names: Vec<_> = t
            .exchanges
            .iter()
            .map(|e| (e.name.as_str(), e.kind.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("analysis.commands", "direct"),
                ("analysis.started", "fanout"),
                ("analysis.completed", "fanout")
            ]
        );
        assert!(t.exchanges.iter().all(|e| e.durable) && t.queues.iter().all(|q| q.durable));
        let bindings: Vec<_> = t
            .bindings
            .iter()
            .map(|b| {
                (
                    b.exchange.as_str(),
                    b.queue.as_str(),
                    b.routing_key.as_str(),
                )
            })
            .collect();
        assert_eq!(
            bindings,
            [
                (
                    "analysis.commands",
                    "orchestrator.analysis.commands",
                    "request.analysis"
                ),
                ("analysis.started", "graph.subs.started", ""),
                ("analysis.completed", "graph.subs.completed", "")
            ]
        );
    }

    #[test]
    fn gateway_replicas_get_queues_of_their_own() {
        let t = Topology::gateway_for(Some("gw-2"));
        let queues: Vec<_> = t.queues.iter().map(|q| q.name.as_str()).collect();
        assert_eq!(
            queues,
            [
                "orchestrator.analysis.commands",
                "graph.subs.started.gw-2",
                "graph.subs.completed.gw-2"
            ]
        );
        assert!(
            t.bindings
                .iter()
                .any(|b| b.exchange == "analysis.started" && b.queue == "graph.subs.started.gw-2")
        );
        assert_eq!(
            Topology::subscription_queues(Some("gw-2")),
            ["graph.subs.started.gw-2", "graph.subs.completed.gw-2"]
        );
        assert!(
            t.queues[1..]
                .iter()
                .all(|q| q.limits == QueueLimits::gateway_instance())
        );
        assert_eq!(
            QueueLimits::gateway_instance().arguments(),
            [
                ("x-expires", 1_800_000),
                ("x-max-length", 100_000),
                ("x-max-length-bytes", 268_435_456)
            ]
        );
        assert_eq!(t.queues[0].limits, QueueLimits::default());
        assert!(QueueLimits::default().arguments().is_empty());
        assert_eq!(Topology::gateway_for(None), Topology::contract());
        assert_eq!(
            Topology::subscription_queues(None),
            ["graph.subs.started", "graph.subs.completed"]
        );
    }

    #[test]
    fn orchestrator_declares_only_its_queue_and_gateway_declares_all() {
        let o = Topology::orchestrator();
        assert_eq!(o.queues.len(), 1);
        assert_eq!(o.bindings.len(), 1);
        assert_eq!(o.exchanges.len(), 3);
        assert_eq!(Topology::gateway(), Topology::contract());
    }
}
