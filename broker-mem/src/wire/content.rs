//! Content headers (basic properties) read and written here rather than through amq-protocol,
//! whose field tables are sorted maps: RabbitMQ passes a header table on as its publisher wrote
//! it, so a consumer that reads the keys in order (a JavaScript object, a Python dict) sees the
//! publisher's order, and must see it here too.
//!
//! Field tables, in content headers and in a method's arguments alike, are read by RabbitMQ's
//! rules (`rabbit_binary_parser:parse_table`, probed on 3.10.8): no `U` type letter, no NaN
//! or infinite float, `L` a long long like `l`, keys of any bytes, a key seen twice looked up
//! by its first value.
//! Where writing a header table again would not give the client's bytes back (a repeated
//! key, a key that is not UTF-8, an `L`, a boolean byte other than 0 or 1), the table keeps
//! those bytes and is written with them, as RabbitMQ passes it on. The other properties
//! follow amq-protocol's rules: short strings must be UTF-8, the two lowest property flags
//! are ignored (see the README's differences). No bytes may follow the last property
//! (RabbitMQ refuses them too).
//!
//! A method is parsed by amq-protocol, which reads its table by its own rules (`U` a short,
//! keys UTF-8); the codec reads the table here too and goes by this reading (see
//! [`method_arguments`]). One rule is broker-mem's own: tables and arrays nest at most
//! [`NESTING_MAX`] deep (see there).

use bytes::Bytes;

use crate::message::{FieldTable, FieldValue, Properties};
use crate::wire::codec::short;

/// How deep tables and arrays may nest in a field value. RabbitMQ sets no limit; here reading,
/// copying and dropping a value recurse once per level, and a frame of 128 KiB could nest
/// some 26,000 levels, enough to overflow a thread's stack and abort the whole process. Real
/// headers and arguments nest two or three levels.
pub(crate) const NESTING_MAX: usize = 64;

/// A content header's properties, from the frame's payload (after its class, weight and body
/// size); None when they do not decode (RabbitMQ answers that with 541 INTERNAL_ERROR).
pub(crate) fn decode_properties(payload: &[u8]) -> Option<Properties> {
    let mut reader = Reader::new(payload);
    let _class_weight_and_body_size = reader.take(12)?;
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
        let before = reader.bytes;
        let mut table = reader.table(0)?;
        if !reader.exact {
            let read = before.len() - reader.bytes.len();
            table.keep_written(&before[4..read]);
        }
        properties.headers = Some(table);
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
    if !reader.bytes.is_empty() {
        return None;
    }
    Some(properties)
}

/// Where the field table of a method with one starts in its payload (`start-ok`, the
/// declares, binds and unbinds, `basic.consume`, which clients send, and `connection.start`,
/// which only a server sends but a client can, and amq-protocol parses): a reader there, or
/// None for other methods and payloads too short to say.
fn method_table(payload: &[u8]) -> Option<Reader<'_>> {
    /// What comes before a method's table: an octet, a short integer, a short string, a byte
    /// of bits.
    #[derive(Clone, Copy)]
    enum Field {
        Octet,
        Short,
        Text,
        Bits,
    }
    use Field::{Bits, Octet, Short, Text};
    let mut reader = Reader::new(payload);
    let before: &[Field] = match (reader.u16()?, reader.u16()?) {
        (10, 10) => &[Octet, Octet],            // connection.start
        (10, 11) => &[],                        // connection.start-ok
        (40, 10) => &[Short, Text, Text, Bits], // exchange.declare
        (40, 30) | (40, 40) => &[Short, Text, Text, Text, Bits], // exchange.bind, unbind
        (50, 10) => &[Short, Text, Bits],       // queue.declare
        (50, 20) => &[Short, Text, Text, Text, Bits], // queue.bind
        (50, 50) => &[Short, Text, Text, Text], // queue.unbind
        (60, 20) => &[Short, Text, Text, Bits], // basic.consume
        _ => return None,
    };
    for field in before {
        match field {
            Octet => reader.take(1)?,
            Short => reader.take(2)?,
            Text => {
                let len = reader.u8()?;
                reader.take(usize::from(len))?
            }
            Bits => reader.take(1)?,
        };
    }
    Some(reader)
}

/// What a method's field table (see [`method_table`]) is like, before amq-protocol parses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TableCheck {
    /// The method has no table (or the payload is too short to say).
    NoTable,
    /// It reads, within [`NESTING_MAX`] levels.
    Fine,
    /// It nests deeper than [`NESTING_MAX`].
    TooDeep,
    /// It does not read as RabbitMQ reads tables (a `U` value, a length past the end).
    Unreadable,
}

/// Checks a method's field table (see [`TableCheck`]): amq-protocol's parser recurses once per
/// level without a limit, and takes values RabbitMQ does not (`U`), after which it would read
/// on into whatever nests behind them; so the codec refuses both kinds of table before parsing.
/// Walks the bytes without building anything, never deeper than [`NESTING_MAX`].
pub(crate) fn method_table_check(payload: &[u8]) -> TableCheck {
    match method_table(payload).map(|mut reader| reader.table_too_deep(0)) {
        None => TableCheck::NoTable,
        Some(Some(false)) => TableCheck::Fine,
        Some(Some(true)) => TableCheck::TooDeep,
        Some(None) => TableCheck::Unreadable,
    }
}

/// A method's field table (see [`method_table`]) as RabbitMQ reads it, in its wire order
/// (amq-protocol's parsed copy is sorted, and RabbitMQ reads some arguments in wire order: the
/// first of another queue type's arguments is the one its 406 names), with where it lies in
/// the payload. None for methods without a table, or when it does not decode.
pub(crate) fn method_arguments(payload: &[u8]) -> Option<(FieldTable, std::ops::Range<usize>)> {
    let mut reader = method_table(payload)?;
    let start = payload.len() - reader.bytes.len();
    let table = reader.table(0)?;
    let end = payload.len() - reader.bytes.len();
    Some((table, start..end))
}

/// A method's table from its entries (the bytes after its size), by the rules a method's
/// arguments are read by; None when they do not decode.
pub(crate) fn table_entries(entries: &[u8]) -> Option<FieldTable> {
    Reader::new(entries).entries(0)
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
pub(crate) fn put_table(out: &mut Vec<u8>, table: &FieldTable) {
    if let Some(written) = table.written() {
        put_long_bytes(out, written);
        return;
    }
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
struct Reader<'a> {
    bytes: &'a [u8],
    /// Cleared when something was read that writing it again would not give back.
    exact: bool,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, exact: true }
    }

    /// A reader of the next `long_bytes` (a table's entries, an array's items).
    fn nested(&mut self) -> Option<Reader<'a>> {
        let bytes = self.long_bytes()?;
        Some(Reader::new(bytes))
    }

    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.bytes.len() < n {
            return None;
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
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

    /// A table's key: any bytes (RabbitMQ's keys are binaries; one that is not UTF-8 is kept
    /// with replacement characters here, and exactly in a header table's written bytes).
    fn key(&mut self) -> Option<String> {
        let len = self.u8()?;
        let bytes = self.take(usize::from(len))?;
        match std::str::from_utf8(bytes) {
            Ok(key) => Some(key.to_owned()),
            Err(_) => {
                self.exact = false;
                Some(String::from_utf8_lossy(bytes).into_owned())
            }
        }
    }

    fn long_bytes(&mut self) -> Option<&'a [u8]> {
        let len = self.u32()?;
        self.take(usize::try_from(len).ok()?)
    }

    /// A table, in its order, `depth` levels down; None past [`NESTING_MAX`]. A key seen again
    /// keeps its first value, the one RabbitMQ's lookups find (`lists:keysearch`).
    fn table(&mut self, depth: usize) -> Option<FieldTable> {
        if depth >= NESTING_MAX {
            return None;
        }
        let mut entries = self.nested()?;
        let table = entries.entries(depth)?;
        self.exact &= entries.exact;
        Some(table)
    }

    /// The rest of the bytes as the entries of a table `depth` levels down.
    fn entries(&mut self, depth: usize) -> Option<FieldTable> {
        let mut table = FieldTable::new();
        while !self.bytes.is_empty() {
            let key = self.key()?;
            let value = self.value(depth + 1)?;
            if table.contains_key(&key) {
                self.exact = false;
            } else {
                table.insert(key, value);
            }
        }
        Some(table)
    }

    /// Walks a table `depth` levels down without building it: whether something in it nests
    /// past [`NESTING_MAX`]; None when it does not decode first.
    fn table_too_deep(&mut self, depth: usize) -> Option<bool> {
        if depth >= NESTING_MAX {
            return Some(true);
        }
        let mut entries = self.nested()?;
        while !entries.bytes.is_empty() {
            let key_len = entries.u8()?;
            entries.take(usize::from(key_len))?;
            if entries.value_too_deep(depth + 1)? {
                return Some(true);
            }
        }
        Some(false)
    }

    /// [`Reader::table_too_deep`] for one value with its type letter.
    fn value_too_deep(&mut self, depth: usize) -> Option<bool> {
        let width = match self.u8()? {
            b'V' => 0,
            b't' | b'b' | b'B' => 1,
            b's' | b'u' => 2,
            b'I' | b'i' | b'f' => 4,
            b'D' => 5,
            b'l' | b'L' | b'd' | b'T' => 8,
            b'S' | b'x' => return self.long_bytes().map(|_| false),
            b'F' => return self.table_too_deep(depth),
            b'A' => {
                if depth >= NESTING_MAX {
                    return Some(true);
                }
                let mut items = self.nested()?;
                while !items.bytes.is_empty() {
                    if items.value_too_deep(depth + 1)? {
                        return Some(true);
                    }
                }
                return Some(false);
            }
            _ => return None,
        };
        self.take(width).map(|_| false)
    }

    /// A value with its type letter, inside a table or array `depth` levels down.
    fn value(&mut self, depth: usize) -> Option<FieldValue> {
        let value = match self.u8()? {
            b't' => {
                let byte = self.u8()?;
                // RabbitMQ reads any byte but 0 as true and passes the byte on.
                self.exact &= byte <= 1;
                FieldValue::Bool(byte != 0)
            }
            b'b' => FieldValue::I8(i8::from_be_bytes(self.array()?)),
            b'B' => FieldValue::U8(self.u8()?),
            // RabbitMQ's parser has no `U` (amq-protocol's reads a short).
            b's' => FieldValue::I16(i16::from_be_bytes(self.array()?)),
            b'u' => FieldValue::U16(self.u16()?),
            b'I' => FieldValue::I32(i32::from_be_bytes(self.array()?)),
            b'i' => FieldValue::U32(self.u32()?),
            b'l' => FieldValue::I64(i64::from_be_bytes(self.array()?)),
            // Both read `L` as a signed long long (the 0-9-1 errata); RabbitMQ passes the
            // letter on, and writes `l` only when it writes the table anew.
            b'L' => {
                self.exact = false;
                FieldValue::I64(i64::from_be_bytes(self.array()?))
            }
            // Erlang's float matches take no NaN or infinity: RabbitMQ refuses those.
            b'f' => {
                FieldValue::F32(Some(f32::from_be_bytes(self.array()?)).filter(|v| v.is_finite())?)
            }
            b'd' => {
                FieldValue::F64(Some(f64::from_be_bytes(self.array()?)).filter(|v| v.is_finite())?)
            }
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
                if depth >= NESTING_MAX {
                    return None;
                }
                let mut items = self.nested()?;
                let mut values = Vec::new();
                while !items.bytes.is_empty() {
                    values.push(items.value(depth + 1)?);
                }
                self.exact &= items.exact;
                FieldValue::Array(values)
            }
            b'T' => FieldValue::Timestamp(self.u64()?),
            b'F' => FieldValue::Table(self.table(depth)?),
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
        let read = decode_properties(&header_payload(&properties)).unwrap();
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

    /// Cut short anywhere, with a byte after the last property (RabbitMQ: 541), or with a type
    /// letter RabbitMQ does not use, the properties do not decode.
    #[test]
    fn refuses_what_does_not_decode() {
        let properties = Properties {
            headers: Some(FieldTable::from([("k".to_owned(), FieldValue::I64(1))])),
            message_id: Some("m".into()),
            ..Properties::default()
        };
        let payload = header_payload(&properties);
        for cut in 0..payload.len() {
            assert!(decode_properties(&payload[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert!(
            decode_properties(&longer).is_none(),
            "a byte after the last property"
        );
        let mut bad_type = payload;
        let at = bad_type.iter().position(|&b| b == b'l').unwrap();
        bad_type[at] = b'Q';
        assert!(decode_properties(&bad_type).is_none());
    }

    /// A table that writing anew would change (a key twice, a key that is not UTF-8, `L`, a
    /// boolean byte of 2, inside an array too) is written with the client's bytes while it
    /// stands, and anew once changed; a key written twice is read by its first value.
    #[test]
    fn unusual_tables_are_passed_on_as_written() {
        let entries = [
            &b"\x01kI\x00\x00\x00\x01\x01kI\x00\x00\x00\x02"[..],
            b"\x02\xff\xfeV",
            b"\x01LL\x00\x00\x00\x00\x00\x00\x00\x03",
            b"\x01tt\x02",
            b"\x01AA\x00\x00\x00\x02t\x02",
        ];
        for (at, unusual) in entries.iter().enumerate() {
            let table = [&entries[0][..7], unusual].concat();
            let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0x20, 0x00];
            payload.extend(u32::try_from(table.len()).unwrap().to_be_bytes());
            payload.extend(&table);
            let mut properties = decode_properties(&payload).unwrap_or_else(|| panic!("{at}"));
            let headers = properties.headers.as_ref().unwrap();
            assert_eq!(headers.get("k"), Some(&FieldValue::I32(1)), "{at}");
            assert!(headers.written().is_some(), "{at}");
            assert_eq!(header_payload(&properties), payload, "{at}");
            // Changed, it is written anew: sorted here, as dead-lettering sorts it.
            properties.headers.as_mut().unwrap().sort_keys();
            let rewritten = header_payload(&properties);
            assert_ne!(rewritten, payload, "{at}");
            let again = decode_properties(&rewritten).unwrap();
            assert_eq!(again, properties, "{at}");
            assert!(again.headers.unwrap().written().is_none(), "{at}");
        }
        // What writing gives back is not kept.
        let usual = [&entries[0][..7], b"\x01tt\x01"].concat();
        let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0x20, 0x00];
        payload.extend(u32::try_from(usual.len()).unwrap().to_be_bytes());
        payload.extend(&usual);
        let properties = decode_properties(&payload).unwrap();
        assert!(properties.headers.as_ref().unwrap().written().is_none());
        assert_eq!(header_payload(&properties), payload);
    }

    /// `U` is in no table RabbitMQ reads (a content header's: 541; a method's: its reader
    /// crashes); a key that is not UTF-8 is in any, with replacement characters here.
    #[test]
    fn tables_are_read_as_rabbitmq_reads_them() {
        let table = b"\x00\x00\x00\x05\x01aU\xff\xfe";
        let header = [
            &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0x20, 0x00][..],
            table,
        ]
        .concat();
        assert!(decode_properties(&header).is_none());
        let declare = [&[0, 50, 0, 10, 0, 0, 1, b'q', 0][..], table].concat();
        assert!(method_arguments(&declare).is_none());
        assert_eq!(method_table_check(&declare), TableCheck::Unreadable);
        for float in [
            &b"f\x7f\xc0\x00\x00"[..],
            b"d\xff\xf0\x00\x00\x00\x00\x00\x00",
        ] {
            let table = [
                &[0, 0, 0, u8::try_from(float.len() + 2).unwrap(), 1, b'a'][..],
                float,
            ]
            .concat();
            let header = [
                &[0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 0x20, 0x00][..],
                &table,
            ]
            .concat();
            assert!(decode_properties(&header).is_none(), "{float:?}");
        }
        let any_key = b"\x00\x00\x00\x03\x01\xffV";
        let declare = [&[0, 50, 0, 10, 0, 0, 1, b'q', 0][..], any_key].concat();
        let (arguments, span) = method_arguments(&declare).unwrap();
        assert_eq!(arguments.get("\u{fffd}"), Some(&FieldValue::Void));
        assert_eq!(span, 9..declare.len());
    }

    /// A table whose one value is `levels` arrays and tables inside one another (in turn),
    /// around a void, as bytes.
    fn nested_table(levels: usize) -> Vec<u8> {
        let sized = |content: Vec<u8>| {
            let mut bytes = u32::try_from(content.len()).unwrap().to_be_bytes().to_vec();
            bytes.extend(content);
            bytes
        };
        let mut value = b"V".to_vec();
        for level in 0..levels {
            value = if level % 2 == 0 {
                [b"A".to_vec(), sized(value)].concat()
            } else {
                [b"F".to_vec(), sized([vec![1, b'k'], value].concat())].concat()
            };
        }
        sized([vec![1, b'k'], value].concat())
    }

    /// Tables and arrays nest up to [`NESTING_MAX`] deep in a header and in a method's
    /// arguments; one level more is refused before anything recurses, however deep it goes.
    #[test]
    fn nesting_is_bounded() {
        let header = |table: &[u8]| {
            let mut payload = vec![0, 60, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x20, 0x00];
            payload.extend(table);
            payload
        };
        // queue.declare: ids, reserved short, queue name, bits, then the arguments.
        let declare = |table: &[u8]| {
            let mut payload = vec![0, 50, 0, 10, 0, 0, 1, b'q', 0];
            payload.extend(table);
            payload
        };
        let within = nested_table(NESTING_MAX - 1);
        assert!(decode_properties(&header(&within)).is_some());
        assert_eq!(method_table_check(&declare(&within)), TableCheck::Fine);
        for levels in [NESTING_MAX, 3_000] {
            let deep = nested_table(levels);
            assert!(
                decode_properties(&header(&deep)).is_none(),
                "{levels} levels"
            );
            assert_eq!(
                method_table_check(&declare(&deep)),
                TableCheck::TooDeep,
                "{levels} levels"
            );
        }
        // Other methods, and payloads too short to say, are left to the parser; a table cut
        // short does not read.
        assert_eq!(method_table_check(&[0, 60, 0, 40]), TableCheck::NoTable);
        assert_eq!(method_table_check(&[0, 50, 0, 10, 0]), TableCheck::NoTable);
        assert_eq!(method_table_check(&declare(&[])), TableCheck::Unreadable);
        // A `U` ahead of a deep table: unreadable, so the deep part is never parsed.
        let mut entries = vec![1, b'a', b'U', 0, 0];
        entries.extend_from_slice(&nested_table(3_000)[4..]);
        let mut hidden = u32::try_from(entries.len()).unwrap().to_be_bytes().to_vec();
        hidden.extend(entries);
        assert_eq!(
            method_table_check(&declare(&hidden)),
            TableCheck::Unreadable
        );
        // connection.start (a server's method, which a client can send): its table is checked.
        let start = [&[0, 10, 0, 10, 0, 9][..], &nested_table(3_000)].concat();
        assert_eq!(method_table_check(&start), TableCheck::TooDeep);
    }

    /// A method's arguments come in wire order, for each method a client sends with a table;
    /// other methods have none.
    #[test]
    fn method_arguments_keep_wire_order() {
        let table = {
            let mut entries = Vec::new();
            put_short_string(&mut entries, "x-quorum-initial-group-size");
            put_value(&mut entries, &FieldValue::I8(3));
            put_short_string(&mut entries, "x-delivery-limit");
            put_value(&mut entries, &FieldValue::I8(5));
            let mut table = Vec::new();
            put_long_bytes(&mut table, &entries);
            table
        };
        let text = |t: &str| [vec![u8::try_from(t.len()).unwrap()], t.as_bytes().to_vec()].concat();
        let methods: [(&[u8], Vec<u8>); 8] = [
            (&[0, 10, 0, 11], vec![]),
            (
                &[0, 40, 0, 10],
                [vec![0, 0], text("x"), text("direct"), vec![0]].concat(),
            ),
            (
                &[0, 40, 0, 30],
                [vec![0, 0], text("d"), text("s"), text("k"), vec![0]].concat(),
            ),
            (
                &[0, 40, 0, 40],
                [vec![0, 0], text("d"), text("s"), text("k"), vec![0]].concat(),
            ),
            (&[0, 50, 0, 10], [vec![0, 0], text("q"), vec![0]].concat()),
            (
                &[0, 50, 0, 20],
                [vec![0, 0], text("q"), text("x"), text("k"), vec![0]].concat(),
            ),
            (
                &[0, 50, 0, 50],
                [vec![0, 0], text("q"), text("x"), text("k")].concat(),
            ),
            (
                &[0, 60, 0, 20],
                [vec![0, 0], text("q"), text("c"), vec![0]].concat(),
            ),
        ];
        for (ids, before) in methods {
            let payload = [ids.to_vec(), before, table.clone()].concat();
            let (arguments, _) = method_arguments(&payload).unwrap_or_else(|| panic!("{ids:?}"));
            let keys: Vec<&String> = arguments.keys().collect();
            assert_eq!(
                keys,
                ["x-quorum-initial-group-size", "x-delivery-limit"],
                "{ids:?}"
            );
        }
        assert!(method_arguments(&[0, 60, 0, 40, 0, 0]).is_none());
    }

    /// The layouts [`method_table`] skips agree with amq-protocol's encoder: each method a
    /// client sends with a table, written by amq-protocol with strings of several lengths and
    /// every flag set, gives back the table it was written with.
    #[test]
    fn method_layouts_agree_with_amq_protocol() {
        use amq_protocol::frame::AMQPFrame;
        use amq_protocol::protocol::{AMQPClass, basic, connection, exchange, queue};
        use amq_protocol::types::{AMQPValue, FieldTable as AmqpTable};

        let mut table = AmqpTable::default();
        table.insert("a".into(), AMQPValue::ShortShortInt(1));
        table.insert("b".into(), AMQPValue::LongString("x".into()));
        let arguments = || table.clone();
        let methods = [
            AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
                client_properties: arguments(),
                mechanism: "PLAIN".into(),
                response: "\0guest\0guest".into(),
                locale: "en_US".into(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
                exchange: "an-exchange".into(),
                kind: "topic".into(),
                passive: true,
                durable: true,
                auto_delete: true,
                internal: true,
                nowait: true,
                arguments: arguments(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(exchange::Bind {
                destination: "d".into(),
                source: "source".into(),
                routing_key: "a.key".into(),
                nowait: true,
                arguments: arguments(),
            })),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(exchange::Unbind {
                destination: "dest".into(),
                source: "s".into(),
                routing_key: "".into(),
                nowait: true,
                arguments: arguments(),
            })),
            AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
                queue: "a-queue".into(),
                passive: true,
                durable: true,
                exclusive: true,
                auto_delete: true,
                nowait: true,
                arguments: arguments(),
            })),
            AMQPClass::Queue(queue::AMQPMethod::Bind(queue::Bind {
                queue: "q".into(),
                exchange: "an-exchange".into(),
                routing_key: "k".into(),
                nowait: true,
                arguments: arguments(),
            })),
            AMQPClass::Queue(queue::AMQPMethod::Unbind(queue::Unbind {
                queue: "queue".into(),
                exchange: "x".into(),
                routing_key: "key".into(),
                arguments: arguments(),
            })),
            AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
                queue: "q".into(),
                consumer_tag: "a-consumer".into(),
                no_local: true,
                no_ack: true,
                exclusive: true,
                nowait: true,
                arguments: arguments(),
            })),
        ];
        let expected = crate::wire::convert::table_in(&table);
        for class in methods {
            let name = format!("{class:?}");
            let mut frame = Vec::new();
            crate::wire::codec::put_frame(&mut frame, &AMQPFrame::Method(1, class));
            let payload = &frame[7..frame.len() - 1];
            assert_eq!(
                method_arguments(payload).map(|(table, _)| table).as_ref(),
                Some(&expected),
                "{name}"
            );
            assert_eq!(method_table_check(payload), TableCheck::Fine, "{name}");
        }
    }
}
