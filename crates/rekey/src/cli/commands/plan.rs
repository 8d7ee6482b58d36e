//! `rekey plan`.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use super::open_table;
use crate::cli::args::{self, Global, PlanArgs};
use crate::cli::output::report;
use crate::cli::{config, CliError};
use crate::redact;
use crate::rotate::{plan, reprovision, Outcome};

/// The top-level entry point for `rekey plan`. Read-only.
pub async fn plan(global: &Global, args: &PlanArgs) -> Result<Outcome, CliError> {
    let keyring = Arc::new(config::keyring(global)?);
    let (pool, table) = open_table(global, 4).await?;
    let bound = reprovision::throughput_bound(
        &config::cloud_limits(&args.provision),
        args.provision.neon_strategy.into(),
    );
    if args
        .in_place_rate
        .is_some_and(|r| !(r.is_finite() && r > 0.0))
    {
        return Err(CliError::Usage(
            "--in-place-rate must be a positive number of rows per second".into(),
        ));
    }
    let inputs = plan::EstimateInputs {
        in_place_rate: args.in_place_rate,
        workers: config::worker_plan(&args.in_place)?,
        max_connections: args.in_place.max_connections,
        server_rate: config::server_rate(args.bench_file.as_deref())?,
        reprovision_rate: bound.tenants_per_sec,
        reprovision_note: bound.note,
    };
    let report = plan::plan(
        &pool,
        &table,
        &keyring,
        args.mode.into(),
        &inputs,
        &invocation(global, args),
    )
    .await?;
    if global.json {
        report::print_json(&report);
    } else {
        report::print(&report::plan_text(&report));
    }
    Ok(Outcome::Done)
}

/// How plan was invoked, for a next command that works when pasted in the
/// same shell: the operator's key files, table options and re-provisioning
/// knobs, and the variables the command relies on instead of flags. A
/// database URL is repeated only when it holds no secret; keys never are.
fn invocation(global: &Global, args: &PlanArgs) -> plan::Invocation {
    let mut inv = plan::Invocation {
        missing_cloud_vars: strings(config::missing_cloud_vars()),
        env_in_use: strings(config::key_vars_in_use(global)),
        ..plan::Invocation::default()
    };
    let paths = [
        ("--old-key-file", &args.keys.old_key_file),
        ("--new-key-file", &args.keys.new_key_file),
    ];
    for (flag, path) in paths {
        if let Some(path) = path {
            push_flag(&mut inv.repeat_flags, flag, &path_text(path));
        }
    }
    match &global.database.database_url {
        Some(_) if config::database_url_from_env(global) => {
            inv.env_in_use.insert(0, "DATABASE_URL".into());
        }
        Some(url) if redact::url(url) == *url => {
            push_flag(&mut inv.repeat_flags, "--database-url", url);
        }
        Some(_) => inv.database_url_withheld = true,
        None => {}
    }
    let t = &args.table;
    let table_flags = [
        ("--table", &t.table),
        ("--id-column", &t.id_column),
        ("--db-column", &t.db_column),
        ("--redis-column", &t.redis_column),
        ("--slug-column", &t.slug_column),
        ("--neon-project-column", &t.neon_project_column),
        ("--neon-branch-column", &t.neon_branch_column),
        ("--fly-app-column", &t.fly_app_column),
        ("--fly-machine-column", &t.fly_machine_column),
        ("--updated-at-column", &t.updated_at_column),
    ];
    for (flag, value) in table_flags {
        if let Some(value) = value {
            push_flag(&mut inv.repeat_flags, flag, value);
        }
    }
    inv.run_flags = in_place_flags(&args.in_place);
    inv.run_flags.extend(provision_flags(&args.provision));
    inv
}

/// The in-place flags set away from their defaults: the estimate assumed
/// them, so the run should use them too.
fn in_place_flags(a: &args::InPlaceArgs) -> Vec<String> {
    let knobs = [
        changed("--workers", a.workers, args::DEFAULT_WORKERS),
        changed("--batch-size", a.batch_size, args::DEFAULT_BATCH_SIZE),
        changed(
            "--max-connections",
            a.max_connections,
            args::DEFAULT_MAX_CONNECTIONS,
        ),
    ];
    let mut out = Vec::new();
    for (flag, value) in knobs.into_iter().flatten() {
        push_flag(&mut out, flag, &value);
    }
    out
}

/// The knob's flag and value when it is not at its default.
fn changed<T: PartialEq + ToString>(
    flag: &'static str,
    value: T,
    default: T,
) -> Option<(&'static str, String)> {
    (value != default).then(|| (flag, value.to_string()))
}

/// The re-provisioning knobs set away from their defaults: the estimate
/// assumed them, so the run should use them too.
fn provision_flags(p: &args::ProvisionArgs) -> Vec<String> {
    let knobs = [
        changed(
            "--provision-concurrency",
            p.provision_concurrency,
            args::DEFAULT_PROVISION_CONCURRENCY,
        ),
        changed("--neon-rps", p.neon_rps, args::DEFAULT_NEON_RPS),
        changed("--fly-rps", p.fly_rps, args::DEFAULT_FLY_RPS),
        changed("--poll-ms", p.poll_ms, args::DEFAULT_POLL_MS),
        changed(
            "--lookup-settle-ms",
            p.lookup_settle_ms,
            args::DEFAULT_LOOKUP_SETTLE_MS,
        ),
    ];
    let mut out = Vec::new();
    for (flag, value) in knobs.into_iter().flatten() {
        push_flag(&mut out, flag, &value);
    }
    if p.neon_strategy == args::NeonStrategyArg::ResetInPlace {
        push_flag(&mut out, "--neon-strategy", "reset-in-place");
    }
    out
}

/// `flag value`, the value quoted for a POSIX shell when it needs it.
fn push_flag(out: &mut Vec<String>, flag: &str, value: &str) {
    out.push(flag.into());
    // Only a NUL byte cannot be quoted, and argv cannot hold one.
    out.push(shlex::try_quote(value).map_or_else(|_| "''".into(), Cow::into_owned));
}

fn path_text(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn strings(names: Vec<&'static str>) -> Vec<String> {
    names.into_iter().map(String::from).collect()
}
