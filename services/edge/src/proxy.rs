//! Forwarding one HTTP request to an upstream over a [`ports::Net`], WebSocket upgrades
//! included: when the upstream answers 101, both upgraded connections are spliced with
//! `copy_bidirectional` until either side closes.
//!
//! Each request gets a fresh upstream connection: simple, and the connection count is bounded
//! by the clients' (HTTP/1.1 keep-alive pooling is an optimisation left out).

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Request, Response, header};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why the upstream gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// No connection (refused or unreachable).
    #[error("connecting to the upstream {0} failed: {1}")]
    Connect(String, String),
    /// No connection within the connect timeout (an upstream that drops packets): nginx, and
    /// so Kong, answer this one 504, not 502.
    #[error("connecting to the upstream {0} timed out")]
    ConnectTimeout(String),
    /// Connected, but no response headers within the read timeout.
    #[error("the upstream {0} did not answer in time")]
    Timeout(String),
    /// The upstream broke the protocol or the connection.
    #[error("the upstream {0} failed: {1}")]
    Upstream(String, String),
}

/// Where to forward and how long to wait.
#[derive(Debug, Clone)]
pub struct Upstream<N> {
    /// How to connect.
    pub net: N,
    /// `host:port`.
    pub authority: String,
    /// Longest wait for the connection.
    pub connect_timeout: Duration,
    /// Longest wait for the response headers once the request is sent.
    pub read_timeout: Duration,
    /// A WebSocket tunnel with no byte either way for this long is cut (Kong's `read_timeout`
    /// applies between frames too); `None` never cuts (oauth2-proxy).
    pub tunnel_idle_timeout: Option<Duration>,
}

/// One of the connections a server may hold open at once (see `auth_proxy::serve`), in each
/// request's extensions: a WebSocket tunnel keeps it after the HTTP connection is handed over.
#[derive(Debug, Clone)]
pub struct ConnectionSlot(pub Arc<tokio::sync::OwnedSemaphorePermit>);

/// Hop-by-hop headers (RFC 9110 §7.6.1) a proxy must not forward; `Connection` and `Upgrade`
/// are put back for WebSocket handshakes.
const HOP_BY_HOP: [header::HeaderName; 7] = [
    header::CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Whether the request is a WebSocket handshake (RFC 6455 §4.1): a GET with `Upgrade:
/// websocket` and `upgrade` among its `Connection` options. Anything else is an ordinary request,
/// body limits and all, whatever `Upgrade` it carries.
pub fn is_websocket_upgrade(method: &http::Method, headers: &HeaderMap) -> bool {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    upgrade
        && *method == http::Method::GET
        && connection_options(headers).any(|option| option.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated options of every `Connection` line.
fn connection_options(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|option| !option.is_empty())
}

/// Removes hop-by-hop headers: the fixed ones and those a `Connection` line names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<header::HeaderName> = connection_options(headers)
        .filter_map(|name| name.parse().ok())
        .collect();
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("keep-alive");
}

/// Forwards `request` (its path and query, its headers minus hop-by-hop ones, plus what
/// `add_headers` sets) and returns the upstream's response, streaming its body. A WebSocket
/// handshake that the upstream accepts is spliced in a spawned task.
///
/// `add_headers` runs on the client's headers once the hop-by-hop ones are gone, so a client
/// cannot name the proxy's own headers (`X-Forwarded-User`, `X-Real-IP`, …) in `Connection`
/// to have them removed on the way.
pub async fn forward<N: ports::Net>(
    upstream: &Upstream<N>,
    mut request: Request<Body>,
    add_headers: impl FnOnce(&mut HeaderMap),
) -> Result<Response<Body>, ProxyError> {
    let websocket = is_websocket_upgrade(request.method(), request.headers());
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut request));
    // The connection's slot (see `auth_proxy::serve`) goes with the tunnel, which outlives it.
    let slot = request.extensions_mut().remove::<ConnectionSlot>();
    let (mut parts, body) = request.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    add_headers(&mut parts.headers);
    if websocket {
        // As Kong sends it upstream.
        parts.headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        parts
            .headers
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    parts.uri = path
        .parse()
        .map_err(|e| ProxyError::Upstream(upstream.authority.clone(), format!("{e}")))?;
    parts.version = http::Version::HTTP_11;
    let outgoing = Request::from_parts(parts, body);

    let authority = upstream.authority.clone();
    let stream = tokio::time::timeout(upstream.connect_timeout, upstream.net.connect(&authority))
        .await
        .map_err(|_| ProxyError::ConnectTimeout(authority.clone()))?
        .map_err(|e| ProxyError::Connect(authority.clone(), e.to_string()))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| ProxyError::Upstream(authority.clone(), e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = connection.with_upgrades().await {
            tracing::debug!(error = %e, "upstream connection closed");
        }
    });
    let mut response = tokio::time::timeout(upstream.read_timeout, sender.send_request(outgoing))
        .await
        .map_err(|_| ProxyError::Timeout(authority.clone()))?
        .map_err(|e| ProxyError::Upstream(authority.clone(), e.to_string()))?;

    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS
        && let Some(client_upgrade) = client_upgrade
    {
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        tokio::spawn(splice(
            client_upgrade,
            upstream_upgrade,
            upstream.tunnel_idle_timeout,
            slot,
        ));
        let (parts, _) = response.into_parts();
        return Ok(Response::from_parts(parts, Body::empty()));
    }
    let (mut parts, body) = response.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Ok(Response::from_parts(parts, Body::new(body)))
}

/// Copies bytes both ways between the client's and the upstream's upgraded connections, until
/// either side closes or, with `idle_timeout`, no byte moved for that long.
async fn splice(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    idle_timeout: Option<Duration>,
    _slot: Option<ConnectionSlot>,
) {
    let (client, upstream) = match futures::future::try_join(client, upstream).await {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "WebSocket upgrade failed");
            return;
        }
    };
    let activity = Arc::new(Activity::default());
    let mut client = Counted::new(TokioIo::new(client), activity.clone());
    let mut upstream = Counted::new(TokioIo::new(upstream), activity.clone());
    let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
    let watchdog = async {
        let Some(idle) = idle_timeout else {
            return std::future::pending::<()>().await;
        };
        loop {
            let seen = activity.bytes();
            tokio::time::sleep(idle).await;
            if activity.bytes() == seen {
                return;
            }
        }
    };
    tokio::select! {
        copied = copy => match copied {
            Ok((up, down)) => tracing::debug!(up, down, "WebSocket tunnel closed"),
            Err(e) => tracing::debug!(error = %e, "WebSocket tunnel broke"),
        },
        () = watchdog => tracing::info!(?idle_timeout, "idle WebSocket tunnel cut"),
    }
}

/// Bytes read through a tunnel, either way: the idle watchdog's evidence of life. (Checked
/// once per idle period, so a tunnel is cut between one and two periods after its last byte.)
#[derive(Default)]
struct Activity(AtomicU64);

impl Activity {
    fn bytes(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// An upgraded connection that counts the bytes read from it.
struct Counted<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T> Counted<T> {
    fn new(inner: T, activity: Arc<Activity>) -> Self {
        Counted { inner, activity }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.activity.0.fetch_add(read as u64, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Appends `ip` to `X-Forwarded-For`, as nginx's `$proxy_add_x_forwarded_for` does: every
/// line the client sent, joined with commas, then `ip`.
pub fn append_forwarded_for(headers: &mut HeaderMap, ip: std::net::IpAddr) {
    let mut hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|hops| !hops.is_empty())
        .collect();
    let ip = ip.to_string();
    hops.push(&ip);
    let value = hops.join(", ");
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert("x-forwarded-for", value);
    }
}
