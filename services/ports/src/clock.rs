//! The `Clock` port: wall time as milliseconds since the Unix epoch, for timestamps in messages.
//! Sleeping and timeouts use `tokio::time`, which turmoil simulates per host.

/// Wall time.
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_unix_ms(&self) -> i64;
}

/// The operating system's clock (real and embedded modes).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // real-mode adapter: the one place that reads the OS clock
    fn now_unix_ms(&self) -> i64 {
        std::time::SystemTime::now() // allow-nondeterminism: the real-mode Clock adapter
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0)
    }
}

/// Simulated wall time: a fixed epoch plus turmoil's simulated elapsed time on this host.
#[cfg(feature = "turmoil")]
#[derive(Debug, Clone, Copy)]
pub struct SimClock {
    /// Wall time at the start of the simulation.
    pub epoch_unix_ms: i64,
}

#[cfg(feature = "turmoil")]
impl Clock for SimClock {
    fn now_unix_ms(&self) -> i64 {
        let elapsed = turmoil::sim_elapsed().unwrap_or_default();
        self.epoch_unix_ms + i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
    }
}
