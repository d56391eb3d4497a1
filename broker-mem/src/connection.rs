//! Connections: the unit a client opens, that owns channels and exclusive queues, and whose
//! close requeues everything its channels had in flight.

use std::collections::BTreeSet;
use std::fmt;

use crate::channel::ChannelId;
use crate::error::AmqpError;

/// The user of [`crate::Broker::connect`], RabbitMQ's default user. A publish whose `user_id`
/// property names another user is refused (406), as in RabbitMQ.
pub const DEFAULT_USER: &str = "guest";

/// Identifies a connection for the broker's lifetime; never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnectionId(pub(crate) u64);

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "connection {}", self.0)
    }
}

#[derive(Debug)]
pub(crate) struct ConnectionState {
    pub user: String,
    /// Set when a connection error closed it; kept until the client releases the connection so
    /// later calls can say why.
    pub closed: Option<AmqpError>,
    /// Channels holding a channel number: open, or closed by an error and not yet released.
    pub channels: BTreeSet<ChannelId>,
}
