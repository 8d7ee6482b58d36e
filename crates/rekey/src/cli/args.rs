//! Every clap definition of the command line, and nothing else: `config`
//! turns what is parsed here into the engine's option structs.
//!
//! Each command flattens only the option groups it reads (keys, database,
//! table, cloud), so its `--help` lists what it uses and nothing it would
//! ignore; only the output options are global. Every environment variable
//! the tool reads is named in the help of the commands that read it.
//!
//! Keys and tokens are deliberately not accepted as option values: argv is
//! visible to every user of the machine through `ps`. They come from files
//! or environment variables.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::db::TableSpec;
use crate::envelope::Mode;
use crate::rotate::reprovision::NeonStrategy;

/// `rekey --version`: the version, the commit it was built from and the
/// build date (`build.rs`), so an incident log says exactly which binary ran.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("REKEY_GIT_COMMIT"),
    ", built ",
    env!("REKEY_BUILD_DATE"),
    ")"
);

const EXIT_CODES: &str = "\
Exit codes:
  0    done: everything the command set out to do is done
  1    not everything done (rows left, tenants given up, verify failed); run it again or see status
  2    usage or setup error: nothing changed
  130  a second ctrl-c stopped a run at once (the journal resumes it)

Logs go to stderr: RUST_LOG selects them (default warn; error with --quiet), --log-format json
makes them JSON lines. No output ever shows a key, password or token.";

/// Where re-provisioning's credentials come from: never options (argv is
/// public), only the environment.
const CLOUD_ENV: &str = "\
Environment (re-provisioning; all three or none, never options):
  NEON_API_KEY       Neon API key
  FLY_API_TOKEN      Fly Machines API token
  TENANT_REDIS_URL   Redis URL re-provisioned tenants get";

#[derive(Debug, Parser)]
#[command(
    name = "rekey",
    version = LONG_VERSION,
    long_version = LONG_VERSION,
    about = "Rotate a leaked SECRETS_ENCRYPTION_KEY across every tenant row of the control plane",
    long_about = "Rotate a leaked SECRETS_ENCRYPTION_KEY across every tenant row of the control plane.\n\n\
        Rows the old key opens are re-encrypted in place under the new key; tenants whose rows it \
        cannot open are re-provisioned (new Neon branch, new Fly machine, fresh credentials). Every \
        step is journaled in schema `rekey`, so a killed run resumes where it stopped.\n\n\
        Usual order: keygen, plan, (switch the control plane to the new key), run, verify, finalize.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(flatten)]
    pub output: OutputArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// The only global options: how output looks, for any command.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Output")]
pub struct OutputArgs {
    /// Machine-readable output: JSON lines on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress output: only errors, warnings and the final report.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Log lines on stderr as text or JSON; RUST_LOG picks which (default warn).
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        value_name = "FORMAT"
    )]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The old and new keys: files, else the variables holding the key itself.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Keys")]
pub struct KeyArgs {
    /// File with the compromised key [else env: OLD_SECRETS_ENCRYPTION_KEY, the key itself].
    #[arg(long, value_name = "FILE")]
    pub old_key_file: Option<PathBuf>,
    /// File with the new key [else env: NEW_SECRETS_ENCRYPTION_KEY, the key itself].
    #[arg(long, value_name = "FILE")]
    pub new_key_file: Option<PathBuf>,
}

/// The control-plane database.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Database")]
pub struct DatabaseArgs {
    /// Control-plane PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, value_name = "URL")]
    pub database_url: Option<String>,
    /// Give up on a statement unanswered this long.
    #[arg(long, default_value_t = crate::db::DEFAULT_STATEMENT_TIMEOUT.as_secs(), value_name = "SECS")]
    pub statement_timeout_secs: u64,
}

impl Default for DatabaseArgs {
    fn default() -> DatabaseArgs {
        DatabaseArgs {
            database_url: None,
            statement_timeout_secs: crate::db::DEFAULT_STATEMENT_TIMEOUT.as_secs(),
        }
    }
}

/// `--workers`: a count, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workers {
    Auto,
    Fixed(usize),
}

impl std::str::FromStr for Workers {
    type Err = String;
    fn from_str(s: &str) -> Result<Workers, String> {
        if s.eq_ignore_ascii_case("auto") {
            return Ok(Workers::Auto);
        }
        s.parse()
            .map(Workers::Fixed)
            .map_err(|_| format!("expected a number of workers or auto, not {s:?}"))
    }
}

/// Connections `--workers auto` may use at most, whatever the server allows.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16;

pub const DEFAULT_NEON_API_URL: &str = "https://console.neon.tech/api/v2";
pub const DEFAULT_FLY_API_URL: &str = "https://api.machines.dev/v1";

/// The cloud endpoints re-provisioning talks to (credentials: `CLOUD_ENV`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Re-provisioning")]
pub struct CloudArgs {
    /// Neon API base URL (key: NEON_API_KEY).
    #[arg(long, env = "NEON_API_URL", default_value = DEFAULT_NEON_API_URL, value_name = "URL")]
    pub neon_api_url: String,
    /// Fly Machines API base URL (token: FLY_API_TOKEN).
    #[arg(long, env = "FLY_API_URL", default_value = DEFAULT_FLY_API_URL, value_name = "URL")]
    pub fly_api_url: String,
}

impl Default for CloudArgs {
    fn default() -> CloudArgs {
        CloudArgs {
            neon_api_url: DEFAULT_NEON_API_URL.into(),
            fly_api_url: DEFAULT_FLY_API_URL.into(),
        }
    }
}

/// What every command is given besides its own arguments: the output
/// options and the groups its arguments flattened. Not parsed itself:
/// `config::global` assembles it, with defaults for the groups a command
/// does not take (it never reads them).
#[derive(Debug, Clone)]
pub struct Global {
    pub json: bool,
    pub quiet: bool,
    pub database: DatabaseArgs,
    pub keys: KeyArgs,
    pub cloud: CloudArgs,
    /// What `--table` and the column options name.
    pub table: TableSpec,
}

/// The option groups one command flattened; `None` for those it does not take.
#[derive(Debug, Default)]
pub struct Groups<'a> {
    pub database: Option<&'a DatabaseArgs>,
    pub keys: Option<&'a KeyArgs>,
    pub cloud: Option<&'a CloudArgs>,
    pub table: Option<&'a TableArgs>,
}

// Parsed once per process and never moved in a loop: boxing the larger
// variants would buy nothing but indirection.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a new 32-byte key and print its key id.
    Keygen(KeygenArgs),
    /// Dry run: rows per class and action, key ids, warnings, an estimate and the next command.
    #[command(after_help = CLOUD_ENV)]
    Plan(PlanArgs),
    /// Rotate: re-encrypt in place what the old key opens, re-provision what it does not; resumable.
    #[command(after_help = CLOUD_ENV)]
    Run(Box<RunArgs>),
    /// Check that every row opens under the new key; exit non-zero otherwise.
    Verify(VerifyArgs),
    /// Show the journal's view of a run.
    Status(StatusArgs),
    /// Purge a verified run's backup ciphertexts from the journal.
    Finalize(FinalizeArgs),
    /// Undo an in-place run: put back the pre-run ciphertexts of rows unchanged since; resumable.
    Rollback(RollbackArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
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

impl Command {
    /// The option groups this command takes (a new command adds its arm).
    pub fn groups(&self) -> Groups<'_> {
        match self {
            Command::Keygen(_) | Command::Completions(_) => Groups::default(),
            Command::Plan(a) => Groups {
                database: Some(&a.database),
                keys: Some(&a.keys),
                cloud: None,
                table: Some(&a.table),
            },
            Command::Run(a) => Groups {
                database: Some(&a.database),
                keys: Some(&a.keys),
                cloud: Some(&a.cloud),
                table: Some(&a.table),
            },
            Command::Verify(a) => Groups {
                database: Some(&a.database),
                keys: Some(&a.keys),
                cloud: None,
                table: Some(&a.table),
            },
            Command::Rollback(a) => Groups {
                database: Some(&a.database),
                keys: Some(&a.keys),
                cloud: None,
                table: Some(&a.table),
            },
            Command::Status(StatusArgs { database, .. })
            | Command::Finalize(FinalizeArgs { database, .. })
            | Command::FleetBench(BenchArgs { database, .. }) => Groups {
                database: Some(database),
                ..Groups::default()
            },
            Command::Seed(SeedArgs {
                database, table, ..
            })
            | Command::RegisterFakeCloud(RegisterFakeCloudArgs {
                database, table, ..
            }) => Groups {
                database: Some(database),
                table: Some(table),
                ..Groups::default()
            },
        }
    }
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
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for, e.g. `rekey completions bash > /etc/bash_completion.d/rekey`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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

/// Rows per in-place batch when `--batch-size` is not given.
pub const DEFAULT_BATCH_SIZE: i64 = 1000;

/// Workers when `--workers` is not given.
pub const DEFAULT_WORKERS: Workers = Workers::Fixed(4);

impl std::fmt::Display for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Workers::Auto => f.write_str("auto"),
            Workers::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// How the in-place path spreads its work: what `run` uses and what
/// `plan`'s estimate assumes, so the two take the same flags.
#[derive(Debug, Clone, Args)]
pub struct InPlaceArgs {
    /// In-place connections, or auto (fit to the round trip).
    #[arg(long, default_value_t = DEFAULT_WORKERS, value_name = "N|auto")]
    pub workers: Workers,
    /// Rows per in-place batch (auto picks its own).
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE, value_name = "N")]
    pub batch_size: i64,
    /// Cap on auto workers' connections.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The mode the plan is for.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ModeArg,
    // The estimate's workers and batches are the run's with the same flags.
    #[command(flatten)]
    pub in_place: InPlaceArgs,
    /// The JSON of an earlier `rekey fleet-bench --json` against this same server: the
    /// estimate takes the server's write rate from it instead of assuming one.
    #[arg(long, value_name = "FILE")]
    pub bench_file: Option<PathBuf>,
    /// In-place rows per second to assume instead of the estimate from measurements.
    #[arg(long, value_name = "N")]
    pub in_place_rate: Option<f64>,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub table: TableArgs,
    #[command(flatten)]
    pub provision: ProvisionArgs,
}

pub const DEFAULT_PROVISION_CONCURRENCY: usize = 16;
pub const DEFAULT_NEON_RPS: u32 = 10;
pub const DEFAULT_FLY_RPS: u32 = 20;
pub const DEFAULT_POLL_MS: u64 = 750;
pub const DEFAULT_LOOKUP_SETTLE_MS: u64 = 2000;

/// Re-provisioning knobs shared by plan and run.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Re-provisioning")]
pub struct ProvisionArgs {
    /// Tenants re-provisioned at once.
    #[arg(long, default_value_t = DEFAULT_PROVISION_CONCURRENCY, value_name = "N")]
    pub provision_concurrency: usize,
    /// Neon API requests/s (Neon allows 700/min per account, bursts of 40/s per route).
    #[arg(long, default_value_t = DEFAULT_NEON_RPS, value_name = "N")]
    pub neon_rps: u32,
    /// Fly API requests per second.
    #[arg(long, default_value_t = DEFAULT_FLY_RPS, value_name = "N")]
    pub fly_rps: u32,
    /// Pause between polls of a pending Neon operation.
    #[arg(long, default_value_t = DEFAULT_POLL_MS, value_name = "MS")]
    pub poll_ms: u64,
    /// Pause before looking up a Fly machine after an ambiguous create.
    #[arg(long, default_value_t = DEFAULT_LOOKUP_SETTLE_MS, value_name = "MS")]
    pub lookup_settle_ms: u64,
    /// new-branch: a new Neon branch per tenant (the runbook's path); reset-in-place: new
    /// password on the tenant's branch, its machine updated in place (fewer calls).
    #[arg(
        long,
        value_enum,
        default_value = "new-branch",
        value_name = "STRATEGY"
    )]
    pub neon_strategy: NeonStrategyArg,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// auto: in place what the old key opens, the rest re-provisioned; reencrypt: in place
    /// only; reprovision: fresh credentials for all.
    #[arg(long, value_enum, default_value = "auto")]
    pub mode: ModeArg,
    #[command(flatten)]
    pub in_place: InPlaceArgs,
    /// Only this tenant (repeatable).
    #[arg(long = "org", value_name = "ID")]
    pub orgs: Vec<String>,
    /// Act on at most N rows in this invocation; the run stays open.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Re-walk until no row needed work for this long (e.g. 5m).
    #[arg(long, value_name = "DURATION")]
    pub until_quiet: Option<humantime::Duration>,
    /// Wait in all for rows kept locked, then report them.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub lock_wait_secs: u64,
    /// Retry a lost database connection this long, then stop.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    pub db_retry_secs: u64,
    /// Write the run's counters to FILE (Prometheus text) while it runs.
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Act without asking first (a terminal is otherwise shown what will change and asked).
    #[arg(short = 'y', long)]
    pub yes: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub table: TableArgs,
    /// Acknowledge the wrong-old-key gate: the number of tenants to re-provision.
    #[arg(long, value_name = "N", help_heading = "Re-provisioning")]
    pub confirm_reprovision: Option<u64>,
    /// Re-provision at most N tenants in this invocation.
    #[arg(long, value_name = "N", help_heading = "Re-provisioning")]
    pub max_tenants: Option<u64>,
    /// Re-provision N tenants first and stop if any of them fails.
    #[arg(long, value_name = "N", help_heading = "Re-provisioning")]
    pub canary: Option<u64>,
    /// Attempts per tenant before it is given up.
    #[arg(
        long,
        default_value_t = 5,
        value_name = "N",
        help_heading = "Re-provisioning"
    )]
    pub max_attempts: i32,
    /// How long a claimed tenant stays this process's idle.
    #[arg(
        long,
        default_value_t = 60,
        value_name = "SECS",
        help_heading = "Re-provisioning"
    )]
    pub lease_secs: u64,
    /// Deadline of one Neon operation or machine start.
    #[arg(
        long,
        default_value_t = 300,
        value_name = "SECS",
        help_heading = "Re-provisioning"
    )]
    pub step_deadline_secs: u64,
    /// Prove each new DATABASE_URL opens a session first
    #[arg(
        long,
        value_enum,
        hide_possible_values = true,
        default_value = "on",
        value_name = "on|off",
        help_heading = "Re-provisioning"
    )]
    pub prove_connect: OnOff,
    #[command(flatten)]
    pub provision: ProvisionArgs,
    #[command(flatten)]
    pub cloud: CloudArgs,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Also connect to every tenant's database and Redis to prove the secrets work.
    #[arg(long)]
    pub connect: bool,
    /// Connection attempts at once with --connect.
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub connect_concurrency: usize,
    /// Per-connection timeout in seconds with --connect.
    #[arg(long, default_value_t = 5, value_name = "SECS")]
    pub connect_timeout: u64,
    /// List every failing row's id, not only the first 20 (with --json:
    /// a `failing` array).
    #[arg(long)]
    pub all_failures: bool,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub table: TableArgs,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// The run to show (default: the latest).
    #[arg(long, value_name = "ID")]
    pub run: Option<i64>,
    /// The run's ledger instead: every tenant not finished (last step,
    /// attempts, reason) and every tenant re-provisioned (old and new
    /// branch and machine ids). A table; --json or --csv for a file.
    #[arg(long)]
    pub tenants: bool,
    /// With --tenants: comma-separated values with a header line.
    #[arg(long, requires = "tenants")]
    pub csv: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

#[derive(Debug, Args)]
pub struct FinalizeArgs {
    /// The run whose backups to purge.
    #[arg(long, value_name = "ID")]
    pub run: i64,
    #[command(flatten)]
    pub database: DatabaseArgs,
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
    #[arg(long, default_value_t = 2, value_name = "N")]
    pub workers: usize,
    #[command(flatten)]
    pub keys: KeyArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub table: TableArgs,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// Tenants to create.
    #[arg(long, value_name = "N")]
    pub rows: u64,
    /// File with the key to seal under [else env: SEED_SECRETS_ENCRYPTION_KEY, then
    /// OLD_SECRETS_ENCRYPTION_KEY, the key itself].
    #[arg(long, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Share of tenants sealed under a throwaway key (open under neither key).
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub undecryptable_share: f64,
    /// Share of tenants holding a KMS envelope blob.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub kms_share: f64,
    /// Share of tenants with no Redis URL.
    #[arg(long, default_value_t = 0.0, value_name = "SHARE")]
    pub null_redis_share: f64,
    /// Seed for ids and shares.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub seed: u64,
    /// Also register every tenant's Neon project/branch and Fly app/machine in a fake cloud at
    /// this base URL (its /_fake/tenants endpoint). Loopback only.
    #[arg(long, value_name = "URL")]
    pub register_fake_cloud: Option<String>,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub table: TableArgs,
}

#[derive(Debug, Args)]
pub struct RegisterFakeCloudArgs {
    /// Base URL of the fake cloud (`fake-cloud` prints it); loopback only.
    #[arg(long)]
    pub url: String,
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub table: TableArgs,
}

/// A switch given as `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
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

/// The control plane's table and column names (docs/design.md, "Data
/// model"); `None` is the default, so plan can tell which ones the operator
/// named and repeat exactly those.
#[derive(Debug, Clone, Default, Args)]
#[command(next_help_heading = "Control-plane table")]
pub struct TableArgs {
    /// Table with one row per tenant, optionally schema-qualified [default: org_instances].
    #[arg(long, value_name = "NAME")]
    pub table: Option<String>,
    /// Primary key column (uuid, text, bigint...) [default: org_id].
    #[arg(long, value_name = "COL")]
    pub id_column: Option<String>,
    /// Sealed tenant database URL [default: database_url_encrypted].
    #[arg(long, value_name = "COL")]
    pub db_column: Option<String>,
    /// Sealed tenant Redis URL [default: redis_url_encrypted].
    #[arg(long, value_name = "COL")]
    pub redis_column: Option<String>,
    /// Tenant slug, names new cloud resources [default: slug].
    #[arg(long, value_name = "COL")]
    pub slug_column: Option<String>,
    /// Neon project id [default: neon_project_id].
    #[arg(long, value_name = "COL")]
    pub neon_project_column: Option<String>,
    /// Neon branch id [default: neon_branch_id].
    #[arg(long, value_name = "COL")]
    pub neon_branch_column: Option<String>,
    /// Fly app name [default: fly_app].
    #[arg(long, value_name = "COL")]
    pub fly_app_column: Option<String>,
    /// Fly machine id [default: fly_machine_id].
    #[arg(long, value_name = "COL")]
    pub fly_machine_column: Option<String>,
    /// Stamped when a re-provisioned row is rewritten; empty: none [default: updated_at].
    #[arg(long, value_name = "COL")]
    pub updated_at_column: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Tenants in the scratch fleet.
    #[arg(long, default_value_t = 100_000, value_name = "N")]
    pub rows: u64,
    /// Rows per in-place batch.
    #[arg(long, default_value_t = 1000, value_name = "N")]
    pub batch_size: i64,
    /// Worker counts to measure, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "1,2,4",
        value_name = "N,..."
    )]
    pub workers: Vec<usize>,
    /// Rows in the naive one-row-per-transaction baseline sample.
    #[arg(long, default_value_t = 3000, value_name = "N")]
    pub naive_sample: u64,
    /// Also measure the engine across these round trips (ms), through a
    /// delaying proxy on 127.0.0.1; repeatable or comma-separated (0,10,50).
    #[arg(long, value_delimiter = ',', value_name = "MS,...")]
    pub db_rtt_ms: Vec<u64>,
    /// At most this many connections for `auto` workers across the network.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS, value_name = "N")]
    pub max_connections: usize,
    /// Maintenance database used to create and drop the scratch database
    /// (default: --database-url, else postgres://localhost/postgres).
    #[arg(long, value_name = "URL")]
    pub admin_url: Option<String>,
    /// Write an SVG chart of projected outage against fleet size.
    #[arg(long, value_name = "FILE")]
    pub chart: Option<PathBuf>,
    /// Keep the scratch database (for inspection) instead of dropping it.
    #[arg(long)]
    pub keep: bool,
    /// Tenants to re-provision against an in-process fake cloud (0: skip).
    #[arg(long, default_value_t = 200, value_name = "N")]
    pub provision_tenants: u64,
    /// Tenants re-provisioned at once in that measurement.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub provision_concurrency: usize,
    /// Neon projects the measured tenants share, round robin (0: one project each).
    /// Neon runs one operation at a time per project.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub provision_projects: u64,
    /// How the measured tenants get fresh database credentials (as `run --neon-strategy`).
    #[arg(
        long,
        value_enum,
        default_value = "new-branch",
        value_name = "STRATEGY"
    )]
    pub neon_strategy: NeonStrategyArg,
    /// Fixed latency of every fake-cloud call, in milliseconds.
    #[arg(long, default_value_t = 50, value_name = "MS")]
    pub cloud_latency_ms: u64,
    /// Neon requests/s the projection at the APIs' limits assumes (a real run's --neon-rps).
    #[arg(long, default_value_t = DEFAULT_NEON_RPS, value_name = "N")]
    pub neon_rps: u32,
    /// Fly requests/s that projection assumes (a real run's --fly-rps).
    #[arg(long, default_value_t = DEFAULT_FLY_RPS, value_name = "N")]
    pub fly_rps: u32,
    /// The fake-cloud binary the re-provision measurement starts (default: the one installed
    /// beside rekey).
    #[arg(long, env = "REKEY_FAKE_CLOUD_BIN", value_name = "FILE")]
    pub fake_cloud_bin: Option<PathBuf>,
    #[command(flatten)]
    pub database: DatabaseArgs,
}
