//! Raw AMQP frames for the wire tests: encoding one, and reading the next from a stream.

use std::time::Duration;

use amq_protocol::frame::{AMQPFrame, WriteContext, gen_frame, parse_frame};
use tokio::io::{AsyncRead, AsyncReadExt};

pub fn encode(frame: &AMQPFrame) -> Vec<u8> {
    gen_frame(frame)(WriteContext::from(Vec::new()))
        .expect("encode")
        .write
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
