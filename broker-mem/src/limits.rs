//! Every resource the broker holds has a ceiling, stated here once. Where RabbitMQ has a default
//! we use it; where RabbitMQ is unbounded (it relies on memory alarms) we pick a generous number
//! and say so, because an in-memory broker that grows without limit fails far from the cause.

/// AMQP `channel_max` that RabbitMQ negotiates by default (`channel_max = 2047`).
pub const CHANNELS_PER_CONNECTION_MAX: u16 = 2047;

/// Largest message body, in bytes: RabbitMQ 4.x's default `max_message_size` (16 MiB; 3.x used
/// 128 MiB). A larger publish is a channel error 406, as in RabbitMQ.
pub const MESSAGE_BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Queues in the broker. RabbitMQ has no default limit (`max-queues` is a vhost limit); ours
/// keeps a runaway declare loop from eating memory.
pub const QUEUES_MAX: usize = 10_000;

/// Exchanges in the broker, including the pre-declared ones. Ours, like [`QUEUES_MAX`].
pub const EXCHANGES_MAX: usize = 10_000;

/// Bindings in the broker. Ours.
pub const BINDINGS_MAX: usize = 100_000;

/// Consumers on one channel. RabbitMQ's `consumer_max_per_channel` is unlimited by default; ours.
pub const CONSUMERS_PER_CHANNEL_MAX: usize = 1_024;

/// Messages held by the broker (ready plus unacked, one per queue a message reached). RabbitMQ
/// bounds this only through memory alarms; past our ceiling a publish is nacked
/// ([`crate::Confirm::Nack`]) and nothing is enqueued.
pub const HELD_MESSAGES_MAX: usize = 1_000_000;

/// Body bytes held by the broker, counted once per queue a message reached (bodies are shared,
/// so this overestimates, which is the safe side). Past it a publish is nacked.
pub const HELD_BODY_BYTES_MAX: usize = 1024 * 1024 * 1024;

/// Length of an exchange name, queue name, routing key or consumer tag: an AMQP short string.
pub const NAME_BYTES_MAX: usize = 255;

/// Deliveries buffered towards one `no_ack` consumer that it has not received yet. RabbitMQ
/// ignores prefetch for `no_ack` consumers and relies on TCP back-pressure; this window plays
/// that role for the in-process client, so an auto-ack consumer that stops reading cannot drain
/// a whole queue into memory.
pub const NO_ACK_BUFFER_MAX: usize = 1_024;

/// Deliveries waiting in one in-process consumer's buffer, taken or not settled. Prefetch
/// credit keeps a buffer within the consumer's window as long as the client settles only what
/// it has taken; a client that settles deliveries still waiting (a multiple ack from another
/// consumer on the channel, an ack of tag 0) gets credit back for them, and its buffer grows
/// past the window, as a RabbitMQ client's does. Past this ceiling the consumer gets nothing
/// more until it takes from its buffer. Also the ceiling of a prefetch-0 consumer.
pub const CONSUMER_BUFFER_MAX: usize = 65_536;

/// How long a delivery may stay unacked before the broker closes its channel (406), as
/// RabbitMQ's `consumer_timeout` (30 minutes by default since 3.8.15).
pub const CONSUMER_TIMEOUT_MS: u64 = 30 * 60 * 1000;

/// The broker's ceilings; [`Limits::default`] uses the constants of this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Channels open (or closed by an error and not yet released) on one connection.
    pub channels_per_connection_max: u16,
    /// Largest message body, in bytes.
    pub body_bytes_max: usize,
    /// Queues in the broker.
    pub queues_max: usize,
    /// Exchanges in the broker.
    pub exchanges_max: usize,
    /// Bindings in the broker.
    pub bindings_max: usize,
    /// Consumers on one channel.
    pub consumers_per_channel_max: usize,
    /// Messages held (ready plus unacked, per queue).
    pub held_messages_max: usize,
    /// Body bytes held (per queue).
    pub held_body_bytes_max: usize,
    /// RabbitMQ's `consumer_timeout`: a channel holding a delivery (from a consumer or a
    /// `basic.get`) unacked for longer is closed with 406, which requeues it. None turns it off.
    pub consumer_timeout_ms: Option<u64>,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            channels_per_connection_max: CHANNELS_PER_CONNECTION_MAX,
            body_bytes_max: MESSAGE_BODY_BYTES_MAX,
            queues_max: QUEUES_MAX,
            exchanges_max: EXCHANGES_MAX,
            bindings_max: BINDINGS_MAX,
            consumers_per_channel_max: CONSUMERS_PER_CHANNEL_MAX,
            held_messages_max: HELD_MESSAGES_MAX,
            held_body_bytes_max: HELD_BODY_BYTES_MAX,
            consumer_timeout_ms: Some(CONSUMER_TIMEOUT_MS),
        }
    }
}

/// Entries kept by each introspection log (dead-lettered and returned messages); the oldest go
/// first. Tests read them; a long simulation must not grow them without bound.
pub const INTROSPECTION_LOG_MAX: usize = 10_000;

/// Publishes and settled deliveries one transaction (`tx.select`) may hold until its commit:
/// RabbitMQ has no such limit; an in-memory broker needs one. Past it the channel is closed
/// with 406, which rolls the transaction back.
pub const TX_PENDING_MAX: usize = 65_536;

/// Fault hooks armed and not yet fired (drop, duplicate or delay a delivery), and delayed
/// deliveries waiting for their time.
pub const FAULTS_ARMED_MAX: usize = 1_024;

/// Rounds of the engine's run-until-idle loop in one call: each round delivers, expires or
/// dead-letters at least one message, so this is far above what the held ceiling allows; it
/// only guards against a bug looping forever.
pub const IDLE_ROUNDS_MAX: usize = 100_000_000;
