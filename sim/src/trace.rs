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
    "edge",
    "jwt_auth",
];

/// Most lines one run records; a run that logs more is cut (and says so) rather than growing
/// without bound.
pub const TRACE_LINES_MAX: usize = 1_000_000;

/// Longest text kept of one event (a message body logged whole can be 64 KiB); past it the
/// text is cut, and ends with its length and hash, so two runs still compare exactly.
pub const TRACE_TEXT_BYTES_MAX: usize = 2048;

/// FNV-1a's starting value.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a of `text`, continuing from `hash`.
fn fnv1a(hash: u64, text: &str) -> u64 {
    (text.bytes()).fold(hash, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

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
        (self.lines.iter()).fold(FNV_OFFSET, |h, line| fnv1a(h, &(line.to_json() + "\n")))
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
#[derive(Clone)]
pub struct Recorder {
    lines: Arc<Mutex<Vec<TraceLine>>>,
    /// [`TRACE_LINES_MAX`], but for tests of the cut.
    lines_max: usize,
    /// Lines past [`TRACE_LINES_MAX`]: how many, and their FNV-1a hash, so a cut trace still
    /// tells two runs apart and says it was cut.
    cut: Arc<Mutex<(u64, u64)>>,
    /// Simulated time of the driver, for events logged outside any host (faults, heal).
    driver_ms: Arc<AtomicU64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder {
            lines: Arc::default(),
            lines_max: TRACE_LINES_MAX,
            cut: Arc::default(),
            driver_ms: Arc::default(),
        }
    }
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
        let mut lines = std::mem::take(&mut *self.lines.lock().expect("recorder poisoned"));
        let (count, hash) = std::mem::take(&mut *self.cut.lock().expect("recorder poisoned"));
        if count > 0 {
            lines.push(TraceLine {
                t_ms: lines.last().map_or(0, |l| l.t_ms),
                host: "sim".into(),
                target: "warren_sim::trace".into(),
                level: Level::WARN.to_string(),
                what: format!(
                    "trace cut at {} lines: {count} more not kept (FNV-1a of those: {hash:016x})",
                    self.lines_max
                ),
            });
        }
        Trace { lines }
    }
}

/// An event's text within [`TRACE_TEXT_BYTES_MAX`]: cut on a character boundary, followed by
/// the whole text's length and FNV-1a hash.
fn cut_text(text: String) -> String {
    if text.len() <= TRACE_TEXT_BYTES_MAX {
        return text;
    }
    let mut end = TRACE_TEXT_BYTES_MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… [cut: {} bytes in all, FNV-1a {:016x}]",
        &text[..end],
        text.len(),
        fnv1a(FNV_OFFSET, &text)
    )
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
        // A crate's own target or one of its modules' (`edge`, `edge::kong`), not another
        // crate whose name merely starts the same.
        let traced = TRACED_TARGET_PREFIXES.iter().any(|p| {
            (meta.target().strip_prefix(p))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        });
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
            what: cut_text(fields.text),
        };
        let mut lines = self.lines.lock().expect("recorder poisoned");
        if lines.len() < self.lines_max {
            lines.push(line);
        } else {
            let mut cut = self.cut.lock().expect("recorder poisoned");
            let hash = if cut.0 == 0 { FNV_OFFSET } else { cut.1 };
            *cut = (cut.0 + 1, fnv1a(hash, &(line.to_json() + "\n")));
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

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    fn record(lines_max: usize, last: &str) -> Trace {
        let recorder = Recorder {
            lines_max,
            ..Recorder::default()
        };
        let subscriber = tracing_subscriber::registry().with(recorder.clone());
        tracing::subscriber::with_default(subscriber, || {
            for n in 0..4 {
                tracing::info!(target: "warren_sim::test", n, "line");
            }
            tracing::info!(target: "warren_sim::test", "{last}");
            // Not warren's: left out.
            tracing::info!(target: "edgeless::x", "other crate");
        });
        recorder.take()
    }

    #[test]
    fn a_long_event_text_is_cut_but_still_tells_runs_apart() {
        let short = "x".repeat(TRACE_TEXT_BYTES_MAX);
        assert_eq!(cut_text(short.clone()), short);
        let long = format!(
            "{}é{}",
            "x".repeat(TRACE_TEXT_BYTES_MAX - 1),
            "y".repeat(10_000)
        );
        let other = format!(
            "{}é{}",
            "x".repeat(TRACE_TEXT_BYTES_MAX - 1),
            "z".repeat(10_000)
        );
        let (a, b) = (cut_text(long.clone()), cut_text(other));
        assert!(a.len() < TRACE_TEXT_BYTES_MAX + 100, "{}", a.len());
        assert!(a.contains(&format!("{} bytes in all", long.len())), "{a}");
        assert_ne!(a, b, "texts that differ past the cut");
    }

    #[test]
    fn a_cut_trace_says_so_and_still_tells_runs_apart_by_what_it_cut() {
        let whole = record(100, "end");
        assert_eq!(whole.lines.len(), 5);
        let cut = record(3, "end");
        assert_eq!(cut.lines.len(), 4);
        assert!(
            cut.lines[3]
                .what
                .starts_with("trace cut at 3 lines: 2 more not kept"),
            "{:?}",
            cut.lines[3]
        );
        let cut_other = record(3, "other end");
        assert_eq!(cut.lines[..3], cut_other.lines[..3]);
        assert_ne!(cut.hash(), cut_other.hash());
    }
}
