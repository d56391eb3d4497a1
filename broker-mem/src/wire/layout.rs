//! The fields of the methods a client sends, in order, as RabbitMQ's generated decoder
//! (`rabbit_framing_amqp_0_9_1`) reads them. amq-protocol's parser refuses a frame without
//! saying why; RabbitMQ answers some of those differently, so the codec asks here:
//!
//! - a short string that is not UTF-8, in a method without content, is 501 `FRAME_ERROR -
//!   Malformed UTF-8 in shortstr` (the decoder checks each one after the frame's shape;
//!   probed on 3.10.8: queue, exchange and consumer names, binding keys, a close's text),
//!   naming class and method 0 on a channel and the method itself on channel 0, where
//!   rabbit_reader fills the method in;
//! - `basic.publish`, which carries content, is not checked ("for speed", says RabbitMQ's
//!   code generator): a routing key that is not UTF-8 is taken (probed).

use amq_protocol::protocol::basic;

/// One field, or one octet of packed bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Short,
    Long,
    Bits,
    ShortString,
    LongString,
    Table,
}

use Field::{Bits, Long, LongString, Short, ShortString, Table};

/// The fields of a method a client sends, by class and method id; None for the rest (methods
/// only a server sends, and those without fields).
fn fields(class_id: u16, method_id: u16) -> Option<&'static [Field]> {
    let fields: &[Field] = match (class_id, method_id) {
        (10, 11) => &[Table, ShortString, LongString, ShortString], // connection.start-ok
        (10, 21) => &[LongString],                                  // connection.secure-ok
        (10, 31) => &[Short, Long, Short],                          // connection.tune-ok
        (10, 40) => &[ShortString, ShortString, Bits],              // connection.open
        (10, 50) | (20, 40) => &[Short, ShortString, Short, Short], // connection/channel.close
        (10, 70) => &[LongString, ShortString],                     // connection.update-secret
        (20, 10) => &[ShortString],                                 // channel.open
        (40, 10) => &[Short, ShortString, ShortString, Bits, Table], // exchange.declare
        (40, 20) => &[Short, ShortString, Bits],                    // exchange.delete
        // exchange.bind and unbind, queue.bind
        (40, 30) | (40, 40) | (50, 20) => {
            &[Short, ShortString, ShortString, ShortString, Bits, Table]
        }
        (50, 10) => &[Short, ShortString, Bits, Table], // queue.declare
        (50, 30) | (50, 40) => &[Short, ShortString, Bits], // queue.purge, queue.delete
        (50, 50) => &[Short, ShortString, ShortString, ShortString, Table], // queue.unbind
        (60, 20) => &[Short, ShortString, ShortString, Bits, Table], // basic.consume
        (60, 30) => &[ShortString, Bits],               // basic.cancel
        (60, 40) => &[Short, ShortString, ShortString, Bits], // basic.publish
        (60, 70) => &[Short, ShortString, Bits],        // basic.get
        _ => return None,
    };
    Some(fields)
}

/// A method's class and method ids, and each of its fields with its bytes.
type Split<'a> = (u16, u16, Vec<(Field, &'a [u8])>);

/// A method payload (class and method ids first) cut into its fields: each field's bytes, or
/// None when the payload is not exactly that shape (too short, or bytes left over).
fn split(payload: &[u8]) -> Option<Split<'_>> {
    let ids = payload.get(..4)?;
    let (class_id, method_id) = (
        u16::from_be_bytes([ids[0], ids[1]]),
        u16::from_be_bytes([ids[2], ids[3]]),
    );
    let mut rest = &payload[4..];
    let mut split = Vec::new();
    for &field in fields(class_id, method_id)? {
        let (prefix, width): (usize, usize) = match field {
            Bits => (0, 1),
            Short => (0, 2),
            Long => (0, 4),
            ShortString => (1, usize::from(*rest.first()?)),
            LongString | Table => {
                let size = rest.get(..4)?;
                let size = u32::from_be_bytes([size[0], size[1], size[2], size[3]]);
                (4, usize::try_from(size).ok()?)
            }
        };
        let end = prefix.checked_add(width)?;
        let bytes = rest.get(prefix..end)?;
        rest = &rest[end..];
        split.push((field, bytes));
    }
    rest.is_empty().then_some((class_id, method_id, split))
}

/// Whether RabbitMQ refuses this method for a short string that is not UTF-8 (see the
/// module's docs): it has the method's shape, carries no content, and a short string fails
/// the check before any table fails to decode (RabbitMQ checks the fields in order).
pub(crate) fn malformed_short_string(payload: &[u8]) -> bool {
    let Some((class_id, method_id, fields)) = split(payload) else {
        return false;
    };
    if (class_id, method_id) == (60, 40) {
        return false;
    }
    for (field, bytes) in fields {
        match field {
            ShortString if std::str::from_utf8(bytes).is_err() => return true,
            Table if super::content::table_entries(bytes).is_none() => return false,
            _ => {}
        }
    }
    false
}

/// A `basic.publish` whose exchange or routing key is not UTF-8, which amq-protocol's parser
/// refuses and RabbitMQ takes: read with replacement characters (the engine's names are
/// strings; see the README's differences). None for anything else.
pub(crate) fn publish_with_any_bytes(payload: &[u8]) -> Option<basic::Publish> {
    let (class_id, method_id, fields) = split(payload)?;
    let [(_, _), (_, exchange), (_, routing_key), (_, bits)] = fields.as_slice() else {
        return None;
    };
    if (class_id, method_id) != (60, 40) {
        return None;
    }
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    Some(basic::Publish {
        exchange: text(exchange).into(),
        routing_key: text(routing_key).into(),
        mandatory: bits[0] & 1 != 0,
        immediate: bits[0] & 2 != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: &[u8]) -> Vec<u8> {
        [vec![u8::try_from(t.len()).unwrap()], t.to_vec()].concat()
    }

    #[test]
    fn short_strings_that_are_not_utf8_are_found_in_methods_without_content() {
        let declare = |name: &[u8], table: &[u8]| {
            [&[0, 50, 0, 10, 0, 0][..], &text(name), &[0], table].concat()
        };
        let empty = [0, 0, 0, 0];
        assert!(malformed_short_string(&declare(b"q\xff", &empty)));
        assert!(!malformed_short_string(&declare(b"q", &empty)));
        // The shape comes first: a byte left over is "cannot decode".
        assert!(!malformed_short_string(
            &[declare(b"q\xff", &empty), vec![0]].concat()
        ));
        // A table that does not decode after a bad name: the name is found first.
        let bad_table = [0, 0, 0, 2, 1, 0xff];
        assert!(malformed_short_string(&declare(b"q\xff", &bad_table)));
        // A bad table before a bad string (start-ok: the table comes first).
        let start_ok = [
            &[0, 10, 0, 11][..],
            &bad_table,
            &text(b"\xff"),
            &[0, 0, 0, 0],
            &text(b"en"),
        ]
        .concat();
        assert!(!malformed_short_string(&start_ok));
        let cancel = [&[0, 60, 0, 30][..], &text(b"t\xff"), &[0]].concat();
        assert!(malformed_short_string(&cancel));
        let close = [&[0, 20, 0, 40, 0, 200][..], &text(b"\xfe"), &[0, 0, 0, 0]].concat();
        assert!(malformed_short_string(&close));
    }

    #[test]
    fn a_publish_takes_any_bytes() {
        let publish = [
            &[0, 60, 0, 40, 0, 0][..],
            &text(b"x"),
            &text(b"k\xff"),
            &[1],
        ]
        .concat();
        assert!(!malformed_short_string(&publish));
        let read = publish_with_any_bytes(&publish).expect("a publish");
        assert_eq!(read.exchange.as_str(), "x");
        assert_eq!(read.routing_key.as_str(), "k\u{fffd}");
        assert!(read.mandatory && !read.immediate);
        assert!(publish_with_any_bytes(&[publish.clone(), vec![0]].concat()).is_none());
        assert!(publish_with_any_bytes(&publish[..publish.len() - 1]).is_none());
    }
}
