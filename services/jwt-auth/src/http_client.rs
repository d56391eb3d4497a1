//! The little HTTP/1.1 client the edge needs for itself (OIDC discovery, the JWKS, minting a
//! token from the dev issuer): one request on a fresh connection over any [`ports::Net`], with a
//! bounded answer and a deadline.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;

/// Largest answer body read (a JWKS with a few keys is ~2 KiB).
pub const RESPONSE_BYTES_MAX: usize = 256 * 1024;

/// Splits `http://host:port/path` into (`host:port`, `/path`). Only `http` is spoken here.
pub fn split_url(url: &str) -> Result<(String, String), String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("only http:// URLs are supported, got {url:?}"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| format!("URL {url:?} has no host"))?;
    let port = authority.port_u16().unwrap_or(80);
    let path = match uri.path_and_query() {
        Some(p) if !p.as_str().is_empty() => p.as_str().to_owned(),
        _ => "/".to_owned(),
    };
    Ok((format!("{}:{port}", authority.host()), path))
}

/// One request (`body` = `None` is a GET, else a JSON POST); returns status and body.
pub async fn request<N: ports::Net>(
    net: &N,
    url: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), String> {
    let (authority, path) = split_url(url)?;
    let work = async {
        let stream = net
            .connect(&authority)
            .await
            .map_err(|e| format!("connecting to {authority}: {e}"))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "HTTP client connection closed");
            }
        });
        let builder = http::Request::builder()
            .uri(&path)
            .header(http::header::HOST, &authority)
            .header(http::header::ACCEPT, "application/json");
        let request = match body {
            None => builder
                .method(http::Method::GET)
                .body(Full::new(Bytes::new())),
            Some(body) => builder
                .method(http::Method::POST)
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string()))),
        }
        .map_err(|e| e.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        let status = response.status();
        let bytes = Limited::new(response.into_body(), RESPONSE_BYTES_MAX)
            .collect()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?
            .to_bytes();
        Ok((status, bytes))
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

/// GET `url` and parse a 200 answer as JSON.
pub async fn get_json<N: ports::Net>(
    net: &N,
    url: &str,
    timeout: Duration,
) -> Result<serde_json::Value, String> {
    let (status, body) = request(net, url, None, timeout).await?;
    if status != http::StatusCode::OK {
        return Err(format!("{url} answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://issuer:9000/.well-known/jwks.json").unwrap(),
            ("issuer:9000".into(), "/.well-known/jwks.json".into())
        );
        assert_eq!(
            split_url("http://127.0.0.1").unwrap(),
            ("127.0.0.1:80".into(), "/".into())
        );
        assert!(split_url("https://x/").is_err());
    }
}
