//! The simulation's hosts: orchestrators, gateways and console clients, each a turmoil host
//! running the same library code as in production, and what each client observed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use client_console::{AnalysisInput, ConsoleConfig, ReceivedEvent, Subscriber};
use contracts::RequestAnalysis;
use orchestrator::{Analyzer, BuiltinAnalyzer};
use ports::TurmoilNet;
use serde_json::Value;
use uuid::Uuid;

/// Port every gateway listens on inside the simulation.
pub const GATEWAY_PORT: u16 = 8080;
/// Tries a client makes for one mutation before giving up on that analysis.
const REQUEST_ATTEMPTS_MAX: u32 = 20;
/// Subscriptions a client opens for one analysis before giving up (each replays what it missed).
const FOLLOW_ATTEMPTS_MAX: u32 = 60;
/// How long one mutation may take before the client retries.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one subscription may stay unfinished, beyond the analysis's own duration, before the
/// client assumes its link is dead and reconnects (turmoil never retransmits, so a partitioned
/// connection hangs instead of failing).
const FOLLOW_TIMEOUT_MIN: Duration = Duration::from_secs(20);
/// Pause between a client's retries.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// What one client saw of one of its analyses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AnalysisRecord {
    /// Index of the analysis within the client's workload.
    pub index: usize,
    /// The id the gateway returned, once the mutation was accepted.
    pub analysis_id: Option<String>,
    /// Every event received, across re-subscriptions, in arrival order.
    pub events: Vec<ReceivedEvent>,
    /// Subscriptions opened for it.
    pub follow_attempts: u32,
    /// Events that arrived again on the subscription that had already delivered them (the
    /// gateway promises each at most once per subscription; repeats across re-subscriptions
    /// are allowed and counted in `events`).
    pub repeats_within_subscription: u32,
    /// AnalysisStarted that arrived after AnalysisCompleted on the same subscription (the
    /// order is promised per subscription; across re-subscriptions `events` is only arrival
    /// order).
    pub started_after_completed_within_subscription: u32,
    /// Mutations sent for it.
    pub request_attempts: u32,
    /// Errors met along the way (retried).
    pub errors: Vec<String>,
    /// The client saw the subscription complete after AnalysisCompleted.
    pub done: bool,
}

/// What one client host saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientRecord {
    /// The user the client acts as (its `X-Forwarded-User`).
    pub user: String,
    /// One entry per analysis of its workload.
    pub analyses: Vec<AnalysisRecord>,
    /// The client's workload ran to its end.
    pub finished: bool,
    /// Events of another user's analysis the gateway delivered when the client asked for it
    /// (see `probe_isolation`): each one breaks isolation.
    pub foreign_events: Vec<String>,
}

/// Client observations, shared between the client hosts and the checker.
pub type Observations = Arc<Mutex<BTreeMap<String, ClientRecord>>>;

/// Completed analyzer runs per analysis: the orchestrator's side effect, counted.
pub type Effects = Arc<Mutex<BTreeMap<Uuid, u32>>>;

/// Wraps the built-in analyzer and counts runs that finished.
pub(crate) struct CountingAnalyzer {
    pub(crate) inner: BuiltinAnalyzer,
    pub(crate) effects: Effects,
}

#[async_trait]
impl Analyzer for CountingAnalyzer {
    async fn analyze(&self, request: &RequestAnalysis) -> Result<Value, String> {
        let result = self.inner.analyze(request).await;
        *self
            .effects
            .lock()
            .expect("effects poisoned")
            .entry(request.analysis_id)
            .or_default() += 1;
        result
    }
}

/// One client's workload.
#[derive(Debug, Clone)]
pub(crate) struct ClientPlan {
    pub(crate) host: String,
    pub(crate) user: String,
    /// Bearer token for the edge (`SimConfig::with_edge`), else none.
    pub(crate) token: Option<String>,
    pub(crate) gateway: String,
    pub(crate) analyses: usize,
    /// The analyses start evenly spread over this window.
    pub(crate) arrival_spread: Duration,
    /// Every n-th analysis asks the built-in analyzer to fail (0: none).
    pub(crate) failing_every: usize,
    /// How long an analysis takes; a subscription may wait that long plus a margin.
    pub(crate) analysis_duration: Duration,
}

/// Runs a client's workload: each analysis requested (retrying until accepted) and followed
/// (re-subscribing after any failure; the gateway replays what was missed) to completion.
pub(crate) async fn run_client(plan: ClientPlan, observations: Observations) {
    let config = ConsoleConfig {
        authority: format!("{}:{GATEWAY_PORT}", plan.gateway),
        path: "/graphql".into(),
        user: Some(plan.user.clone()),
        token: plan.token.clone(),
        timeout: FOLLOW_TIMEOUT_MIN + plan.analysis_duration * 2,
    };
    {
        let mut obs = observations.lock().expect("observations poisoned");
        let record = obs.entry(plan.host.clone()).or_default();
        record.user = plan.user.clone();
        record.analyses = (0..plan.analyses)
            .map(|index| AnalysisRecord {
                index,
                ..Default::default()
            })
            .collect();
    }
    let runs = (0..plan.analyses).map(|index| {
        let (plan, config, observations) = (plan.clone(), config.clone(), observations.clone());
        async move {
            let spread_ms = plan.arrival_spread.as_millis() as u64;
            let offset = spread_ms * index as u64 / plan.analyses.max(1) as u64;
            tokio::time::sleep(Duration::from_millis(offset)).await;
            let failing =
                plan.failing_every > 0 && index % plan.failing_every == plan.failing_every - 1;
            let input = AnalysisInput {
                asset_id: format!("asset-{}-{index}", plan.host),
                analysis_type: "utilization".into(),
                parameters: failing.then(|| serde_json::json!({"fail": "simulated failure"})),
            };
            run_analysis(&plan.host, index, &config, &input, &observations).await;
        }
    });
    futures::future::join_all(runs).await;
    probe_isolation(&plan, &config, &observations).await;
    if let Some(record) = observations
        .lock()
        .expect("observations poisoned")
        .get_mut(&plan.host)
    {
        record.finished = true;
    }
}

/// Longest wait for the gateway's answer to a subscription for another user's analysis.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Once its own work is done, a client tries to follow an analysis another user requested
/// (the first one accepted, in host order): the gateway must refuse it. Events it delivers are
/// recorded for the `isolation` checker. A refusal, a network failure or no answer in
/// [`PROBE_TIMEOUT`] records nothing.
async fn probe_isolation(plan: &ClientPlan, config: &ConsoleConfig, observations: &Observations) {
    let foreign = {
        let obs = observations.lock().expect("observations poisoned");
        obs.iter()
            .filter(|(host, record)| **host != plan.host && record.user != plan.user)
            .flat_map(|(_, record)| record.analyses.iter())
            .find_map(|analysis| analysis.analysis_id.clone())
    };
    let Some(foreign) = foreign else {
        return;
    };
    let mut leaked = Vec::new();
    let probe = async {
        let mut subscriber = Subscriber::connect(&TurmoilNet, config).await?;
        subscriber
            .follow(&foreign, |event| {
                tracing::warn!(host = %plan.host, analysis_id = %event.analysis_id, kind = ?event.kind, "client received another user's event");
                leaked.push(format!("{} {:?}", event.analysis_id, event.kind));
            })
            .await
    };
    let outcome = tokio::time::timeout(PROBE_TIMEOUT, probe).await;
    tracing::info!(host = %plan.host, analysis_id = %foreign, refused = matches!(outcome, Ok(Err(_))), "client probed another user's analysis");
    if leaked.is_empty() {
        return;
    }
    if let Some(record) = observations
        .lock()
        .expect("observations poisoned")
        .get_mut(&plan.host)
    {
        record.foreign_events.extend(leaked);
    }
}

async fn run_analysis(
    host: &str,
    index: usize,
    config: &ConsoleConfig,
    input: &AnalysisInput,
    observations: &Observations,
) {
    let update = |f: &mut dyn FnMut(&mut AnalysisRecord)| {
        if let Some(record) = observations
            .lock()
            .expect("observations poisoned")
            .get_mut(host)
        {
            f(&mut record.analyses[index]);
        }
    };
    let mut analysis_id = None;
    for _ in 0..REQUEST_ATTEMPTS_MAX {
        update(&mut |r| r.request_attempts += 1);
        let attempt = tokio::time::timeout(
            REQUEST_TIMEOUT,
            client_console::request_analysis(&TurmoilNet, config, input),
        )
        .await;
        match attempt {
            Ok(Ok(requested)) => {
                tracing::info!(host, analysis_id = %requested.analysis_id, "client requested");
                update(&mut |r| r.analysis_id = Some(requested.analysis_id.clone()));
                analysis_id = Some(requested.analysis_id);
                break;
            }
            Ok(Err(e)) => update(&mut |r| r.errors.push(format!("request: {e}"))),
            Err(_) => update(&mut |r| r.errors.push("request: timed out".into())),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
    let Some(analysis_id) = analysis_id else {
        return;
    };
    for _ in 0..FOLLOW_ATTEMPTS_MAX {
        update(&mut |r| r.follow_attempts += 1);
        let mut seen_on_this_subscription = BTreeSet::new();
        let follow = async {
            let mut subscriber = Subscriber::connect(&TurmoilNet, config).await?;
            subscriber
                .follow(&analysis_id, |event| {
                    tracing::info!(host, analysis_id = %event.analysis_id, kind = ?event.kind, "client received");
                    let late_start = event.kind == client_console::EventKind::Started
                        && seen_on_this_subscription
                            .iter()
                            .any(|(_, kind)| *kind == client_console::EventKind::Completed);
                    let repeat = !seen_on_this_subscription.insert((event.analysis_id.clone(), event.kind));
                    update(&mut |r| {
                        r.events.push(event.clone());
                        r.repeats_within_subscription += u32::from(repeat);
                        r.started_after_completed_within_subscription += u32::from(late_start);
                    });
                })
                .await
        };
        match tokio::time::timeout(config.timeout, follow).await {
            Ok(Ok(_)) => {
                update(&mut |r| r.done = true);
                return;
            }
            Ok(Err(e)) => update(&mut |r| r.errors.push(format!("follow: {e}"))),
            Err(_) => update(&mut |r| r.errors.push("follow: timed out".into())),
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
