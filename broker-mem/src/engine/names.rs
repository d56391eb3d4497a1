//! How RabbitMQ reads the queue and exchange names a method gives (rabbit_channel; probed on
//! 3.10.8, pinned by the contract suite), before it looks anything up:
//!
//! - **The empty queue name** stands for the channel's most recently declared queue (AMQP's
//!   shortcut) in `queue.bind`, `queue.unbind`, `queue.purge`, `queue.delete`, `basic.get` and
//!   `basic.consume`; on a channel that has declared none it is 404 `no previously declared
//!   queue`. A `queue.bind` or `queue.unbind` whose queue and routing key are both empty binds
//!   by that queue's name. Every successful `queue.declare` (passive ones too) sets the queue;
//!   a passive declare itself does not read the empty name so.
//! - **CR and LF are dropped** from the names of `exchange.declare`, `exchange.delete`,
//!   `exchange.bind`, `exchange.unbind`, `queue.declare`, `queue.bind`, `queue.unbind` and
//!   `queue.delete` (RabbitMQ's `strip_cr_lf`, which keeps line breaks out of its logs), after
//!   the empty-name shortcut: a queue named `"\n"` is not the shortcut, and becomes `""`. Routing
//!   keys keep them, as do the names of `queue.purge`, `basic.get`, `basic.consume` and
//!   `basic.publish`. A name's 255-byte limit applies to it as sent, and direct reply-to's
//!   pseudo-queue is recognised by the name as sent too (`"\namq.rabbitmq.reply-to"` is an
//!   ordinary name, with the reserved prefix).

use std::borrow::Cow;

use smol_str::SmolStr;

use super::{Engine, Fault, check_name};
use crate::binding::Destination;
use crate::channel::ChannelId;
use crate::error::ReplyCode;

/// A name of a method that strips them, as RabbitMQ reads it: checked as sent (a short
/// string), then without CR and LF.
pub(super) fn stripped<'a>(what: &str, name: &'a str) -> Result<Cow<'a, str>, Fault> {
    check_name(what, name)?;
    Ok(strip_cr_lf(name))
}

/// `exchange.bind` and `exchange.unbind`'s names as RabbitMQ reads them: (destination,
/// source), CR and LF dropped from both.
pub(super) fn exchange_binding_names<'a>(
    destination: &str,
    source: &'a str,
) -> Result<(Destination, Cow<'a, str>), Fault> {
    let destination = stripped("exchange name", destination)?;
    Ok((
        Destination::Exchange(destination.into()),
        stripped("exchange name", source)?,
    ))
}

/// A name without its CR and LF bytes.
fn strip_cr_lf(name: &str) -> Cow<'_, str> {
    if name.contains(['\r', '\n']) {
        Cow::Owned(name.replace(['\r', '\n'], ""))
    } else {
        Cow::Borrowed(name)
    }
}

impl Engine {
    /// The queue a method means by `name`: the channel's most recently declared queue when it
    /// is empty, else `name` itself.
    pub(super) fn queue_meant<'a>(
        &self,
        channel: ChannelId,
        name: &'a str,
    ) -> Result<Cow<'a, str>, Fault> {
        if !name.is_empty() {
            return Ok(Cow::Borrowed(name));
        }
        self.channels
            .get(&channel)
            .and_then(|state| state.last_declared_queue.clone())
            .map(|queue| Cow::Owned(queue.to_string()))
            .ok_or_else(|| Fault::channel(ReplyCode::NotFound, "no previously declared queue"))
    }

    /// `queue.bind` and `queue.unbind`'s names as RabbitMQ reads them: (queue, exchange,
    /// routing key), with the shortcut and CR and LF dropped.
    pub(super) fn binding_names<'a>(
        &self,
        channel: ChannelId,
        queue: &'a str,
        exchange: &'a str,
        routing_key: &'a str,
    ) -> Result<(String, Cow<'a, str>, Cow<'a, str>), Fault> {
        let meant = self.queue_meant(channel, queue)?;
        let routing_key = if queue.is_empty() && routing_key.is_empty() {
            Cow::Owned(meant.to_string())
        } else {
            Cow::Borrowed(routing_key)
        };
        Ok((
            stripped("queue name", &meant)?.into_owned(),
            stripped("exchange name", exchange)?,
            routing_key,
        ))
    }

    /// Remembers the queue a `queue.declare` answered with, for the empty-name shortcut.
    pub(super) fn declared(&mut self, channel: ChannelId, queue: &str) {
        if let Some(state) = self.channels.get_mut(&channel) {
            state.last_declared_queue = Some(SmolStr::new(queue));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::strip_cr_lf;

    #[test]
    fn only_cr_and_lf_are_dropped() {
        assert_eq!(strip_cr_lf("orders"), "orders");
        assert_eq!(strip_cr_lf("or\r\nders\n"), "orders");
        assert_eq!(strip_cr_lf("\r\n"), "");
        assert_eq!(strip_cr_lf("tab\there"), "tab\there");
    }
}
