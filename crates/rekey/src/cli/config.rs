//! From what the operator typed and exported to what the engine takes: the
//! one place that reads the environment (keys, cloud credentials) and turns
//! clap's structs into the engine's option structs, the way ripgrep's
//! low-level arguments become its high-level ones. Nothing here acts.

use std::path::PathBuf;
use std::time::Duration;

use super::args::{
    BenchArgs, Cli, Global, InPlaceArgs, OnOff, ProvisionArgs, RunArgs, TableArgs, VerifyArgs,
    Workers,
};
use super::CliError;
use crate::bench::{ApiPacing, BenchOptions};
use crate::cloud::Secret;
use crate::db::TableSpec;
use crate::envelope::Keyring;
use crate::keys;
use crate::rotate::connect::ConnectOptions;
use crate::rotate::inplace_estimate::{rate_from_bench, WorkerPlan, WriteRate};
use crate::rotate::reprovision::{CloudAccess, CloudLimits, ProvisionSettings};
use crate::rotate::run::RunOptions;

pub const OLD_KEY_VAR: &str = "OLD_SECRETS_ENCRYPTION_KEY";
pub const NEW_KEY_VAR: &str = "NEW_SECRETS_ENCRYPTION_KEY";
/// The variables re-provisioning needs, all three or none.
pub const CLOUD_VARS: [&str; 3] = ["NEON_API_KEY", "FLY_API_TOKEN", "TENANT_REDIS_URL"];

/// What every command is given besides its own arguments: the output
/// options and the groups it flattened, defaults for the rest.
pub fn global(cli: &Cli) -> Global {
    let groups = cli.command.groups();
    Global {
        json: cli.output.json,
        quiet: cli.output.quiet,
        database: groups.database.cloned().unwrap_or_default(),
        keys: groups.keys.cloned().unwrap_or_default(),
        cloud: groups.cloud.cloned().unwrap_or_default(),
        table: groups.table.map(table_spec).unwrap_or_default(),
    }
}

/// Loads the new key (required) and the old key (optional); refuses one
/// key given as both. Warnings about key files go to stderr.
pub fn keyring(global: &Global) -> Result<Keyring, CliError> {
    let new = keys::load(global.keys.new_key_file.as_deref(), NEW_KEY_VAR)?.ok_or_else(|| {
        CliError::Usage(
            "no new key: pass --new-key-file FILE or set NEW_SECRETS_ENCRYPTION_KEY \
             (make one with `rekey keygen --out FILE`)"
                .into(),
        )
    })?;
    let old = keys::load(global.keys.old_key_file.as_deref(), OLD_KEY_VAR)?;
    for w in new
        .warnings
        .iter()
        .chain(old.iter().flat_map(|o| o.warnings.iter()))
    {
        eprintln!("warning: {w}");
    }
    if let Some(old) = &old {
        if old.key.id() == new.key.id() {
            return Err(CliError::Usage(format!(
                "the old and new keys are the same key (id {}); a compromised key must be replaced \
                 by a fresh one",
                new.key.id()
            )));
        }
    }
    Ok(Keyring::new(&new.key, old.as_ref().map(|o| &o.key)))
}

/// The control-plane database URL, required by every command that reads it.
pub fn database_url(global: &Global) -> Result<&str, CliError> {
    global.database.database_url.as_deref().ok_or_else(|| {
        CliError::Usage("no database: pass --database-url or set DATABASE_URL".into())
    })
}

/// `--statement-timeout-secs`, at least one second.
pub fn statement_timeout(global: &Global) -> Result<Duration, CliError> {
    match global.database.statement_timeout_secs {
        0 => Err(CliError::Usage(
            "--statement-timeout-secs must be at least 1".into(),
        )),
        secs => Ok(Duration::from_secs(secs)),
    }
}

/// Whether the database URL is the one in DATABASE_URL (clap falls back to
/// it), as opposed to one typed after --database-url.
pub fn database_url_from_env(global: &Global) -> bool {
    global.database.database_url.is_some()
        && std::env::var("DATABASE_URL").ok() == global.database.database_url
}

/// Which of the given key variables are set (plan names them in its next
/// step, since the command it prints relies on them).
pub fn key_vars_in_use(global: &Global) -> Vec<&'static str> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let mut out = Vec::new();
    if global.keys.old_key_file.is_none() && set(OLD_KEY_VAR) {
        out.push(OLD_KEY_VAR);
    }
    if global.keys.new_key_file.is_none() && set(NEW_KEY_VAR) {
        out.push(NEW_KEY_VAR);
    }
    out
}

/// The re-provisioning variables that are not set (empty counts as unset).
pub fn missing_cloud_vars() -> Vec<&'static str> {
    CLOUD_VARS
        .into_iter()
        .filter(|name| std::env::var_os(name).is_none_or(|v| v.is_empty()))
        .collect()
}

/// The operator's table options over the defaults.
pub fn table_spec(t: &TableArgs) -> TableSpec {
    let d = TableSpec::default();
    let pick = |given: &Option<String>, default: String| given.clone().unwrap_or(default);
    TableSpec {
        table: pick(&t.table, d.table),
        id_column: pick(&t.id_column, d.id_column),
        db_column: pick(&t.db_column, d.db_column),
        redis_column: pick(&t.redis_column, d.redis_column),
        slug_column: pick(&t.slug_column, d.slug_column),
        neon_project_column: pick(&t.neon_project_column, d.neon_project_column),
        neon_branch_column: pick(&t.neon_branch_column, d.neon_branch_column),
        fly_app_column: pick(&t.fly_app_column, d.fly_app_column),
        fly_machine_column: pick(&t.fly_machine_column, d.fly_machine_column),
        updated_at_column: pick(&t.updated_at_column, d.updated_at_column),
    }
}

pub fn cloud_limits(p: &ProvisionArgs) -> CloudLimits {
    CloudLimits {
        neon_rps: p.neon_rps,
        fly_rps: p.fly_rps,
        poll: Duration::from_millis(p.poll_ms),
        lookup_settle: Duration::from_millis(p.lookup_settle_ms),
    }
}

pub fn provision_settings(args: &RunArgs) -> ProvisionSettings {
    ProvisionSettings {
        concurrency: args.provision.provision_concurrency.max(1),
        strategy: args.provision.neon_strategy.into(),
        max_attempts: args.max_attempts,
        lease: Duration::from_secs(args.lease_secs.max(1)),
        step_deadline: Duration::from_secs(args.step_deadline_secs.max(1)),
        max_tenants: args.max_tenants,
        canary: args.canary,
        prove_connect: args.prove_connect == OnOff::On,
        // As `verify --connect`'s default per-connection timeout.
        prove_timeout: Duration::from_secs(10),
    }
}

/// The cloud endpoints and credentials from the environment. `None` when
/// none of the three variables is set (then no tenant can be
/// re-provisioned); a usage error when only some are.
pub fn cloud_access(global: &Global) -> Result<Option<CloudAccess>, CliError> {
    let var = |name: &str| {
        std::env::var(name)
            .ok()
            .filter(|v| !v.is_empty())
            .map(Secret::new)
    };
    let [neon_key, fly_token, redis_url] = CLOUD_VARS.map(var);
    let missing: Vec<&str> = CLOUD_VARS
        .iter()
        .zip([&neon_key, &fly_token, &redis_url])
        .filter(|(_, v)| v.is_none())
        .map(|(n, _)| *n)
        .collect();
    if missing.len() == CLOUD_VARS.len() {
        return Ok(None);
    }
    let (Some(neon_key), Some(fly_token), Some(redis_url)) = (neon_key, fly_token, redis_url)
    else {
        return Err(CliError::Usage(format!(
            "re-provisioning needs NEON_API_KEY, FLY_API_TOKEN and TENANT_REDIS_URL; missing: {}",
            missing.join(", ")
        )));
    };
    Ok(Some(CloudAccess {
        neon_url: global.cloud.neon_api_url.clone(),
        fly_url: global.cloud.fly_api_url.clone(),
        neon_key,
        fly_token,
        redis_url,
    }))
}

/// The run's options; with `--workers auto`, the default workers until
/// [`crate::rotate::inplace::auto_tune`] has measured the server.
pub fn run_options(args: &RunArgs) -> Result<RunOptions, CliError> {
    let workers = in_place_shape(&args.in_place)?;
    if args.db_retry_secs < 1 {
        return Err(CliError::Usage("--db-retry-secs must be at least 1".into()));
    }
    Ok(RunOptions {
        mode: args.mode.into(),
        workers,
        batch_size: args.in_place.batch_size,
        orgs: args.orgs.clone(),
        limit: args.limit,
        confirm_reprovision: args.confirm_reprovision,
        lock_wait: Duration::from_secs(args.lock_wait_secs),
        until_quiet: args.until_quiet.map(Duration::from),
        db_retry: Duration::from_secs(args.db_retry_secs),
    })
}

/// Workers a run starts with when told `auto`, before it has measured.
const DEFAULT_WORKERS: usize = 4;

/// The workers `--workers` names (the default ones for `auto`, until it
/// has measured), once the three in-place flags are checked.
fn in_place_shape(args: &InPlaceArgs) -> Result<usize, CliError> {
    let workers = match args.workers {
        Workers::Fixed(n) => n,
        Workers::Auto => DEFAULT_WORKERS,
    };
    if args.batch_size < 1 || workers < 1 || args.max_connections < 1 {
        return Err(CliError::Usage(
            "--workers, --batch-size and --max-connections must be at least 1".into(),
        ));
    }
    Ok(workers)
}

/// How `plan` should model the run's workers: as `run` with the same
/// flags would choose them.
pub fn worker_plan(args: &InPlaceArgs) -> Result<WorkerPlan, CliError> {
    let workers = in_place_shape(args)?;
    Ok(match args.workers {
        Workers::Auto => WorkerPlan::Auto {
            max_connections: args.max_connections,
        },
        Workers::Fixed(_) => WorkerPlan::Fixed {
            workers,
            batch_size: args.batch_size,
        },
    })
}

/// The server's write rate for `plan`'s estimate: read from `--bench-file`
/// when given, assumed otherwise.
pub fn server_rate(bench_file: Option<&std::path::Path>) -> Result<WriteRate, CliError> {
    let Some(path) = bench_file else {
        return Ok(WriteRate::FromRead);
    };
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| CliError::io(format!("--bench-file {shown}"), e))?;
    rate_from_bench(&text, &shown)
        .map(WriteRate::Bench)
        .map_err(|e| CliError::Usage(format!("--bench-file {shown} {e}")))
}

/// With `--workers auto`, the cap on connections it may choose; the
/// connections to open the run's pool with either way.
pub fn run_connections(args: &RunArgs) -> (Option<usize>, u32) {
    let a = &args.in_place;
    match a.workers {
        Workers::Fixed(n) => (None, n as u32 + 4),
        Workers::Auto => (Some(a.max_connections), a.max_connections as u32 + 4),
    }
}

pub fn connect_options(args: &VerifyArgs) -> ConnectOptions {
    ConnectOptions {
        concurrency: args.connect_concurrency.max(1),
        timeout: Duration::from_secs(args.connect_timeout.max(1)),
    }
}

pub fn bench_options(global: &Global, args: &BenchArgs) -> Result<BenchOptions, CliError> {
    if args.batch_size < 1 || args.workers.contains(&0) || args.neon_rps == 0 || args.fly_rps == 0 {
        return Err(CliError::Usage(
            "--workers, --batch-size, --neon-rps and --fly-rps must be at least 1".into(),
        ));
    }
    Ok(BenchOptions {
        admin_url: args
            .admin_url
            .clone()
            .or_else(|| global.database.database_url.clone())
            .unwrap_or_else(|| "postgres://localhost/postgres".into()),
        rows: args.rows,
        batch_size: args.batch_size,
        workers: args.workers.clone(),
        naive_sample: args.naive_sample,
        keep: args.keep,
        provision_tenants: args.provision_tenants,
        provision_projects: args.provision_projects,
        provision_strategy: args.neon_strategy.into(),
        provision_concurrency: args.provision_concurrency.max(1),
        cloud_latency: Duration::from_millis(args.cloud_latency_ms),
        fake_cloud_bin: args
            .fake_cloud_bin
            .clone()
            .unwrap_or_else(installed_fake_cloud),
        db_rtt_ms: args.db_rtt_ms.clone(),
        max_connections: args.max_connections.max(1),
        quiet: global.quiet,
        api_pacing: ApiPacing {
            neon_rps: args.neon_rps,
            fly_rps: args.fly_rps,
        },
    })
}

/// `fake-cloud` beside the running `rekey` (cargo builds both into one
/// folder; an install puts them side by side).
fn installed_fake_cloud() -> PathBuf {
    let name = format!("fake-cloud{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(&name)))
        .unwrap_or_else(|| PathBuf::from(name))
}
