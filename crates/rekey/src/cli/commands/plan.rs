//! `rekey plan`.

use std::sync::Arc;

use super::open_table;
use crate::cli::args::{Global, PlanArgs};
use crate::cli::output::report;
use crate::cli::{config, CliError};
use crate::rotate::{plan, reprovision, Outcome};

/// The top-level entry point for `rekey plan`. Read-only.
pub async fn plan(global: &Global, args: &PlanArgs) -> Result<Outcome, CliError> {
    let keyring = Arc::new(config::keyring(global)?);
    let (pool, table) = open_table(global, 4).await?;
    let bound = reprovision::throughput_bound(&config::cloud_limits(&args.provision));
    let inputs = plan::EstimateInputs {
        in_place_rate: args.in_place_rate,
        reprovision_rate: bound.tenants_per_sec,
        reprovision_note: bound.note,
    };
    let report = plan::plan(&pool, &table, &keyring, args.mode.into(), &inputs).await?;
    if global.json {
        report::print_json(&report);
    } else {
        report::print(&report::plan_text(&report));
    }
    Ok(Outcome::Done)
}
