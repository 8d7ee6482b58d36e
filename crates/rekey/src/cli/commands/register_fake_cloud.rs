//! `rekey register-fake-cloud` (a rehearsal tool).

use super::open_table;
use crate::cli::args::{Global, RegisterFakeCloudArgs};
use crate::cli::CliError;
use crate::cloud::register::{is_loopback_url, register_fake_resources, Registered};
use crate::db::org_instances::resources_page;
use crate::db::DbError;
use crate::rotate::Outcome;

/// The top-level entry point for `rekey register-fake-cloud` (rehearsals):
/// registers, page by page, the cloud resources every row names in the
/// fake cloud at `--url`. Reads no secret and writes nothing to the table.
pub async fn register_fake_cloud(
    global: &Global,
    args: &RegisterFakeCloudArgs,
) -> Result<Outcome, CliError> {
    if !is_loopback_url(&args.url) {
        return Err(CliError::Usage(format!(
            "--url {}: only loopback addresses (this command feeds a local fake cloud)",
            args.url
        )));
    }
    let (pool, table) = open_table(global, 2).await?;
    let mut total = Registered::default();
    let mut rows = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = resources_page(&pool, &table, after.as_deref(), 2_000)
            .await?
            .ok_or_else(|| DbError::NoResourceColumns {
                table: table.display.clone(),
            })?;
        let Some(last) = page.last() else { break };
        after = Some(last.id.clone());
        let done = register_fake_resources(&args.url, &page).await?;
        rows += page.len() as u64;
        total.neon += done.neon;
        total.fly += done.fly;
        total.neither += done.neither;
    }
    eprintln!(
        "registered the resources of {rows} rows in the fake cloud: {} Neon branches, {} Fly machines; \
         {} rows name neither",
        total.neon, total.fly, total.neither
    );
    Ok(Outcome::Done)
}
