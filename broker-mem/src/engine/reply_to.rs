//! RabbitMQ's direct reply-to (probed on 3.10.8, pinned by the contract suite): RPC without a
//! reply queue.
//!
//! A channel consumes the pseudo-queue `amq.rabbitmq.reply-to` (no-ack only, one consumer per
//! channel). A request it publishes with `reply_to: amq.rabbitmq.reply-to` leaves with that
//! property rewritten to a name of the channel's own, `amq.rabbitmq.reply-to.<suffix>`. A
//! reply published to the default exchange with that name as its routing key (or in `CC` or
//! `BCC`) goes straight to the consumer: no queue holds it, so it is not redelivered if lost,
//! a mandatory reply is returned as unroutable as well, and a name whose channel is gone (or
//! whose consumer was cancelled) drops it. The delivery carries the channel's next delivery
//! tag without taking it, as RabbitMQ's does.

use smol_str::SmolStr;

use super::{Engine, Fault, next};
use crate::channel::ChannelId;
use crate::consumer::{ConsumeOptions, ConsumerOutlet, ConsumerState};
use crate::delivery::Delivery;
use crate::error::ReplyCode;
use crate::limits::NO_ACK_BUFFER_MAX;
use crate::message::{Message, Properties};
use crate::queue::QueueDeclareOk;

/// The pseudo-queue a channel consumes its replies from.
pub(crate) const REPLY_TO: &str = "amq.rabbitmq.reply-to";
/// How the names replies are addressed to start.
const REPLY_NAME_PREFIX: &str = "amq.rabbitmq.reply-to.";

/// A channel's reply consumer.
#[derive(Debug, Clone)]
pub(crate) struct ReplyConsumer {
    pub tag: SmolStr,
    /// What requests' `reply_to` becomes; new with every consume, so a name handed out before
    /// a cancel reaches nobody after it.
    pub name: SmolStr,
}

/// Whether a routing key addresses a reply (on the default exchange).
pub(super) fn is_reply_name(key: &str) -> bool {
    key.starts_with(REPLY_NAME_PREFIX)
}

impl Engine {
    /// `basic.consume` on [`REPLY_TO`]: the channel's reply consumer.
    pub(super) fn consume_reply_to(
        &mut self,
        channel: ChannelId,
        options: &ConsumeOptions,
        outlet: Option<ConsumerOutlet>,
    ) -> Result<String, Fault> {
        let Some(state) = self.channels.get(&channel) else {
            return Err(Fault::Invalid(format!("{channel} is not open")));
        };
        let refusal = if !options.no_ack {
            Some("reply consumer cannot acknowledge")
        } else if state.reply_consumer.is_some() {
            Some("reply consumer already set")
        } else if state.consumers.len() >= self.limits.consumers_per_channel_max {
            Some("the channel has as many consumers as it may")
        } else {
            None
        };
        if let Some(text) = refusal {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                text.to_owned(),
            ));
        }
        let tag = if options.consumer_tag.is_empty() {
            loop {
                let tag =
                    smol_str::format_smolstr!("amq.ctag-{}", next(&mut self.counters.consumer_tag));
                if !state.consumers.contains_key(&tag) {
                    break tag;
                }
            }
        } else {
            SmolStr::from(&options.consumer_tag)
        };
        let serial = next(&mut self.counters.consumer_serial);
        // Unique for the broker's life: the serial is never reused.
        let name = smol_str::format_smolstr!("{REPLY_NAME_PREFIX}{serial}");
        let Some(state) = self.channels.get_mut(&channel) else {
            return Err(Fault::Invalid(format!("{channel} is not open")));
        };
        state.consumers.insert(
            tag.clone(),
            ConsumerState {
                serial,
                queue: SmolStr::new_static(REPLY_TO),
                no_ack: true,
                prefetch: 0,
                unacked: 0,
                buffered: 0,
                outlet,
            },
        );
        state.reply_consumer = Some(ReplyConsumer {
            tag: tag.clone(),
            name: name.clone(),
        });
        self.reply_channels.insert(name, channel);
        Ok(tag.into())
    }

    /// The reply consumer of `channel` ended (cancel or close).
    pub(super) fn forget_reply_consumer(&mut self, channel: ChannelId) {
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        if let Some(reply) = state.reply_consumer.take() {
            self.reply_channels.shift_remove(&reply.name);
        }
    }

    /// A publish's properties with `reply_to: amq.rabbitmq.reply-to` addressed to the
    /// channel's reply name; 406 when the channel has no reply consumer. Others unchanged.
    pub(super) fn address_reply_to(
        &self,
        channel_index: usize,
        properties: std::sync::Arc<Properties>,
    ) -> Result<std::sync::Arc<Properties>, Fault> {
        if properties.reply_to.as_deref() != Some(REPLY_TO) {
            return Ok(properties);
        }
        let reply = self
            .channels
            .get_index(channel_index)
            .and_then(|(_, state)| state.reply_consumer.as_ref());
        let Some(reply) = reply else {
            return Err(Fault::channel(
                ReplyCode::PreconditionFailed,
                "fast reply consumer does not exist".to_owned(),
            ));
        };
        let mut addressed = Properties::clone(&properties);
        addressed.reply_to = Some(reply.name.to_string());
        // RabbitMQ writes the properties anew, headers and all.
        if let Some(headers) = addressed.headers.as_mut() {
            headers.forget_written();
        }
        Ok(Message::share_properties(addressed))
    }

    /// Hands a message published to the default exchange to the reply consumer `name`
    /// addresses, if any (otherwise it is dropped, as RabbitMQ drops it). A consumer whose
    /// client has not taken [`NO_ACK_BUFFER_MAX`] deliveries yet loses it too: there is no
    /// queue to keep it in.
    pub(super) fn deliver_reply(&mut self, name: &str, message: &Message) {
        let Some(&channel) = self.reply_channels.get(name) else {
            return;
        };
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        let Some(reply) = state.reply_consumer.as_ref() else {
            return;
        };
        let Some(consumer) = state.consumers.get_mut(&reply.tag) else {
            return;
        };
        if state.closed.is_some() {
            return;
        }
        if consumer.buffered >= NO_ACK_BUFFER_MAX {
            tracing::warn!(%channel, reply_to = name, "reply dropped: its consumer's buffer is full");
            return;
        }
        consumer.buffered += 1;
        // RabbitMQ 3.10 (probed): the channel's next delivery tag, which stays the next.
        let delivery_tag = state.last_delivery_tag + 1;
        let delivery = Delivery::new(delivery_tag, &reply.tag, message, false);
        super::emit(
            &mut self.events,
            consumer.outlet.as_mut(),
            channel,
            delivery,
        );
    }

    /// `queue.declare` (passive or not) of a name sent starting with the pseudo-queue's, as
    /// RabbitMQ picks them: the pseudo-queue and a live reply name are a queue with no
    /// messages and one consumer; any other such name is 404.
    pub(super) fn declare_reply_to(&self, name: &str) -> Result<QueueDeclareOk, Fault> {
        if name != REPLY_TO && !self.reply_channels.contains_key(name) {
            return Err(Fault::not_found_queue(name));
        }
        Ok(QueueDeclareOk {
            name: name.to_owned(),
            message_count: 0,
            consumer_count: 1,
        })
    }
}
