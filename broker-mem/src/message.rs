//! Messages as the broker holds them: AMQP basic properties, a body, and where they were
//! published. The broker reads only `expiration` (per-message TTL), `delivery_mode`
//! (persistence across a restart), `user_id` and, for a headers exchange, `headers`; it
//! carries everything else intact from publisher to consumer. Dead-lettering adds `x-death`.

use indexmap::IndexMap;
use std::sync::{Arc, LazyLock};

use bytes::Bytes;
use smol_str::SmolStr;

/// An AMQP field table (message headers, arguments): keys in the order they were put in, as
/// RabbitMQ keeps a table (a list on the wire and inside it), so a consumer reads a table's
/// keys in the order its publisher wrote them. Compares as a map: two tables with the same
/// entries are equal whatever their order (compare [`FieldTable::keys`] to check the order).
///
/// Hashed with std's seeded hasher, not the engine's Fx: a table's keys come from clients, and
/// a fixed hash lets one craft thousands of colliding keys in a frame and make reading it
/// quadratic. The seed changes nothing observable: iteration follows insertion order.
#[derive(Clone, Default)]
pub struct FieldTable {
    entries: IndexMap<String, FieldValue>,
    /// A header table exactly as a client wrote it on the wire (its entries, without the
    /// size), kept only where writing `entries` again would not give the same bytes back: a key
    /// written twice, a key that is not UTF-8, an `L` type letter, a boolean byte other than 0
    /// or 1. RabbitMQ passes a header table on as written until it changes the table, so the
    /// wire server writes these bytes while they stand; every change drops them.
    written: Option<Arc<[u8]>>,
}

impl FieldTable {
    /// An empty table.
    pub fn new() -> FieldTable {
        FieldTable::default()
    }

    /// The value under `key`.
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.entries.get(key)
    }

    /// The value under `key`, to change in place.
    pub fn get_mut(&mut self, key: &str) -> Option<&mut FieldValue> {
        self.written = None;
        self.entries.get_mut(key)
    }

    /// Whether `key` is in the table.
    pub fn contains_key(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    /// Sets `key`: a key already there keeps its place (Erlang's `lists:keystore`), a new one
    /// goes last. Returns the value it replaced.
    pub fn insert(&mut self, key: String, value: FieldValue) -> Option<FieldValue> {
        self.written = None;
        self.entries.insert(key, value)
    }

    /// Takes `key` out; the other keys keep their order (Erlang's `lists:keydelete`).
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        self.written = None;
        self.entries.shift_remove(key)
    }

    /// Sorts the keys byte by byte, as RabbitMQ's `rabbit_misc:sort_field_table` does to the
    /// headers it sets (dead-lettering, a quorum queue's `x-delivery-count`).
    pub fn sort_keys(&mut self) {
        self.written = None;
        self.entries.sort_unstable_keys();
    }

    /// How many keys.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no keys.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, in the table's order.
    pub fn iter(&self) -> indexmap::map::Iter<'_, String, FieldValue> {
        self.entries.iter()
    }

    /// The keys, in the table's order.
    pub fn keys(&self) -> indexmap::map::Keys<'_, String, FieldValue> {
        self.entries.keys()
    }

    /// The values, in the table's order.
    pub fn values(&self) -> indexmap::map::Values<'_, String, FieldValue> {
        self.entries.values()
    }

    /// Keeps the bytes this table was read from (see `written`).
    #[cfg_attr(not(feature = "wire"), allow(dead_code))]
    pub(crate) fn keep_written(&mut self, bytes: &[u8]) {
        self.written = Some(bytes.into());
    }

    /// The bytes this table was read from, while it is unchanged and they differ from what
    /// writing it would give.
    #[cfg_attr(not(feature = "wire"), allow(dead_code))]
    pub(crate) fn written(&self) -> Option<&[u8]> {
        self.written.as_deref()
    }

    /// Forgets the bytes it was read from: RabbitMQ writes a table anew when it changes any
    /// other property of its message (a direct reply-to address).
    pub(crate) fn forget_written(&mut self) {
        self.written = None;
    }
}

/// As maps: the same entries, whatever their order or the bytes they were read from.
impl PartialEq for FieldTable {
    fn eq(&self, other: &FieldTable) -> bool {
        self.entries == other.entries
    }
}

impl std::fmt::Debug for FieldTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.entries.iter()).finish()
    }
}

impl FromIterator<(String, FieldValue)> for FieldTable {
    fn from_iter<I: IntoIterator<Item = (String, FieldValue)>>(entries: I) -> FieldTable {
        FieldTable {
            entries: entries.into_iter().collect(),
            written: None,
        }
    }
}

impl<const N: usize> From<[(String, FieldValue); N]> for FieldTable {
    fn from(entries: [(String, FieldValue); N]) -> FieldTable {
        entries.into_iter().collect()
    }
}

impl Extend<(String, FieldValue)> for FieldTable {
    fn extend<I: IntoIterator<Item = (String, FieldValue)>>(&mut self, entries: I) {
        self.written = None;
        self.entries.extend(entries);
    }
}

impl IntoIterator for FieldTable {
    type Item = (String, FieldValue);
    type IntoIter = indexmap::map::IntoIter<String, FieldValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.into_iter()
    }
}

impl<'a> IntoIterator for &'a FieldTable {
    type Item = (&'a String, &'a FieldValue);
    type IntoIter = indexmap::map::Iter<'a, String, FieldValue>;

    fn into_iter(self) -> Self::IntoIter {
        self.entries.iter()
    }
}

/// A value in a [`FieldTable`], one variant per AMQP field type (RabbitMQ's dialect of 0-9-1),
/// so that a value crosses the broker with the type its publisher gave it, as in RabbitMQ.
/// In-process code mostly needs `I64`, `F64`, `String` and `Bool`.
///
/// Equality (`==`) is exact, type included. Where RabbitMQ looks past the type (headers-exchange
/// matching, redeclared arguments), the broker does too.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    /// `V`: no value.
    Void,
    /// `t`.
    Bool(bool),
    /// `b` (RabbitMQ: `byte`).
    I8(i8),
    /// `B` (`unsignedbyte`).
    U8(u8),
    /// `s` (`short`).
    I16(i16),
    /// `u` (`unsignedshort`).
    U16(u16),
    /// `I` (`signedint`).
    I32(i32),
    /// `i` (`unsignedint`).
    U32(u32),
    /// `l` (`long`).
    I64(i64),
    /// `f` (`float`).
    F32(f32),
    /// `d` (`double`).
    F64(f64),
    /// `D` (`decimal`): `value` / 10^`scale`.
    Decimal {
        /// Digits after the point.
        scale: u8,
        /// The unscaled value.
        value: u32,
    },
    /// `S` (`longstr`) that is valid UTF-8.
    String(String),
    /// `S` whose bytes are not UTF-8.
    StringBytes(Bytes),
    /// `x` (`binary`): a byte array.
    Bytes(Bytes),
    /// `T`: seconds since the Unix epoch.
    Timestamp(u64),
    /// `A`.
    Array(Vec<FieldValue>),
    /// `F`.
    Table(FieldTable),
}

impl FieldValue {
    /// RabbitMQ's name of the value's AMQP field type, as its error texts use it.
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Void => "void",
            FieldValue::Bool(_) => "bool",
            FieldValue::I8(_) => "byte",
            FieldValue::U8(_) => "unsignedbyte",
            FieldValue::I16(_) => "short",
            FieldValue::U16(_) => "unsignedshort",
            FieldValue::I32(_) => "signedint",
            FieldValue::U32(_) => "unsignedint",
            FieldValue::I64(_) => "long",
            FieldValue::F32(_) => "float",
            FieldValue::F64(_) => "double",
            FieldValue::Decimal { .. } => "decimal",
            FieldValue::String(_) | FieldValue::StringBytes(_) => "longstr",
            FieldValue::Bytes(_) => "binary",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Array(_) => "array",
            FieldValue::Table(_) => "table",
        }
    }

    /// The text of a long string (`S`), whether or not it is UTF-8 (a `StringBytes` is read
    /// lossily): RabbitMQ takes either where it wants a string.
    pub fn as_longstr(&self) -> Option<std::borrow::Cow<'_, str>> {
        match self {
            FieldValue::String(v) => Some(std::borrow::Cow::Borrowed(v)),
            FieldValue::StringBytes(v) => Some(String::from_utf8_lossy(v)),
            _ => None,
        }
    }

    /// The value of any integer type (RabbitMQ takes each of them where it wants an integer).
    pub fn as_integer(&self) -> Option<i64> {
        match *self {
            FieldValue::I8(v) => Some(i64::from(v)),
            FieldValue::U8(v) => Some(i64::from(v)),
            FieldValue::I16(v) => Some(i64::from(v)),
            FieldValue::U16(v) => Some(i64::from(v)),
            FieldValue::I32(v) => Some(i64::from(v)),
            FieldValue::U32(v) => Some(i64::from(v)),
            FieldValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Equal as RabbitMQ compares a header with a headers binding's argument: by value, with
    /// Erlang's `==`, whatever the field types. Integers of every width, floats, doubles and
    /// timestamps are numbers, equal when their values are (`1 == 1.0`); long strings and byte
    /// arrays are binaries, equal when their bytes are; a decimal equals only the same decimal;
    /// inside arrays and tables types must match too (RabbitMQ keeps them there).
    pub(crate) fn matches(&self, other: &FieldValue) -> bool {
        fn number(value: &FieldValue) -> Option<Number> {
            match *value {
                FieldValue::F32(v) => Some(Number::Float(f64::from(v))),
                FieldValue::F64(v) => Some(Number::Float(v)),
                FieldValue::Timestamp(v) => Some(Number::Int(i128::from(v))),
                ref other => other.as_integer().map(|v| Number::Int(i128::from(v))),
            }
        }
        fn binary(value: &FieldValue) -> Option<&[u8]> {
            match value {
                FieldValue::String(v) => Some(v.as_bytes()),
                FieldValue::StringBytes(v) | FieldValue::Bytes(v) => Some(&v[..]),
                _ => None,
            }
        }
        if let (Some(a), Some(b)) = (number(self), number(other)) {
            return match (a, b) {
                (Number::Int(a), Number::Int(b)) => a == b,
                (Number::Int(i), Number::Float(f)) | (Number::Float(f), Number::Int(i)) => {
                    i as f64 == f
                }
                (Number::Float(a), Number::Float(b)) => a == b,
            };
        }
        if let (Some(a), Some(b)) = (binary(self), binary(other)) {
            return a == b;
        }
        self == other
    }

    /// Equal as RabbitMQ compares a redeclared queue's argument with the queue's
    /// (`rabbit_misc:type_class`, then Erlang's `==`): of the same class (every integer type is
    /// `int`, `float` and `double` are `float`, each other type its own) and equal in value.
    pub(crate) fn equivalent(&self, other: &FieldValue) -> bool {
        fn text(value: &FieldValue) -> Option<&[u8]> {
            match value {
                FieldValue::String(v) => Some(v.as_bytes()),
                FieldValue::StringBytes(v) => Some(&v[..]),
                _ => None,
            }
        }
        let float = |value: &FieldValue| match *value {
            FieldValue::F32(v) => Some(f64::from(v)),
            FieldValue::F64(v) => Some(v),
            _ => None,
        };
        if let (Some(a), Some(b)) = (self.as_integer(), other.as_integer()) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (float(self), float(other)) {
            return a == b;
        }
        if let (Some(a), Some(b)) = (text(self), text(other)) {
            return a == b;
        }
        self == other
    }
}

/// A float as Erlang prints it in RabbitMQ's texts: the shortest digits that read back, with
/// a `.0` on a whole number, in exponent form below 0.0001 and from 10^16 (`1.0e20`).
pub(crate) fn erlang_float(value: f64) -> String {
    if !value.is_finite() {
        return value.to_string();
    }
    let magnitude = value.abs();
    if magnitude == 0.0 || (1e-4..1e16).contains(&magnitude) {
        let mut text = value.to_string();
        if !text.contains('.') {
            text.push_str(".0");
        }
        return text;
    }
    let scientific = format!("{value:e}");
    let (mantissa, exponent) = scientific.split_once('e').unwrap_or((&scientific, "0"));
    let point = if mantissa.contains('.') { "" } else { ".0" };
    format!("{mantissa}{point}e{exponent}")
}

/// A binary as Erlang's `~tp` prints it: `<<"text">>` when every byte is printable Latin-1
/// (with Erlang's escapes), `<<1,2,3>>` otherwise. RabbitMQ sends the Latin-1 bytes as they
/// are; a reply text here must be UTF-8, so where they are not, the byte list stands in.
pub(crate) fn erlang_binary(bytes: &[u8]) -> String {
    let printable = |b: u8| matches!(b, 32..=126 | 160..=255 | 8..=13 | 27);
    if bytes.is_empty() || !bytes.iter().all(|&b| printable(b)) {
        return erlang_bytes(bytes);
    }
    let mut text = b"<<\"".to_vec();
    for &byte in bytes {
        let escaped: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            11 => b"\\v",
            8 => b"\\b",
            12 => b"\\f",
            27 => b"\\e",
            _ => std::slice::from_ref(&byte),
        };
        text.extend_from_slice(escaped);
    }
    text.extend_from_slice(b"\">>");
    String::from_utf8(text).unwrap_or_else(|_| erlang_bytes(bytes))
}

/// A binary as Erlang's `~w` prints it: `<<1,2,3>>`.
pub(crate) fn erlang_bytes(bytes: &[u8]) -> String {
    let list: Vec<String> = bytes.iter().map(u8::to_string).collect();
    format!("<<{}>>", list.join(","))
}

/// A field value as Erlang's `~tp` prints RabbitMQ's reading of it, as its reply texts embed
/// it: a table as `[{<<"key">>,type,value}]`, an array as `[{type,value}]`, void as
/// `undefined`, a decimal as `{scale,digits}`. (Erlang breaks a term past 80 columns over
/// lines; this does not.)
pub(crate) fn erlang_term(value: &FieldValue) -> String {
    let typed = |value: &FieldValue| format!("{},{}", value.type_name(), erlang_term(value));
    match value {
        FieldValue::Void => "undefined".to_owned(),
        FieldValue::Bool(v) => v.to_string(),
        FieldValue::F32(v) => erlang_float(f64::from(*v)),
        FieldValue::F64(v) => erlang_float(*v),
        FieldValue::Decimal { scale, value } => format!("{{{scale},{value}}}"),
        FieldValue::Timestamp(v) => v.to_string(),
        FieldValue::String(v) => erlang_binary(v.as_bytes()),
        FieldValue::StringBytes(v) | FieldValue::Bytes(v) => erlang_binary(v),
        FieldValue::Array(values) => {
            let items: Vec<String> = values.iter().map(|v| format!("{{{}}}", typed(v))).collect();
            format!("[{}]", items.join(","))
        }
        FieldValue::Table(table) => {
            let items: Vec<String> = table
                .iter()
                .map(|(key, v)| format!("{{{},{}}}", erlang_binary(key.as_bytes()), typed(v)))
                .collect();
            format!("[{}]", items.join(","))
        }
        other => other.as_integer().unwrap_or_default().to_string(),
    }
}

/// Both values as RabbitMQ 3.10 describes them in an inequivalent-argument error: bare when
/// both are present, with their type when one is missing (`none`).
pub(crate) fn describe_values(
    received: Option<&FieldValue>,
    current: Option<&FieldValue>,
) -> (String, String) {
    // A binary as its text (`~ts`), anything else as Erlang prints it (`~tp`).
    let bare = |value: &FieldValue| match value {
        FieldValue::String(v) => v.clone(),
        FieldValue::StringBytes(v) | FieldValue::Bytes(v) => {
            String::from_utf8_lossy(v).into_owned()
        }
        other => erlang_term(other),
    };
    let typed = |value: Option<&FieldValue>| match value {
        None => "none".to_owned(),
        Some(v) => format!("the value '{}' of type '{}'", bare(v), v.type_name()),
    };
    // Both present: bare, but a void value (Erlang's `undefined`) reads `none`, as a missing
    // one does (probed on 3.10.8).
    let quoted = |value: &FieldValue| match value {
        FieldValue::Void => "none".to_owned(),
        value => format!("'{}'", bare(value)),
    };
    match (received, current) {
        (Some(r), Some(c)) => (quoted(r), quoted(c)),
        (r, c) => (typed(r), typed(c)),
    }
}

/// A number as Erlang compares it.
#[derive(Clone, Copy)]
enum Number {
    Int(i128),
    Float(f64),
}

/// AMQP basic properties, all optional as on the wire.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    /// MIME type of the body.
    pub content_type: Option<String>,
    /// MIME content encoding of the body.
    pub content_encoding: Option<String>,
    /// Application headers.
    pub headers: Option<FieldTable>,
    /// 1 = transient, 2 = persistent.
    pub delivery_mode: Option<u8>,
    /// Priority 0-255: a priority queue (`x-max-priority`) delivers higher priorities first;
    /// other queues carry it without acting on it.
    pub priority: Option<u8>,
    /// Correlation id.
    pub correlation_id: Option<String>,
    /// Address to reply to.
    pub reply_to: Option<String>,
    /// Per-message TTL in milliseconds, as a string (RabbitMQ's wire format).
    pub expiration: Option<String>,
    /// Message id.
    pub message_id: Option<String>,
    /// Seconds since the Unix epoch.
    pub timestamp: Option<u64>,
    /// Message type name; AMQP calls this property `type`.
    pub kind: Option<String>,
    /// Publishing user; if set it must be the connection's user (RabbitMQ's rule).
    pub user_id: Option<String>,
    /// Publishing application.
    pub app_id: Option<String>,
    /// Deprecated in AMQP 0-9-1; RabbitMQ carries it through, and so does broker-mem.
    pub cluster_id: Option<String>,
}

impl Properties {
    /// No property set (what most messages carry). Checked field by field: building a default
    /// to compare against would cost a construction and a drop on every publish.
    pub(crate) fn is_empty(&self) -> bool {
        let Properties {
            content_type,
            content_encoding,
            headers,
            delivery_mode,
            priority,
            correlation_id,
            reply_to,
            expiration,
            message_id,
            timestamp,
            kind,
            user_id,
            app_id,
            cluster_id,
        } = self;
        content_type.is_none()
            && content_encoding.is_none()
            && headers.is_none()
            && delivery_mode.is_none()
            && priority.is_none()
            && correlation_id.is_none()
            && reply_to.is_none()
            && expiration.is_none()
            && message_id.is_none()
            && timestamp.is_none()
            && kind.is_none()
            && user_id.is_none()
            && app_id.is_none()
            && cluster_id.is_none()
    }
}

/// The broker's answer to a publish (publisher confirms).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirm {
    /// The broker took responsibility: the message is in every queue it routed to (possibly
    /// none: RabbitMQ acks unroutable messages that are not mandatory).
    Ack,
    /// The broker refused the message and enqueued it nowhere; the publisher may retry later.
    Nack {
        /// Why, for logs (AMQP's `basic.nack` carries no reason; the in-process client can).
        reason: String,
    },
    /// The channel is in a transaction (`tx.select`): the message is held until `tx.commit`
    /// enqueues it or `tx.rollback` (or a close) drops it. No confirm follows.
    Pending,
}

/// Flags of `basic.publish`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishOptions {
    /// Return the message (`basic.return`, 312 NO_ROUTE) when no queue takes it, instead of
    /// dropping it.
    pub mandatory: bool,
}

/// A message handed back to its publisher (`basic.return`).
#[derive(Debug, Clone, PartialEq)]
pub struct Returned {
    /// 312 for NO_ROUTE.
    pub reply_code: u16,
    /// `NO_ROUTE`.
    pub reply_text: String,
    /// The exchange it was published to.
    pub exchange: String,
    /// The routing key it was published with.
    pub routing_key: String,
    /// Properties as published.
    pub properties: Properties,
    /// Body as published.
    pub body: Bytes,
}

/// The broker's answers to one publish, in the order RabbitMQ sends them: the return (if
/// mandatory and unroutable) comes before the confirm.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    /// `basic.return`, when the message was mandatory and no queue took it. Boxed: it is rare
    /// and large, and every publish returns this struct.
    pub returned: Option<Box<Returned>>,
    /// The publisher confirm.
    pub confirm: Confirm,
}

/// AMQP reply code of `basic.return` for an unroutable mandatory message.
pub const REPLY_NO_ROUTE: u16 = 312;

/// One published message, shared by every queue it was routed to and every unacked delivery
/// of it: a clone is one reference count, and the queues' entries stay small to move.
#[derive(Debug, Clone)]
pub(crate) struct Message(Arc<MessageData>);

/// What a [`Message`] holds. A delivery shares its fields: the names are [`SmolStr`]s, the
/// properties sit behind their own `Arc` (a delivery hands them out) and the body is [`Bytes`].
#[derive(Debug)]
pub(crate) struct MessageData {
    pub exchange: SmolStr,
    pub routing_key: SmolStr,
    pub properties: Arc<Properties>,
    pub body: Bytes,
    /// The routing keys its `BCC` header named: gone from the headers, but dead-lettering
    /// routes by them again, as RabbitMQ does. Boxed: almost every message has none.
    pub bcc: Option<Box<BccKeys>>,
}

/// Routing keys from a `BCC` header.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct BccKeys(pub Vec<SmolStr>);

impl std::ops::Deref for Message {
    type Target = MessageData;

    fn deref(&self) -> &MessageData {
        &self.0
    }
}

impl Message {
    pub(crate) fn new(
        exchange: SmolStr,
        routing_key: SmolStr,
        properties: Arc<Properties>,
        body: Bytes,
        bcc: Option<Box<BccKeys>>,
    ) -> Message {
        Message(Arc::new(MessageData {
            exchange,
            routing_key,
            properties,
            body,
            bcc,
        }))
    }

    /// Properties as a message holds them. Many messages carry none, and those all share one
    /// allocation.
    pub(crate) fn share_properties(properties: Properties) -> Arc<Properties> {
        static NONE: LazyLock<Arc<Properties>> = LazyLock::new(Arc::default);
        if properties.is_empty() {
            Arc::clone(&NONE)
        } else {
            Arc::new(properties)
        }
    }

    /// `delivery_mode = 2`: kept across a broker restart when in a durable queue.
    pub(crate) fn persistent(&self) -> bool {
        self.properties.delivery_mode == Some(2)
    }

    /// The per-message TTL, when `expiration` holds a valid number of milliseconds.
    pub(crate) fn expiration_ms(&self) -> Option<u64> {
        parse_expiration(self.properties.expiration.as_deref()?).ok()
    }
}

/// The longest TTL RabbitMQ accepts (`x-message-ttl`, `x-expires`, `expiration`): ten years,
/// in milliseconds.
pub(crate) const EXPIRY_MS_MAX: u64 = 315_360_000_000;

/// Reads `expiration` as RabbitMQ 3.10 does (Erlang's `string:to_integer`: an optional sign,
/// then digits, nothing after them; zero to ten years). The error is RabbitMQ's whole 406 text
/// after the code name, probed on 3.10.8, down to Erlang's line break in a long term.
pub(crate) fn parse_expiration(text: &str) -> Result<u64, String> {
    let signed = usize::from(text.starts_with(['+', '-']));
    let digits = text[signed..]
        .bytes()
        .take_while(u8::is_ascii_digit)
        .count();
    let (number, rest) = text.split_at(signed + digits);
    let magnitude = number[signed..].trim_start_matches('0');
    let magnitude = if magnitude.is_empty() { "0" } else { magnitude };
    let negative = number.starts_with('-') && magnitude != "0";
    let ms = magnitude
        .parse::<u64>()
        .ok()
        .filter(|ms| *ms <= EXPIRY_MS_MAX);
    match ms {
        Some(ms) if digits > 0 && rest.is_empty() && !negative => return Ok(ms),
        _ => {}
    }
    // Only a refusal pays for the text.
    let prefix = format!("invalid expiration '{text}': ");
    // Erlang's `~p` breaks a tuple that would reach column 80 after its first element.
    let reason = |tag: &str, value: String| {
        // Erlang counts the columns of the expiration's bytes, not of its characters.
        let column = prefix.len();
        let term = format!("{{{tag},{value}}}");
        if column + term.chars().count() >= 80 {
            let indent = " ".repeat(column + 1);
            format!("{prefix}{{{tag},\n{indent}{value}}}")
        } else {
            format!("{prefix}{term}")
        }
    };
    Err(if digits == 0 {
        format!("{prefix}no_integer")
    } else if !rest.is_empty() {
        reason("leftover_string", erlang_string(rest))
    } else if negative {
        reason("value_negative", format!("-{magnitude}"))
    } else {
        reason("value_too_large", magnitude.to_owned())
    })
}

/// A text as Erlang's `~p` prints it (RabbitMQ's reply texts embed such terms): quoted, with
/// `"` and `\` and the usual control characters escaped, when every byte is printable Latin-1;
/// otherwise the list of its bytes.
pub(crate) fn erlang_string(text: &str) -> String {
    let escape = |byte: u8| match byte {
        b'"' => Some("\\\""),
        b'\\' => Some("\\\\"),
        b'\n' => Some("\\n"),
        b'\r' => Some("\\r"),
        b'\t' => Some("\\t"),
        0x0b => Some("\\v"),
        0x08 => Some("\\b"),
        0x0c => Some("\\f"),
        0x1b => Some("\\e"),
        _ => None,
    };
    let printable = |byte: u8| matches!(byte, 0x20..=0x7e | 0xa0..=0xff) || escape(byte).is_some();
    if !text.bytes().all(printable) {
        let bytes: Vec<String> = text.bytes().map(|byte| byte.to_string()).collect();
        return format!("[{}]", bytes.join(","));
    }
    let mut quoted = String::from("\"");
    for byte in text.bytes() {
        match escape(byte) {
            Some(escaped) => quoted.push_str(escaped),
            None => quoted.push(char::from(byte)),
        }
    }
    quoted.push('"');
    quoted
}

/// Why a message was dead-lettered (the `reason` of its `x-death` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DeathReason {
    /// `basic.reject` or `basic.nack` with `requeue = false`.
    Rejected,
    /// Its TTL ran out.
    Expired,
    /// Dropped from the head of a queue at its length limit (or refused with
    /// `reject-publish-dlx`).
    Maxlen,
    /// A quorum queue's `x-delivery-limit` was passed.
    DeliveryLimit,
}

impl DeathReason {
    /// The name in `x-death`.
    pub fn as_str(self) -> &'static str {
        match self {
            DeathReason::Rejected => "rejected",
            DeathReason::Expired => "expired",
            DeathReason::Maxlen => "maxlen",
            DeathReason::DeliveryLimit => "delivery_limit",
        }
    }
}

/// A message that left a queue without being consumed, as introspection shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLettered {
    /// The queue it left.
    pub queue: String,
    /// Why.
    pub reason: DeathReason,
    /// The queue's dead-letter exchange, if it has one (else the message was dropped).
    pub dead_letter_exchange: Option<String>,
    /// The exchange it had been published to.
    pub exchange: String,
    /// The routing key it had been published with.
    pub routing_key: String,
    /// Its body.
    pub body: Bytes,
    /// On the engine's clock.
    pub at_ms: u64,
}

/// The headers of a message dead-lettered from `queue`: RabbitMQ 3.10's `x-death` update
/// (rabbit_dead_letter), down to the order of the keys. The newest event goes first; an earlier
/// entry for the same queue and reason is counted up and moved to the front (keeping its other
/// fields); `x-first-death-*` are set on the first death. A first event keeps RabbitMQ's field
/// order (count, reason, queue, time, exchange, routing-keys); an event added to or updated in
/// an existing list has its keys sorted, and so, every time, do the headers: RabbitMQ sets each
/// of them with `rabbit_misc:set_table_value`, which sorts the table.
pub(crate) fn add_death(
    properties: &mut Properties,
    queue: &str,
    reason: DeathReason,
    exchange: &str,
    routing_keys: &[SmolStr],
    time_s: u64,
) {
    let mut headers = properties.headers.take().unwrap_or_default();
    let str_value = |s: &str| FieldValue::String(s.to_owned());
    let mut event = FieldTable::new();
    event.insert("count".into(), FieldValue::I64(1));
    event.insert("reason".into(), str_value(reason.as_str()));
    event.insert("queue".into(), str_value(queue));
    event.insert("time".into(), FieldValue::Timestamp(time_s));
    event.insert("exchange".into(), str_value(exchange));
    let keys = routing_keys.iter().map(|key| str_value(key)).collect();
    event.insert("routing-keys".into(), FieldValue::Array(keys));
    if let Some(expiration) = &properties.expiration {
        event.insert("original-expiration".into(), str_value(expiration));
    }
    let deaths = match headers.get_mut("x-death") {
        None => {
            headers.insert("x-first-death-reason".into(), str_value(reason.as_str()));
            headers.insert("x-first-death-queue".into(), str_value(queue));
            headers.insert("x-first-death-exchange".into(), str_value(exchange));
            vec![FieldValue::Table(event)]
        }
        Some(FieldValue::Array(deaths)) => {
            let mut deaths = std::mem::take(deaths);
            let same = deaths.iter().position(|death| {
                matches!(death, FieldValue::Table(t)
                    if t.get("queue") == Some(&str_value(queue))
                    && t.get("reason") == Some(&str_value(reason.as_str())))
            });
            let mut entry = match same.map(|position| deaths.remove(position)) {
                Some(FieldValue::Table(mut earlier)) => {
                    let count = earlier
                        .get("count")
                        .and_then(FieldValue::as_integer)
                        .unwrap_or(0);
                    earlier.insert("count".into(), FieldValue::I64(count.saturating_add(1)));
                    earlier
                }
                _ => event,
            };
            entry.sort_keys();
            deaths.insert(0, FieldValue::Table(entry));
            deaths
        }
        // Not an array (a client republished it with other types): RabbitMQ starts the list
        // again, without touching `x-first-death-*` (rabbitmq-server#767).
        Some(_) => vec![FieldValue::Table(event)],
    };
    headers.insert("x-death".into(), FieldValue::Array(deaths));
    headers.sort_keys();
    properties.headers = Some(headers);
    properties.expiration = None;
}

/// Sender-selected distribution: the routing keys a message's `CC` and `BCC` headers add to
/// its own (RabbitMQ reads arrays of strings, ignores other elements, and refuses a header of
/// another type with this text).
/// The keys come CC first; the second value says how many came from CC.
pub(crate) fn header_routes(headers: &FieldTable) -> Result<(Vec<SmolStr>, usize), String> {
    let mut keys = Vec::new();
    let mut from_cc = 0;
    for header in ["CC", "BCC"] {
        if header == "BCC" {
            from_cc = keys.len();
        }
        match headers.get(header) {
            None => {}
            Some(FieldValue::Array(items)) => {
                keys.extend(
                    (items.iter())
                        .filter_map(|key| key.as_longstr().map(|key| SmolStr::from(key.as_ref()))),
                );
            }
            Some(other) => {
                return Err(format!(
                    "invalid message: {{unacceptable_type_in_header,\"{header}\",{}}}",
                    other.type_name()
                ));
            }
        }
    }
    Ok((keys, from_cc))
}

/// RabbitMQ's dead-letter cycle rule: a message dead-lettered (not rejected) back into a queue
/// it already died in, with no rejection since, is dropped.
pub(crate) fn is_cycle(properties: &Properties, queue: &str) -> bool {
    let Some(FieldValue::Array(deaths)) =
        properties.headers.as_ref().and_then(|h| h.get("x-death"))
    else {
        return false;
    };
    let field = |death: &FieldValue, key: &str| match death {
        FieldValue::Table(t) => match t.get(key) {
            Some(FieldValue::String(s)) => Some(s.clone()),
            _ => None,
        },
        _ => None,
    };
    let Some(position) = deaths
        .iter()
        .position(|d| field(d, "queue").as_deref() == Some(queue))
    else {
        return false;
    };
    deaths[..=position]
        .iter()
        .all(|d| field(d, "reason").as_deref() != Some("rejected"))
}

#[cfg(test)]
mod tests {
    use super::{DeathReason, FieldTable, FieldValue, Properties, add_death, erlang_float};

    fn keys(table: &FieldTable) -> Vec<&str> {
        table.keys().map(String::as_str).collect()
    }

    fn death(properties: &Properties, at: usize) -> &FieldTable {
        let Some(FieldValue::Array(deaths)) = properties.headers.as_ref().unwrap().get("x-death")
        else {
            panic!("x-death is an array");
        };
        let FieldValue::Table(death) = &deaths[at] else {
            panic!("an x-death entry is a table");
        };
        death
    }

    /// Dead-lettered headers come out in RabbitMQ 3.10's order (probed with pika, which keeps a
    /// table's order): the headers sorted, a first event in RabbitMQ's field order, an event
    /// counted up or added to a list sorted, other entries as they were; an `x-death` that is
    /// not an array is started again without `x-first-death-*`.
    #[test]
    fn deaths_keep_rabbitmq_key_order() {
        let text = |s: &str| FieldValue::String(s.to_owned());
        let mut properties = Properties {
            headers: Some(FieldTable::from([
                ("zeta".to_owned(), FieldValue::I32(1)),
                ("alpha".to_owned(), FieldValue::I32(2)),
                ("CC".to_owned(), FieldValue::Array(vec![text("k2")])),
            ])),
            expiration: Some("100000".to_owned()),
            ..Properties::default()
        };
        let keys_routed = ["k".into(), "k2".into()];
        add_death(
            &mut properties,
            "q",
            DeathReason::Rejected,
            "x",
            &keys_routed,
            7,
        );
        let headers = properties.headers.as_ref().unwrap();
        assert_eq!(
            keys(headers),
            [
                "CC",
                "alpha",
                "x-death",
                "x-first-death-exchange",
                "x-first-death-queue",
                "x-first-death-reason",
                "zeta"
            ]
        );
        let first = [
            "count",
            "reason",
            "queue",
            "time",
            "exchange",
            "routing-keys",
            "original-expiration",
        ];
        assert_eq!(keys(death(&properties, 0)), first);

        let mut again = properties.clone();
        add_death(&mut again, "q", DeathReason::Rejected, "x", &keys_routed, 8);
        let sorted = [
            "count",
            "exchange",
            "original-expiration",
            "queue",
            "reason",
            "routing-keys",
            "time",
        ];
        assert_eq!(keys(death(&again, 0)), sorted);
        assert_eq!(death(&again, 0).get("count"), Some(&FieldValue::I64(2)));

        let mut elsewhere = properties.clone();
        add_death(
            &mut elsewhere,
            "other",
            DeathReason::Expired,
            "x",
            &keys_routed,
            9,
        );
        let new_sorted = [
            "count",
            "exchange",
            "queue",
            "reason",
            "routing-keys",
            "time",
        ];
        assert_eq!(keys(death(&elsewhere, 0)), new_sorted);
        assert_eq!(keys(death(&elsewhere, 1)), first);

        let mut junk = Properties {
            headers: Some(FieldTable::from([
                ("zeta".to_owned(), FieldValue::I32(1)),
                ("x-death".to_owned(), text("junk")),
            ])),
            ..Properties::default()
        };
        add_death(&mut junk, "q", DeathReason::Rejected, "x", &keys_routed, 7);
        assert_eq!(keys(junk.headers.as_ref().unwrap()), ["x-death", "zeta"]);
        assert_eq!(keys(death(&junk, 0)), &first[..6]);
    }

    /// As Erlang's `~p` prints each (an `f` header is a double there, so 0.1f32 shows all of
    /// its digits).
    #[test]
    fn floats_print_as_erlang_prints_them() {
        let cases = [
            (1.0, "1.0"),
            (1.5, "1.5"),
            (-2.0, "-2.0"),
            (0.0001, "0.0001"),
            (f64::from(0.1f32), "0.10000000149011612"),
            (1e20, "1.0e20"),
            (1.5e-7, "1.5e-7"),
            (0.0, "0.0"),
        ];
        for (value, text) in cases {
            assert_eq!(erlang_float(value), text, "{value}");
        }
    }

    /// `is_empty` lists the fields by hand (for speed): every field must make it false.
    #[test]
    fn any_property_set_is_not_empty() {
        fn text() -> Option<String> {
            Some("x".to_owned())
        }
        let setters: [fn(&mut Properties); 14] = [
            |p| p.content_type = text(),
            |p| p.content_encoding = text(),
            |p| p.headers = Some(FieldTable::new()),
            |p| p.delivery_mode = Some(2),
            |p| p.priority = Some(0),
            |p| p.correlation_id = text(),
            |p| p.reply_to = text(),
            |p| p.expiration = text(),
            |p| p.message_id = text(),
            |p| p.timestamp = Some(0),
            |p| p.kind = text(),
            |p| p.user_id = text(),
            |p| p.app_id = text(),
            |p| p.cluster_id = text(),
        ];
        let each = setters.map(|set| {
            let mut properties = Properties::default();
            set(&mut properties);
            properties
        });
        assert!(Properties::default().is_empty());
        for properties in each {
            assert!(!properties.is_empty(), "{properties:?}");
            assert_ne!(properties, Properties::default());
        }
    }
}
