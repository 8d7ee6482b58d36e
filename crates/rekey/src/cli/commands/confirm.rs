//! The question `rekey run` asks before it acts, when a person is at a
//! terminal: what will change (the database, the table, rows per action,
//! tenants to re-provision), then "type yes". As `terraform apply` does, and
//! for the same reason: a production database named by mistake is found
//! before anything is written. Never asked when stdin or stderr is not a
//! terminal (scripts, CI, systemd), under `--json`, or with `--yes`.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::sync::Arc;

use sqlx::PgPool;

use crate::cli::output::report;
use crate::cli::CliError;
use crate::db::org_instances::RowFilter;
use crate::db::Table;
use crate::envelope::{Keyring, Mode};
use crate::rotate::scan;

/// Whether the run asks first: a person at a terminal who did not say `--yes`.
pub fn wanted(yes: bool, json: bool) -> bool {
    !yes && !json && std::io::stdin().is_terminal() && std::io::stderr().is_terminal()
}

/// Shows what the run would change and asks; anything but `yes` refuses
/// (exit 2) with nothing changed.
pub async fn ask(
    pool: &PgPool,
    table: &Table,
    keyring: &Arc<Keyring>,
    mode: Mode,
    orgs: &[String],
    database: &str,
) -> Result<(), CliError> {
    eprintln!(
        "reading {} to show what the run would change...",
        table.display
    );
    let filter = RowFilter {
        ids: (!orgs.is_empty()).then(|| orgs.to_vec()),
        ..RowFilter::default()
    };
    let found = scan::scan_counts(pool, table, keyring, mode, &filter).await?;
    let question = report::confirm_text(&report::ConfirmFacts {
        database,
        table: &table.display,
        mode,
        new_key_id: &keyring.new_key_id().0,
        old_key_id: keyring.old_key_id().map(|k| k.0.as_str()),
        actions: &found.actions,
    });
    let mut stderr = std::io::stderr().lock();
    let _ = write!(stderr, "{question}");
    let _ = stderr.flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .map_err(|e| CliError::io("reading the answer".to_string(), e))?;
    if answer.trim() == "yes" {
        return Ok(());
    }
    Err(CliError::Refused(
        "not confirmed (the answer was not `yes`); nothing changed. Pass --yes to act without asking"
            .into(),
    ))
}
