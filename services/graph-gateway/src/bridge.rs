//! RabbitToSubscriptions: consumes the gateway's event queues and records each event in the
//! registry, where subscriptions pick it up.
//!
//! A delivery is acked only after it is recorded, so a crash in between redelivers it (recording
//! is idempotent). A poison message is rejected without requeue and logged, never redelivered in
//! a loop. When a consumer's stream ends or fails (broker restart, lost connection) the bridge
//! consumes again after a pause that doubles up to `reconnect_backoff_max`, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use contracts::{Topology, decode_event};
use futures::StreamExt;
use ports::{Bus, Clock, ConsumeOptions, Deliveries, Delivery, Ports};
use tokio::task::JoinHandle;

use crate::config::{GatewayConfig, RECONNECT_BACKOFF_MIN};
use crate::error::GatewayError;
use crate::registry::{Recording, Registry};
use crate::shutdown::Signal;

/// What one consumer loop needs.
#[derive(Clone)]
struct Consumer {
    queue: Arc<str>,
    bus: Arc<dyn Bus>,
    clock: Arc<dyn Clock>,
    registry: Arc<Registry>,
    options: ConsumeOptions,
    backoff_max: Duration,
}

/// Why draining a stream stopped.
enum Drained {
    Shutdown,
    /// The stream ended or failed after this many deliveries.
    Ended {
        deliveries: u64,
    },
}

/// Starts consuming both event queues; returns once both consumers exist (so events published
/// from now on are recorded), with the tasks that run them until `shutdown`.
pub(crate) async fn start(
    ports: &Ports,
    registry: Arc<Registry>,
    config: &GatewayConfig,
    shutdown: Signal,
) -> Result<Vec<JoinHandle<()>>, GatewayError> {
    let options = ConsumeOptions {
        prefetch: config.bridge_prefetch,
    };
    // Both consumers first: if the second fails, dropping the first stream cancels it.
    let queues = Topology::subscription_queues(config.instance_queues.as_deref());
    let mut streams = Vec::with_capacity(queues.len());
    for queue in queues {
        let deliveries = ports
            .bus
            .consume(&queue, options.clone())
            .await
            .map_err(|source| GatewayError::Consume {
                queue: queue.clone(),
                source,
            })?;
        streams.push((Arc::<str>::from(queue), deliveries));
    }
    let tasks = streams
        .into_iter()
        .map(|(queue, deliveries)| {
            let consumer = Consumer {
                queue,
                bus: ports.bus.clone(),
                clock: ports.clock.clone(),
                registry: registry.clone(),
                options: options.clone(),
                backoff_max: config.reconnect_backoff_max,
            };
            tokio::spawn(consumer.run(deliveries, shutdown.clone()))
        })
        .collect();
    Ok(tasks)
}

impl Consumer {
    async fn run(self, first: Deliveries, mut shutdown: Signal) {
        tracing::info!(
            queue = &*self.queue,
            prefetch = self.options.prefetch,
            "bridge consuming"
        );
        let mut deliveries = Some(first);
        let mut backoff = RECONNECT_BACKOFF_MIN;
        loop {
            if let Some(stream) = deliveries.take() {
                match self.drain(stream, &mut shutdown).await {
                    Drained::Shutdown => break,
                    // A stream that delivered was healthy: start the backoff over.
                    Drained::Ended { deliveries } if deliveries > 0 => {
                        backoff = RECONNECT_BACKOFF_MIN
                    }
                    Drained::Ended { .. } => {}
                }
            }
            tokio::select! {
                biased;
                () = shutdown.wait() => break,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(self.backoff_max);
            let consumed = tokio::select! {
                biased;
                () = shutdown.wait() => break,
                consumed = self.bus.consume(&self.queue, self.options.clone()) => consumed,
            };
            match consumed {
                Ok(stream) => {
                    tracing::info!(queue = &*self.queue, "bridge consuming again");
                    deliveries = Some(stream);
                }
                Err(e) => {
                    tracing::warn!(queue = &*self.queue, error = %e, next_attempt_in = ?backoff,
                    "bridge could not consume")
                }
            }
        }
        tracing::info!(queue = &*self.queue, "bridge stopped consuming");
    }

    /// Handles deliveries until the stream ends or shutdown. Dropping the stream on shutdown
    /// cancels the consumer; the broker requeues anything unacked.
    async fn drain(&self, mut stream: Deliveries, shutdown: &mut Signal) -> Drained {
        let mut deliveries = 0;
        loop {
            let next = tokio::select! {
                biased;
                () = shutdown.wait() => return Drained::Shutdown,
                next = stream.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    self.handle(delivery).await;
                    deliveries += 1;
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = &*self.queue, error = %e, "event stream failed; consuming again after a pause");
                    return Drained::Ended { deliveries };
                }
                None => {
                    tracing::warn!(
                        queue = &*self.queue,
                        "consumer cancelled by the broker; consuming again after a pause"
                    );
                    return Drained::Ended { deliveries };
                }
            }
        }
    }

    /// Records, then acks; a poison message, and an event the full registry has no room for,
    /// are rejected without requeue.
    async fn handle(&self, delivery: Delivery) {
        let message_id = delivery.properties.message_id.clone();
        let event = match decode_event(delivery.properties.kind.as_deref(), &delivery.body) {
            Ok(event) => event,
            Err(reason) => {
                tracing::warn!(queue = &*self.queue, ?message_id, %reason, redelivered = delivery.redelivered,
                    "poison event rejected without requeue");
                if let Err(e) = delivery.reject(false).await {
                    tracing::warn!(queue = &*self.queue, ?message_id, error = %e, "reject failed");
                }
                return;
            }
        };
        let analysis_id = event.analysis_id();
        let kind = event.kind().as_str();
        match self.registry.record(event, self.clock.now_unix_ms()) {
            Recording::New => {
                tracing::debug!(queue = &*self.queue, %analysis_id, kind, "event recorded")
            }
            Recording::Repeat => {
                tracing::debug!(queue = &*self.queue, %analysis_id, kind, "repeated event ignored")
            }
            // Logged by the registry. Not recorded, so not acked: rejected, which a dead-letter
            // exchange (a RabbitMQ policy on the queue) keeps. Requeueing would not make room
            // soon, and would hold up the events of known analyses, which do.
            Recording::NoRoom => {
                if let Err(e) = delivery.reject(false).await {
                    tracing::warn!(queue = &*self.queue, ?message_id, error = %e, "reject failed");
                }
                return;
            }
        }
        if let Err(e) = delivery.ack().await {
            // It will be redelivered and recognised as a repeat.
            tracing::warn!(queue = &*self.queue, ?message_id, error = %e, "ack failed");
        }
    }
}
