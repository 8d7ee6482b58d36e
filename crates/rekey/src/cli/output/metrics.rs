//! `--metrics-file`: the run's counters in the Prometheus text exposition
//! format, rewritten while the run goes on (at most once a second, by
//! write-to-temporary-then-rename so a scraper never reads half a file),
//! for node_exporter's textfile collector or any dashboard that reads it.
//!
//! `rekey_run_finished` says whether this invocation has ended;
//! `rekey_run_state` says how: the run's state (`running` while it works,
//! or when it ends open to be resumed; `finished`; `failed`), or `error`
//! when the command stopped with an error (a refusal, a lost database)
//! before it had a report. A dashboard can alert on anything but
//! `finished` once `rekey_run_finished` is 1.
//!
//! The file is only ever replaced when it is one this tool wrote (it
//! begins with `# HELP rekey_`): a path mistyped onto a key file or any
//! other file is refused before the run changes anything.

use std::fmt::Write as _;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::cli::CliError;
use crate::rotate::events::{Event, EventSink, TenantOutcome};
use crate::rotate::run::RunReport;

#[derive(Debug, Default, Clone)]
struct Counters {
    run_id: i64,
    total_rows: u64,
    rows: u64,
    skipped: u64,
    reencrypted: u64,
    queued: u64,
    left: u64,
    conflicts: u64,
    tenants_done: u64,
    tenants_failed: u64,
    tenant_retries: u64,
    batches: u64,
    finished: Option<String>,
}

/// A metrics file kept up to date from engine events.
pub struct MetricsFile {
    path: PathBuf,
    started: Instant,
    state: Mutex<(Counters, Option<Instant>)>,
}

/// How a metrics file this tool wrote begins: the first family's HELP line
/// (every version has written `rekey_rows_total` first). A file at the path
/// that begins otherwise is someone else's and is never replaced.
const SIGNATURE: &str = "# HELP rekey_";

/// Refuses, before anything is written anywhere, a `--metrics-file` path
/// that would destroy something: one of the key files (a pasted path, a
/// tab-completion slip), or any existing file that is not a metrics file
/// this tool wrote. An empty file holds nothing to lose and is accepted.
pub fn check_path(path: &Path, key_files: &[&Path]) -> Result<(), CliError> {
    let same = |key: &Path| match (std::fs::canonicalize(path), std::fs::canonicalize(key)) {
        (Ok(a), Ok(b)) => a == b,
        _ => path == key,
    };
    if key_files.iter().any(|k| same(k)) {
        return Err(CliError::Refused(format!(
            "--metrics-file {} is a key file; the metrics would replace the key. \
             Name another file (e.g. /var/lib/node_exporter/rekey.prom)",
            path.display()
        )));
    }
    let first_line = match std::fs::File::open(path) {
        Ok(file) => {
            use std::io::BufRead as _;
            // At most a line's worth is read, and none of it is ever shown:
            // the file may hold a secret.
            let mut line = Vec::new();
            let mut reader = std::io::BufReader::new(file).take(256);
            reader.read_until(b'\n', &mut line).map_err(|e| {
                CliError::io(format!("reading --metrics-file {}", path.display()), e)
            })?;
            line
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(CliError::io(
                format!("opening --metrics-file {}", path.display()),
                e,
            ))
        }
    };
    if first_line.is_empty() || first_line.starts_with(SIGNATURE.as_bytes()) {
        return Ok(());
    }
    Err(CliError::Refused(format!(
        "--metrics-file {} already exists and is not a metrics file rekey wrote (those begin \
         with `{SIGNATURE}`); rekey replaces only its own. Name another file, or remove this \
         one if it is not needed",
        path.display()
    )))
}

impl MetricsFile {
    /// Creates the file at once, so a bad path fails before the run; call
    /// [`check_path`] first (before anything changes), it is checked again here.
    pub fn create(path: &Path, key_files: &[&Path]) -> Result<MetricsFile, CliError> {
        check_path(path, key_files)?;
        let m = MetricsFile {
            path: path.to_path_buf(),
            started: Instant::now(),
            state: Mutex::new((Counters::default(), None)),
        };
        m.write(&Counters::default())?;
        Ok(m)
    }

    /// Writes the final figures.
    pub fn finish(&self, report: &RunReport) {
        self.end(&report.state);
    }

    /// Marks the invocation ended by an error: without this the file would
    /// keep saying the run is under way, forever.
    pub fn fail(&self) {
        self.end(ERROR_STATE);
    }

    fn end(&self, state: &str) {
        if let Ok(mut guard) = self.state.lock() {
            guard.0.finished = Some(state.to_owned());
            let counters = guard.0.clone();
            if let Err(e) = self.write(&counters) {
                eprintln!("warning: metrics file: {e}");
            }
        }
    }

    fn write(&self, c: &Counters) -> Result<(), CliError> {
        let text = render(c, self.started.elapsed());
        let tmp = self.path.with_extension("prom.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| CliError::io(format!("writing metrics file {}", self.path.display()), e))
    }
}

impl EventSink for MetricsFile {
    fn emit(&self, event: &Event) {
        let Ok(mut guard) = self.state.lock() else {
            return;
        };
        let (c, last) = &mut *guard;
        match event {
            Event::RunStarted {
                run_id, total_rows, ..
            } => {
                c.run_id = *run_id;
                c.total_rows = *total_rows;
            }
            Event::Batch(b) => {
                c.batches += 1;
                c.rows += b.rows;
                c.skipped += b.skipped;
                c.reencrypted += b.reencrypted;
                c.queued += b.queued;
                c.left += b.left;
                c.conflicts += b.conflicts;
            }
            Event::Tenant { outcome, .. } => match outcome {
                TenantOutcome::Done => c.tenants_done += 1,
                TenantOutcome::GivenUp => c.tenants_failed += 1,
                TenantOutcome::Retrying => c.tenant_retries += 1,
                _ => {}
            },
            _ => {}
        }
        if last.is_some_and(|l| l.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        let counters = c.clone();
        drop(guard);
        if let Err(e) = self.write(&counters) {
            eprintln!("warning: metrics file: {e}");
        }
    }
}

/// The state `rekey_run_state` shows when the command ended in an error.
const ERROR_STATE: &str = "error";

/// Every value `rekey_run_state` can take, so each is always present (a
/// series that disappears reads as "no data", not as 0).
const STATES: [&str; 4] = ["running", "finished", "failed", ERROR_STATE];

fn render(c: &Counters, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = c.rows as f64 / secs;
    let eta = if rate > 0.0 {
        c.total_rows.saturating_sub(c.rows) as f64 / rate
    } else {
        0.0
    };
    let run = c.run_id;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, samples: &[(&str, f64)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let sep = if labels.is_empty() { "" } else { "," };
            let _ = writeln!(out, "{name}{{run=\"{run}\"{sep}{labels}}} {value}");
        }
    };
    metric(
        "rekey_rows_total",
        "counter",
        "Rows handled by in-place batches, by action.",
        &[
            ("action=\"reencrypt\"", c.reencrypted as f64),
            ("action=\"skip\"", c.skipped as f64),
            ("action=\"reprovision_queued\"", c.queued as f64),
            ("action=\"left\"", c.left as f64),
        ],
    );
    metric(
        "rekey_rows_walked_total",
        "counter",
        "Rows claimed by in-place workers.",
        &[("", c.rows as f64)],
    );
    metric(
        "rekey_rows_in_table",
        "gauge",
        "Rows the first pass walks.",
        &[("", c.total_rows as f64)],
    );
    metric(
        "rekey_batches_total",
        "counter",
        "In-place batches committed.",
        &[("", c.batches as f64)],
    );
    metric(
        "rekey_conflicts_total",
        "counter",
        "Rows changed under the run (re-read, never overwritten).",
        &[("", c.conflicts as f64)],
    );
    metric(
        "rekey_tenants_total",
        "counter",
        "Re-provisioned tenants, by outcome.",
        &[
            ("outcome=\"done\"", c.tenants_done as f64),
            ("outcome=\"given_up\"", c.tenants_failed as f64),
        ],
    );
    metric(
        "rekey_errors_total",
        "counter",
        "Errors by class.",
        &[
            ("class=\"tenant_step_retry\"", c.tenant_retries as f64),
            ("class=\"tenant_given_up\"", c.tenants_failed as f64),
            ("class=\"row_left\"", c.left as f64),
        ],
    );
    metric(
        "rekey_rows_per_second",
        "gauge",
        "In-place rows walked per second since start.",
        &[("", rate)],
    );
    metric(
        "rekey_eta_seconds",
        "gauge",
        "Projected seconds until the first pass ends.",
        &[("", eta)],
    );
    metric(
        "rekey_run_finished",
        "gauge",
        "1 once this invocation has ended.",
        &[("", if c.finished.is_some() { 1.0 } else { 0.0 })],
    );
    let state = c.finished.as_deref().unwrap_or("running");
    let states: Vec<(String, f64)> = STATES
        .iter()
        .map(|s| {
            (
                format!("state=\"{s}\""),
                if *s == state { 1.0 } else { 0.0 },
            )
        })
        .collect();
    let states: Vec<(&str, f64)> = states.iter().map(|(l, v)| (l.as_str(), *v)).collect();
    metric(
        "rekey_run_state",
        "gauge",
        "The run's state as this invocation last saw it (error: the command stopped with an error).",
        &states,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_tool_writes_carries_the_signature_it_recognises() {
        let text = render(&Counters::default(), Duration::from_secs(1));
        assert!(text.starts_with(SIGNATURE), "{text}");
    }
}
