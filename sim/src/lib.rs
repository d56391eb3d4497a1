//! warren: the whole system and the kit to test it.
//!
//! Owns: running the system embedded in one process ([`embedded`]), the turmoil simulation of
//! the whole message flow decided by one seed ([`simulation`]), and its trace ([`trace`]).
//! The `warren` CLI is the binary of this crate.
//!
//! Depends on every other warren crate; nothing depends on it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// One seed, one trace needs turmoil to seed tokio's `select!`, which only a build with
// `--cfg tokio_unstable` lets it do. `.cargo/config.toml` sets the flag, but a `RUSTFLAGS`
// variable replaces the flags of that file: without this, such a build would run every seed
// nondeterministically, and say nothing.
#[cfg(not(tokio_unstable))]
compile_error!(
    "warren-sim needs `--cfg tokio_unstable` (set in .cargo/config.toml; a RUSTFLAGS \
     environment variable replaces it: add `--cfg tokio_unstable` to RUSTFLAGS)"
);

pub mod checker;
pub mod embedded;
pub mod faults;
pub mod hosts;
pub mod journal;
pub mod kit;
pub mod regressions;
pub mod render;
pub mod scenario;
pub mod simulation;
pub mod swarm;
pub mod trace;

pub use embedded::{BrokerChoice, RunningSystem, SystemConfig};
pub use kit::Harness;
pub use simulation::{SimConfig, SimReport};
