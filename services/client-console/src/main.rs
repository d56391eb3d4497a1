//! `client-console`: request an analysis and print its events as they arrive.

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use client_console::{AnalysisInput, ConsoleConfig};

/// Requests an analysis through the GraphQL API and prints AnalysisStarted and
/// AnalysisCompleted as they arrive. Exits 0 once the analysis has completed.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// GraphQL endpoint (the edge, or the gateway directly).
    #[arg(
        long,
        env = "WARREN_URL",
        default_value = "http://127.0.0.1:8000/graphql"
    )]
    url: String,
    /// The asset (machine) to analyse.
    #[arg(long, default_value = "press-17")]
    asset: String,
    /// What to compute.
    #[arg(long = "type", default_value = "utilization")]
    analysis_type: String,
    /// Parameters as JSON, e.g. '{"window":"7d"}'.
    #[arg(long)]
    parameters: Option<String>,
    /// Caller identity (sent as X-Forwarded-User; for a gateway without the edge in front).
    #[arg(long, env = "WARREN_USER")]
    user: Option<String>,
    /// Bearer token (sent as Authorization: Bearer), e.g. from `warren token --sub alice`;
    /// the edge requires one.
    #[arg(long, env = "WARREN_TOKEN")]
    token: Option<String>,
    /// Without --token or --user: the dev OIDC issuer to ask for a token (`warren up` runs one).
    #[arg(
        long,
        env = "WARREN_ISSUER_URL",
        default_value = "http://127.0.0.1:9000"
    )]
    issuer_url: String,
    /// Without --token or --user: the subject of the token asked for.
    #[arg(long, default_value = "console")]
    sub: String,
    /// Seconds to wait for completion.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), client_console::ConsoleError> {
    let mut config = ConsoleConfig::from_url(&args.url)?;
    config.user = args.user;
    config.token = args.token;
    if config.token.is_none() && config.user.is_none() {
        let request = edge::MintRequest::new(args.sub.clone());
        let token = edge::issuer::fetch_token(&ports::TokioNet, &args.issuer_url, &request)
            .await
            .map_err(|e| {
                client_console::ConsoleError::Usage(format!(
                    "no --token given and the dev issuer gave none: {e}"
                ))
            })?;
        config.token = Some(token);
    }
    config.timeout = Duration::from_secs(args.timeout_secs);
    let parameters = args
        .parameters
        .map(|p| serde_json::from_str(&p))
        .transpose()
        .map_err(|e| {
            client_console::ConsoleError::Usage(format!("--parameters is not JSON: {e}"))
        })?;
    let input = AnalysisInput {
        asset_id: args.asset,
        analysis_type: args.analysis_type,
        parameters,
    };
    client_console::run(&ports::TokioNet, &config, &input, |step| {
        println!("{}", client_console::format_step(step))
    })
    .await?;
    Ok(())
}
