//! `fake-cloud`: serve the loopback fake of the Neon API v2 and Fly
//! Machines API (`fake_cloud`) for the demo, scripts and
//! rehearsals.
//!
//! It prints exactly one line to stdout, `listening on http://127.0.0.1:PORT`,
//! so a script can read the port, then serves until SIGTERM or ctrl-c. Neon
//! is under `/api/v2`, Fly under `/v1`, the harness endpoints under
//! `/_fake`. Logs go to stderr (`FAKE_CLOUD_LOG`, default `warn`) and never
//! carry credentials or passwords. Exit codes: 0 after a clean stop, 2 for a
//! usage or setup error (bad address, port in use).

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{ArgAction, Parser};
use fake_cloud::{FakeCloud, FakeConfig, VendorLimits};
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Serve a fake Neon + Fly control plane on loopback.
#[derive(Debug, Parser)]
#[command(name = "fake-cloud", version)]
struct Args {
    /// Address to listen on; only loopback addresses are accepted.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Latency added to every API call, in milliseconds.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Share of API calls answered 500/503 before doing anything (0..=1).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    error_rate: f64,
    /// Share of successful mutations answered 503 after being applied (0..=1).
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    error_after_commit_rate: f64,
    /// Requests per second per API before 429s (0 or absent: no limit).
    #[arg(long)]
    rate_limit_rps: Option<u32>,
    /// Burst size of each API's token bucket (default: the rate).
    #[arg(long)]
    rate_limit_burst: Option<u32>,
    /// Whether 429s carry `Retry-After` (`--retry-after` or `--retry-after=false`).
    #[arg(long, action = ArgAction::Set, num_args = 0..=1, default_value_t = false, default_missing_value = "true")]
    retry_after: bool,
    /// How long a Neon mutation's operations take to finish, in milliseconds.
    #[arg(long, default_value_t = 0)]
    op_ms: u64,
    /// How long a Fly machine takes to boot (and to stop), in milliseconds.
    #[arg(long, default_value_t = 0)]
    boot_ms: u64,
    /// Seed for generated ids, passwords and injection rolls.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Require `Authorization: Bearer <key>` on Neon calls.
    #[arg(long, env = "FAKE_NEON_API_KEY", hide_env_values = true)]
    neon_api_key: Option<String>,
    /// Require `Bearer <token>` or `FlyV1 <token>` on Fly calls.
    #[arg(long, env = "FAKE_FLY_API_TOKEN", hide_env_values = true)]
    fly_api_token: Option<String>,
    /// Accept machine names a live machine of the app already has (default: 409).
    #[arg(long)]
    fly_duplicate_names: bool,
    /// Report every machine health check as `critical`.
    #[arg(long)]
    failing_checks: bool,
    /// Enforce Neon's and Fly's documented rate limits (Neon ~700/min per
    /// account and 40/s per route; Fly 1/s burst 3 per action and machine
    /// or app, Get Machine 5/s burst 10).
    #[arg(long)]
    vendor_limits: bool,
}

fn share(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(value) if (0.0..=1.0).contains(&value) => Ok(value),
        _ => Err("must be a number between 0 and 1".to_owned()),
    }
}

impl Args {
    fn config(&self) -> FakeConfig {
        let rate_limit = self.rate_limit_rps.filter(|&rps| rps > 0).map(|rps| {
            let burst = self.rate_limit_burst.filter(|&b| b > 0).unwrap_or(rps);
            (rps, burst)
        });
        FakeConfig {
            latency: Duration::from_millis(self.latency_ms),
            error_rate: self.error_rate,
            error_after_commit_rate: self.error_after_commit_rate,
            rate_limit,
            retry_after: self.retry_after,
            op_duration: Duration::from_millis(self.op_ms),
            boot_duration: Duration::from_millis(self.boot_ms),
            seed: self.seed,
            neon_api_key: self.neon_api_key.clone(),
            fly_api_token: self.fly_api_token.clone(),
            fly_duplicate_names: self.fly_duplicate_names,
            fly_failing_checks: self.failing_checks,
            vendor_limits: self.vendor_limits.then(VendorLimits::default),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter =
        EnvFilter::try_from_env("FAKE_CLOUD_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("fake-cloud: cannot start the async runtime: {error}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(try_main(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("fake-cloud: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// The top-level entry point: bind, announce the address, serve until told
/// to stop.
async fn try_main(args: Args) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        bail!(
            "refusing to listen on {}: the fake cloud serves loopback (127.0.0.0/8, ::1) only",
            args.listen
        );
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let config = args.config();
    tracing::info!(?config, "starting");
    let cloud = FakeCloud::start_on(listener, config).await?;
    announce(&cloud).context("cannot write the listening line to stdout")?;
    stop_requested().await;
    tracing::info!("stopping");
    cloud.shutdown().await;
    Ok(())
}

/// The one line scripts read the port from, flushed at once.
fn announce(cloud: &FakeCloud) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on http://{}", cloud.addr())?;
    stdout.flush()
}

/// Resolves on ctrl-c, or SIGTERM where there are signals.
async fn stop_requested() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // Without a ctrl-c handler, wait for SIGTERM alone.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
