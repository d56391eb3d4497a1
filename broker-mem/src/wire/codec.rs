//! Frames in and out. The byte buffer and its limits live here, so the session never sees
//! bytes: it gets whole frames, or a hard error that says what was wrong with them.
//!
//! Method and content-header frames go through amq-protocol's parser; body and heartbeat frames
//! are cut out by hand, because they are the bulk of the traffic and need no parsing.

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::constants::{
    FRAME_BODY, FRAME_END, FRAME_HEADER, FRAME_HEARTBEAT, FRAME_METHOD,
};

/// The protocol header a 0-9-1 client opens with.
pub(crate) const PROTOCOL_HEADER: [u8; 8] = *b"AMQP\x00\x00\x09\x01";
/// Frame type, channel and payload size.
const FRAME_HEADER_BYTES: usize = 7;
/// Header plus the end byte: what a frame adds to its payload.
pub(crate) const FRAME_OVERHEAD_BYTES: usize = FRAME_HEADER_BYTES + 1;

/// A frame as the session handles it.
#[derive(Debug)]
pub(crate) enum Inbound {
    /// A method or content header, parsed.
    Frame(Box<AMQPFrame>),
    /// A content body (not copied into an `AMQPFrame`).
    Body(u16, Vec<u8>),
    /// A heartbeat on channel 0.
    Heartbeat,
}

/// What made a frame unacceptable: a hard error code (501 FRAME_ERROR, 502 SYNTAX_ERROR) and
/// why.
#[derive(Debug)]
pub(crate) struct BadFrame {
    pub code: u16,
    pub text: String,
}

/// Takes one frame from the front of `buffer`. `Ok(None)` means more bytes are needed; the
/// `usize` is how many bytes the frame used. Never asks for more than `frame_max_bytes`.
pub(crate) fn take_frame(
    buffer: &[u8],
    frame_max_bytes: u32,
) -> Result<Option<(Inbound, usize)>, BadFrame> {
    if buffer.len() < FRAME_HEADER_BYTES {
        return Ok(None);
    }
    let kind = buffer[0];
    let channel = u16::from_be_bytes([buffer[1], buffer[2]]);
    let size = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]);
    if !matches!(
        kind,
        FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT
    ) {
        return Err(BadFrame {
            code: 501,
            text: format!("FRAME_ERROR - unknown frame type {kind}"),
        });
    }
    let payload_max = frame_max_bytes as usize - FRAME_OVERHEAD_BYTES;
    if size as usize > payload_max {
        return Err(BadFrame {
            code: 501,
            text: format!(
                "FRAME_ERROR - frame of {size} payload bytes exceeds the negotiated frame_max of {frame_max_bytes} bytes"
            ),
        });
    }
    let total = FRAME_OVERHEAD_BYTES + size as usize;
    if buffer.len() < total {
        return Ok(None);
    }
    if buffer[total - 1] != FRAME_END {
        return Err(BadFrame {
            code: 501,
            text: format!(
                "FRAME_ERROR - frame end byte is {:#04x}, expected {FRAME_END:#04x}",
                buffer[total - 1]
            ),
        });
    }
    let payload = &buffer[FRAME_HEADER_BYTES..total - 1];
    let inbound = match kind {
        FRAME_BODY => Inbound::Body(channel, payload.to_vec()),
        FRAME_HEARTBEAT if channel == 0 => Inbound::Heartbeat,
        FRAME_HEARTBEAT => {
            return Err(BadFrame {
                code: 501,
                text: format!("FRAME_ERROR - heartbeat on channel {channel}"),
            });
        }
        FRAME_METHOD if prefetch_size(payload).is_some_and(|size| size != 0) => {
            // amq-protocol's parser drops basic.qos's prefetch-size; RabbitMQ refuses any but
            // 0 with a connection error, so it is read here, before parsing.
            let size = prefetch_size(payload).unwrap_or_default();
            return Err(BadFrame {
                code: 540,
                text: format!("NOT_IMPLEMENTED - prefetch_size!=0 ({size})"),
            });
        }
        _ => match parse_frame(&buffer[..total]) {
            Ok((_, frame)) => Inbound::Frame(Box::new(frame)),
            Err(error) => {
                return Err(BadFrame {
                    code: 502,
                    text: format!(
                        "SYNTAX_ERROR - cannot parse frame on channel {channel}: {error}"
                    )
                    .chars()
                    .take(200)
                    .collect(),
                });
            }
        },
    };
    Ok(Some((inbound, total)))
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
