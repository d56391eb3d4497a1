//! Raw AMQP frames for the wire tests: encoding one, and reading the next from a stream.

use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use amq_protocol::protocol::{AMQPClass, connection};
use amq_protocol::types::{AMQPValue, FieldTable, LongString};
use tokio::io::{AsyncRead, AsyncReadExt};

pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("encode")
        .write
}

/// `start-ok` for guest with `password` (PLAIN), announcing `capabilities` (true), as clients
/// announce the ones that change what a server sends.
pub fn start_ok(password: &str, capabilities: &[&str]) -> Vec<u8> {
    let mut announced = FieldTable::default();
    for &capability in capabilities {
        announced.insert(capability.into(), AMQPValue::Boolean(true));
    }
    let mut client_properties = FieldTable::default();
    client_properties.insert("capabilities".into(), AMQPValue::FieldTable(announced));
    let start_ok = connection::StartOk {
        client_properties,
        mechanism: "PLAIN".into(),
        response: LongString::from(format!("\0guest\0{password}")),
        locale: "en_US".into(),
    };
    encode(&AMQPFrame::Method(
        0,
        AMQPClass::Connection(connection::AMQPMethod::StartOk(start_ok)),
    ))
}

/// The next frame from `stream`, with `buffer` holding what was read past the last one; None
/// at EOF, on a read error, or after `wait` of silence.
pub async fn next_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    wait: Duration,
) -> Option<AMQPFrame> {
    loop {
        if let Ok((rest, frame)) = parse_frame(&buffer[..]) {
            let used = buffer.len() - rest.len();
            buffer.drain(..used);
            return Some(frame);
        }
        let mut chunk = vec![0; 65536];
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// The next frame from `stream` as bytes, unparsed: its type, channel and payload. None at EOF,
/// on a read error, or after `wait` of silence.
#[allow(dead_code)] // each test binary that includes this module uses a part of it
pub async fn next_raw_frame<S: AsyncRead + Unpin>(
    stream: &mut S,
    buffer: &mut Vec<u8>,
    wait: Duration,
) -> Option<(u8, u16, Vec<u8>)> {
    loop {
        if buffer.len() >= 7 {
            let size = u32::from_be_bytes([buffer[3], buffer[4], buffer[5], buffer[6]]) as usize;
            if buffer.len() >= 8 + size {
                let kind = buffer[0];
                let channel = u16::from_be_bytes([buffer[1], buffer[2]]);
                let payload = buffer[7..7 + size].to_vec();
                buffer.drain(..8 + size);
                return Some((kind, channel, payload));
            }
        }
        let mut chunk = vec![0; 65536];
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buffer.extend_from_slice(&chunk[..n]),
            _ => return None,
        }
    }
}

/// A field table whose one value (key `k`) is `levels` arrays and tables inside one another,
/// in turn, around a void: bytes, built outside in, so a deep one costs no more than its size.
#[allow(dead_code)] // each test binary that includes this module uses a part of it
pub fn nested_table(levels: usize) -> Vec<u8> {
    // Each level's content length, innermost first: an array adds its letter and size, a
    // table those and its key.
    let mut lengths = vec![1_u32]; // the void
    for level in 0..levels {
        let added = if level % 2 == 0 { 5 } else { 7 };
        lengths.push(lengths[level] + added);
    }
    let mut bytes = (lengths[levels] + 2).to_be_bytes().to_vec();
    bytes.extend([1, b'k']);
    for level in (0..levels).rev() {
        if level % 2 == 0 {
            bytes.push(b'A');
            bytes.extend(lengths[level].to_be_bytes());
        } else {
            bytes.push(b'F');
            bytes.extend((lengths[level] + 2).to_be_bytes());
            bytes.extend([1, b'k']);
        }
    }
    bytes.push(b'V');
    bytes
}
