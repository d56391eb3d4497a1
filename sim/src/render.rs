//! Renders a trace for people: a Mermaid sequence diagram of the message flow, and a compact text
//! timeline.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::trace::{Trace, TraceLine};

/// Most diagram arrows drawn; a longer trace is cut with a note (Mermaid gets slow past this).
const ARROWS_MAX: usize = 400;

/// Value of `key=` in a trace line's text (without quotes).
fn field<'a>(what: &'a str, key: &str) -> Option<&'a str> {
    let start = what.find(&format!("{key}="))? + key.len() + 1;
    let rest = &what[start..];
    let end = rest.find(' ').unwrap_or(rest.len());
    Some(rest[..end].trim_matches('"'))
}

fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// A Mermaid `sequenceDiagram` of who sent what to whom, derived from the services' trace events.
pub fn mermaid(trace: &Trace) -> String {
    let gateways: Vec<&str> = trace
        .lines
        .iter()
        .map(|l| l.host.as_str())
        .filter(|h| h.starts_with("gateway"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let gateway_of = |client: &str| -> String {
        let n: usize = client.trim_start_matches("client-").parse().unwrap_or(0);
        gateways
            .get(n % gateways.len().max(1))
            .map_or("gateway".into(), |g| g.to_string())
    };
    let mut out = String::from("sequenceDiagram\n    participant broker\n");
    let mut arrows = 0;
    for line in &trace.lines {
        if arrows >= ARROWS_MAX {
            let _ = writeln!(
                out,
                "    Note over broker: trace cut after {ARROWS_MAX} arrows"
            );
            break;
        }
        let id = field(&line.what, "analysis_id").map(short).unwrap_or("");
        let h = line.host.as_str();
        let arrow = if line.what.starts_with("client requested") {
            format!("{h}->>{}: requestAnalysis → {id}", gateway_of(h))
        } else if line.what.starts_with("analysis requested") {
            format!("{h}->>broker: RequestAnalysis {id}")
        } else if line.what.starts_with("analysis starting") {
            format!("broker->>{h}: RequestAnalysis {id}\n    {h}->>broker: AnalysisStarted {id}")
        } else if line.what.starts_with("analysis completed") {
            format!("{h}->>broker: AnalysisCompleted {id}")
        } else if line.what.starts_with("client received") {
            let kind = field(&line.what, "kind").unwrap_or("?");
            format!("{}->>{h}: Analysis{kind} {id}", gateway_of(h))
        } else if line.target == "warren_sim::fault" {
            let what = line.what.replace(['"', ':'], "");
            format!("Note over broker: t={}ms {what}", line.t_ms)
        } else {
            continue;
        };
        arrows += 1;
        let _ = writeln!(out, "    {arrow}");
    }
    out
}

/// One line per event: `   123 ms  host            what`.
pub fn timeline(trace: &Trace) -> String {
    trace
        .lines
        .iter()
        .map(
            |TraceLine {
                 t_ms, host, what, ..
             }| format!("{t_ms:>8} ms  {host:<16} {what}\n"),
        )
        .collect()
}

/// Parses a trace written as JSON lines.
pub fn parse_jsonl(text: &str) -> Result<Trace, String> {
    let lines = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(n, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", n + 1)))
        .collect::<Result<_, _>>()?;
    Ok(Trace { lines })
}
