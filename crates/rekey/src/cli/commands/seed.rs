//! `rekey seed` (a rehearsal tool).

use super::open_table;
use crate::cli::args::{Global, SeedArgs};
use crate::cli::{config, CliError};
use crate::cloud::register::{is_loopback_url, register_fake_tenants};
use crate::db::seed::{self, SeedSpec};
use crate::keys;
use crate::rotate::Outcome;

/// The top-level entry point for `rekey seed`: fills an empty reference
/// table with a synthetic fleet, optionally registered in a fake cloud.
pub async fn seed(global: &Global, args: &SeedArgs) -> Result<Outcome, CliError> {
    let key = match keys::load(args.key_file.as_deref(), "SEED_SECRETS_ENCRYPTION_KEY")? {
        Some(k) => k,
        None => keys::load(None, config::OLD_KEY_VAR)?.ok_or_else(|| {
            CliError::Usage(
                "seed needs a key: --key-file FILE or SEED_SECRETS_ENCRYPTION_KEY".into(),
            )
        })?,
    };
    if let Some(url) = &args.register_fake_cloud {
        if !is_loopback_url(url) {
            return Err(CliError::Usage(format!(
                "--register-fake-cloud {url}: only loopback addresses"
            )));
        }
    }
    let (pool, table) = open_table(global, 2).await?;
    let spec = SeedSpec {
        rows: args.rows,
        undecryptable_share: args.undecryptable_share,
        kms_share: args.kms_share,
        null_redis_share: args.null_redis_share,
        seed: args.seed,
    };
    let tenants = seed::tenants(&spec);
    let rows = seed::seed(&pool, &table, &key.key, &tenants).await?;
    if let Some(url) = &args.register_fake_cloud {
        register_fake_tenants(url, &tenants).await?;
    }
    eprintln!(
        "seeded {rows} tenants into {} under key id {}",
        table.display,
        key.key.id()
    );
    Ok(Outcome::Done)
}
