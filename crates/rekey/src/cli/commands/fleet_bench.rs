//! `rekey fleet-bench`.

use crate::bench;
use crate::cli::args::{BenchArgs, Global};
use crate::cli::output::{chart, report};
use crate::cli::{config, CliError};
use crate::rotate::Outcome;

/// The top-level entry point for `rekey fleet-bench`: measures the engine
/// on a scratch database, prints the figures and projections, and draws
/// the chart when asked.
pub async fn fleet_bench(global: &Global, args: &BenchArgs) -> Result<Outcome, CliError> {
    let opts = config::bench_options(global, args)?;
    let bench = bench::fleet_bench(&opts).await?;
    if let Some(path) = &args.chart {
        chart::write_chart(path, &bench)?;
        if !global.quiet {
            eprintln!("fleet-bench: chart written to {}", path.display());
        }
    }
    if global.json {
        report::print_json(&bench);
    } else {
        report::print(&report::bench_text(&bench));
    }
    let verified = bench.in_place.iter().all(|f| f.verified)
        && bench
            .across_network
            .iter()
            .all(|n| n.fixed.verified && n.auto.verified);
    Ok(if verified {
        Outcome::Done
    } else {
        Outcome::Incomplete
    })
}
