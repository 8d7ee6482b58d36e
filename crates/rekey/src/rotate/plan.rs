//! `rekey plan`: a read-only look at what a run would do. Plan never
//! writes, not even the journal: it reads the journal only when the tool's
//! schema already exists. Its in-place estimate comes from what it measures
//! on the way: the round trip, its own full read of the table, the table's
//! size (the model itself is in `inplace_estimate`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

use super::batch::{ActionCounts, FieldCounts};
use super::gate::gate_trips;
use super::inplace::auto_tune;
use super::inplace_estimate::{self as estimate, InPlaceEstimate, Measured, WorkerPlan, WriteRate};
use super::scan::{scan_counts, ScanResult};
use super::RunError;
use crate::db::journal::{self, RunRecord};
use crate::db::org_instances::RowFilter;
use crate::db::{Bounded, Table};
use crate::envelope::{Keyring, Mode};

/// What `plan` found and advises.
#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub table: String,
    pub mode: Mode,
    pub rows: u64,
    pub actions: ActionCounts,
    pub fields: FieldCounts,
    pub kms_rows: u64,
    pub new_key_id: String,
    pub old_key_id: Option<String>,
    pub open_run: Option<RunRecord>,
    pub estimate: Estimate,
    pub warnings: Vec<String>,
    /// The command to run next, with the operator's own flags: pasted in
    /// the same shell, it acts on the same table with the same keys.
    pub next_command: String,
    /// Environment variables `next_command` relies on, as set now.
    pub next_command_env: Vec<String>,
}

/// Projected wall time, with what it assumes and what it measured.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub in_place_secs: f64,
    pub reprovision_secs: f64,
    pub total_secs: f64,
    /// Both of the next two, in one line.
    pub assumptions: String,
    /// What the in-place figure measured and what it assumed.
    pub in_place_assumptions: String,
    /// What bounds the re-provisioning figure.
    pub reprovision_assumptions: String,
    /// What plan measured on the database.
    pub measured: Measurement,
    /// The model's in-place projection, its parts and the server's write
    /// rate it took (`in_place_secs` is its `secs`, unless
    /// `--in-place-rate` replaced it).
    pub model: InPlaceEstimate,
    /// `--in-place-rate`, when given: it replaces the model's result.
    pub in_place_rate: Option<f64>,
}

/// The figures plan measured on the target database.
#[derive(Debug, Clone, Serialize)]
pub struct Measurement {
    /// The median of five `SELECT 1` round trips, as `--workers auto` measures it.
    pub rtt_ms: f64,
    /// Connections the server would still accept.
    pub free_connections: i64,
    /// Plan's full read of the table (one streamed scan, every row classified).
    pub read_secs: f64,
    pub rows: u64,
    /// `pg_total_relation_size` of the table (indexes and TOAST included);
    /// `None` when the server would not say.
    pub table_bytes: Option<i64>,
}

/// Inputs to the estimate.
#[derive(Debug, Clone)]
pub struct EstimateInputs {
    /// `--in-place-rate`: rows per second that replace the model's result.
    pub in_place_rate: Option<f64>,
    /// How the run would choose its workers and batch size.
    pub workers: WorkerPlan,
    /// `--max-connections`: the cap `--workers auto` would respect.
    pub max_connections: usize,
    /// The server's write rate: measured by fleet-bench, or assumed.
    pub server_rate: WriteRate,
    /// Tenants re-provisioned per second (from `reprovision::throughput_bound`).
    pub reprovision_rate: f64,
    pub reprovision_note: String,
}

/// What the caller knows about how the tool was invoked, for the advice:
/// the flags to repeat in the next command (already quoted for a shell,
/// free of secrets), the variables those rely on, and the re-provisioning
/// variables not set.
#[derive(Debug, Clone, Default)]
pub struct Invocation {
    /// Keys, database and table: what both `run` and `verify` take.
    pub repeat_flags: Vec<String>,
    /// Re-provisioning knobs the estimate assumed: only `run` takes them.
    pub run_flags: Vec<String>,
    pub env_in_use: Vec<String>,
    pub missing_cloud_vars: Vec<String>,
    /// The database URL came as --database-url and holds a password, which
    /// the next command does not repeat.
    pub database_url_withheld: bool,
}

/// The top-level entry point for the `plan` computation.
pub async fn plan(
    pool: &PgPool,
    table: &Table,
    keyring: &Arc<Keyring>,
    mode: Mode,
    inputs: &EstimateInputs,
    invocation: &Invocation,
) -> Result<PlanReport, RunError> {
    let reading = read_and_measure(pool, table, keyring, mode, inputs.workers).await?;
    let open_run = if crate::db::journal_exists(pool).await? {
        journal::open_run(pool).await?
    } else {
        None
    };
    let actions = reading.result.actions;
    let (estimate, faster) = estimate(inputs, mode, &reading);
    let gate = mode == Mode::Auto
        && keyring.old_key_id().is_some()
        && gate_trips(actions.reencrypt, actions.reprovision);
    let mut report = PlanReport {
        table: table.display.clone(),
        mode,
        rows: actions.total(),
        actions,
        fields: reading.result.fields,
        kms_rows: reading.result.kms_rows,
        new_key_id: keyring.new_key_id().0.clone(),
        old_key_id: keyring.old_key_id().map(|k| k.0.clone()),
        open_run,
        estimate,
        warnings: Vec::new(),
        next_command: String::new(),
        next_command_env: invocation.env_in_use.clone(),
    };
    report.warnings = warnings(&report, gate);
    report.warnings.extend(faster);
    if let Some(w) = cloud_warning(&report, &invocation.missing_cloud_vars) {
        report.warnings.push(w);
    }
    if invocation.database_url_withheld {
        report.warnings.push(
            "the --database-url given holds a password, which the next command below leaves out: \
             export it as DATABASE_URL (keeps it out of `ps` too) or pass --database-url again"
                .into(),
        );
    }
    report.next_command = next_command(&report, gate, invocation);
    Ok(report)
}

/// What plan read: the table's counts, and the figures the estimate needs.
struct Reading {
    result: ScanResult,
    measured: Measured,
    measurement: Measurement,
}

/// Counts the table's rows by class, measuring on the way, read-only: the
/// round trip and free connections first (as `--workers auto` does), then
/// the full read itself, timed, then the table's size.
async fn read_and_measure(
    pool: &PgPool,
    table: &Table,
    keyring: &Arc<Keyring>,
    mode: Mode,
    workers: WorkerPlan,
) -> Result<Reading, RunError> {
    let tuning = auto_tune(pool, max_connections(workers)).await?;
    let started = Instant::now();
    let result = scan_counts(pool, table, keyring, mode, &RowFilter::default()).await?;
    let read = started.elapsed();
    let table_bytes = table_bytes(pool, table).await;
    let journal_current = crate::db::journal_is_current(pool).await;
    let rows = result.actions.total();
    Ok(Reading {
        measured: Measured {
            rtt: Duration::from_secs_f64(tuning.rtt_ms / 1e3),
            free_connections: tuning.free_connections,
            rows,
            writes: in_place_writes(&result.actions, mode),
            read,
            journal_current,
        },
        measurement: Measurement {
            rtt_ms: tuning.rtt_ms,
            free_connections: tuning.free_connections,
            read_secs: read.as_secs_f64(),
            rows,
            table_bytes,
        },
        result,
    })
}

/// The estimate from what was read, and a warning when `--workers auto`
/// would be much quicker than the workers given.
fn estimate(inputs: &EstimateInputs, mode: Mode, reading: &Reading) -> (Estimate, Option<String>) {
    let actions = &reading.result.actions;
    let model = estimate::in_place(mode, inputs.workers, &inputs.server_rate, &reading.measured);
    let in_place_secs = match inputs.in_place_rate {
        Some(rate) => actions.reencrypt as f64 / rate.max(1.0),
        None => model.secs,
    };
    let reprovision_secs = actions.reprovision as f64 / inputs.reprovision_rate.max(1e-9);
    let faster = faster_with_auto(mode, inputs, &reading.measured, &model);
    let in_place_note = in_place_assumptions(inputs, &reading.measurement, &model);
    let estimate = Estimate {
        in_place_secs,
        reprovision_secs,
        // The two paths run concurrently; the slower one bounds the run.
        total_secs: in_place_secs.max(reprovision_secs),
        assumptions: format!("in place: {in_place_note}; {}", inputs.reprovision_note),
        in_place_assumptions: in_place_note,
        reprovision_assumptions: inputs.reprovision_note.clone(),
        measured: reading.measurement.clone(),
        model,
        in_place_rate: inputs.in_place_rate,
    };
    (estimate, faster)
}

/// The connections `auto_tune` may count on: the cap `--workers auto`
/// respects, or the fixed workers (whose choice it does not change).
fn max_connections(workers: WorkerPlan) -> usize {
    match workers {
        WorkerPlan::Auto { max_connections } => max_connections,
        WorkerPlan::Fixed { workers, .. } => workers,
    }
}

/// Rows a pass writes: those it re-encrypts, and in a mode that
/// re-provisions, those it queues (the same statement).
fn in_place_writes(actions: &ActionCounts, mode: Mode) -> u64 {
    match mode {
        Mode::Reencrypt => actions.reencrypt,
        Mode::Auto | Mode::Reprovision => actions.reencrypt + actions.reprovision,
    }
}

/// `pg_total_relation_size` of the table; a server that will not say
/// (a permission, a view) leaves the size out of the report rather than
/// failing the plan.
async fn table_bytes(pool: &PgPool, table: &Table) -> Option<i64> {
    let size = sqlx::query_scalar("SELECT pg_total_relation_size($1::regclass)")
        .bind(&table.name)
        .fetch_one(pool)
        .bounded()
        .await;
    match size {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            tracing::debug!("table size unknown: {}", crate::db::short_db_error(&e));
            None
        }
    }
}

/// What the in-place estimate measured and what it assumed.
fn in_place_assumptions(
    inputs: &EstimateInputs,
    m: &Measurement,
    model: &InPlaceEstimate,
) -> String {
    let chosen = match model.chosen_by {
        "auto" => "as `--workers auto` would choose",
        _ => "as given",
    };
    let rate = &model.server;
    let server = if rate.measured() {
        format!(
            "server write rate {:.0}k rows/s {}",
            rate.rows_per_sec / 1e3,
            rate.source
        )
    } else {
        format!(
            "server write rate {:.0}k rows/s assumed from the read (no --bench-file)",
            rate.rows_per_sec / 1e3
        )
    };
    let size = m
        .table_bytes
        .map(|b| format!(" ({:.1} MiB)", b as f64 / (1024.0 * 1024.0)))
        .unwrap_or_default();
    let measured = format!(
        "round trip {:.1} ms measured; {} workers x {} rows {chosen}; \
         full read of {} rows{size} {:.2} s measured ({} in the run); {server}; \
         {} round trips of fixed work{}",
        m.rtt_ms,
        model.workers,
        model.batch_size,
        m.rows,
        m.read_secs,
        model.reads,
        model.fixed_round_trips,
        if model.fixed_round_trips > estimate::FIXED_ROUND_TRIPS {
            " (the journal is created or migrated first)"
        } else {
            ""
        },
    );
    match inputs.in_place_rate {
        Some(r) => format!(
            "{r:.0} rows/s as --in-place-rate says (from measurements: {:.1} s; {measured})",
            model.secs
        ),
        None => measured,
    }
}

/// A warning when fixed workers are much slower at the measured round trip
/// than `--workers auto` would be: across a network the default four
/// workers of 1,000 rows spend most of their time waiting.
fn faster_with_auto(
    mode: Mode,
    inputs: &EstimateInputs,
    measured: &Measured,
    model: &InPlaceEstimate,
) -> Option<String> {
    let WorkerPlan::Fixed { .. } = inputs.workers else {
        return None;
    };
    let auto = estimate::in_place(
        mode,
        WorkerPlan::Auto {
            max_connections: inputs.max_connections,
        },
        &inputs.server_rate,
        measured,
    );
    // Worth saying only when it saves a quarter and a second or more.
    (auto.secs < model.secs * 0.75 && model.secs - auto.secs >= 1.0).then(|| {
        format!(
            "at the {:.1} ms round trip measured, `--workers auto` ({} workers x {} rows) would take \
             about {:.1} s in place instead of {:.1} s: pass it to plan and run",
            measured.rtt.as_secs_f64() * 1e3,
            auto.workers,
            auto.batch_size,
            auto.secs,
            model.secs
        )
    })
}

fn warnings(p: &PlanReport, gate: bool) -> Vec<String> {
    let mut out = Vec::new();
    let a = &p.actions;
    if a.reencrypt > 0 && p.mode != Mode::Reprovision {
        out.push(format!(
            "in-place re-encryption keeps the credentials of {} tenants: if the ciphertexts may have \
             leaked together with the key (a dump, a backup, a replica), those passwords are known to the \
             attacker and re-encrypting them does not make them secret again; use --mode reprovision",
            a.reencrypt
        ));
    }
    if gate {
        out.push(format!(
            "the old key (id {}) opens only {} of {} rows that need work: the likeliest cause is a wrong old \
             key, not {} broken rows; `rekey run` will refuse to re-provision them without \
             --confirm-reprovision {}",
            p.old_key_id.as_deref().unwrap_or("-"),
            a.reencrypt,
            a.reencrypt + a.reprovision,
            a.reprovision,
            a.reprovision
        ));
    }
    if p.old_key_id.is_none() && a.reprovision > 0 {
        out.push(format!(
            "no old key given: all {} tenants not yet under the new key will be re-provisioned \
             (new Neon branch and Fly machine each), the runbook's own path",
            a.reprovision
        ));
    }
    if p.mode == Mode::Reencrypt && a.reprovision > 0 {
        out.push(format!(
            "{} rows open under neither key; --mode reencrypt leaves them as they are and reports them",
            a.reprovision
        ));
    }
    if p.kms_rows > 0 {
        out.push(format!(
            "{} rows hold KMS envelope (v2) blobs: they are not under SECRETS_ENCRYPTION_KEY and are left untouched",
            p.kms_rows
        ));
    }
    if let Some(open) = &p.open_run {
        if open.new_key_id != p.new_key_id {
            out.push(format!(
                "run {} is open with another new key (id {}): `rekey run` with this key will be refused; \
                 resume that run with its key",
                open.id, open.new_key_id
            ));
        } else {
            out.push(format!(
                "run {} is open with this new key: `rekey run` resumes it",
                open.id
            ));
        }
    }
    out
}

/// Tenants this mode re-provisions need all three cloud variables; `rekey
/// run` refuses them otherwise, so say so before the outage window opens.
fn cloud_warning(p: &PlanReport, missing: &[String]) -> Option<String> {
    let tenants = p.actions.reprovision;
    if tenants == 0 || p.mode == Mode::Reencrypt || missing.is_empty() {
        return None;
    }
    Some(format!(
        "{tenants} tenants need re-provisioning, which needs NEON_API_KEY, FLY_API_TOKEN and \
         TENANT_REDIS_URL; not set: {}. `rekey run` will refuse them until all three are exported",
        missing.join(", ")
    ))
}

fn next_command(p: &PlanReport, gate: bool, invocation: &Invocation) -> String {
    let a = &p.actions;
    let mut words: Vec<String> = if a.reencrypt == 0 && a.reprovision == 0 {
        vec!["rekey".into(), "verify".into()]
    } else {
        let mut run = vec![
            "rekey".into(),
            "run".into(),
            "--mode".into(),
            p.mode.as_str().into(),
        ];
        if gate {
            run.extend(["--confirm-reprovision".into(), a.reprovision.to_string()]);
        }
        run.extend(invocation.run_flags.iter().cloned());
        run
    };
    words.extend(invocation.repeat_flags.iter().cloned());
    words.join(" ")
}
