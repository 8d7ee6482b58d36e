//! `--metrics-file`: the run's counters in the Prometheus text exposition
//! format, for node_exporter's textfile collector or any dashboard that
//! reads it. docs/metrics.md lists every series with its type, labels and
//! unit.
//!
//! Counters, not rates: Prometheus computes rates (`rate(...[1m])`) better
//! than a process can, and a counter survives a missed scrape. The file is
//! rewritten at most once a second while events arrive and at least every
//! [`HEARTBEAT`] while the process lives (write to a temporary file, then
//! rename, so a scraper never reads half a file): a
//! `rekey_last_update_time_seconds` much older than that means the process
//! is gone.
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
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::totals::Totals;
use crate::cli::CliError;
use crate::cloud::http::Counters;
use crate::rotate::events::{Event, EventSink};
use crate::rotate::reprovision::Step;
use crate::rotate::run::RunReport;

/// The longest the file goes unrewritten while the process lives.
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// Upper bounds of the batch-duration histogram's buckets, in seconds: a
/// batch of 1,000 rows takes tens of milliseconds on a nearby database and
/// seconds across a slow link or behind a lock.
const BATCH_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Counts of observations per bucket, their sum and their number.
#[derive(Debug, Default, Clone)]
struct Histogram {
    /// Observations at or below each bound of [`BATCH_BUCKETS`] (not cumulative).
    buckets: [u64; BATCH_BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, value: f64) {
        if let Some(i) = BATCH_BUCKETS.iter().position(|bound| value <= *bound) {
            self.buckets[i] += 1;
        }
        self.sum += value;
        self.count += 1;
    }
}

/// The run's identity, once the engine has opened or joined it.
#[derive(Debug, Clone)]
struct RunInfo {
    id: i64,
    mode: String,
    new_key_id: String,
}

/// What the file shows, kept from engine events.
#[derive(Debug, Default, Clone)]
struct State {
    totals: Totals,
    run: Option<RunInfo>,
    batch_seconds: Histogram,
    /// How the invocation ended, once it has.
    finished: Option<String>,
    last_write: Option<Instant>,
}

/// The cloud clients' live request counters, by API name.
type CloudCounters = [(&'static str, Arc<Counters>); 2];

/// A metrics file kept up to date from engine events.
pub struct MetricsFile {
    path: PathBuf,
    started_at: SystemTime,
    state: Mutex<State>,
    cloud: OnceLock<CloudCounters>,
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
            started_at: SystemTime::now(),
            state: Mutex::new(State::default()),
            cloud: OnceLock::new(),
        };
        m.write(&State::default())?;
        Ok(m)
    }

    /// Counts the re-provisioner's cloud requests too, from now on.
    pub fn count_cloud(&self, neon: Arc<Counters>, fly: Arc<Counters>) {
        let _ = self.cloud.set([("neon", neon), ("fly", fly)]);
    }

    /// Rewrites the file every [`HEARTBEAT`] until the invocation ends (or
    /// the file is dropped), so that its last-update time shows the process
    /// is alive while no event arrives (a long lock wait, a slow cloud).
    pub fn keep_fresh(self: &Arc<Self>) {
        let file: Weak<MetricsFile> = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let Some(file) = file.upgrade() else { return };
                let state = file.lock().clone();
                if state.finished.is_some() {
                    return;
                }
                file.write_or_warn(&state);
            }
        });
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
        let mut guard = self.lock();
        guard.finished = Some(state.to_owned());
        let state = guard.clone();
        // Written under the lock: no heartbeat or event can overwrite the end.
        self.write_or_warn(&state);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_or_warn(&self, state: &State) {
        if let Err(e) = self.write(state) {
            eprintln!("warning: metrics file: {e}");
        }
    }

    fn write(&self, state: &State) -> Result<(), CliError> {
        let text = render(
            state,
            self.cloud.get(),
            self.started_at,
            SystemTime::now(),
            Instant::now(),
        );
        let tmp = self.path.with_extension("prom.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| CliError::io(format!("writing metrics file {}", self.path.display()), e))
    }
}

impl EventSink for MetricsFile {
    fn emit(&self, event: &Event) {
        let now = Instant::now();
        let mut guard = self.lock();
        if guard.finished.is_some() {
            return;
        }
        guard.totals.absorb(event, now);
        match event {
            Event::RunStarted {
                run_id,
                mode,
                new_key_id,
                ..
            } => {
                guard.run = Some(RunInfo {
                    id: *run_id,
                    mode: mode.clone(),
                    new_key_id: new_key_id.clone(),
                });
            }
            Event::Batch(b) => guard.batch_seconds.observe(b.latency.as_secs_f64()),
            _ => {}
        }
        if guard
            .last_write
            .is_some_and(|l| now.duration_since(l) < Duration::from_secs(1))
        {
            return;
        }
        guard.last_write = Some(now);
        let state = guard.clone();
        drop(guard);
        self.write_or_warn(&state);
    }
}

/// The state `rekey_run_state` shows when the command ended in an error.
const ERROR_STATE: &str = "error";

/// Every value `rekey_run_state` can take, so each is always present (a
/// series that disappears reads as "no data", not as 0).
const STATES: [&str; 4] = ["running", "finished", "failed", ERROR_STATE];

/// The exposition text, family by family.
#[derive(Default)]
struct Text(String);

impl Text {
    /// Opens a family: its HELP and TYPE lines.
    fn family(&mut self, name: &str, kind: &str, help: &str) -> &mut Text {
        let _ = writeln!(self.0, "# HELP {name} {help}");
        let _ = writeln!(self.0, "# TYPE {name} {kind}");
        self
    }

    /// One sample of the family just opened (`name` may carry a suffix,
    /// such as a histogram's `_bucket`).
    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Text {
        self.0.push_str(name);
        if !labels.is_empty() {
            let pairs: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.0, "{{{}}}", pairs.join(","));
        }
        let _ = writeln!(self.0, " {value}");
        self
    }

    /// A family whose samples differ in one label, a sample per value.
    fn by_label(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        label: &str,
        samples: &[(&str, u64)],
    ) -> &mut Text {
        self.family(name, kind, help);
        for (value, n) in samples {
            self.sample(name, &[(label, value)], *n as f64);
        }
        self
    }

    /// A family of one unlabelled sample.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: f64) -> &mut Text {
        self.family(name, kind, help).sample(name, &[], value)
    }
}

/// A label value as the exposition format quotes it.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Seconds since the Unix epoch, as Prometheus timestamps are.
fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn render(
    state: &State,
    cloud: Option<&CloudCounters>,
    started_at: SystemTime,
    wall: SystemTime,
    now: Instant,
) -> String {
    let t = &state.totals;
    let mut out = Text::default();
    out.family(
        "rekey_build_info",
        "gauge",
        "The binary that writes this file; always 1.",
    )
    .sample(
        "rekey_build_info",
        &[
            ("version", env!("CARGO_PKG_VERSION")),
            ("commit", env!("REKEY_GIT_COMMIT")),
        ],
        1.0,
    );
    out.single(
        "rekey_start_time_seconds",
        "gauge",
        "When this invocation started, in seconds since the Unix epoch.",
        unix_seconds(started_at),
    );
    out.single(
        "rekey_last_update_time_seconds",
        "gauge",
        "When this file was last written, in seconds since the Unix epoch.",
        unix_seconds(wall),
    );
    out.family(
        "rekey_run_info",
        "gauge",
        "The run this invocation works on, once it is known; always 1.",
    );
    if let Some(run) = &state.run {
        out.sample(
            "rekey_run_info",
            &[
                ("run", &run.id.to_string()),
                ("mode", &run.mode),
                ("new_key_id", &run.new_key_id),
            ],
            1.0,
        );
    }
    out.by_label(
        "rekey_rows_total",
        "counter",
        "Rows handled by in-place batches, by action.",
        "action",
        &[
            ("reencrypt", t.reencrypted),
            ("skip", t.skipped),
            ("reprovision_queued", t.queued),
            ("left", t.left),
        ],
    );
    out.single(
        "rekey_rows_walked_total",
        "counter",
        "Rows claimed by in-place workers.",
        t.rows as f64,
    );
    out.single(
        "rekey_rows_to_walk",
        "gauge",
        "Rows the walk covers: the first pass's and every re-walk's.",
        t.total_rows as f64,
    );
    out.single(
        "rekey_rows_eta_seconds",
        "gauge",
        "Seconds until the walk ends at the recent rate; 0 while no pass walks.",
        t.rows_eta(now).unwrap_or(0.0),
    );
    out.single(
        "rekey_batches_total",
        "counter",
        "In-place batches committed.",
        t.batches as f64,
    );
    let h = &state.batch_seconds;
    out.family(
        "rekey_batch_duration_seconds",
        "histogram",
        "Wall time of an in-place batch, read to commit.",
    );
    let mut cumulative = 0;
    for (bound, n) in BATCH_BUCKETS.iter().zip(h.buckets) {
        cumulative += n;
        out.sample(
            "rekey_batch_duration_seconds_bucket",
            &[("le", &bound.to_string())],
            cumulative as f64,
        );
    }
    out.sample(
        "rekey_batch_duration_seconds_bucket",
        &[("le", "+Inf")],
        h.count as f64,
    )
    .sample("rekey_batch_duration_seconds_sum", &[], h.sum)
    .sample("rekey_batch_duration_seconds_count", &[], h.count as f64);
    out.single(
        "rekey_conflicts_total",
        "counter",
        "Rows changed under the run (re-read, never overwritten).",
        t.conflicts as f64,
    );
    out.by_label(
        "rekey_tenants_total",
        "counter",
        "Tenants this invocation re-provisioned or gave up, by outcome.",
        "outcome",
        &[("done", t.tenants_done), ("given_up", t.tenants_given_up)],
    );
    out.single(
        "rekey_tenants_pending",
        "gauge",
        "Tenants of the run neither re-provisioned nor given up (queued, in flight, in clean-up).",
        t.tenants_pending() as f64,
    );
    let in_flight = t.in_flight_by_step();
    let at_step: Vec<(&str, u64)> = Step::ALL
        .into_iter()
        .filter(|s| *s != Step::Done)
        .map(|step| {
            let n = in_flight
                .iter()
                .find(|(s, _)| *s == step)
                .map_or(0, |(_, n)| *n);
            (step.as_str(), n)
        })
        .collect();
    out.by_label(
        "rekey_tenants_in_flight",
        "gauge",
        "Tenants being re-provisioned right now, by the step they are at.",
        "step",
        &at_step,
    );
    out.single(
        "rekey_tenants_eta_seconds",
        "gauge",
        "Seconds until every pending tenant is settled at the recent rate; 0 when unknown or none.",
        t.tenants_eta(now).unwrap_or(0.0),
    );
    out.by_label(
        "rekey_errors_total",
        "counter",
        "Errors by class.",
        "class",
        &[
            ("tenant_step_retry", t.tenant_retries),
            ("tenant_given_up", t.tenants_given_up),
            ("row_left", t.left),
        ],
    );
    out.family(
        "rekey_cloud_requests_total",
        "counter",
        "Cloud API attempts by API and answer: the HTTP status, or network_error when none came.",
    );
    for api in ["neon", "fly"] {
        let counters = cloud
            .into_iter()
            .flatten()
            .find(|(name, _)| *name == api)
            .map(|(_, c)| c);
        for (code, n) in counters.map(|c| c.by_status()).unwrap_or_default() {
            out.sample(
                "rekey_cloud_requests_total",
                &[("api", api), ("status", &code.to_string())],
                n as f64,
            );
        }
        // Always there, so each API has a series from the start.
        out.sample(
            "rekey_cloud_requests_total",
            &[("api", api), ("status", "network_error")],
            counters.map_or(0, |c| c.snapshot().network_errors) as f64,
        );
    }
    out.single(
        "rekey_run_finished",
        "gauge",
        "1 once this invocation has ended.",
        if state.finished.is_some() { 1.0 } else { 0.0 },
    );
    let current = state.finished.as_deref().unwrap_or("running");
    let states: Vec<(&str, u64)> = STATES
        .iter()
        .map(|s| (*s, u64::from(*s == current)))
        .collect();
    out.by_label(
        "rekey_run_state",
        "gauge",
        "The run's state as this invocation last saw it (error: the command stopped with an error).",
        "state",
        &states,
    );
    out.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_the_tool_writes_carries_the_signature_it_recognises() {
        let now = SystemTime::now();
        let text = render(&State::default(), None, now, now, Instant::now());
        assert!(text.starts_with(SIGNATURE), "{text}");
    }
}
