//! `warren`: run the whole system in one process, or simulate it from a seed.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use client_console::{AnalysisInput, ConsoleConfig, EventKind};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use warren_sim::scenario::Scenario;
use warren_sim::{BrokerChoice, RunningSystem, SimReport, SystemConfig};

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
        /// Where the embedded broker serves AMQP 0-9-1 (guest/guest) for any AMQP client;
        /// `off` serves none.
        #[arg(long, env = "WARREN_AMQP_LISTEN", default_value = "127.0.0.1:5673")]
        amqp_listen: String,
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
    /// Mint a development token from the dev issuer's keys (the ones `warren up` serves).
    Token {
        /// The user (`sub`).
        #[arg(long)]
        sub: String,
        /// `email` claim.
        #[arg(long)]
        email: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl_secs: u64,
        /// The issuer URL (`iss`); `warren up`'s by default.
        #[arg(long, default_value = "http://127.0.0.1:9000")]
        issuer_url: String,
        /// Key seed; `warren up`'s dev seed by default.
        #[arg(long, default_value_t = edge::issuer::DEV_SEED)]
        seed: u64,
    },
    /// Simulate the whole flow in turmoil: run scenarios, explore seeds, render traces.
    Sim {
        #[command(subcommand)]
        command: SimCommand,
    },
}

#[derive(Debug, Subcommand)]
enum SimCommand {
    /// Run a scenario file (or the default workload) under one seed, check it, check it is
    /// deterministic, and print the queue report.
    Run {
        /// A scenarios/*.toml file; without it, the default workload shaped by the flags below.
        file: Option<PathBuf>,
        /// The seed (default: the scenario's first seed, or 1).
        #[arg(long)]
        seed: Option<u64>,
        /// Console clients (without FILE).
        #[arg(long, default_value_t = 3)]
        clients: usize,
        /// Analyses per client (without FILE).
        #[arg(long, default_value_t = 4)]
        analyses: usize,
        /// Simulated duration of each analysis, ms (without FILE).
        #[arg(long, default_value_t = 250)]
        analysis_ms: u64,
        /// Write the trace (JSON lines) to this file.
        #[arg(long)]
        trace: Option<PathBuf>,
    },
    /// Run many seeds; summarise outcomes, faults and states reached; exit non-zero on any
    /// violation (with a scenario file, record its failing seeds in the regressions file beside
    /// it; with --swarm, print each failing seed's scenario as TOML to save instead).
    Explore {
        /// A scenario file whose workload and faults every seed runs (ignored with --swarm).
        file: Option<PathBuf>,
        /// How many seeds.
        #[arg(long, default_value_t = 100)]
        seeds: u64,
        /// First seed.
        #[arg(long, default_value_t = 0)]
        start: u64,
        /// Each seed draws its own workload and fault schedule (swarm testing).
        #[arg(long)]
        swarm: bool,
        /// Do not append failing seeds to the regressions file.
        #[arg(long)]
        no_record: bool,
    },
    /// Render a trace: a Mermaid sequence diagram and a text timeline. FILE is a trace (.jsonl)
    /// or a scenario (.toml, run under --seed).
    Trace {
        /// Trace or scenario file.
        file: PathBuf,
        /// Seed, for a scenario file.
        #[arg(long)]
        seed: Option<u64>,
        /// Write the Mermaid diagram here instead of printing it.
        #[arg(long)]
        mermaid: Option<PathBuf>,
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
    /// Run the gateway alone, without the edge (issuer, auth proxy, Kong role) in front.
    #[arg(long)]
    no_edge: bool,
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
            edge: (!self.no_edge).then(warren_sim::embedded::EdgeSetup::dev),
            ..SystemConfig::default()
        }
    }
}

/// `warren token`: the same keys as `warren up`'s issuer (same seed, same URL), no server needed.
fn mint_token(
    sub: String,
    email: Option<String>,
    ttl_secs: u64,
    issuer_url: String,
    seed: u64,
) -> anyhow::Result<()> {
    let issuer = edge::Issuer::new(
        edge::IssuerConfig {
            issuer_url,
            audience: warren_sim::embedded::EDGE_AUDIENCE.into(),
        },
        std::sync::Arc::new(ports::SystemClock),
        edge::KeySeed::Seeded(seed),
    )?;
    let token = issuer.mint(&edge::MintRequest {
        email,
        ttl_secs: Some(ttl_secs),
        ..edge::MintRequest::new(sub)
    })?;
    println!("{token}");
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Sim { command } => simulate(command),
        Command::Token {
            sub,
            email,
            ttl_secs,
            issuer_url,
            seed,
        } => mint_token(sub, email, ttl_secs, issuer_url, seed),
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
        Command::Up {
            listen,
            amqp_listen,
            system,
        } => {
            let mut running = RunningSystem::start(system.config(listen)).await?;
            if let Some(broker) = running.broker.as_ref().filter(|_| amqp_listen != "off") {
                let (addr, _serving) =
                    warren_sim::embedded::serve_amqp(broker, &amqp_listen).await?;
                println!("broker-mem serves AMQP at amqp://guest:guest@{addr}/%2f");
            }
            match &running.edge {
                Some(edge) => println!(
                    "warren is up: GraphQL at {} through the edge (bearer token required: \
                     `warren token --sub alice`, or POST http://{}/token), gateway itself at {}; \
                     Ctrl-C stops it",
                    running.public_url(),
                    edge.issuer_addr,
                    running.graphql_url()
                ),
                None => println!(
                    "warren is up: GraphQL at {} (HTTP POST and WebSocket); Ctrl-C stops it",
                    running.graphql_url()
                ),
            }
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
            let mut system_config = system.config("127.0.0.1:0".into());
            if let Some(edge) = &mut system_config.edge {
                // Free ports, so a demo runs beside a `warren up`.
                *edge = warren_sim::embedded::EdgeSetup {
                    key_seed: edge.key_seed,
                    ..warren_sim::embedded::EdgeSetup::any_port()
                };
            }
            let running = RunningSystem::start(system_config).await?;
            let mut config = ConsoleConfig::from_url(&running.public_url())?;
            match &running.edge {
                Some(edge) => {
                    println!(
                        "warren demo: edge at {} → auth proxy {} → gateway {}",
                        running.public_url(),
                        edge.auth_addr,
                        running.graphql_url()
                    );
                    config.token = Some(edge.token("demo")?);
                }
                None => {
                    println!("warren demo: gateway at {}", running.graphql_url());
                    config.user = Some("demo".into());
                }
            }
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
        Command::Sim { .. } | Command::Token { .. } => {
            unreachable!("handled without a runtime")
        }
    }
}

fn simulate(command: SimCommand) -> anyhow::Result<()> {
    match command {
        SimCommand::Run {
            file,
            seed,
            clients,
            analyses,
            analysis_ms,
            trace,
        } => {
            let (scenario, label) = match &file {
                Some(path) => (
                    Scenario::load(path).map_err(anyhow::Error::msg)?,
                    path.display().to_string(),
                ),
                None => (
                    default_scenario(clients, analyses, analysis_ms),
                    "(default workload)".into(),
                ),
            };
            let seed = seed.unwrap_or(scenario.seeds[0]);
            let config = scenario.config(seed);
            let report =
                warren_sim::simulation::check_determinism(&config).map_err(anyhow::Error::msg)?;
            if let Some(path) = trace {
                std::fs::write(&path, report.trace.to_jsonl())
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            print_report(&label, &report);
            let replay = match &file {
                Some(path) => format!("cargo run -- sim run {} --seed {seed}", path.display()),
                None => format!(
                    "cargo run -- sim run --seed {seed} --clients {clients} --analyses {analyses} --analysis-ms {analysis_ms}"
                ),
            };
            match scenario.judge(&report) {
                Ok(()) => {
                    println!(
                        "as expected ({}); same trace on rerun",
                        expectation(&scenario)
                    );
                    Ok(())
                }
                Err(e) => {
                    anyhow::bail!("{e}\nscenario: {label}\noptions: {config:?}\nreplay: {replay}")
                }
            }
        }
        SimCommand::Explore {
            file,
            seeds,
            start,
            swarm,
            no_record,
        } => {
            let base = match (&file, swarm) {
                (Some(path), false) => Some(Scenario::load(path).map_err(anyhow::Error::msg)?),
                (None, false) => anyhow::bail!("give a scenario FILE, or --swarm"),
                (_, true) => None,
            };
            explore(base, file.as_deref(), start, seeds, !no_record)
        }
        SimCommand::Trace {
            file,
            seed,
            mermaid,
        } => {
            let trace = if file.extension().is_some_and(|e| e == "toml") {
                let scenario = Scenario::load(&file).map_err(anyhow::Error::msg)?;
                warren_sim::simulation::run(&scenario.config(seed.unwrap_or(scenario.seeds[0])))
                    .trace
            } else {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                warren_sim::render::parse_jsonl(&text).map_err(anyhow::Error::msg)?
            };
            let diagram = warren_sim::render::mermaid(&trace);
            match mermaid {
                Some(path) => std::fs::write(&path, diagram)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => println!("```mermaid\n{diagram}```\n"),
            }
            print!("{}", warren_sim::render::timeline(&trace));
            Ok(())
        }
    }
}

fn default_scenario(clients: usize, analyses: usize, analysis_ms: u64) -> Scenario {
    let text = format!(
        "name = 'default workload'\nseeds = [1]\n[workload]\nclients = {clients}\nanalyses_per_client = {analyses}\nanalysis_ms = {analysis_ms}\n"
    );
    Scenario::parse(&text).expect("the default scenario is valid")
}

fn expectation(scenario: &Scenario) -> String {
    if scenario.expect_failing.is_empty() {
        "every checker passed".into()
    } else {
        format!(
            "checkers {:?} failed, as the scenario expects",
            scenario.expect_failing
        )
    }
}

fn print_report(label: &str, report: &SimReport) {
    let q = &report.findings.queue;
    println!(
        "{label} seed {}: {:.3} s simulated, {} trace events, hash {:016x}",
        report.config.seed,
        report.simulated.as_secs_f64(),
        report.trace.lines.len(),
        report.trace_hash
    );
    println!(
        "  accepted {} refused {} completed {} lost {} duplicated {} unexpected {} recovered {} repeated-effects {}",
        q.accepted,
        q.refused,
        q.completed,
        q.lost,
        q.duplicated,
        q.unexpected,
        q.recovered,
        q.repeated_effects
    );
    if !report.faults_applied.is_empty() {
        println!("  faults applied: {:?}", report.faults_applied);
    }
    for fault in &report.faults_never_fired {
        println!("  NEVER FIRED {fault}: armed on the broker, but its event never came");
    }
    for fault in &report.faults_not_reached {
        println!(
            "  NOT REACHED {} at {} ms: the run was over before it",
            fault.fault.kind(),
            fault.at_ms
        );
    }
    for finding in report.findings.wrong() {
        println!("  WRONG {finding}");
    }
    for finding in report.findings.stuck() {
        println!("  STUCK {finding}");
    }
}

fn explore(
    base: Option<Scenario>,
    file: Option<&Path>,
    start: u64,
    seeds: u64,
    record: bool,
) -> anyhow::Result<()> {
    let progress = indicatif::ProgressBar::new(seeds);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} seeds  {elapsed_precise}  {msg}",
        )
        .expect("valid template"),
    );
    let mut outcomes: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failing_checkers: BTreeMap<String, u64> = BTreeMap::new();
    let mut faults: BTreeMap<String, u64> = BTreeMap::new();
    let mut states: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut failures = Vec::new();
    for seed in start..start + seeds {
        let scenario = base
            .clone()
            .unwrap_or_else(|| warren_sim::swarm::scenario_for_seed(seed));
        let mut report = warren_sim::simulation::run(&scenario.config(seed));
        // A swarm case printed so that it replays as a file (a file is printed as it is).
        let replayable = match base {
            None => scenario.replaying(seed, &report),
            Some(_) => scenario.clone(),
        };
        // The swarm draws fault times without knowing how long a run will be: one drawn past
        // the end tested nothing, but is no failure (a scenario file's is).
        let drawn_past_the_end = base.is_none() && !report.faults_not_reached.is_empty();
        if base.is_none() {
            report.faults_not_reached.clear();
            // Likewise a hook drawn for a queue that delivered nothing after it.
            report.faults_never_fired.clear();
        }
        let verdict = scenario.judge(&report);
        let outcome = match (
            &verdict,
            report.findings.wrong().is_empty(),
            report.findings.stuck().is_empty(),
        ) {
            (Ok(()), ..) => "as expected",
            (Err(_), true, true) if !report.faults_not_reached.is_empty() => "fault not reached",
            (Err(_), false, _) => "wrong",
            (Err(_), true, false) => "stuck",
            (Err(_), true, true) => "unexpected pass",
        };
        *outcomes.entry(outcome).or_default() += 1;
        for c in report.findings.failing() {
            *failing_checkers.entry(c.to_owned()).or_default() += 1;
        }
        for (kind, n) in &report.faults_applied {
            *faults.entry(kind.clone()).or_default() += *n as u64;
        }
        let q = &report.findings.queue;
        for (state, reached) in [
            ("analysis recovered after a retry", q.recovered > 0),
            ("event seen twice by a client", q.duplicated > 0),
            (
                "analysis run twice by orchestrators",
                q.repeated_effects > 0,
            ),
            ("convergence deadline hit", report.deadline_passed),
            ("a fault drawn past the run's end", drawn_past_the_end),
        ] {
            if reached {
                *states.entry(state).or_default() += 1;
            }
        }
        if let Err(e) = verdict {
            let replay = match file {
                Some(path) if base.is_some() => {
                    format!("cargo run -- sim run {} --seed {seed}", path.display())
                }
                _ => format!("cargo run -- sim explore --swarm --start {seed} --seeds 1"),
            };
            failures.push(format!(
                "seed {seed}: {e}\n  replay: {replay}\n  scenario:\n{}",
                replayable.to_toml()
            ));
            if record && let Some(path) = file.filter(|_| base.is_some()) {
                let regressions = path
                    .parent()
                    .unwrap_or(Path::new("."))
                    .join("regressions.txt");
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                warren_sim::regressions::record(&regressions, &name, seed)
                    .map_err(anyhow::Error::msg)?;
            }
        }
        progress.set_message(format!("{} failing", failures.len()));
        progress.inc(1);
    }
    progress.finish();
    println!("\noutcome            seeds");
    for (outcome, n) in &outcomes {
        println!("{outcome:<18} {n}");
    }
    println!("\nfailing checker    seeds");
    for (checker, n) in &failing_checkers {
        println!("{checker:<18} {n}");
    }
    println!("\nfault applied           times");
    for (kind, n) in &faults {
        println!("{kind:<23} {n}");
    }
    println!("\nstate reached                          seeds");
    for (state, n) in &states {
        println!("{state:<38} {n}");
    }
    if failures.is_empty() {
        println!("\n{seeds} seeds, no violations");
        Ok(())
    } else {
        for failure in &failures {
            println!("\n{failure}");
        }
        anyhow::bail!(
            "{} of {seeds} seeds did not behave as expected",
            failures.len()
        )
    }
}
