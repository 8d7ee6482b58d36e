//! One entry point per command, each in its own file: load what it needs
//! (through `config`), call the engine, render the report, and say which
//! outcome the exit code should carry.

mod completions;
mod confirm;
mod finalize;
mod fleet_bench;
mod keygen;
mod plan;
mod register_fake_cloud;
mod rollback;
mod run;
mod seed;
mod status;
mod verify;

use sqlx::PgPool;

use super::args::{Cli, Command, Global};
use super::{config, CliError};
use crate::db::{self, Table};
use crate::rotate::Outcome;

/// Runs the parsed command line.
pub async fn dispatch(cli: Cli) -> Result<Outcome, CliError> {
    let global = &config::global(&cli);
    db::set_statement_timeout(config::statement_timeout(global)?);
    match &cli.command {
        Command::Keygen(args) => keygen::keygen(global, args),
        Command::Completions(args) => Ok(completions::completions(args)),
        Command::Plan(args) => plan::plan(global, args).await,
        Command::Run(args) => run::run(global, args).await,
        Command::Verify(args) => verify::verify(global, args).await,
        Command::Status(args) => status::status(global, args).await,
        Command::Finalize(args) => finalize::finalize(global, args).await,
        Command::Rollback(args) => rollback::rollback(global, args).await,
        Command::Seed(args) => seed::seed(global, args).await,
        Command::FleetBench(args) => fleet_bench::fleet_bench(global, args).await,
        Command::RegisterFakeCloud(args) => {
            register_fake_cloud::register_fake_cloud(global, args).await
        }
    }
}

/// Connects and checks the operator's table against the database.
async fn open_table(global: &Global, connections: u32) -> Result<(PgPool, Table), CliError> {
    let pool = db::connect(config::database_url(global)?, connections).await?;
    let table = db::resolve_table(&pool, &global.table).await?;
    Ok((pool, table))
}
