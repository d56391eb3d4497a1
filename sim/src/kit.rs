//! warren as a library for other teams: put your own subscriber into the simulated system, drive
//! a workload, inject faults, run until the system is idle (no wall-clock waits), and assert on
//! what was published, consumed and acked, and on what your subscriber did.
//!
//! ```no_run
//! use futures::StreamExt;
//! use warren_sim::kit::Harness;
//!
//! let report = Harness::new(7)
//!     .workload(2, 3)
//!     .subscriber("audit", |ctx| async move {
//!         // Your subscriber, written against `ports::Bus` like any warren service.
//!         let mut deliveries = ctx.ports.bus.consume("audit.completed", Default::default()).await?;
//!         while let Some(delivery) = deliveries.next().await {
//!             let delivery = delivery?;
//!             ctx.log.record(format!("{:?}", delivery.properties.message_id));
//!             delivery.ack().await?;
//!         }
//!         Ok(())
//!     })
//!     .run();
//! assert!(report.violations.is_empty());
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ports::Ports;

use crate::faults::{Fault, ScheduledFault};
use crate::simulation::{SimConfig, SimReport, run_with};

/// What a subscriber host gets: its ports (a bus already journaled), its host name, and a log.
pub struct SubscriberContext {
    /// Bus, clock and ids, as any warren service gets them.
    pub ports: Ports,
    /// This host's name.
    pub host: String,
    /// Where the subscriber records what it did; ends up in [`SimReport::subscriber_logs`].
    pub log: SubscriberLog,
}

type Body = Arc<dyn Fn(SubscriberContext) -> Pin<Box<dyn Future<Output = anyhow::Result<()>>>>>;

/// A subscriber host: a name and the code it runs (started again after each restart).
#[derive(Clone)]
pub struct SubscriberSpec {
    pub(crate) host: String,
    pub(crate) body: Body,
}

/// Lines recorded by subscriber hosts, per host.
#[derive(Debug, Clone, Default)]
pub struct SubscriberLog {
    host: String,
    lines: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
}

impl SubscriberLog {
    /// Records one line (also a trace event).
    pub fn record(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!(target: "warren_sim::subscriber", host = %self.host, line = %line, "subscriber");
        self.lines
            .lock()
            .expect("subscriber log poisoned")
            .entry(self.host.clone())
            .or_default()
            .push(line);
    }

    pub(crate) fn for_host(&self, host: &str) -> SubscriberLog {
        SubscriberLog {
            host: host.to_owned(),
            lines: self.lines.clone(),
        }
    }

    pub(crate) fn take(&self) -> BTreeMap<String, Vec<String>> {
        std::mem::take(&mut *self.lines.lock().expect("subscriber log poisoned"))
    }
}

/// Builds a simulated run of the whole system with your subscribers in it.
#[derive(Clone)]
pub struct Harness {
    config: SimConfig,
    subscribers: Vec<SubscriberSpec>,
}

impl Harness {
    /// The default system (one orchestrator, one gateway, three clients) under `seed`.
    pub fn new(seed: u64) -> Harness {
        Harness {
            config: SimConfig {
                seed,
                ..SimConfig::default()
            },
            subscribers: Vec::new(),
        }
    }

    /// Starts from a full configuration.
    pub fn from_config(config: SimConfig) -> Harness {
        Harness {
            config,
            subscribers: Vec::new(),
        }
    }

    /// `clients` console clients, each requesting `analyses` analyses.
    pub fn workload(mut self, clients: usize, analyses: usize) -> Harness {
        self.config.clients = clients;
        self.config.analyses_per_client = analyses;
        self
    }

    /// How long each analysis takes (simulated).
    pub fn analysis_duration(mut self, duration: Duration) -> Harness {
        self.config.analysis_duration = duration;
        self
    }

    /// A fault at a simulated time. Hosts: `orchestrator-N`, `gateway-N`, `client-N` (partition
    /// or hold only: clients are turmoil clients, which cannot crash or restart), and your
    /// subscribers' names.
    pub fn fault(mut self, at: Duration, fault: Fault) -> Harness {
        self.config.faults.push(ScheduledFault {
            at_ms: u64::try_from(at.as_millis()).unwrap_or(u64::MAX),
            fault,
        });
        self
    }

    /// Adds a subscriber host named `host` running `body`. Declare your own queue (bound to
    /// `analysis.started` or `analysis.completed`) from the body; the run lasts until every
    /// client finished and the broker has been idle (no ready or unacked message) for a while.
    pub fn subscriber<F, Fut>(mut self, host: &str, body: F) -> Harness
    where
        F: Fn(SubscriberContext) -> Fut + 'static,
        Fut: Future<Output = anyhow::Result<()>> + 'static,
    {
        self.subscribers.push(SubscriberSpec {
            host: host.to_owned(),
            body: Arc::new(move |ctx| Box::pin(body(ctx))),
        });
        self
    }

    /// The configuration so far.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// Runs it and checks the system's own promises; your assertions go on the report.
    pub fn run(&self) -> SimReport {
        run_with(&self.config, &self.subscribers)
    }

    /// Runs it twice and fails if the traces differ, naming the first differing event.
    pub fn run_deterministic(&self) -> Result<SimReport, String> {
        let first = self.run();
        let second = self.run();
        match first.trace.first_difference(&second.trace) {
            None => Ok(first),
            Some(difference) => Err(format!(
                "seed {} is not deterministic: {difference}",
                self.config.seed
            )),
        }
    }
}
