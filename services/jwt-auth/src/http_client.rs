//! The little HTTP/1.1 client the edge needs for itself (OIDC discovery, the JWKS, minting a
//! token from the dev issuer): one request on a fresh connection over any [`ports::Net`], with a
//! bounded answer and a deadline; `https://` over rustls, trusting [`Tls`]'s roots.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

/// Largest answer body read (a JWKS with a few keys is ~2 KiB).
pub const RESPONSE_BYTES_MAX: usize = 256 * 1024;

/// Which certificate authorities `https://` answers must chain to.
#[derive(Clone)]
pub struct Tls(Arc<rustls::ClientConfig>);

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

impl Tls {
    /// The Mozilla root certificates (webpki-roots): a public identity provider's.
    pub fn public_roots() -> Tls {
        static PUBLIC: OnceLock<Tls> = OnceLock::new();
        PUBLIC
            .get_or_init(|| {
                let mut roots = rustls::RootCertStore::empty();
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                Tls::trusting(roots).expect("rustls accepts its own defaults")
            })
            .clone()
    }

    /// Only these CA certificates (DER): a private CA's, or a test's self-signed issuer.
    pub fn with_roots(certificates: impl IntoIterator<Item = Vec<u8>>) -> Result<Tls, String> {
        let mut roots = rustls::RootCertStore::empty();
        for der in certificates {
            roots
                .add(rustls::pki_types::CertificateDer::from(der))
                .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        Tls::trusting(roots)
    }

    fn trusting(roots: rustls::RootCertStore) -> Result<Tls, String> {
        // The provider named, not the process default: another crate's rustls features must
        // not decide (or make ambiguous) which one this is.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Tls(Arc::new(config)))
    }
}

impl Default for Tls {
    fn default() -> Tls {
        Tls::public_roots()
    }
}

/// Where a URL points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `https`.
    pub tls: bool,
    /// The host, as the certificate must name it (an IPv6 address without brackets).
    pub host: String,
    /// `host:port`, the port filled in (80 or 443).
    pub authority: String,
    /// Path and query, at least `/`.
    pub path: String,
}

/// Reads an `http://` or `https://` URL.
pub fn parse_url(url: &str) -> Result<Target, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("bad URL {url:?}: {e}"))?;
    let tls = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => {
            return Err(format!(
                "only http:// and https:// URLs are supported, got {url:?}"
            ));
        }
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("URL {url:?} has no host"))?;
    let port = authority.port_u16().unwrap_or(if tls { 443 } else { 80 });
    let path = match uri.path_and_query() {
        Some(p) if !p.as_str().is_empty() => p.as_str().to_owned(),
        _ => "/".to_owned(),
    };
    let host = authority.host();
    Ok(Target {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        authority: format!("{host}:{port}"),
        path,
    })
}

/// One request (`body` = `None` is a GET, else a JSON POST); returns status and body. An
/// `https://` URL trusts the public roots.
pub async fn request<N: ports::Net>(
    net: &N,
    url: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<(http::StatusCode, Bytes), String> {
    request_with(net, url, body, timeout, &Tls::default()).await
}

/// [`request`], trusting `tls`'s roots for an `https://` URL.
pub async fn request_with<N: ports::Net>(
    net: &N,
    url: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
    tls: &Tls,
) -> Result<(http::StatusCode, Bytes), String> {
    let target = parse_url(url)?;
    let work = async {
        let stream = net
            .connect(&target.authority)
            .await
            .map_err(|e| format!("connecting to {}: {e}", target.authority))?;
        if !target.tls {
            return exchange(stream, &target, body, url).await;
        }
        let name = rustls::pki_types::ServerName::try_from(target.host.clone())
            .map_err(|e| format!("{url}: {e}"))?;
        let stream = tokio_rustls::TlsConnector::from(Arc::clone(&tls.0))
            .connect(name, stream)
            .await
            .map_err(|e| format!("TLS with {}: {e}", target.authority))?;
        exchange(stream, &target, body, url).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| format!("{url}: no answer within {timeout:?}"))?
}

/// The request and its answer over a connected stream.
async fn exchange<S>(
    stream: S,
    target: &Target,
    body: Option<&serde_json::Value>,
    url: &str,
) -> Result<(http::StatusCode, Bytes), String>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let authority = &target.authority;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {authority}: {e}"))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "HTTP client connection closed");
        }
    });
    let builder = http::Request::builder()
        .uri(&target.path)
        .header(http::header::HOST, authority)
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
}

/// GET `url` and parse a 200 answer as JSON (`https://` trusting `tls`'s roots).
pub async fn get_json<N: ports::Net>(
    net: &N,
    url: &str,
    timeout: Duration,
    tls: &Tls,
) -> Result<serde_json::Value, String> {
    let (status, body) = request_with(net, url, None, timeout, tls).await?;
    if status != http::StatusCode::OK {
        return Err(format!("{url} answered {status}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_host_authority_and_path() {
        let target = parse_url("http://issuer:9000/.well-known/jwks.json").unwrap();
        assert_eq!(
            (target.tls, target.authority.as_str(), target.path.as_str()),
            (false, "issuer:9000", "/.well-known/jwks.json")
        );
        let target = parse_url("http://127.0.0.1").unwrap();
        assert_eq!(
            (target.authority.as_str(), target.path.as_str()),
            ("127.0.0.1:80", "/")
        );
        let target = parse_url("https://idp.example/realms/x?y=1").unwrap();
        assert_eq!(
            (
                target.tls,
                target.host.as_str(),
                target.authority.as_str(),
                target.path.as_str()
            ),
            (true, "idp.example", "idp.example:443", "/realms/x?y=1")
        );
        let target = parse_url("https://[::1]:8443/").unwrap();
        assert_eq!(
            (target.host.as_str(), target.authority.as_str()),
            ("::1", "[::1]:8443")
        );
        assert!(parse_url("ftp://x/").is_err());
        assert!(parse_url("/no/scheme").is_err());
    }
}
