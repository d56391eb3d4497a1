//! The maps the engine looks things up in on every publish and delivery.
//!
//! Hashed with Fx (rustc's hash: fixed, no random seed, fast on short keys) rather than searched
//! comparison by comparison in a `BTreeMap`. They are `IndexMap`s, so iteration is in insertion
//! order and the same in every run (DESIGN.md's determinism rules); removal must use
//! `shift_remove`, which keeps that order. Introspection that promises a sorted listing sorts.

use smol_str::SmolStr;

/// Records by a numeric handle (channels by [`crate::ChannelId`]).
pub(crate) type HandleMap<K, V> = indexmap::IndexMap<K, V, rustc_hash::FxBuildHasher>;

/// Exchanges, queues or consumers by name.
pub(crate) type NameMap<V> = HandleMap<SmolStr, V>;

/// Where `key` is in `map`, tried first at `hint` (where it was found before): one comparison
/// instead of a hash and a probe while the map has not shifted since. A wrong or stale hint
/// only costs the usual lookup.
pub(crate) fn hinted_index<K, V, Q>(map: &HandleMap<K, V>, hint: usize, key: &Q) -> Option<usize>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: ?Sized + std::hash::Hash + Eq,
{
    match map.get_index(hint) {
        Some((found, _)) if found.borrow() == key => Some(hint),
        _ => map.get_index_of(key),
    }
}
