//! The `memory` adapter: the [`Bus`] port on a broker-mem [`Broker`] in the same process.
//!
//! Shaped like the rabbitmq adapter so both behave alike: one connection per bus; publishes
//! share one channel in confirm mode, reopened after a channel error closed it; each `declare`
//! uses a channel of its own; each consumer gets its own channel, so dropping its stream closes
//! exactly that channel and requeues whatever it had not acked. broker-mem dispatches
//! synchronously, so a published message is already in its consumer's buffer when `publish`
//! returns.

use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use broker_mem::{Broker, Bytes, Channel, Confirm, Connection, Consumer};
use contracts::{BODY_BYTES_MAX, ExchangeKind, Properties, Publication, Topology};
use futures::StreamExt;

use crate::bus::{Acker, Bus, BusError, ConsumeOptions, Deliveries, Delivery};

/// The [`Bus`] on broker-mem, in process.
pub struct MemoryBus {
    broker: Broker,
    /// Replaced when the broker closed it (a restart, a forced close): a real client reconnects.
    connection: Mutex<Connection>,
    /// The publishing channel; None until first used or after an error closed it. A std mutex:
    /// it is never held across an await (broker-mem calls are synchronous).
    publisher: Mutex<Option<Channel>>,
}

impl std::fmt::Debug for MemoryBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBus")
            .field(
                "connection",
                &self
                    .connection
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .id(),
            )
            .finish()
    }
}

impl MemoryBus {
    /// A bus on its own connection to `broker`. Dropping the bus closes the connection: its
    /// consumers' streams end with an error and their unacked messages are requeued.
    pub fn new(broker: Broker) -> MemoryBus {
        let connection = Mutex::new(broker.connect());
        MemoryBus {
            broker,
            connection,
            publisher: Mutex::new(None),
        }
    }

    /// The broker, for introspection in tests.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    fn open_channel(&self) -> Result<Channel, BusError> {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match connection.open_channel() {
            Ok(channel) => Ok(channel),
            // The broker closed this connection (restart, forced close): reconnect once.
            Err(broker_mem::Error::ConnectionClosed(_) | broker_mem::Error::Connection(_)) => {
                *connection = self.broker.connect();
                connection
                    .open_channel()
                    .map_err(|error| refused("channel.open", "", error))
            }
            Err(error) => Err(refused("channel.open", "", error)),
        }
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn declare(&self, topology: &Topology) -> Result<(), BusError> {
        let channel = self.open_channel()?;
        for exchange in &topology.exchanges {
            let options = broker_mem::ExchangeOptions {
                durable: exchange.durable,
                ..Default::default()
            };
            channel
                .exchange_declare(&exchange.name, exchange_kind(exchange.kind), options)
                .map_err(|error| refused("exchange.declare", &exchange.name, error))?;
        }
        for queue in &topology.queues {
            let options = broker_mem::QueueOptions {
                durable: queue.durable,
                ..Default::default()
            };
            let mut arguments = broker_mem::FieldTable::new();
            for (name, value) in queue.limits.arguments() {
                arguments.insert(name.to_owned(), broker_mem::FieldValue::I64(value));
            }
            channel
                .queue_declare_with(&queue.name, options, &arguments)
                .map_err(|error| refused("queue.declare", &queue.name, error))?;
        }
        for binding in &topology.bindings {
            channel
                .queue_bind(&binding.queue, &binding.exchange, &binding.routing_key)
                .map_err(|error| {
                    let target = format!("{} -> {}", binding.exchange, binding.queue);
                    refused("queue.bind", &target, error)
                })?;
        }
        Ok(())
    }

    async fn publish(&self, publication: Publication) -> Result<(), BusError> {
        let Publication {
            exchange,
            routing_key,
            properties,
            body,
        } = publication;
        if body.len() > BODY_BYTES_MAX {
            return Err(BusError::Invalid(format!(
                "body of {} bytes for exchange {exchange:?}; the limit is {BODY_BYTES_MAX}",
                body.len()
            )));
        }
        let mut publisher = self
            .publisher
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let channel = match publisher.take() {
            Some(channel) if channel.is_open() => channel,
            _ => self.open_channel()?,
        };
        let confirm = channel.basic_publish(
            &exchange,
            &routing_key,
            to_broker(properties),
            Bytes::from(body),
        );
        match confirm {
            Ok(Confirm::Ack) => {
                *publisher = Some(channel);
                Ok(())
            }
            Ok(Confirm::Nack { reason }) => {
                *publisher = Some(channel);
                tracing::warn!(
                    exchange,
                    routing_key,
                    reason,
                    "publish nacked by broker-mem"
                );
                Err(BusError::Nacked { exchange })
            }
            // The adapter never selects a transaction on its channel, so a held publish
            // cannot happen; were it to, it is not reported as delivered.
            Ok(Confirm::Pending) => Err(BusError::Invalid(format!(
                "publish to {exchange:?} held in a transaction the adapter never opened"
            ))),
            // The error closed the channel; dropping it releases its number, and the next
            // publish opens a fresh one.
            Err(error) => Err(refused("basic.publish", &exchange, error)),
        }
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<Deliveries, BusError> {
        if options.prefetch == 0 {
            return Err(BusError::Invalid(format!(
                "prefetch for queue {queue:?} must be at least 1"
            )));
        }
        let channel = self.open_channel()?;
        channel
            .basic_qos(options.prefetch)
            .map_err(|error| refused("basic.qos", queue, error))?;
        let consumer = channel
            .basic_consume(queue, broker_mem::ConsumeOptions::default())
            .map_err(|error| refused("basic.consume", queue, error))?;
        let subscription = Subscription {
            channel: Arc::new(channel),
            consumer,
            queue: queue.to_owned(),
            ended: false,
        };
        Ok(futures::stream::unfold(subscription, next_delivery).boxed())
    }
}

/// One consumer's channel and deliveries: the state of its stream.
struct Subscription {
    /// Shared with the ackers of deliveries handed out.
    channel: Arc<Channel>,
    consumer: Consumer,
    queue: String,
    ended: bool,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        // Close now rather than when the last acker lets go of the channel: unacked messages go
        // back to the queue at once, and settling them later returns an error.
        if let Err(error) = self.channel.close() {
            tracing::debug!(queue = self.queue, %error, "consumer channel had already closed");
        }
    }
}

async fn next_delivery(
    mut subscription: Subscription,
) -> Option<(Result<Delivery, BusError>, Subscription)> {
    if subscription.ended {
        return None;
    }
    match subscription.consumer.recv().await {
        Some(delivery) => {
            let delivery = to_port_delivery(delivery, &subscription);
            Some((Ok(delivery), subscription))
        }
        None => {
            subscription.ended = true;
            // A consumer cancelled by the broker (its queue deleted) just ends; one whose
            // channel or connection went away reports it once.
            let error = subscription.channel.status().err()?;
            let lost = BusError::Connection(format!(
                "consumer of queue {:?} lost its channel: {error}",
                subscription.queue
            ));
            Some((Err(lost), subscription))
        }
    }
}

fn to_port_delivery(delivery: broker_mem::Delivery, subscription: &Subscription) -> Delivery {
    let acker = MemoryAcker {
        channel: Arc::clone(&subscription.channel),
        delivery_tag: delivery.delivery_tag,
        queue: subscription.queue.clone(),
    };
    Delivery::new(
        from_broker(&delivery.properties),
        delivery.body.to_vec(),
        delivery.redelivered,
        delivery.exchange.to_string(),
        delivery.routing_key.to_string(),
        Box::new(acker),
    )
}

/// Settles one delivery on the channel it arrived on.
struct MemoryAcker {
    channel: Arc<Channel>,
    delivery_tag: u64,
    queue: String,
}

#[async_trait]
impl Acker for MemoryAcker {
    async fn ack(self: Box<Self>) -> Result<(), BusError> {
        let result = self.channel.basic_ack(self.delivery_tag, false);
        result.map_err(|error| refused("basic.ack", &self.queue, error))
    }

    async fn nack(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        let result = self.channel.basic_nack(self.delivery_tag, false, requeue);
        result.map_err(|error| refused("basic.nack", &self.queue, error))
    }

    async fn reject(self: Box<Self>, requeue: bool) -> Result<(), BusError> {
        let result = self.channel.basic_reject(self.delivery_tag, requeue);
        result.map_err(|error| refused("basic.reject", &self.queue, error))
    }
}

/// A broker-mem error as the port reports it: the broker's refusals with RabbitMQ's code and
/// reply text; calls on a channel that had already closed as a lost connection (the message
/// will be, or has been, redelivered).
fn refused(operation: &'static str, target: &str, error: broker_mem::Error) -> BusError {
    match error {
        // Forced (a restart, an operator): the connection is lost, not the call refused.
        broker_mem::Error::Connection(reply)
            if reply.code == broker_mem::ReplyCode::ConnectionForced =>
        {
            BusError::Connection(format!("{operation} {target:?}: {}", reply.reply_text()))
        }
        broker_mem::Error::Channel(reply) | broker_mem::Error::Connection(reply) => {
            BusError::Refused {
                operation,
                target: target.to_owned(),
                code: reply.code.code(),
                text: reply.reply_text(),
            }
        }
        broker_mem::Error::Invalid(text) => {
            BusError::Invalid(format!("{operation} {target:?}: {text}"))
        }
        closed @ (broker_mem::Error::ChannelClosed(_)
        | broker_mem::Error::ConnectionClosed(_)
        | broker_mem::Error::Closed) => {
            BusError::Connection(format!("{operation} {target:?}: {closed}"))
        }
    }
}

fn exchange_kind(kind: ExchangeKind) -> broker_mem::ExchangeKind {
    match kind {
        ExchangeKind::Direct => broker_mem::ExchangeKind::Direct,
        ExchangeKind::Fanout => broker_mem::ExchangeKind::Fanout,
    }
}

/// Every field contracts has, to the AMQP property of the same meaning (`kind` is `type`).
/// Destructured, so a field added to contracts fails to compile here until it is mapped.
fn to_broker(properties: Properties) -> broker_mem::Properties {
    let Properties {
        content_type,
        delivery_mode,
        message_id,
        correlation_id,
        kind,
        timestamp,
        app_id,
    } = properties;
    broker_mem::Properties {
        content_type,
        delivery_mode,
        message_id,
        correlation_id,
        kind,
        timestamp,
        app_id,
        ..broker_mem::Properties::default()
    }
}

/// The fields contracts has; the others (headers, reply_to, ...) are not part of the contract.
fn from_broker(properties: &broker_mem::Properties) -> Properties {
    Properties {
        content_type: properties.content_type.clone(),
        delivery_mode: properties.delivery_mode,
        message_id: properties.message_id.clone(),
        correlation_id: properties.correlation_id.clone(),
        kind: properties.kind.clone(),
        timestamp: properties.timestamp,
        app_id: properties.app_id.clone(),
    }
}

#[cfg(test)]
mod tests {
    use contracts::{
        EXCHANGE_COMMANDS, EXCHANGE_STARTED, QUEUE_COMMANDS, QUEUE_SUBS_COMPLETED,
        QUEUE_SUBS_STARTED, ROUTING_KEY_REQUEST,
    };
    use futures::StreamExt;

    use super::*;

    fn properties(kind: &str) -> Properties {
        Properties {
            content_type: Some("application/json".into()),
            delivery_mode: Some(2),
            message_id: Some("6f1c2a9e-0000-5000-8000-000000000001".into()),
            correlation_id: Some("0190a0b0-0000-7000-8000-000000000001".into()),
            kind: Some(kind.into()),
            timestamp: Some(1_700_000_000),
            app_id: Some("tests".into()),
        }
    }

    fn command(body: &str) -> Publication {
        Publication {
            exchange: EXCHANGE_COMMANDS.into(),
            routing_key: ROUTING_KEY_REQUEST.into(),
            properties: properties("RequestAnalysis"),
            body: body.as_bytes().to_vec(),
        }
    }

    async fn bus_with_contract() -> MemoryBus {
        let bus = MemoryBus::new(Broker::new());
        bus.declare(&Topology::contract()).await.unwrap();
        bus
    }

    async fn next(deliveries: &mut Deliveries) -> Delivery {
        deliveries
            .next()
            .await
            .expect("stream ended")
            .expect("stream failed")
    }

    #[tokio::test]
    async fn publish_consume_and_ack_through_the_contract_topology() {
        let bus = bus_with_contract().await;
        bus.declare(&Topology::contract()).await.unwrap(); // idempotent
        let broker = bus.broker();
        assert_eq!(broker.bindings().len(), 3);

        bus.publish(command("{\"n\":1}")).await.unwrap();
        let started = Publication {
            exchange: EXCHANGE_STARTED.into(),
            routing_key: String::new(),
            properties: properties("AnalysisStarted"),
            body: b"{}".to_vec(),
        };
        bus.publish(started).await.unwrap();
        assert_eq!(broker.queue_depth(QUEUE_COMMANDS), Some(1));
        assert_eq!(broker.queue_depth(QUEUE_SUBS_STARTED), Some(1));
        assert_eq!(broker.queue_depth(QUEUE_SUBS_COMPLETED), Some(0));

        let mut deliveries = bus
            .consume(QUEUE_COMMANDS, ConsumeOptions::default())
            .await
            .unwrap();
        let delivery = next(&mut deliveries).await;
        assert_eq!(delivery.properties, properties("RequestAnalysis"));
        assert_eq!(delivery.body, b"{\"n\":1}");
        assert_eq!(delivery.exchange, EXCHANGE_COMMANDS);
        assert_eq!(delivery.routing_key, ROUTING_KEY_REQUEST);
        assert!(!delivery.redelivered);
        assert_eq!(broker.unacked_count(QUEUE_COMMANDS), Some(1));

        delivery.ack().await.unwrap();
        assert_eq!(broker.queue_depth(QUEUE_COMMANDS), Some(0));
        assert_eq!(broker.unacked_count(QUEUE_COMMANDS), Some(0));
    }

    #[tokio::test]
    async fn an_unacked_delivery_is_redelivered_after_the_stream_is_dropped() {
        let bus = bus_with_contract().await;
        bus.publish(command("{}")).await.unwrap();
        let mut deliveries = bus
            .consume(QUEUE_COMMANDS, ConsumeOptions::default())
            .await
            .unwrap();
        let unsettled = next(&mut deliveries).await;
        assert!(!unsettled.redelivered);
        drop(deliveries);
        assert_eq!(bus.broker().queue_depth(QUEUE_COMMANDS), Some(1));
        assert_eq!(bus.broker().unacked_count(QUEUE_COMMANDS), Some(0));

        // Settling on the closed channel is an error, not a panic, and changes nothing.
        let late = unsettled.ack().await.unwrap_err();
        assert!(matches!(late, BusError::Connection(_)), "{late:?}");

        let mut again = bus
            .consume(QUEUE_COMMANDS, ConsumeOptions::default())
            .await
            .unwrap();
        let redelivered = next(&mut again).await;
        assert!(redelivered.redelivered);
        assert_eq!(redelivered.properties, properties("RequestAnalysis"));
        redelivered.ack().await.unwrap();
        assert_eq!(bus.broker().queue_depth(QUEUE_COMMANDS), Some(0));
    }

    #[tokio::test]
    async fn nack_without_requeue_drops_and_with_requeue_redelivers() {
        let bus = bus_with_contract().await;
        bus.publish(command("poison")).await.unwrap();
        bus.publish(command("retry")).await.unwrap();
        let options = ConsumeOptions { prefetch: 1 };
        let mut deliveries = bus.consume(QUEUE_COMMANDS, options).await.unwrap();

        let poison = next(&mut deliveries).await;
        assert_eq!(poison.body, b"poison");
        poison.nack(false).await.unwrap();

        let retry = next(&mut deliveries).await;
        assert_eq!(retry.body, b"retry");
        retry.reject(true).await.unwrap();
        let again = next(&mut deliveries).await;
        assert_eq!(
            (again.body.as_slice(), again.redelivered),
            (&b"retry"[..], true)
        );
        again.ack().await.unwrap();

        assert_eq!(bus.broker().queue_depth(QUEUE_COMMANDS), Some(0));
        assert_eq!(bus.broker().unacked_count(QUEUE_COMMANDS), Some(0));
        assert_eq!(bus.broker().usage().messages, 0);
    }

    #[tokio::test]
    async fn prefetch_limits_what_a_consumer_holds() {
        let bus = bus_with_contract().await;
        for n in 0..3 {
            bus.publish(command(&n.to_string())).await.unwrap();
        }
        let mut deliveries = bus
            .consume(QUEUE_COMMANDS, ConsumeOptions { prefetch: 2 })
            .await
            .unwrap();
        let first = next(&mut deliveries).await;
        assert_eq!(bus.broker().unacked_count(QUEUE_COMMANDS), Some(2));
        assert_eq!(bus.broker().queue_depth(QUEUE_COMMANDS), Some(1));
        first.ack().await.unwrap();
        assert_eq!(bus.broker().queue_depth(QUEUE_COMMANDS), Some(0));
    }

    #[tokio::test]
    async fn publishing_to_a_missing_exchange_is_refused_with_404_and_the_bus_recovers() {
        let bus = bus_with_contract().await;
        let mut missing = command("{}");
        missing.exchange = "no.such.exchange".into();
        let error = bus.publish(missing).await.unwrap_err();
        assert_eq!(
            error,
            BusError::Refused {
                operation: "basic.publish",
                target: "no.such.exchange".into(),
                code: 404,
                text: "NOT_FOUND - no exchange 'no.such.exchange' in vhost '/'".into(),
            }
        );
        // The publishing channel was closed by the error; the next publish gets a new one.
        bus.publish(command("{}")).await.unwrap();
        assert_eq!(bus.broker().queue_depth(QUEUE_COMMANDS), Some(1));
    }

    #[tokio::test]
    async fn consuming_a_missing_queue_is_refused_with_404() {
        let bus = MemoryBus::new(Broker::new());
        let error = bus
            .consume("nowhere", ConsumeOptions::default())
            .await
            .err()
            .unwrap();
        assert!(
            matches!(
                &error,
                BusError::Refused {
                    operation: "basic.consume",
                    code: 404,
                    ..
                }
            ),
            "{error:?}"
        );
    }

    #[tokio::test]
    async fn limits_are_checked_before_the_broker() {
        let bus = bus_with_contract().await;
        let error = bus
            .consume(QUEUE_COMMANDS, ConsumeOptions { prefetch: 0 })
            .await
            .err();
        assert!(matches!(error, Some(BusError::Invalid(_))));
        let error = bus
            .publish(command(&"x".repeat(BODY_BYTES_MAX + 1)))
            .await
            .unwrap_err();
        assert!(matches!(error, BusError::Invalid(_)));
        assert_eq!(bus.broker().queue_depth(QUEUE_COMMANDS), Some(0));
    }

    #[tokio::test]
    async fn dropping_the_bus_ends_its_streams_with_an_error_and_requeues() {
        let broker = Broker::new();
        let bus = MemoryBus::new(broker.clone());
        bus.declare(&Topology::contract()).await.unwrap();
        bus.publish(command("{}")).await.unwrap();
        let mut deliveries = bus
            .consume(QUEUE_COMMANDS, ConsumeOptions::default())
            .await
            .unwrap();
        let _held = next(&mut deliveries).await;
        drop(bus);
        assert!(matches!(
            deliveries.next().await,
            Some(Err(BusError::Connection(_)))
        ));
        assert!(deliveries.next().await.is_none());
        assert_eq!(broker.queue_depth(QUEUE_COMMANDS), Some(1));
    }

    #[tokio::test]
    async fn a_consumer_waits_for_messages_published_later() {
        let bus = Arc::new(bus_with_contract().await);
        let mut deliveries = bus
            .consume(QUEUE_COMMANDS, ConsumeOptions::default())
            .await
            .unwrap();
        let publisher = Arc::clone(&bus);
        let task = tokio::spawn(async move { publisher.publish(command("late")).await });
        let delivery = next(&mut deliveries).await;
        assert_eq!(delivery.body, b"late");
        task.await.unwrap().unwrap();
    }
}
