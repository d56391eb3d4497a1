//! AMQP reply codes and the errors a client sees.
//!
//! A broken rule closes the channel (or, for a few rules, the connection) exactly as RabbitMQ
//! does; the call that broke it gets [`Error::Channel`], later calls on that channel get
//! [`Error::ChannelClosed`] with the same code and text, so the cause is never lost.

use std::fmt;

use thiserror::Error;

/// The AMQP 0-9-1 reply codes broker-mem uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ReplyCode {
    /// 200: normal close.
    ReplySuccess,
    /// 403: the operation is not permitted (reserved names, the default exchange, internal
    /// exchanges, exclusive consumers).
    AccessRefused,
    /// 404: no such exchange or queue.
    NotFound,
    /// 405: an exclusive queue belongs to another connection.
    ResourceLocked,
    /// 406: the request contradicts the broker's state (unknown delivery tag, inequivalent
    /// redeclare, oversized message, a limit reached).
    PreconditionFailed,
    /// 530: a connection error, such as reusing a consumer tag on a channel.
    NotAllowed,
    /// 320: the broker closed the connection (shutdown, restart, an operator).
    ConnectionForced,
    /// 540: a method or flag the broker does not implement (RabbitMQ: `basic.recover` with
    /// `requeue = false`); closes the connection.
    NotImplemented,
    /// 541: the broker failed internally; closes the connection. RabbitMQ 3.10 answers an
    /// unknown `x-queue-master-locator` this way, and broker-mem copies it.
    InternalError,
}

impl ReplyCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            ReplyCode::ReplySuccess => 200,
            ReplyCode::AccessRefused => 403,
            ReplyCode::NotFound => 404,
            ReplyCode::ResourceLocked => 405,
            ReplyCode::PreconditionFailed => 406,
            ReplyCode::NotAllowed => 530,
            ReplyCode::ConnectionForced => 320,
            ReplyCode::NotImplemented => 540,
            ReplyCode::InternalError => 541,
        }
    }

    /// The AMQP name, as RabbitMQ prefixes it to reply texts (`NOT_FOUND`).
    pub fn name(self) -> &'static str {
        match self {
            ReplyCode::ReplySuccess => "REPLY_SUCCESS",
            ReplyCode::AccessRefused => "ACCESS_REFUSED",
            ReplyCode::NotFound => "NOT_FOUND",
            ReplyCode::ResourceLocked => "RESOURCE_LOCKED",
            ReplyCode::PreconditionFailed => "PRECONDITION_FAILED",
            ReplyCode::NotAllowed => "NOT_ALLOWED",
            ReplyCode::ConnectionForced => "CONNECTION_FORCED",
            ReplyCode::NotImplemented => "NOT_IMPLEMENTED",
            ReplyCode::InternalError => "INTERNAL_ERROR",
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code(), self.name())
    }
}

/// A channel or connection close sent by the broker: a reply code and RabbitMQ's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AmqpError {
    /// The reply code.
    pub code: ReplyCode,
    /// RabbitMQ's explanation without the code-name prefix, e.g. `no exchange 'x' in vhost '/'`.
    pub text: String,
}

impl AmqpError {
    /// An error with the given code and text.
    pub fn new(code: ReplyCode, text: impl Into<String>) -> AmqpError {
        AmqpError {
            code,
            text: text.into(),
        }
    }

    /// The reply text exactly as RabbitMQ sends it on the wire: `NOT_FOUND - no exchange ...`,
    /// or the bare name when there is no explanation (RabbitMQ's `INTERNAL_ERROR`), cut to
    /// the 255 bytes of an AMQP short string as RabbitMQ cuts it (252 and `...`).
    pub fn reply_text(&self) -> String {
        if self.text.is_empty() {
            return self.code.name().to_owned();
        }
        fit_reply_text(format!("{} - {}", self.code.name(), self.text))
    }
}

impl fmt::Display for AmqpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code.code(), self.reply_text())
    }
}

/// A reply text as RabbitMQ sends it: past the 255 bytes an AMQP short string holds, it keeps
/// 252 and adds `...` (probed on 3.10.8).
pub(crate) fn fit_reply_text(text: String) -> String {
    const SHORT_STRING_BYTES_MAX: usize = 255;
    if text.len() <= SHORT_STRING_BYTES_MAX {
        return text;
    }
    format!("{}...", within(&text, SHORT_STRING_BYTES_MAX - 3))
}

/// The longest start of `text` of at most `bytes` bytes that ends on a character boundary.
pub(crate) fn within(text: &str, bytes: usize) -> &str {
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// What a client call can fail with.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Error {
    /// This call broke a rule: the broker closed the channel with this reply. Its unacked
    /// messages were requeued and its consumers cancelled.
    #[error("channel error: {0}")]
    Channel(AmqpError),
    /// This call broke a connection-level rule: the broker closed the whole connection.
    #[error("connection error: {0}")]
    Connection(AmqpError),
    /// An earlier call closed this channel with this reply; nothing was done.
    #[error("channel was closed by an earlier error: {0}")]
    ChannelClosed(AmqpError),
    /// An earlier call closed this channel's connection with this reply; nothing was done.
    #[error("connection was closed by an earlier error: {0}")]
    ConnectionClosed(AmqpError),
    /// The channel or its connection was closed by the client; nothing was done.
    #[error("the channel or connection is closed")]
    Closed,
    /// Refused on the client side before reaching the broker, like an AMQP client library
    /// would (a name longer than a short string, `channel_max` reached); nothing was done and
    /// the channel stays open.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl Error {
    /// The broker's reply, when the broker (not the client) refused.
    pub fn reply(&self) -> Option<&AmqpError> {
        match self {
            Error::Channel(e)
            | Error::Connection(e)
            | Error::ChannelClosed(e)
            | Error::ConnectionClosed(e) => Some(e),
            Error::Closed | Error::Invalid(_) => None,
        }
    }
}

/// Why an engine operation failed, before the engine has applied the consequences.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Close the channel with this reply.
    Channel(AmqpError),
    /// Close the connection with this reply.
    Connection(AmqpError),
    /// A client-side refusal; nothing changes.
    Invalid(String),
}

impl Fault {
    pub(crate) fn channel(code: ReplyCode, text: impl Into<String>) -> Fault {
        Fault::Channel(AmqpError::new(code, text))
    }

    /// RabbitMQ's channel-level check of an argument that names an exchange (`alternate-exchange`,
    /// `x-dead-letter-exchange`): not a string. `owner` is `queue 'q'` or `exchange 'x'`.
    pub(crate) fn exchange_arg_type(
        arg: &str,
        owner: &str,
        value: &crate::message::FieldValue,
    ) -> Fault {
        Fault::channel(
            ReplyCode::PreconditionFailed,
            format!(
                "invalid type '{}' for arg '{arg}' in {owner} in vhost '{}'",
                value.type_name(),
                crate::VHOST
            ),
        )
    }

    pub(crate) fn not_found_exchange(name: &str) -> Fault {
        Fault::channel(
            ReplyCode::NotFound,
            format!("no exchange '{name}' in vhost '{}'", crate::VHOST),
        )
    }

    pub(crate) fn not_found_queue(name: &str) -> Fault {
        Fault::channel(
            ReplyCode::NotFound,
            format!("no queue '{name}' in vhost '{}'", crate::VHOST),
        )
    }

    pub(crate) fn locked_queue(name: &str) -> Fault {
        Fault::channel(
            ReplyCode::ResourceLocked,
            format!(
                "cannot obtain exclusive access to locked queue '{name}' in vhost '{}'. It could \
                 be originally declared on another connection or the exclusive property value \
                 does not match that of the original declaration.",
                crate::VHOST
            ),
        )
    }

    pub(crate) fn default_exchange() -> Fault {
        Fault::channel(
            ReplyCode::AccessRefused,
            "operation not permitted on the default exchange",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::fit_reply_text;

    #[test]
    fn a_long_reply_text_is_cut_to_255_bytes_on_a_character_boundary() {
        let short = "x".repeat(255);
        assert_eq!(fit_reply_text(short.clone()), short);
        let cut = fit_reply_text("x".repeat(300));
        assert_eq!(cut.len(), 255);
        assert!(cut.ends_with("xx..."));
        // A two-byte character straddling byte 252 is left out whole.
        let text = format!("{}é{}", "x".repeat(251), "y".repeat(10));
        let cut = fit_reply_text(text);
        assert_eq!(cut, format!("{}...", "x".repeat(251)));
    }
}
