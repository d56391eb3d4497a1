//! What a warren service needs from the world, and the adapters that provide it.
//!
//! Owns: the ports `Bus` (a message broker), `Clock` (wall time as a number), `Ids` (new
//! analysis ids) and `Net` (listen and connect), and one adapter per mode behind a feature:
//! `rabbitmq` (lapin, real mode), `memory` (broker-mem in process), `turmoil` (simulated network
//! and time), `wire` (a thread-free AMQP 0-9-1 client over any `Net`, deterministic under
//! turmoil). Services are written against the ports only, so one copy of their code runs in
//! every mode.
//!
//! Must never depend on: any service crate or the simulation. Only the real-mode adapters
//! (`SystemClock`, `UuidV7Ids`, `TokioNet`, `rabbitmq`) may read the OS clock, OS randomness or
//! spawn threads; everything else here must stay deterministic.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

#[cfg(any(feature = "rabbitmq", feature = "wire"))]
mod amqp_properties;
pub mod bus;
pub mod clock;
pub mod ids;
#[cfg(feature = "memory")]
pub mod memory;
pub mod net;
#[cfg(feature = "rabbitmq")]
pub mod rabbitmq;
#[cfg(feature = "testing")]
pub mod testing;
#[cfg(feature = "wire")]
pub mod wire;

use std::sync::Arc;

pub use bus::{Acker, Bus, BusError, ConsumeOptions, Deliveries, Delivery};
pub use clock::{Clock, SystemClock};
pub use ids::{Ids, SeededIds, UuidV7Ids};
pub use net::{Net, TokioNet};

/// The ports a service runs on, shared by its tasks.
#[derive(Clone)]
pub struct Ports {
    /// The message broker.
    pub bus: Arc<dyn Bus>,
    /// Wall time.
    pub clock: Arc<dyn Clock>,
    /// New ids.
    pub ids: Arc<dyn Ids>,
}

impl Ports {
    /// Real-mode clock and ids around the given bus.
    pub fn real(bus: Arc<dyn Bus>) -> Ports {
        Ports {
            bus,
            clock: Arc::new(SystemClock),
            ids: Arc::new(UuidV7Ids),
        }
    }
}

#[cfg(feature = "turmoil")]
pub use clock::SimClock;
#[cfg(feature = "turmoil")]
pub use net::{TurmoilListener, TurmoilNet};
