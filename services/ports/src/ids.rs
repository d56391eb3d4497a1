//! The `Ids` port: new analysis ids. Real mode uses uuid v7 (time-ordered); a simulation uses a
//! generator seeded from the simulation seed, so the same seed gives the same ids.

use std::sync::Mutex;

use uuid::Uuid;

/// A source of fresh ids.
pub trait Ids: Send + Sync + 'static {
    /// A new, unique analysis id.
    fn analysis_id(&self) -> Uuid;
}

/// uuid v7 from the OS clock and randomness (real and embedded modes).
#[derive(Debug, Clone, Copy, Default)]
pub struct UuidV7Ids;

impl Ids for UuidV7Ids {
    #[allow(clippy::disallowed_methods)] // real-mode adapter: OS clock and randomness belong here
    fn analysis_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}

/// Deterministic ids from a seed (SplitMix64: tiny, fast and well distributed, which is all an id
/// stream needs; no cryptographic strength is wanted).
#[derive(Debug)]
pub struct SeededIds {
    state: Mutex<u64>,
}

impl SeededIds {
    /// A generator whose sequence is decided by `seed`.
    pub fn new(seed: u64) -> SeededIds {
        SeededIds {
            state: Mutex::new(seed),
        }
    }

    fn next_u64(&self) -> u64 {
        let mut state = self.state.lock().expect("id generator poisoned");
        *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

impl Ids for SeededIds {
    fn analysis_id(&self) -> Uuid {
        let bytes = (u128::from(self.next_u64()) << 64 | u128::from(self.next_u64())).to_be_bytes();
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_gives_same_ids_and_other_seeds_differ() {
        let a: Vec<_> = (0..5)
            .map({
                let g = SeededIds::new(42);
                move |_| g.analysis_id()
            })
            .collect();
        let b: Vec<_> = (0..5)
            .map({
                let g = SeededIds::new(42);
                move |_| g.analysis_id()
            })
            .collect();
        let c = SeededIds::new(43).analysis_id();
        assert_eq!(a, b);
        assert_ne!(a[0], c);
        assert_eq!(a.iter().collect::<std::collections::BTreeSet<_>>().len(), 5);
        assert_eq!(a[0].get_version_num(), 4);
    }
}
