//! broker-mem over AMQP 0-9-1: a server that lets any AMQP client (lapin, pika, amqplib, our
//! thread-free client) use a [`Broker`], over any byte stream (tokio TCP, turmoil TCP, an
//! in-memory duplex).
//!
//! Framing is the `amq-protocol` crate's (the codec lapin itself uses); this module owns the
//! connection state machine: the handshake with PLAIN authentication, tune, heartbeats both
//! ways, channels, content assembly, and the mapping of every engine outcome to AMQP replies.
//! Soft errors close the channel and hard errors the connection, with RabbitMQ's reply codes
//! and texts. The broker state is the [`Broker`]'s: wire connections and in-process clients see
//! the same queues.
//!
//! Time is `tokio::time` only (simulated under turmoil), there are no threads, and every map is
//! ordered, so a seeded simulation that runs this server is deterministic. The server keeps
//! the broker's time ([`WireServer::keep_time`]): TTLs and other deadlines act when they are
//! due, not at the next client's call.
//!
//! Served: the methods of the connection, channel, exchange, queue, basic, confirm and tx
//! classes, and the deprecated `access.request`; `channel.flow` with `active=false` and a
//! publish with `immediate` get RabbitMQ 3.10's 540 NOT_IMPLEMENTED, a method only a server
//! sends its 503 COMMAND_INVALID; both close the connection. Refused frames get RabbitMQ's
//! codes and texts (`tests/wire_frames.rs` holds both servers to them).
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use broker_mem::Broker;
//! use broker_mem::wire::{WireConfig, WireServer};
//!
//! let server = WireServer::new(Broker::new(), WireConfig::default());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:5673").await?;
//! server.serve_tcp(listener).await
//! # }
//! ```

mod codec;
mod content;
pub mod convert;
mod layout;
mod session;

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::Broker;
use crate::limits::CHANNELS_PER_CONNECTION_MAX;

/// Largest frame, header and end byte included, that the server proposes (RabbitMQ's default).
pub const FRAME_MAX_BYTES: u32 = 131_072;
/// The smallest `frame_max` AMQP allows a peer to negotiate.
pub const FRAME_MIN_BYTES: u32 = 4_096;
/// Heartbeat interval the server proposes, in seconds (RabbitMQ's default).
pub const HEARTBEAT_S: u16 = 60;
/// Connections served at once by one server; past it a new connection is refused with 530.
pub const CONNECTIONS_MAX: usize = 1_024;
/// A client must finish the handshake (header to `connection.open`) within this.
pub const HANDSHAKE_TIMEOUT_MS: u64 = 10_000;
/// After the server sends `connection.close` it waits this long for `close-ok`.
pub const CLOSE_TIMEOUT_MS: u64 = 1_000;
/// A write the peer takes nothing of for this long fails, and the connection closes
/// (RabbitMQ's `tcp_listen_options.send_timeout`, with `send_timeout_close`): a peer that
/// stops reading would otherwise hold the session, and its unacked messages, for ever.
pub const SEND_TIMEOUT_MS: u64 = 15_000;
/// The port `warren up` serves AMQP on (RabbitMQ's is 5672; one more, so both can run).
pub const PORT_DEFAULT: u16 = 5673;

/// How a [`WireServer`] behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WireConfig {
    /// Users and their passwords, for PLAIN authentication.
    pub users: Vec<(String, String)>,
    /// The `frame_max` the server proposes, in bytes (at least [`FRAME_MIN_BYTES`]). As in
    /// RabbitMQ, a frame's payload may be as large as the negotiated value itself.
    pub frame_max_bytes: u32,
    /// Most channels a connection may have open (at most the broker's own limit).
    pub channel_max: u16,
    /// Heartbeat interval the server proposes, in seconds; 0 proposes none. The client's answer
    /// decides.
    pub heartbeat_s: u16,
    /// Connections served at once.
    pub connections_max: usize,
    /// Deadline for the handshake.
    pub handshake_timeout: Duration,
}

impl Default for WireConfig {
    fn default() -> Self {
        WireConfig {
            users: vec![("guest".into(), "guest".into())],
            frame_max_bytes: FRAME_MAX_BYTES,
            channel_max: CHANNELS_PER_CONNECTION_MAX,
            heartbeat_s: HEARTBEAT_S,
            connections_max: CONNECTIONS_MAX,
            handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS),
        }
    }
}

/// Why a served connection ended other than by an orderly close.
#[derive(Debug, Error)]
pub enum WireError {
    /// Reading or writing the stream failed.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The peer closed the stream without `connection.close`.
    #[error("the peer closed the stream")]
    Eof,
    /// The server closed the connection with a hard error (or refused the handshake).
    #[error("closed by the server: {code} {text}")]
    Closed {
        /// AMQP reply code.
        code: u16,
        /// Reply text.
        text: String,
    },
    /// Nothing arrived from the peer for two heartbeat intervals.
    #[error("no frame from the peer for {0:?}: missed heartbeats")]
    HeartbeatTimeout(Duration),
    /// The handshake did not finish in time.
    #[error("the handshake did not finish within {0:?}")]
    HandshakeTimeout(Duration),
}

/// Serves a [`Broker`] over AMQP 0-9-1. Cheap to clone; clones share the broker and the
/// connection count.
#[derive(Debug, Clone)]
pub struct WireServer {
    broker: Broker,
    config: Arc<WireConfig>,
    live: Arc<AtomicUsize>,
}

impl WireServer {
    /// A server for `broker`.
    pub fn new(broker: Broker, config: WireConfig) -> WireServer {
        WireServer {
            broker,
            config: Arc::new(config),
            live: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The broker it serves.
    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    /// Its configuration.
    pub fn config(&self) -> &WireConfig {
        &self.config
    }

    /// Connections being served now.
    pub fn connections(&self) -> usize {
        self.live.load(Ordering::SeqCst)
    }

    /// Serves one client on `stream` until it closes. `Ok` after an orderly `connection.close`
    /// by the client. However the connection ends, everything its channels had not acked is
    /// requeued, and its exclusive queues are deleted.
    pub async fn serve_connection<S>(&self, stream: S) -> Result<(), WireError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let _count = LiveGuard::new(&self.live);
        let over_limit = self.connections() > self.config.connections_max;
        session::run(self, stream, over_limit).await
    }

    /// Keeps the broker's time as RabbitMQ's timers do: messages expire (and are
    /// dead-lettered), unused queues go (`x-expires`), channels past the consumer timeout
    /// close and delayed deliveries arrive when they are due, though no client calls. The
    /// broker acts only inside calls, so without this a consumer waiting for a dead-lettered
    /// message would wait for someone else's call. [`WireServer::serve_tcp`] runs it; run it
    /// beside [`WireServer::serve_connection`] on another transport, unless something else
    /// ticks the broker (a simulation's driver). Sleeps in `tokio::time`, so simulated time
    /// drives it under turmoil. Returns only if another keeper takes over the broker
    /// ([`Broker::deadline_bell`]: one per broker).
    pub async fn keep_time(&self) {
        let bell = self.broker.deadline_bell();
        loop {
            // Emptied first: a ring after this is about a deadline the reading below may miss.
            while bell.try_recv().is_ok() {}
            let wait_ms = self.broker.next_deadline_in_ms();
            let rung = match wait_ms {
                // At least 1 ms: a tick acts only once the clock has moved.
                Some(wait_ms) => {
                    let wait = Duration::from_millis(wait_ms.max(1));
                    tokio::time::timeout(wait, bell.recv_async()).await.ok()
                }
                None => Some(bell.recv_async().await),
            };
            if let Some(Err(flume::RecvError::Disconnected)) = rung {
                // Another keeper replaced this one's bell: it keeps the time now.
                return;
            }
            self.broker.tick();
        }
    }

    /// Accepts connections on a tokio TCP listener forever, serving each in a task of its own,
    /// and keeps the broker's time ([`WireServer::keep_time`]).
    pub async fn serve_tcp(self, listener: tokio::net::TcpListener) -> io::Result<()> {
        let keeper = self.keep_time();
        tokio::pin!(keeper);
        let mut keeping = true;
        loop {
            let accepted = tokio::select! {
                // Polled in order, not by the runtime's random pick: a seeded run stays one.
                biased;
                () = &mut keeper, if keeping => {
                    keeping = false;
                    continue;
                }
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // As axum does: an accept error concerns one connection; keep serving.
                    tracing::warn!(%error, "accept failed");
                    continue;
                }
            };
            // Frames are small and latency matters more than packet count.
            let _ = stream.set_nodelay(true);
            let server = self.clone();
            tokio::spawn(async move {
                match server.serve_connection(stream).await {
                    Ok(()) => tracing::debug!(%peer, "AMQP connection closed"),
                    Err(error) => tracing::info!(%peer, %error, "AMQP connection ended"),
                }
            });
        }
    }
}

/// Counts a connection for as long as it is served.
struct LiveGuard<'a>(&'a AtomicUsize);

impl<'a> LiveGuard<'a> {
    fn new(live: &'a AtomicUsize) -> LiveGuard<'a> {
        live.fetch_add(1, Ordering::SeqCst);
        LiveGuard(live)
    }
}

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
