//! The HTTP surface: `POST /graphql` (GraphQL over HTTP, JSON), `GET /graphql` upgraded to a
//! GraphQL WebSocket, and `GET /healthz`.
//!
//! The caller is whoever the auth proxy in front of us says: its `X-Forwarded-User` header, on
//! the request or on the WebSocket upgrade. Its absence means anonymous.

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
use tokio::sync::mpsc;

use crate::config::{CALLER_BYTES_MAX, HTTP_BODY_BYTES_MAX, WS_MESSAGE_BYTES_MAX};
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
    tracing::debug!(caller = ?caller.0, "WebSocket upgrade");
    let mut data = Data::default();
    data.insert(caller);
    data.insert(Transport::WebSocket);
    let session = ws::Session {
        schema: state.schema,
        protocol,
        data,
        subscriptions_max: state.ws_subscriptions_max,
        shutdown: state.shutdown,
        open: state.ws_open,
    };
    upgrade
        .max_message_size(WS_MESSAGE_BYTES_MAX)
        .max_frame_size(WS_MESSAGE_BYTES_MAX)
        .protocols(ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| ws::serve(socket, session))
}
