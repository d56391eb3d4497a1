//! The wire server at the frame level: heartbeats, limits, protocol errors with RabbitMQ's
//! codes, and a property test that feeds random and mutated frames and checks the server never
//! panics, always ends the connection, and never loses a message it holds.
#![cfg(feature = "wire")]

use std::time::Duration;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel, connection, queue};
use amq_protocol::types::{AMQPValue, FieldTable};
use broker_mem::wire::{WireConfig, WireServer};
use broker_mem::{Broker, Bytes, Limits, Properties, QueueOptions};
use proptest::prelude::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

const HEADER: &[u8] = b"AMQP\x00\x00\x09\x01";

#[path = "support/frames.rs"]
mod frames;
use frames::encode;

fn method(channel: u16, class: AMQPClass) -> Vec<u8> {
    encode(&AMQPFrame::Method(channel, class))
}

/// A client speaking raw frames to a server over an in-memory duplex.
struct Raw {
    stream: DuplexStream,
    buffer: Vec<u8>,
    server: JoinHandle<Result<(), broker_mem::wire::WireError>>,
}

impl Raw {
    fn start(server: &WireServer) -> Raw {
        let (client, served) = tokio::io::duplex(1 << 20);
        let server = server.clone();
        let server = tokio::spawn(async move { server.serve_connection(served).await });
        Raw {
            stream: client,
            buffer: Vec::new(),
            server,
        }
    }

    /// Header and start-ok: the server's next frame is `connection.tune`, or its refusal.
    async fn started(server: &WireServer, password: &str) -> Raw {
        let mut raw = Raw::start(server);
        raw.write(HEADER).await;
        assert!(matches!(
            raw.recv().await,
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::Start(_))
            ))
        ));
        let capabilities = ["consumer_cancel_notify", "authentication_failure_close"];
        raw.send(frames::start_ok(password, &capabilities)).await;
        raw
    }

    /// Header, start-ok, tune-ok (with `heartbeat_s`), open; channel 1 open.
    async fn open(server: &WireServer, password: &str, heartbeat_s: u16) -> Raw {
        let mut raw = Raw::started(server, password).await;
        match raw.recv().await {
            Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Tune(_)))) => {}
            other => return raw.refused(other),
        }
        let tune_ok = connection::TuneOk {
            channel_max: 16,
            frame_max: 4096,
            heartbeat: heartbeat_s,
        };
        raw.send(method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        ))
        .await;
        let open = connection::Open {
            virtual_host: "/".into(),
        };
        raw.send(method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::Open(open)),
        ))
        .await;
        assert!(matches!(
            raw.recv().await,
            Some(AMQPFrame::Method(
                0,
                AMQPClass::Connection(connection::AMQPMethod::OpenOk(_))
            ))
        ));
        raw.send(method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ))
        .await;
        assert!(matches!(
            raw.recv().await,
            Some(AMQPFrame::Method(
                1,
                AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))
            ))
        ));
        raw
    }

    fn refused(mut self, frame: Option<AMQPFrame>) -> Raw {
        self.buffer.clear();
        self.buffer
            .extend(frame.map(|f| encode(&f)).unwrap_or_default());
        self
    }

    async fn write(&mut self, bytes: &[u8]) {
        // The server may have closed already; that is what some tests are about.
        let _ = self.stream.write_all(bytes).await;
    }

    async fn send(&mut self, bytes: Vec<u8>) {
        self.write(&bytes).await;
    }

    /// The next frame, or None at EOF (or after 60 s of simulated silence).
    async fn recv(&mut self) -> Option<AMQPFrame> {
        frames::next_frame(&mut self.stream, &mut self.buffer, Duration::from_secs(60)).await
    }

    /// Skips heartbeats and deliveries until a connection.close; returns its code.
    async fn connection_close_code(&mut self) -> Option<u16> {
        loop {
            if let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c))) =
                self.recv().await?
            {
                return Some(c.reply_code);
            }
        }
    }

    async fn channel_close_code(&mut self) -> Option<(u16, String)> {
        loop {
            if let AMQPFrame::Method(_, AMQPClass::Channel(channel::AMQPMethod::Close(c))) =
                self.recv().await?
            {
                return Some((c.reply_code, c.reply_text.to_string()));
            }
        }
    }
}

/// A broker whose queue "work" holds three small jobs.
fn broker_with_work() -> Broker {
    broker_with_bodies((0..3).map(|n| Bytes::from(format!("job-{n}"))))
}

/// A broker whose queue "work" holds 3 MiB (30 bodies of 100 kB), against the 1 MiB the
/// test's pipe holds.
fn broker_with_a_backlog() -> Broker {
    broker_with_bodies((0..30).map(|_| Bytes::from(vec![7; 100_000])))
}

/// A broker whose queue "work" holds these bodies.
fn broker_with_bodies(bodies: impl IntoIterator<Item = Bytes>) -> Broker {
    let broker = Broker::new();
    let connection = broker.connect();
    let channel = connection.open_channel().unwrap();
    channel
        .queue_declare("work", QueueOptions::default())
        .unwrap();
    for body in bodies {
        channel
            .basic_publish("", "work", Properties::default(), body)
            .unwrap();
    }
    std::mem::forget(connection); // keep the in-process side open (no exclusive queues).
    broker
}

/// A `channel.flow` whose frame ends in 0 instead of 0xCE.
fn with_a_bad_end_byte() -> Vec<u8> {
    let mut frame = method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Flow(channel::Flow { active: true })),
    );
    let last = frame.len() - 1;
    frame[last] = 0;
    frame
}

fn consume(tag: &str) -> Vec<u8> {
    consume_on(1, tag)
}

fn consume_on(channel: u16, tag: &str) -> Vec<u8> {
    method(
        channel,
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "work".into(),
            consumer_tag: tag.into(),
            no_local: false,
            no_ack: false,
            exclusive: false,
            nowait: false,
            arguments: FieldTable::default(),
        })),
    )
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_disconnected_and_its_unacked_messages_requeued() {
    let broker = broker_with_work();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 1).await;
    raw.send(consume("c")).await;
    let mut delivered = 0;
    while delivered < 3 {
        if let Some(AMQPFrame::Body(..)) = raw.recv().await {
            delivered += 1;
        }
    }
    assert_eq!(broker.unacked_count("work"), Some(3));
    // The client says nothing more: no heartbeats. The server sends its own meanwhile.
    let mut heartbeats = 0;
    while let Some(frame) = raw.recv().await {
        if frame == AMQPFrame::Heartbeat {
            heartbeats += 1;
        }
    }
    assert!(
        heartbeats >= 2,
        "the server sent heartbeats every half interval"
    );
    let ended = raw.server.await.unwrap();
    assert!(
        matches!(ended, Err(broker_mem::wire::WireError::HeartbeatTimeout(_))),
        "{ended:?}"
    );
    assert_eq!(broker.queue_depth("work"), Some(3), "requeued");
    assert_eq!(broker.unacked_count("work"), Some(0));
    broker.check_invariants().unwrap();
}

/// `connection.start` announces what the server does, as RabbitMQ's does, and no more:
/// clients such as pika refuse a confirm or an exchange binding the server did not announce.
#[tokio::test(start_paused = true)]
async fn the_server_announces_the_capabilities_it_has() {
    let server = WireServer::new(Broker::new(), WireConfig::default());
    let mut raw = Raw::start(&server);
    raw.write(HEADER).await;
    let Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Start(start)))) =
        raw.recv().await
    else {
        panic!("no connection.start");
    };
    let Some(AMQPValue::FieldTable(capabilities)) =
        start.server_properties.inner().get("capabilities")
    else {
        panic!("no capabilities in {:?}", start.server_properties);
    };
    let announced = |name: &str| match capabilities.inner().get(name) {
        Some(AMQPValue::Boolean(value)) => Some(*value),
        _ => None,
    };
    for present in [
        "publisher_confirms",
        "exchange_exchange_bindings",
        "basic.nack",
        "consumer_cancel_notify",
        "consumer_priorities",
        "authentication_failure_close",
        "per_consumer_qos",
        "direct_reply_to",
    ] {
        assert_eq!(announced(present), Some(true), "{present}");
    }
    assert_eq!(announced("connection.blocked"), Some(false));
}

#[tokio::test(start_paused = true)]
async fn a_wrong_password_is_refused_with_403() {
    let server = WireServer::new(Broker::new(), WireConfig::default());
    let mut raw = Raw::open(&server, "nope", 0).await;
    let close = raw.recv().await;
    assert!(
        matches!(&close, Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) if c.reply_code == 403 && c.reply_text.as_str().starts_with("ACCESS_REFUSED")),
        "{close:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_foreign_protocol_header_is_answered_with_ours() {
    let server = WireServer::new(Broker::new(), WireConfig::default());
    let mut raw = Raw::start(&server);
    raw.write(b"HTTP/1.1").await;
    let mut answer = [0u8; 8];
    raw.stream.read_exact(&mut answer).await.unwrap();
    assert_eq!(&answer, HEADER);
}

#[tokio::test(start_paused = true)]
async fn hard_errors_close_the_connection_with_rabbitmq_codes() {
    let server = WireServer::new(Broker::new(), WireConfig::default());
    // A frame larger than the negotiated frame_max (4096): 501 FRAME_ERROR.
    let mut raw = Raw::open(&server, "guest", 0).await;
    let mut big = vec![1u8, 0, 1];
    big.extend_from_slice(&100_000u32.to_be_bytes());
    raw.write(&big).await;
    assert_eq!(raw.connection_close_code().await, Some(501));

    // A method on a channel never opened: 504 CHANNEL_ERROR.
    let mut raw = Raw::open(&server, "guest", 0).await;
    raw.send(consume("c").into_iter().collect::<Vec<_>>().tap_channel(7))
        .await;
    assert_eq!(raw.connection_close_code().await, Some(504));

    // A basic method on channel 0: 504 too, as RabbitMQ's reader answers any method out of
    // place on channel 0 ("unexpected method in connection state running").
    let mut raw = Raw::open(&server, "guest", 0).await;
    raw.send(consume("c").tap_channel(0)).await;
    assert_eq!(raw.connection_close_code().await, Some(504));

    // A channel past channel_max channels open (16 negotiated): 530 NOT_ALLOWED. Numbers
    // past it are fine while fewer are open, as in RabbitMQ.
    let mut raw = Raw::open(&server, "guest", 0).await;
    let open = || AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}));
    for number in 30..45 {
        raw.send(method(number, open())).await;
        assert!(matches!(
            raw.recv().await,
            Some(AMQPFrame::Method(n, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))) if n == number
        ));
    }
    raw.send(method(2, open())).await;
    assert_eq!(raw.connection_close_code().await, Some(530));

    // A content header with no publish before it: 505 UNEXPECTED_FRAME.
    let mut raw = Raw::open(&server, "guest", 0).await;
    let header = AMQPContentHeader {
        class_id: 60,
        body_size: 1,
        properties: BasicProperties::default(),
    };
    raw.send(encode(&AMQPFrame::Header(1, header))).await;
    assert_eq!(raw.connection_close_code().await, Some(505));

    // A bad frame-end byte: 501.
    let mut raw = Raw::open(&server, "guest", 0).await;
    raw.send(with_a_bad_end_byte()).await;
    assert_eq!(raw.connection_close_code().await, Some(501));

    // What RabbitMQ does not implement, broker-mem neither: 540. basic.qos with a prefetch
    // size (written by hand: amq-protocol always writes 0 there)...
    let mut raw = Raw::open(&server, "guest", 0).await;
    let payload = [0, 60, 0, 10, 0, 0, 0, 10, 0, 1, 0];
    let mut frame = vec![1, 0, 1];
    frame.extend(u32::try_from(payload.len()).unwrap().to_be_bytes());
    frame.extend(payload);
    frame.push(0xCE);
    raw.send(frame).await;
    assert_eq!(raw.connection_close_code().await, Some(540));
    // ...and a publish with `immediate`.
    let mut raw = Raw::open(&server, "guest", 0).await;
    let publish = basic::AMQPMethod::Publish(basic::Publish {
        immediate: true,
        ..basic::Publish::default()
    });
    raw.send(method(1, AMQPClass::Basic(publish))).await;
    assert_eq!(raw.connection_close_code().await, Some(540));
}

trait TapChannel {
    fn tap_channel(self, channel: u16) -> Vec<u8>;
}

impl TapChannel for Vec<u8> {
    /// Rewrites a frame's channel number.
    fn tap_channel(mut self, channel: u16) -> Vec<u8> {
        self[1..3].copy_from_slice(&channel.to_be_bytes());
        self
    }
}

/// The engine opens a channel under the client's number, so the consumer timeout's text names
/// the channel the client knows, whatever numbers it picked and closed before.
#[tokio::test(start_paused = true)]
async fn the_consumer_timeout_names_the_clients_channel_number() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let now_ms = Arc::new(AtomicU64::new(0));
    let reading = Arc::clone(&now_ms);
    let limits = Limits {
        consumer_timeout_ms: Some(1_000),
        ..Limits::default()
    };
    let broker = Broker::with_clock(limits, Arc::new(move || reading.load(Ordering::SeqCst)));
    let loader = broker.connect();
    let channel = loader.open_channel().unwrap();
    channel
        .queue_declare("work", QueueOptions::default())
        .unwrap();
    channel
        .basic_publish("", "work", Properties::default(), Bytes::from("job"))
        .unwrap();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 0).await;
    // Channel 1 is open; the client skips to 7, the lowest free number being 2.
    raw.send(method(
        7,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ))
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            7,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))
        ))
    ));
    raw.send(consume_on(7, "slow")).await;
    loop {
        match raw.recv().await {
            Some(AMQPFrame::Method(7, AMQPClass::Basic(basic::AMQPMethod::Deliver(_)))) => break,
            Some(_) => {}
            None => panic!("the connection ended before the delivery"),
        }
    }
    now_ms.store(5_000, Ordering::SeqCst);
    // Any call moves the engine's clock; this one is on the other channel.
    raw.send(method(
        1,
        AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
            prefetch_count: 10,
            global: false,
        })),
    ))
    .await;
    let (code, text) = raw.channel_close_code().await.unwrap();
    assert_eq!(code, 406);
    assert!(
        text.starts_with("PRECONDITION_FAILED - delivery acknowledgement on channel 7 timed out"),
        "{text}"
    );
    assert_eq!(broker.queue_depth("work"), Some(1), "the message is back");
    drop(loader);
}

#[tokio::test(start_paused = true)]
async fn soft_errors_close_only_the_channel() {
    let limits = Limits {
        body_bytes_max: 10,
        ..Limits::default()
    };
    let broker = Broker::with_limits(limits);
    let server = WireServer::new(broker.clone(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 0).await;
    let declare = queue::AMQPMethod::Declare(queue::Declare {
        queue: "missing".into(),
        passive: true,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    });
    raw.send(method(1, AMQPClass::Queue(declare))).await;
    let (code, text) = raw.channel_close_code().await.unwrap();
    assert_eq!(code, 404);
    assert_eq!(text, "NOT_FOUND - no queue 'missing' in vhost '/'");
    raw.send(method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    ))
    .await;
    // The channel number is free again, and the connection is fine.
    raw.send(method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ))
    .await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::OpenOk(_))
        ))
    ));
    // A body over the broker's limit: 406 from the header alone.
    let publish = basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "q".into(),
        mandatory: false,
        immediate: false,
    });
    raw.send(method(1, AMQPClass::Basic(publish))).await;
    let header = AMQPContentHeader {
        class_id: 60,
        body_size: 11,
        properties: BasicProperties::default(),
    };
    raw.send(encode(&AMQPFrame::Header(1, header))).await;
    let (code, text) = raw.channel_close_code().await.unwrap();
    assert_eq!(code, 406);
    assert!(
        text.contains("message size 11 is larger than configured max size 10"),
        "{text}"
    );
}

/// A client's `channel.close` that crosses the server's (pipelined right after a method that
/// fails, as pika and lapin do on a close) is answered with close-ok, and the channel waits
/// for the client's close-ok to the server's close before it is gone, as RabbitMQ's does
/// (rabbit_channel: a close on a closing channel gets close-ok, the close-ok stops it). The
/// connection and its other channels go on.
#[tokio::test(start_paused = true)]
async fn a_channel_close_that_crosses_the_servers_closes_only_the_channel() {
    let broker = Broker::new();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 0).await;
    let declare = queue::AMQPMethod::Declare(queue::Declare {
        queue: "missing".into(),
        passive: true,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    });
    raw.send(method(1, AMQPClass::Queue(declare))).await;
    let close = channel::Close {
        reply_code: 200,
        reply_text: "bye".into(),
        class_id: 0,
        method_id: 0,
    };
    raw.send(method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Close(close)),
    ))
    .await;
    let (code, _) = raw.channel_close_code().await.unwrap();
    assert_eq!(code, 404);
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::CloseOk(_))
        ))
    ));
    // The client answers the server's close, as clients do: no connection error.
    raw.send(method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::CloseOk(channel::CloseOk {})),
    ))
    .await;
    raw.send(method(
        1,
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
    ))
    .await;
    match raw.recv().await {
        Some(AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::OpenOk(_)))) => {}
        other => panic!("expected channel.open-ok on channel 1, got {other:?}"),
    }
}

/// A connection the broker closes on its own (a restart, `force_close_connection`) gets a
/// `connection.close` at once, as RabbitMQ's clients do, so they can reconnect.
#[tokio::test(start_paused = true)]
async fn a_restart_closes_wire_connections_with_320() {
    let broker = Broker::new();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 0).await;
    broker.restart();
    match raw.recv().await {
        Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(close)))) => {
            assert_eq!(close.reply_code, 320);
            assert_eq!(
                close.reply_text.as_str(),
                "CONNECTION_FORCED - broker forced connection closure with reason 'shutdown'"
            );
        }
        other => panic!("expected connection.close, got {other:?}"),
    }
    raw.send(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    ))
    .await;
    assert!(raw.recv().await.is_none(), "the connection ends");
}

/// After a frame that loses the framing (here a wrong end byte), the server cannot read the
/// peer's `close-ok`, but it keeps reading (and dropping) what the peer sends until the peer
/// hangs up or the close times out, as RabbitMQ waits before it hangs up: closing with the
/// peer's bytes unread would reset the connection, and a peer still writing could lose the
/// `connection.close` sent to it. After a frame that was read whole, the close-ok is found.
#[tokio::test(start_paused = true)]
async fn after_a_frame_error_the_server_reads_on_until_the_peer_hangs_up() {
    let server = WireServer::new(Broker::new(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 0).await;
    raw.send(with_a_bad_end_byte()).await;
    assert_eq!(raw.connection_close_code().await, Some(501));
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let written = raw.stream.write_all(&[0xAB; 4096]).await;
        assert!(
            written.is_ok(),
            "the server hung up on a peer still writing"
        );
    }
    drop(raw.stream);
    let ended = raw.server.await.expect("server task");
    assert!(
        matches!(
            ended,
            Err(broker_mem::wire::WireError::Closed { code: 501, .. })
        ),
        "{ended:?}"
    );

    // A heartbeat on channel 1 is read whole: the close-ok after it ends the connection.
    let mut raw = Raw::open(&server, "guest", 0).await;
    raw.send(vec![8, 0, 1, 0, 0, 0, 0, 0xCE]).await;
    assert_eq!(raw.connection_close_code().await, Some(505));
    raw.send(method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::CloseOk(connection::CloseOk {})),
    ))
    .await;
    assert!(
        raw.recv().await.is_none(),
        "the connection ends at the close-ok"
    );
}

/// A peer that stops reading while the server writes to it is closed after the send timeout
/// (RabbitMQ's `send_timeout`, 15 s), and the deliveries it held are requeued: without it the
/// session would wait on the write for ever, heartbeats or not.
#[tokio::test(start_paused = true)]
async fn a_peer_that_stops_reading_is_closed_after_the_send_timeout() {
    let broker = broker_with_a_backlog();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 60).await;
    raw.send(consume("c")).await;
    let started = tokio::time::Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(120), raw.server)
        .await
        .expect("the server gave up on the write");
    match ended.expect("server task") {
        Err(broker_mem::wire::WireError::Io(error)) => {
            assert_eq!(error.kind(), std::io::ErrorKind::TimedOut, "{error}");
        }
        other => panic!("expected a send timeout, got {other:?}"),
    }
    assert_eq!(
        started.elapsed().as_secs(),
        broker_mem::wire::SEND_TIMEOUT_MS / 1_000
    );
    assert_eq!(broker.queue_depth("work"), Some(30), "all requeued");
}

/// The send timeout is for a peer that takes nothing: one that reads slowly but steadily is
/// served however long its backlog takes (here 3 MiB at 64 KiB per 10 s, some eight minutes).
#[tokio::test(start_paused = true)]
async fn a_slow_reader_is_not_cut_off_by_the_send_timeout() {
    let broker = broker_with_a_backlog();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 0).await;
    raw.send(consume("c")).await;
    let mut delivered = 0;
    let mut chunk = vec![0; 64 * 1024];
    while delivered < 30 {
        tokio::time::sleep(Duration::from_secs(10)).await;
        let n = raw.stream.read(&mut chunk).await.expect("read");
        assert!(n > 0, "the server hung up on a slow reader");
        raw.buffer.extend_from_slice(&chunk[..n]);
        while let Ok((rest, frame)) = amq_protocol::frame::parse_frame(&raw.buffer[..]) {
            let used = raw.buffer.len() - rest.len();
            raw.buffer.drain(..used);
            if let AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Deliver(_))) = frame {
                delivered += 1;
            }
        }
    }
    assert!(!raw.server.is_finished());
}

/// A delivery the engine made before the client's next method reaches the client before that
/// method's answer: a consumer is never told `cancel-ok` ahead of a delivery made while it
/// was still consuming (RabbitMQ's channel writes them in the order they happened). Several
/// rounds, because the server's select would pick either first when both are ready.
#[tokio::test(start_paused = true)]
async fn a_delivery_made_before_a_cancel_is_written_before_its_cancel_ok() {
    let broker = Broker::new();
    let publisher = broker.connect();
    let publishing = publisher.open_channel().unwrap();
    publishing
        .queue_declare("work", QueueOptions::default())
        .unwrap();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 0).await;
    for round in 0..8 {
        let tag = format!("c{round}");
        raw.send(consume(&tag)).await;
        assert!(matches!(
            raw.recv().await,
            Some(AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(_))
            ))
        ));
        // Delivered within the publish: the delivery waits in the session's tap.
        publishing
            .basic_publish("", "work", Properties::default(), Bytes::from("job"))
            .unwrap();
        let cancel = basic::Cancel {
            consumer_tag: tag.as_str().into(),
            nowait: false,
        };
        raw.send(method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Cancel(cancel)),
        ))
        .await;
        match raw.recv().await {
            Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Deliver(d)))) => {
                assert_eq!(d.consumer_tag.as_str(), tag);
                // Its content header and body, then the cancel-ok.
                assert!(matches!(raw.recv().await, Some(AMQPFrame::Header(1, _))));
                assert!(matches!(raw.recv().await, Some(AMQPFrame::Body(1, _))));
            }
            other => panic!("round {round}: expected the delivery first, got {other:?}"),
        }
        assert!(matches!(
            raw.recv().await,
            Some(AMQPFrame::Method(
                1,
                AMQPClass::Basic(basic::AMQPMethod::CancelOk(_))
            ))
        ));
        // Settled, so that the next round's consumer has credit.
        let ack = basic::Ack {
            delivery_tag: round + 1,
            multiple: false,
        };
        raw.send(method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack))))
            .await;
    }
    drop(publisher);
}

/// `tune-ok` values outside the server's are refused with 530, as RabbitMQ's reader refuses
/// them (a frame_max below 4096, or 0 or above the server's: "no limit" is not negotiable).
#[tokio::test(start_paused = true)]
async fn tune_ok_values_outside_the_servers_end_the_connection_as_rabbitmq_does() {
    let server = WireServer::new(Broker::new(), WireConfig::default());
    for (frame_max, channel_max, expected) in [
        (
            100,
            16,
            "NOT_ALLOWED - negotiated frame_max = 100 is lower than the minimum allowed value (4096)",
        ),
        (
            0,
            16,
            "NOT_ALLOWED - negotiated frame_max = 0 is higher than the maximum allowed value (131072)",
        ),
        (
            4096,
            0,
            "NOT_ALLOWED - negotiated channel_max = 0 (no limit) is higher than the maximum allowed value (2047)",
        ),
    ] {
        let mut raw = Raw::started(&server, "guest").await;
        raw.recv().await.expect("connection.tune");
        let tune_ok = connection::TuneOk {
            channel_max,
            frame_max,
            heartbeat: 0,
        };
        raw.send(method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        ))
        .await;
        // Before it has taken tune-ok RabbitMQ sends no close: it drops the connection and
        // logs why. So does the wire server.
        assert!(
            raw.recv().await.is_none(),
            "no close for {frame_max}/{channel_max}"
        );
        match raw.server.await.expect("server task") {
            Err(broker_mem::wire::WireError::Closed { code, text }) => {
                assert_eq!((code, text.as_str()), (530, expected));
            }
            other => panic!("expected a 530 refusal for {frame_max}/{channel_max}, got {other:?}"),
        }
    }
}

#[tokio::test(start_paused = true)]
async fn connections_past_the_limit_are_refused_with_530() {
    let config = WireConfig {
        connections_max: 1,
        ..WireConfig::default()
    };
    let server = WireServer::new(Broker::new(), config);
    let _first = Raw::open(&server, "guest", 0).await;
    let mut second = Raw::open(&server, "guest", 0).await;
    let close = second.recv().await;
    assert!(
        matches!(&close, Some(AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(c)))) if c.reply_code == 530),
        "{close:?}"
    );
}

// ------------------------------------------------------------------------------ property test

/// Valid frames a client could send after the handshake, on channel 1 (and a few others).
fn valid_frames() -> Vec<Vec<u8>> {
    let publish = basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "work".into(),
        mandatory: false,
        immediate: false,
    });
    let header = |size| {
        encode(&AMQPFrame::Header(
            1,
            AMQPContentHeader {
                class_id: 60,
                body_size: size,
                properties: BasicProperties::default().with_delivery_mode(2),
            },
        ))
    };
    let body = |bytes: &[u8]| {
        let mut frame = vec![3u8, 0, 1];
        frame.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
        frame.extend_from_slice(bytes);
        frame.push(0xCE);
        frame
    };
    vec![
        method(1, AMQPClass::Basic(publish)),
        header(4),
        body(b"abcd"),
        consume("c"),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
                delivery_tag: 1,
                multiple: false,
            })),
        ),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Nack(basic::Nack {
                delivery_tag: 2,
                multiple: true,
                requeue: true,
            })),
        ),
        method(
            1,
            AMQPClass::Basic(basic::AMQPMethod::Qos(basic::Qos {
                prefetch_count: 1,
                global: false,
            })),
        ),
        method(
            2,
            AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        ),
        method(
            1,
            AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "".into(),
                class_id: 0,
                method_id: 0,
            })),
        ),
        vec![8, 0, 0, 0, 0, 0, 0, 0xCE],
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    None,
    Flip { at: usize, xor: u8 },
    Truncate { keep: usize },
    Insert { at: usize, bytes: Vec<u8> },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => Just(Mutation::None),
        2 => (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Mutation::Flip { at, xor }),
        1 => any::<usize>().prop_map(|keep| Mutation::Truncate { keep }),
        1 => (any::<usize>(), proptest::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
    ]
}

fn mutate(mut frame: Vec<u8>, mutation: &Mutation) -> Vec<u8> {
    match mutation {
        Mutation::None => {}
        Mutation::Flip { at, xor } => {
            let i = at % frame.len();
            frame[i] ^= xor;
        }
        Mutation::Truncate { keep } => frame.truncate(keep % frame.len()),
        Mutation::Insert { at, bytes } => {
            let i = at % (frame.len() + 1);
            frame.splice(i..i, bytes.iter().copied());
        }
    }
    frame
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Whatever arrives after the handshake, the server never panics, always ends the
    /// connection once the client stops, and every message it held is still held (ready or
    /// requeued), plus whatever was published and confirmed.
    #[test]
    fn random_and_mutated_frames_never_panic_or_lose_messages(
        picks in proptest::collection::vec((0..10usize, mutation()), 0..24),
        noise in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap();
        runtime.block_on(async {
            let broker = broker_with_work();
            let server = WireServer::new(broker.clone(), WireConfig::default());
            let mut raw = Raw::open(&server, "guest", 0).await;
            let frames = valid_frames();
            let mut bytes = Vec::new();
            for (pick, mutation) in &picks {
                bytes.extend(mutate(frames[*pick].clone(), mutation));
            }
            bytes.extend_from_slice(&noise);
            raw.write(&bytes).await;
            // Read everything the server says until it closes or goes quiet, then hang up.
            let mut confirms = 0u64;
            while let Some(frame) = raw.recv().await {
                if let AMQPFrame::Method(0, AMQPClass::Connection(connection::AMQPMethod::Close(_))) = frame {
                    let ok = connection::AMQPMethod::CloseOk(connection::CloseOk {});
                    raw.send(method(0, AMQPClass::Connection(ok))).await;
                }
                if let AMQPFrame::Method(_, AMQPClass::Basic(basic::AMQPMethod::Ack(_))) = frame {
                    confirms += 1;
                }
            }
            drop(raw.stream);
            let ended = tokio::time::timeout(Duration::from_secs(120), raw.server).await;
            let joined = ended.expect("the server ended the connection");
            assert!(!joined.as_ref().is_err_and(|e| e.is_panic()), "server panicked: {joined:?}");
            broker.check_invariants().unwrap();
            let held = broker.queue_depth("work").unwrap() + broker.unacked_count("work").unwrap();
            // No `confirm.select` was sent, so a `basic.ack` from the server would be a bug.
            // Client acks may settle (remove) delivered messages, and publishes may add some;
            // nothing else changes what the queue holds.
            assert_eq!(confirms, 0);
            assert!(held <= 3 + picks.len(), "held {held}");
            assert_eq!(broker.unacked_count("work"), Some(0), "the closed connection requeued everything");
        });
    }
}

#[tokio::test]
async fn publishes_confirmed_together_get_one_ack_with_multiple() {
    let broker = Broker::new();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 0).await;
    let select = amq_protocol::protocol::confirm::AMQPMethod::Select(
        amq_protocol::protocol::confirm::Select { nowait: false },
    );
    raw.send(method(1, AMQPClass::Confirm(select))).await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(1, AMQPClass::Confirm(_)))
    ));
    // Three publishes in one write: the server sees them in one read and confirms them with
    // a single `basic.ack` (tag 3, multiple), as RabbitMQ does.
    raw.write(&unroutable_publishes(3)).await;
    assert_eq!(raw.next_confirm().await, (3, true));
    // A lone publish later gets its own ack, without multiple.
    raw.write(&unroutable_publishes(1)).await;
    assert_eq!(raw.next_confirm().await, (4, false));
}

/// `count` publishes of a one-byte body to the default exchange with a key no queue has, as
/// the frames of one write.
fn unroutable_publishes(count: usize) -> Vec<u8> {
    (0..count)
        .flat_map(|_| publish_frames("nowhere", false))
        .collect()
}

impl Raw {
    /// The next frame, which must be a publisher confirm: its tag and `multiple`.
    async fn next_confirm(&mut self) -> (u64, bool) {
        let Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Ack(ack)))) =
            self.recv().await
        else {
            panic!("expected a basic.ack");
        };
        (ack.delivery_tag, ack.multiple)
    }
}

/// A publish's frames on channel 1, to the default exchange: a one-byte body.
fn publish_frames(routing_key: &str, mandatory: bool) -> Vec<u8> {
    let publish = basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: routing_key.into(),
        mandatory,
        immediate: false,
    });
    let mut frames = method(1, AMQPClass::Basic(publish));
    let header = AMQPContentHeader {
        class_id: 60,
        body_size: 1,
        properties: BasicProperties::default(),
    };
    frames.extend(encode(&AMQPFrame::Header(1, header)));
    frames.extend(encode(&AMQPFrame::Body(1, b"x".to_vec())));
    frames
}

/// A commit a queue refuses in part (RabbitMQ 3.10's `partial tx completion`): the mandatory
/// message no queue took comes back first, then the channel closes with 406.
#[tokio::test]
async fn a_partly_refused_commit_sends_its_returns_then_closes_the_channel() {
    let broker = Broker::new();
    let setup = broker.connect();
    let limited = [
        ("x-max-length".into(), broker_mem::FieldValue::I64(1)),
        (
            "x-overflow".into(),
            broker_mem::FieldValue::String("reject-publish".into()),
        ),
    ]
    .into_iter()
    .collect();
    setup
        .open_channel()
        .unwrap()
        .queue_declare_with("limited", QueueOptions::default(), &limited)
        .unwrap();
    let server = WireServer::new(broker.clone(), WireConfig::default());
    let mut raw = Raw::open(&server, "guest", 0).await;
    let select =
        amq_protocol::protocol::tx::AMQPMethod::Select(amq_protocol::protocol::tx::Select {});
    raw.send(method(1, AMQPClass::Tx(select))).await;
    assert!(matches!(
        raw.recv().await,
        Some(AMQPFrame::Method(1, AMQPClass::Tx(_)))
    ));
    raw.send(publish_frames("limited", false)).await;
    raw.send(publish_frames("limited", false)).await;
    raw.send(publish_frames("nowhere", true)).await;
    let commit =
        amq_protocol::protocol::tx::AMQPMethod::Commit(amq_protocol::protocol::tx::Commit {});
    raw.send(method(1, AMQPClass::Tx(commit))).await;
    let Some(AMQPFrame::Method(1, AMQPClass::Basic(basic::AMQPMethod::Return(back)))) =
        raw.recv().await
    else {
        panic!("expected the basic.return first");
    };
    assert_eq!(
        (back.reply_code, back.routing_key.as_str()),
        (312, "nowhere")
    );
    let (code, text) = raw.channel_close_code().await.unwrap();
    assert_eq!(
        (code, text.as_str()),
        (406, "PRECONDITION_FAILED - partial tx completion")
    );
    assert_eq!(broker.queue_depth("limited"), Some(1));
}
