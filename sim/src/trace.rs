//! The simulation trace: one JSON line per event (simulated time, host, target, what happened),
//! recorded from `tracing` events of warren's own crates, and a hash of the whole trace.
//!
//! Recording through `tracing` means every service's existing log line is also a trace event,
//! with no plumbing in service code; turmoil enters a `node` span named after the host while it
//! runs a host, which gives each event its host.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

/// Targets whose events make up the trace: warren's crates, not its dependencies' internals
/// (whose logs may carry wall-clock values).
const TRACED_TARGET_PREFIXES: &[&str] = &[
    "orchestrator",
    "graph_gateway",
    "client_console",
    "warren_sim",
    "broker_mem",
    "ports",
];

/// Most lines one run records; a run that logs more is cut (and says so) rather than growing
/// without bound.
pub const TRACE_LINES_MAX: usize = 1_000_000;

/// One trace event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceLine {
    /// Simulated milliseconds since the start.
    pub t_ms: u128,
    /// The turmoil host, or `sim` outside any host.
    pub host: String,
    /// The `tracing` target (module path).
    pub target: String,
    /// Level.
    pub level: String,
    /// Message and fields, in the order the code wrote them.
    pub what: String,
}

impl TraceLine {
    /// The line as JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("trace lines serialize")
    }
}

/// A complete trace and its hash.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// The lines in order.
    pub lines: Vec<TraceLine>,
}

impl Trace {
    /// FNV-1a over the JSON lines: stable across processes and Rust releases.
    pub fn hash(&self) -> u64 {
        self.lines
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, line| {
                (line.to_json() + "\n")
                    .bytes()
                    .fold(h, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
            })
    }

    /// The trace as JSON lines.
    pub fn to_jsonl(&self) -> String {
        self.lines.iter().map(|l| l.to_json() + "\n").collect()
    }

    /// The first place two traces differ, described for a human; `None` if they are equal.
    pub fn first_difference(&self, other: &Trace) -> Option<String> {
        let n = self.lines.len().max(other.lines.len());
        (0..n).find_map(|i| {
            let (a, b) = (self.lines.get(i), other.lines.get(i));
            (a != b).then(|| {
                let show = |l: Option<&TraceLine>| {
                    l.map_or_else(|| "<end of trace>".into(), TraceLine::to_json)
                };
                format!(
                    "event {i} differs:\n  first run:  {}\n  second run: {}",
                    show(a),
                    show(b)
                )
            })
        })
    }
}

/// A `tracing` layer that records warren's events into a shared [`Trace`].
#[derive(Clone, Default)]
pub struct Recorder {
    lines: Arc<Mutex<Vec<TraceLine>>>,
    /// Simulated time of the driver, for events logged outside any host (faults, heal).
    driver_ms: Arc<AtomicU64>,
}

impl Recorder {
    /// Tells the recorder the simulation's time, for events logged between host steps.
    pub fn set_driver_time(&self, elapsed: std::time::Duration) {
        self.driver_ms.store(
            u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// Takes the recorded trace.
    pub fn take(&self) -> Trace {
        Trace {
            lines: std::mem::take(&mut *self.lines.lock().expect("recorder poisoned")),
        }
    }
}

/// The host name turmoil gave the `node` span.
struct NodeName(String);

impl<S> Layer<S> for Recorder
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().name() != "node" {
            return;
        }
        let mut fields = FieldText::default();
        attrs.record(&mut fields);
        if let (Some(span), Some(name)) = (ctx.span(id), fields.name) {
            span.extensions_mut().insert(NodeName(name));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let meta = event.metadata();
        let traced = TRACED_TARGET_PREFIXES
            .iter()
            .any(|p| meta.target().starts_with(p));
        if !traced || *meta.level() > Level::INFO {
            return;
        }
        let host = ctx
            .event_scope(event)
            .and_then(|scope| {
                scope
                    .from_root()
                    .find_map(|span| span.extensions().get::<NodeName>().map(|n| n.0.clone()))
            })
            .unwrap_or_else(|| "sim".into());
        let mut fields = FieldText::default();
        event.record(&mut fields);
        let line = TraceLine {
            t_ms: turmoil::sim_elapsed().map_or_else(
                || u128::from(self.driver_ms.load(Ordering::Relaxed)),
                |t| t.as_millis(),
            ),
            host,
            target: meta.target().to_owned(),
            level: meta.level().to_string(),
            what: fields.text,
        };
        let mut lines = self.lines.lock().expect("recorder poisoned");
        if lines.len() < TRACE_LINES_MAX {
            lines.push(line);
        }
    }
}

/// Renders an event's fields as `message k=v k=v`.
#[derive(Default)]
struct FieldText {
    text: String,
    name: Option<String>,
}

impl Visit for FieldText {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "name" {
            self.name = Some(value.to_owned());
        }
        self.record_debug(field, &value)
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if !self.text.is_empty() {
            self.text.push(' ');
        }
        if field.name() == "message" {
            let _ = write!(self.text, "{value:?}");
        } else {
            let _ = write!(self.text, "{}={value:?}", field.name());
        }
    }
}
