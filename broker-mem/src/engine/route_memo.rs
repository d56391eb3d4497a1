//! The route of the last publish, kept for the next one.
//!
//! A publisher usually sends many messages in a row to one exchange with one routing key, and
//! without headers the queues such a publish reaches depend on nothing but the exchange, the
//! key and the topology (exchanges, queues, bindings). The engine counts changes to the
//! topology; while the count stands, a publish with the same exchange and key reuses the last
//! route instead of looking up the exchange, walking its bindings and looking up each queue.
//! Debug builds route every memoized publish again and compare, so the whole test suite
//! checks that nothing that changes routing forgets to count as a change.

use smol_str::SmolStr;

/// The queues a header-less publish to `exchange` with `routing_key` reached.
#[derive(Debug, Default)]
pub(super) struct RouteMemo {
    /// The topology count it was made at; None: nothing memoized.
    pub topology: Option<u64>,
    /// The exchange's own (shared) name: it exists and is not internal.
    pub exchange: SmolStr,
    pub routing_key: SmolStr,
    /// The queues, sorted, each once.
    pub queues: Vec<SmolStr>,
    /// Each queue's index in the engine's queue map when the route was made: a hint, checked
    /// against the name before use (an index moves when an earlier queue is deleted).
    pub hints: Vec<usize>,
}

impl RouteMemo {
    /// Whether this memo answers a publish to `exchange` with `routing_key` at `topology`.
    pub fn answers(&self, topology: u64, exchange: &str, routing_key: &str) -> bool {
        self.topology == Some(topology)
            && self.exchange == exchange
            && self.routing_key == routing_key
    }
}
