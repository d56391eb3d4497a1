//! `requestAnalysis` over GraphQL-over-HTTP (one POST on a fresh HTTP/1.1 connection).

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

use crate::{AnalysisInput, ConsoleConfig, ConsoleError, Requested, graphql_error};

/// Largest response body the console accepts.
const RESPONSE_BYTES_MAX: usize = 1024 * 1024;

const MUTATION: &str = "mutation Request($input: AnalysisInput!) { \
    requestAnalysis(input: $input) { analysisId requestedAt } }";

/// Sends `requestAnalysis` and returns the new analysis id.
pub async fn request_analysis<N: ports::Net>(
    net: &N,
    config: &ConsoleConfig,
    input: &AnalysisInput,
) -> Result<Requested, ConsoleError> {
    let body = json!({
        "query": MUTATION,
        "variables": {"input": {
            "assetId": input.asset_id,
            "analysisType": input.analysis_type,
            "parameters": input.parameters,
        }},
    });
    let response = post_json(net, config, &body).await?;
    if let Some(error) = graphql_error(&response) {
        return Err(error);
    }
    let field = |name: &str| {
        response
            .pointer(&format!("/data/requestAnalysis/{name}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| {
                ConsoleError::Http(format!(
                    "response has no requestAnalysis.{name}: {response}"
                ))
            })
    };
    Ok(Requested {
        analysis_id: field("analysisId")?,
        requested_at: field("requestedAt")?,
    })
}

async fn post_json<N: ports::Net>(
    net: &N,
    config: &ConsoleConfig,
    body: &Value,
) -> Result<Value, ConsoleError> {
    let stream = net
        .connect(&config.authority)
        .await
        .map_err(|source| ConsoleError::Connect {
            addr: config.authority.clone(),
            source,
        })?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ConsoleError::Http(e.to_string()))?;
    // The connection task ends when the request is done and `sender` is dropped.
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP connection closed");
        }
    });
    let mut request = http::Request::post(&config.path)
        .header(http::header::HOST, &config.authority)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "application/json");
    for (name, value) in config.identity_headers()? {
        request = request.header(name, value);
    }
    let request = request
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| ConsoleError::Http(e.to_string()))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| ConsoleError::Http(e.to_string()))?;
    let status = response.status();
    let bytes = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
        .collect()
        .await
        .map_err(|e| ConsoleError::Http(format!("reading response: {e}")))?
        .to_bytes();
    let text = String::from_utf8_lossy(&bytes);
    let parsed: Result<Value, _> = serde_json::from_slice(&bytes);
    match parsed {
        // GraphQL errors may come with 200 or 4xx; prefer them over the bare status.
        Ok(value) if value.get("data").is_some() || value.get("errors").is_some() => Ok(value),
        _ if !status.is_success() => Err(ConsoleError::Http(format!("{status}: {}", text.trim()))),
        Ok(value) => Ok(value),
        Err(e) => Err(ConsoleError::Http(format!(
            "response is not JSON ({e}): {}",
            text.trim()
        ))),
    }
}
