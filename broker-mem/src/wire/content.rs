//! Content headers (basic properties) read and written here rather than through amq-protocol,
//! whose field tables are sorted maps: RabbitMQ passes a header table on as its publisher wrote
//! it, so a consumer that reads the keys in order (a JavaScript object, a Python dict) sees the
//! publisher's order, and must see it here too.
//!
//! The reading rules are amq-protocol's (the rest of the codec parses with it), so what was
//! accepted before is accepted now: its field-type letters (`U` a short, `L` a long long, as it
//! reads them), short strings that must be UTF-8, the two lowest property flags ignored, bytes
//! after the last property ignored. A key seen twice in one table keeps its first place and its
//! last value.

use bytes::Bytes;

use crate::message::{FieldTable, FieldValue, Properties};
use crate::wire::codec::short;

/// A content header's body size and properties, from the frame's payload; None when the
/// properties do not decode (RabbitMQ answers that with 541 INTERNAL_ERROR).
pub(crate) fn decode_header(payload: &[u8]) -> Option<ContentHeader> {
    let mut reader = Reader(payload);
    let _class_and_weight = reader.take(4)?;
    let body_size = u64::from_be_bytes(reader.take(8)?.try_into().ok()?);
    let flags = reader.u16()?;
    let present = |bit: u16| flags & (1 << (15 - bit)) != 0;
    let mut properties = Properties::default();
    // Each property in the order of its flag, from the highest bit.
    if present(0) {
        properties.content_type = Some(reader.short_string()?);
    }
    if present(1) {
        properties.content_encoding = Some(reader.short_string()?);
    }
    if present(2) {
        properties.headers = Some(reader.table()?);
    }
    if present(3) {
        properties.delivery_mode = Some(reader.u8()?);
    }
    if present(4) {
        properties.priority = Some(reader.u8()?);
    }
    if present(5) {
        properties.correlation_id = Some(reader.short_string()?);
    }
    if present(6) {
        properties.reply_to = Some(reader.short_string()?);
    }
    if present(7) {
        properties.expiration = Some(reader.short_string()?);
    }
    if present(8) {
        properties.message_id = Some(reader.short_string()?);
    }
    if present(9) {
        properties.timestamp = Some(reader.u64()?);
    }
    if present(10) {
        properties.kind = Some(reader.short_string()?);
    }
    if present(11) {
        properties.user_id = Some(reader.short_string()?);
    }
    if present(12) {
        properties.app_id = Some(reader.short_string()?);
    }
    if present(13) {
        properties.cluster_id = Some(reader.short_string()?);
    }
    Some(ContentHeader {
        body_size,
        properties,
    })
}

/// What a content header says about the content to come.
#[derive(Debug)]
pub(crate) struct ContentHeader {
    pub body_size: u64,
    pub properties: Properties,
}

/// Appends a content-header frame for a body of `body_size` bytes. Short strings longer than
/// AMQP allows (255 bytes, only possible from in-process publishers) are cut at a character
/// boundary, as the engine's other texts are.
pub(crate) fn put_header(
    out: &mut Vec<u8>,
    channel: u16,
    class_id: u16,
    body_size: u64,
    properties: &Properties,
) {
    out.push(amq_protocol::protocol::constants::FRAME_HEADER);
    out.extend_from_slice(&channel.to_be_bytes());
    let size_at = out.len();
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&class_id.to_be_bytes());
    out.extend_from_slice(&0_u16.to_be_bytes());
    out.extend_from_slice(&body_size.to_be_bytes());
    let flags_at = out.len();
    out.extend_from_slice(&[0; 2]);
    let mut flags = 0_u16;
    let mut set = |bit: u16| flags |= 1 << (15 - bit);
    let strings = [
        (0, &properties.content_type),
        (1, &properties.content_encoding),
    ];
    for (bit, value) in strings {
        if let Some(value) = value {
            set(bit);
            put_short_string(out, value);
        }
    }
    if let Some(headers) = &properties.headers {
        set(2);
        put_table(out, headers);
    }
    if let Some(mode) = properties.delivery_mode {
        set(3);
        out.push(mode);
    }
    if let Some(priority) = properties.priority {
        set(4);
        out.push(priority);
    }
    let strings = [
        (5, &properties.correlation_id),
        (6, &properties.reply_to),
        (7, &properties.expiration),
        (8, &properties.message_id),
    ];
    for (bit, value) in strings {
        if let Some(value) = value {
            set(bit);
            put_short_string(out, value);
        }
    }
    if let Some(timestamp) = properties.timestamp {
        set(9);
        out.extend_from_slice(&timestamp.to_be_bytes());
    }
    let strings = [
        (10, &properties.kind),
        (11, &properties.user_id),
        (12, &properties.app_id),
        (13, &properties.cluster_id),
    ];
    for (bit, value) in strings {
        if let Some(value) = value {
            set(bit);
            put_short_string(out, value);
        }
    }
    out[flags_at..flags_at + 2].copy_from_slice(&flags.to_be_bytes());
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    out.push(amq_protocol::protocol::constants::FRAME_END);
}

fn put_short_string(out: &mut Vec<u8>, text: &str) {
    let text = short(text);
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

fn put_long_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A table in its order: the size, then each key and value.
fn put_table(out: &mut Vec<u8>, table: &FieldTable) {
    let size_at = out.len();
    out.extend_from_slice(&[0; 4]);
    for (key, value) in table {
        put_short_string(out, key);
        put_value(out, value);
    }
    let size = (out.len() - size_at - 4) as u32;
    out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
}

/// A value with its type letter (RabbitMQ's, as amq-protocol writes them).
fn put_value(out: &mut Vec<u8>, value: &FieldValue) {
    match value {
        FieldValue::Void => out.push(b'V'),
        FieldValue::Bool(v) => out.extend_from_slice(&[b't', u8::from(*v)]),
        FieldValue::I8(v) => out.extend_from_slice(&[b'b', v.to_be_bytes()[0]]),
        FieldValue::U8(v) => out.extend_from_slice(&[b'B', *v]),
        FieldValue::I16(v) => {
            out.push(b's');
            out.extend_from_slice(&v.to_be_bytes());
        }
        FieldValue::U16(v) => {
            out.push(b'u');
            out.extend_from_slice(&v.to_be_bytes());
        }
        FieldValue::I32(v) => {
            out.push(b'I');
            out.extend_from_slice(&v.to_be_bytes());
        }
        FieldValue::U32(v) => {
            out.push(b'i');
            out.extend_from_slice(&v.to_be_bytes());
        }
        FieldValue::I64(v) => {
            out.push(b'l');
            out.extend_from_slice(&v.to_be_bytes());
        }
        FieldValue::F32(v) => {
            out.push(b'f');
            out.extend_from_slice(&v.to_be_bytes());
        }
        FieldValue::F64(v) => {
            out.push(b'd');
            out.extend_from_slice(&v.to_be_bytes());
        }
        FieldValue::Decimal { scale, value } => {
            out.extend_from_slice(&[b'D', *scale]);
            out.extend_from_slice(&value.to_be_bytes());
        }
        FieldValue::String(v) => {
            out.push(b'S');
            put_long_bytes(out, v.as_bytes());
        }
        FieldValue::StringBytes(v) => {
            out.push(b'S');
            put_long_bytes(out, v);
        }
        FieldValue::Bytes(v) => {
            out.push(b'x');
            put_long_bytes(out, v);
        }
        FieldValue::Timestamp(v) => {
            out.push(b'T');
            out.extend_from_slice(&v.to_be_bytes());
        }
        FieldValue::Array(items) => {
            out.push(b'A');
            let size_at = out.len();
            out.extend_from_slice(&[0; 4]);
            for item in items {
                put_value(out, item);
            }
            let size = (out.len() - size_at - 4) as u32;
            out[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
        }
        FieldValue::Table(table) => {
            out.push(b'F');
            put_table(out, table);
        }
    }
}

/// Reads big-endian AMQP values off the front of a byte slice; None when it runs short.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (taken, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(taken)
    }

    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }

    fn u8(&mut self) -> Option<u8> {
        Some(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.array()?))
    }

    fn short_string(&mut self) -> Option<String> {
        let len = self.u8()?;
        let bytes = self.take(usize::from(len))?;
        String::from_utf8(bytes.to_vec()).ok()
    }

    fn long_bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()?;
        self.take(usize::try_from(len).ok()?)
    }

    /// A table, in its order. Nesting is bounded by the frame: each level takes bytes.
    fn table(&mut self) -> Option<FieldTable> {
        let mut entries = Reader(self.long_bytes()?);
        let mut table = FieldTable::new();
        while !entries.0.is_empty() {
            let key = entries.short_string()?;
            let value = entries.value()?;
            table.insert(key, value);
        }
        Some(table)
    }

    fn value(&mut self) -> Option<FieldValue> {
        let value = match self.u8()? {
            b't' => FieldValue::Bool(self.u8()? != 0),
            b'b' => FieldValue::I8(i8::from_be_bytes(self.array()?)),
            b'B' => FieldValue::U8(self.u8()?),
            b's' | b'U' => FieldValue::I16(i16::from_be_bytes(self.array()?)),
            b'u' => FieldValue::U16(self.u16()?),
            b'I' => FieldValue::I32(i32::from_be_bytes(self.array()?)),
            b'i' => FieldValue::U32(self.u32()?),
            b'l' | b'L' => FieldValue::I64(i64::from_be_bytes(self.array()?)),
            b'f' => FieldValue::F32(f32::from_be_bytes(self.array()?)),
            b'd' => FieldValue::F64(f64::from_be_bytes(self.array()?)),
            b'D' => FieldValue::Decimal {
                scale: self.u8()?,
                value: self.u32()?,
            },
            b'S' => {
                let bytes = self.long_bytes()?;
                match std::str::from_utf8(bytes) {
                    Ok(text) => FieldValue::String(text.to_owned()),
                    Err(_) => FieldValue::StringBytes(Bytes::copy_from_slice(bytes)),
                }
            }
            b'A' => {
                let mut items = Reader(self.long_bytes()?);
                let mut values = Vec::new();
                while !items.0.is_empty() {
                    values.push(items.value()?);
                }
                FieldValue::Array(values)
            }
            b'T' => FieldValue::Timestamp(self.u64()?),
            b'F' => FieldValue::Table(self.table()?),
            b'x' => FieldValue::Bytes(Bytes::copy_from_slice(self.long_bytes()?)),
            b'V' => FieldValue::Void,
            _ => return None,
        };
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_payload(properties: &Properties) -> Vec<u8> {
        let mut frame = Vec::new();
        put_header(&mut frame, 1, 60, 5, properties);
        frame[7..frame.len() - 1].to_vec()
    }

    /// Every property and every field type survives a write and a read, and a table keeps its
    /// order, nested tables too.
    #[test]
    fn properties_round_trip_in_order() {
        let nested: FieldTable = FieldTable::from([
            ("z".to_owned(), FieldValue::I8(-1)),
            ("a".to_owned(), FieldValue::Void),
        ]);
        let headers = FieldTable::from([
            ("zeta".to_owned(), FieldValue::Bool(true)),
            ("alpha".to_owned(), FieldValue::U8(200)),
            ("m".to_owned(), FieldValue::I16(-300)),
            ("b".to_owned(), FieldValue::U16(60_000)),
            ("y".to_owned(), FieldValue::I32(-70_000)),
            ("c".to_owned(), FieldValue::U32(4_000_000_000)),
            ("x".to_owned(), FieldValue::I64(-(1 << 40))),
            ("d".to_owned(), FieldValue::F32(0.5)),
            ("w".to_owned(), FieldValue::F64(-1.25)),
            (
                "e".to_owned(),
                FieldValue::Decimal {
                    scale: 2,
                    value: 314,
                },
            ),
            ("v".to_owned(), FieldValue::String("héllo".to_owned())),
            (
                "f".to_owned(),
                FieldValue::StringBytes(Bytes::from_static(b"\xff")),
            ),
            (
                "u".to_owned(),
                FieldValue::Bytes(Bytes::from_static(b"\x00\x01")),
            ),
            ("g".to_owned(), FieldValue::Timestamp(1_700_000_000)),
            (
                "t".to_owned(),
                FieldValue::Array(vec![FieldValue::I64(1), FieldValue::Table(nested.clone())]),
            ),
            ("h".to_owned(), FieldValue::Table(nested)),
        ]);
        let properties = Properties {
            content_type: Some("application/json".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(9),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("1000".into()),
            message_id: Some("m".into()),
            timestamp: Some(1_700_000_001),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("a".into()),
            cluster_id: Some("k".into()),
        };
        let header = decode_header(&header_payload(&properties)).unwrap();
        assert_eq!(header.body_size, 5);
        let read = header.properties;
        assert_eq!(read, properties);
        let keys = |p: &Properties| -> Vec<String> {
            p.headers.as_ref().unwrap().keys().cloned().collect()
        };
        assert_eq!(keys(&read), keys(&properties));
        let Some(FieldValue::Table(nested)) = read.headers.as_ref().unwrap().get("h") else {
            panic!("h is a table");
        };
        assert_eq!(nested.keys().collect::<Vec<_>>(), ["z", "a"]);
    }

    /// What amq-protocol's parser wrote and read, byte for byte, for properties whose table
    /// has one key (no order to keep): the two codecs agree on the format.
    #[test]
    fn writes_what_amq_protocol_writes() {
        let properties = Properties {
            content_type: Some("text/plain".into()),
            headers: Some(FieldTable::from([(
                "n".to_owned(),
                FieldValue::Array(vec![
                    FieldValue::I32(7),
                    FieldValue::Decimal { scale: 1, value: 5 },
                ]),
            )])),
            delivery_mode: Some(1),
            timestamp: Some(7),
            app_id: Some("app".into()),
            ..Properties::default()
        };
        let mut ours = Vec::new();
        put_header(&mut ours, 3, 60, 11, &properties);
        let theirs = amq_protocol::frame::AMQPFrame::Header(
            3,
            amq_protocol::frame::AMQPContentHeader {
                class_id: 60,
                body_size: 11,
                properties: crate::wire::convert::properties_out(&properties),
            },
        );
        let mut expected = Vec::new();
        crate::wire::codec::put_frame(&mut expected, &theirs);
        assert_eq!(ours, expected);
    }

    /// Cut short anywhere, or with a type letter RabbitMQ does not use, the properties do not
    /// decode; bytes after the last property are ignored.
    #[test]
    fn refuses_what_does_not_decode() {
        let properties = Properties {
            headers: Some(FieldTable::from([("k".to_owned(), FieldValue::I64(1))])),
            message_id: Some("m".into()),
            ..Properties::default()
        };
        let payload = header_payload(&properties);
        for cut in 0..payload.len() {
            assert!(decode_header(&payload[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert_eq!(decode_header(&longer).unwrap().properties, properties);
        let mut bad_type = payload;
        let at = bad_type.iter().position(|&b| b == b'l').unwrap();
        bad_type[at] = b'Q';
        assert!(decode_header(&bad_type).is_none());
    }
}
