//! `rekey verify`.

use std::sync::Arc;

use super::open_table;
use crate::cli::args::{Global, VerifyArgs};
use crate::cli::output::report;
use crate::cli::{config, CliError};
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
    let ok = report.ok
        && connect
            .as_ref()
            .is_none_or(connect::ConnectReport::all_reachable);
    if global.json {
        let mut json = serde_json::json!({"verify": report, "connect": connect, "ok": ok});
        if args.all_failures {
            json["verify"]["failing"] = serde_json::json!(report.failing_all);
        }
        report::print_json(&json);
    } else {
        report::print(&report::verify_text(&report, args.all_failures));
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
