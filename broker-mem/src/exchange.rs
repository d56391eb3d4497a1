//! Exchanges: where publishers send messages. An exchange owns its bindings and decides, from a
//! routing key and headers, which queues and exchanges a message goes on to.

use std::borrow::Cow;

use crate::binding::{Bindings, Destination};
use crate::error::{Fault, ReplyCode};
use crate::message::{FieldTable, FieldValue, describe_values, erlang_term};

/// The exchange types broker-mem implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ExchangeKind {
    /// Routes to the queues bound with a binding key equal to the routing key.
    Direct,
    /// Routes to every bound queue; the routing key is ignored.
    Fanout,
    /// Routes by pattern: binding keys are dot-separated words where `*` matches exactly one
    /// word and `#` zero or more.
    Topic,
    /// Routes on message headers against the binding's arguments (`x-match` = `all`, `any`,
    /// `all-with-x` or `any-with-x`).
    Headers,
}

impl ExchangeKind {
    /// The AMQP type name (`direct`, `fanout`).
    pub fn as_str(self) -> &'static str {
        match self {
            ExchangeKind::Direct => "direct",
            ExchangeKind::Fanout => "fanout",
            ExchangeKind::Topic => "topic",
            ExchangeKind::Headers => "headers",
        }
    }

    /// The kind named by an AMQP type name; None for types broker-mem does not have.
    pub fn from_name(name: &str) -> Option<ExchangeKind> {
        match name {
            "direct" => Some(ExchangeKind::Direct),
            "fanout" => Some(ExchangeKind::Fanout),
            "topic" => Some(ExchangeKind::Topic),
            "headers" => Some(ExchangeKind::Headers),
            _ => None,
        }
    }
}

/// Flags of `exchange.declare`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeOptions {
    /// Survives a broker restart ([`crate::Broker::restart`]); checked for equivalence on a
    /// redeclare.
    pub durable: bool,
    /// Deleted when its last binding is removed.
    pub auto_delete: bool,
    /// Cannot be published to directly (403), only bound from other exchanges.
    pub internal: bool,
    /// Only check that the exchange exists (404 if not); nothing is created or compared.
    pub passive: bool,
}

/// An exchange as introspection shows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ExchangeInfo {
    /// Name (`""` is the default exchange).
    pub name: String,
    /// Type.
    pub kind: ExchangeKind,
    /// Declared durable.
    pub durable: bool,
    /// Declared auto-delete.
    pub auto_delete: bool,
    /// Declared internal.
    pub internal: bool,
}

/// The name of the default exchange, which routes to the queue named by the routing key.
pub(crate) const DEFAULT_EXCHANGE: &str = "";

/// The exchanges every RabbitMQ vhost starts with, all durable: (name, type, internal).
/// `amq.rabbitmq.trace` is the firehose tracer's; broker-mem has no tracer, so it routes only
/// what is published to it through exchange bindings, as RabbitMQ's does with tracing off.
pub(crate) const PREDECLARED: [(&str, ExchangeKind, bool); 7] = [
    (DEFAULT_EXCHANGE, ExchangeKind::Direct, false),
    ("amq.direct", ExchangeKind::Direct, false),
    ("amq.fanout", ExchangeKind::Fanout, false),
    ("amq.topic", ExchangeKind::Topic, false),
    ("amq.headers", ExchangeKind::Headers, false),
    ("amq.match", ExchangeKind::Headers, false),
    ("amq.rabbitmq.trace", ExchangeKind::Topic, true),
];

/// The declare argument naming the exchange that takes what this one cannot route.
pub(crate) const ARG_ALTERNATE_EXCHANGE: &str = "alternate-exchange";

#[derive(Debug)]
pub(crate) struct Exchange {
    pub kind: ExchangeKind,
    pub durable: bool,
    pub auto_delete: bool,
    pub internal: bool,
    /// `alternate-exchange`: where messages this exchange routes nowhere go instead.
    pub alternate: Option<String>,
    pub bindings: Bindings,
}

impl Exchange {
    pub(crate) fn new(kind: ExchangeKind, options: ExchangeOptions) -> Exchange {
        Exchange {
            kind,
            durable: options.durable,
            auto_delete: options.auto_delete,
            internal: options.internal,
            alternate: None,
            bindings: Bindings::default(),
        }
    }

    /// The `alternate-exchange` named by declare arguments (a string; other types are ignored,
    /// as RabbitMQ does).
    pub(crate) fn alternate_from(arguments: &FieldTable) -> Option<String> {
        match arguments.get(ARG_ALTERNATE_EXCHANGE) {
            Some(name) => name.as_longstr().map(Cow::into_owned),
            _ => None,
        }
    }

    /// RabbitMQ's equivalence check for a redeclare: every property must match.
    pub(crate) fn check_equivalent(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) -> Result<(), Fault> {
        let inequivalent = |arg: &str, received: &str, current: &str| {
            Fault::channel(
                ReplyCode::PreconditionFailed,
                format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{}': received \
                     '{received}' but current is '{current}'",
                    crate::VHOST
                ),
            )
        };
        if kind != self.kind {
            return Err(inequivalent("type", kind.as_str(), self.kind.as_str()));
        }
        let flags = [
            ("durable", options.durable, self.durable),
            ("auto_delete", options.auto_delete, self.auto_delete),
            ("internal", options.internal, self.internal),
        ];
        for (arg, received, current) in flags {
            if received != current {
                return Err(inequivalent(arg, bool_str(received), bool_str(current)));
            }
        }
        Ok(())
    }

    /// RabbitMQ checks `alternate-exchange` on a redeclare (the only exchange argument it
    /// compares), before it would look at the type of a new one: a value of another type is
    /// inequivalent, not invalid (probed on 3.10.8).
    pub(crate) fn check_equivalent_arguments(
        &self,
        name: &str,
        arguments: &FieldTable,
    ) -> Result<(), Fault> {
        let received = arguments.get(ARG_ALTERNATE_EXCHANGE);
        let current = self.alternate.clone().map(FieldValue::String);
        let same = match (received, &current) {
            (Some(received), Some(current)) => received.equivalent(current),
            (received, current) => received.is_none() && current.is_none(),
        };
        if same {
            return Ok(());
        }
        let (received, current) = describe_values(received, current.as_ref());
        Err(Fault::channel(
            ReplyCode::PreconditionFailed,
            format!(
                "inequivalent arg '{ARG_ALTERNATE_EXCHANGE}' for exchange '{name}' in vhost '{}': \
                 received {received} but current is {current}",
                crate::VHOST,
            ),
        ))
    }

    /// Calls `found` with every destination this exchange routes the message to (possibly
    /// the same one twice; the caller keeps a set).
    pub(crate) fn route<'a>(
        &'a self,
        routing_key: &str,
        headers: Option<&FieldTable>,
        mut found: impl FnMut(&'a Destination),
    ) {
        match self.kind {
            ExchangeKind::Direct => self.bindings.with_key(routing_key).for_each(found),
            ExchangeKind::Fanout => self.bindings.all().for_each(|(_, d, _)| found(d)),
            ExchangeKind::Topic => {
                for (key, destination, _) in self.bindings.all() {
                    if topic_matches(key, routing_key) {
                        found(destination);
                    }
                }
            }
            ExchangeKind::Headers => {
                let empty = FieldTable::new();
                let headers = headers.unwrap_or(&empty);
                for (_, destination, arguments) in self.bindings.all() {
                    if headers_match(arguments, headers) {
                        found(destination);
                    }
                }
            }
        }
    }

    pub(crate) fn info(&self, name: &str) -> ExchangeInfo {
        ExchangeInfo {
            name: name.to_owned(),
            kind: self.kind,
            durable: self.durable,
            auto_delete: self.auto_delete,
            internal: self.internal,
        }
    }
}

pub(crate) fn bool_str(value: bool) -> &'static str {
    if value { "true" } else { "false" }
}

/// Whether a topic binding key matches a routing key: words are separated by `.`, `*` matches
/// exactly one word, `#` zero or more. The empty key has no words, as in RabbitMQ.
///
/// Wildcard matching over words without allocating (it runs for every topic binding on every
/// publish): on a mismatch it backtracks to the last `#` only, letting it take one more word,
/// which is enough because a `#` further left can never help more than the last one.
/// O(pattern words × key words) at worst.
pub(crate) fn topic_matches(pattern: &str, routing_key: &str) -> bool {
    let (mut p, mut w) = (first_word(pattern), first_word(routing_key));
    // After the last `#` seen: where the pattern resumes, and the words it has taken up to.
    let mut last_hash: Option<(WordAt, WordAt)> = None;
    loop {
        match word_at(pattern, p) {
            Some(("#", p_next)) => {
                last_hash = Some((p_next, w));
                p = p_next;
                continue;
            }
            Some((wanted, p_next)) => {
                if let Some((word, w_next)) = word_at(routing_key, w)
                    && (wanted == "*" || wanted == word)
                {
                    (p, w) = (p_next, w_next);
                    continue;
                }
            }
            None if w.is_none() => return true,
            None => {}
        }
        // Mismatch: the last `#` takes one more word, if there is one.
        let Some((resume, taken)) = last_hash else {
            return false;
        };
        let Some((_, taken_next)) = word_at(routing_key, taken) else {
            return false;
        };
        last_hash = Some((resume, taken_next));
        (p, w) = (resume, taken_next);
    }
}

/// Where the next word of a key starts; None when no word is left.
type WordAt = Option<usize>;

fn first_word(key: &str) -> WordAt {
    if key.is_empty() { None } else { Some(0) }
}

/// The word at `at` and where the one after it starts.
fn word_at(key: &str, at: WordAt) -> Option<(&str, WordAt)> {
    let rest = &key[at?..];
    Some(match rest.find('.') {
        Some(dot) => (&rest[..dot], Some(at? + dot + 1)),
        None => (rest, None),
    })
}

/// How a headers binding's arguments are matched (`x-match`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum XMatch {
    All,
    Any,
    AllWithX,
    AnyWithX,
}

impl XMatch {
    /// The binding's mode; None for a value RabbitMQ refuses at bind time (so never seen when
    /// routing: [`check_x_match`] keeps such bindings out).
    fn of(arguments: &FieldTable) -> Option<XMatch> {
        match arguments.get("x-match") {
            None => Some(XMatch::All),
            Some(mode) => match mode.as_longstr().as_deref() {
                Some("all") => Some(XMatch::All),
                Some("any") => Some(XMatch::Any),
                Some("all-with-x") => Some(XMatch::AllWithX),
                Some("any-with-x") => Some(XMatch::AnyWithX),
                _ => None,
            },
        }
    }
}

/// RabbitMQ's check of a headers binding's `x-match` (406 otherwise), with its texts.
pub(crate) fn check_x_match(arguments: &FieldTable) -> Result<(), Fault> {
    if XMatch::of(arguments).is_some() {
        return Ok(());
    }
    let text = match arguments.get("x-match") {
        Some(mode @ (FieldValue::String(_) | FieldValue::StringBytes(_))) => format!(
            "Invalid x-match field value {}; expected all, any, all-with-x, or any-with-x",
            erlang_term(mode)
        ),
        Some(other) => format!(
            "Invalid x-match field type {} (value {}); expected longstr",
            other.type_name(),
            erlang_term(other)
        ),
        None => return Ok(()),
    };
    Err(Fault::channel(ReplyCode::PreconditionFailed, text))
}

/// Whether a message's headers match a headers-exchange binding's arguments. `x-match = all`
/// (the default) needs every argument to match, `any` at least one; both ignore arguments
/// starting with `x-`, which `all-with-x` and `any-with-x` match too (never `x-match`
/// itself). A `Void` argument only asks for the header to be present.
pub(crate) fn headers_match(arguments: &FieldTable, headers: &FieldTable) -> bool {
    let Some(mode) = XMatch::of(arguments) else {
        return false;
    };
    let with_x = matches!(mode, XMatch::AllWithX | XMatch::AnyWithX);
    let mut relevant = arguments
        .iter()
        .filter(|(key, _)| key.as_str() != "x-match" && (with_x || !key.starts_with("x-")));
    let matched = |(key, wanted): (&String, &FieldValue)| match headers.get(key) {
        None => false,
        Some(_) if *wanted == FieldValue::Void => true,
        Some(value) => value.matches(wanted),
    };
    match mode {
        XMatch::Any | XMatch::AnyWithX => relevant.any(matched),
        XMatch::All | XMatch::AllWithX => relevant.all(matched),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// The textbook dynamic programme over words, kept as the reference for the matcher.
    fn reference_topic_matches(pattern: &str, routing_key: &str) -> bool {
        let split = |key: &str| -> Vec<String> {
            if key.is_empty() {
                Vec::new()
            } else {
                key.split('.').map(str::to_owned).collect()
            }
        };
        let (pattern, words) = (split(pattern), split(routing_key));
        // matches[i][j]: pattern[i..] matches words[j..].
        let mut matches = vec![vec![false; words.len() + 1]; pattern.len() + 1];
        matches[pattern.len()][words.len()] = true;
        for i in (0..pattern.len()).rev() {
            for j in (0..=words.len()).rev() {
                matches[i][j] = match pattern[i].as_str() {
                    "#" => matches[i + 1][j] || (j < words.len() && matches[i][j + 1]),
                    "*" => j < words.len() && matches[i + 1][j + 1],
                    word => j < words.len() && words[j] == word && matches[i + 1][j + 1],
                };
            }
        }
        matches[0][0]
    }

    proptest! {
        #[test]
        fn topic_matcher_agrees_with_the_reference(
            pattern in proptest::collection::vec(prop_oneof!["a", "b", "", "\\*", "#"], 0..7),
            key in proptest::collection::vec(prop_oneof!["a", "b", ""], 0..7),
        ) {
            let (pattern, key) = (pattern.join("."), key.join("."));
            prop_assert_eq!(
                topic_matches(&pattern, &key),
                reference_topic_matches(&pattern, &key),
                "pattern {:?} key {:?}", pattern, key
            );
        }
    }

    #[test]
    fn topic_wildcards_follow_rabbitmq() {
        assert!(topic_matches("a.*.c", "a.b.c"));
        assert!(!topic_matches("a.*.c", "a.c"));
        assert!(topic_matches("a.#", "a"));
        assert!(topic_matches("a.#", "a.b.c"));
        assert!(topic_matches("#", ""));
        assert!(topic_matches("#.c", "c"));
        assert!(topic_matches("a.#.c", "a.c"));
        assert!(!topic_matches("a.b", "axb"));
        assert!(!topic_matches("*", ""));
        assert!(topic_matches("*", "a") && !topic_matches("*", "a.b"));
        assert!(topic_matches("#.a.#.b", "x.a.y.a.b"));
        assert!(!topic_matches("#.a.#.b", "x.a.y.b.c"));
        assert!(topic_matches("a.", "a.") && !topic_matches("a.", "a"));
    }
}
