//! One AMQP connection: the handshake, then frames in, engine calls, replies and deliveries out.
//!
//! The session owns the write half and the connection's state; a [`FrameReader`] owns the read
//! half and its buffer. The main loop waits on three things at once (a frame, an engine event
//! for this connection, the heartbeat timer) and after each one drains the engine's events and
//! writes what accumulated, in one write while more input is already buffered.

use std::collections::BTreeMap;
use std::io;
use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{
    AMQPClass, access, basic, channel, confirm, connection, exchange, queue, tx,
};
use amq_protocol::types::{AMQPValue, FieldTable as AmqpTable, LongString, ShortString};
use bytes::Bytes;
use smol_str::SmolStr;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::time::Instant;

use crate::error::fit_reply_text;
use crate::wire::codec::{
    BadFrame, FRAME_OVERHEAD_BYTES, HeaderFrame, Inbound, PROTOCOL_HEADER, put_body, put_frame,
    put_heartbeat, short, take_frame,
};
use crate::wire::content::put_header;
use crate::wire::convert::table_in;
use crate::wire::{
    CLOSE_TIMEOUT_MS, FRAME_MIN_BYTES, SEND_TIMEOUT_MS, WireConfig, WireError, WireServer,
};
use crate::{
    Broker, ChannelId, Confirm, ConnectionId, ConsumeOptions, ConsumerEnd, Engine, Error, Event,
    ExchangeKind, ExchangeOptions, FieldTable, FieldValue, PublishOptions, QueueOptions, Returned,
    Tap,
};

/// Bytes asked of the stream per read.
const READ_CHUNK_BYTES: usize = 64 * 1024;
/// Output is written once it grows past this, even if more input is waiting.
const OUT_FLUSH_BYTES: usize = 256 * 1024;
/// AMQP class id of `basic`, the only class with content.
const CLASS_BASIC: u16 = 60;
/// `basic.publish`'s method id.
const METHOD_PUBLISH: u16 = 40;

/// A connection error: close the connection with this reply.
#[derive(Debug)]
struct Hard {
    code: u16,
    text: String,
    class_id: u16,
    method_id: u16,
}

impl Hard {
    fn new(code: u16, text: impl Into<String>) -> Hard {
        Hard {
            code,
            text: text.into(),
            class_id: 0,
            method_id: 0,
        }
    }

    fn during(mut self, class: &AMQPClass) -> Hard {
        self.class_id = class.get_amqp_class_id();
        self.method_id = class.get_amqp_method_id();
        self
    }

    /// Refers to the `basic.publish` whose content was being assembled, as RabbitMQ's
    /// command assembler does.
    fn during_publish(mut self) -> Hard {
        self.class_id = CLASS_BASIC;
        self.method_id = METHOD_PUBLISH;
        self
    }
}

impl From<BadFrame> for Hard {
    fn from(bad: BadFrame) -> Hard {
        Hard {
            code: bad.code,
            text: bad.text,
            class_id: bad.during.0,
            method_id: bad.during.1,
        }
    }
}

/// A content frame where a method must come (RabbitMQ's command assembler).
fn expected_method_frame() -> Hard {
    Hard::new(
        505,
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead",
    )
}

/// Why reading stopped.
enum Stop {
    Io(io::Error),
    Eof,
    Bad(BadFrame),
}

/// The read half and its buffer.
struct FrameReader<S> {
    reader: ReadHalf<S>,
    buffer: Vec<u8>,
    /// Bytes of `buffer` already handed out as frames.
    start: usize,
    /// The largest payload taken: AMQP's minimum until `tune-ok` sets the connection's, as in
    /// RabbitMQ's reader.
    frame_max_bytes: u32,
    /// `connection.open` was answered. Before, a frame on any channel but 0 is refused unread.
    open: bool,
}

impl<S: AsyncRead> FrameReader<S> {
    /// The 8-byte protocol header.
    async fn header(&mut self) -> Result<[u8; 8], Stop> {
        while self.buffer.len() < PROTOCOL_HEADER.len() {
            self.fill().await?;
        }
        let mut header = [0; 8];
        header.copy_from_slice(&self.buffer[..8]);
        self.start = 8;
        Ok(header)
    }

    /// The next frame. Cancel-safe: the only await is a read into the buffer.
    async fn next(&mut self) -> Result<Inbound, Stop> {
        loop {
            match take_frame(&self.buffer[self.start..], self.frame_max_bytes, self.open) {
                Ok(Some((inbound, used))) => {
                    self.start += used;
                    if self.start == self.buffer.len() {
                        self.buffer.clear();
                        self.start = 0;
                    }
                    return Ok(inbound);
                }
                Ok(None) => self.fill().await?,
                Err(bad) => {
                    // A bad frame read whole is passed, so that the peer's close-ok can be
                    // found after it.
                    if let Some(used) = bad.skip {
                        self.start += used;
                    }
                    return Err(Stop::Bad(bad));
                }
            }
        }
    }

    /// Reads and drops whatever the peer sends until it hangs up: after the framing is lost,
    /// nothing it sends can be read, but closing with its bytes unread would reset the
    /// connection, and the peer might lose the `connection.close` sent to it.
    async fn discard_until_eof(&mut self) {
        loop {
            self.buffer.clear();
            self.start = 0;
            match self.reader.read_buf(&mut self.buffer).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    }

    /// Whether a whole frame (or a bad one) is already buffered.
    fn has_frame(&self) -> bool {
        let buffered = &self.buffer[self.start..];
        !matches!(
            take_frame(buffered, self.frame_max_bytes, self.open),
            Ok(None)
        )
    }

    async fn fill(&mut self) -> Result<(), Stop> {
        if self.start > 0 {
            self.buffer.drain(..self.start);
            self.start = 0;
        }
        self.buffer.reserve(READ_CHUNK_BYTES);
        match self.reader.read_buf(&mut self.buffer).await {
            Ok(0) => Err(Stop::Eof),
            Ok(_) => Ok(()),
            Err(error) => Err(Stop::Io(error)),
        }
    }
}

/// A publish waiting for its content header and body.
struct Content {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    properties: Option<crate::Properties>,
    /// The header's properties did not decode: RabbitMQ finds that out when the content is
    /// complete, and answers 541 then.
    undecodable: bool,
    size: u64,
    body: Vec<u8>,
}

impl Content {
    /// RabbitMQ's text for any other frame while this content is assembled.
    fn expected(&self) -> &'static str {
        if self.properties.is_none() {
            "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead"
        } else {
            "UNEXPECTED_FRAME - expected content body, got non content body frame instead"
        }
    }
}

/// An open channel of this connection.
struct WireChannel {
    id: ChannelId,
    /// The server sent `channel.close` and waits for `close-ok`; everything else is discarded.
    closing: bool,
    /// `confirm.select` was received: every publish is answered with ack or nack.
    confirm: bool,
    /// Sequence number of the last publish in confirm mode.
    published: u64,
    /// Publishes acked by the engine up to this sequence number whose `basic.ack` is not
    /// written yet. Consecutive acks are coalesced into one with `multiple` (as RabbitMQ
    /// does), written before any other frame of this channel or connection and before the
    /// output is flushed, so order and promptness are unchanged.
    unsent_ack: Option<u64>,
    /// The last sequence number whose confirm was written.
    confirmed_through: u64,
    content: Option<Content>,
    /// Consumers by tag, and whether they are `no_ack`.
    consumers: BTreeMap<String, bool>,
}

/// Closes the engine's side of the connection however the session ends (also on a panic or
/// when a simulated host crashes and drops the task).
struct Registration {
    broker: Broker,
    id: ConnectionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.broker.close_tapped(self.id);
    }
}

struct Session<S> {
    writer: WriteHalf<S>,
    out: Vec<u8>,
    broker: Broker,
    config: WireConfig,
    connection: Option<ConnectionId>,
    frame_max_bytes: u32,
    channel_max: u16,
    heartbeat: Option<Duration>,
    last_read: Instant,
    last_write: Instant,
    channels: BTreeMap<u16, WireChannel>,
    numbers: BTreeMap<ChannelId, u16>,
    /// `no_ack` deliveries written since the last report to the engine.
    taken: Vec<(ChannelId, SmolStr)>,
    /// The client sent `connection.close`.
    closed_by_client: bool,
    /// The client announced `consumer_cancel_notify`: only then does RabbitMQ tell it that the
    /// broker ended one of its consumers (`basic.cancel`).
    cancel_notify: bool,
    /// `tune-ok` was taken: handshake errors from here on are answered with a close.
    tuned: bool,
    /// The broker's body limit, read once: a header announcing more is refused before any body
    /// byte is buffered.
    body_bytes_max: u64,
    /// The arguments of the method being handled, in wire order (amq-protocol's parsed copy is
    /// sorted): see [`Session::arguments`].
    arguments_in_order: Option<Box<FieldTable>>,
}

/// Serves one connection; see [`WireServer::serve_connection`].
pub(crate) async fn run<S>(
    server: &WireServer,
    stream: S,
    over_limit: bool,
) -> Result<(), WireError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    let mut frames = FrameReader {
        reader,
        buffer: Vec::new(),
        start: 0,
        frame_max_bytes: FRAME_MIN_BYTES,
        open: false,
    };
    let now = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
    let mut session = Session {
        writer,
        out: Vec::with_capacity(READ_CHUNK_BYTES),
        broker: server.broker().clone(),
        config: server.config().clone(),
        connection: None,
        frame_max_bytes: server.config().frame_max_bytes.max(FRAME_MIN_BYTES),
        channel_max: server.config().channel_max,
        heartbeat: None,
        last_read: now,
        last_write: now,
        channels: BTreeMap::new(),
        numbers: BTreeMap::new(),
        taken: Vec::new(),
        closed_by_client: false,
        arguments_in_order: None,
        cancel_notify: false,
        tuned: false,
        body_bytes_max: server
            .broker()
            .with_engine(|engine| engine.limits().body_bytes_max as u64),
    };
    let deadline = server.config().handshake_timeout;
    let handshake = tokio::time::timeout(deadline, session.handshake(&mut frames, over_limit));
    let (id, tap) = match handshake.await {
        Err(_) => return Err(WireError::HandshakeTimeout(deadline)),
        Ok(result) => result?,
    };
    let _registration = Registration {
        broker: session.broker.clone(),
        id,
    };
    session.serve(&mut frames, &tap).await
}

impl<S: AsyncRead + AsyncWrite + Send> Session<S> {
    // ------------------------------------------------------------------ handshake

    async fn handshake(
        &mut self,
        frames: &mut FrameReader<S>,
        over_limit: bool,
    ) -> Result<(ConnectionId, Tap), WireError> {
        let header = frames.header().await.map_err(stop_error)?;
        if header != PROTOCOL_HEADER {
            // The spec's answer to a header it cannot serve: the header it can, then close.
            self.out.extend_from_slice(&PROTOCOL_HEADER);
            self.flush().await?;
            return Err(WireError::Closed {
                code: 0,
                text: format!("unsupported protocol header {header:?}"),
            });
        }
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Start(start())),
        );
        self.flush().await?;

        let start_ok = match self.handshake_method(frames, "starting").await? {
            connection::AMQPMethod::StartOk(start_ok) => start_ok,
            other => {
                return self
                    .refuse(
                        frames,
                        unexpected(&AMQPClass::Connection(other), "starting"),
                    )
                    .await;
            }
        };
        let client_properties = self.arguments(&start_ok.client_properties);
        self.cancel_notify = announces(&client_properties, "consumer_cancel_notify");
        let Some(user) = authenticate(&self.config.users, &start_ok) else {
            let text = format!(
                "ACCESS_REFUSED - Login was refused using authentication mechanism {}. For details see the broker logfile.",
                start_ok.mechanism
            );
            // RabbitMQ tells only a client that announced it can take a close here; any
            // other it just drops.
            if !announces(&client_properties, "authentication_failure_close") {
                tracing::info!(%text, "login refused; the client takes no close");
                return Err(WireError::Closed { code: 403, text });
            }
            return Err(self.close_with(frames, Hard::new(403, text)).await);
        };
        if over_limit {
            let text = format!(
                "NOT_ALLOWED - connection limit ({}) is reached",
                self.config.connections_max
            );
            // broker-mem's own limit: the client is told (RabbitMQ's connection limits refuse
            // at connection.open, with a close).
            return Err(self.close_with(frames, Hard::new(530, text)).await);
        }

        let tune = connection::Tune {
            channel_max: self.channel_max,
            frame_max: self.frame_max_bytes,
            heartbeat: self.config.heartbeat_s,
        };
        self.send(0, AMQPClass::Connection(connection::AMQPMethod::Tune(tune)));
        self.flush().await?;
        let tune_ok = match self.handshake_method(frames, "tuning").await? {
            connection::AMQPMethod::TuneOk(tune_ok) => tune_ok,
            other => {
                return self
                    .refuse(frames, unexpected(&AMQPClass::Connection(other), "tuning"))
                    .await;
            }
        };
        let frame_max = negotiated(
            "frame_max",
            FRAME_MIN_BYTES,
            self.frame_max_bytes,
            tune_ok.frame_max,
        );
        let channel_max = negotiated(
            "channel_max",
            1,
            u32::from(self.channel_max),
            u32::from(tune_ok.channel_max),
        );
        if let Some(refused) = frame_max.or(channel_max) {
            return self.refuse(frames, refused).await;
        }
        // Both within the server's (checked above): the client's values stand.
        if tune_ok.frame_max != 0 {
            self.frame_max_bytes = tune_ok.frame_max;
        }
        frames.frame_max_bytes = self.frame_max_bytes;
        self.tuned = true;
        if tune_ok.channel_max != 0 {
            self.channel_max = tune_ok.channel_max;
        }
        self.heartbeat =
            (tune_ok.heartbeat > 0).then(|| Duration::from_secs(u64::from(tune_ok.heartbeat)));

        let open = match self.handshake_method(frames, "opening").await? {
            connection::AMQPMethod::Open(open) => open,
            other => {
                return self
                    .refuse(frames, unexpected(&AMQPClass::Connection(other), "opening"))
                    .await;
            }
        };
        let vhost = open.virtual_host.as_str();
        if vhost != crate::VHOST {
            let text = format!("NOT_ALLOWED - vhost {vhost} not found");
            let class = AMQPClass::Connection(connection::AMQPMethod::Open(open.clone()));
            return self
                .refuse(frames, Hard::new(530, text).during(&class))
                .await;
        }
        let (id, tap) = self.broker.connect_tapped(&user);
        self.connection = Some(id);
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::OpenOk(connection::OpenOk {})),
        );
        frames.open = true;
        if let Err(error) = self.flush().await {
            // The engine has the connection already: a peer gone before its open-ok must not
            // leave it there (the caller's `Registration` only exists once this returns).
            self.broker.close_tapped(id);
            return Err(error.into());
        }
        tracing::debug!(%id, user, heartbeat = ?self.heartbeat, frame_max = self.frame_max_bytes, "AMQP connection open");
        Ok((id, tap))
    }

    /// The next connection method of the handshake (in connection state `state`); heartbeats
    /// are skipped, anything else is a hard error, as RabbitMQ's reader answers it.
    async fn handshake_method(
        &mut self,
        frames: &mut FrameReader<S>,
        state: &str,
    ) -> Result<connection::AMQPMethod, WireError> {
        loop {
            let frame = match frames.next().await {
                Ok(frame) => frame,
                Err(Stop::Bad(bad)) => {
                    return self.refuse(frames, Hard::from(bad)).await;
                }
                Err(stop) => return Err(stop_error(stop)),
            };
            match frame {
                Inbound::Heartbeat => {}
                Inbound::Frame(frame, arguments) => {
                    // start-ok's client properties, as RabbitMQ reads them (see `announces`).
                    self.arguments_in_order = arguments;
                    let hard = match *frame {
                        AMQPFrame::Method(0, AMQPClass::Connection(method)) => return Ok(method),
                        AMQPFrame::Method(_, class) => unexpected(&class, state),
                        // The codec refuses frames on other channels before the connection
                        // is open, and parses nothing else into a frame.
                        other => Hard::new(505, format!("UNEXPECTED_FRAME - {other}")),
                    };
                    return self.refuse(frames, hard).await;
                }
                // The codec refuses content before the connection is open (channel 0 always,
                // any other channel until the open).
                Inbound::Header(_) | Inbound::Body(..) => {
                    let hard = Hard::new(505, "UNEXPECTED_FRAME - content during the handshake");
                    return self.refuse(frames, hard).await;
                }
            }
        }
    }

    /// Ends the connection during the handshake as RabbitMQ's reader does: before it has
    /// taken `tune-ok` (its starting and tuning states) it sends nothing and drops the
    /// connection (the reason goes to the log); from then on it sends `connection.close`.
    async fn refuse<T>(&mut self, frames: &mut FrameReader<S>, hard: Hard) -> Result<T, WireError> {
        if !self.tuned {
            tracing::info!(code = hard.code, text = %hard.text, "handshake refused before tune-ok: connection dropped without a close, as RabbitMQ drops it");
            return Err(WireError::Closed {
                code: hard.code,
                text: hard.text,
            });
        }
        Err(self.close_with(frames, hard).await)
    }

    // ------------------------------------------------------------------ the open connection

    async fn serve(&mut self, frames: &mut FrameReader<S>, tap: &Tap) -> Result<(), WireError> {
        loop {
            let deadline = self.next_deadline();
            let step = tokio::select! {
                frame = frames.next() => Step::Frame(frame),
                event = tap.recv() => Step::Event(event),
                () = sleep_until(deadline) => Step::Timer,
            };
            match step {
                Step::Frame(Ok(frame)) => {
                    self.last_read = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
                    // What the engine did before this frame goes out before its answer (a
                    // delivery made before a cancel is written before the cancel-ok, as
                    // RabbitMQ's channel writes them).
                    if let Some(hard) = self.drain_tap(tap) {
                        return Err(self.close_with(frames, hard).await);
                    }
                    if let Err(hard) = self.on_frame(frame) {
                        return Err(self.close_with(frames, hard).await);
                    }
                    if self.closed_by_client {
                        self.flush().await?;
                        return Ok(());
                    }
                }
                Step::Frame(Err(Stop::Bad(bad))) => {
                    return Err(self.close_with(frames, Hard::from(bad)).await);
                }
                Step::Frame(Err(stop)) => return Err(stop_error(stop)),
                Step::Event(Some(event)) => {
                    if let Some(hard) = self.on_event(event) {
                        return Err(self.close_with(frames, hard).await);
                    }
                }
                // Only the registration removes the tap, and it outlives this loop.
                Step::Event(None) => return Ok(()),
                Step::Timer => self.on_timer()?,
            }
            if let Some(hard) = self.drain_tap(tap) {
                return Err(self.close_with(frames, hard).await);
            }
            if !frames.has_frame() || self.out.len() > OUT_FLUSH_BYTES {
                self.flush().await?;
                self.report_taken();
            }
        }
    }

    /// When the timer must fire next: a heartbeat is due, or the peer is overdue.
    fn next_deadline(&self) -> Option<Instant> {
        let heartbeat = self.heartbeat?;
        Some((self.last_write + heartbeat / 2).min(self.last_read + heartbeat * 2))
    }

    fn on_timer(&mut self) -> Result<(), WireError> {
        let Some(heartbeat) = self.heartbeat else {
            return Ok(());
        };
        let now = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
        if now >= self.last_read + heartbeat * 2 {
            tracing::info!(connection = ?self.connection, "peer missed its heartbeats; closing");
            return Err(WireError::HeartbeatTimeout(heartbeat * 2));
        }
        if now >= self.last_write + heartbeat / 2 {
            put_heartbeat(&mut self.out);
        }
        Ok(())
    }

    /// Sends `connection.close`, waits a little for `close-ok`, and says why it closed. The
    /// engine's side closes first, so unacked messages are requeued at once.
    async fn close_with(&mut self, frames: &mut FrameReader<S>, hard: Hard) -> WireError {
        tracing::debug!(connection = ?self.connection, code = hard.code, text = %hard.text, "closing AMQP connection");
        if let Some(id) = self.connection {
            self.broker.close_tapped(id);
        }
        let close = connection::Close {
            reply_code: hard.code,
            reply_text: ShortString::from(fit_reply_text(hard.text.clone())),
            class_id: hard.class_id,
            method_id: hard.method_id,
        };
        self.send(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Close(close)),
        );
        if let Err(error) = self.flush().await {
            return WireError::Io(error);
        }
        let wait = async {
            loop {
                match frames.next().await {
                    Ok(Inbound::Frame(frame, _)) => {
                        if let AMQPFrame::Method(0, AMQPClass::Connection(method)) = *frame {
                            return matches!(method, connection::AMQPMethod::Close(_));
                        }
                    }
                    Ok(_) => {}
                    Err(Stop::Bad(bad)) if bad.skip.is_some() => {}
                    // The framing is lost: RabbitMQ waits a while before it hangs up, so the
                    // close can be read; so does this (until the timeout below).
                    Err(Stop::Bad(_)) => {
                        frames.discard_until_eof().await;
                        return false;
                    }
                    Err(_) => return false,
                }
            }
        };
        let timeout = Duration::from_millis(CLOSE_TIMEOUT_MS);
        if let Ok(true) = tokio::time::timeout(timeout, wait).await {
            // Both sides sent close at once: each answers the other's.
            self.send(
                0,
                AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
            );
            let _ = self.flush().await;
        }
        WireError::Closed {
            code: hard.code,
            text: hard.text,
        }
    }

    /// The arguments of the method being handled, in wire order as the codec read them;
    /// `parsed` (sorted) only if it could not (it parsed them, so that is not expected).
    fn arguments(&mut self, parsed: &AmqpTable) -> FieldTable {
        match self.arguments_in_order.take() {
            Some(arguments) => *arguments,
            None => {
                // Both decoders take the same tables, so this means they disagree.
                if !parsed.inner().is_empty() {
                    tracing::warn!("method arguments not read in wire order; using them sorted");
                    debug_assert!(false, "method arguments not read in wire order");
                }
                table_in(parsed)
            }
        }
    }

    fn on_frame(&mut self, frame: Inbound) -> Result<(), Hard> {
        let frame = match frame {
            Inbound::Heartbeat => return Ok(()),
            Inbound::Header(header) => return self.on_header(*header),
            Inbound::Body(number, body) => return self.on_body(number, body),
            Inbound::Frame(frame, arguments) => {
                self.arguments_in_order = arguments;
                *frame
            }
        };
        match frame {
            AMQPFrame::Method(0, AMQPClass::Connection(method)) => {
                self.on_connection_method(method)
            }
            // RabbitMQ's reader takes any method on channel 0 for a connection method, and
            // finds it out of place (rabbit_reader:handle_method0).
            AMQPFrame::Method(0, class) => Err(unexpected(&class, "running")),
            AMQPFrame::Method(number, class) => self.on_method(number, class),
            AMQPFrame::Heartbeat => Ok(()),
            other => Err(Hard::new(
                505,
                format!("UNEXPECTED_FRAME - unexpected frame {other}"),
            )),
        }
    }

    fn on_connection_method(&mut self, method: connection::AMQPMethod) -> Result<(), Hard> {
        match method {
            connection::AMQPMethod::Close(close) => {
                tracing::debug!(connection = ?self.connection, code = close.reply_code, text = %close.reply_text, "client closed the connection");
                if let Some(id) = self.connection {
                    self.broker.close_tapped(id);
                }
                self.send(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
                );
                self.closed_by_client = true;
                Ok(())
            }
            connection::AMQPMethod::UpdateSecret(_) => {
                let ok = connection::AMQPMethod::UpdateSecretOk(connection::UpdateSecretOk {});
                self.send(0, AMQPClass::Connection(ok));
                Ok(())
            }
            other => Err(unexpected(&AMQPClass::Connection(other), "running")),
        }
    }

    fn on_method(&mut self, number: u16, class: AMQPClass) -> Result<(), Hard> {
        if !self.channels.contains_key(&number) {
            if let AMQPClass::Channel(channel::AMQPMethod::Open(_)) = class {
                return self.open_channel(number);
            }
            let hard = Hard::new(504, "CHANNEL_ERROR - expected 'channel.open'").during(&class);
            return Err(self.unknown_channel(hard));
        }
        let Some(chan) = self.channels.get_mut(&number) else {
            return Ok(());
        };
        if chan.closing {
            match class {
                // The client's close crossed ours: answer it, and wait for its close-ok to
                // ours (which clients send) before the channel is gone, as RabbitMQ does.
                AMQPClass::Channel(channel::AMQPMethod::Close(_)) => {
                    self.send(
                        number,
                        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                    );
                }
                AMQPClass::Channel(channel::AMQPMethod::CloseOk(_)) => self.release(number),
                _ => {}
            }
            return Ok(());
        }
        if let Some(content) = &chan.content {
            return Err(Hard::new(505, content.expected()).during_publish());
        }
        match &class {
            AMQPClass::Channel(method) => self.on_channel_method(number, method),
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare)) => {
                self.exchange_declare(number, declare, &class)
            }
            AMQPClass::Queue(queue::AMQPMethod::Declare(declare)) => {
                let options = queue_options(declare);
                let name = declare.queue.as_str();
                let arguments = self.arguments(&declare.arguments);
                let Some(ok) = self.engine(number, &class, |engine, id| {
                    engine.queue_declare_with(id, name, options, &arguments)
                })?
                else {
                    return Ok(());
                };
                if !declare.nowait {
                    let ok = queue::DeclareOk {
                        queue: ShortString::from(short(&ok.name)),
                        message_count: ok.message_count,
                        consumer_count: ok.consumer_count,
                    };
                    self.send(number, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)));
                }
                Ok(())
            }
            AMQPClass::Queue(method) => self.on_queue_method(number, method, &class),
            AMQPClass::Exchange(method) => self.on_exchange_method(number, method, &class),
            AMQPClass::Basic(method) => self.on_basic_method(number, method, &class),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(select)) => {
                let in_tx =
                    self.engine(number, &class, |engine, id| Ok(engine.in_transaction(id)))?;
                if in_tx == Some(true) {
                    let text = "PRECONDITION_FAILED - cannot switch from tx to confirm mode";
                    self.soft_refuse(number, 406, text, &class);
                    return Ok(());
                }
                if let Some(chan) = self.channels.get_mut(&number) {
                    chan.confirm = true;
                }
                if !select.nowait {
                    self.send(
                        number,
                        AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(confirm::SelectOk {})),
                    );
                }
                Ok(())
            }
            AMQPClass::Tx(method) => self.on_tx_method(number, method, &class),
            // Deprecated, and still answered by RabbitMQ (ticket 1, which amq-protocol writes).
            AMQPClass::Access(access::AMQPMethod::Request(_)) => {
                let ok = access::AMQPMethod::RequestOk(access::RequestOk {});
                self.send(number, AMQPClass::Access(ok));
                Ok(())
            }
            _ => Err(unimplemented_method(&class)),
        }
    }

    /// `tx.select`, `tx.commit` (the returns of mandatory messages no queue took, then
    /// commit-ok) and `tx.rollback`. A channel in confirm mode cannot become transactional.
    fn on_tx_method(
        &mut self,
        number: u16,
        method: &tx::AMQPMethod,
        class: &AMQPClass,
    ) -> Result<(), Hard> {
        match method {
            tx::AMQPMethod::Select(_) => {
                if self.channels.get(&number).is_some_and(|chan| chan.confirm) {
                    let text = "PRECONDITION_FAILED - cannot switch from confirm to tx mode";
                    self.soft_refuse(number, 406, text, class);
                    return Ok(());
                }
                if self
                    .engine(number, class, |engine, id| engine.tx_select(id))?
                    .is_some()
                {
                    self.send(
                        number,
                        AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})),
                    );
                }
                Ok(())
            }
            tx::AMQPMethod::Commit(_) => {
                // The returns go out first, also when the commit then fails part way (a queue
                // refused a publish): RabbitMQ sends them as it delivers, before the close.
                let Some(id) = self.channels.get(&number).map(|c| c.id) else {
                    return Ok(());
                };
                let mut returned = Vec::new();
                let committed = self
                    .broker
                    .with_engine(|engine| engine.tx_commit_returning(id, &mut returned));
                for back in &returned {
                    self.send_return(number, back);
                }
                match committed {
                    Ok(()) => {
                        let ok = tx::CommitOk {};
                        self.send(number, AMQPClass::Tx(tx::AMQPMethod::CommitOk(ok)));
                        Ok(())
                    }
                    Err(error) => self.refused(number, id, class, error),
                }
            }
            tx::AMQPMethod::Rollback(_) => {
                if self
                    .engine(number, class, |engine, id| engine.tx_rollback(id))?
                    .is_some()
                {
                    let ok = tx::RollbackOk {};
                    self.send(number, AMQPClass::Tx(tx::AMQPMethod::RollbackOk(ok)));
                }
                Ok(())
            }
            _ => Err(unimplemented_method(class)),
        }
    }

    fn on_queue_method(
        &mut self,
        number: u16,
        method: &queue::AMQPMethod,
        class: &AMQPClass,
    ) -> Result<(), Hard> {
        match method {
            queue::AMQPMethod::Bind(bind) => {
                let arguments = self.arguments(&bind.arguments);
                let done = self.engine(number, class, |engine, id| {
                    engine.queue_bind_with(
                        id,
                        bind.queue.as_str(),
                        bind.exchange.as_str(),
                        bind.routing_key.as_str(),
                        &arguments,
                    )
                })?;
                if done.is_some() && !bind.nowait {
                    let ok = queue::AMQPMethod::BindOk(queue::BindOk {});
                    self.send(number, AMQPClass::Queue(ok));
                }
            }
            queue::AMQPMethod::Unbind(unbind) => {
                let arguments = self.arguments(&unbind.arguments);
                let done = self.engine(number, class, |engine, id| {
                    engine.queue_unbind(
                        id,
                        unbind.queue.as_str(),
                        unbind.exchange.as_str(),
                        unbind.routing_key.as_str(),
                        &arguments,
                    )
                })?;
                if done.is_some() {
                    let ok = queue::AMQPMethod::UnbindOk(queue::UnbindOk {});
                    self.send(number, AMQPClass::Queue(ok));
                }
            }
            queue::AMQPMethod::Purge(purge) => {
                let purged = self.engine(number, class, |engine, id| {
                    engine.queue_purge(id, purge.queue.as_str())
                })?;
                if let Some(message_count) = purged
                    && !purge.nowait
                {
                    let ok = queue::AMQPMethod::PurgeOk(queue::PurgeOk { message_count });
                    self.send(number, AMQPClass::Queue(ok));
                }
            }
            queue::AMQPMethod::Delete(delete) => {
                let deleted = self.engine(number, class, |engine, id| {
                    engine.queue_delete(
                        id,
                        delete.queue.as_str(),
                        delete.if_unused,
                        delete.if_empty,
                    )
                })?;
                if let Some(message_count) = deleted
                    && !delete.nowait
                {
                    let ok = queue::AMQPMethod::DeleteOk(queue::DeleteOk { message_count });
                    self.send(number, AMQPClass::Queue(ok));
                }
            }
            _ => return Err(unimplemented_method(class)),
        }
        Ok(())
    }

    fn on_exchange_method(
        &mut self,
        number: u16,
        method: &exchange::AMQPMethod,
        class: &AMQPClass,
    ) -> Result<(), Hard> {
        match method {
            exchange::AMQPMethod::Declare(declare) => {
                return self.exchange_declare(number, declare, class);
            }
            exchange::AMQPMethod::Delete(delete) => {
                let done = self.engine(number, class, |engine, id| {
                    engine.exchange_delete(id, delete.exchange.as_str(), delete.if_unused)
                })?;
                if done.is_some() && !delete.nowait {
                    let ok = exchange::AMQPMethod::DeleteOk(exchange::DeleteOk {});
                    self.send(number, AMQPClass::Exchange(ok));
                }
            }
            exchange::AMQPMethod::Bind(bind) => {
                let arguments = self.arguments(&bind.arguments);
                let done = self.engine(number, class, |engine, id| {
                    engine.exchange_bind(
                        id,
                        bind.destination.as_str(),
                        bind.source.as_str(),
                        bind.routing_key.as_str(),
                        &arguments,
                    )
                })?;
                if done.is_some() && !bind.nowait {
                    let ok = exchange::AMQPMethod::BindOk(exchange::BindOk {});
                    self.send(number, AMQPClass::Exchange(ok));
                }
            }
            exchange::AMQPMethod::Unbind(unbind) => {
                let arguments = self.arguments(&unbind.arguments);
                let done = self.engine(number, class, |engine, id| {
                    engine.exchange_unbind(
                        id,
                        unbind.destination.as_str(),
                        unbind.source.as_str(),
                        unbind.routing_key.as_str(),
                        &arguments,
                    )
                })?;
                if done.is_some() && !unbind.nowait {
                    let ok = exchange::AMQPMethod::UnbindOk(exchange::UnbindOk {});
                    self.send(number, AMQPClass::Exchange(ok));
                }
            }
            _ => return Err(unimplemented_method(class)),
        }
        Ok(())
    }

    fn on_channel_method(&mut self, number: u16, method: &channel::AMQPMethod) -> Result<(), Hard> {
        match method {
            channel::AMQPMethod::Close(_) => {
                self.send(
                    number,
                    AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
                );
                self.release(number);
                Ok(())
            }
            // The server sent no close or flow this answers (a close-ok to the server's close
            // is taken above, while the channel is closing).
            channel::AMQPMethod::CloseOk(_)
            | channel::AMQPMethod::FlowOk(_)
            | channel::AMQPMethod::OpenOk(_) => {
                Err(unimplemented_method(&AMQPClass::Channel(method.clone())))
            }
            // RabbitMQ never stops deliveries at a client's request: `active=false` is 540,
            // which closes the connection (RabbitMQ 3.10 answers exactly this).
            channel::AMQPMethod::Flow(flow) if !flow.active => {
                let class = AMQPClass::Channel(method.clone());
                Err(Hard::new(540, "NOT_IMPLEMENTED - active=false").during(&class))
            }
            channel::AMQPMethod::Flow(_) => {
                let ok = channel::FlowOk { active: true };
                self.send(number, AMQPClass::Channel(channel::AMQPMethod::FlowOk(ok)));
                Ok(())
            }
            channel::AMQPMethod::Open(_) => Err(second_open()),
        }
    }

    fn on_basic_method(
        &mut self,
        number: u16,
        method: &basic::AMQPMethod,
        class: &AMQPClass,
    ) -> Result<(), Hard> {
        match method {
            basic::AMQPMethod::Qos(qos) => {
                let done = self.engine(number, class, |engine, id| {
                    engine.basic_qos_with(id, qos.prefetch_count, qos.global)
                })?;
                if done.is_some() {
                    self.send(
                        number,
                        AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})),
                    );
                }
                Ok(())
            }
            basic::AMQPMethod::Consume(consume) => {
                let arguments = self.arguments(&consume.arguments);
                let options = consume_options(consume, arguments);
                let no_ack = consume.no_ack;
                let Some(tag) = self.engine(number, class, |engine, id| {
                    engine.basic_consume(id, consume.queue.as_str(), options)
                })?
                else {
                    return Ok(());
                };
                if let Some(chan) = self.channels.get_mut(&number) {
                    chan.consumers.insert(tag.clone(), no_ack);
                }
                if !consume.nowait {
                    let ok = basic::ConsumeOk {
                        consumer_tag: ShortString::from(short(&tag)),
                    };
                    self.send(number, AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(ok)));
                }
                Ok(())
            }
            basic::AMQPMethod::Cancel(cancel) => {
                let tag = cancel.consumer_tag.as_str();
                let done = self.engine(number, class, |engine, id| engine.basic_cancel(id, tag))?;
                if done.is_none() {
                    return Ok(());
                }
                if let Some(chan) = self.channels.get_mut(&number) {
                    chan.consumers.remove(tag);
                }
                if !cancel.nowait {
                    let ok = basic::CancelOk {
                        consumer_tag: cancel.consumer_tag.clone(),
                    };
                    self.send(number, AMQPClass::Basic(basic::AMQPMethod::CancelOk(ok)));
                }
                Ok(())
            }
            basic::AMQPMethod::Publish(publish) => {
                if publish.immediate {
                    return Err(Hard::new(540, "NOT_IMPLEMENTED - immediate=true").during(class));
                }
                if let Some(chan) = self.channels.get_mut(&number) {
                    chan.content = Some(Content {
                        exchange: publish.exchange.as_str().to_owned(),
                        routing_key: publish.routing_key.as_str().to_owned(),
                        mandatory: publish.mandatory,
                        properties: None,
                        undecodable: false,
                        size: 0,
                        body: Vec::new(),
                    });
                }
                Ok(())
            }
            basic::AMQPMethod::Ack(ack) => self
                .engine(number, class, |engine, id| {
                    engine.basic_ack(id, ack.delivery_tag, ack.multiple)
                })
                .map(drop),
            basic::AMQPMethod::Nack(nack) => self
                .engine(number, class, |engine, id| {
                    engine.basic_nack(id, nack.delivery_tag, nack.multiple, nack.requeue)
                })
                .map(drop),
            basic::AMQPMethod::Reject(reject) => self
                .engine(number, class, |engine, id| {
                    engine.basic_reject(id, reject.delivery_tag, reject.requeue)
                })
                .map(drop),
            basic::AMQPMethod::Get(get) => {
                let Some(got) = self.engine(number, class, |engine, id| {
                    engine.basic_get(id, get.queue.as_str(), get.no_ack)
                })?
                else {
                    return Ok(());
                };
                match got {
                    None => {
                        let empty = basic::AMQPMethod::GetEmpty(basic::GetEmpty {});
                        self.send(number, AMQPClass::Basic(empty));
                    }
                    Some(ok) => {
                        let delivery = ok.delivery;
                        let get_ok = basic::GetOk {
                            delivery_tag: delivery.delivery_tag,
                            redelivered: delivery.redelivered,
                            exchange: ShortString::from(short(&delivery.exchange)),
                            routing_key: ShortString::from(short(&delivery.routing_key)),
                            message_count: ok.message_count,
                        };
                        self.send(number, AMQPClass::Basic(basic::AMQPMethod::GetOk(get_ok)));
                        self.send_content(number, &delivery.properties, &delivery.body);
                    }
                }
                Ok(())
            }
            basic::AMQPMethod::Recover(recover) => {
                let done = self.engine(number, class, |engine, id| {
                    engine.basic_recover(id, recover.requeue)
                })?;
                if done.is_some() {
                    let ok = basic::AMQPMethod::RecoverOk(basic::RecoverOk {});
                    self.send(number, AMQPClass::Basic(ok));
                }
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(recover) => self
                .engine(number, class, |engine, id| {
                    engine.basic_recover(id, recover.requeue)
                })
                .map(drop),
            _ => Err(unimplemented_method(class)),
        }
    }

    fn exchange_declare(
        &mut self,
        number: u16,
        declare: &exchange::Declare,
        class: &AMQPClass,
    ) -> Result<(), Hard> {
        let kind = match declare.kind.as_str() {
            "direct" => ExchangeKind::Direct,
            "fanout" => ExchangeKind::Fanout,
            "topic" => ExchangeKind::Topic,
            "headers" => ExchangeKind::Headers,
            // A passive declare only checks existence; the type is not compared.
            _ if declare.passive => ExchangeKind::Direct,
            other => {
                return Err(Hard::new(
                    503,
                    format!("COMMAND_INVALID - unknown exchange type '{other}'"),
                )
                .during(class));
            }
        };
        let options = exchange_options(declare);
        let name = declare.exchange.as_str();
        let arguments = self.arguments(&declare.arguments);
        let done = self.engine(number, class, |engine, id| {
            engine.exchange_declare_with(id, name, kind, options, &arguments)
        })?;
        if done.is_some() && !declare.nowait {
            self.send(
                number,
                AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(exchange::DeclareOk {})),
            );
        }
        Ok(())
    }

    /// RabbitMQ's refusal of any frame on a channel not open while the connection has
    /// `channel_max` channels open (it counts channels, whatever their numbers, and 0 is no
    /// limit); None below the limit.
    fn channel_limit_reached(&self) -> Option<Hard> {
        let open = self.channels.len();
        (self.channel_max != 0 && open >= usize::from(self.channel_max)).then(|| {
            let text = format!(
                "NOT_ALLOWED - number of channels opened ({open}) has reached the negotiated channel_max ({})",
                self.channel_max
            );
            Hard::new(530, text)
        })
    }

    /// The answer to a frame on a channel not open: `otherwise`, unless the channel limit is
    /// reached (RabbitMQ tries to open a channel for it first).
    fn unknown_channel(&self, otherwise: Hard) -> Hard {
        self.channel_limit_reached().unwrap_or(otherwise)
    }

    /// Opens channel `number`, which is not open.
    fn open_channel(&mut self, number: u16) -> Result<(), Hard> {
        if let Some(refused) = self.channel_limit_reached() {
            return Err(refused);
        }
        let Some(connection) = self.connection else {
            return Err(Hard::new(541, "INTERNAL_ERROR - no connection"));
        };
        let open = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
        let id = match self
            .broker
            .with_engine(|engine| engine.open_channel_numbered(connection, number))
        {
            Ok(id) => id,
            Err(Error::Invalid(text)) => {
                return Err(Hard::new(530, format!("NOT_ALLOWED - {text}")).during(&open));
            }
            Err(other) => {
                return Err(Hard::new(541, format!("INTERNAL_ERROR - {other}")).during(&open));
            }
        };
        self.channels.insert(
            number,
            WireChannel {
                id,
                closing: false,
                confirm: false,
                published: 0,
                unsent_ack: None,
                confirmed_through: 0,
                content: None,
                consumers: BTreeMap::new(),
            },
        );
        self.numbers.insert(id, number);
        let ok = channel::OpenOk {};
        self.send(number, AMQPClass::Channel(channel::AMQPMethod::OpenOk(ok)));
        Ok(())
    }

    /// A content header, judged as RabbitMQ's command assembler judges it: only a channel
    /// assembling a publish expects one, of class 60 and weight 0.
    fn on_header(&mut self, frame: HeaderFrame) -> Result<(), Hard> {
        let body_bytes_max = self.body_bytes_max;
        let number = frame.channel;
        let Some(chan) = self.channels.get_mut(&number) else {
            return Err(self.unknown_channel(expected_method_frame()));
        };
        if chan.closing {
            return Ok(());
        }
        let Some(content) = chan.content.as_mut() else {
            return Err(expected_method_frame());
        };
        if content.properties.is_some() || frame.weight != 0 {
            return Err(Hard::new(505, content.expected()).during_publish());
        }
        if frame.class_id != CLASS_BASIC {
            let text = format!(
                "UNEXPECTED_FRAME - expected content header for class {CLASS_BASIC}, got one for class {} instead",
                frame.class_id
            );
            return Err(Hard::new(505, text).during_publish());
        }
        // RabbitMQ decodes the properties when the content is complete, and a failure there
        // is its 541: until then it takes the body as for any content.
        let (properties, undecodable) = match frame.properties {
            Some(properties) => (properties, false),
            None => (crate::Properties::default(), true),
        };
        let body_size = frame.body_size;
        if body_size > body_bytes_max {
            let id = chan.id;
            let _ = self.broker.with_engine(|engine| engine.close_channel(id));
            let text = format!(
                "PRECONDITION_FAILED - message size {body_size} is larger than configured max size {body_bytes_max}"
            );
            self.close_channel_with(number, 406, text, CLASS_BASIC, METHOD_PUBLISH);
            return Ok(());
        }
        content.properties = Some(properties);
        content.undecodable = undecodable;
        content.size = body_size;
        // Room for the first frame's worth only: the declared size is a claim, and a peer
        // could claim the maximum on every channel and send nothing.
        let upfront = body_size.min(u64::from(self.frame_max_bytes));
        content.body.reserve_exact(upfront as usize);
        if body_size == 0 {
            return self.publish(number);
        }
        Ok(())
    }

    fn on_body(&mut self, number: u16, body: Vec<u8>) -> Result<(), Hard> {
        let Some(chan) = self.channels.get_mut(&number) else {
            return Err(self.unknown_channel(expected_method_frame()));
        };
        if chan.closing {
            return Ok(());
        }
        let Some(content) = chan.content.as_mut() else {
            return Err(expected_method_frame());
        };
        if content.properties.is_none() {
            return Err(Hard::new(505, content.expected()).during_publish());
        }
        if content.body.len() as u64 + body.len() as u64 > content.size {
            return Err(Hard::new(
                501,
                format!(
                    "FRAME_ERROR - content body exceeds the declared size of {} bytes",
                    content.size
                ),
            ));
        }
        if content.body.is_empty() && body.len() as u64 == content.size {
            content.body = body;
        } else {
            content.body.extend_from_slice(&body);
        }
        if content.body.len() as u64 == content.size {
            return self.publish(number);
        }
        Ok(())
    }

    /// A complete publish: into the engine, and the confirm out.
    fn publish(&mut self, number: u16) -> Result<(), Hard> {
        let Some(chan) = self.channels.get_mut(&number) else {
            return Ok(());
        };
        let Some(content) = chan.content.take() else {
            return Ok(());
        };
        if content.undecodable {
            return Err(Hard::new(541, "INTERNAL_ERROR"));
        }
        let confirm = chan.confirm;
        if confirm {
            chan.published += 1;
        }
        let tag = chan.published;
        let class = AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: ShortString::from(short(&content.exchange)),
            routing_key: ShortString::from(short(&content.routing_key)),
            mandatory: false,
            immediate: false,
        }));
        let Content {
            exchange,
            routing_key,
            mandatory,
            properties,
            body,
            ..
        } = content;
        let options = publish_options(mandatory);
        let outcome = self.engine(number, &class, |engine, id| {
            engine.basic_publish_with(
                id,
                &exchange,
                &routing_key,
                options,
                properties.unwrap_or_default(),
                Bytes::from(body),
            )
        })?;
        let Some(published) = outcome else {
            return Ok(());
        };
        // RabbitMQ's order: the return, then the confirm.
        if let Some(returned) = published.returned {
            self.send_return(number, &returned);
        }
        match published.confirm {
            Confirm::Ack if confirm => {
                if let Some(chan) = self.channels.get_mut(&number) {
                    chan.unsent_ack = Some(tag);
                }
            }
            Confirm::Nack { reason } if confirm => {
                tracing::warn!(exchange, routing_key, reason, "publish nacked");
                let nack = basic::Nack {
                    delivery_tag: tag,
                    multiple: false,
                    requeue: false,
                };
                self.send(number, AMQPClass::Basic(basic::AMQPMethod::Nack(nack)));
                if let Some(chan) = self.channels.get_mut(&number) {
                    chan.confirmed_through = tag;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `basic.return` with the message's content.
    fn send_return(&mut self, number: u16, returned: &Returned) {
        let back = basic::Return {
            reply_code: returned.reply_code,
            reply_text: ShortString::from(fit_reply_text(returned.reply_text.clone())),
            exchange: ShortString::from(short(&returned.exchange)),
            routing_key: ShortString::from(short(&returned.routing_key)),
        };
        self.send(number, AMQPClass::Basic(basic::AMQPMethod::Return(back)));
        self.send_content(number, &returned.properties, &returned.body);
    }

    /// Runs one engine method for channel `number`; a refusal closes the channel (soft) and
    /// gives `Ok(None)`, or closes the connection (hard) and gives `Err`.
    fn engine<T>(
        &mut self,
        number: u16,
        class: &AMQPClass,
        call: impl FnOnce(&mut Engine, ChannelId) -> Result<T, Error>,
    ) -> Result<Option<T>, Hard> {
        let Some(id) = self.channels.get(&number).map(|c| c.id) else {
            return Ok(None);
        };
        match self.broker.with_engine(|engine| call(engine, id)) {
            Ok(value) => Ok(Some(value)),
            Err(error) => self.refused(number, id, class, error).map(|()| None),
        }
    }

    /// Answers an engine refusal of a method on channel `number` (engine channel `id`): a
    /// soft one closes the channel, a hard one is the `Err` that closes the connection.
    fn refused(
        &mut self,
        number: u16,
        id: ChannelId,
        class: &AMQPClass,
        error: Error,
    ) -> Result<(), Hard> {
        let (class_id, method_id) = (class.get_amqp_class_id(), class.get_amqp_method_id());
        match error {
            Error::Channel(reply) => {
                self.close_channel_with(
                    number,
                    reply.code.code(),
                    reply.reply_text(),
                    class_id,
                    method_id,
                );
                Ok(())
            }
            Error::Invalid(text) => {
                // A client library would have refused this; on the wire it is a 406.
                let _ = self.broker.with_engine(|engine| engine.close_channel(id));
                let text = format!("PRECONDITION_FAILED - {text}");
                self.close_channel_with(number, 406, text, class_id, method_id);
                Ok(())
            }
            Error::Connection(reply) => Err(Hard {
                code: reply.code.code(),
                text: reply.reply_text(),
                class_id,
                method_id,
            }),
            Error::ChannelClosed(reply) => {
                // The broker closed the channel on its own (a fault hook, the consumer timeout)
                // while this method was on its way: the client hears that close, as from
                // RabbitMQ, and the method is dropped. Its `ChannelClosed` event, still to
                // come, finds the channel closing and adds nothing.
                if self.channels.get(&number).is_some_and(|c| !c.closing) {
                    self.close_channel_with(number, reply.code.code(), reply.reply_text(), 0, 0);
                }
                Ok(())
            }
            other => Err(Hard {
                code: 541,
                text: format!("INTERNAL_ERROR - {other}"),
                class_id,
                method_id,
            }),
        }
    }

    /// Sends `channel.close`; the channel discards everything until the client's `close-ok`.
    /// A channel error the session raises itself, not the engine: the engine's channel closes
    /// (requeueing what it had in flight), then `channel.close` goes to the client.
    fn soft_refuse(&mut self, number: u16, code: u16, text: &str, class: &AMQPClass) {
        if let Some(id) = self.channels.get(&number).map(|c| c.id) {
            let _ = self.broker.with_engine(|engine| engine.close_channel(id));
        }
        let (class_id, method_id) = (class.get_amqp_class_id(), class.get_amqp_method_id());
        self.close_channel_with(number, code, text.to_owned(), class_id, method_id);
    }

    fn close_channel_with(
        &mut self,
        number: u16,
        code: u16,
        text: String,
        class_id: u16,
        method_id: u16,
    ) {
        let Some(chan) = self.channels.get_mut(&number) else {
            return;
        };
        chan.closing = true;
        chan.content = None;
        chan.consumers.clear();
        let close = channel::Close {
            reply_code: code,
            reply_text: ShortString::from(fit_reply_text(text.clone())),
            class_id,
            method_id,
        };
        self.send(
            number,
            AMQPClass::Channel(channel::AMQPMethod::Close(close)),
        );
    }

    /// Forgets a channel and closes it in the engine (requeueing what it had not acked).
    fn release(&mut self, number: u16) {
        let Some(chan) = self.channels.remove(&number) else {
            return;
        };
        self.numbers.remove(&chan.id);
        // A channel closed by an error reports that error once more; it was already sent.
        let _ = self
            .broker
            .with_engine(|engine| engine.close_channel(chan.id));
    }

    // ------------------------------------------------------------------ engine events

    /// Writes every engine event waiting in the tap (see [`Session::on_event`]).
    fn drain_tap(&mut self, tap: &Tap) -> Option<Hard> {
        while let Some(event) = tap.try_recv() {
            if let Some(hard) = self.on_event(event) {
                return Some(hard);
            }
        }
        None
    }

    /// Writes what an engine event means for the client; a connection the broker closed is
    /// returned, for the caller to close.
    fn on_event(&mut self, event: Event) -> Option<Hard> {
        match event {
            Event::Deliver { channel, delivery } => {
                // None: its channel closed meanwhile; the engine requeued it.
                let &number = self.numbers.get(&channel)?;
                let chan = self.channels.get(&number).filter(|c| !c.closing)?;
                if chan.consumers.get(delivery.consumer_tag.as_str()) == Some(&true) {
                    self.taken.push((channel, delivery.consumer_tag.clone()));
                }
                let deliver = basic::Deliver {
                    consumer_tag: ShortString::from(short(&delivery.consumer_tag)),
                    delivery_tag: delivery.delivery_tag,
                    redelivered: delivery.redelivered,
                    exchange: ShortString::from(short(&delivery.exchange)),
                    routing_key: ShortString::from(short(&delivery.routing_key)),
                };
                self.send(
                    number,
                    AMQPClass::Basic(basic::AMQPMethod::Deliver(deliver)),
                );
                self.send_content(number, &delivery.properties, &delivery.body);
            }
            Event::ChannelClosed { channel, reason } => {
                let &number = self.numbers.get(&channel)?;
                if self.channels.get(&number).is_some_and(|c| !c.closing) {
                    // Class and method 0: no method of the client's caused it.
                    self.close_channel_with(number, reason.code.code(), reason.reply_text(), 0, 0);
                }
            }
            Event::ConsumerEnded {
                channel,
                consumer_tag,
                reason,
            } => {
                // Its deliveries not reported yet are nothing to a later consumer that reuses
                // the tag (a pipelined cancel and consume), whose room they must not make.
                (self.taken).retain(|(c, tag)| *c != channel || *tag != consumer_tag);
                let &number = self.numbers.get(&channel)?;
                let chan = self.channels.get_mut(&number).filter(|c| !c.closing)?;
                let known = chan.consumers.remove(consumer_tag.as_str()).is_some();
                if known && reason == ConsumerEnd::QueueDeleted && self.cancel_notify {
                    // consumer_cancel_notify: the broker tells the client its consumer is gone.
                    let cancel = basic::Cancel {
                        consumer_tag: ShortString::from(short(&consumer_tag)),
                        nowait: true,
                    };
                    self.send(number, AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)));
                }
            }
            Event::ConnectionClosed { reason, .. } => {
                return Some(Hard::new(reason.code.code(), reason.reply_text()));
            }
        }
        None
    }

    /// Tells the engine the `no_ack` deliveries written so far have left (TCP back-pressure
    /// stands in for a client buffer), which lets it send more.
    fn report_taken(&mut self) {
        if self.taken.is_empty() {
            return;
        }
        let taken = std::mem::take(&mut self.taken);
        self.broker.with_engine(|engine| {
            for (channel, tag) in &taken {
                engine.deliveries_taken(*channel, tag, 1);
            }
        });
    }

    // ------------------------------------------------------------------ output

    /// Queues a method frame, after the coalesced publish acks it must not overtake: those of
    /// its channel, or of every channel for a connection-level method.
    fn send(&mut self, number: u16, class: AMQPClass) {
        if number == 0 {
            self.write_unsent_acks();
        } else if let Some(chan) = self.channels.get_mut(&number) {
            write_unsent_ack(&mut self.out, number, chan);
        }
        put_frame(&mut self.out, &AMQPFrame::Method(number, class));
    }

    fn write_unsent_acks(&mut self) {
        for (number, chan) in &mut self.channels {
            write_unsent_ack(&mut self.out, *number, chan);
        }
    }

    fn send_content(&mut self, number: u16, properties: &crate::Properties, body: &[u8]) {
        put_header(
            &mut self.out,
            number,
            CLASS_BASIC,
            body.len() as u64,
            properties,
        );
        let chunk_bytes = self.frame_max_bytes as usize - FRAME_OVERHEAD_BYTES;
        for chunk in body.chunks(chunk_bytes) {
            put_body(&mut self.out, number, chunk);
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        self.write_unsent_acks();
        if self.out.is_empty() {
            return Ok(());
        }
        // The timeout is per write call, so it fires only when the peer takes nothing for that
        // long (RabbitMQ's send_timeout), not when a large backlog takes long to send.
        let timeout = Duration::from_millis(SEND_TIMEOUT_MS);
        let stalled = || {
            tracing::info!(connection = ?self.connection, "peer took no data for {timeout:?}; closing");
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the peer took no data for {timeout:?} (send timeout)"),
            )
        };
        let mut written = 0;
        while written < self.out.len() {
            match tokio::time::timeout(timeout, self.writer.write(&self.out[written..])).await {
                Ok(Ok(0)) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(Ok(n)) => written += n,
                Ok(Err(error)) => return Err(error),
                Err(_) => return Err(stalled()),
            }
        }
        match tokio::time::timeout(timeout, self.writer.flush()).await {
            Ok(flushed) => flushed?,
            Err(_) => return Err(stalled()),
        }
        self.out.clear();
        self.last_write = Instant::now(); // allow-nondeterminism: tokio::time::Instant, simulated under turmoil
        Ok(())
    }
}

/// Writes a channel's coalesced publish acks: one `basic.ack`, with `multiple` when it covers
/// more than one publish.
fn write_unsent_ack(out: &mut Vec<u8>, number: u16, chan: &mut WireChannel) {
    let Some(tag) = chan.unsent_ack.take() else {
        return;
    };
    let ack = basic::Ack {
        delivery_tag: tag,
        multiple: tag > chan.confirmed_through + 1,
    };
    chan.confirmed_through = tag;
    let class = AMQPClass::Basic(basic::AMQPMethod::Ack(ack));
    put_frame(out, &AMQPFrame::Method(number, class));
}

enum Step {
    Frame(Result<Inbound, Stop>),
    Event(Option<Event>),
    Timer,
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn stop_error(stop: Stop) -> WireError {
    match stop {
        Stop::Io(error) => WireError::Io(error),
        Stop::Eof => WireError::Eof,
        Stop::Bad(bad) => WireError::Closed {
            code: bad.code,
            text: bad.text,
        },
    }
}

/// A `tune-ok` value the server refuses, as RabbitMQ's reader does
/// (rabbit_reader:validate_negotiated_integer_value): below `min`, or (when the server has a
/// limit) 0 or above the server's value. 530, naming `connection.tune`.
fn negotiated(field: &str, min: u32, server: u32, client: u32) -> Option<Hard> {
    let tune = AMQPClass::Connection(connection::AMQPMethod::Tune(connection::Tune::default()));
    let text = if client != 0 && client < min {
        format!(
            "NOT_ALLOWED - negotiated {field} = {client} is lower than the minimum allowed value ({min})"
        )
    } else if server != 0 && (client == 0 || client > server) {
        let detail = if field == "channel_max" && client == 0 {
            " (no limit)"
        } else {
            ""
        };
        format!(
            "NOT_ALLOWED - negotiated {field} = {client}{detail} is higher than the maximum allowed value ({server})"
        )
    } else {
        return None;
    };
    Some(Hard::new(530, text).during(&tune))
}

/// A method on channel 0 out of place in `state` (RabbitMQ's connection states: starting,
/// tuning, opening, running): RabbitMQ's reader takes any method there for a connection
/// method, and answers one out of place with 504 (rabbit_reader:handle_method0).
fn unexpected(class: &AMQPClass, state: &str) -> Hard {
    Hard::new(
        504,
        format!("CHANNEL_ERROR - unexpected method in connection state {state}"),
    )
    .during(class)
}

/// RabbitMQ's channel answers a method only a server sends (an `-ok`, a delivery) with this.
fn unimplemented_method(class: &AMQPClass) -> Hard {
    Hard::new(503, "COMMAND_INVALID - unimplemented method").during(class)
}

fn second_open() -> Hard {
    let class = AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
    Hard::new(504, "CHANNEL_ERROR - second 'channel.open' seen").during(&class)
}

fn start() -> connection::Start {
    let mut capabilities = AmqpTable::default();
    // RabbitMQ 3.10 announces all of these as true; broker-mem says false for what it does not
    // do (no memory alarms to block publishers).
    for capability in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        capabilities.insert(capability.into(), AMQPValue::Boolean(true));
    }
    capabilities.insert("connection.blocked".into(), AMQPValue::Boolean(false));
    let mut properties = AmqpTable::default();
    properties.insert("product".into(), AMQPValue::LongString("broker-mem".into()));
    properties.insert(
        "version".into(),
        AMQPValue::LongString(env!("CARGO_PKG_VERSION").into()),
    );
    properties.insert("platform".into(), AMQPValue::LongString("Rust".into()));
    properties.insert("capabilities".into(), AMQPValue::FieldTable(capabilities));
    connection::Start {
        version_major: 0,
        version_minor: 9,
        server_properties: properties,
        mechanisms: LongString::from("PLAIN AMQPLAIN"),
        locales: LongString::from("en_US"),
    }
}

/// The user a `start-ok` authenticates, if its credentials are right.
/// Whether the client announced `capability` (true) in its `start-ok` properties, read as
/// RabbitMQ reads them (a key given twice counts with its first value; amq-protocol's parsed
/// copy keeps the last).
fn announces(client_properties: &FieldTable, capability: &str) -> bool {
    let Some(FieldValue::Table(capabilities)) = client_properties.get("capabilities") else {
        return false;
    };
    matches!(capabilities.get(capability), Some(FieldValue::Bool(true)))
}

fn authenticate(users: &[(String, String)], start_ok: &connection::StartOk) -> Option<String> {
    let response = start_ok.response.as_bytes();
    let (user, password) = match start_ok.mechanism.as_str() {
        // authzid NUL authcid NUL password
        "PLAIN" => {
            let mut parts = response.splitn(3, |&b| b == 0);
            let _authzid = parts.next()?;
            let user = std::str::from_utf8(parts.next()?).ok()?.to_owned();
            let password = std::str::from_utf8(parts.next()?).ok()?.to_owned();
            (user, password)
        }
        // A field table without its length prefix.
        // Read by broker-mem's own table reader, which stops at NESTING_MAX levels (the
        // response is any bytes a client sends before it has logged in).
        "AMQPLAIN" => {
            let table = crate::wire::content::table_entries(response)?;
            let text = |key: &str| match table.get(key)? {
                crate::FieldValue::String(s) => Some(s.clone()),
                _ => None,
            };
            (text("LOGIN")?, text("PASSWORD")?)
        }
        _ => return None,
    };
    users
        .iter()
        .any(|(u, p)| *u == user && *p == password)
        .then_some(user)
}

/// (`..default()`: the engine's option structs may grow fields the wire does not set.)
#[allow(clippy::needless_update)]
fn exchange_options(declare: &exchange::Declare) -> ExchangeOptions {
    ExchangeOptions {
        durable: declare.durable,
        auto_delete: declare.auto_delete,
        internal: declare.internal,
        passive: declare.passive,
        ..ExchangeOptions::default()
    }
}

#[allow(clippy::needless_update)]
fn queue_options(declare: &queue::Declare) -> QueueOptions {
    QueueOptions {
        durable: declare.durable,
        exclusive: declare.exclusive,
        auto_delete: declare.auto_delete,
        passive: declare.passive,
        ..QueueOptions::default()
    }
}

#[allow(clippy::needless_update)]
fn publish_options(mandatory: bool) -> PublishOptions {
    PublishOptions {
        mandatory,
        ..PublishOptions::default()
    }
}

fn consume_options(consume: &basic::Consume, arguments: FieldTable) -> ConsumeOptions {
    ConsumeOptions {
        consumer_tag: consume.consumer_tag.as_str().to_owned(),
        no_ack: consume.no_ack,
        exclusive: consume.exclusive,
        arguments,
    }
}

#[cfg(test)]
mod tests {
    use amq_protocol::types::{FieldTable as AmqpTable, LongString, ShortString};

    use super::*;

    fn start_ok(mechanism: &str, response: Vec<u8>) -> connection::StartOk {
        connection::StartOk {
            client_properties: AmqpTable::default(),
            mechanism: ShortString::from(mechanism.to_owned()),
            response: LongString::from(response),
            locale: ShortString::from("en_US".to_owned()),
        }
    }

    /// `LOGIN`, `PASSWORD` as an AMQPLAIN response: table entries without the table's size.
    fn amqplain(login: &str, password: &str, nested: Option<usize>) -> Vec<u8> {
        let entry = |key: &str, value: &str| {
            let mut bytes = vec![u8::try_from(key.len()).unwrap()];
            bytes.extend(key.as_bytes());
            bytes.push(b'S');
            bytes.extend(u32::try_from(value.len()).unwrap().to_be_bytes());
            bytes.extend(value.as_bytes());
            bytes
        };
        let mut response = [entry("LOGIN", login), entry("PASSWORD", password)].concat();
        if let Some(levels) = nested {
            // An extra entry holding arrays in arrays, `levels` deep.
            let mut value = b"V".to_vec();
            for _ in 0..levels {
                let mut array = b"A".to_vec();
                array.extend(u32::try_from(value.len()).unwrap().to_be_bytes());
                array.extend(value);
                value = array;
            }
            response.extend([1, b'x']);
            response.extend(value);
        }
        response
    }

    #[test]
    fn amqplain_logs_in_and_a_deep_response_is_refused_without_recursing() {
        let users = [("guest".to_owned(), "guest".to_owned())];
        let good = start_ok("AMQPLAIN", amqplain("guest", "guest", None));
        assert_eq!(authenticate(&users, &good).as_deref(), Some("guest"));
        let wrong = start_ok("AMQPLAIN", amqplain("guest", "nope", None));
        assert_eq!(authenticate(&users, &wrong), None);
        // Read by broker-mem's reader, which stops at its nesting limit: a login whose table
        // nests past it is refused (amq-protocol's parser recursed once per level).
        let deep = start_ok("AMQPLAIN", amqplain("guest", "guest", Some(5_000)));
        assert_eq!(authenticate(&users, &deep), None);
        let plain = start_ok("PLAIN", b"\0guest\0guest".to_vec());
        assert_eq!(authenticate(&users, &plain).as_deref(), Some("guest"));
    }
}
