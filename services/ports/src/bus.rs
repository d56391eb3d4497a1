//! The `Bus` port: declare topology, publish with publisher confirms, consume with manual acks.
//!
//! Semantics follow RabbitMQ, the reference every adapter is tested against: a publish returns
//! once the broker has confirmed it; a consumer receives at most `prefetch` unacknowledged
//! deliveries; a delivery that is never acked is requeued when its consumer's stream (and so its
//! channel) is dropped or the connection is lost.

use async_trait::async_trait;
use contracts::{Properties, Publication, Topology};
use futures::stream::BoxStream;
use thiserror::Error;

/// What went wrong on the bus, naming the exchange or queue involved.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum BusError {
    /// The broker could not be reached, or the connection was lost.
    #[error("broker connection failed: {0}")]
    Connection(String),
    /// The broker refused an operation with an AMQP reply code (404 NOT_FOUND, 406
    /// PRECONDITION_FAILED, ...).
    #[error("{operation} {target:?} refused by the broker: {code} {text}")]
    Refused {
        /// e.g. `queue.declare`, `basic.publish`.
        operation: &'static str,
        /// The exchange or queue.
        target: String,
        /// AMQP reply code.
        code: u16,
        /// AMQP reply text.
        text: String,
    },
    /// The broker nacked a publish (for example a full queue with `reject-publish`).
    #[error("publish to exchange {exchange:?} was nacked by the broker")]
    Nacked {
        /// Target exchange.
        exchange: String,
    },
    /// A publish was sent but never confirmed: no confirm came in time, or the connection was
    /// lost while waiting for it. The broker may or may not have taken the message, so a caller
    /// must not report it as not published (nor retry as if nothing happened without accepting
    /// a duplicate, which the contract's `message_id` lets consumers drop).
    #[error("publish to exchange {exchange:?} unconfirmed, the broker may have taken it: {detail}")]
    Unconfirmed {
        /// Target exchange.
        exchange: String,
        /// What happened to the confirm.
        detail: String,
    },
    /// The message breaks a limit before it reaches the broker.
    #[error("message refused before publishing: {0}")]
    Invalid(String),
    /// The bus has been shut down.
    #[error("the bus is closed")]
    Closed,
}

impl BusError {
    /// The outcome of a publish retried once after `first` failed: if `first` was sent and left
    /// unconfirmed, it may have reached the broker whatever became of the retry, so the publish
    /// stays [`BusError::Unconfirmed`] (naming both failures), as does one the broker's closing
    /// of the channel failed (it may have been queued first) unless the retry is refused too;
    /// otherwise the retry's error.
    #[cfg(any(feature = "rabbitmq", feature = "wire"))]
    pub(crate) fn after_publish_retry(first: BusError, retry: BusError) -> BusError {
        match (first, retry) {
            (unconfirmed @ BusError::Unconfirmed { .. }, BusError::Unconfirmed { .. }) => {
                unconfirmed
            }
            (BusError::Unconfirmed { exchange, detail }, retry) => BusError::Unconfirmed {
                exchange,
                detail: format!("{detail}; the retry failed too: {retry}"),
            },
            // A broker closing the channel fails every publish awaiting its confirm, some of
            // them already queued: only a retry that is refused too proves a refusal (a nack
            // or an error of the retry's own says nothing of the first copy).
            (
                BusError::Refused {
                    operation: "basic.publish",
                    target,
                    code,
                    text,
                },
                retry,
            ) if !matches!(retry, BusError::Refused { .. }) => BusError::Unconfirmed {
                exchange: target,
                detail: format!(
                    "the channel closed before the confirm ({code} {text}); the retry failed: {retry}"
                ),
            },
            (_, retry) => retry,
        }
    }
}

/// How to consume a queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumeOptions {
    /// Most unacknowledged deliveries in flight to this consumer (`basic.qos`, per consumer).
    /// Must be at least 1: an unbounded consumer breaks the limits rule.
    pub prefetch: u16,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions { prefetch: 16 }
    }
}

/// Deliveries from one consumer. The stream ends when the consumer is cancelled by the broker
/// and yields an error when the connection is lost; dropping it cancels the consumer and closes
/// its channel, which requeues whatever was not acked.
pub type Deliveries = BoxStream<'static, Result<Delivery, BusError>>;

/// Settles one delivery. Implemented by each adapter.
#[async_trait]
pub trait Acker: Send + Sync {
    /// `basic.ack`.
    async fn ack(self: Box<Self>) -> Result<(), BusError>;
    /// `basic.nack` (single).
    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), BusError>;
    /// `basic.reject`.
    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), BusError>;
}

/// Distinct topologies an adapter remembers, to declare them again on every new connection.
#[cfg(any(feature = "rabbitmq", feature = "wire"))]
pub(crate) const TOPOLOGIES_REMEMBERED_MAX: usize = 64;

/// One message handed to a consumer, to be settled exactly once.
pub struct Delivery {
    /// Basic properties as published.
    pub properties: Properties,
    /// The body.
    pub body: Vec<u8>,
    /// True when the broker has delivered this message before.
    pub redelivered: bool,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    acker: Box<dyn Acker>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("properties", &self.properties)
            .field("body_bytes", &self.body.len())
            .field("redelivered", &self.redelivered)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .finish()
    }
}

impl Delivery {
    /// Built by adapters.
    pub fn new(
        properties: Properties,
        body: Vec<u8>,
        redelivered: bool,
        exchange: String,
        routing_key: String,
        acker: Box<dyn Acker>,
    ) -> Delivery {
        Delivery {
            properties,
            body,
            redelivered,
            exchange,
            routing_key,
            acker,
        }
    }

    /// Acknowledges: the broker forgets the message.
    pub async fn ack(self) -> Result<(), BusError> {
        self.acker.ack().await
    }

    /// Negative acknowledgement; with `requeue` the message goes back to its queue.
    pub async fn nack(self, requeue: bool) -> Result<(), BusError> {
        self.acker.nack(requeue).await
    }

    /// Rejects; without `requeue` the message is dropped or dead-lettered.
    pub async fn reject(self, requeue: bool) -> Result<(), BusError> {
        self.acker.reject(requeue).await
    }
}

/// A message broker as a service sees it.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Declares exchanges, queues and bindings; idempotent.
    async fn declare(&self, topology: &Topology) -> Result<(), BusError>;

    /// Publishes and waits for the broker's confirm. `Ok` means the broker has taken
    /// responsibility for the message.
    async fn publish(&self, publication: Publication) -> Result<(), BusError>;

    /// Starts consuming a queue with manual acknowledgements.
    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Deliveries, BusError>;
}

#[cfg(all(test, any(feature = "rabbitmq", feature = "wire")))]
mod tests {
    use super::*;

    fn unconfirmed(detail: &str) -> BusError {
        BusError::Unconfirmed {
            exchange: "x".into(),
            detail: detail.into(),
        }
    }

    #[test]
    fn a_publish_sent_once_stays_unconfirmed_whatever_its_retry_did() {
        let lost = BusError::Connection("reset".into());
        let refused = BusError::Refused {
            operation: "basic.publish",
            target: "x".into(),
            code: 404,
            text: "NOT_FOUND".into(),
        };
        assert_eq!(
            BusError::after_publish_retry(unconfirmed("lost"), lost.clone()),
            unconfirmed("lost; the retry failed too: broker connection failed: reset")
        );
        assert!(matches!(
            BusError::after_publish_retry(unconfirmed("lost"), refused.clone()),
            BusError::Unconfirmed { .. }
        ));
        assert_eq!(
            BusError::after_publish_retry(unconfirmed("first"), unconfirmed("second")),
            unconfirmed("first")
        );
        // A first attempt that never reached the broker leaves the retry's answer.
        assert_eq!(
            BusError::after_publish_retry(lost.clone(), refused.clone()),
            refused
        );
        // A channel closed under a publish may have queued it; a second refusal proves it.
        assert!(matches!(
            BusError::after_publish_retry(refused.clone(), lost.clone()),
            BusError::Unconfirmed { .. }
        ));
        assert_eq!(
            BusError::after_publish_retry(refused.clone(), refused.clone()),
            refused
        );
        // Nor does a nacked retry, or one the client could not send.
        for retry in [
            BusError::Nacked {
                exchange: "x".into(),
            },
            BusError::Invalid("all channels in use".into()),
        ] {
            assert!(matches!(
                BusError::after_publish_retry(refused.clone(), retry),
                BusError::Unconfirmed { .. }
            ));
        }
    }
}
