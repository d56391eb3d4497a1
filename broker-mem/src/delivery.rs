//! A message on its way to a consumer, and the record a channel keeps of it until it is
//! settled.

use std::sync::Arc;

use bytes::Bytes;
use smol_str::SmolStr;

use crate::message::{Message, Properties};
use crate::queue::Queued;

/// One message handed to a consumer (AMQP `basic.deliver`).
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Identifies this delivery on its channel for ack / nack / reject. Starts at 1 on each
    /// channel and increases by one per delivery.
    pub delivery_tag: u64,
    /// True when the message was delivered before and requeued (explicitly or by a channel
    /// close). False guarantees no consumer has seen it.
    pub redelivered: bool,
    /// The exchange it was published to (`""` for the default exchange).
    pub exchange: SmolStr,
    /// The routing key it was published with.
    pub routing_key: SmolStr,
    /// Basic properties exactly as published; shared with the broker's copy (and other
    /// deliveries of the same message), so a delivery never copies them.
    pub properties: Arc<Properties>,
    /// The body exactly as published.
    pub body: Bytes,
    /// The consumer it was delivered to.
    pub consumer_tag: SmolStr,
}

impl Delivery {
    pub(crate) fn new(
        delivery_tag: u64,
        consumer_tag: &SmolStr,
        message: &Message,
        redelivered: bool,
    ) -> Delivery {
        Delivery {
            delivery_tag,
            redelivered,
            exchange: message.exchange.clone(),
            routing_key: message.routing_key.clone(),
            properties: Arc::clone(&message.properties),
            body: message.body.clone(),
            consumer_tag: consumer_tag.clone(),
        }
    }
}

/// The answer to a `basic.get` that found a message (`basic.get-ok`).
#[derive(Debug, Clone, PartialEq)]
pub struct GetOk {
    /// The message; its `consumer_tag` is empty.
    pub delivery: Delivery,
    /// Ready messages left in the queue.
    pub message_count: u32,
}

/// A delivery the consumer has not settled yet, kept by its channel under the delivery tag.
#[derive(Debug)]
pub(crate) struct Unacked {
    /// The queue it came from, and that queue's incarnation: a queue deleted and declared again
    /// under the same name is a different queue, and a requeue must not land in it.
    pub queue: SmolStr,
    pub queue_id: u64,
    /// The consumer it went to, whose prefetch credit it uses; the serial tells that consumer
    /// from a later one that reused its tag after a cancel. Serial 0 and an empty tag: it came
    /// from `basic.get`.
    pub consumer_tag: SmolStr,
    pub consumer_serial: u64,
    /// The message, with its original enqueue position.
    pub entry: Queued,
}
