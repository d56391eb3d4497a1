//! The public GraphQL schema (`shared/contract/schema.graphql`, plus `analysisEvents`) and its
//! resolvers. Resolvers only see the caller's own analyses: someone else's id behaves exactly
//! like an unknown one.

use std::sync::Arc;
use std::time::Duration;

use async_graphql::{
    Context, Enum, ID, InputObject, InputValueError, InputValueResult, Object, Result, Scalar,
    ScalarType, Schema, SimpleObject, Subscription, Union, Value,
};
use contracts::{APP_ID_GATEWAY, RequestAnalysis, format_timestamp, validate_input};
use futures::{Stream, StreamExt};
use ports::{BusError, Ports};
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::wrappers::errors::BroadcastStreamRecvError;
use uuid::Uuid;

use crate::config::{QUERY_COMPLEXITY_MAX, QUERY_DEPTH_MAX, QUERY_DIRECTIVES_MAX};
use crate::error::{analysis_error, code, graphql_error};
use crate::follow::{Follower, Gone, Wanted};
use crate::registry::{Owner, Recorded, Registry, RegistryFull, Snapshot};

pub(crate) type GatewaySchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// What the resolvers work with, shared by every request.
pub(crate) struct Services {
    pub(crate) ports: Ports,
    pub(crate) registry: Arc<Registry>,
    pub(crate) started_wait_max: Duration,
}

/// Who is calling: the `X-Forwarded-User` of the HTTP request or WebSocket upgrade; `None` is
/// anonymous. Put into every request's (or socket's) data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Caller(pub(crate) Owner);

/// How the operation arrived; mutations are only accepted over HTTP POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    HttpPost,
    WebSocket,
}

pub(crate) fn build(services: Services) -> GatewaySchema {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .data(services)
        .limit_depth(QUERY_DEPTH_MAX)
        .limit_complexity(QUERY_COMPLEXITY_MAX)
        .limit_directives(QUERY_DIRECTIVES_MAX)
        .finish()
}

/// The schema in SDL, as served.
pub fn sdl() -> String {
    Schema::build(QueryRoot, MutationRoot, SubscriptionRoot)
        .finish()
        .sdl()
}

fn caller(ctx: &Context<'_>) -> Owner {
    ctx.data_opt::<Caller>().and_then(|c| c.0.clone())
}

fn services<'a>(ctx: &Context<'a>) -> &'a Services {
    ctx.data_unchecked::<Services>()
}

/// An id that is not a uuid names no analysis: treated like any unknown id.
fn parse_id(id: &ID) -> Option<Uuid> {
    Uuid::parse_str(id.as_str()).ok()
}

/// An RFC 3339 timestamp in UTC with milliseconds, e.g. `2026-01-02T03:04:05.678Z`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DateTime(String);

/// An RFC 3339 timestamp, e.g. `2026-01-02T03:04:05.678Z`.
#[Scalar(
    name = "DateTime",
    specified_by_url = "https://www.rfc-editor.org/rfc/rfc3339"
)]
impl ScalarType for DateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match value {
            Value::String(s) => Ok(DateTime(s)),
            other => Err(InputValueError::expected_type(other)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.clone())
    }
}

/// The input of `requestAnalysis`.
#[derive(Debug, InputObject)]
pub struct AnalysisInput {
    /// The asset (machine) to analyse. 1 to 128 characters.
    pub asset_id: ID,
    /// What to compute, e.g. "utilization". 1 to 64 characters of [a-z0-9_-].
    pub analysis_type: String,
    /// Free-form parameters. At most 16 KiB when serialized.
    pub parameters: Option<serde_json::Value>,
}

/// The answer to `requestAnalysis`.
#[derive(Debug, SimpleObject)]
pub struct AnalysisRequested {
    analysis_id: ID,
    requested_at: DateTime,
}

/// `AnalysisStarted`, as a subscriber sees it.
#[derive(Debug, Clone, SimpleObject)]
pub struct AnalysisStarted {
    analysis_id: ID,
    asset_id: ID,
    analysis_type: String,
    started_at: DateTime,
}

impl From<&contracts::AnalysisStarted> for AnalysisStarted {
    fn from(e: &contracts::AnalysisStarted) -> Self {
        AnalysisStarted {
            analysis_id: ID(e.analysis_id.to_string()),
            asset_id: ID(e.asset_id.clone()),
            analysis_type: e.analysis_type.clone(),
            started_at: DateTime(e.started_at.clone()),
        }
    }
}

/// How an analysis ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum AnalysisStatus {
    /// `result` holds the outcome.
    Succeeded,
    /// `error` says why.
    Failed,
}

/// `AnalysisCompleted`, as a subscriber sees it.
#[derive(Debug, Clone, SimpleObject)]
pub struct AnalysisCompleted {
    analysis_id: ID,
    asset_id: ID,
    analysis_type: String,
    status: AnalysisStatus,
    result: Option<serde_json::Value>,
    error: Option<String>,
    completed_at: DateTime,
}

impl From<&contracts::AnalysisCompleted> for AnalysisCompleted {
    fn from(e: &contracts::AnalysisCompleted) -> Self {
        AnalysisCompleted {
            analysis_id: ID(e.analysis_id.to_string()),
            asset_id: ID(e.asset_id.clone()),
            analysis_type: e.analysis_type.clone(),
            status: match e.status {
                contracts::AnalysisStatus::Succeeded => AnalysisStatus::Succeeded,
                contracts::AnalysisStatus::Failed => AnalysisStatus::Failed,
            },
            result: e.result.clone(),
            error: e.error.clone(),
            completed_at: DateTime(e.completed_at.clone()),
        }
    }
}

/// Where an analysis is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum AnalysisState {
    /// Accepted; the orchestrator has not started it yet.
    Requested,
    /// Running.
    Started,
    /// Done (see `completed.status`).
    Completed,
}

/// One of the caller's analyses.
#[derive(Debug, SimpleObject)]
pub struct Analysis {
    analysis_id: ID,
    state: AnalysisState,
    started: Option<AnalysisStarted>,
    completed: Option<AnalysisCompleted>,
}

impl Analysis {
    fn new(id: Uuid, snapshot: &Snapshot) -> Analysis {
        let state = match (&snapshot.started, &snapshot.completed) {
            (_, Some(_)) => AnalysisState::Completed,
            (Some(_), None) => AnalysisState::Started,
            (None, None) => AnalysisState::Requested,
        };
        Analysis {
            analysis_id: ID(id.to_string()),
            state,
            started: snapshot.started.as_deref().map(AnalysisStarted::from),
            completed: snapshot.completed.as_deref().map(AnalysisCompleted::from),
        }
    }
}

/// Either event of one analysis, in the order they happen.
#[derive(Debug, Clone, Union)]
pub enum AnalysisEvent {
    /// The analysis started.
    AnalysisStarted(AnalysisStarted),
    /// The analysis finished.
    AnalysisCompleted(AnalysisCompleted),
}

impl From<&Recorded> for AnalysisEvent {
    fn from(event: &Recorded) -> Self {
        match event {
            Recorded::Started(e) => AnalysisEvent::AnalysisStarted(e.as_ref().into()),
            Recorded::Completed(e) => AnalysisEvent::AnalysisCompleted(e.as_ref().into()),
        }
    }
}

/// Queries.
pub struct QueryRoot;

#[Object(name = "Query")]
impl QueryRoot {
    /// The caller's own analysis, or null.
    async fn analysis(&self, ctx: &Context<'_>, analysis_id: ID) -> Option<Analysis> {
        let id = parse_id(&analysis_id)?;
        let snapshot = services(ctx).registry.snapshot(id, &caller(ctx))?;
        Some(Analysis::new(id, &snapshot))
    }
}

/// Mutations.
pub struct MutationRoot;

#[Object(name = "Mutation")]
impl MutationRoot {
    /// Publishes a RequestAnalysis command; the analysis is registered before the command is published.
    async fn request_analysis(
        &self,
        ctx: &Context<'_>,
        input: AnalysisInput,
    ) -> Result<AnalysisRequested> {
        if ctx.data_opt::<Transport>() == Some(&Transport::WebSocket) {
            return Err(graphql_error(
                code::BAD_REQUEST,
                "mutations are only accepted over HTTP POST",
            ));
        }
        validate_input(
            &input.asset_id,
            &input.analysis_type,
            input.parameters.as_ref(),
        )
        .map_err(|reason| graphql_error(code::BAD_USER_INPUT, reason))?;
        let services = services(ctx);
        let owner = caller(ctx);
        let analysis_id = services.ports.ids.analysis_id();
        let now_unix_ms = services.ports.clock.now_unix_ms();
        let requested_at = format_timestamp(now_unix_ms);
        let command = RequestAnalysis {
            analysis_id,
            asset_id: input.asset_id.0,
            analysis_type: input.analysis_type,
            parameters: input.parameters,
            requested_by: owner.clone(),
            requested_at: requested_at.clone(),
        };
        let publication = command
            .publication(APP_ID_GATEWAY, now_unix_ms)
            .map_err(|e| graphql_error(code::BAD_USER_INPUT, e.to_string()))?;

        // Registered first, so the analysis's events always find it, however fast they come.
        let registration = Registration::new(&services.registry, analysis_id, owner, now_unix_ms)
            .map_err(|RegistryFull| {
            tracing::warn!("registry full of running analyses; request refused");
            graphql_error(code::OVERLOADED, "too many analyses in flight; retry later")
        })?;
        match services.ports.bus.publish(publication).await {
            Ok(()) => {}
            Err(e @ BusError::Unconfirmed { .. }) => {
                // The command may be in the broker: the analysis stays registered so that its
                // events, if they come, reach the caller, who can follow it by id.
                registration.keep();
                tracing::warn!(%analysis_id, error = %e, "RequestAnalysis unconfirmed");
                return Err(analysis_error(
                    code::UNCONFIRMED,
                    analysis_id,
                    format!(
                        "the analysis {analysis_id} may or may not have been requested ({e}); \
                         follow it by its id, or request again for a second analysis"
                    ),
                ));
            }
            Err(e) => {
                tracing::warn!(%analysis_id, error = %e, "RequestAnalysis not published");
                return Err(graphql_error(
                    code::UNAVAILABLE,
                    format!("the analysis could not be requested: {e}"),
                ));
            }
        }
        registration.keep();
        tracing::info!(%analysis_id, "analysis requested");
        Ok(AnalysisRequested {
            analysis_id: ID(analysis_id.to_string()),
            requested_at: DateTime(requested_at),
        })
    }
}

/// A registration that is undone unless kept: if the publish fails, or the request is dropped
/// mid-publish (the client went away), the analysis is forgotten. Should the command have been
/// published after all, its events are still recorded, as for any unknown analysis.
struct Registration<'a> {
    registry: &'a Registry,
    id: Uuid,
    kept: bool,
}

impl<'a> Registration<'a> {
    fn new(
        registry: &'a Registry,
        id: Uuid,
        owner: Owner,
        now_unix_ms: i64,
    ) -> Result<Self, RegistryFull> {
        registry.register(id, owner, now_unix_ms)?;
        Ok(Registration {
            registry,
            id,
            kept: false,
        })
    }

    fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.registry.forget(self.id);
        }
    }
}

/// Subscriptions.
pub struct SubscriptionRoot;

#[Subscription(name = "Subscription")]
impl SubscriptionRoot {
    /// With analysisId: that analysis only, replaying an event that already happened. Without: all of the caller's analyses.
    async fn analysis_started(
        &self,
        ctx: &Context<'_>,
        analysis_id: Option<ID>,
    ) -> Result<impl Stream<Item = Result<AnalysisStarted>> + use<>> {
        let events = events(ctx, analysis_id, Wanted::Started)?;
        Ok(events.filter_map(|e| async move {
            match e {
                Ok(Recorded::Started(e)) => Some(Ok(AnalysisStarted::from(e.as_ref()))),
                Ok(Recorded::Completed(_)) => None,
                Err(e) => Some(Err(e)),
            }
        }))
    }

    /// With analysisId: that analysis only, replaying if it already happened; the stream completes after the event.
    async fn analysis_completed(
        &self,
        ctx: &Context<'_>,
        analysis_id: Option<ID>,
    ) -> Result<impl Stream<Item = Result<AnalysisCompleted>> + use<>> {
        let events = events(ctx, analysis_id, Wanted::Completed)?;
        Ok(events.filter_map(|e| async move {
            match e {
                Ok(Recorded::Completed(e)) => Some(Ok(AnalysisCompleted::from(e.as_ref()))),
                Ok(Recorded::Started(_)) => None,
                Err(e) => Some(Err(e)),
            }
        }))
    }

    /// That analysis's AnalysisStarted then AnalysisCompleted, in this order, replaying what already happened; the stream completes after AnalysisCompleted.
    async fn analysis_events(
        &self,
        ctx: &Context<'_>,
        analysis_id: ID,
    ) -> Result<impl Stream<Item = Result<AnalysisEvent>> + use<>> {
        let events = events(ctx, Some(analysis_id), Wanted::Both)?;
        Ok(events.map(|e| e.map(|e| AnalysisEvent::from(&e))))
    }
}

/// The recorded events a subscription delivers: one analysis's (replayed, in order, ending after
/// the last wanted event, or with `EVICTED` if the gateway stops following it first), or,
/// without an id, every new event of the caller's analyses (ending with `LAGGED` if the
/// subscriber falls too far behind).
fn events(
    ctx: &Context<'_>,
    analysis_id: Option<ID>,
    wanted: Wanted,
) -> Result<futures::stream::BoxStream<'static, Result<Recorded>>> {
    let services = services(ctx);
    let owner = caller(ctx);
    let Some(analysis_id) = analysis_id else {
        return Ok(live(&services.registry, owner).boxed());
    };
    let id = parse_id(&analysis_id);
    let rx = id
        .and_then(|id| services.registry.watch(id, &owner))
        .ok_or_else(|| {
            graphql_error(
                code::NOT_FOUND,
                format!("no analysis {}", analysis_id.as_str()),
            )
        })?;
    Ok(Follower::new(rx, wanted, services.started_wait_max)
        .into_stream()
        .map(move |event| {
            event.map_err(|Gone| {
                graphql_error(
                    code::EVICTED,
                    format!(
                        "analysis {} was evicted before its last event: the gateway made room \
                         for newer analyses",
                        analysis_id.as_str()
                    ),
                )
            })
        })
        .boxed())
}

/// New events of the owner's analyses, as they are recorded. Repeats never reach here (the
/// registry announces an event once, and remembers doing so for a while after the analysis is
/// removed). A subscriber that falls more than `LIVE_EVENTS_CAPACITY` events behind (of every
/// owner's: they share one channel) gets `LAGGED` and its subscription ends, rather than skip
/// events unknowingly.
fn live(
    registry: &Registry,
    owner: Owner,
) -> impl Stream<Item = Result<Recorded>> + Send + 'static {
    BroadcastStream::new(registry.live())
        .filter_map(move |item| {
            let event = match item {
                Ok(live) if live.owner == owner => Some(Ok(live.event)),
                Ok(_) => None,
                Err(BroadcastStreamRecvError::Lagged(missed)) => {
                    tracing::warn!(missed, "live subscriber fell behind; ending it");
                    Some(Err(graphql_error(
                        code::LAGGED,
                        format!(
                            "this subscription fell {missed} events behind and ends; subscribe \
                             again, and query your analyses to catch up"
                        ),
                    )))
                }
            };
            futures::future::ready(event)
        })
        // The error is the last item.
        .scan(false, |ended, item| {
            if *ended {
                return futures::future::ready(None);
            }
            *ended = item.is_err();
            futures::future::ready(Some(item))
        })
}

#[cfg(test)]
mod tests {
    use contracts::{AnalysisStarted, Event};

    use super::*;
    use crate::config::LIVE_EVENTS_CAPACITY;

    fn started(id: u128) -> Event {
        Event::Started(AnalysisStarted {
            analysis_id: Uuid::from_u128(id),
            asset_id: "press-1".into(),
            analysis_type: "utilization".into(),
            requested_by: Some("alice".into()),
            started_at: "2026-01-01T00:00:00.000Z".into(),
        })
    }

    #[tokio::test]
    async fn a_live_subscriber_that_falls_behind_gets_lagged_and_ends() {
        let registry = Registry::new(4 * LIVE_EVENTS_CAPACITY, Duration::from_secs(60));
        let slow = live(&registry, Some("alice".into()));
        let keeping_up = live(&registry, Some("alice".into()));
        futures::pin_mut!(keeping_up);
        for id in 0..3 {
            registry.record(started(id), 0);
            assert!(matches!(keeping_up.next().await, Some(Ok(_))));
        }
        let total = LIVE_EVENTS_CAPACITY as u128 + 10;
        for id in 3..total {
            registry.record(started(id), 0);
        }
        drop(registry);
        let items: Vec<Result<Recorded>> = slow.collect().await;
        let [Err(error)] = items.as_slice() else {
            panic!("expected one LAGGED error, got {} items", items.len());
        };
        let code = error.extensions.as_ref().and_then(|e| e.get("code"));
        assert_eq!(
            code,
            Some(&async_graphql::Value::from(code::LAGGED)),
            "{error:?}"
        );
    }
}
