//! `rekey finalize`.

use crate::cli::args::{FinalizeArgs, Global};
use crate::cli::output::report;
use crate::cli::{config, CliError};
use crate::db::{self, journal, DbError};
use crate::rotate::Outcome;

/// The top-level entry point for `rekey finalize`: purges a verified run's
/// backups, after which the old ciphertexts are gone for good.
pub async fn finalize(global: &Global, args: &FinalizeArgs) -> Result<Outcome, CliError> {
    let pool = db::connect(config::database_url(global)?, 2).await?;
    if !db::journal_exists(&pool).await? {
        return Err(DbError::NoSuchRun(args.run).into());
    }
    let batches = journal::purge_backups(&pool, args.run).await?;
    if global.json {
        report::print_json(&serde_json::json!({"run": args.run, "backup_batches_purged": batches}));
    } else {
        report::print(&format!(
            "run {}: purged {batches} backup batches; the old ciphertexts are gone\n",
            args.run
        ));
    }
    Ok(Outcome::Done)
}
