//! `rekey status`.

use crate::cli::args::{Global, StatusArgs};
use crate::cli::output::report;
use crate::cli::{config, CliError};
use crate::db::{self, journal, DbError};
use crate::rotate::Outcome;

/// The top-level entry point for `rekey status` (and its ledger,
/// `--tenants`). Read-only.
pub async fn status(global: &Global, args: &StatusArgs) -> Result<Outcome, CliError> {
    let pool = db::connect(config::database_url(global)?, 2).await?;
    if !db::journal_exists(&pool).await? {
        return Err(DbError::NoRuns.into());
    }
    let run = journal::get_run(&pool, args.run).await?;
    if args.tenants {
        let ledger = journal::ledger(&pool, run.id).await?;
        if args.csv {
            report::print(&report::ledger_csv(&ledger));
        } else if global.json {
            report::print_json(&serde_json::json!({"run_id": run.id, "tenants": ledger}));
        } else {
            report::print(&report::ledger_text(run.id, &ledger));
        }
        return Ok(Outcome::Done);
    }
    let counts = journal::run_counts(&pool, run.id).await?;
    let failed = journal::failed_items(&pool, run.id, 50).await?;
    let rollback = journal::rollback_marks(&pool, run.id).await?;
    let cleanup_owed_all = journal::cleanup_pending_count(&pool).await?;
    let status = report::StatusReport {
        run,
        counts,
        cleanup_owed_all,
        failed,
        rollback,
    };
    if global.json {
        report::print_json(&status);
    } else {
        report::print(&report::status_text(&status));
    }
    Ok(Outcome::Done)
}
