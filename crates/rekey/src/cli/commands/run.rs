//! `rekey run`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::PgPool;

use super::open_table;
use crate::cli::args::{Global, RunArgs};
use crate::cli::output::metrics::MetricsFile;
use crate::cli::output::progress::Style;
use crate::cli::output::report;
use crate::cli::{config, CliError};
use crate::db::{self, Table};
use crate::envelope::Keyring;
use crate::rotate::events::{EventSink, FanOut};
use crate::rotate::{inplace, reprovision, run, Outcome};

/// The top-level entry point for `rekey run`.
pub async fn run(global: &Global, args: &RunArgs) -> Result<Outcome, CliError> {
    let mut opts = config::run_options(args)?;
    let keyring = Arc::new(config::keyring(global)?);
    let access = config::cloud_access(global)?;
    let (auto_cap, connections) = config::run_connections(args);
    let (pool, table) = open_table(global, connections).await?;
    db::migrate(&pool).await?;
    if let Some(cap) = auto_cap {
        let tuning = inplace::auto_tune(&pool, cap)
            .await
            .map_err(db::DbError::from)?;
        opts.workers = tuning.workers;
        opts.batch_size = tuning.batch_size;
        if global.json || !global.quiet {
            report::workers_chosen(&tuning, global.json);
        }
    }
    let style = Style::detect(global.json, global.quiet);
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![Arc::from(style.sink())];
    let metrics = match &args.metrics_file {
        Some(path) => Some(Arc::new(MetricsFile::create(path)?)),
        None => None,
    };
    if let Some(m) = &metrics {
        sinks.push(Arc::clone(m) as Arc<dyn EventSink>);
    }
    let sink: Arc<dyn EventSink> = Arc::new(FanOut(sinks));
    let engine = Engine {
        pool,
        table,
        keyring,
        access,
    };
    let report = match engine.run(args, &opts, &sink).await {
        Ok(report) => report,
        Err(e) => {
            if let Some(m) = &metrics {
                m.fail();
            }
            return Err(e);
        }
    };
    if let Some(m) = &metrics {
        m.finish(&report);
    }
    drop(sink);
    if global.json {
        report::print_json(&serde_json::json!({"event": "summary", "report": report}));
    } else {
        report::print(&report::run_text(&report));
    }
    Ok(report.outcome)
}

/// What the run needs once the command line is checked.
struct Engine {
    pool: PgPool,
    table: Table,
    keyring: Arc<Keyring>,
    access: Option<reprovision::CloudAccess>,
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
        let stop = Arc::new(AtomicBool::new(false));
        watch_signals(Arc::clone(&stop));
        let ctx = run::RunContext {
            pool: self.pool,
            table: self.table,
            keyring: self.keyring,
            sink: Arc::clone(sink),
            reprovisioner,
            stop,
        };
        Ok(run::run(&ctx, opts).await?)
    }
}

/// The first ctrl-c lets the work in flight finish (in-place batches
/// commit, tenants mid-way complete their step); that can take a while
/// when the cloud is slow or gone, so a second one stops at once. Both
/// are safe: the journal resumes a run killed at any instant.
fn watch_signals(stop: Arc<AtomicBool>) {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "rekey: interrupted; finishing the work in flight (the run stays open to resume); \
                 ctrl-c again to stop at once"
            );
            stop.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "rekey: interrupted again; stopping now (run the same command to resume)"
                );
                std::process::exit(130);
            }
        }
    });
}
