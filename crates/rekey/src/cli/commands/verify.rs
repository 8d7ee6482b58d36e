//! `rekey verify`.

use std::sync::Arc;

use sqlx::PgPool;

use super::open_table;
use crate::cli::args::{Global, VerifyArgs};
use crate::cli::output::report;
use crate::cli::{config, CliError};
use crate::db::{self, journal};
use crate::envelope::Keyring;
use crate::rotate::{connect, verify, Outcome};

/// The top-level entry point for `rekey verify`.
pub async fn verify(global: &Global, args: &VerifyArgs) -> Result<Outcome, CliError> {
    let keyring = Arc::new(config::keyring(global)?);
    let (pool, table) = open_table(global, 4).await?;
    let report = verify::verify(&pool, &table, &keyring).await?;
    let connect = if args.connect {
        let opts = config::connect_options(args);
        Some(connect::check_fleet(&pool, &table, &keyring, &opts).await?)
    } else {
        None
    };
    let unmarked = unmarked_run(&pool, &report, &keyring).await?;
    let ok = report.ok
        && connect
            .as_ref()
            .is_none_or(connect::ConnectReport::all_reachable);
    if global.json {
        let mut json = serde_json::json!({
            "verify": report, "connect": connect, "ok": ok, "not_recorded": unmarked,
        });
        if args.all_failures {
            json["verify"]["failing"] = serde_json::json!(report.failing_all);
        }
        report::print_json(&json);
    } else {
        report::print(&report::verify_text(&report, args.all_failures));
        if let Some(note) = &unmarked {
            report::print(&format!("{note}\n"));
        }
        if let Some(c) = &connect {
            report::print(&c.text());
        }
    }
    Ok(if ok {
        Outcome::Done
    } else {
        Outcome::Incomplete
    })
}

/// Why a verify that passed recorded no run, when the new key has one: the
/// operator is about to run `finalize` and must hear that it will refuse.
async fn unmarked_run(
    pool: &PgPool,
    report: &verify::VerifyReport,
    keyring: &Keyring,
) -> Result<Option<String>, CliError> {
    if !report.ok || report.verified_run.is_some() || !db::journal_exists(pool).await? {
        return Ok(None);
    }
    Ok(journal::run_of_key(pool, keyring.new_key_id())
        .await?
        .map(|run| {
            format!(
                "run {} of new key {} is {}, so it is not recorded as verified; \
                 next: run the same `rekey run` again until it finishes, then verify again",
                run.id, run.new_key_id, run.state
            )
        }))
}
