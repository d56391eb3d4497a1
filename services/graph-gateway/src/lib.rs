//! GraphGateway: warren's public GraphQL API (async-graphql over axum) and the
//! RabbitToSubscriptions bridge that turns the orchestrator's events into subscription events.
//!
//! Owns: the schema of `shared/contract/schema.graphql` (plus `analysisEvents`), the registry of
//! analyses and their recorded events (the only state, in memory, bounded), the bridge consuming
//! `graph.subs.started` / `graph.subs.completed`, and the HTTP/WebSocket endpoints.
//!
//! Identity: with [`GatewayConfig::auth`] the gateway re-validates the bearer JWT itself
//! (`jwt_auth`, the same validator as the auth proxy's) and the caller is its `sub`; without it,
//! the `X-Forwarded-User` header of the auth proxy in front.
//!
//! Must never depend on: lapin, `tokio::net`, `std::time::{SystemTime, Instant}`, OS threads,
//! `rand` or uuid v4/v7. The world comes in through `ports::Ports` (bus, clock, ids) and the
//! listener handed to [`run`], so the same code serves real RabbitMQ, broker-mem, and a turmoil
//! simulation (single-threaded, simulated time). Only the bin (`main.rs`) picks real adapters.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod bridge;
mod config;
mod error;
mod follow;
mod http;
mod registry;
mod schema;
mod shutdown;
mod ws;

use std::future::Future;
use std::sync::Arc;

use contracts::Topology;
use ports::Ports;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use config::{
    BRIDGE_PREFETCH_DEFAULT, CALLER_BYTES_MAX, GatewayConfig, HTTP_BODY_BYTES_MAX,
    INCOMPLETE_TTL_DEFAULT, JwtAuth, LIVE_EVENTS_CAPACITY, QUERY_COMPLEXITY_MAX, QUERY_DEPTH_MAX,
    QUERY_DIRECTIVES_MAX, RECONNECT_BACKOFF_MAX_DEFAULT, RECONNECT_BACKOFF_MIN,
    REGISTRY_BYTES_MAX_DEFAULT, REGISTRY_CAPACITY_DEFAULT, SHUTDOWN_GRACE_DEFAULT,
    STARTED_WAIT_MAX_DEFAULT, WS_CONNECTIONS_MAX_DEFAULT, WS_INIT_TIMEOUT_DEFAULT,
    WS_KEEPALIVE_DEFAULT, WS_MESSAGE_BYTES_MAX, WS_SUBSCRIPTIONS_MAX, WS_WRITE_TIMEOUT,
};
pub use error::{GatewayError, code};
pub use schema::sdl;

/// A started gateway: the bridge is consuming, the router is ready to serve. Call
/// [`Gateway::shutdown`] to stop it; dropping it instead detaches the bridge tasks and open
/// WebSockets, like dropping a `JoinHandle`.
pub struct Gateway {
    state: http::AppState,
    trigger: shutdown::Trigger,
    bridge: Vec<JoinHandle<()>>,
    /// `recv` yields `None` once every open WebSocket (and every router copy) is gone.
    ws_closed: mpsc::Receiver<()>,
    config: GatewayConfig,
}

impl Gateway {
    /// The HTTP and WebSocket endpoints. Serve it on any `axum::serve::Listener`.
    pub fn router(&self) -> axum::Router {
        http::router(self.state.clone())
    }

    /// Stops the bridge (unacked deliveries go back to their queues), closes open WebSockets
    /// with 1001, and waits for them up to `shutdown_grace`.
    pub async fn shutdown(self) {
        let Gateway {
            state,
            trigger,
            bridge,
            mut ws_closed,
            config,
        } = self;
        trigger.pull();
        for task in bridge {
            if let Err(e) = task.await {
                tracing::error!(error = %e, "bridge task failed");
            }
        }
        drop(state);
        if tokio::time::timeout(config.shutdown_grace, ws_closed.recv())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?config.shutdown_grace, "WebSockets still open after the shutdown grace period");
        }
    }
}

/// For tests and embedding: declares the gateway's topology, starts the bridge (both event
/// queues are being consumed when this returns) and builds the router, without serving it.
pub async fn start(ports: Ports, config: GatewayConfig) -> Result<Gateway, GatewayError> {
    config.validate()?;
    ports
        .bus
        .declare(&Topology::gateway_for(config.instance_queues.as_deref()))
        .await
        .map_err(GatewayError::Declare)?;
    let registry = Arc::new(
        registry::Registry::new(config.registry_capacity, config.incomplete_ttl)
            .with_bytes_max(config.registry_bytes_max),
    );
    let (trigger, signal) = shutdown::channel();
    let bridge = bridge::start(&ports, registry.clone(), &config, signal.clone()).await?;
    let schema = schema::build(schema::Services {
        ports,
        registry,
        started_wait_max: config.started_wait_max,
    });
    // Capacity is irrelevant: nothing is ever sent, the channel only counts its senders.
    let (ws_open, ws_closed) = mpsc::channel(1);
    let state = http::AppState {
        schema,
        shutdown: signal,
        ws_subscriptions_max: config.ws_subscriptions_max,
        ws_open,
        auth: config.auth.clone(),
        ws_sockets: Arc::new(tokio::sync::Semaphore::new(config.ws_connections_max)),
        ws_init_timeout: config.ws_init_timeout,
        ws_keepalive: config.ws_keepalive,
    };
    Ok(Gateway {
        state,
        trigger,
        bridge,
        ws_closed,
        config,
    })
}

/// Declares the gateway's topology (`contracts::Topology::gateway()`), starts the bridge, and
/// serves HTTP + WebSocket on `listener` until `shutdown` resolves; then stops consuming, closes
/// open WebSockets, lets in-flight HTTP requests finish, and returns.
pub async fn run<L>(
    ports: Ports,
    listener: L,
    config: GatewayConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let gateway = start(ports, config).await?;
    match listener.local_addr() {
        Ok(addr) => tracing::info!(?addr, "graph-gateway listening"),
        Err(e) => tracing::warn!(error = %e, "graph-gateway listening on an unknown address"),
    }
    let trigger = gateway.trigger.clone();
    let served = axum::serve(listener, gateway.router())
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("graph-gateway shutting down");
            // WebSockets are no longer HTTP connections: tell them directly.
            trigger.pull();
        })
        .await;
    gateway.shutdown().await;
    served.map_err(GatewayError::Serve)
}
