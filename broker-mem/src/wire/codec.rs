//! Frames in and out. The byte buffer and its limits live here, so the session never sees
//! bytes: it gets whole frames, or a hard error that says what was wrong with them.
//!
//! Method frames go through amq-protocol's parser; content headers through `content`, which
//! keeps a header table's order; body and heartbeat frames are cut out by hand, because they
//! are the bulk of the traffic and need no parsing.

use crate::message::{FieldTable, Properties, erlang_binary, erlang_bytes};
use crate::wire::content::{
    NESTING_MAX, TableCheck, decode_properties, method_arguments, method_table_check, put_table,
};
use crate::wire::layout::{malformed_short_string, publish_with_any_bytes};
use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::constants::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
};
use amq_protocol::protocol::{AMQPClass, basic};

/// The protocol header a 0-9-1 client opens with.
pub(crate) const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// Frame type, channel and payload size.
const FRAME_HEADER_BYTES: usize = 7;
/// Header plus the end byte: what a frame adds to its payload.
pub(crate) const FRAME_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + 1;

/// A frame as the session handles it.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A method, parsed; with its arguments table in wire order, where it has one (the parsed
    /// copy's table is sorted).
    Frame(Box<AMQPFrame>, Option<Box<FieldTable>>),
    /// A content header. Whether it counts as one depends on the channel's state, as in
    /// RabbitMQ's command assembler, so the session judges it: see [`HeaderFrame`].
    Header(Box<HeaderFrame>),
    /// A content body (not copied into an `AMQPFrame`).
    Body(u16, Vec<u8>),
    /// A heartbeat on channel 0.
    Heartbeat,
}

/// A content-header frame as RabbitMQ's assembler reads it: class and weight first, the
/// properties only when the content is complete.
#[derive(Debug)]
pub(crate) struct HeaderFrame {
    pub channel: u16,
    pub class_id: u16,
    /// RabbitMQ takes a header with any weight but 0 for some other frame.
    pub weight: u16,
    /// The body size it announces, read whether or not the properties decode.
    pub body_size: u64,
    /// None when they do not decode: RabbitMQ answers that with 541 INTERNAL_ERROR, once the
    /// content is complete.
    pub properties: Option<Properties>,
}

/// What made a frame unacceptable: a hard error code (501 FRAME_ERROR, 505 UNEXPECTED_FRAME,
/// 540 NOT_IMPLEMENTED) with RabbitMQ's text.
#[derive(Debug)]
pub(crate) struct BadFrame {
    pub code: u16,
    pub text: String,
    /// The bad frame's length when it was read whole: the reader skips it and can still find
    /// the peer's `close-ok`. None when the framing itself is lost (a size over `frame_max`, a
    /// wrong end byte).
    pub skip: Option<usize>,
    /// The class and method ids the close names: those of a method whose arguments do not
    /// decode, else 0.
    pub during: (u16, u16),
}

/// Takes one frame from the front of `buffer`. `Ok(None)` means more bytes are needed; the
/// `usize` is how many bytes the frame used. Never asks for more than `frame_max_bytes` plus
/// the frame's overhead.
///
/// Checks in RabbitMQ's order (rabbit_reader): the size against `frame_max` as soon as the
/// header is in, then (with the whole frame in) the end byte, then the type and payload.
///
/// Before `connection.open` (`open` false) a frame on any channel but 0 is refused unread,
/// whatever it is (505), as RabbitMQ's reader refuses it.
pub(crate) fn take_frame(
    buffer: &[u8],
    frame_max_bytes: u32,
    open: bool,
) -> Result<Option<(Inbound, usize)>, BadFrame> {
    if buffer.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let kind = buffer[0];
    let channel = u16::from_be_bytes([buffer[1], buffer[2]]);
    let size = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]);
    // RabbitMQ takes payloads up to frame_max itself, not frame_max less the overhead: its
    // "fudge" for clients that count the overhead in (?FRAME_SIZE_FUDGE).
    if size > frame_max_bytes {
        let reason = format!(
            "{{frame_too_large,{size},{}}}",
            frame_max_bytes as usize - FRAME_OVERHEAD_BYTES
        );
        return Err(frame_error(kind, &[], &reason, None));
    }
    let total = FRAME_OVERHEAD_BYTES + size as usize;
    if buffer.len() < total {
        return Ok(None);
    }
    let payload = &buffer[FRAME_HEADER_BYTES..total - 1];
    if buffer[total - 1] != FRAME_END {
        let reason = format!("{{invalid_frame_end_marker,{}}}", buffer[total - 1]);
        return Err(frame_error(kind, payload, &reason, None));
    }
    // A frame where none of its kind may come: RabbitMQ's 505 with the frame's bytes.
    let unexpected = || BadFrame {
        code: 505,
        text: Snippet::of(kind, payload).unexpected(),
        skip: Some(total),
        during: (0, 0),
    };
    if !open && channel != 0 {
        return Err(unexpected());
    }
    let unknown = || frame_error(kind, payload, "unknown_frame", Some(total));
    let inbound = match kind {
        // Content on channel 0 is no channel's business, in any connection state
        // (rabbit_reader: a header is read far enough to be one first).
        FRAME_BODY if channel == 0 => return Err(unexpected()),
        FRAME_BODY => Inbound::Body(channel, payload.to_vec()),
        FRAME_HEARTBEAT if !payload.is_empty() => return Err(unknown()),
        FRAME_HEARTBEAT if channel == 0 => Inbound::Heartbeat,
        FRAME_HEARTBEAT => return Err(unexpected()),
        FRAME_METHOD if payload.len() < METHOD_IDS_BYTES => return Err(unknown()),
        FRAME_METHOD if prefetch_size(payload).is_some_and(|size| size != 0) => {
            // amq-protocol's parser drops basic.qos's prefetch-size; RabbitMQ refuses any but
            // 0 with a connection error, so it is read here, before parsing.
            let size = prefetch_size(payload).unwrap_or_default();
            return Err(BadFrame {
                code: 540,
                text: format!("NOT_IMPLEMENTED - prefetch_size!=0 ({size})"),
                skip: Some(total),
                during: (60, 10),
            });
        }
        // amq-protocol's parser recurses once per level of a nested table, without a limit.
        FRAME_METHOD if method_table_check(payload) == TableCheck::TooDeep => {
            return Err(BadFrame {
                code: 501,
                text: format!("FRAME_ERROR - a field table nests deeper than {NESTING_MAX} levels"),
                skip: Some(total),
                during: (
                    u16::from_be_bytes([payload[0], payload[1]]),
                    u16::from_be_bytes([payload[2], payload[3]]),
                ),
            });
        }
        FRAME_METHOD => {
            let ids = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            // Arguments that do not decode, or (where RabbitMQ's reader crashes and drops the
            // connection) class and method ids that name no method.
            let cannot_decode = || BadFrame {
                code: 501,
                text: format!(
                    "FRAME_ERROR - cannot decode {}",
                    erlang_bytes(&payload[METHOD_IDS_BYTES..])
                ),
                skip: Some(total),
                during: ids,
            };
            // A table RabbitMQ cannot read (a `U` value, which amq-protocol takes) crashes its
            // reader; it is refused here before amq-protocol parses it, since what follows an
            // unreadable value was never checked for depth.
            let table = method_table_check(payload);
            if table == TableCheck::Unreadable {
                return Err(cannot_decode());
            }
            match parse_frame(&buffer[..total]) {
                // The table as RabbitMQ reads it.
                Ok((_, frame)) if table == TableCheck::Fine => match method_arguments(payload) {
                    Some((arguments, _)) => {
                        Inbound::Frame(Box::new(frame), Some(Box::new(arguments)))
                    }
                    None => return Err(cannot_decode()),
                },
                Ok((_, frame)) => Inbound::Frame(Box::new(frame), None),
                // amq-protocol refuses short strings and table keys that are not UTF-8, and
                // RabbitMQ does not always (see `layout`).
                Err(_) => {
                    if let Some(publish) = publish_with_any_bytes(payload) {
                        let publish = AMQPClass::Basic(basic::AMQPMethod::Publish(publish));
                        Inbound::Frame(Box::new(AMQPFrame::Method(channel, publish)), None)
                    } else if malformed_short_string(payload) {
                        // On channel 0 rabbit_reader names the method; on a channel, not.
                        let during = if channel == 0 { ids } else { (0, 0) };
                        return Err(BadFrame {
                            code: 501,
                            text: "FRAME_ERROR - Malformed UTF-8 in shortstr".to_owned(),
                            skip: Some(total),
                            during,
                        });
                    } else if let Some((frame, arguments)) =
                        with_keys_of_any_bytes(channel, payload)
                    {
                        Inbound::Frame(Box::new(frame), Some(Box::new(arguments)))
                    } else {
                        return Err(cannot_decode());
                    }
                }
            }
        }
        FRAME_HEADER if payload.len() < HEADER_FIXED_BYTES => return Err(unknown()),
        FRAME_HEADER if channel == 0 => return Err(unexpected()),
        FRAME_HEADER => Inbound::Header(Box::new(HeaderFrame {
            channel,
            class_id: u16::from_be_bytes([payload[0], payload[1]]),
            weight: u16::from_be_bytes([payload[2], payload[3]]),
            body_size: u64::from_be_bytes(payload[4..12].try_into().unwrap_or_default()),
            properties: decode_properties(payload),
        })),
        _ => return Err(unknown()),
    };
    Ok(Some((inbound, total)))
}

/// A method whose table has a key that is not UTF-8, which RabbitMQ takes (its keys are
/// binaries) and amq-protocol's parser refuses: parsed with the table as read here (the key
/// with replacement characters) in its place. None when that does not parse either.
fn with_keys_of_any_bytes(channel: u16, payload: &[u8]) -> Option<(AMQPFrame, FieldTable)> {
    let (arguments, span) = method_arguments(payload)?;
    let mut patched = payload[..span.start].to_vec();
    put_table(&mut patched, &arguments);
    patched.extend_from_slice(&payload[span.end..]);
    let mut frame = vec![FRAME_METHOD];
    frame.extend_from_slice(&channel.to_be_bytes());
    frame.extend_from_slice(&u32::try_from(patched.len()).ok()?.to_be_bytes());
    frame.extend_from_slice(&patched);
    frame.push(FRAME_END);
    let (_, parsed) = parse_frame(frame.as_slice()).ok()?;
    Some((parsed, arguments))
}

/// A method payload's class and method ids.
const METHOD_IDS_BYTES: usize = 4;
/// A content header's class, weight and body size.
const HEADER_FIXED_BYTES: usize = 12;

/// RabbitMQ's 501 for a frame it cannot take (rabbit_reader:frame_error): the frame's type,
/// its payload (see [`Snippet`]), and the reason.
fn frame_error(kind: u8, payload: &[u8], reason: &str, skip: Option<usize>) -> BadFrame {
    BadFrame {
        code: 501,
        text: format!(
            "FRAME_ERROR - {}: {reason}",
            Snippet::of(kind, payload).describe()
        ),
        skip,
        during: (0, 0),
    }
}

/// A frame's type and the start of its payload, kept for RabbitMQ's error texts, which show
/// the payload's first 16 bytes (rabbit_reader:payload_snippet).
#[derive(Debug, Clone, Copy)]
struct Snippet {
    kind: u8,
    bytes: [u8; SNIPPET_BYTES],
    len: u8,
    /// The payload had more than [`SNIPPET_BYTES`].
    cut: bool,
}

const SNIPPET_BYTES: usize = 16;

impl Snippet {
    fn of(kind: u8, payload: &[u8]) -> Snippet {
        let len = payload.len().min(SNIPPET_BYTES);
        let mut bytes = [0; SNIPPET_BYTES];
        bytes[..len].copy_from_slice(&payload[..len]);
        Snippet {
            kind,
            bytes,
            len: len as u8,
            cut: payload.len() > SNIPPET_BYTES,
        }
    }

    /// `type 1, all octets = <<0,20>>`, or `first 16 octets` for a longer payload.
    fn describe(&self) -> String {
        let which = if self.cut { "first 16" } else { "all" };
        let bytes = &self.bytes[..usize::from(self.len)];
        format!(
            "type {}, {which} octets = {}",
            self.kind,
            erlang_binary(bytes)
        )
    }

    /// RabbitMQ's text for a frame of a kind that may not come where it came (505).
    fn unexpected(&self) -> String {
        format!("UNEXPECTED_FRAME - {}", self.describe())
    }
}

/// The prefetch-size of a `basic.qos` method payload (class 60, method 10); None for any
/// other method.
fn prefetch_size(payload: &[u8]) -> Option<u32> {
    match payload {
        [0, 60, 0, 10, a, b, c, d, ..] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => None,
    }
}

/// Appends a frame to `out`. Generation of a frame we built cannot fail except for a bug (an
/// over-long string is caught before); if it does, nothing is appended and it is logged.
pub(crate) fn put_frame(out: &mut Vec<u8>, frame: &AMQPFrame) {
    match gen_frame(frame)(WriteContext::from(Vec::with_capacity(128))) {
        Ok(context) => out.extend_from_slice(&context.write),
        Err(error) => {
            tracing::error!(%error, %frame, "cannot serialise frame");
            debug_assert!(false, "cannot serialise frame {frame}: {error}");
        }
    }
}

/// Appends a body frame without copying the body into an `AMQPFrame` first.
pub(crate) fn put_body(out: &mut Vec<u8>, channel: u16, body: &[u8]) {
    out.push(FRAME_BODY);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out.push(FRAME_END);
}

/// Appends a heartbeat frame.
pub(crate) fn put_heartbeat(out: &mut Vec<u8>) {
    out.extend_from_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// `text` cut to fit an AMQP short string (255 bytes) on a character boundary.
pub(crate) fn short(text: &str) -> String {
    const SHORT_STRING_BYTES_MAX: usize = 255;
    crate::error::within(text, SHORT_STRING_BYTES_MAX).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each text as RabbitMQ 3.10 sent it for the same payload (probed over a raw socket).
    #[test]
    fn payloads_print_as_rabbitmq_prints_them() {
        let unknown = |payload: &[u8]| frame_error(9, payload, "unknown_frame", None).text;
        assert_eq!(
            unknown(b"ab"),
            "FRAME_ERROR - type 9, all octets = <<\"ab\">>: unknown_frame"
        );
        assert_eq!(
            unknown(b""),
            "FRAME_ERROR - type 9, all octets = <<>>: unknown_frame"
        );
        assert_eq!(
            unknown(&[1, 2]),
            "FRAME_ERROR - type 9, all octets = <<1,2>>: unknown_frame"
        );
        assert_eq!(
            unknown(b"\n\t\"\\A"),
            r#"FRAME_ERROR - type 9, all octets = <<"\n\t\"\\A">>: unknown_frame"#
        );
        assert_eq!(
            unknown(&[27, 11, 12, 8]),
            r#"FRAME_ERROR - type 9, all octets = <<"\e\v\f\b">>: unknown_frame"#
        );
        assert_eq!(
            unknown(&[127]),
            "FRAME_ERROR - type 9, all octets = <<127>>: unknown_frame"
        );
        // Latin-1 bytes go as they are, when they happen to be UTF-8 ("é" is C3 A9)...
        assert_eq!(
            unknown("é".as_bytes()),
            "FRAME_ERROR - type 9, all octets = <<\"é\">>: unknown_frame"
        );
        // ...and "€" (E2 82 AC) is not printable Latin-1 (0x82 is a control).
        assert_eq!(
            unknown("€".as_bytes()),
            "FRAME_ERROR - type 9, all octets = <<226,130,172>>: unknown_frame"
        );
        assert_eq!(
            unknown(b"ABCDEFGHIPQRSTUVWXY"),
            "FRAME_ERROR - type 9, first 16 octets = <<\"ABCDEFGHIPQRSTUV\">>: unknown_frame"
        );
    }

    fn frame(kind: u8, channel: u16, payload: &[u8], end: u8) -> Vec<u8> {
        let mut bytes = vec![kind];
        bytes.extend(channel.to_be_bytes());
        bytes.extend(u32::try_from(payload.len()).unwrap().to_be_bytes());
        bytes.extend(payload);
        bytes.push(end);
        bytes
    }

    fn refusal(bytes: &[u8]) -> (u16, String, Option<usize>) {
        match take_frame(bytes, 4096, true) {
            Err(bad) => (bad.code, bad.text, bad.skip),
            Ok(other) => panic!("taken: {other:?}"),
        }
    }

    #[test]
    fn frames_are_refused_in_rabbitmqs_order_with_its_texts() {
        // Over frame_max: refused from the header alone, framing lost.
        let mut big = vec![9, 0, 1];
        big.extend(4097u32.to_be_bytes());
        let text = "FRAME_ERROR - type 9, all octets = <<>>: {frame_too_large,4097,4088}";
        assert_eq!(refusal(&big), (501, text.to_owned(), None));
        // frame_max itself passes (RabbitMQ's fudge).
        let body = frame(FRAME_BODY, 1, &[7; 4096], FRAME_END);
        assert!(matches!(
            take_frame(&body, 4096, true),
            Ok(Some((Inbound::Body(1, _), _)))
        ));
        // The end byte before the type.
        let text = "FRAME_ERROR - type 9, all octets = <<0,20>>: {invalid_frame_end_marker,0}";
        assert_eq!(
            refusal(&frame(9, 1, &[0, 20], 0)),
            (501, text.to_owned(), None)
        );
        let text = "FRAME_ERROR - type 1, all octets = <<0,20>>: unknown_frame";
        assert_eq!(
            refusal(&frame(1, 1, &[0, 20], FRAME_END)),
            (501, text.to_owned(), Some(10))
        );
        let text = "FRAME_ERROR - cannot decode <<65,65,65,65>>";
        let declare = frame(1, 1, &[0, 50, 0, 10, 65, 65, 65, 65], FRAME_END);
        assert_eq!(refusal(&declare), (501, text.to_owned(), Some(16)));
        let text = "FRAME_ERROR - type 2, all octets = <<0>>: unknown_frame";
        assert_eq!(
            refusal(&frame(2, 1, &[0], FRAME_END)),
            (501, text.to_owned(), Some(9))
        );
        let text = "FRAME_ERROR - type 8, all octets = <<\"xx\">>: unknown_frame";
        assert_eq!(
            refusal(&frame(8, 0, b"xx", FRAME_END)),
            (501, text.to_owned(), Some(10))
        );
        // Before connection.open, a frame on a channel is refused unread, whatever it is.
        let early = take_frame(&frame(1, 1, &[0, 20], FRAME_END), 4096, false);
        let text = "UNEXPECTED_FRAME - type 1, all octets = <<0,20>>";
        assert!(matches!(early, Err(BadFrame { code: 505, text: t, .. }) if t == text));
        let text = "UNEXPECTED_FRAME - type 8, all octets = <<>>";
        assert_eq!(
            refusal(&frame(8, 1, b"", FRAME_END)),
            (505, text.to_owned(), Some(8))
        );
    }
}
