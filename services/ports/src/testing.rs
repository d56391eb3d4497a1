//! Test helpers for tests against a real RabbitMQ (feature `testing`).
//!
//! Tests share one broker and run in parallel, so each gets a vhost of its own:
//! [`RabbitVhost::create`] makes one through the management HTTP API, grants the user every
//! permission on it, and hands out an AMQP URL for it; [`RabbitVhost::delete`] removes it, and so
//! does dropping it (also when the test panics).
//!
//! Where the broker is: `AMQP_URL` (default `amqp://guest:guest@127.0.0.1:5672/%2f`; its vhost is
//! ignored, its host and credentials are used) and `RABBITMQ_MANAGEMENT_URL` (default
//! `http://<AMQP host>:15672`, plain HTTP, optional user info and path prefix).
//!
//! The skip rule, in one place so every test follows it: when nothing answers on the AMQP port,
//! `create` prints `SKIPPED: RabbitMQ not reachable at ...` to stderr and returns `Ok(None)`, so
//! `cargo test` passes on a machine without RabbitMQ; with `WARREN_REQUIRE_RABBITMQ=1` (CI) it
//! panics instead, so a missing broker can never pass for a green run.

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use contracts::{Binding, ExchangeDecl, ExchangeKind, QueueDecl, QueueLimits, Topology};
use http_body_util::{BodyExt as _, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use thiserror::Error;

/// Environment variable: the broker's AMQP URL (host and credentials are used).
pub const ENV_AMQP_URL: &str = "AMQP_URL";
/// Environment variable: the management API's base URL (`http://host:port[/prefix]`).
pub const ENV_MANAGEMENT_URL: &str = "RABBITMQ_MANAGEMENT_URL";
/// Environment variable: `1` turns "RabbitMQ not reachable" from a skip into a panic.
pub const ENV_REQUIRE_RABBITMQ: &str = "WARREN_REQUIRE_RABBITMQ";
/// The broker tests use when `AMQP_URL` is not set.
pub const AMQP_URL_DEFAULT: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The management plugin's default port.
const MANAGEMENT_PORT_DEFAULT: u16 = 15672;
/// How long the reachability probe waits for a TCP connection.
const PROBE_TIMEOUT_MS: u64 = 2_000;
/// How long one management API call may take.
const HTTP_TIMEOUT_MS: u64 = 10_000;
/// Longest test-name part of a vhost name (RabbitMQ allows long names; logs stay readable).
const TEST_NAME_CHARS_MAX: usize = 80;
/// Largest management API response read, in bytes.
const RESPONSE_BYTES_MAX: usize = 16 * 1024 * 1024;

/// What went wrong talking to RabbitMQ's management API.
#[derive(Debug, Clone, Error, PartialEq, Eq)]
pub enum VhostError {
    /// `AMQP_URL` or `RABBITMQ_MANAGEMENT_URL` cannot be used.
    #[error("bad configuration: {0}")]
    Config(String),
    /// The management API could not be reached, or answered with something unexpected.
    #[error("management API {method} {path}: {detail}")]
    Api {
        /// HTTP method.
        method: String,
        /// Request path.
        path: String,
        /// What happened (status and body, or the transport error).
        detail: String,
    },
    /// The vhost holds something warren's `Topology` cannot describe.
    #[error("vhost {vhost:?}: {detail}")]
    Unsupported {
        /// The vhost.
        vhost: String,
        /// What it holds.
        detail: String,
    },
}

/// A vhost of its own for one test, deleted at the end (explicitly, or on drop).
#[derive(Debug)]
pub struct RabbitVhost {
    name: String,
    amqp_url: String,
    api: ManagementApi,
    deleted: bool,
}

impl RabbitVhost {
    /// Creates the vhost `warren-test-<test_name>-<pid>` (replacing a leftover of the same name)
    /// and gives the `AMQP_URL` user full permissions on it. `Ok(None)` when RabbitMQ is not
    /// reachable and not required (see the module docs for the skip rule).
    ///
    /// # Panics
    /// When RabbitMQ is not reachable and `WARREN_REQUIRE_RABBITMQ=1`.
    pub async fn create(test_name: &str) -> Result<Option<RabbitVhost>, VhostError> {
        let endpoint = Endpoint::from_env()?;
        if let Err(error) = probe(&endpoint.amqp_authority()).await {
            skip_or_panic(&endpoint.amqp_authority(), &error, test_name);
            return Ok(None);
        }
        let name = vhost_name(test_name);
        let api = endpoint.management.clone();
        let vhost_path = format!("/api/vhosts/{}", percent_encode(&name));
        api.call_expecting(Method::DELETE, &vhost_path, None, &[204, 404])
            .await?;
        api.call_expecting(Method::PUT, &vhost_path, Some(&json!({})), &[201, 204])
            .await?;
        // From here on the guard deletes the vhost, even if granting permissions fails.
        let vhost = RabbitVhost {
            amqp_url: endpoint.amqp_url(&name),
            name,
            api,
            deleted: false,
        };
        let permissions = json!({"configure": ".*", "write": ".*", "read": ".*"});
        let permissions_path = format!(
            "/api/permissions/{}/{}",
            percent_encode(&vhost.name),
            percent_encode(&endpoint.user)
        );
        vhost
            .api
            .call_expecting(
                Method::PUT,
                &permissions_path,
                Some(&permissions),
                &[201, 204],
            )
            .await?;
        Ok(Some(vhost))
    }

    /// The vhost's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `amqp://user:password@host:port/<vhost>`: what a bus under test connects to.
    pub fn amqp_url(&self) -> &str {
        &self.amqp_url
    }

    /// What the vhost holds besides RabbitMQ's own: exchanges other than the default `""` and
    /// `amq.*`, every queue, and bindings other than the default exchange's; each list sorted.
    pub async fn topology(&self) -> Result<Topology, VhostError> {
        let vhost = percent_encode(&self.name);
        let exchanges = self
            .api
            .get_list(&format!("/api/exchanges/{vhost}"))
            .await?;
        let queues = self.api.get_list(&format!("/api/queues/{vhost}")).await?;
        let bindings = self.api.get_list(&format!("/api/bindings/{vhost}")).await?;
        let mut topology = Topology::default();
        for exchange in &exchanges {
            let name = text(exchange, "name");
            if name.is_empty() || name.starts_with("amq.") {
                continue;
            }
            let kind = match text(exchange, "type").as_str() {
                "direct" => ExchangeKind::Direct,
                "fanout" => ExchangeKind::Fanout,
                other => {
                    return Err(self.unsupported(format!("exchange {name:?} has type {other}")));
                }
            };
            let durable = exchange["durable"].as_bool().unwrap_or(false);
            topology.exchanges.push(ExchangeDecl {
                name,
                kind,
                durable,
            });
        }
        for queue in &queues {
            let durable = queue["durable"].as_bool().unwrap_or(false);
            let limit = |argument: &str| queue["arguments"][argument].as_u64();
            topology.queues.push(QueueDecl {
                name: text(queue, "name"),
                durable,
                limits: QueueLimits {
                    expires_ms: limit("x-expires"),
                    max_length: limit("x-max-length"),
                    max_length_bytes: limit("x-max-length-bytes"),
                },
            });
        }
        for binding in &bindings {
            let exchange = text(binding, "source");
            if exchange.is_empty() {
                continue;
            }
            let queue = text(binding, "destination");
            if text(binding, "destination_type") != "queue" {
                return Err(self.unsupported(format!(
                    "exchange-to-exchange binding {exchange} -> {queue}"
                )));
            }
            topology.bindings.push(Binding {
                exchange,
                queue,
                routing_key: text(binding, "routing_key"),
            });
        }
        topology.exchanges.sort();
        topology.queues.sort();
        topology.bindings.sort();
        Ok(topology)
    }

    /// Force-closes every client connection to the vhost, as a broker restart or a network
    /// failure would; returns how many there were. The management API learns about new
    /// connections with a delay of a few seconds, so a test polls until this returns at least 1.
    pub async fn close_connections(&self) -> Result<usize, VhostError> {
        let path = format!("/api/vhosts/{}/connections", percent_encode(&self.name));
        let connections = self.api.get_list(&path).await?;
        for connection in &connections {
            let path = format!(
                "/api/connections/{}",
                percent_encode(&text(connection, "name"))
            );
            self.api
                .call_expecting(Method::DELETE, &path, None, &[204, 404])
                .await?;
        }
        Ok(connections.len())
    }

    /// Deletes the vhost with everything in it, and closes its connections.
    pub async fn delete(mut self) -> Result<(), VhostError> {
        self.deleted = true;
        delete_vhost(&self.api, &self.name).await
    }

    fn unsupported(&self, detail: String) -> VhostError {
        VhostError::Unsupported {
            vhost: self.name.clone(),
            detail,
        }
    }
}

impl Drop for RabbitVhost {
    /// The guard for a test that panicked (or forgot `delete`): deletes the vhost on a thread of
    /// its own with a runtime of its own, because the test's runtime may be unwinding and cannot
    /// be relied on to run a task. Blocks until done; failures are printed, never raised.
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        self.deleted = true;
        let (api, name) = (&self.api, self.name.as_str());
        let outcome = std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .map_err(|error| error.to_string())?;
                    runtime
                        .block_on(delete_vhost(api, name))
                        .map_err(|error| error.to_string())
                })
                .join()
        });
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("warning: could not delete test vhost {name:?}: {error}"),
            Err(_) => eprintln!("warning: deleting test vhost {name:?} panicked"),
        }
    }
}

async fn delete_vhost(api: &ManagementApi, name: &str) -> Result<(), VhostError> {
    let path = format!("/api/vhosts/{}", percent_encode(name));
    api.call_expecting(Method::DELETE, &path, None, &[204, 404])
        .await
        .map(drop)
}

/// Whether something accepts TCP connections at `authority` (`host:port`).
async fn probe(authority: &str) -> Result<(), String> {
    let connect = tokio::net::TcpStream::connect(authority);
    match tokio::time::timeout(Duration::from_millis(PROBE_TIMEOUT_MS), connect).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT_MS} ms")),
    }
}

/// The skip rule (module docs).
fn skip_or_panic(authority: &str, error: &str, test_name: &str) {
    let required = std::env::var(ENV_REQUIRE_RABBITMQ).is_ok_and(|value| value.trim() == "1");
    assert!(
        !required,
        "RabbitMQ is required ({ENV_REQUIRE_RABBITMQ}=1) but not reachable at {authority}: {error}; \
         start it (ci/test.sh does) or set {ENV_AMQP_URL}"
    );
    eprintln!(
        "SKIPPED: RabbitMQ not reachable at {authority} (set {ENV_AMQP_URL}); test {test_name} did not run"
    );
}

/// `warren-test-<test name>-<pid>`: unique per test within a process (test names are) and per
/// process (pids are), so parallel tests and parallel test binaries never share a vhost.
fn vhost_name(test_name: &str) -> String {
    let test: String = test_name
        .chars()
        .take(TEST_NAME_CHARS_MAX)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("warren-test-{test}-{}", std::process::id())
}

fn text(value: &Value, field: &str) -> String {
    value[field].as_str().unwrap_or_default().to_owned()
}

/// Where the broker is, from the environment.
struct Endpoint {
    scheme: String,
    /// `user:password` exactly as written in `AMQP_URL` (still percent-encoded), if any.
    userinfo: Option<String>,
    /// Host as written (IPv6 keeps its brackets).
    host: String,
    port: u16,
    /// Decoded user name, for the permissions call.
    user: String,
    management: ManagementApi,
}

impl Endpoint {
    fn from_env() -> Result<Endpoint, VhostError> {
        let amqp_url = std::env::var(ENV_AMQP_URL).unwrap_or_else(|_| AMQP_URL_DEFAULT.to_owned());
        let management_url = std::env::var(ENV_MANAGEMENT_URL).ok();
        Endpoint::parse(&amqp_url, management_url.as_deref())
    }

    fn parse(amqp_url: &str, management_url: Option<&str>) -> Result<Endpoint, VhostError> {
        let bad = |why: &str| VhostError::Config(format!("{ENV_AMQP_URL}: {why}"));
        let (scheme, rest) = amqp_url
            .split_once("://")
            .ok_or_else(|| bad("expected amqp://..."))?;
        let port_default = match scheme {
            "amqp" => 5672,
            "amqps" => 5671,
            _ => return Err(bad("the scheme must be amqp or amqps")),
        };
        let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo.to_owned()), host_port),
            None => (None, authority),
        };
        let (host, port) = split_host_port(host_port, port_default).map_err(|why| bad(&why))?;
        let (user, password) = credentials(userinfo.as_deref());
        let management = match management_url {
            Some(url) => ManagementApi::parse(url, &user, &password)?,
            None => ManagementApi::new(
                format!("{host}:{MANAGEMENT_PORT_DEFAULT}"),
                String::new(),
                &user,
                &password,
            ),
        };
        Ok(Endpoint {
            scheme: scheme.to_owned(),
            userinfo,
            host,
            port,
            user,
            management,
        })
    }

    fn amqp_authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    fn amqp_url(&self, vhost: &str) -> String {
        let userinfo = self
            .userinfo
            .as_ref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        format!(
            "{}://{userinfo}{}/{}",
            self.scheme,
            self.amqp_authority(),
            percent_encode(vhost)
        )
    }
}

/// `host[:port]` or `[v6][:port]`.
fn split_host_port(host_port: &str, port_default: u16) -> Result<(String, u16), String> {
    let (host, port) = if let Some(end) = host_port.strip_prefix('[').and_then(|r| r.find(']')) {
        let host = &host_port[..end + 2];
        (host, host_port[end + 2..].strip_prefix(':'))
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    if host.is_empty() {
        return Err("no host".to_owned());
    }
    let port = match port {
        Some(port) => port.parse().map_err(|_| format!("bad port {port:?}"))?,
        None => port_default,
    };
    Ok((host.to_owned(), port))
}

/// Decoded user and password; RabbitMQ's defaults when the URL has none.
fn credentials(userinfo: Option<&str>) -> (String, String) {
    match userinfo {
        None => ("guest".to_owned(), "guest".to_owned()),
        Some(userinfo) => {
            let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
            (percent_decode(user), percent_decode(password))
        }
    }
}

/// A minimal client of RabbitMQ's management HTTP API: one HTTP/1.1 connection per call.
#[derive(Clone)]
struct ManagementApi {
    /// `host:port`.
    authority: String,
    /// Path prefix when the API sits behind a proxy, e.g. `/rabbitmq`; empty otherwise.
    prefix: String,
    /// `Basic ...`.
    authorization: String,
}

impl std::fmt::Debug for ManagementApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagementApi")
            .field("authority", &self.authority)
            .finish_non_exhaustive()
    }
}

impl ManagementApi {
    fn new(authority: String, prefix: String, user: &str, password: &str) -> ManagementApi {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        ManagementApi {
            authority,
            prefix,
            authorization: format!("Basic {token}"),
        }
    }

    /// `http://[user:password@]host[:port][/prefix]`; credentials default to the AMQP ones.
    fn parse(url: &str, user: &str, password: &str) -> Result<ManagementApi, VhostError> {
        let bad = |why: &str| VhostError::Config(format!("{ENV_MANAGEMENT_URL}: {why}"));
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| bad("expected http://host:port"))?;
        let (authority, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let (userinfo, host_port) = match authority.rsplit_once('@') {
            Some((userinfo, host_port)) => (Some(userinfo), host_port),
            None => (None, authority),
        };
        let (host, port) = split_host_port(host_port, 80).map_err(|why| bad(&why))?;
        let (user, password) = match userinfo {
            Some(_) => credentials(userinfo),
            None => (user.to_owned(), password.to_owned()),
        };
        let prefix = prefix.trim_end_matches('/').to_owned();
        Ok(ManagementApi::new(
            format!("{host}:{port}"),
            prefix,
            &user,
            &password,
        ))
    }

    /// A GET that must answer a JSON array.
    async fn get_list(&self, path: &str) -> Result<Vec<Value>, VhostError> {
        let body = self.call_expecting(Method::GET, path, None, &[200]).await?;
        match serde_json::from_slice(&body) {
            Ok(Value::Array(items)) => Ok(items),
            Ok(_) => Err(self.error(&Method::GET, path, "expected a JSON array".to_owned())),
            Err(error) => Err(self.error(&Method::GET, path, format!("bad JSON: {error}"))),
        }
    }

    /// One call; any status outside `expected` is an error quoting the response.
    async fn call_expecting(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        expected: &[u16],
    ) -> Result<Bytes, VhostError> {
        let call = self.call(method.clone(), path, body);
        let (status, response) = tokio::time::timeout(Duration::from_millis(HTTP_TIMEOUT_MS), call)
            .await
            .map_err(|_| {
                self.error(
                    &method,
                    path,
                    format!("no answer within {HTTP_TIMEOUT_MS} ms"),
                )
            })?
            .map_err(|detail| self.error(&method, path, detail))?;
        if expected.contains(&status.as_u16()) {
            return Ok(response);
        }
        let text = String::from_utf8_lossy(&response);
        Err(self.error(&method, path, format!("unexpected status {status}: {text}")))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<(StatusCode, Bytes), String> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|error| format!("cannot connect to {}: {error}", self.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|error| error.to_string())?;
        // The connection task ends when `sender` is dropped at the end of this call.
        tokio::spawn(connection);
        let body = body
            .map(|value| Bytes::from(value.to_string()))
            .unwrap_or_default();
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(hyper::header::HOST, &self.authority)
            .header(hyper::header::AUTHORIZATION, &self.authorization)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|error| error.to_string())?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|error| error.to_string())?;
        let status = response.status();
        let limited = http_body_util::Limited::new(response.into_body(), RESPONSE_BYTES_MAX);
        let bytes = limited
            .collect()
            .await
            .map_err(|error| error.to_string())?
            .to_bytes();
        Ok((status, bytes))
    }

    fn error(&self, method: &Method, path: &str, detail: String) -> VhostError {
        VhostError::Api {
            method: method.to_string(),
            path: format!("{}{path}", self.prefix),
            detail,
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters (for one path segment).
fn percent_encode(segment: &str) -> String {
    let mut encoded = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}

/// Decodes `%XX` escapes; malformed escapes are kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| text.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escape {
            Some(byte) => {
                decoded.push(byte);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_url_gives_host_credentials_and_management_address() {
        let endpoint =
            Endpoint::parse("amqp://bob:p%40ss@rabbit.local:5673/%2f", None).expect("valid");
        assert_eq!(endpoint.amqp_authority(), "rabbit.local:5673");
        assert_eq!(endpoint.user, "bob");
        assert_eq!(endpoint.management.authority, "rabbit.local:15672");
        assert_eq!(
            endpoint.amqp_url("warren-test-x-1"),
            "amqp://bob:p%40ss@rabbit.local:5673/warren-test-x-1"
        );
        let expected =
            ManagementApi::new(String::new(), String::new(), "bob", "p@ss").authorization;
        assert_eq!(endpoint.management.authorization, expected);
    }

    #[test]
    fn defaults_fill_in_port_and_credentials() {
        let endpoint = Endpoint::parse("amqp://[::1]", Some("http://admin:pw@mgmt:8080/rabbitmq/"))
            .expect("valid");
        assert_eq!(endpoint.amqp_authority(), "[::1]:5672");
        assert_eq!(endpoint.user, "guest");
        assert_eq!(endpoint.management.authority, "mgmt:8080");
        assert_eq!(endpoint.management.prefix, "/rabbitmq");
        assert_eq!(endpoint.amqp_url("v"), "amqp://[::1]:5672/v");
        assert!(Endpoint::parse("http://x", None).is_err());
        assert!(Endpoint::parse("amqp://x:notaport", None).is_err());
    }

    #[test]
    fn vhost_names_are_path_safe_and_per_process() {
        let name = vhost_name("bus::publish confirm");
        assert!(name.starts_with("warren-test-bus--publish-confirm-"));
        assert_eq!(percent_encode(&name), name);
        assert_eq!(percent_encode("a b/>"), "a%20b%2F%3E");
        assert_eq!(percent_decode("a%20b%2f%zz"), "a b/%zz");
    }
}
