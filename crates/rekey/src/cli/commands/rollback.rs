//! `rekey rollback`, and the text of its report.

use std::fmt::Write as _;
use std::sync::Arc;

use super::open_table;
use crate::cli::args::{Global, RollbackArgs};
use crate::cli::output::report;
use crate::cli::{config, CliError};
use crate::db::{self, DbError};
use crate::rotate::rollback::{self, RollbackContext, RollbackOptions, RollbackReport};
use crate::rotate::Outcome;

/// The top-level entry point for `rekey rollback`: puts back the
/// ciphertexts an in-place run replaced, where rows still hold what the
/// run wrote; 1 when some rows had to be left.
pub async fn rollback(global: &Global, args: &RollbackArgs) -> Result<Outcome, CliError> {
    if args.workers < 1 {
        return Err(CliError::Usage("--workers must be at least 1".into()));
    }
    let keyring = Arc::new(config::keyring(global)?);
    let (pool, table) = open_table(global, args.workers as u32 + 2).await?;
    if !db::journal_exists(&pool).await? {
        return Err(DbError::NoSuchRun(args.run).into());
    }
    let ctx = RollbackContext {
        pool,
        table,
        keyring,
    };
    let opts = RollbackOptions {
        run_id: args.run,
        dry_run: args.dry_run,
        force_open: args.force_open,
        workers: args.workers,
    };
    let report = rollback::rollback(&ctx, &opts).await?;
    if global.json {
        report::print_json(&serde_json::json!({"event": "summary", "report": report}));
    } else {
        report::print(&rollback_text(&report));
    }
    Ok(report.outcome)
}

/// The report as a person reads it.
fn rollback_text(r: &RollbackReport) -> String {
    let mut out = String::new();
    let what = if r.dry_run {
        "dry run, nothing written"
    } else if r.rolled_back {
        "rolled back"
    } else {
        "not complete"
    };
    let _ = writeln!(
        out,
        "rollback of run {} ({what}); run is {}\n  new key id {}, old key id {}",
        r.run_id,
        r.run_state,
        r.new_key_id,
        r.old_key_id.as_deref().unwrap_or("(none)")
    );
    let restored = if r.dry_run {
        "would restore"
    } else {
        "restored"
    };
    let rows = [
        ("rows re-encrypted by the run", r.rows_backed_up),
        (restored, r.restored),
        ("  of them earlier", r.restored_earlier),
        ("left: changed since the run", r.changed_total),
        ("left: re-provisioned", r.reprovisioned_total),
    ];
    for (name, n) in rows {
        let _ = writeln!(out, "  {name:<30} {n:>10}");
    }
    list(
        &mut out,
        "changed since the run (left as they are)",
        &r.changed,
        r.changed_total,
    );
    list(
        &mut out,
        "cannot be rolled back: re-provisioned (old credentials reset)",
        &r.reprovisioned,
        r.reprovisioned_total,
    );
    let next = if r.dry_run {
        format!("next: rekey rollback --run {} (the same keys)", r.run_id)
    } else {
        "next: the rows restored are sealed under the old key again: the control plane needs \
         the old key to read them (re-provisioned tenants stay under the new key)"
            .to_string()
    };
    let _ = writeln!(out, "{next}");
    out
}

fn list(out: &mut String, title: &str, ids: &[String], total: i64) {
    if ids.is_empty() {
        return;
    }
    let _ = writeln!(out, "  {title} (first {} of {total}):", ids.len());
    for id in ids {
        let _ = writeln!(out, "    {id}");
    }
}
