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
