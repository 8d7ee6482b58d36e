//! `rekey plan`: a read-only look at what a run would do. Plan never
//! writes, not even the journal: it reads the journal only when the tool's
//! schema already exists.

use std::sync::Arc;

use serde::Serialize;
use sqlx::PgPool;

use super::batch::{ActionCounts, FieldCounts};
use super::gate::gate_trips;
use super::scan::scan_counts;
use super::RunError;
use crate::db::journal::{self, RunRecord};
use crate::db::org_instances::RowFilter;
use crate::db::Table;
use crate::envelope::{Keyring, Mode};

/// In-place rows per second assumed by the estimate: a round figure below
/// what `rekey fleet-bench --rows 100000` measured end to end on the
/// reference 2-core machine (97k-107k rows/s at 4 workers; README,
/// "Performance"), since an outage estimate should not be optimistic.
/// Servers differ: measure yours and pass `--in-place-rate`.
pub const DEFAULT_IN_PLACE_RATE: f64 = 80_000.0;

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

/// Projected wall time, with what it assumes.
#[derive(Debug, Clone, Serialize)]
pub struct Estimate {
    pub in_place_secs: f64,
    pub reprovision_secs: f64,
    pub total_secs: f64,
    pub assumptions: String,
}

/// Inputs to the estimate.
#[derive(Debug, Clone)]
pub struct EstimateInputs {
    pub in_place_rate: f64,
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
    estimate: &EstimateInputs,
    invocation: &Invocation,
) -> Result<PlanReport, RunError> {
    let result = scan_counts(pool, table, keyring, mode, &RowFilter::default()).await?;
    let open_run = if crate::db::journal_exists(pool).await? {
        journal::open_run(pool).await?
    } else {
        None
    };
    let actions = result.actions;
    let in_place_secs = actions.reencrypt as f64 / estimate.in_place_rate.max(1.0);
    let reprovision_secs = actions.reprovision as f64 / estimate.reprovision_rate.max(1e-9);
    let gate = mode == Mode::Auto
        && keyring.old_key_id().is_some()
        && gate_trips(actions.reencrypt, actions.reprovision);
    let mut report = PlanReport {
        table: table.display.clone(),
        mode,
        rows: actions.total(),
        actions,
        fields: result.fields,
        kms_rows: result.kms_rows,
        new_key_id: keyring.new_key_id().0.clone(),
        old_key_id: keyring.old_key_id().map(|k| k.0.clone()),
        open_run,
        estimate: Estimate {
            in_place_secs,
            reprovision_secs,
            // The two paths run concurrently; the slower one bounds the run.
            total_secs: in_place_secs.max(reprovision_secs),
            assumptions: format!(
                "in place at {:.0} rows/s; {}",
                estimate.in_place_rate, estimate.reprovision_note
            ),
        },
        warnings: Vec::new(),
        next_command: String::new(),
        next_command_env: invocation.env_in_use.clone(),
    };
    report.warnings = warnings(&report, gate);
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
