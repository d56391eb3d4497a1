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
    /// The message breaks a limit before it reaches the broker.
    #[error("message refused before publishing: {0}")]
    Invalid(String),
    /// The bus has been shut down.
    #[error("the bus is closed")]
    Closed,
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
