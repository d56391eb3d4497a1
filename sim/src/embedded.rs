//! The whole system in one process on loopback: broker-mem (or RabbitMQ), the orchestrator and
//! the gateway, on real sockets. `warren up` and `warren demo` run this; so do the end-to-end
//! tests and the benchmarks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::Listener as _;
use orchestrator::{BuiltinAnalyzer, OrchestratorConfig};
use ports::{Bus, Net, Ports, TokioNet};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Which broker the services use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerChoice {
    /// A fresh broker-mem in this process.
    Embedded,
    /// RabbitMQ at this AMQP URL.
    RabbitMq(String),
}

/// How to run the system.
#[derive(Debug, Clone)]
pub struct SystemConfig {
    /// Where the gateway listens (`127.0.0.1:0` picks a free port).
    pub listen: String,
    /// The broker.
    pub broker: BrokerChoice,
    /// How long each analysis takes.
    pub analysis_duration: Duration,
    /// Orchestrator concurrency.
    pub orchestrator_concurrency: u16,
    /// The edge in front of the gateway (issuer, auth proxy, Kong role), or `None` for the
    /// gateway alone, trusting `X-Forwarded-User`.
    pub edge: Option<EdgeSetup>,
}

/// Where the edge's three services listen, and where the issuer's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSetup {
    /// The dev OIDC issuer.
    pub issuer_listen: String,
    /// The auth proxy (oauth2-proxy's role).
    pub auth_listen: String,
    /// The edge (Kong's role): what clients talk to.
    pub edge_listen: String,
    /// Issuer keys: seeded (the dev seed, so `warren token` works) or from the OS.
    pub key_seed: edge::KeySeed,
}

impl EdgeSetup {
    /// The ports of the diagram: issuer 9000, auth proxy 4180, edge 8000, with the dev seed.
    pub fn dev() -> EdgeSetup {
        EdgeSetup {
            issuer_listen: "127.0.0.1:9000".into(),
            auth_listen: "127.0.0.1:4180".into(),
            edge_listen: "127.0.0.1:8000".into(),
            key_seed: edge::KeySeed::Seeded(edge::issuer::DEV_SEED),
        }
    }

    /// Free loopback ports (tests, benches, `warren demo`).
    pub fn any_port() -> EdgeSetup {
        EdgeSetup {
            issuer_listen: "127.0.0.1:0".into(),
            auth_listen: "127.0.0.1:0".into(),
            edge_listen: "127.0.0.1:0".into(),
            ..EdgeSetup::dev()
        }
    }
}

/// The audience (client id) of the embedded edge.
pub const EDGE_AUDIENCE: &str = "warren";

/// A running edge.
pub struct RunningEdge {
    /// The issuer, to mint tokens in process.
    pub issuer: Arc<edge::Issuer>,
    /// Where the issuer serves discovery, JWKS and `POST /token`.
    pub issuer_addr: SocketAddr,
    /// The auth proxy.
    pub auth_addr: SocketAddr,
    /// The edge: `http://edge_addr/graphql` is the public endpoint.
    pub edge_addr: SocketAddr,
}

impl RunningEdge {
    /// A token for `sub` from the issuer (one hour).
    pub fn token(&self, sub: &str) -> anyhow::Result<String> {
        Ok(self.issuer.mint(&edge::MintRequest::new(sub))?)
    }
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            listen: "127.0.0.1:8080".into(),
            broker: BrokerChoice::Embedded,
            analysis_duration: Duration::from_millis(500),
            orchestrator_concurrency: 8,
            edge: None,
        }
    }
}

/// A running system; [`RunningSystem::stop`] shuts it down gracefully.
pub struct RunningSystem {
    /// Where the gateway serves `/graphql`.
    pub gateway_addr: SocketAddr,
    /// The in-process broker, when embedded (for inspection).
    pub broker: Option<broker_mem::Broker>,
    /// The edge, when configured.
    pub edge: Option<RunningEdge>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl RunningSystem {
    /// Starts broker, orchestrator and gateway; returns once the gateway accepts connections.
    pub async fn start(config: SystemConfig) -> anyhow::Result<RunningSystem> {
        let (broker, gateway_bus, orchestrator_bus) = match &config.broker {
            BrokerChoice::Embedded => {
                let broker = broker_mem::Broker::new();
                let gateway: Arc<dyn Bus> = Arc::new(ports::memory::MemoryBus::new(broker.clone()));
                let orchestrator: Arc<dyn Bus> =
                    Arc::new(ports::memory::MemoryBus::new(broker.clone()));
                (Some(broker), gateway, orchestrator)
            }
            BrokerChoice::RabbitMq(url) => {
                let connect = || async {
                    ports::rabbitmq::RabbitBus::connect(url)
                        .await
                        .context("connecting to RabbitMQ")
                };
                let gateway: Arc<dyn Bus> = Arc::new(connect().await?);
                let orchestrator: Arc<dyn Bus> = Arc::new(connect().await?);
                (None, gateway, orchestrator)
            }
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let stopped = move || {
            let mut rx = shutdown_rx.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };

        let mut tasks = Vec::new();
        let edge_issuer = match &config.edge {
            Some(setup) => Some(start_issuer(setup, &stopped, &mut tasks).await?),
            None => None,
        };
        let listener = bind_nodelay(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let gateway_addr = listener.local_addr()?;
        let gateway_config = graph_gateway::GatewayConfig {
            // The gateway re-validates the token the auth proxy already checked.
            auth: edge_issuer
                .as_ref()
                .map(|(_, addr)| graph_gateway::JwtAuth(verifier(*addr))),
            ..graph_gateway::GatewayConfig::default()
        };
        let gateway = tokio::spawn(graph_gateway::run(
            Ports::real(gateway_bus),
            listener,
            gateway_config,
            stopped(),
        ));
        let analyzer = Arc::new(BuiltinAnalyzer {
            duration: config.analysis_duration,
        });
        let orchestrator_config = OrchestratorConfig {
            concurrency: config.orchestrator_concurrency,
            ..OrchestratorConfig::default()
        };
        let orchestrator = tokio::spawn(orchestrator::run(
            Ports::real(orchestrator_bus),
            analyzer,
            orchestrator_config,
            stopped(),
        ));
        tasks.push(tokio::spawn(
            async move { gateway.await?.context("gateway") },
        ));
        tasks.push(tokio::spawn(async move {
            orchestrator.await?.context("orchestrator")
        }));
        let edge = match (&config.edge, edge_issuer) {
            (Some(setup), Some((issuer, issuer_addr))) => Some(
                start_proxies(
                    setup,
                    issuer,
                    issuer_addr,
                    gateway_addr,
                    &stopped,
                    &mut tasks,
                )
                .await?,
            ),
            _ => None,
        };
        let system = RunningSystem {
            gateway_addr,
            broker,
            edge,
            shutdown,
            tasks,
        };
        system.wait_until_ready().await?;
        Ok(system)
    }

    /// `http://addr/graphql` of the gateway itself.
    pub fn graphql_url(&self) -> String {
        format!("http://{}/graphql", self.gateway_addr)
    }

    /// `http://addr/graphql` of the edge when there is one, else of the gateway: where clients go.
    pub fn public_url(&self) -> String {
        match &self.edge {
            Some(edge) => format!("http://{}/graphql", edge.edge_addr),
            None => self.graphql_url(),
        }
    }

    /// Resolves when a service stops by itself (an error, since they run until shutdown).
    pub async fn failed(&mut self) -> anyhow::Error {
        let (result, _, _) = futures::future::select_all(self.tasks.iter_mut()).await;
        match result {
            Ok(Ok(())) => anyhow::anyhow!("a service stopped unexpectedly"),
            Ok(Err(e)) => e,
            Err(e) => e.into(),
        }
    }

    /// Stops consuming, finishes in-flight work, and waits for every service to end.
    pub async fn stop(self) -> anyhow::Result<()> {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }

    async fn wait_until_ready(&self) -> anyhow::Result<()> {
        // The gateway serves HTTP only once its topology is declared and its bridge consumes, so
        // a 200 from /healthz means the whole system is ready.
        let mut last_error = String::new();
        for _ in 0..READY_ATTEMPTS_MAX {
            match healthz(self.gateway_addr).await {
                Ok(()) => return Ok(()),
                Err(e) => last_error = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!(
            "gateway at {} did not become ready: {last_error}",
            self.gateway_addr
        )
    }
}

type Tasks = Vec<JoinHandle<anyhow::Result<()>>>;

/// A loopback listener whose accepted connections have Nagle off: small request/response and
/// WebSocket messages otherwise wait up to 40 ms for a delayed ACK (measured: every
/// mutation→AnalysisCompleted took ~44 ms with zero-length analyses). `TokioNet::connect` does
/// the same for the connecting side.
async fn bind_nodelay(
    addr: &str,
) -> std::io::Result<impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = SocketAddr>> {
    use axum::serve::ListenerExt as _;
    let listener = TokioNet.bind(addr).await?;
    Ok(listener.tap_io(|stream| {
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY not set");
        }
    }))
}

/// A validator against the embedded issuer (the clock is the system's, as in real mode).
fn verifier(issuer_addr: SocketAddr) -> Arc<edge::Verifier> {
    let url = format!("http://{issuer_addr}");
    Arc::new(edge::Verifier::new(
        edge::VerifierConfig::new(url.clone(), EDGE_AUDIENCE),
        Arc::new(ports::SystemClock),
        Arc::new(edge::DiscoveredJwks::new(TokioNet, url)),
    ))
}

/// Starts the issuer first: the gateway and the auth proxy discover its keys.
async fn start_issuer<F, Fut>(
    setup: &EdgeSetup,
    stopped: &F,
    tasks: &mut Tasks,
) -> anyhow::Result<(Arc<edge::Issuer>, SocketAddr)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = bind_nodelay(&setup.issuer_listen)
        .await
        .with_context(|| format!("binding {}", setup.issuer_listen))?;
    let addr = listener.local_addr()?;
    let issuer = Arc::new(edge::Issuer::new(
        edge::IssuerConfig {
            issuer_url: format!("http://{addr}"),
            audience: EDGE_AUDIENCE.into(),
        },
        Arc::new(ports::SystemClock),
        setup.key_seed,
    )?);
    let served = tokio::spawn(edge::run_issuer(listener, issuer.clone(), stopped()));
    tasks.push(tokio::spawn(async move { Ok(served.await??) }));
    Ok((issuer, addr))
}

async fn start_proxies<F, Fut>(
    setup: &EdgeSetup,
    issuer: Arc<edge::Issuer>,
    issuer_addr: SocketAddr,
    gateway_addr: SocketAddr,
    stopped: &F,
    tasks: &mut Tasks,
) -> anyhow::Result<RunningEdge>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let auth_listener = bind_nodelay(&setup.auth_listen)
        .await
        .with_context(|| format!("binding {}", setup.auth_listen))?;
    let auth_addr = auth_listener.local_addr()?;
    let auth = tokio::spawn(edge::run_auth_proxy(
        TokioNet,
        auth_listener,
        edge::AuthProxyConfig::new(gateway_addr.to_string()),
        verifier(issuer_addr),
        stopped(),
    ));
    let edge_listener = bind_nodelay(&setup.edge_listen)
        .await
        .with_context(|| format!("binding {}", setup.edge_listen))?;
    let edge_addr = edge_listener.local_addr()?;
    let edge_config = edge::EdgeConfig {
        // One process stands in for many users on loopback: the per-IP limit is per process here.
        rate_limit: 10_000,
        ..edge::EdgeConfig::new(auth_addr.to_string())
    };
    let edge_task = tokio::spawn(edge::run_edge(
        TokioNet,
        edge_listener,
        edge_config,
        stopped(),
    ));
    tasks.push(tokio::spawn(async move { Ok(auth.await??) }));
    tasks.push(tokio::spawn(async move { Ok(edge_task.await??) }));
    Ok(RunningEdge {
        issuer,
        issuer_addr,
        auth_addr,
        edge_addr,
    })
}

/// Serves `broker` over AMQP 0-9-1 on `listen` (`warren up` uses port
/// [`broker_mem::wire::PORT_DEFAULT`]), so any AMQP client (lapin, pika, amqplib) can join the
/// embedded system: it sees the same exchanges and queues as the services. Returns the bound
/// address and the accept loop's task.
pub async fn serve_amqp(
    broker: &broker_mem::Broker,
    listen: &str,
) -> anyhow::Result<(SocketAddr, JoinHandle<std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding the AMQP listener {listen}"))?;
    let addr = listener.local_addr()?;
    let server =
        broker_mem::wire::WireServer::new(broker.clone(), broker_mem::wire::WireConfig::default());
    Ok((addr, tokio::spawn(server.serve_tcp(listener))))
}

/// Readiness polls before giving up (50 ms apart).
const READY_ATTEMPTS_MAX: u32 = 200;

async fn healthz(addr: SocketAddr) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TokioNet.connect(&addr.to_string()).await?;
    stream
        .write_all(
            format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = Vec::new();
    tokio::time::timeout(
        Duration::from_secs(2),
        (&mut stream).take(4096).read_to_end(&mut response),
    )
    .await??;
    anyhow::ensure!(
        response.starts_with(b"HTTP/1.1 200"),
        "healthz answered {:?}",
        String::from_utf8_lossy(&response)
    );
    Ok(())
}
