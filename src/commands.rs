//! One function per command: load what it needs, call the engine, render
//! the report, and say which outcome the exit code should carry.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::PgPool;

use crate::cli::{
    Cli, Command, FinalizeArgs, KeyFormat, KeygenArgs, PlanArgs, RegisterFakeCloudArgs, RunArgs,
    SeedArgs, StatusArgs, VerifyArgs,
};
use crate::db::{self, journal, Table};
use crate::envelope::Keyring;
use crate::error::{Outcome, SetupError};
use crate::keys::{self, Key};
use crate::progress::Style;
use crate::report;
use crate::rotate::events::{EventSink, FanOut};
use crate::rotate::{plan, run, verify};

const OLD_KEY_VAR: &str = "OLD_SECRETS_ENCRYPTION_KEY";
const NEW_KEY_VAR: &str = "NEW_SECRETS_ENCRYPTION_KEY";

/// Runs the parsed command line.
pub async fn dispatch(cli: Cli) -> Result<Outcome, SetupError> {
    match &cli.command {
        Command::Keygen(args) => keygen(args),
        Command::Plan(args) => plan_cmd(&cli, args).await,
        Command::Run(args) => run_cmd(&cli, args).await,
        Command::Verify(args) => verify_cmd(&cli, args).await,
        Command::Status(args) => status_cmd(&cli, args).await,
        Command::Finalize(args) => finalize_cmd(&cli, args).await,
        Command::Seed(args) => seed_cmd(&cli, args).await,
        Command::FleetBench(args) => crate::bench::fleet_bench(&cli.global, args).await,
        Command::RegisterFakeCloud(args) => register_fake_cloud_cmd(&cli, args).await,
    }
}

/// The top-level entry point for `rekey keygen`: a fresh key to stdout or
/// to a new 0600 file; its id to stderr.
fn keygen(args: &KeygenArgs) -> Result<Outcome, SetupError> {
    let key =
        Key::generate().map_err(|_| SetupError::Refused("the OS random source failed".into()))?;
    let text = match args.format {
        KeyFormat::Hex => key.to_hex(),
        KeyFormat::Base64 => key.to_base64(),
    };
    match &args.out {
        Some(path) => {
            let mut file = create_private(path)?;
            file.write_all(format!("{}\n", text.as_str()).as_bytes())
                .and_then(|_| file.sync_all())
                .map_err(|e| SetupError::io(format!("writing {}", path.display()), e))?;
            eprintln!(
                "wrote a new key to {} (mode 0600); key id {}",
                path.display(),
                key.id()
            );
        }
        None => {
            report::print(&format!("{}\n", text.as_str()));
            eprintln!("key id {}", key.id());
        }
    }
    Ok(Outcome::Done)
}

/// Creates `path` for writing with mode 0600; never opens an existing file.
fn create_private(path: &std::path::Path) -> Result<std::fs::File, SetupError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            SetupError::Refused(format!(
                "{} already exists; keygen never overwrites a key file",
                path.display()
            ))
        } else {
            SetupError::io(format!("creating {}", path.display()), e)
        }
    })
}

/// Loads the new key (required) and the old key (optional); refuses one
/// key given as both. Warnings about key files go to stderr.
pub fn load_keyring(cli: &Cli) -> Result<Keyring, SetupError> {
    let new =
        keys::load(cli.global.new_key_file.as_deref(), NEW_KEY_VAR)?.ok_or(SetupError::NoNewKey)?;
    let old = keys::load(cli.global.old_key_file.as_deref(), OLD_KEY_VAR)?;
    for w in new
        .warnings
        .iter()
        .chain(old.iter().flat_map(|o| o.warnings.iter()))
    {
        eprintln!("warning: {w}");
    }
    if let Some(old) = &old {
        if old.key.id() == new.key.id() {
            return Err(SetupError::SameKey(new.key.id()));
        }
    }
    Ok(Keyring::new(&new.key, old.as_ref().map(|o| &o.key)))
}

fn database_url(cli: &Cli) -> Result<&str, SetupError> {
    cli.global.database_url.as_deref().ok_or_else(|| {
        SetupError::Usage("no database: pass --database-url or set DATABASE_URL".into())
    })
}

async fn open_table(cli: &Cli, connections: u32) -> Result<(PgPool, Table), SetupError> {
    let pool = db::connect(database_url(cli)?, connections).await?;
    let table = db::resolve_table(&pool, &cli.global.table).await?;
    Ok((pool, table))
}

/// The top-level entry point for `rekey plan`. Read-only.
async fn plan_cmd(cli: &Cli, args: &PlanArgs) -> Result<Outcome, SetupError> {
    let keyring = Arc::new(load_keyring(cli)?);
    let (pool, table) = open_table(cli, 4).await?;
    let bound = crate::rotate::reprovision::throughput_bound(&args.provision);
    let inputs = plan::EstimateInputs {
        in_place_rate: args.in_place_rate,
        reprovision_rate: bound.tenants_per_sec,
        reprovision_note: bound.note,
    };
    let report = plan::plan(&pool, &table, &keyring, args.mode.into(), &inputs).await?;
    if cli.global.json {
        report::print_json(&report);
    } else {
        report::print(&report::plan_text(&report));
    }
    Ok(Outcome::Done)
}

/// The top-level entry point for `rekey run`.
async fn run_cmd(cli: &Cli, args: &RunArgs) -> Result<Outcome, SetupError> {
    if args.batch_size < 1 || args.workers < 1 {
        return Err(SetupError::Usage(
            "--workers and --batch-size must be at least 1".into(),
        ));
    }
    let keyring = Arc::new(load_keyring(cli)?);
    let (pool, table) = open_table(cli, args.workers as u32 + 4).await?;
    db::migrate(&pool).await?;
    let style = Style::detect(cli.global.json);
    let mut sinks: Vec<Arc<dyn EventSink>> = vec![Arc::from(style.sink())];
    let metrics = match &args.metrics_file {
        Some(path) => Some(Arc::new(crate::metrics::MetricsFile::create(path)?)),
        None => None,
    };
    if let Some(m) = &metrics {
        sinks.push(Arc::clone(m) as Arc<dyn EventSink>);
    }
    let sink: Arc<dyn EventSink> = Arc::new(FanOut(sinks));
    let report = match run_engine(cli, args, pool, table, keyring, &sink).await {
        Ok(report) => report,
        Err(e) => {
            if let Some(m) = &metrics {
                m.fail();
            }
            return Err(e);
        }
    };
    if let Some(m) = &metrics {
        m.finish(&report);
    }
    drop(sink);
    if cli.global.json {
        report::print_json(&serde_json::json!({"event": "summary", "report": report}));
    } else {
        report::print(&report::run_text(&report));
    }
    Ok(report.outcome)
}

/// The run itself, from the re-provisioner's set-up to the report; split
/// from `run_cmd` so that any error on the way reaches the metrics file.
async fn run_engine(
    cli: &Cli,
    args: &RunArgs,
    pool: PgPool,
    table: Table,
    keyring: Arc<Keyring>,
    sink: &Arc<dyn EventSink>,
) -> Result<run::RunReport, SetupError> {
    let reprovisioner =
        crate::rotate::reprovision::from_environment(cli, args, &pool, &table, &keyring, sink)?;
    let stop = Arc::new(AtomicBool::new(false));
    let on_ctrl_c = Arc::clone(&stop);
    // The first ctrl-c lets the work in flight finish (in-place batches
    // commit, tenants mid-way complete their step); that can take a while
    // when the cloud is slow or gone, so a second one stops at once. Both
    // are safe: the journal resumes a run killed at any instant.
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!(
                "rekey: interrupted; finishing the work in flight (the run stays open to resume); \
                 ctrl-c again to stop at once"
            );
            on_ctrl_c.store(true, Ordering::SeqCst);
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!(
                    "rekey: interrupted again; stopping now (run the same command to resume)"
                );
                std::process::exit(130);
            }
        }
    });
    let ctx = run::RunContext {
        pool,
        table,
        keyring,
        sink: Arc::clone(sink),
        reprovisioner,
        stop,
    };
    let opts = run::RunOptions {
        mode: args.mode.into(),
        workers: args.workers,
        batch_size: args.batch_size,
        orgs: args.orgs.clone(),
        limit: args.limit,
        confirm_reprovision: args.confirm_reprovision,
    };
    run::run(&ctx, &opts).await
}

/// The top-level entry point for `rekey verify`.
async fn verify_cmd(cli: &Cli, args: &VerifyArgs) -> Result<Outcome, SetupError> {
    let keyring = Arc::new(load_keyring(cli)?);
    let (pool, table) = open_table(cli, 4).await?;
    let report = verify::verify(&pool, &table, &keyring).await?;
    let connect = if args.connect {
        Some(crate::connect::check_fleet(&pool, &table, &keyring, args).await?)
    } else {
        None
    };
    let ok = report.ok && connect.as_ref().is_none_or(|c| c.all_reachable());
    if cli.global.json {
        report::print_json(&serde_json::json!({"verify": report, "connect": connect, "ok": ok}));
    } else {
        report::print(&report::verify_text(&report));
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

/// The top-level entry point for `rekey status`.
async fn status_cmd(cli: &Cli, args: &StatusArgs) -> Result<Outcome, SetupError> {
    let pool = db::connect(database_url(cli)?, 2).await?;
    if !db::journal_exists(&pool).await? {
        return Err(SetupError::Refused(
            "no journal here yet: no run has been started on this database".into(),
        ));
    }
    let run = journal::get_run(&pool, args.run).await?;
    let counts = journal::run_counts(&pool, run.id).await?;
    let failed = journal::failed_items(&pool, run.id, 50).await?;
    let status = report::StatusReport {
        run,
        counts,
        failed,
    };
    if cli.global.json {
        report::print_json(&status);
    } else {
        report::print(&report::status_text(&status));
    }
    Ok(Outcome::Done)
}

/// The top-level entry point for `rekey finalize`.
async fn finalize_cmd(cli: &Cli, args: &FinalizeArgs) -> Result<Outcome, SetupError> {
    let pool = db::connect(database_url(cli)?, 2).await?;
    if !db::journal_exists(&pool).await? {
        return Err(SetupError::NoSuchRun(args.run));
    }
    let batches = journal::purge_backups(&pool, args.run).await?;
    if cli.global.json {
        report::print_json(&serde_json::json!({"run": args.run, "backup_batches_purged": batches}));
    } else {
        report::print(&format!(
            "run {}: purged {batches} backup batches; the old ciphertexts are gone\n",
            args.run
        ));
    }
    Ok(Outcome::Done)
}

/// The top-level entry point for `rekey seed`.
async fn seed_cmd(cli: &Cli, args: &SeedArgs) -> Result<Outcome, SetupError> {
    let key = match keys::load(args.key_file.as_deref(), "SEED_SECRETS_ENCRYPTION_KEY")? {
        Some(k) => k,
        None => keys::load(None, OLD_KEY_VAR)?.ok_or_else(|| {
            SetupError::Usage(
                "seed needs a key: --key-file FILE or SEED_SECRETS_ENCRYPTION_KEY".into(),
            )
        })?,
    };
    if let Some(url) = &args.register_fake_cloud {
        if !crate::cloud::register::is_loopback_url(url) {
            return Err(SetupError::Usage(format!(
                "--register-fake-cloud {url}: only loopback addresses"
            )));
        }
    }
    let (pool, table) = open_table(cli, 2).await?;
    let spec = db::seed::SeedSpec {
        rows: args.rows,
        undecryptable_share: args.undecryptable_share,
        kms_share: args.kms_share,
        null_redis_share: args.null_redis_share,
        seed: args.seed,
    };
    let tenants = db::seed::tenants(&spec);
    let rows = db::seed::seed(&pool, &table, &key.key, &tenants).await?;
    if let Some(url) = &args.register_fake_cloud {
        crate::cloud::register::register_fake_tenants(url, &tenants).await?;
    }
    eprintln!(
        "seeded {rows} tenants into {} under key id {}",
        table.display,
        key.key.id()
    );
    Ok(Outcome::Done)
}

/// The top-level entry point for `rekey register-fake-cloud` (rehearsals):
/// registers, page by page, the cloud resources every row names in the
/// fake cloud at `--url`. Reads no secret and writes nothing to the table.
async fn register_fake_cloud_cmd(
    cli: &Cli,
    args: &RegisterFakeCloudArgs,
) -> Result<Outcome, SetupError> {
    use crate::cloud::register::{is_loopback_url, register_fake_resources, Registered};
    use crate::db::org_instances::resources_page;
    if !is_loopback_url(&args.url) {
        return Err(SetupError::Usage(format!(
            "--url {}: only loopback addresses (this command feeds a local fake cloud)",
            args.url
        )));
    }
    let (pool, table) = open_table(cli, 2).await?;
    let mut total = Registered::default();
    let mut rows = 0u64;
    let mut after: Option<String> = None;
    loop {
        let page = resources_page(&pool, &table, after.as_deref(), 2_000)
            .await?
            .ok_or_else(|| {
                SetupError::Refused(format!(
                    "table {} lacks the columns naming cloud resources (slug, neon_*, fly_*); \
                     name them with the --*-column options",
                    table.display
                ))
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
