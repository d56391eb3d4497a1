//! warren: the whole system and the kit to test it.
//!
//! Owns: running the system embedded in one process ([`embedded`]), the turmoil simulation of
//! the whole message flow decided by one seed ([`simulation`]), and its trace ([`trace`]).
//! The `warren` CLI is the binary of this crate.
//!
//! Depends on every other warren crate; nothing depends on it.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

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
