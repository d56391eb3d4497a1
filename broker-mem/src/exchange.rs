//! Exchanges: where publishers send messages. An exchange owns its bindings and decides, from a
//! routing key, which queues a message reaches.

use std::collections::BTreeSet;

use crate::binding::Bindings;
use crate::error::{Fault, ReplyCode};

/// The exchange types broker-mem implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExchangeKind {
    /// Routes to the queues bound with a binding key equal to the routing key.
    Direct,
    /// Routes to every bound queue; the routing key is ignored.
    Fanout,
}

impl ExchangeKind {
    /// The AMQP type name (`direct`, `fanout`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
        }
    }
}

/// Flags of `exchange.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeOptions {
    /// Survives a broker restart (recorded and checked for equivalence; broker-mem has no
    /// restart yet).
    pub durable: bool,
    /// Deleted when its last binding is removed.
    pub auto_delete: bool,
    /// Cannot be published to directly (403), only bound from other exchanges.
    pub internal: bool,
    /// Only check that the exchange exists (404 if not); nothing is created or compared.
    pub passive: bool,
}

/// An exchange as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExchangeInfo {
    /// Name (`""` is the default exchange).
    pub name: String,
    /// Type.
    pub kind: ExchangeKind,
    /// Declared durable.
    pub durable: bool,
    /// Declared auto-delete.
    pub auto_delete: bool,
    /// Declared internal.
    pub internal: bool,
}

/// The name of the default exchange, which routes to the queue named by the routing key.
pub(crate) const DEFAULT_EXCHANGE: &str = "";

/// The exchanges every RabbitMQ vhost starts with, restricted to the types broker-mem has.
pub(crate) const PREDECLARED: [(&str, ExchangeKind); 3] = [
    (DEFAULT_EXCHANGE, ExchangeKind::Direct),
    ("amq.direct", ExchangeKind::Direct),
    ("amq.fanout", ExchangeKind::Fanout),
];

#[derive(Debug)]
pub(crate) struct Exchange {
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    pub bindings: Bindings,
}

impl Exchange {
    pub(crate) fn new(kind: ExchangeKind, options: ExchangeOptions) -> Exchange {
        Exchange {
            kind,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            bindings: Bindings::default(),
        }
    }

    /// RabbitMQ's equivalence check for a redeclare: every property must match.
    pub(crate) fn check_equivalent(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) -> Result<(), Fault> {
        let inequivalent = |arg: &str, received: &str, current: &str| {
            Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{}': received \
                     '{received}' but current is '{current}'",
                    crate::VHOST
                ),
            )
        };
        if kind != self.kind {
            return Err(inequivalent("type", kind.as_str(), self.kind.as_str()));
        }
        let flags = [
            ("durable", options.durable, self.durable),
            ("auto_delete", options.auto_delete, self.auto_delete),
            ("internal", options.internal, self.internal),
        ];
        for (arg, received, current) in flags {
            if received != current {
                return Err(inequivalent(arg, bool_str(received), bool_str(current)));
            }
        }
        Ok(())
    }

    /// Adds to `targets` the queues this exchange routes `routing_key` to.
    pub(crate) fn route(&self, routing_key: &str, targets: &mut BTreeSet<String>) {
        match self.kind {
            ExchangeKind::Direct => self.bindings.queues_with_key(routing_key, targets),
            ExchangeKind::Fanout => self.bindings.all_queues(targets),
        }
    }

    pub(crate) fn info(&self, name: &str) -> ExchangeInfo {
        ExchangeInfo {
            name: name.to_owned(),
            kind: self.kind,
            durable: self.durable,
            auto_delete: self.auto_delete,
            internal: self.internal,
        }
    }
}

pub(crate) fn bool_str(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}
