//! Queues: ready messages in delivery order, and the consumers that compete for them.
//!
//! Every enqueued message gets a broker-wide sequence number. The ready list stays sorted by it,
//! which is what makes a requeued message land in its original position (RabbitMQ classic
//! queues: ahead of everything enqueued after it) without any bookkeeping of positions. A
//! priority queue (`x-max-priority`) sorts by priority first, highest first, then by sequence,
//! so the same holds within each priority. A quorum queue gives a message coming back a new
//! sequence number, and puts the ones a closed channel returned ahead of the rest (RabbitMQ
//! 3.10's order; see `Engine::finish`).

use std::borrow::Cow;
use std::collections::VecDeque;

use smol_str::SmolStr;

use crate::channel::ChannelId;
use crate::connection::ConnectionId;
use crate::engine::dead_letters::DeadLetters;
use crate::error::{AmqpError, Fault, ReplyCode};
use crate::exchange::bool_str;
use crate::lookup::HandleMap;
use crate::message::{
    EXPIRY_MS_MAX, FieldTable, FieldValue, Message, describe_values, erlang_string,
};

/// Flags of `queue.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueOptions {
    /// Survives a broker restart (recorded and checked for equivalence; no restart yet).
    pub durable: bool,
    /// Only the declaring connection may use it (others get 405); deleted when that connection
    /// closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes away (a queue that never had one is kept).
    pub auto_delete: bool,
    /// Only check that the queue exists (404 if not); nothing is created or compared.
    pub passive: bool,
}

/// The answer to `queue.declare`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDeclareOk {
    /// The queue's name (server-generated `amq.gen-<n>` when declared with an empty name).
    pub name: String,
    /// Ready messages.
    pub message_count: u32,
    /// Consumers.
    pub consumer_count: u32,
}

/// A queue as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct QueueInfo {
    /// Name.
    pub name: String,
    /// Declared durable.
    pub durable: bool,
    /// Declared exclusive.
    pub exclusive: bool,
    /// Declared auto-delete.
    pub auto_delete: bool,
    /// Ready messages.
    pub ready: usize,
    /// Messages delivered and not yet settled.
    pub unacked: usize,
    /// Consumers.
    pub consumers: usize,
    /// Dead-lettered messages an at-least-once quorum queue keeps until its dead-letter
    /// exchange routes them (RabbitMQ's `messages_dlx`); 0 for every other queue.
    pub dead_lettering: usize,
}

/// `x-queue-type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum QueueType {
    /// A classic queue (the default).
    #[default]
    Classic,
    /// A quorum queue: durable, never exclusive or auto-delete; counts redeliveries in
    /// `x-delivery-count` and honours `x-delivery-limit`.
    Quorum,
}

impl QueueType {
    /// RabbitMQ's module for the type, as its 406 texts name it.
    pub(crate) fn module_name(self) -> &'static str {
        match self {
            QueueType::Classic => "rabbit_classic_queue",
            QueueType::Quorum => "rabbit_quorum_queue",
        }
    }

    /// Declare arguments RabbitMQ 3.10 refuses on a queue of this type: another type's.
    fn foreign_declare_arguments(self) -> &'static [&'static str] {
        match self {
            QueueType::Classic => &REFUSED_ON_CLASSIC,
            QueueType::Quorum => &REFUSED_ON_QUORUM,
        }
    }

    /// Consume arguments RabbitMQ 3.10 refuses on a queue of this type: those only other
    /// types take (each type's `consumer_arguments` capability; a stream's `x-stream-offset`,
    /// a classic queue's `x-cancel-on-ha-failover`). Other unknown ones are ignored.
    pub(crate) fn foreign_consume_arguments(self) -> &'static [&'static str] {
        match self {
            QueueType::Classic => &["x-stream-offset"],
            QueueType::Quorum => &["x-cancel-on-ha-failover", "x-stream-offset"],
        }
    }
}

/// `x-overflow`: what a queue at its length limit does with a new message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Overflow {
    /// Drop (or dead-letter) the oldest ready messages to make room (the default).
    #[default]
    DropHead,
    /// Refuse the new message: the publisher's confirm is a nack. A quorum queue's limit is
    /// soft (RabbitMQ 3.10): it refuses only while already over it.
    RejectPublish,
    /// Refuse and dead-letter the new message; the publisher's confirm is a nack. (A quorum
    /// queue declared with it drops the head instead, as RabbitMQ 3.10 does.)
    RejectPublishDlx,
}

/// The queue arguments broker-mem acts on, parsed from `queue.declare`'s field table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueArguments {
    /// `x-queue-type`.
    pub queue_type: QueueType,
    /// `x-message-ttl`: how long a message may stay in the queue, in milliseconds.
    pub message_ttl_ms: Option<u64>,
    /// `x-max-length`: most ready messages.
    pub max_length: Option<u64>,
    /// `x-max-length-bytes`: most ready body bytes.
    pub max_length_bytes: Option<u64>,
    /// `x-overflow`.
    pub overflow: Overflow,
    /// `x-dead-letter-exchange`.
    pub dead_letter_exchange: Option<String>,
    /// `x-dead-letter-routing-key`.
    pub dead_letter_routing_key: Option<String>,
    /// `x-dead-letter-strategy: at-least-once` in effect: a quorum queue with a dead-letter
    /// exchange and `x-overflow: reject-publish` keeps each message it dead-letters until the
    /// exchange routes it to a queue that takes it (see [`DeadLetters`]).
    pub dead_letter_at_least_once: bool,
    /// `x-delivery-limit` (quorum queues): deliveries after which a message is dead-lettered
    /// instead of requeued.
    pub delivery_limit: Option<u64>,
    /// `x-max-priority`: a priority queue, delivering messages with a higher `priority`
    /// property first (a priority above this counts as this; none counts as 0).
    pub max_priority: Option<u8>,
    /// `x-expires`: the queue is deleted, with its messages, once it has been unused (no
    /// consumers, no `basic.get`, no declare) for this many milliseconds.
    pub expires_ms: Option<u64>,
    /// `x-single-active-consumer`: one consumer at a time receives messages, the earliest
    /// registered; when it goes, the next one takes over.
    pub single_active_consumer: bool,
}

/// The arguments RabbitMQ 3.10 compares when a classic queue is declared again (others are
/// ignored), in the order it compares them, so the first difference reported is the same
/// (probed).
const CLASSIC_EQUIVALENCE_CHECKED: [&str; 13] = [
    "x-expires",
    "x-message-ttl",
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-priority",
    "x-overflow",
    "x-queue-mode",
    "x-queue-version",
    "x-single-active-consumer",
    "x-queue-type",
    "x-queue-master-locator",
];

/// The same for a quorum queue: its own arguments, in its own order (probed).
const QUORUM_EQUIVALENCE_CHECKED: [&str; 15] = [
    "x-dead-letter-exchange",
    "x-dead-letter-routing-key",
    "x-dead-letter-strategy",
    "x-expires",
    "x-max-length",
    "x-max-length-bytes",
    "x-max-in-memory-length",
    "x-max-in-memory-bytes",
    "x-overflow",
    "x-single-active-consumer",
    "x-queue-type",
    "x-quorum-initial-group-size",
    "x-delivery-limit",
    "x-message-ttl",
    "x-queue-leader-locator",
];

/// Arguments RabbitMQ 3.10 refuses on a classic queue: they belong to quorum queues or to
/// streams (each type lists the arguments it takes; any other type's is refused, probed).
const REFUSED_ON_CLASSIC: [&str; 9] = [
    "x-dead-letter-strategy",
    "x-delivery-limit",
    "x-max-in-memory-bytes",
    "x-max-in-memory-length",
    "x-queue-leader-locator",
    "x-quorum-initial-group-size",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

/// Arguments RabbitMQ 3.10 refuses on a quorum queue: a classic queue's, or a stream's.
const REFUSED_ON_QUORUM: [&str; 7] = [
    "x-max-priority",
    "x-queue-master-locator",
    "x-queue-mode",
    "x-queue-version",
    "x-max-age",
    "x-stream-max-segment-size-bytes",
    "x-initial-cluster-size",
];

impl QueueArguments {
    /// Parses and validates declare arguments as RabbitMQ 3.10 does, in its order and with its
    /// 406 texts (each probed on 3.10.8): the dead-letter exchange's type, then the queue
    /// type, then each argument the type supports (in RabbitMQ's fixed order), then arguments
    /// that belong to the other type, then a quorum queue's flags. Unknown arguments are
    /// ignored, as RabbitMQ ignores them.
    pub(crate) fn parse(
        name: &str,
        options: QueueOptions,
        arguments: &FieldTable,
    ) -> Result<QueueArguments, Fault> {
        let refuse = |text: String| Fault::channel(ReplyCode::PreconditionFailed, text);
        let invalid = |arg: &str, why: &str| {
            refuse(format!(
                "invalid arg '{arg}' for queue '{name}' in vhost '{}': {why}",
                crate::VHOST
            ))
        };
        let unacceptable = |arg: &str, value: &FieldValue| {
            invalid(arg, &format!("{{unacceptable_type,{}}}", value.type_name()))
        };
        // Checked by RabbitMQ's channel before the queue's own checks, in its own words.
        if let Some(value) = arguments.get("x-dead-letter-exchange")
            && value.as_longstr().is_none()
        {
            let owner = format!("queue '{name}'");
            return Err(Fault::exchange_arg_type(
                "x-dead-letter-exchange",
                &owner,
                value,
            ));
        }
        let queue_type = match arguments.get("x-queue-type").map(|v| (v, v.as_longstr())) {
            None => QueueType::Classic,
            Some((_, Some(kind))) => match kind.as_ref() {
                "classic" => QueueType::Classic,
                "quorum" => QueueType::Quorum,
                // RabbitMQ accepts streams; broker-mem does not implement them, and says so
                // rather than pretend.
                "stream" => {
                    return Err(invalid(
                        "x-queue-type",
                        "stream queues are not implemented by broker-mem",
                    ));
                }
                other => {
                    let why = erlang_string(&format!("unsupported queue type '{other}'"));
                    return Err(invalid("x-queue-type", &why));
                }
            },
            Some((other, None)) => return Err(unacceptable("x-queue-type", other)),
        };
        let foreign = queue_type.foreign_declare_arguments();
        // An argument of the other queue type is not validated, only refused below.
        let get = |arg: &str| {
            if foreign.contains(&arg) {
                None
            } else {
                arguments.get(arg)
            }
        };
        let integer = |arg: &str| -> Result<Option<i64>, Fault> {
            match get(arg) {
                None => Ok(None),
                Some(value) if value.as_integer().is_some() => Ok(value.as_integer()),
                Some(other) => Err(invalid(
                    arg,
                    &format!("\"expected integer, got {}\"", other.type_name()),
                )),
            }
        };
        let non_negative = |arg: &str| -> Result<Option<u64>, Fault> {
            match integer(arg)? {
                Some(v) if v < 0 => Err(invalid(arg, &format!("{{value_negative,{v}}}"))),
                v => Ok(v.map(i64::unsigned_abs)),
            }
        };
        let expiry = |arg: &str| -> Result<Option<u64>, Fault> {
            match non_negative(arg)? {
                Some(v) if v > EXPIRY_MS_MAX => {
                    Err(invalid(arg, &format!("{{value_too_large,{v}}}")))
                }
                v => Ok(v),
            }
        };
        let text = |arg: &str| -> Result<Option<Cow<'_, str>>, Fault> {
            match get(arg) {
                None => Ok(None),
                Some(value) => match value.as_longstr() {
                    Some(text) => Ok(Some(text)),
                    None => Err(unacceptable(arg, value)),
                },
            }
        };
        let one_of = |arg: &str, allowed: &[&str], why: &dyn Fn(&str) -> String| match text(arg)? {
            Some(value) if !allowed.contains(&value.as_ref()) => Err(invalid(arg, &why(&value))),
            value => Ok(value),
        };

        // RabbitMQ's validation order.
        let expires_ms = match expiry("x-expires")? {
            Some(0) => return Err(invalid("x-expires", "{value_zero,0}")),
            expires => expires,
        };
        let message_ttl_ms = expiry("x-message-ttl")?;
        let dead_letter_exchange = text("x-dead-letter-exchange")?.map(Cow::into_owned);
        let dead_letter_routing_key = text("x-dead-letter-routing-key")?.map(Cow::into_owned);
        if dead_letter_routing_key.is_some() && dead_letter_exchange.is_none() {
            return Err(invalid(
                "x-dead-letter-routing-key",
                "routing_key_but_no_dlx_defined",
            ));
        }
        let dead_letter_strategy = one_of(
            "x-dead-letter-strategy",
            &["at-most-once", "at-least-once"],
            &|_| "invalid_dlx_strategy".to_owned(),
        )?;
        let at_least_once = dead_letter_strategy.as_deref() == Some("at-least-once");
        let max_length = non_negative("x-max-length")?;
        let max_length_bytes = non_negative("x-max-length-bytes")?;
        non_negative("x-max-in-memory-length")?;
        non_negative("x-max-in-memory-bytes")?;
        let max_priority = match non_negative("x-max-priority")? {
            None => None,
            Some(max) => Some(u8::try_from(max).map_err(|_| {
                invalid("x-max-priority", &format!("{{max_value_exceeded,{max}}}"))
            })?),
        };
        let overflow = match one_of(
            "x-overflow",
            &["drop-head", "reject-publish", "reject-publish-dlx"],
            &|_| "invalid_overflow".to_owned(),
        )?
        .as_deref()
        {
            Some("reject-publish") => Overflow::RejectPublish,
            // A quorum queue accepts `reject-publish-dlx` and drops the head (RabbitMQ 3.10,
            // probed: the publishes are confirmed, the oldest dead-lettered as `maxlen`).
            Some("reject-publish-dlx") if queue_type == QueueType::Classic => {
                Overflow::RejectPublishDlx
            }
            _ => Overflow::DropHead,
        };
        one_of("x-queue-mode", &["default", "lazy"], &|mode| {
            erlang_string(&format!("unsupported queue mode '{mode}'"))
        })?;
        // Classic queues' storage version (3.10): 1 or 2, no effect here. A negative one is
        // refused as negative (probed on 3.10.8).
        if let Some(version) = non_negative("x-queue-version")?
            && !matches!(version, 1 | 2)
        {
            return Err(invalid(
                "x-queue-version",
                &erlang_string(&format!("unsupported queue version '{version}'")),
            ));
        }
        let single_active_consumer = match get("x-single-active-consumer") {
            None => false,
            Some(FieldValue::Bool(v)) => *v,
            Some(other) => return Err(unacceptable("x-single-active-consumer", other)),
        };
        if non_negative("x-quorum-initial-group-size")? == Some(0) {
            return Err(invalid("x-quorum-initial-group-size", "{value_zero,0}"));
        }
        one_of(
            "x-queue-leader-locator",
            &["client-local", "balanced"],
            &|_| "invalid_queue_locator_arg".to_owned(),
        )?;
        // Quorum queues take any value and act on a non-negative integer only.
        let delivery_limit = get("x-delivery-limit")
            .and_then(FieldValue::as_integer)
            .and_then(|v| u64::try_from(v).ok());

        let type_name = queue_type.module_name();
        if let Some(arg) = arguments.keys().find(|key| foreign.contains(&key.as_str())) {
            return Err(refuse(format!(
                "invalid arg '{arg}' for queue '{name}' in vhost '{}' of queue type {type_name}",
                crate::VHOST
            )));
        }
        // RabbitMQ 3.10 crashes on an unknown master locator once the arguments have passed: the
        // connection closes with 541 (a classic-only argument, so no quorum flags to check).
        match get("x-queue-master-locator") {
            None => {}
            Some(v)
                if v.as_longstr().is_some_and(|v| {
                    ["min-masters", "client-local", "random"].contains(&v.as_ref())
                }) => {}
            Some(_) => {
                return Err(Fault::Connection(AmqpError::new(
                    ReplyCode::InternalError,
                    "",
                )));
            }
        }
        if queue_type == QueueType::Quorum {
            // RabbitMQ 3.10's order and words (probed).
            let property = if options.auto_delete {
                Some("auto-delete")
            } else if options.exclusive {
                Some("exclusive-owner")
            } else if !options.durable {
                Some("non-durable")
            } else {
                None
            };
            if let Some(property) = property {
                return Err(refuse(format!(
                    "invalid property '{property}' for queue '{name}' in vhost '{}'",
                    crate::VHOST
                )));
            }
        }
        // RabbitMQ's dead-letter handler (rabbit_quorum_queue): at least once only for a
        // quorum queue with a dead-letter exchange that refuses publishes when full; otherwise
        // it falls back to at most once (probed on 3.10.8 with `drop-head`).
        let dead_letter_at_least_once = at_least_once
            && queue_type == QueueType::Quorum
            && overflow == Overflow::RejectPublish
            && dead_letter_exchange.is_some();
        Ok(QueueArguments {
            queue_type,
            message_ttl_ms,
            max_length,
            max_length_bytes,
            overflow,
            dead_letter_exchange,
            dead_letter_routing_key,
            dead_letter_at_least_once,
            delivery_limit,
            max_priority,
            expires_ms,
            single_active_consumer,
        })
    }
}

/// A message in a queue, or out of it while unacked (so it can go back where it was).
#[derive(Debug, Clone)]
pub(crate) struct Queued {
    /// Broker-wide enqueue order.
    pub seq: u64,
    pub message: Message,
    pub redelivered: bool,
    /// When it expires (queue `x-message-ttl` or the message's `expiration`, the lower), on the
    /// engine's clock. A requeue keeps it, as in RabbitMQ.
    pub expires_at_ms: Option<u64>,
    /// Times it came back to the queue (quorum queues report it as `x-delivery-count`).
    pub delivery_count: u64,
    /// Returned to a quorum queue because its channel closed (or requeued to one with an
    /// `x-delivery-limit`): served before the other ready messages, in the order returned
    /// (RabbitMQ 3.10's returns).
    pub returned: bool,
}

/// A consumer as the queue knows it: its channel and tag.
pub(crate) type ConsumerKey = (ChannelId, SmolStr);

/// Who publishes to a queue, as a quorum `reject-publish` queue tells its publishers apart
/// (RabbitMQ's enqueuers, one per process that enqueues).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Publisher {
    Channel(ChannelId),
    /// The at-least-once dead-letter worker of the queue with this id: it publishes with
    /// confirms, so a full quorum queue refuses it as it refuses a channel (probed on
    /// 3.10.8). At-most-once dead-lettering has no publisher and is never refused.
    DeadLetterWorker(u64),
}

#[derive(Debug)]
pub(crate) struct Queue {
    /// Distinguishes this queue from an earlier one of the same name.
    pub id: u64,
    pub durable: bool,
    pub auto_delete: bool,
    /// The connection that declared it exclusive.
    pub owner: Option<ConnectionId>,
    /// Declare arguments as given (for the equivalence check) and as understood.
    pub arguments: FieldTable,
    pub args: QueueArguments,
    /// Sorted by [`Queue::order`]: priority (in a priority queue), a quorum queue's returns
    /// first, then `seq`.
    ready: VecDeque<Queued>,
    /// Body bytes of the ready messages (for `x-max-length-bytes`).
    ready_bytes: usize,
    /// Delivered from this queue and not settled yet.
    pub unacked: usize,
    /// Round-robin order: the front is the next consumer offered a message.
    /// With each consumer's `x-priority`.
    consumers: VecDeque<(ConsumerKey, i64)>,
    /// A classic queue's consumers that were offered a message without credit to take it
    /// (RabbitMQ's blocked consumers, rabbit_queue_consumers): they have left the round-robin
    /// and rejoin it at the back once they have credit again (see [`Queue::next_consumer`]).
    blocked: Vec<ConsumerKey>,
    /// Whether the consumer (at most one then) asked for exclusive use.
    pub exclusive_consumer: bool,
    /// When the queue was last used (read with `basic.get`, left by a consumer, or, for a
    /// classic queue, declared), on the engine's clock; with no consumers it expires
    /// `x-expires` after this.
    pub last_used_ms: u64,
    /// A quorum `reject-publish` queue's publishers (RabbitMQ's enqueuers: each channel that
    /// has published to it and is still open, and each at-least-once dead-letter worker that
    /// has), each with whether it has been told to stop: the queue refuses one publisher and
    /// takes from another (see [`Queue::would_overflow`]). At most one entry per open channel
    /// and per queue that dead-letters here: a channel's close, the source queue's deletion
    /// and a restart forget it ([`Queue::forget_publisher`]).
    publishers: HandleMap<Publisher, bool>,
    /// Whether any of `publishers` has been told to stop (so that taking a message looks at
    /// the limit only then).
    refusing: bool,
    /// Set when messages came back to this quorum queue to be served first (a closed
    /// channel's, or a nack's or recover's with `x-delivery-limit`), until the engine next
    /// runs the queue. rabbit_fifo takes such a batch in one command, and the heads its length
    /// limit then drops together are dead-lettered last first (probed on 3.10.8); a message
    /// requeued to the back is a command of its own, which drops at most one.
    pub returns_batch: bool,
    /// Set when a message published (or dead-lettered) into this empty `drop-head` queue is
    /// over the length limit on its own (`x-max-length: 0`, or a body past
    /// `x-max-length-bytes`), until the engine next runs the queue. RabbitMQ offers a message
    /// that arrives at an empty queue to a waiting consumer before it looks at the limit (a
    /// classic queue's `attempt_delivery` comes before `maybe_drop_head`, rabbit_fifo's
    /// checkout before its limit; probed on 3.10.8), so the engine drops it only if no consumer
    /// takes it.
    pub offered_before_dropping: bool,
    /// A quorum queue's cancelled consumers that still hold unacked deliveries, by serial,
    /// with how many. rabbit_fifo keeps such a consumer (status `cancelled`) until the last
    /// is settled, and counts it in `queue.declare-ok`'s consumer count (probed on 3.10.8).
    pub cancelled_holding: Vec<(u64, usize)>,
    /// A quorum queue's manual-ack `basic.get` deliveries not yet settled. rabbit_fifo checks
    /// each out to a consumer of its own (lifetime `once`), kept until the delivery is
    /// settled: it counts in `queue.declare-ok` and holds off `x-expires` as a consumer does
    /// (probed on 3.10.8).
    pub gets_unsettled: usize,
    /// What it dead-lettered at least once and keeps until it is delivered (see
    /// `engine::dead_letters`).
    pub dead_letters: DeadLetters,
}

impl Queue {
    pub(crate) fn new(
        id: u64,
        options: QueueOptions,
        owner: Option<ConnectionId>,
        arguments: FieldTable,
        args: QueueArguments,
    ) -> Queue {
        Queue {
            id,
            durable: options.durable,
            auto_delete: options.auto_delete,
            owner,
            arguments,
            args,
            ready: VecDeque::new(),
            ready_bytes: 0,
            publishers: HandleMap::default(),
            refusing: false,
            returns_batch: false,
            offered_before_dropping: false,
            cancelled_holding: Vec::new(),
            gets_unsettled: 0,
            dead_letters: DeadLetters::default(),
            unacked: 0,
            consumers: VecDeque::new(),
            blocked: Vec::new(),
            exclusive_consumer: false,
            last_used_ms: 0,
        }
    }

    /// RabbitMQ's checks when a connection redeclares (or passively declares, binds, consumes
    /// from) a queue: an exclusive queue is locked to its owner.
    pub(crate) fn check_access(&self, name: &str, connection: ConnectionId) -> Result<(), Fault> {
        match self.owner {
            Some(owner) if owner != connection => Err(Fault::locked_queue(name)),
            _ => Ok(()),
        }
    }

    /// RabbitMQ's equivalence check for a redeclare.
    pub(crate) fn check_equivalent(&self, name: &str, options: QueueOptions) -> Result<(), Fault> {
        if options.exclusive != self.owner.is_some() {
            return Err(Fault::locked_queue(name));
        }
        let flags = [
            ("durable", options.durable, self.durable),
            ("auto_delete", options.auto_delete, self.auto_delete),
        ];
        for (arg, received, current) in flags {
            if received != current {
                return Err(Fault::channel(
                    ReplyCode::PreconditionFailed,
                    format!(
                        "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': received \
                         '{}' but current is '{}'",
                        crate::VHOST,
                        bool_str(received),
                        bool_str(current)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// RabbitMQ's equivalence check of the arguments it compares.
    pub(crate) fn check_equivalent_arguments(
        &self,
        name: &str,
        arguments: &FieldTable,
    ) -> Result<(), Fault> {
        // Only the arguments of the existing queue's type count: a quorum queue redeclared
        // with `x-max-priority` is equivalent, as in RabbitMQ.
        let checked: &[&str] = match self.args.queue_type {
            QueueType::Classic => &CLASSIC_EQUIVALENCE_CHECKED,
            QueueType::Quorum => &QUORUM_EQUIVALENCE_CHECKED,
        };
        for &arg in checked {
            let received = arguments.get(arg);
            let current = self.arguments.get(arg);
            // No queue type is a classic queue: RabbitMQ accepts either for the other.
            let classic = |value: Option<&FieldValue>| {
                value.is_none_or(|v| matches!(v, FieldValue::String(t) if t == "classic"))
            };
            let same = match (received, current) {
                (Some(r), Some(c)) => r.equivalent(c),
                (r, c) => r == c,
            };
            if same || (arg == "x-queue-type" && classic(received) && classic(current)) {
                continue;
            }
            let (received, current) = describe_values(received, current);
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': received \
                     {received} but current is {current}",
                    crate::VHOST,
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len()
    }

    pub(crate) fn ready_body_bytes(&self) -> usize {
        self.ready_bytes
    }

    /// Whether a queue that refuses messages at its limit (`reject-publish`) refuses one more
    /// of `body_bytes` from `publisher` (None: dead-lettered into it at most once). A classic
    /// queue refuses one that would pass `x-max-length` or `x-max-length-bytes`, whoever
    /// sends it. Both count ready messages, and a quorum queue those it keeps to dead-letter at
    /// least once.
    ///
    /// A quorum queue's limit is soft, and it refuses publishers one by one (RabbitMQ 3.10,
    /// rabbit_fifo and rabbit_fifo_client, probed on 3.10.8): when it goes over a limit, every
    /// channel that has published to it is told to stop (so one message more gets in), and
    /// once its ready messages are back at 80 % of the limit they are all told to go on. A
    /// channel's first publish to it asks, and is refused only while the queue is over the
    /// limit, not on the way down to 80 %. Messages dead-lettered at most once never ask: they
    /// always get in; the at-least-once worker is a publisher ([`Publisher`]).
    pub(crate) fn would_overflow(
        &mut self,
        publisher: Option<Publisher>,
        body_bytes: usize,
    ) -> bool {
        if self.args.queue_type == QueueType::Quorum {
            if self.args.overflow != Overflow::RejectPublish {
                return false;
            }
            let Some(publisher) = publisher else {
                return false;
            };
            if let Some(&stopped) = self.publishers.get(&publisher) {
                return stopped;
            }
            let stopped = self.over_limit();
            self.publishers.insert(publisher, stopped);
            self.refusing |= stopped;
            return stopped;
        }
        let too_many = self
            .args
            .max_length
            .is_some_and(|max| self.ready.len() as u64 + 1 > max);
        let too_big = self
            .args
            .max_length_bytes
            .is_some_and(|max| (self.ready_bytes + body_bytes) as u64 > max);
        too_many || too_big
    }

    /// Whether the ready messages are over a length limit now; messages kept to be
    /// dead-lettered at least once count too (rabbit_fifo's `is_over_limit`).
    pub(crate) fn over_limit(&self) -> bool {
        let too_many = (self.args.max_length).is_some_and(|max| self.held_len() as u64 > max);
        let too_big =
            (self.args.max_length_bytes).is_some_and(|max| self.held_bytes() as u64 > max);
        too_many || too_big
    }

    /// Ready messages and those kept to be dead-lettered: what the length limits count.
    fn held_len(&self) -> usize {
        self.ready.len() + self.dead_letters.len()
    }

    /// Their body bytes.
    fn held_bytes(&self) -> usize {
        self.ready_bytes + self.dead_letters.body_bytes()
    }

    /// Whether `drop-head` must drop heads to bring the ready messages back within the length
    /// limits (never under `reject-publish`, which refuses publishes instead).
    pub(crate) fn must_drop_head(&self) -> bool {
        self.args.overflow == Overflow::DropHead && self.over_limit()
    }

    /// The heads `drop-head` drops (see [`Queue::must_drop_head`]), oldest first. Bounded by
    /// the queue's length.
    pub(crate) fn pop_over_limit(&mut self) -> Vec<Queued> {
        let mut dropped = Vec::new();
        while self.must_drop_head() {
            match self.pop_ready() {
                Some(head) => dropped.push(head),
                None => break,
            }
        }
        dropped
    }

    /// The head, if it has expired at `now_ms`. With `spare_arrivals`, a head expiring at this
    /// very millisecond is kept so a consumer can take it, as RabbitMQ offers a message to the
    /// consumers as it arrives, before it looks at its TTL. Not in a classic queue a head that
    /// came back from a consumer: RabbitMQ's classic queue checks it on its way back, on a
    /// microsecond clock that has moved on since it arrived (probed on 3.10.8: a message with
    /// `x-message-ttl` 0 that a consumer nacks is dropped, never redelivered). A quorum queue's
    /// clock is in milliseconds, and a TTL of 0 runs out at the next one (rabbit_fifo's
    /// `update_expiry_header`), so there a message that comes back within the millisecond it
    /// arrived is still offered.
    pub(crate) fn pop_expired(&mut self, now_ms: u64, spare_arrivals: bool) -> Option<Queued> {
        let head = self.ready.front()?;
        let at = head.expires_at_ms?;
        let spared = spare_arrivals
            && at == now_ms
            && (!head.redelivered || self.args.queue_type == QueueType::Quorum);
        if at <= now_ms && !spared {
            self.pop_ready()
        } else {
            None
        }
    }

    /// Whether the head expires at or before `now_ms`.
    pub(crate) fn head_expired(&self, now_ms: u64) -> bool {
        self.ready
            .front()
            .is_some_and(|head| head.expires_at_ms.is_some_and(|at| at <= now_ms))
    }

    /// The consumers as `queue.declare-ok` counts them (rabbit_fifo's consumer map, for a
    /// quorum queue): a quorum queue counts its cancelled consumers that still hold deliveries
    /// and its unsettled manual-ack gets (see [`Queue::cancelled_holding`] and
    /// [`Queue::gets_unsettled`]), and with a single active consumer only the active one, not
    /// those waiting (probed on 3.10.8; a classic queue counts every consumer).
    pub(crate) fn consumer_count(&self) -> usize {
        let quorum_single_active =
            self.args.queue_type == QueueType::Quorum && self.args.single_active_consumer;
        let attached = if quorum_single_active {
            usize::from(!self.consumers.is_empty())
        } else {
            self.consumers.len()
        };
        attached + self.cancelled_holding.len() + self.gets_unsettled
    }

    /// Whether the queue counts consumers that only settle: cancelled ones still holding
    /// deliveries, or unsettled gets.
    pub(crate) fn has_settling_consumers(&self) -> bool {
        !self.cancelled_holding.is_empty() || self.gets_unsettled > 0
    }

    /// One delivery of the consumer with `serial` (0: a `basic.get`) was settled. True when a
    /// consumer that only settled stopped counting with it: a cancelled one with its last
    /// delivery, an unsettled get with its only one.
    pub(crate) fn settled_by(&mut self, serial: u64) -> bool {
        if serial == 0 {
            let counted = self.gets_unsettled > 0;
            self.gets_unsettled = self.gets_unsettled.saturating_sub(1);
            return counted;
        }
        let Some(at) = self
            .cancelled_holding
            .iter()
            .position(|(s, _)| *s == serial)
        else {
            return false;
        };
        let held = &mut self.cancelled_holding[at].1;
        *held = held.saturating_sub(1);
        if *held > 0 {
            return false;
        }
        self.cancelled_holding.remove(at);
        true
    }

    /// A `queue.declare` (passive or not) found the queue. A classic queue counts that as use
    /// for `x-expires`; a quorum queue does not (rabbit_fifo hears of no declare; probed on
    /// 3.10.8: a quorum queue declared every second still expires).
    pub(crate) fn declared_again(&mut self, now_ms: u64) {
        if self.args.queue_type != QueueType::Quorum {
            self.last_used_ms = now_ms;
        }
    }

    /// Whether `x-expires` has run out at `now_ms`: no consumers since the last use, for that
    /// long.
    pub(crate) fn unused_expired(&self, now_ms: u64) -> bool {
        self.unused_expires_at_ms().is_some_and(|at| now_ms >= at)
    }

    /// When `x-expires` runs out if nothing uses the queue before: None while it has
    /// consumers (a quorum queue's consumers that only settle included: rabbit_fifo expires
    /// a queue only when its consumer map is empty; probed), or without the argument.
    pub(crate) fn unused_expires_at_ms(&self) -> Option<u64> {
        if !self.consumers.is_empty() || self.has_settling_consumers() {
            return None;
        }
        let expires = self.args.expires_ms?;
        Some(self.last_used_ms.saturating_add(expires))
    }

    /// When the head expires, if it has a TTL.
    pub(crate) fn head_expires_at_ms(&self) -> Option<u64> {
        self.ready.front()?.expires_at_ms
    }

    /// A newly published message: the newest, so it goes to the back (of its priority, in a
    /// priority queue).
    pub(crate) fn enqueue(&mut self, entry: Queued) {
        debug_assert!(self.ready.back().is_none_or(|last| last.seq < entry.seq));
        if self.args.max_priority.is_some() {
            self.insert_in_order(entry);
        } else {
            self.ready_bytes += entry.message.body.len();
            self.ready.push_back(entry);
        }
        self.note_length();
    }

    /// A message coming back from a consumer: to its place by [`Queue::order`]. The caller
    /// decides that place: a classic queue keeps the message's `seq` (its original position);
    /// a quorum queue gives it a new one (see `Engine::finish`).
    pub(crate) fn requeue(&mut self, entry: Queued) {
        self.insert_in_order(entry);
        self.note_length();
    }

    /// RabbitMQ 3.10's soft limit of a quorum `reject-publish` queue (rabbit_fifo, probed):
    /// over the limit after any change, every publisher it knows is told to stop; once its
    /// ready messages (and bytes), with those kept to be dead-lettered, are at most 80 % of
    /// the limit, rounded down, they are all told to go on (see [`Queue::would_overflow`]).
    pub(crate) fn note_length(&mut self) {
        if self.args.queue_type != QueueType::Quorum
            || self.args.overflow != Overflow::RejectPublish
        {
            return;
        }
        let below = |max: Option<u64>, now: usize| {
            max.is_none_or(|max| now as u64 <= max.saturating_mul(4) / 5)
        };
        if self.over_limit() {
            self.tell_publishers(true);
        } else if self.refusing
            && below(self.args.max_length, self.held_len())
            && below(self.args.max_length_bytes, self.held_bytes())
        {
            self.tell_publishers(false);
        }
    }

    /// Tells every publisher of a quorum `reject-publish` queue to stop, or to go on.
    fn tell_publishers(&mut self, stop: bool) {
        for stopped in self.publishers.values_mut() {
            *stopped = stop;
        }
        self.refusing = stop;
    }

    /// Whether this queue keeps a record of its publishers (a quorum `reject-publish`
    /// queue), and has none of `publisher` yet.
    pub(crate) fn is_new_publisher(&self, publisher: Publisher) -> bool {
        self.args.queue_type == QueueType::Quorum
            && self.args.overflow == Overflow::RejectPublish
            && !self.publishers.contains_key(&publisher)
    }

    /// A channel that closed, or a dead-letter worker that stopped: a later one is a new
    /// publisher.
    pub(crate) fn forget_publisher(&mut self, publisher: Publisher) {
        self.publishers.shift_remove(&publisher);
    }

    /// The publishers a quorum `reject-publish` queue knows.
    pub(crate) fn publishers(&self) -> impl Iterator<Item = &Publisher> {
        self.publishers.keys()
    }

    /// Every dead-letter worker stopped (a broker restart).
    pub(crate) fn forget_dead_letter_workers(&mut self) {
        (self.publishers).retain(|publisher, _| matches!(publisher, Publisher::Channel(_)));
    }

    fn insert_in_order(&mut self, entry: Queued) {
        let key = self.order(&entry);
        let position = self
            .ready
            .partition_point(|queued| self.order(queued) < key);
        debug_assert!(
            self.ready
                .get(position)
                .is_none_or(|next| next.seq != entry.seq)
        );
        self.ready_bytes += entry.message.body.len();
        self.ready.insert(position, entry);
    }

    /// Where a message belongs in the ready list: higher priority first, then a quorum
    /// queue's returns, then enqueue order. Outside priority queues every message has
    /// priority 0.
    fn order(&self, entry: &Queued) -> (std::cmp::Reverse<u8>, bool, u64) {
        let priority = self.args.max_priority.map_or(0, |max| {
            entry.message.properties.priority.unwrap_or(0).min(max)
        });
        (std::cmp::Reverse(priority), !entry.returned, entry.seq)
    }

    pub(crate) fn pop_ready(&mut self) -> Option<Queued> {
        let entry = self.ready.pop_front()?;
        self.ready_bytes -= entry.message.body.len();
        if self.refusing {
            self.note_length();
        }
        Some(entry)
    }

    /// Everything ready, for the queue's deletion or purge.
    pub(crate) fn drain_ready(&mut self) -> impl Iterator<Item = Queued> + '_ {
        self.ready_bytes = 0;
        self.tell_publishers(false);
        self.ready.drain(..)
    }

    /// Keeps only the ready messages `keep` accepts (a broker restart drops transient ones).
    pub(crate) fn retain_ready(&mut self, mut keep: impl FnMut(&Queued) -> bool) -> Vec<Queued> {
        let (kept, dropped): (VecDeque<Queued>, VecDeque<Queued>) =
            self.ready.drain(..).partition(|q| keep(q));
        self.ready = kept;
        self.ready_bytes = self.ready.iter().map(|q| q.message.body.len()).sum();
        dropped.into()
    }

    pub(crate) fn add_consumer(&mut self, key: ConsumerKey, exclusive: bool, priority: i64) {
        self.consumers.push_back((key, priority));
        self.exclusive_consumer = exclusive;
    }

    pub(crate) fn remove_consumer(&mut self, key: &ConsumerKey) {
        let was_active = self.consumers.front().is_some_and(|(k, _)| k == key);
        self.consumers.retain(|(k, _)| k != key);
        self.blocked.retain(|k| k != key);
        if self.consumers.is_empty() {
            self.exclusive_consumer = false;
        }
        // The front is the single active consumer. When it goes, a classic queue hands over to
        // the highest `x-priority` left, the earliest registered among equals (RabbitMQ 3.10's
        // rabbit_queue_consumers:get_consumer, probed); a quorum queue to the earliest
        // registered, whatever its priority (rabbit_fifo's waiting list, probed).
        if was_active
            && self.args.single_active_consumer
            && self.args.queue_type == QueueType::Classic
        {
            let mut next: Option<(usize, i64)> = None;
            for (position, (_, priority)) in self.consumers.iter().enumerate() {
                if next.is_none_or(|(_, best)| *priority > best) {
                    next = Some((position, *priority));
                }
            }
            if let Some((position, _)) = next
                && position > 0
                && let Some(entry) = self.consumers.remove(position)
            {
                self.consumers.push_front(entry);
            }
        }
    }

    /// Sends a consumer to the back of the round-robin: a quorum queue's consumer that ran out
    /// of credit left rabbit_fifo's service queue, and rejoins it at the end when a settle
    /// gives it credit back (RabbitMQ 3.10, probed; a classic queue's keeps its turn unless it
    /// was offered a message meanwhile: see [`Queue::next_consumer`]).
    pub(crate) fn rejoin_at_back(&mut self, key: &ConsumerKey) {
        // A single active consumer has no round-robin to rejoin: it stays active (probed).
        if self.args.single_active_consumer {
            return;
        }
        if let Some(at) = self.consumers.iter().position(|(k, _)| k == key)
            && let Some(entry) = self.consumers.remove(at)
        {
            self.consumers.push_back(entry);
        }
    }

    pub(crate) fn consumers(&self) -> impl Iterator<Item = &ConsumerKey> {
        self.consumers.iter().map(|(key, _)| key)
    }

    /// The next consumer for which `with_credit` answers (it has credit), with that answer:
    /// of the highest `x-priority` among those with credit, the first in round-robin order;
    /// it then moves to the back. None when every consumer is blocked.
    ///
    /// On a classic queue, as in RabbitMQ 3.10 (rabbit_queue_consumers, probed): a consumer
    /// offered the message before the one that takes it (a higher priority, or its turn came
    /// first) and without credit is blocked, and rejoins the round-robin at the back when it
    /// has credit again (seen here, at the next offer). One that ran out of credit but was
    /// never offered a message meanwhile keeps its turn. (A quorum queue's consumer rejoins
    /// at the back whenever a settle gives it credit back: see `rejoin_at_back`.)
    ///
    /// With a single active consumer there is no round-robin: only the front one, the active
    /// consumer, is offered messages (the list is never rotated; `remove_consumer` puts its
    /// successor at the front).
    pub(crate) fn next_consumer<T>(
        &mut self,
        with_credit: impl Fn(&ConsumerKey) -> Option<T>,
    ) -> Option<(ConsumerKey, T)> {
        let classic = self.args.queue_type == QueueType::Classic;
        if classic && !self.blocked.is_empty() {
            self.unblock_with_credit(&with_credit);
        }
        if self.args.single_active_consumer || self.consumers.len() == 1 {
            // The front one or none; with one consumer there is no turn to pass on either
            // (but a blocked one is behind any that joins before it has credit again).
            let (first, _) = self.consumers.front()?;
            let Some(found) = with_credit(first) else {
                if classic && !self.args.single_active_consumer && !self.blocked.contains(first) {
                    self.blocked.push(first.clone());
                }
                return None;
            };
            return Some((first.clone(), found));
        }
        // Credit is asked only of a consumer that would beat the best so far, so with equal
        // priorities (the usual case) this stops asking at the first with credit.
        let mut best: Option<(usize, i64, T)> = None;
        // Those asked in vain, by position and priority (allocates only when there are any).
        let mut refused: Vec<(usize, i64)> = Vec::new();
        for (position, (key, priority)) in self.consumers.iter().enumerate() {
            if best.as_ref().is_some_and(|(_, best, _)| best >= priority) {
                continue;
            }
            match with_credit(key) {
                Some(found) => best = Some((position, *priority, found)),
                None => refused.push((position, *priority)),
            }
        }
        if classic && !refused.is_empty() {
            let chosen = best
                .as_ref()
                .map(|(position, priority, _)| (*position, *priority));
            for (position, priority) in refused {
                let offered_first = chosen.is_none_or(|(chosen_at, chosen_priority)| {
                    priority > chosen_priority
                        || (priority == chosen_priority && position < chosen_at)
                });
                if let Some((key, _)) = self.consumers.get(position)
                    && offered_first
                    && !self.blocked.contains(key)
                {
                    self.blocked.push(key.clone());
                }
            }
        }
        let (position, _, found) = best?;
        if position == 0 {
            self.consumers.rotate_left(1);
        } else {
            let entry = self.consumers.remove(position)?;
            self.consumers.push_back(entry);
        }
        let (key, _) = self.consumers.back()?;
        Some((key.clone(), found))
    }

    /// Blocked consumers that have credit again rejoin the round-robin at the back, in the
    /// order they were blocked.
    fn unblock_with_credit<T>(&mut self, with_credit: &impl Fn(&ConsumerKey) -> Option<T>) {
        let mut at = 0;
        while at < self.blocked.len() {
            if with_credit(&self.blocked[at]).is_none() {
                at += 1;
                continue;
            }
            let key = self.blocked.remove(at);
            if let Some(position) = self.consumers.iter().position(|(k, _)| *k == key)
                && let Some(entry) = self.consumers.remove(position)
            {
                self.consumers.push_back(entry);
            }
        }
    }

    pub(crate) fn info(&self, name: &str) -> QueueInfo {
        QueueInfo {
            name: name.to_owned(),
            durable: self.durable,
            exclusive: self.owner.is_some(),
            auto_delete: self.auto_delete,
            ready: self.ready.len(),
            unacked: self.unacked,
            consumers: self.consumers.len(),
            dead_lettering: self.dead_letters.len(),
        }
    }

    pub(crate) fn is_sorted(&self) -> bool {
        self.ready
            .iter()
            .zip(self.ready.iter().skip(1))
            .all(|(a, b)| self.order(a) < self.order(b))
    }
}

/// A small set of queue names in name order: the queues a call has marked for expiry and
/// dispatch. A publish marks one or a few and the run-until-idle loop empties it before the
/// call returns, so a sorted vector (which keeps its capacity) beats a `BTreeSet` (a node
/// allocated and freed, and more comparisons, on every publish). Each name may carry where
/// the queue was in the engine's map (a hint, see `hinted_index`), so that the loop need not
/// hash the name again.
#[derive(Debug, Default)]
pub(crate) struct QueueSet {
    names: Vec<(SmolStr, usize)>,
}

impl QueueSet {
    pub(crate) fn contains(&self, name: &str) -> bool {
        self.position(name).is_ok()
    }

    pub(crate) fn insert(&mut self, name: SmolStr) {
        self.insert_hinted(name, usize::MAX);
    }

    /// Inserts `name` with the queue's index in the engine's map as a hint.
    pub(crate) fn insert_hinted(&mut self, name: SmolStr, hint: usize) {
        if let Err(at) = self.position(&name) {
            self.names.insert(at, (name, hint));
        }
    }

    pub(crate) fn remove(&mut self, name: &str) {
        if let Ok(at) = self.position(name) {
            self.names.remove(at);
        }
    }

    /// The first name in order, with its hint, taken out.
    pub(crate) fn pop_first(&mut self) -> Option<(SmolStr, usize)> {
        (!self.names.is_empty()).then(|| self.names.remove(0))
    }

    fn position(&self, name: &str) -> Result<usize, usize> {
        self.names
            .binary_search_by(|(held, _)| held.as_str().cmp(name))
    }
}

impl Extend<SmolStr> for QueueSet {
    fn extend<T: IntoIterator<Item = SmolStr>>(&mut self, names: T) {
        for name in names {
            self.insert(name);
        }
    }
}
