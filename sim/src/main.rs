//! `warren`: run the whole system in one process, or simulate it from a seed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use client_console::{AnalysisInput, ConsoleConfig, EventKind};
use warren_sim::{BrokerChoice, RunningSystem, SimConfig, SystemConfig};

/// warren: the analysis system (gateway, orchestrator, broker) and the kit to test it.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run broker-mem, orchestrator and gateway in this process until Ctrl-C.
    Up {
        /// Where the gateway listens.
        #[arg(long, env = "WARREN_LISTEN", default_value = "127.0.0.1:8080")]
        listen: String,
        #[command(flatten)]
        system: SystemArgs,
    },
    /// Start the system, run the console client against it once, and exit.
    Demo {
        #[command(flatten)]
        system: SystemArgs,
        /// The asset to analyse.
        #[arg(long, default_value = "press-17")]
        asset: String,
        /// What to compute.
        #[arg(long = "type", default_value = "utilization")]
        analysis_type: String,
    },
    /// Simulate the whole flow in turmoil from a seed, check it, and check it is deterministic.
    Sim {
        /// The seed that decides the run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Console clients (hosts).
        #[arg(long, default_value_t = 3)]
        clients: usize,
        /// Analyses per client.
        #[arg(long, default_value_t = 4)]
        analyses: usize,
        /// Simulated duration of each analysis, in milliseconds.
        #[arg(long, default_value_t = 250)]
        analysis_ms: u64,
        /// Write the trace (JSON lines) to this file.
        #[arg(long)]
        trace: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct SystemArgs {
    /// Use RabbitMQ at this AMQP URL instead of the embedded broker.
    #[arg(long, env = "AMQP_URL")]
    amqp_url: Option<String>,
    /// How long each analysis takes, in milliseconds.
    #[arg(long, default_value_t = 500)]
    analysis_ms: u64,
}

impl SystemArgs {
    fn config(&self, listen: String) -> SystemConfig {
        SystemConfig {
            listen,
            broker: self
                .amqp_url
                .clone()
                .map_or(BrokerChoice::Embedded, BrokerChoice::RabbitMq),
            analysis_duration: Duration::from_millis(self.analysis_ms),
            ..SystemConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim {
            seed,
            clients,
            analyses,
            analysis_ms,
            trace,
        } => simulate(
            SimConfig {
                seed,
                clients,
                analyses_per_client: analyses,
                analysis_duration: Duration::from_millis(analysis_ms),
                ..SimConfig::default()
            },
            trace,
        ),
        command => tokio::runtime::Runtime::new()
            .map_err(Into::into)
            .and_then(|rt| rt.block_on(serve(command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(command: Command) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                if matches!(command, Command::Demo { .. }) {
                    "warn"
                } else {
                    "info"
                }
                .into()
            }),
        )
        .init();
    match command {
        Command::Up { listen, system } => {
            let mut running = RunningSystem::start(system.config(listen)).await?;
            println!(
                "warren is up: GraphQL at {} (HTTP POST and WebSocket); Ctrl-C stops it",
                running.graphql_url()
            );
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {
                    println!("stopping: finishing in-flight analyses");
                    running.stop().await
                }
                e = running.failed() => Err(e),
            }
        }
        Command::Demo {
            system,
            asset,
            analysis_type,
        } => {
            let running = RunningSystem::start(system.config("127.0.0.1:0".into())).await?;
            println!("warren demo: gateway at {}", running.graphql_url());
            let mut config = ConsoleConfig::from_url(&running.graphql_url())?;
            config.user = Some("demo".into());
            let input = AnalysisInput {
                asset_id: asset,
                analysis_type,
                parameters: None,
            };
            let outcome = client_console::run(&ports::TokioNet, &config, &input, |step| {
                println!("{}", client_console::format_step(step))
            })
            .await;
            running.stop().await?;
            let outcome = outcome.context("the console client failed")?;
            let completed = outcome
                .events
                .iter()
                .any(|e| e.kind == EventKind::Completed);
            anyhow::ensure!(completed, "no AnalysisCompleted received");
            Ok(())
        }
        Command::Sim { .. } => unreachable!("handled without a runtime"),
    }
}

fn simulate(config: SimConfig, trace_file: Option<std::path::PathBuf>) -> anyhow::Result<()> {
    let report = warren_sim::simulation::check_determinism(&config).map_err(anyhow::Error::msg)?;
    if let Some(path) = trace_file {
        std::fs::write(&path, report.trace.to_jsonl())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let analyses: usize = report.outcomes.values().map(Vec::len).sum();
    println!(
        "seed {}: {} clients, {analyses} analyses, {} trace events, hash {:016x}, {:.3} s simulated; same trace on rerun",
        config.seed,
        config.clients,
        report.trace.lines.len(),
        report.trace_hash,
        report.simulated.as_secs_f64()
    );
    if report.violations.is_empty() {
        println!("all checks passed");
        Ok(())
    } else {
        for v in &report.violations {
            println!("VIOLATION: {v}");
        }
        anyhow::bail!(
            "{} violations; replay with: {}",
            report.violations.len(),
            report.replay_command()
        )
    }
}
