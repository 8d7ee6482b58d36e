//! `rekey run`: the command line's checks (the metrics file's path first,
//! before anything changes), the sinks the engine reports to, and the
//! signals that stop a run gracefully.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::PgPool;

use super::{confirm, open_table};
use crate::cli::args::{Global, RunArgs};
use crate::cli::output::metrics::{self, MetricsFile};
use crate::cli::output::progress::Style;
use crate::cli::output::report;
use crate::cli::output::totals::{Tally, Totals};
use crate::cli::{config, CliError};
use crate::db::Table;
use crate::envelope::Keyring;
use crate::rotate::events::{Event, EventSink, FanOut};
use crate::rotate::{inplace, reprovision, run, Outcome, RunError};

/// The top-level entry point for `rekey run`.
pub async fn run(global: &Global, args: &RunArgs) -> Result<Outcome, CliError> {
    let mut opts = config::run_options(args)?;
    let key_files: Vec<&std::path::Path> = [&global.keys.old_key_file, &global.keys.new_key_file]
        .into_iter()
        .flatten()
        .map(std::path::PathBuf::as_path)
        .collect();
    if let Some(path) = &args.metrics_file {
        metrics::check_path(path, &key_files)?;
    }
    let keyring = Arc::new(config::keyring(global)?);
    let access = config::cloud_access(global)?;
    let (auto_cap, connections) = config::run_connections(args);
    let (pool, table) = open_table(global, connections).await?;
    if let Some(cap) = auto_cap {
        let tuning = inplace::auto_tune(&pool, cap)
            .await
            .map_err(crate::db::DbError::from)?;
        opts.workers = tuning.workers;
        opts.batch_size = tuning.batch_size;
        if global.json || !global.quiet {
            report::workers_chosen(&tuning, global.json);
        }
    }
    if confirm::wanted(args.yes, global.json) {
        let database = crate::redact::url(config::database_url(global)?);
        confirm::ask(&pool, &table, &keyring, opts.mode, &opts.orgs, &database).await?;
    }
    let style = Style::detect(global.json, global.quiet);
    let tally = Arc::new(Tally::default());
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![
        Arc::from(style.sink()),
        Arc::clone(&tally) as Arc<dyn EventSink>,
    ];
    let metrics = match &args.metrics_file {
        Some(path) => Some(Arc::new(MetricsFile::create(path, &key_files)?)),
        None => None,
    };
    if let Some(m) = &metrics {
        m.keep_fresh();
        sinks.push(Arc::clone(m) as Arc<dyn EventSink>);
    }
    let sink: Arc<dyn EventSink> = Arc::new(FanOut(sinks));
    // From the moment the metrics file says `running`, a signal must reach
    // the code that writes its end.
    let stop = Arc::new(AtomicBool::new(false));
    watch_signals(Arc::clone(&stop), Arc::clone(&sink), global.json);
    let engine = Engine {
        pool,
        table,
        keyring,
        access,
        stop,
        metrics: metrics.clone(),
    };
    let report = match engine.run(args, &opts, &sink).await {
        Ok(report) => report,
        Err(e) => {
            if let Some(m) = &metrics {
                m.fail();
            }
            drop(sink);
            if matches!(e, CliError::Run(RunError::Stopped { .. })) {
                stopped_report(&tally.totals(), global.json);
            }
            return Err(e);
        }
    };
    if let Some(m) = &metrics {
        m.finish(&report);
    }
    drop(sink);
    if global.json {
        report::print_json(&serde_json::json!({
            "schema_version": crate::cli::output::progress::SCHEMA_VERSION,
            "ts": crate::cli::output::progress::timestamp(),
            "event": "summary",
            "report": report,
        }));
    } else {
        report::print(&report::run_text(&report));
    }
    Ok(report.outcome)
}

/// What an error that stopped an open run leaves the operator: what this
/// invocation did and that the same command resumes it (the error itself
/// follows on stderr).
fn stopped_report(totals: &Totals, json: bool) {
    let now = std::time::Instant::now();
    if json {
        report::print_json(&serde_json::json!({
            "schema_version": crate::cli::output::progress::SCHEMA_VERSION,
            "ts": crate::cli::output::progress::timestamp(),
            "event": "stopped",
            "run_id": totals.run_id,
            "reason": totals.ending.as_ref().and_then(|e| e.reason.clone()),
            "progress": totals.snapshot(now),
        }));
    } else {
        report::print(&report::stopped_text(totals, now));
    }
}

/// What the run needs once the command line is checked.
struct Engine {
    pool: PgPool,
    table: Table,
    keyring: Arc<Keyring>,
    access: Option<reprovision::CloudAccess>,
    /// Set by the first Ctrl-C or SIGTERM.
    stop: Arc<AtomicBool>,
    /// Also counts the re-provisioner's cloud requests.
    metrics: Option<Arc<MetricsFile>>,
}

impl Engine {
    /// The run itself, from the re-provisioner's set-up to the report; split
    /// from `run` so that any error on the way reaches the metrics file.
    async fn run(
        self,
        args: &RunArgs,
        opts: &run::RunOptions,
        sink: &Arc<dyn EventSink>,
    ) -> Result<run::RunReport, CliError> {
        let reprovisioner = match self.access {
            Some(access) => Some(Arc::new(reprovision::build(
                access,
                &config::cloud_limits(&args.provision),
                config::provision_settings(args),
                &self.pool,
                &self.table,
                &self.keyring,
                sink,
            )?)),
            None => None,
        };
        if let (Some(m), Some(r)) = (&self.metrics, &reprovisioner) {
            m.count_cloud(r.neon.live_counters(), r.fly.live_counters());
        }
        let ctx = run::RunContext {
            pool: self.pool,
            table: self.table,
            keyring: self.keyring,
            sink: Arc::clone(sink),
            reprovisioner,
            stop: self.stop,
        };
        Ok(run::run(&ctx, opts).await?)
    }
}

/// The first Ctrl-C or SIGTERM (systemd, Kubernetes and `timeout` stop a
/// process with SIGTERM) lets the work in flight finish (in-place batches
/// commit, tenants mid-way complete their step), then the run ends open with
/// its report and metrics written; that can take a while when the cloud is
/// slow or gone, so a second signal of either kind stops at once. Both are
/// safe: the journal resumes a run killed at any instant. The handlers are
/// installed before this returns, so no signal can arrive unhandled once the
/// run has started.
fn watch_signals(stop: Arc<AtomicBool>, sink: Arc<dyn EventSink>, json: bool) {
    let mut signals = match Signals::install() {
        Ok(signals) => signals,
        Err(e) => {
            eprintln!("warning: cannot watch for Ctrl-C and SIGTERM ({e}); a signal stops at once");
            return;
        }
    };
    tokio::spawn(async move {
        let first = signals.next().await;
        notify(
            &*sink,
            json,
            &Event::Interrupted {
                again: false,
                signal: first.name().into(),
            },
        );
        stop.store(true, Ordering::SeqCst);
        let second = signals.next().await;
        notify(
            &*sink,
            json,
            &Event::Interrupted {
                again: true,
                signal: second.name().into(),
            },
        );
        std::process::exit(second.exit_code());
    });
}

/// Tells the renderers of a signal; with `--json` stdout is a program's,
/// so the person who sent the signal also reads the notice on stderr.
fn notify(sink: &dyn EventSink, json: bool, event: &Event) {
    sink.emit(event);
    if json {
        if let Some(line) = crate::cli::output::progress::notice_line(event) {
            eprintln!("{line}");
        }
    }
}

/// The signals that interrupt a run.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(unix), allow(dead_code))]
enum Interrupt {
    CtrlC,
    Terminate,
}

impl Interrupt {
    /// 128 + the signal's number, as a shell reports a process it killed.
    fn exit_code(self) -> i32 {
        match self {
            Interrupt::CtrlC => 130,
            Interrupt::Terminate => 143,
        }
    }
}

impl Interrupt {
    /// The signal's name, as events and notices show it.
    fn name(self) -> &'static str {
        match self {
            Interrupt::CtrlC => "SIGINT",
            Interrupt::Terminate => "SIGTERM",
        }
    }
}

/// SIGINT and SIGTERM streams, registered with the runtime at once.
#[cfg(unix)]
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

#[cfg(unix)]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
        })
    }

    async fn next(&mut self) -> Interrupt {
        tokio::select! {
            _ = self.interrupt.recv() => Interrupt::CtrlC,
            _ = self.terminate.recv() => Interrupt::Terminate,
        }
    }
}

/// Elsewhere only Ctrl-C is watched.
#[cfg(not(unix))]
struct Signals;

#[cfg(not(unix))]
impl Signals {
    fn install() -> std::io::Result<Signals> {
        Ok(Signals)
    }

    async fn next(&mut self) -> Interrupt {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
        Interrupt::CtrlC
    }
}
