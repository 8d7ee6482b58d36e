//! Every clap definition of the command line, and nothing else: `config`
//! turns what is parsed here into the engine's option structs.
//!
//! Keys and tokens are deliberately not accepted as option values: argv is
//! visible to every user of the machine through `ps`. They come from files
//! or environment variables.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::envelope::Mode;
use crate::rotate::reprovision::NeonStrategy;

#[derive(Debug, Parser)]
#[command(
    name = "rekey",
    version,
    about = "Rotate a leaked SECRETS_ENCRYPTION_KEY across every tenant row of the control plane",
    long_about = "Rotate a leaked SECRETS_ENCRYPTION_KEY across every tenant row of the control plane.\n\n\
        Rows the old key opens are re-encrypted in place under the new key; tenants whose rows it \
        cannot open are re-provisioned (new Neon branch, new Fly machine, fresh credentials). Every \
        step is journaled in schema `rekey`, so a killed run resumes where it stopped.\n\n\
        Usual order: keygen, plan, (switch the control plane to the new key), run, verify, finalize."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command shares.
#[derive(Debug, Args)]
pub struct Global {
    /// Control-plane PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// File holding the compromised key (else OLD_SECRETS_ENCRYPTION_KEY).
    #[arg(long, global = true)]
    pub old_key_file: Option<PathBuf>,
    /// File holding the new key (else NEW_SECRETS_ENCRYPTION_KEY).
    #[arg(long, global = true)]
    pub new_key_file: Option<PathBuf>,
    /// Neon API base URL (key from NEON_API_KEY).
    #[arg(
        long,
        env = "NEON_API_URL",
        default_value = "https://console.neon.tech/api/v2",
        global = true
    )]
    pub neon_api_url: String,
    /// Fly Machines API base URL (token from FLY_API_TOKEN).
    #[arg(
        long,
        env = "FLY_API_URL",
        default_value = "https://api.machines.dev/v1",
        global = true
    )]
    pub fly_api_url: String,
    /// Machine-readable output: JSON lines on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(flatten)]
    pub table: TableArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a new 32-byte key and print its key id.
    Keygen(KeygenArgs),
    /// Dry run: count rows per class and action, show key ids, warnings, an estimate and the next command.
    Plan(PlanArgs),
    /// Rotate: re-encrypt in place what the old key opens, re-provision what it does not; resumable.
    Run(RunArgs),
    /// Check that every row opens under the new key; exit non-zero otherwise.
    Verify(VerifyArgs),
    /// Show the journal's view of a run.
    Status(StatusArgs),
    /// Purge a verified run's backup ciphertexts from the journal.
    Finalize(FinalizeArgs),
    /// Undo an in-place run: put back the pre-run ciphertexts of rows unchanged since; resumable.
    Rollback(RollbackArgs),
    /// Fill an empty reference table with a synthetic fleet (tests, demo, rehearsal).
    Seed(SeedArgs),
    /// Capacity planning: measure the engine on a scratch database and project fleet-size wall times.
    FleetBench(BenchArgs),
    /// Rehearsals only: register the Neon projects/branches and Fly apps/machines that the table's
    /// rows name in a loopback fake cloud, so a restored snapshot can be re-provisioned against it.
    /// Used by scripts/rehearse.sh; hidden from the command list because it never touches a real cloud.
    #[command(hide = true)]
    RegisterFakeCloud(RegisterFakeCloudArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyFormat {
    Hex,
    Base64,
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Text form of the key.
    #[arg(long, value_enum, default_value = "hex")]
    pub format: KeyFormat,
    /// Write the key to FILE (created with mode 0600, never overwritten) instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ModeArg {
    Auto,
    Reencrypt,
    Reprovision,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Auto => Mode::Auto,
            ModeArg::Reencrypt => Mode::Reencrypt,
            ModeArg::Reprovision => Mode::Reprovision,
        }
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The mode the plan is for.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ModeArg,
    /// In-place rows per second to assume for the estimate.
    #[arg(long, default_value_t = crate::rotate::plan::DEFAULT_IN_PLACE_RATE)]
    pub in_place_rate: f64,
    #[command(flatten)]
    pub provision: ProvisionArgs,
}

/// Re-provisioning knobs shared by plan, run and fleet-bench.
#[derive(Debug, Clone, Args)]
pub struct ProvisionArgs {
    /// Tenants re-provisioned at once.
    #[arg(long, default_value_t = 16)]
    pub provision_concurrency: usize,
    /// Neon API requests per second (the account limit is about 11/s).
    #[arg(long, default_value_t = 10)]
    pub neon_rps: u32,
    /// Fly API requests per second.
    #[arg(long, default_value_t = 20)]
    pub fly_rps: u32,
    /// Pause between polls of a pending Neon operation, in milliseconds.
    #[arg(long, default_value_t = 750)]
    pub poll_ms: u64,
    /// Pause before looking a Fly machine up after an ambiguous create (its list is eventually consistent).
    #[arg(long, default_value_t = 2000)]
    pub lookup_settle_ms: u64,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// auto: re-encrypt what the old key opens, re-provision the rest; reencrypt: in place only;
    /// reprovision: fresh credentials for every tenant not yet under the new key.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ModeArg,
    /// In-place workers (each one database connection).
    #[arg(long, default_value_t = 4)]
    pub workers: usize,
    /// Rows per in-place batch (one transaction each).
    #[arg(long, default_value_t = 1000)]
    pub batch_size: i64,
    #[command(flatten)]
    pub provision: ProvisionArgs,
    /// Only these tenants (repeatable).
    #[arg(long = "org")]
    pub orgs: Vec<String>,
    /// Act on at most N rows in this invocation; the run stays open.
    #[arg(long)]
    pub limit: Option<u64>,
    /// Acknowledge the wrong-old-key gate by naming how many tenants will be re-provisioned.
    #[arg(long)]
    pub confirm_reprovision: Option<u64>,
    /// Re-provision at most N tenants in this invocation.
    #[arg(long)]
    pub max_tenants: Option<u64>,
    /// Re-provision N tenants first and stop if any of them fails.
    #[arg(long)]
    pub canary: Option<u64>,
    /// new-branch: new Neon branch per tenant (the runbook's path); reset-in-place: only reset the
    /// role password on the tenant's branch (fewer calls, no growing branch tree).
    #[arg(long, value_enum, default_value = "new-branch")]
    pub neon_strategy: NeonStrategyArg,
    /// Attempts per tenant before it is given up (what it created is removed).
    #[arg(long, default_value_t = 5)]
    pub max_attempts: i32,
    /// Seconds the run waits, in all, for rows someone keeps locked before it reports them as left.
    #[arg(long, default_value_t = 60)]
    pub lock_wait_secs: u64,
    /// Seconds a claimed tenant stays this process's without progress (several processes share a run).
    #[arg(long, default_value_t = 60)]
    pub lease_secs: u64,
    /// Deadline in seconds for one tenant's Neon operations or machine start.
    #[arg(long, default_value_t = 300)]
    pub step_deadline_secs: u64,
    /// Write the run's counters in Prometheus text format to FILE while it runs.
    #[arg(long)]
    pub metrics_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also connect to every tenant's database and Redis to prove the secrets work.
    #[arg(long)]
    pub connect: bool,
    /// Connection attempts at once with --connect.
    #[arg(long, default_value_t = 16)]
    pub connect_concurrency: usize,
    /// Per-connection timeout in seconds with --connect.
    #[arg(long, default_value_t = 5)]
    pub connect_timeout: u64,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run to show (default: the latest).
    #[arg(long)]
    pub run: Option<i64>,
}

#[derive(Debug, Args)]
pub struct FinalizeArgs {
    /// The run whose backups to purge.
    #[arg(long)]
    pub run: i64,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The run to roll back.
    #[arg(long)]
    pub run: i64,
    /// Count what would be restored, left and skipped; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Roll back a run that is still open, once every `rekey run` process is stopped; the run is
    /// closed as failed, reason "rolled back".
    #[arg(long)]
    pub force_open: bool,
    /// Backup batches restored at once (each one database connection).
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Tenants to create.
    #[arg(long)]
    pub rows: u64,
    /// File with the key to seal under (else SEED_SECRETS_ENCRYPTION_KEY, then OLD_SECRETS_ENCRYPTION_KEY).
    #[arg(long)]
    pub key_file: Option<PathBuf>,
    /// Share of tenants sealed under a throwaway key (open under neither key).
    #[arg(long, default_value_t = 0.0)]
    pub undecryptable_share: f64,
    /// Share of tenants holding a KMS envelope blob.
    #[arg(long, default_value_t = 0.0)]
    pub kms_share: f64,
    /// Share of tenants with no Redis URL.
    #[arg(long, default_value_t = 0.0)]
    pub null_redis_share: f64,
    /// Seed for ids and shares.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Also register every tenant's Neon project/branch and Fly app/machine in a fake cloud at
    /// this base URL (its /_fake/tenants endpoint). Loopback only.
    #[arg(long)]
    pub register_fake_cloud: Option<String>,
}

#[derive(Debug, Args)]
pub struct RegisterFakeCloudArgs {
    /// Base URL of the fake cloud (`fake-cloud` prints it); loopback only.
    #[arg(long)]
    pub url: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum NeonStrategyArg {
    NewBranch,
    ResetInPlace,
}

impl From<NeonStrategyArg> for NeonStrategy {
    fn from(s: NeonStrategyArg) -> NeonStrategy {
        match s {
            NeonStrategyArg::NewBranch => NeonStrategy::NewBranch,
            NeonStrategyArg::ResetInPlace => NeonStrategy::ResetInPlace,
        }
    }
}

/// The control plane's table and column names (docs/design.md, "Data model").
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Control-plane table")]
pub struct TableArgs {
    /// Table holding one row per tenant, optionally schema-qualified.
    #[arg(long, default_value = "org_instances", global = true)]
    pub table: String,
    /// Primary key column (any type PostgreSQL can cast from text: uuid, text, bigint).
    #[arg(long, default_value = "org_id", global = true)]
    pub id_column: String,
    /// Column with the sealed tenant database URL.
    #[arg(long, default_value = "database_url_encrypted", global = true)]
    pub db_column: String,
    /// Column with the sealed tenant Redis URL.
    #[arg(long, default_value = "redis_url_encrypted", global = true)]
    pub redis_column: String,
    /// Column with the tenant's slug (names new cloud resources).
    #[arg(long, default_value = "slug", global = true)]
    pub slug_column: String,
    /// Column with the tenant's Neon project id.
    #[arg(long, default_value = "neon_project_id", global = true)]
    pub neon_project_column: String,
    /// Column with the tenant's Neon branch id.
    #[arg(long, default_value = "neon_branch_id", global = true)]
    pub neon_branch_column: String,
    /// Column with the tenant's Fly app name.
    #[arg(long, default_value = "fly_app", global = true)]
    pub fly_app_column: String,
    /// Column with the tenant's Fly machine id.
    #[arg(long, default_value = "fly_machine_id", global = true)]
    pub fly_machine_column: String,
    /// Column stamped when a re-provisioned row is rewritten (empty: none).
    #[arg(long, default_value = "updated_at", global = true)]
    pub updated_at_column: String,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Tenants in the scratch fleet.
    #[arg(long, default_value_t = 100_000)]
    pub rows: u64,
    /// Rows per in-place batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: i64,
    /// Worker counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    pub workers: Vec<usize>,
    /// Rows in the naive one-row-per-transaction baseline sample.
    #[arg(long, default_value_t = 3000)]
    pub naive_sample: u64,
    /// Maintenance database used to create and drop the scratch database
    /// (default: --database-url, else postgres://localhost/postgres).
    #[arg(long)]
    pub admin_url: Option<String>,
    /// Write an SVG chart of projected outage against fleet size.
    #[arg(long)]
    pub chart: Option<PathBuf>,
    /// Keep the scratch database (for inspection) instead of dropping it.
    #[arg(long)]
    pub keep: bool,
    /// Tenants to re-provision against an in-process fake cloud (0: skip).
    #[arg(long, default_value_t = 200)]
    pub provision_tenants: u64,
    /// Tenants re-provisioned at once in that measurement.
    #[arg(long, default_value_t = 32)]
    pub provision_concurrency: usize,
    /// Fixed latency of every fake-cloud call, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub cloud_latency_ms: u64,
    /// The fake-cloud binary the re-provision measurement starts (default: the one installed
    /// beside rekey).
    #[arg(long, env = "REKEY_FAKE_CLOUD_BIN")]
    pub fake_cloud_bin: Option<PathBuf>,
}
