//! Frames RabbitMQ refuses, sent byte by byte over TCP to RabbitMQ and to broker-mem's wire
//! server: each must close the connection with the same code, text, class and method on both.
//! The texts are RabbitMQ 3.10's, probed over a raw socket; they are written out here too, so
//! the broker-mem half still checks them when RabbitMQ is not reachable (the RabbitMQ half then
//! prints `SKIPPED` and passes, unless `WARREN_REQUIRE_RABBITMQ=1`).
#![cfg(feature = "wire")]

use std::time::Duration;

use amq_protocol::frame::AMQPFrame;
use amq_protocol::protocol::{AMQPClass, basic, channel, connection, queue};
use amq_protocol::types::{FieldTable, LongString};
use broker_mem::Broker;
use broker_mem::wire::{WireConfig, WireServer};
use ports::testing::RabbitVhost;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[path = "support/frames.rs"]
mod frames;
use frames::{encode, nested_table, next_raw_frame, start_ok};

const WAIT: Duration = Duration::from_secs(10);
/// What the client proposes in `tune-ok`: RabbitMQ's default, so both servers take it.
const FRAME_MAX: u32 = 131_072;

/// How a server answered the frames of a case.
#[derive(Debug, PartialEq)]
enum Answer {
    /// `connection.close` with code, text, class id and method id.
    Closed(u16, String, u16, u16),
    /// The method that came back (class id, method id): the frames were taken.
    Method(u16, u16),
    /// The methods that came back, as many as expected, sorted: RabbitMQ writes a pipelined
    /// `consume-ok` after the answers to the methods sent after it (see the README's
    /// differences), so the order is not compared.
    Methods(Vec<(u16, u16)>),
    /// The server ended the connection without a `connection.close`.
    Dropped,
}

/// A client that writes raw bytes after an ordinary handshake.
struct Raw {
    stream: TcpStream,
    buffer: Vec<u8>,
}

/// How far the handshake goes before a case's frames.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// `connection.start` received; the case sends its own `start-ok`.
    Started,
    /// `tune-ok` sent with this channel_max; the case opens the connection itself.
    Tuned { channel_max: u16 },
    /// The connection open, and channel 1.
    ChannelOpen,
}

impl Raw {
    /// Connects as `user`, tunes to [`FRAME_MAX`] and, at `Stage::ChannelOpen`, opens the
    /// connection to `vhost` and channel 1.
    async fn open(authority: &str, user: &str, password: &str, vhost: &str, stage: Stage) -> Raw {
        let stream = TcpStream::connect(authority).await.expect("connect");
        let mut raw = Raw {
            stream,
            buffer: Vec::new(),
        };
        raw.write(b"AMQP\x00\x00\x09\x01").await;
        raw.expect(10, 10).await; // start
        if let Stage::Started = stage {
            return raw;
        }
        let start_ok = connection::StartOk {
            client_properties: FieldTable::default(),
            mechanism: "PLAIN".into(),
            response: LongString::from(format!("\0{user}\0{password}")),
            locale: "en_US".into(),
        };
        raw.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
        )
        .await;
        raw.expect(10, 30).await; // tune
        let channel_max = match stage {
            Stage::Tuned { channel_max } => channel_max,
            Stage::Started | Stage::ChannelOpen => 2047,
        };
        let tune_ok = connection::TuneOk {
            channel_max,
            frame_max: FRAME_MAX,
            heartbeat: 0,
        };
        raw.method(
            0,
            AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
        )
        .await;
        if let Stage::Tuned { .. } = stage {
            return raw;
        }
        raw.write(&connection_open(vhost)).await;
        raw.expect(10, 41).await; // open-ok
        let open = channel::AMQPMethod::Open(channel::Open {});
        raw.method(1, AMQPClass::Channel(open)).await;
        raw.expect(20, 11).await; // channel.open-ok
        raw
    }

    async fn write(&mut self, bytes: &[u8]) {
        // The server may hang up while this is still writing: what it sent before is read
        // after.
        let _ = self.stream.write_all(bytes).await;
    }

    async fn method(&mut self, channel: u16, class: AMQPClass) {
        self.write(&encode(&AMQPFrame::Method(channel, class)))
            .await;
    }

    async fn recv(&mut self) -> Option<AMQPFrame> {
        frames::next_frame(&mut self.stream, &mut self.buffer, WAIT).await
    }

    async fn expect(&mut self, class_id: u16, method_id: u16) {
        match self.recv().await {
            Some(AMQPFrame::Method(_, class))
                if class.get_amqp_class_id() == class_id
                    && class.get_amqp_method_id() == method_id => {}
            other => panic!("expected method {class_id}.{method_id}, got {other:?}"),
        }
    }

    /// What the server answers the case's frames, read as `expected` is shaped: the first
    /// method (or all up to the last of `Methods`), not counting the `tune` and the `open-ok`s
    /// of the connection and channels the case opens; a `connection.close` or the end of the
    /// connection stops the reading.
    async fn answer(&mut self, expected: &Answer) -> Answer {
        let started = tokio::time::Instant::now();
        let mut methods = Vec::new();
        loop {
            let class = match self.recv().await {
                None => {
                    assert!(started.elapsed() < WAIT, "silence, not an answer");
                    methods.sort_unstable();
                    return if methods.is_empty() {
                        Answer::Dropped
                    } else {
                        Answer::Methods(methods)
                    };
                }
                Some(AMQPFrame::Method(
                    0,
                    AMQPClass::Connection(connection::AMQPMethod::Close(close)),
                )) => {
                    return Answer::Closed(
                        close.reply_code,
                        close.reply_text.to_string(),
                        close.class_id,
                        close.method_id,
                    );
                }
                Some(AMQPFrame::Method(_, class)) => class,
                Some(_) => continue,
            };
            let ids = (class.get_amqp_class_id(), class.get_amqp_method_id());
            if matches!(ids, (10, 30) | (10, 41) | (20, 11)) {
                continue;
            }
            let Answer::Methods(wanted) = expected else {
                return Answer::Method(ids.0, ids.1);
            };
            methods.push(ids);
            if methods.len() >= wanted.len() {
                methods.sort_unstable();
                return Answer::Methods(methods);
            }
        }
    }
}

fn tune_ok(frame_max: u32) -> Vec<u8> {
    let tune_ok = connection::TuneOk {
        channel_max: 2047,
        frame_max,
        heartbeat: 0,
    };
    encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(tune_ok)),
    ))
}

fn basic(method: basic::AMQPMethod) -> Vec<u8> {
    encode(&AMQPFrame::Method(1, AMQPClass::Basic(method)))
}

fn queue(method: queue::AMQPMethod) -> Vec<u8> {
    encode(&AMQPFrame::Method(1, AMQPClass::Queue(method)))
}

fn connection_open(vhost: &str) -> Vec<u8> {
    let open = connection::Open {
        virtual_host: vhost.into(),
    };
    encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::Open(open)),
    ))
}

fn channel_open(number: u16) -> Vec<u8> {
    frame(1, number, b"\x00\x14\x00\x0a\x00")
}

fn frame(kind: u8, channel: u16, payload: &[u8]) -> Vec<u8> {
    let mut bytes = vec![kind];
    bytes.extend(channel.to_be_bytes());
    bytes.extend(u32::try_from(payload.len()).unwrap().to_be_bytes());
    bytes.extend(payload);
    bytes.push(0xCE);
    bytes
}

/// `basic.publish` to the default exchange with routing key "nowhere" (routed nowhere).
fn publish() -> Vec<u8> {
    frame(1, 1, b"\x00\x3c\x00\x28\x00\x00\x00\x07nowhere\x00")
}

/// A content header: class, weight, body size, and `flags` with no property data after them.
fn header(class_id: u16, weight: u16, body_size: u64, flags: u16) -> Vec<u8> {
    header_then(class_id, weight, body_size, flags, &[])
}

/// [`header`] with `properties` (bytes as they are) after the flags.
fn header_then(
    class_id: u16,
    weight: u16,
    body_size: u64,
    flags: u16,
    properties: &[u8],
) -> Vec<u8> {
    let mut payload = class_id.to_be_bytes().to_vec();
    payload.extend(weight.to_be_bytes());
    payload.extend(body_size.to_be_bytes());
    payload.extend(flags.to_be_bytes());
    payload.extend(properties);
    frame(2, 1, &payload)
}

/// `basic.qos` prefetch 1: answered with qos-ok (60.11) when everything before was taken.
fn qos() -> Vec<u8> {
    qos_on(1)
}

fn qos_on(channel: u16) -> Vec<u8> {
    frame(1, channel, b"\x00\x3c\x00\x0a\x00\x00\x00\x00\x00\x01\x00")
}

fn closed(code: u16, text: &str, class_id: u16, method_id: u16) -> Answer {
    Answer::Closed(code, text.to_owned(), class_id, method_id)
}

/// Each case: a name, how far the handshake goes, the frames sent then, and RabbitMQ's
/// answer. `vhost` is the one the server under test serves.
fn cases(vhost: &str) -> Vec<(&'static str, Stage, Vec<u8>, Answer)> {
    let expected_method = "UNEXPECTED_FRAME - expected method frame, got non method frame instead";
    let expected_header = "UNEXPECTED_FRAME - expected content header for class 60, got non content header frame instead";
    let expected_body =
        "UNEXPECTED_FRAME - expected content body, got non content body frame instead";
    let mut too_large = vec![3, 0, 1];
    too_large.extend((FRAME_MAX + 1).to_be_bytes());
    too_large.extend(vec![b'a'; FRAME_MAX as usize + 1]);
    too_large.push(0xCE);
    let mut bad_end = frame(1, 1, &[0, 20, 0, 10]);
    *bad_end.last_mut().unwrap() = 0;
    let full_frame_body = [
        publish(),
        header(60, 0, u64::from(FRAME_MAX), 0),
        frame(3, 1, &vec![b'a'; FRAME_MAX as usize]),
        qos(),
    ]
    .concat();
    let tuned = |channel_max| Stage::Tuned { channel_max };
    let unimplemented = |class_id, method_id| {
        closed(
            503,
            "COMMAND_INVALID - unimplemented method",
            class_id,
            method_id,
        )
    };
    let refused = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile.";
    let handshake_cases = vec![
        (
            "a wrong password, from a client that cannot take a close for it",
            Stage::Started,
            start_ok("wrong", &[]),
            Answer::Dropped,
        ),
        (
            // Before tune-ok, RabbitMQ answers any error by dropping the connection.
            "a start-ok larger than the 4,096 bytes allowed before tune-ok",
            Stage::Started,
            start_ok(&"p".repeat(5_000), &[]),
            Answer::Dropped,
        ),
        (
            "a tune-ok with frame_max 0",
            Stage::Started,
            [start_ok("guest", &[]), tune_ok(0)].concat(),
            Answer::Dropped,
        ),
        (
            "a connection.open instead of start-ok",
            Stage::Started,
            connection_open(vhost),
            Answer::Dropped,
        ),
        (
            "a wrong password, from a client announcing authentication_failure_close",
            Stage::Started,
            start_ok("wrong", &["authentication_failure_close"]),
            closed(403, refused, 0, 0),
        ),
        (
            "a wrong password, from a client announcing authentication_failure_close true, then false",
            // a key given twice counts with its first value
            Stage::Started,
            start_ok_announcing_twice(),
            closed(403, refused, 0, 0),
        ),
        (
            "a channel.open before connection.open",
            tuned(2047),
            channel_open(1),
            closed(
                505,
                "UNEXPECTED_FRAME - type 1, all octets = <<0,20,0,10,0>>",
                0,
                0,
            ),
        ),
        (
            "a connection.open whose vhost is not UTF-8",
            // on channel 0, rabbit_reader names the method the decoder failed in
            tuned(2047),
            frame(1, 0, b"\x00\x0a\x00\x28\x02/\xff\x00\x00"),
            closed(501, "FRAME_ERROR - Malformed UTF-8 in shortstr", 10, 40),
        ),
        (
            "a vhost that does not exist",
            tuned(2047),
            connection_open("warren-no-such-vhost"),
            closed(
                530,
                "NOT_ALLOWED - vhost warren-no-such-vhost not found",
                10,
                40,
            ),
        ),
        (
            "channel numbers past channel_max, while fewer channels are open",
            tuned(2),
            [connection_open(vhost), channel_open(3), qos_on(3)].concat(),
            Answer::Method(60, 11),
        ),
        (
            "a channel past channel_max open channels",
            tuned(2),
            [
                connection_open(vhost),
                channel_open(1),
                channel_open(2),
                channel_open(7),
            ]
            .concat(),
            closed(
                530,
                "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)",
                0,
                0,
            ),
        ),
        (
            "a channel.open on a channel already open, at the channel limit",
            tuned(1),
            [connection_open(vhost), channel_open(1), channel_open(1)].concat(),
            closed(504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10),
        ),
        (
            "any method on a channel not open, at the channel limit",
            tuned(1),
            [connection_open(vhost), channel_open(1), qos_on(5)].concat(),
            closed(
                530,
                "NOT_ALLOWED - number of channels opened (1) has reached the negotiated channel_max (1)",
                0,
                0,
            ),
        ),
        (
            "a method on a channel before connection.open that would not decode",
            tuned(2047),
            frame(1, 1, &[0, 20]),
            closed(
                505,
                "UNEXPECTED_FRAME - type 1, all octets = <<0,20>>",
                0,
                0,
            ),
        ),
        (
            "a frame of an unknown type on a channel before connection.open",
            tuned(2047),
            frame(9, 1, b"ab"),
            closed(
                505,
                "UNEXPECTED_FRAME - type 9, all octets = <<\"ab\">>",
                0,
                0,
            ),
        ),
    ];
    let consumed_queue = [
        queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "frames-consumed".into(),
            ..queue::Declare::default()
        })),
        basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "frames-consumed".into(),
            consumer_tag: "c".into(),
            ..basic::Consume::default()
        })),
        queue(queue::AMQPMethod::Delete(queue::Delete {
            queue: "frames-consumed".into(),
            ..queue::Delete::default()
        })),
        qos(),
    ]
    .concat();
    let method_cases = vec![
        (
            "a queue deleted under a consumer of a client that did not announce \
             consumer_cancel_notify: no basic.cancel",
            consumed_queue,
            Answer::Methods(vec![(50, 11), (50, 41), (60, 11), (60, 21)]),
        ),
        (
            "a channel.open while a publish waits for its content",
            [publish(), channel_open(1)].concat(),
            closed(505, expected_header, 60, 40),
        ),
        (
            "a basic.qos with a prefetch size",
            frame(1, 1, b"\x00\x3c\x00\x0a\x00\x00\x00\x01\x00\x01\x00"),
            closed(540, "NOT_IMPLEMENTED - prefetch_size!=0 (1)", 60, 10),
        ),
        (
            "a second channel.open",
            channel_open(1),
            closed(504, "CHANNEL_ERROR - second 'channel.open' seen", 20, 10),
        ),
        (
            "a channel.open-ok from the client",
            frame(1, 1, b"\x00\x14\x00\x0b\x00\x00\x00\x00"),
            unimplemented(20, 11),
        ),
        (
            "a channel.close-ok nobody asked for",
            frame(1, 1, b"\x00\x14\x00\x29"),
            unimplemented(20, 41),
        ),
        (
            "a channel.flow-ok nobody asked for",
            frame(1, 1, b"\x00\x14\x00\x15\x01"),
            unimplemented(20, 21),
        ),
        (
            "a basic.qos-ok from the client",
            frame(1, 1, b"\x00\x3c\x00\x0b"),
            unimplemented(60, 11),
        ),
        (
            "a confirm.select-ok from the client",
            frame(1, 1, b"\x00\x55\x00\x0b"),
            unimplemented(85, 11),
        ),
        (
            "a connection.blocked from the client",
            frame(1, 0, b"\x00\x0a\x00\x3c\x00"),
            closed(
                504,
                "CHANNEL_ERROR - unexpected method in connection state running",
                10,
                60,
            ),
        ),
        (
            "access.request (deprecated, still answered)",
            frame(1, 1, b"\x00\x1e\x00\x0a\x05/data\x00"),
            Answer::Method(30, 11),
        ),
        (
            "a content body on channel 0",
            frame(3, 0, b"aaaaa"),
            closed(
                505,
                "UNEXPECTED_FRAME - type 3, all octets = <<\"aaaaa\">>",
                0,
                0,
            ),
        ),
        (
            "a content header on channel 0",
            frame(
                2,
                0,
                b"\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00",
            ),
            closed(
                505,
                "UNEXPECTED_FRAME - type 2, all octets = <<0,60,0,0,0,0,0,0,0,0,0,5,0,0>>",
                0,
                0,
            ),
        ),
    ];
    let frame_cases = vec![
        (
            "a heartbeat on a channel",
            frame(8, 1, b""),
            closed(505, "UNEXPECTED_FRAME - type 8, all octets = <<>>", 0, 0),
        ),
        (
            "a heartbeat with a payload",
            frame(8, 0, b"xx"),
            closed(
                501,
                "FRAME_ERROR - type 8, all octets = <<\"xx\">>: unknown_frame",
                0,
                0,
            ),
        ),
        (
            "an unknown frame type",
            frame(9, 1, &[1, 2]),
            closed(
                501,
                "FRAME_ERROR - type 9, all octets = <<1,2>>: unknown_frame",
                0,
                0,
            ),
        ),
        (
            "a wrong end byte",
            bad_end,
            closed(
                501,
                "FRAME_ERROR - type 1, all octets = <<0,20,0,10>>: {invalid_frame_end_marker,0}",
                0,
                0,
            ),
        ),
        (
            "a payload one byte over frame_max",
            too_large,
            closed(
                501,
                "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,131073,131064}",
                0,
                0,
            ),
        ),
        (
            "a body frame of exactly frame_max payload bytes is taken",
            full_frame_body,
            Answer::Method(60, 11),
        ),
        (
            "a method frame too short for its ids",
            frame(1, 1, &[0, 20]),
            closed(
                501,
                "FRAME_ERROR - type 1, all octets = <<0,20>>: unknown_frame",
                0,
                0,
            ),
        ),
        (
            "method arguments that do not decode",
            frame(1, 1, b"\x00\x32\x00\x0aAAAA"),
            closed(501, "FRAME_ERROR - cannot decode <<65,65,65,65>>", 50, 10),
        ),
        (
            "a content header too short",
            frame(2, 1, &[0]),
            closed(
                501,
                "FRAME_ERROR - type 2, all octets = <<0>>: unknown_frame",
                0,
                0,
            ),
        ),
        (
            "a content header with no publish",
            header(60, 0, 5, 0),
            closed(505, expected_method, 0, 0),
        ),
        (
            "a content body with no publish",
            frame(3, 1, b"aaaaa"),
            closed(505, expected_method, 0, 0),
        ),
        (
            "a content header on a channel not open",
            frame(
                2,
                5,
                b"\x00\x3c\x00\x00\x00\x00\x00\x00\x00\x00\x00\x05\x00\x00",
            ),
            closed(505, expected_method, 0, 0),
        ),
        (
            "a method on a channel not open",
            frame(1, 5, b"\x00\x3c\x00\x0a\x00\x00\x00\x00\x00\x01\x00"),
            closed(504, "CHANNEL_ERROR - expected 'channel.open'", 60, 10),
        ),
        (
            "a publish, then a body",
            [publish(), frame(3, 1, b"aaaaa")].concat(),
            closed(505, expected_header, 60, 40),
        ),
        (
            "a publish, then a method",
            [publish(), qos()].concat(),
            closed(505, expected_header, 60, 40),
        ),
        (
            "a publish, then a header of another class",
            [publish(), header(50, 0, 5, 0)].concat(),
            closed(
                505,
                "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead",
                60,
                40,
            ),
        ),
        (
            "a publish, then a header with a weight",
            [publish(), header(60, 1, 5, 0)].concat(),
            closed(505, expected_header, 60, 40),
        ),
        (
            "a publish, a header, then another header",
            [publish(), header(60, 0, 5, 0), header(60, 0, 5, 0)].concat(),
            closed(505, expected_body, 60, 40),
        ),
        (
            "a publish, a header, then a method",
            [publish(), header(60, 0, 5, 0), qos()].concat(),
            closed(505, expected_body, 60, 40),
        ),
        (
            "a publish with properties that do not decode",
            // content-type flagged, and no string after the flags
            [publish(), header(60, 0, 5, 0x8000), frame(3, 1, b"aaaaa")].concat(),
            closed(541, "INTERNAL_ERROR", 0, 0),
        ),
        (
            "a publish with properties that do not decode, then a method",
            // RabbitMQ decodes properties only once the content is complete: until then it
            // waits for the body, and a method is out of place there
            [publish(), header(60, 0, 5, 0x8000), qos()].concat(),
            closed(505, expected_body, 60, 40),
        ),
        (
            "a publish with a byte after the last property",
            // no properties flagged, then one byte
            [
                publish(),
                header_then(60, 0, 5, 0, &[0]),
                frame(3, 1, b"aaaaa"),
            ]
            .concat(),
            closed(541, "INTERNAL_ERROR", 0, 0),
        ),
        (
            "a queue.declare whose queue name is not UTF-8",
            // RabbitMQ's decoder checks the short strings of methods without content
            frame(
                1,
                1,
                b"\x00\x32\x00\x0a\x00\x00\x02q\xff\x00\x00\x00\x00\x00",
            ),
            closed(501, "FRAME_ERROR - Malformed UTF-8 in shortstr", 0, 0),
        ),
        (
            "a queue.declare whose queue name is not UTF-8, with a byte left over",
            // the frame's shape is checked first
            frame(
                1,
                1,
                b"\x00\x32\x00\x0a\x00\x00\x02q\xff\x00\x00\x00\x00\x00\x00",
            ),
            closed(
                501,
                "FRAME_ERROR - cannot decode <<0,0,2,113,255,0,0,0,0,0,0>>",
                50,
                10,
            ),
        ),
        (
            "a basic.consume whose consumer tag is not UTF-8",
            frame(
                1,
                1,
                b"\x00\x3c\x00\x14\x00\x00\x01q\x02t\xfe\x00\x00\x00\x00\x00",
            ),
            closed(501, "FRAME_ERROR - Malformed UTF-8 in shortstr", 0, 0),
        ),
        (
            "a channel.close whose reply text is not UTF-8",
            frame(1, 1, b"\x00\x14\x00\x28\x00\xc8\x01\xff\x00\x00\x00\x00"),
            closed(501, "FRAME_ERROR - Malformed UTF-8 in shortstr", 0, 0),
        ),
        (
            "a publish whose routing key is not UTF-8, then basic.qos",
            // not checked in a method with content: taken
            [
                frame(1, 1, b"\x00\x3c\x00\x28\x00\x00\x00\x02k\xff\x00"),
                header(60, 0, 1, 0),
                frame(3, 1, b"a"),
                qos(),
            ]
            .concat(),
            Answer::Method(60, 11),
        ),
        (
            "a queue.declare whose argument key is not UTF-8, then basic.qos",
            // RabbitMQ's keys are binaries (amq-protocol's parser refuses such a key)
            [
                frame(
                    1,
                    1,
                    b"\x00\x32\x00\x0a\x00\x00\x02ua\x00\x00\x00\x00\x03\x01\xffV",
                ),
                qos(),
            ]
            .concat(),
            Answer::Methods(vec![(50, 11), (60, 11)]),
        ),
        (
            "a basic.qos with a byte left over",
            // RabbitMQ's decoder matches a method's whole payload
            frame(1, 1, b"\x00\x3c\x00\x0a\x00\x00\x00\x00\x00\x01\x00\x00"),
            closed(
                501,
                "FRAME_ERROR - cannot decode <<0,0,0,0,0,1,0,0>>",
                60,
                10,
            ),
        ),
        (
            "a basic.ack with a byte left over",
            frame(
                1,
                1,
                b"\x00\x3c\x00\x50\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            ),
            closed(
                501,
                "FRAME_ERROR - cannot decode <<0,0,0,0,0,0,0,0,0,0>>",
                60,
                80,
            ),
        ),
        (
            "a tx.select with a byte left over",
            frame(1, 1, b"\x00\x5a\x00\x0a\x00"),
            closed(501, "FRAME_ERROR - cannot decode <<0>>", 90, 10),
        ),
        (
            "a basic.publish with a byte left over",
            frame(1, 1, b"\x00\x3c\x00\x28\x00\x00\x00\x02tq\x00\x00"),
            closed(
                501,
                "FRAME_ERROR - cannot decode <<0,0,0,2,116,113,0,0>>",
                60,
                40,
            ),
        ),
        (
            "a publish whose header table has a NaN double",
            // Erlang's float matches take no NaN or infinity
            [
                publish(),
                header_then(
                    60,
                    0,
                    5,
                    0x2000,
                    b"\x00\x00\x00\x0b\x01ad\x7f\xf8\x00\x00\x00\x00\x00\x00",
                ),
                frame(3, 1, b"aaaaa"),
            ]
            .concat(),
            closed(541, "INTERNAL_ERROR", 0, 0),
        ),
        (
            "a publish whose header table has a value of type U",
            // RabbitMQ's content-header parser has no `U` (its method parser takes one)
            [
                publish(),
                header_then(60, 0, 5, 0x2000, b"\x00\x00\x00\x05\x01aU\x00\x07"),
                frame(3, 1, b"aaaaa"),
            ]
            .concat(),
            closed(541, "INTERNAL_ERROR", 0, 0),
        ),
    ];
    let open = |(name, frames, answer)| (name, Stage::ChannelOpen, frames, answer);
    handshake_cases
        .into_iter()
        .chain(method_cases.into_iter().map(open))
        .chain(frame_cases.into_iter().map(open))
        .collect()
}

async fn answers(authority: &str, user: &str, password: &str, vhost: &str) -> Vec<Answer> {
    let mut answers = Vec::new();
    for (name, stage, frames, expected) in cases(vhost) {
        let mut raw = Raw::open(authority, user, password, vhost, stage).await;
        raw.write(&frames).await;
        let answer = tokio::time::timeout(WAIT * 2, raw.answer(&expected))
            .await
            .unwrap_or_else(|_| panic!("{name}: no answer"));
        answers.push(answer);
    }
    answers
}

fn check(server: &str, answers: &[Answer]) {
    let mismatches: Vec<String> = cases("")
        .into_iter()
        .zip(answers)
        .filter(|((_, _, _, expected), answer)| expected != *answer)
        .map(|((name, _, _, expected), answer)| {
            format!("{name}:\n  expected {expected:?}\n  {server} {answer:?}")
        })
        .collect();
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[tokio::test]
async fn broker_mem_refuses_frames_as_rabbitmq_does() {
    let (authority, broker) = serving_broker().await;
    let answers = answers(&authority, "guest", "guest", "/").await;
    check("broker-mem", &answers);
    broker.check_invariants().expect("broker-mem bookkeeping");
}

/// Host and port, user and password of a test vhost's URL (amqp://user:password@host:port/vhost).
fn login(vhost: &RabbitVhost) -> (&str, &str, &str) {
    let url = vhost.amqp_url().trim_start_matches("amqp://");
    let (credentials, rest) = url.split_once('@').expect("credentials in the URL");
    let (user, password) = credentials.split_once(':').expect("user:password");
    let authority = rest.split('/').next().expect("authority");
    (authority, user, password)
}

#[tokio::test]
async fn rabbitmq_refuses_the_frames_as_written_here() {
    let Some(vhost) = RabbitVhost::create("rabbitmq_refuses_frames")
        .await
        .expect("vhost")
    else {
        return;
    };
    let (authority, user, password) = login(&vhost);
    let answers = answers(authority, user, password, vhost.name()).await;
    vhost.delete().await.expect("delete vhost");
    check("RabbitMQ", &answers);
}

/// `content` after its size as a 32-bit length: a table's or array's bytes on the wire.
fn sized(content: &[u8]) -> Vec<u8> {
    let mut bytes = u32::try_from(content.len()).unwrap().to_be_bytes().to_vec();
    bytes.extend(content);
    bytes
}

/// A content header as a client might write it: a header table in no sorted order with a
/// value of every field type RabbitMQ reads, a nested table and array in no order either, then
/// a message id. Class 60, weight 0, a body of 5 bytes.
fn header_in_publisher_order() -> Vec<u8> {
    fn entry(key: &str, kind: u8, value: &[u8]) -> Vec<u8> {
        let mut bytes = vec![u8::try_from(key.len()).unwrap()];
        bytes.extend(key.as_bytes());
        bytes.push(kind);
        bytes.extend(value);
        bytes
    }
    let nested = [entry("z", b'b', &[0xff]), entry("a", b'V', &[])].concat();
    let array = [
        &b"I"[..],
        &7_i32.to_be_bytes(),
        b"S",
        &sized(b"x"),
        b"F",
        &sized(&nested),
    ]
    .concat();
    let table = [
        entry("zeta", b't', &[1]),
        entry("alpha", b'b', &[0x80]),
        entry("mid", b's', &(-300_i16).to_be_bytes()),
        entry("B", b'B', &[200]),
        entry("u", b'u', &60_000_u16.to_be_bytes()),
        entry("I", b'I', &(-70_000_i32).to_be_bytes()),
        entry("i", b'i', &4_000_000_000_u32.to_be_bytes()),
        entry("l", b'l', &(-(1_i64 << 40)).to_be_bytes()),
        entry("f", b'f', &0.5_f32.to_be_bytes()),
        entry("d", b'd', &(-1.25_f64).to_be_bytes()),
        entry("D", b'D', &[2, 0, 0, 1, 58]),
        entry("S", b'S', &sized("héllo".as_bytes())),
        entry("x", b'x', &sized(&[0, 255])),
        entry("T", b'T', &1_700_000_000_u64.to_be_bytes()),
        entry("V", b'V', &[]),
        entry("A", b'A', &sized(&array)),
        entry("F", b'F', &sized(&nested)),
    ]
    .concat();
    let mut payload = 60_u16.to_be_bytes().to_vec();
    payload.extend(0_u16.to_be_bytes());
    payload.extend(5_u64.to_be_bytes());
    // headers and message-id
    payload.extend(0x2080_u16.to_be_bytes());
    payload.extend(sized(&table));
    payload.extend(b"\x02m1");
    payload
}

/// A content header whose table a writer that reads it first would not give back as it is: a
/// key twice (RabbitMQ passes both on), a key that is not UTF-8, `L` for a long long (read as
/// `l`), a boolean byte of 2 (read as true), the last two inside an array too. Class 60,
/// weight 0, a body of 5 bytes.
fn header_written_unusually() -> Vec<u8> {
    let array = [&b"L"[..], &7_i64.to_be_bytes(), b"t\x02"].concat();
    let table = [
        &b"\x01kI"[..],
        &1_i32.to_be_bytes(),
        b"\x01kI",
        &2_i32.to_be_bytes(),
        b"\x02\xff\xfeV",
        b"\x01LL",
        &(-3_i64).to_be_bytes(),
        b"\x01tt\x02",
        b"\x01AA",
        &sized(&array),
    ]
    .concat();
    let mut payload = 60_u16.to_be_bytes().to_vec();
    payload.extend(0_u16.to_be_bytes());
    payload.extend(5_u64.to_be_bytes());
    payload.extend(0x2000_u16.to_be_bytes());
    payload.extend(sized(&table));
    payload
}

/// Publishes a content header (`header`'s payload) to a queue, gets it back with `basic.get`,
/// and returns the content header that came with the `get-ok`, as bytes.
async fn header_round_trip(
    authority: &str,
    user: &str,
    password: &str,
    vhost: &str,
    header: &[u8],
) -> Vec<u8> {
    let mut raw = Raw::open(authority, user, password, vhost, Stage::ChannelOpen).await;
    let declare = queue::AMQPMethod::Declare(queue::Declare {
        queue: "order".into(),
        passive: false,
        durable: false,
        exclusive: false,
        auto_delete: false,
        nowait: false,
        arguments: FieldTable::default(),
    });
    raw.write(&queue(declare)).await;
    raw.expect(50, 11).await;
    let publish = basic::AMQPMethod::Publish(basic::Publish {
        exchange: "".into(),
        routing_key: "order".into(),
        mandatory: false,
        immediate: false,
    });
    let get = basic::AMQPMethod::Get(basic::Get {
        queue: "order".into(),
        no_ack: true,
    });
    let frames = [
        basic(publish),
        frame(2, 1, header),
        frame(3, 1, b"hello"),
        basic(get),
    ];
    raw.write(&frames.concat()).await;
    loop {
        let (kind, _, payload) = next_raw_frame(&mut raw.stream, &mut raw.buffer, WAIT)
            .await
            .expect("the get-ok's content header");
        if kind == 2 {
            return payload;
        }
        // a method: only get-ok (60.71) may come before the header
        assert_eq!(
            payload.get(..4),
            Some(&b"\x00\x3c\x00\x47"[..]),
            "expected basic.get-ok"
        );
    }
}

/// RabbitMQ passes a header table on as the publisher wrote it: key order, field types,
/// nested tables, and what writing the table anew would change (a key twice, a key that is not
/// UTF-8, an `L` type letter, a boolean byte of 2). broker-mem does too.
#[tokio::test]
async fn broker_mem_passes_a_content_header_on_byte_for_byte() {
    let (authority, _broker) = serving_broker().await;
    for sent in [header_in_publisher_order(), header_written_unusually()] {
        let header = header_round_trip(&authority, "guest", "guest", "/", &sent).await;
        assert_eq!(header, sent);
    }
}

#[tokio::test]
async fn rabbitmq_passes_a_content_header_on_byte_for_byte() {
    let Some(vhost) = RabbitVhost::create("rabbitmq_header_bytes")
        .await
        .expect("vhost")
    else {
        return;
    };
    let (authority, user, password) = login(&vhost);
    let mut got = Vec::new();
    for sent in [header_in_publisher_order(), header_written_unusually()] {
        got.push((
            header_round_trip(authority, user, password, vhost.name(), &sent).await,
            sent,
        ));
    }
    vhost.delete().await.expect("delete vhost");
    for (header, sent) in got {
        assert_eq!(header, sent);
    }
}

/// A fresh broker behind its wire server on an ephemeral port: the server's address and the
/// broker.
async fn serving_broker() -> (String, Broker) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    let broker = Broker::new();
    tokio::spawn(WireServer::new(broker.clone(), WireConfig::default()).serve_tcp(listener));
    (authority, broker)
}

/// The server still answers a new connection, no queue `q` was half declared, and the
/// broker's bookkeeping holds.
async fn still_serving_with_no_queue_q(authority: &str, broker: &Broker) {
    let mut raw = Raw::open(authority, "guest", "guest", "/", Stage::ChannelOpen).await;
    raw.write(&qos()).await;
    assert_eq!(
        raw.answer(&Answer::Method(60, 11)).await,
        Answer::Method(60, 11)
    );
    assert_eq!(broker.queue_depth("q"), None);
    broker.check_invariants().expect("broker-mem bookkeeping");
}

/// Tables nested deeper than broker-mem's limit (64 levels; RabbitMQ sets none) are refused,
/// 541 in a content header and 501 in a method's arguments, and the server goes on serving.
/// Without the limit, 20,000 levels (120 KB) overflowed a thread's stack while parsing and
/// aborted the whole process.
#[tokio::test]
async fn tables_nested_past_the_limit_are_refused_and_the_server_lives_on() {
    let (authority, broker) = serving_broker().await;
    let deep = nested_table(20_000);
    assert!(deep.len() < FRAME_MAX as usize - 100);

    let mut raw = Raw::open(&authority, "guest", "guest", "/", Stage::ChannelOpen).await;
    let headers_only = 0x2000;
    let frames = [
        publish(),
        header_then(60, 0, 5, headers_only, &deep),
        frame(3, 1, b"aaaaa"),
    ];
    raw.write(&frames.concat()).await;
    let internal = closed(541, "INTERNAL_ERROR", 0, 0);
    assert_eq!(raw.answer(&internal).await, internal);

    let mut raw = Raw::open(&authority, "guest", "guest", "/", Stage::ChannelOpen).await;
    // queue.declare: reserved short, queue name, bits, then the arguments.
    let declare = [&[0, 50, 0, 10, 0, 0, 1, b'q', 0][..], &deep].concat();
    raw.write(&frame(1, 1, &declare)).await;
    let too_deep = closed(
        501,
        "FRAME_ERROR - a field table nests deeper than 64 levels",
        50,
        10,
    );
    assert_eq!(raw.answer(&too_deep).await, too_deep);

    still_serving_with_no_queue_q(&authority, &broker).await;
}

/// Declares a queue whose arguments name `x-max-length` twice (1, then 5), publishes three
/// messages to it and returns how many it holds.
async fn depth_under_a_repeated_argument(
    authority: &str,
    user: &str,
    password: &str,
    vhost: &str,
) -> u32 {
    let mut raw = Raw::open(authority, user, password, vhost, Stage::ChannelOpen).await;
    let entry = |limit: i32| {
        let mut bytes = b"\x0cx-max-lengthI".to_vec();
        bytes.extend(limit.to_be_bytes());
        bytes
    };
    let entries = [entry(1), entry(5)].concat();
    let arguments = [
        u32::try_from(entries.len()).unwrap().to_be_bytes().to_vec(),
        entries,
    ]
    .concat();
    // queue.declare "limited": reserved short, name, bits, then the arguments.
    let declare = [&b"\x00\x32\x00\x0a\x00\x00\x07limited\x00"[..], &arguments].concat();
    raw.write(&frame(1, 1, &declare)).await;
    raw.expect(50, 11).await;
    let publish = frame(1, 1, b"\x00\x3c\x00\x28\x00\x00\x00\x07limited\x00");
    for _ in 0..3 {
        let content = [publish.clone(), header(60, 0, 1, 0), frame(3, 1, b"m")];
        raw.write(&content.concat()).await;
    }
    let passive = frame(
        1,
        1,
        b"\x00\x32\x00\x0a\x00\x00\x07limited\x01\x00\x00\x00\x00",
    );
    // RabbitMQ's queue process takes the publishes in the background.
    tokio::time::sleep(Duration::from_millis(200)).await;
    raw.write(&passive).await;
    match raw.recv().await {
        Some(AMQPFrame::Method(_, AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok)))) => {
            ok.message_count
        }
        other => panic!("expected queue.declare-ok, got {other:?}"),
    }
}

/// A key written twice in a method's arguments counts with its first value, as RabbitMQ's
/// lookups find it (`rabbit_misc:table_lookup`); amq-protocol's parser keeps the last.
#[tokio::test]
async fn broker_mem_takes_a_repeated_argument_key_by_its_first_value() {
    let (authority, broker) = serving_broker().await;
    let depth = depth_under_a_repeated_argument(&authority, "guest", "guest", "/").await;
    assert_eq!(depth, 1);
    broker.check_invariants().expect("broker-mem bookkeeping");
}

#[tokio::test]
async fn rabbitmq_takes_a_repeated_argument_key_by_its_first_value() {
    let Some(vhost) = RabbitVhost::create("rabbitmq_repeated_argument")
        .await
        .expect("vhost")
    else {
        return;
    };
    let (authority, user, password) = login(&vhost);
    let depth = depth_under_a_repeated_argument(authority, user, password, vhost.name()).await;
    vhost.delete().await.expect("delete vhost");
    assert_eq!(depth, 1);
}

/// A `start-ok` with a wrong password whose capabilities name `authentication_failure_close`
/// twice: true, then false (amq-protocol's encoder cannot write a key twice).
fn start_ok_announcing_twice() -> Vec<u8> {
    let capability = |value: u8| {
        let name = b"authentication_failure_close";
        [
            &[u8::try_from(name.len()).unwrap()][..],
            name,
            b"t",
            &[value],
        ]
        .concat()
    };
    let capabilities = sized(&[capability(1), capability(0)].concat());
    let client_properties = sized(&[&b"\x0ccapabilitiesF"[..], &capabilities].concat());
    let payload = [
        &b"\x00\x0a\x00\x0b"[..],
        &client_properties,
        b"\x05PLAIN",
        &sized(b"\0guest\0wrong"),
        b"\x05en_US",
    ]
    .concat();
    frame(1, 0, &payload)
}

/// A `queue.declare` whose arguments hold a `U` value, which RabbitMQ's table parser has no
/// clause for.
fn declare_with_a_u_value() -> Vec<u8> {
    frame(
        1,
        1,
        b"\x00\x32\x00\x0a\x00\x00\x02ua\x00\x00\x00\x00\x05\x01aU\x00\x07",
    )
}

/// A table that hides its depth behind a value RabbitMQ cannot read (a `U`, which amq-protocol
/// takes and then parses on past, into the nesting), and a table in a `connection.start` a
/// client sends (a server's method, which amq-protocol parses too), are refused before
/// amq-protocol sees them; either aborted the process with a stack overflow before.
#[tokio::test]
async fn a_deep_table_behind_an_unreadable_value_or_in_a_servers_method_is_refused() {
    let (authority, broker) = serving_broker().await;
    let deep = nested_table(20_000);
    let mut entries = vec![1, b'a', b'U', 0, 0];
    entries.extend_from_slice(&deep[4..]);
    let mut hidden = u32::try_from(entries.len()).unwrap().to_be_bytes().to_vec();
    hidden.extend(entries);
    assert!(hidden.len() < FRAME_MAX as usize - 100);

    let mut raw = Raw::open(&authority, "guest", "guest", "/", Stage::ChannelOpen).await;
    let declare = [&[0, 50, 0, 10, 0, 0, 1, b'q', 0][..], &hidden].concat();
    raw.write(&frame(1, 1, &declare)).await;
    match raw.answer(&Answer::Dropped).await {
        Answer::Closed(501, text, 50, 10)
            if text.starts_with("FRAME_ERROR - cannot decode <<0,0,1,113,0,0,1,") => {}
        other => panic!("expected 501 cannot decode, got {other:?}"),
    }

    let mut raw = Raw::open(&authority, "guest", "guest", "/", Stage::ChannelOpen).await;
    let start = [
        &[0, 10, 0, 10, 0, 9][..],
        &deep,
        &[0, 0, 0, 5],
        b"PLAIN",
        &[0, 0, 0, 5],
        b"en_US",
    ]
    .concat();
    raw.write(&frame(1, 0, &start)).await;
    let too_deep = closed(
        501,
        "FRAME_ERROR - a field table nests deeper than 64 levels",
        10,
        10,
    );
    assert_eq!(raw.answer(&too_deep).await, too_deep);

    still_serving_with_no_queue_q(&authority, &broker).await;
}

/// RabbitMQ's reader crashes on a method table it cannot read and drops the connection without
/// a word; broker-mem answers 501 (a listed difference: the peer is told why), where
/// amq-protocol's parser would have taken the `U`.
#[tokio::test]
async fn broker_mem_refuses_a_method_table_rabbitmq_cannot_read() {
    let (authority, broker) = serving_broker().await;
    let mut raw = Raw::open(&authority, "guest", "guest", "/", Stage::ChannelOpen).await;
    raw.write(&declare_with_a_u_value()).await;
    let refused = closed(
        501,
        "FRAME_ERROR - cannot decode <<0,0,2,117,97,0,0,0,0,5,1,97,85,0,7>>",
        50,
        10,
    );
    assert_eq!(raw.answer(&refused).await, refused);
    assert_eq!(broker.queue_depth("ua"), None);
}

#[tokio::test]
async fn rabbitmq_drops_a_connection_whose_method_table_it_cannot_read() {
    let Some(vhost) = RabbitVhost::create("rabbitmq_method_table_u")
        .await
        .expect("vhost")
    else {
        return;
    };
    let (authority, user, password) = login(&vhost);
    let mut raw = Raw::open(authority, user, password, vhost.name(), Stage::ChannelOpen).await;
    raw.write(&declare_with_a_u_value()).await;
    let answer = raw.answer(&Answer::Dropped).await;
    vhost.delete().await.expect("delete vhost");
    assert_eq!(answer, Answer::Dropped);
}
