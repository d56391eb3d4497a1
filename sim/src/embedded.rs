//! The whole system in one process on loopback: broker-mem (or RabbitMQ), the orchestrator and
//! the gateway, on real sockets. `warren up` and `warren demo` run this; so do the end-to-end
//! tests and the benchmarks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
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
}

impl Default for SystemConfig {
    fn default() -> Self {
        SystemConfig {
            listen: "127.0.0.1:8080".into(),
            broker: BrokerChoice::Embedded,
            analysis_duration: Duration::from_millis(500),
            orchestrator_concurrency: 8,
        }
    }
}

/// A running system; [`RunningSystem::stop`] shuts it down gracefully.
pub struct RunningSystem {
    /// Where the gateway serves `/graphql`.
    pub gateway_addr: SocketAddr,
    /// The in-process broker, when embedded (for inspection).
    pub broker: Option<broker_mem::Broker>,
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

        let listener = TokioNet
            .bind(&config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let gateway_addr = listener.local_addr()?;
        let gateway = tokio::spawn(graph_gateway::run(
            Ports::real(gateway_bus),
            listener,
            graph_gateway::GatewayConfig::default(),
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
        let tasks = vec![
            tokio::spawn(async move { gateway.await?.context("gateway") }),
            tokio::spawn(async move { orchestrator.await?.context("orchestrator") }),
        ];
        let system = RunningSystem {
            gateway_addr,
            broker,
            shutdown,
            tasks,
        };
        system.wait_until_ready().await?;
        Ok(system)
    }

    /// `http://addr/graphql`.
    pub fn graphql_url(&self) -> String {
        format!("http://{}/graphql", self.gateway_addr)
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
