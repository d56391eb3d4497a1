//! The HTTP surface: `POST /graphql` (GraphQL over HTTP, JSON), `GET /graphql` upgraded to a
//! GraphQL WebSocket, and `GET /healthz`.
//!
//! The caller: with JWT auth configured, the `sub` of the request's (or upgrade's) bearer token,
//! validated here again (no token: 401 `UNAUTHENTICATED`; a bad one, or an `X-Forwarded-User`
//! that disagrees with it: 403 `FORBIDDEN`). A WebSocket may instead carry its token in
//! `connection_init`'s payload (`{"Authorization": "Bearer …"}`), for clients that cannot set
//! headers. Without JWT auth, whoever the auth proxy in front of us says: its `X-Forwarded-User`
//! header; its absence means anonymous.

use async_graphql::Data;
use async_graphql::http::ALL_WEBSOCKET_PROTOCOLS;
use async_graphql_axum::GraphQLProtocol;
use axum::body::Bytes;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Semaphore, mpsc};

use crate::config::{CALLER_BYTES_MAX, HTTP_BODY_BYTES_MAX, JwtAuth, WS_MESSAGE_BYTES_MAX};
use crate::schema::{Caller, GatewaySchema, Transport};
use crate::shutdown::Signal;
use crate::ws;

/// The header oauth2-proxy passes upstream with the authenticated user.
const CALLER_HEADER: &str = "x-forwarded-user";

/// Shared by every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) schema: GatewaySchema,
    pub(crate) shutdown: Signal,
    pub(crate) ws_subscriptions_max: usize,
    /// Cloned into every open WebSocket; see `ws::Session::open`.
    pub(crate) ws_open: mpsc::Sender<()>,
    pub(crate) auth: Option<JwtAuth>,
    /// One permit per open WebSocket.
    pub(crate) ws_sockets: Arc<Semaphore>,
    pub(crate) ws_init_timeout: Duration,
    pub(crate) ws_keepalive: Duration,
}

/// Who the request is from, when JWT auth decided it.
struct Authenticated {
    caller: Caller,
    /// Time left on the token.
    expires_in: Duration,
}

fn auth_error(status: StatusCode, code: &'static str, message: &str) -> Response {
    (
        status,
        Json(serde_json::json!({"errors": [{"message": message, "extensions": {"code": code}}]})),
    )
        .into_response()
}

/// With JWT auth: `Ok(Some)` for a valid bearer token, `Ok(None)` when there is none, `Err` with
/// the answer for a bad one (or a spoofed `X-Forwarded-User`).
async fn authenticate(
    auth: &JwtAuth,
    headers: &HeaderMap,
    caller: &Caller,
) -> Result<Option<Authenticated>, Response> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let Some(token) = value.to_str().ok().and_then(jwt_auth::bearer) else {
        return Err(auth_error(
            StatusCode::UNAUTHORIZED,
            crate::code::UNAUTHENTICATED,
            "Authorization must be a Bearer token",
        ));
    };
    let claims = auth.0.verify(token).await.map_err(|e| {
        tracing::info!(error = %e, "bearer token refused");
        auth_error(
            StatusCode::FORBIDDEN,
            crate::code::FORBIDDEN,
            &format!("{e}"),
        )
    })?;
    if caller.0.as_ref().is_some_and(|user| *user != claims.sub) {
        return Err(auth_error(
            StatusCode::FORBIDDEN,
            crate::code::FORBIDDEN,
            "X-Forwarded-User does not match the token",
        ));
    }
    Ok(Some(Authenticated {
        expires_in: auth.0.remaining(&claims),
        caller: Caller(Some(claims.sub)),
    }))
}

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/graphql", post(graphql_post).get(graphql_websocket))
        .route("/healthz", get(healthz))
        // Applies to the `Bytes` extractor: larger bodies get 413 before anything is parsed.
        .layer(DefaultBodyLimit::max(HTTP_BODY_BYTES_MAX))
        .with_state(state)
}

async fn healthz() -> &'static str {
    "ok"
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = (StatusCode, &'static str);

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let Some(value) = parts.headers.get(CALLER_HEADER) else {
            return Ok(Caller(None));
        };
        let refuse = Err((
            StatusCode::BAD_REQUEST,
            "X-Forwarded-User must be 1 to 256 bytes of visible ASCII",
        ));
        if value.len() > CALLER_BYTES_MAX {
            return refuse;
        }
        match value.to_str() {
            Ok("") => Ok(Caller(None)),
            Ok(user) => Ok(Caller(Some(user.to_owned()))),
            Err(_) => refuse,
        }
    }
}

/// GraphQL over HTTP: a JSON body `{query, variables?, operationName?}`, a JSON answer.
async fn graphql_post(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !is_json(&headers) {
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST /graphql takes Content-Type: application/json",
        )
            .into_response();
    }
    let caller = match &state.auth {
        None => caller,
        Some(auth) => match authenticate(auth, &headers, &caller).await {
            Ok(Some(authenticated)) => authenticated.caller,
            Ok(None) => {
                return auth_error(
                    StatusCode::UNAUTHORIZED,
                    crate::code::UNAUTHENTICATED,
                    "a bearer token is required",
                );
            }
            Err(response) => return response,
        },
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(request) => request,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("not a GraphQL request: {e}"),
            )
                .into_response();
        }
    };
    let response = state
        .schema
        .execute(request.data(caller).data(Transport::HttpPost))
        .await;
    Json(response).into_response()
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
}

/// The WebSocket endpoint; the subprotocol picks `graphql-transport-ws` or legacy `graphql-ws`.
async fn graphql_websocket(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    protocol: Result<GraphQLProtocol, StatusCode>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let Ok(upgrade) = upgrade else {
        return (
            StatusCode::BAD_REQUEST,
            "GET /graphql only upgrades to a WebSocket; send queries and mutations with POST",
        )
            .into_response();
    };
    let Ok(protocol) = protocol else {
        return (
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Protocol must offer graphql-transport-ws or graphql-ws",
        )
            .into_response();
    };
    let (caller, expires_in, init_auth) = match &state.auth {
        None => (Some(caller), None, None),
        Some(auth) => match authenticate(auth, &headers, &caller).await {
            Ok(Some(a)) => (Some(a.caller), Some(a.expires_in), None),
            // The token may come with connection_init instead.
            Ok(None) => (None, None, Some(auth.clone())),
            Err(response) => return response,
        },
    };
    let Ok(permit) = state.ws_sockets.clone().try_acquire_owned() else {
        tracing::warn!("WebSocket limit reached; upgrade refused");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            "too many WebSockets open; retry later",
        )
            .into_response();
    };
    tracing::debug!(caller = ?caller, "WebSocket upgrade");
    let mut data = Data::default();
    if let Some(caller) = caller {
        data.insert(caller);
    }
    data.insert(Transport::WebSocket);
    // GraphQLProtocol picks the first offered subprotocol it knows; so do we.
    let modern = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .map(str::trim)
                .find(|p| ALL_WEBSOCKET_PROTOCOLS.contains(p))
        })
        == Some("graphql-transport-ws");
    let session = ws::Session {
        schema: state.schema,
        protocol,
        modern,
        data,
        subscriptions_max: state.ws_subscriptions_max,
        shutdown: state.shutdown,
        open: state.ws_open,
        init_timeout: state.ws_init_timeout,
        keepalive: state.ws_keepalive,
        expires_in,
        init_auth,
        permit,
    };
    upgrade
        .max_message_size(WS_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_MESSAGE_BYTES_MAX)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| ws::serve(socket, session))
}
