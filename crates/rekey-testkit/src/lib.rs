//! What rekey's integration tests need to build a world: a fresh database
//! per test (through `#[sqlx::test]`), the reference schema, key files,
//! seeding, a fake cloud with distinctive credentials, running the real
//! binaries, snapshots of the table to compare before and after, and
//! assertions such as "no secret in this output". Test code: a broken
//! world is a failed test, so panics with a message are the right answer.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

mod fault_proxy;

pub use fault_proxy::{Fault, FaultProxy};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rekey::db::seed::{self, SeedSpec, SeedTenant};
use rekey::db::{self, Table, TableSpec};
use rekey::envelope::Cipher;
use rekey::keys::Key;
use sqlx::PgPool;

/// A binary of the workspace (`rekey`, `fake-cloud`) as cargo built it for
/// this test run: the test executable lives in `target/<profile>/deps/`,
/// the binaries one folder up. `scripts/test.sh` builds the whole
/// workspace, so both are there.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable has a path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} is not built; run the tests with scripts/test.sh (cargo test --workspace)",
        path.display()
    );
    assert_not_stale(&path, name);
    path
}

/// Cargo builds a package's binaries only for that package's own tests, so
/// `cargo test -p rekey-it` alone would run a binary from an earlier build.
/// A binary older than any file it is built from (`crates/<name>/src`,
/// `migrations`, `build.rs`, `Cargo.toml`, `scripts/schema.sql`) is stale,
/// and testing it would prove nothing. Sources, not the library's build
/// artefacts, are what decide: cargo keeps several builds of a library
/// (one per feature set) and rebuilds a binary only when its own inputs
/// changed, so an artefact can be newer than an up-to-date binary.
fn assert_not_stale(binary: &Path, name: &str) {
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let krate = repo_root().join("crates").join(name);
    // What the binary is built from: its manifest and build script, its
    // sources, the migrations it embeds, and the schema file it includes.
    let mut newest = [
        krate.join("Cargo.toml"),
        krate.join("build.rs"),
        repo_root().join("scripts").join("schema.sql"),
    ]
    .iter()
    .filter_map(|p| modified(p))
    .max();
    let mut dirs = vec![krate.join("src"), krate.join("migrations")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                newest = newest.max(modified(&path));
            }
        }
    }
    if let (Some(built), Some(source)) = (modified(binary), newest) {
        assert!(
            built >= source,
            "{} is older than the sources of {name}: run the tests with scripts/test.sh \
             (cargo test --workspace), which builds it",
            binary.display()
        );
    }
}

/// The repository's root (where `scripts/` lives).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/rekey-testkit sits two folders below the root")
        .to_path_buf()
}

pub use fake_cloud;

pub const SCHEMA: &str = include_str!("../../../scripts/schema.sql");

/// The test server's URL (`DATABASE_URL`): the database tests connect to
/// for what concerns the whole server (roles, `pg_database`), and the base
/// of every scratch database's URL.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect("scripts/test.sh sets DATABASE_URL")
}

/// A connection to [`admin_url`], for queries about the server itself
/// rather than a test's own database.
pub async fn admin_connection() -> sqlx::PgConnection {
    use sqlx::Connection;
    sqlx::PgConnection::connect(&admin_url())
        .await
        .expect("connect to the test server")
}

/// True when the test server holds a database named `name` (a scratch
/// database a script or command made, and should have dropped).
pub async fn database_exists(name: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&mut admin_connection().await)
        .await
        .expect("query pg_database")
}

/// The URL of the database a `#[sqlx::test]` pool points at.
pub fn db_url(pool: &PgPool) -> String {
    let base = admin_url();
    let name = pool
        .connect_options()
        .get_database()
        .expect("sqlx::test pools name their database")
        .to_string();
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// One poll while waiting for the moment to kill `child` at `at`: fails
/// the test when the wait has run past `deadline` or the child has already
/// exited (a kill test whose target finished first tests nothing).
pub fn assert_still_waiting_to_kill(
    child: &mut std::process::Child,
    deadline: std::time::Instant,
    at: &impl std::fmt::Debug,
) {
    assert!(
        std::time::Instant::now() < deadline,
        "no progress to kill in"
    );
    assert!(
        child.try_wait().expect("poll").is_none(),
        "rekey finished before {at:?}"
    );
}

/// Kills `child` with SIGKILL at `at` and reaps it, asserting that it was
/// still running and that the signal, not an exit, ended it.
pub fn sigkill_running(child: &mut std::process::Child, at: &impl std::fmt::Debug) {
    assert!(
        child.try_wait().expect("poll").is_none(),
        "rekey finished before it could be killed at {at:?}"
    );
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("reap");
    assert_eq!(status.code(), None, "killed by a signal");
}

/// Applies the reference `org_instances` schema and resolves the table.
pub async fn reference_table(pool: &PgPool) -> Table {
    sqlx::raw_sql(SCHEMA)
        .execute(pool)
        .await
        .expect("reference schema applies");
    db::resolve_table(pool, &TableSpec::default())
        .await
        .expect("reference table resolves")
}

/// An old and a new key, also written to 0600 files for the binary.
pub struct Keys {
    pub dir: tempfile::TempDir,
    pub old: Key,
    pub new: Key,
    pub old_file: PathBuf,
    pub new_file: PathBuf,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new()
    }
}

impl Keys {
    pub fn new() -> Keys {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = Key::generate().expect("random");
        let new = Key::generate().expect("random");
        let old_file = write_key(dir.path(), "old.key", &old);
        let new_file = write_key(dir.path(), "new.key", &new);
        Keys {
            dir,
            old,
            new,
            old_file,
            new_file,
        }
    }

    /// Another fresh key written to `name` in the same directory.
    pub fn another(&self, name: &str) -> (Key, PathBuf) {
        let key = Key::generate().expect("random");
        let path = write_key(self.dir.path(), name, &key);
        (key, path)
    }

    /// Every text form of both keys, for scanning outputs.
    pub fn secret_texts(&self) -> Vec<String> {
        [&self.old, &self.new]
            .iter()
            .flat_map(|k| [k.to_hex().to_string(), k.to_base64().to_string()])
            .collect()
    }
}

/// Writes `key` in hex to a key file `name` in `dir` (see [`write_key_file`]).
pub fn write_key(dir: &Path, name: &str, key: &Key) -> PathBuf {
    write_key_file(dir, name, format!("{}\n", key.to_hex().as_str()).as_bytes())
}

/// Writes `content` to a file `name` in `dir` with mode 0600, as a key
/// file is kept (the binary warns about one that others can read), and
/// returns its path. The content need not be a key: the refusal tests
/// write malformed ones.
pub fn write_key_file(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write key file");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// The fleet most tests seed: `rows` tenants, every field openable under
/// the key it is sealed with, one in ten without a Redis URL.
pub fn plain_fleet(rows: u64) -> SeedSpec {
    SeedSpec {
        rows,
        undecryptable_share: 0.0,
        kms_share: 0.0,
        null_redis_share: 0.1,
        seed: 42,
    }
}

/// A fleet of `rows` tenants with something of every kind in it: a tenth
/// undecryptable (to re-provision), one in twenty KMS-sealed, a tenth
/// without a Redis URL.
pub fn mixed_fleet(rows: u64) -> SeedSpec {
    SeedSpec {
        rows,
        undecryptable_share: 0.1,
        kms_share: 0.05,
        null_redis_share: 0.1,
        seed: 7,
    }
}

/// Seeds a [`plain_fleet`] of `rows` tenants sealed under `key` and returns
/// them (with plaintexts).
pub async fn seed_fleet(pool: &PgPool, table: &Table, key: &Key, rows: u64) -> Vec<SeedTenant> {
    seed_fleet_with(pool, table, key, plain_fleet(rows)).await
}

/// A row's two ciphertexts.
pub type Fields = (Option<Vec<u8>>, Option<Vec<u8>>);

/// A row's id and its two ciphertexts, as queried.
pub type IdFields = (String, Option<Vec<u8>>, Option<Vec<u8>>);

/// Every row's ciphertexts by id.
pub async fn snapshot(pool: &PgPool) -> BTreeMap<String, Fields> {
    let rows: Vec<IdFields> = sqlx::query_as(
        "SELECT org_id::text, database_url_encrypted, redis_url_encrypted FROM org_instances",
    )
    .fetch_all(pool)
    .await
    .expect("snapshot");
    rows.into_iter().map(|(id, d, r)| (id, (d, r))).collect()
}

/// Opens both fields of every row with `cipher`; `None` for a field that does not open.
pub fn open_all(snap: &BTreeMap<String, Fields>, cipher: &Cipher) -> BTreeMap<String, Fields> {
    let open = |f: &Option<Vec<u8>>| f.as_ref().and_then(|c| cipher.open(c)).map(|p| p.to_vec());
    snap.iter()
        .map(|(id, (d, r))| (id.clone(), (open(d), open(r))))
        .collect()
}

/// Runs the real `rekey` binary against `database_url`.
pub fn rekey(database_url: &str, args: &[&str]) -> Output {
    rekey_cmd(database_url, args).output().expect("run rekey")
}

/// The real `rekey` binary, ready to run, with a clean key environment.
pub fn rekey_cmd(database_url: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(binary("rekey"));
    cmd.args(args);
    clean_env(&mut cmd, database_url);
    cmd
}

/// The environment every test's `rekey` gets: the database URL, no key or
/// cloud variable from the developer's shell, no colour.
fn clean_env(cmd: &mut Command, database_url: &str) {
    cmd.env("DATABASE_URL", database_url)
        .env_remove("OLD_SECRETS_ENCRYPTION_KEY")
        .env_remove("NEW_SECRETS_ENCRYPTION_KEY")
        .env_remove("NEON_API_KEY")
        .env_remove("FLY_API_TOKEN")
        .env_remove("TENANT_REDIS_URL")
        .env("NO_COLOR", "1");
}

/// Runs `rekey ARGS` the way a person at a terminal does: on a
/// pseudo-terminal (util-linux `script`), typing `answer` and Enter. Both
/// streams reach the terminal, so they come back together in `stdout`,
/// with the typed answer echoed; the exit code is rekey's.
pub fn rekey_at_terminal(database_url: &str, args: &[&str], answer: &str) -> Output {
    use std::io::Write as _;
    let binary = binary("rekey");
    let words: Vec<&str> = std::iter::once(path_str(&binary))
        .chain(args.iter().copied())
        .collect();
    let line = shlex::try_join(words).expect("arguments without NUL bytes");
    let mut cmd = Command::new("script");
    cmd.args(["--quiet", "--return", "--command", &line, "/dev/null"])
        .env("COLUMNS", "100")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    clean_env(&mut cmd, database_url);
    let mut child = cmd
        .spawn()
        .expect("util-linux script runs rekey on a terminal");
    let mut stdin = child.stdin.take().expect("piped stdin");
    writeln!(stdin, "{answer}").expect("type the answer");
    drop(stdin);
    child.wait_with_output().expect("wait for script")
}

/// Starts the real `rekey` binary ([`rekey_cmd`]) with both output streams
/// piped: for a test that acts while the run goes on, then collects what it
/// printed with `wait_with_output`.
pub fn spawn_piped(database_url: &str, args: &[String]) -> std::process::Child {
    rekey_cmd(database_url, &strs(args))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rekey")
}

/// Both output streams as text.
pub fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

// ---------------------------------------------------------------------------
// Hand-built rows, journal queries and assertions shared by the in-place,
// bad-input and crash tests.
// ---------------------------------------------------------------------------

/// Inserts one tenant row with the given ciphertexts (NULL for `None`).
pub async fn insert_row(pool: &PgPool, id: uuid::Uuid, db: Option<&[u8]>, redis: Option<&[u8]>) {
    sqlx::query(
        "INSERT INTO org_instances (org_id, slug, database_url_encrypted, redis_url_encrypted)
         VALUES ($1, $2, $3, $4)",
    )
    .bind(id)
    .bind(format!("slug-{id}"))
    .bind(db)
    .bind(redis)
    .execute(pool)
    .await
    .expect("insert row");
}

/// Seeds a fleet of `rows` tenants with the given shares, sealed under `key`.
pub async fn seed_fleet_with(
    pool: &PgPool,
    table: &Table,
    key: &Key,
    spec: SeedSpec,
) -> Vec<SeedTenant> {
    let tenants = seed::tenants(&spec);
    seed::seed(pool, table, key, &tenants).await.expect("seed");
    tenants
}

/// `args`, then `key_args(keys)`, owned: the arguments of a spawned run.
pub fn args_with_keys(args: &[&str], keys: &Keys) -> Vec<String> {
    let mut all: Vec<String> = args.iter().map(std::string::ToString::to_string).collect();
    all.extend(key_args(keys));
    all
}

/// The words of a command line written out as one, for arguments without
/// spaces: `words("run --mode reencrypt --workers 2")`.
pub fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// `--old-key-file OLD --new-key-file NEW` for the binary.
pub fn key_args(keys: &Keys) -> Vec<String> {
    vec![
        "--old-key-file".into(),
        path_str(&keys.old_file).into(),
        "--new-key-file".into(),
        path_str(&keys.new_file).into(),
    ]
}

/// Runs the binary with `args` followed by `--old-key-file`/`--new-key-file`.
pub fn rekey_with_keys(database_url: &str, keys: &Keys, args: &[&str]) -> Output {
    let mut all: Vec<String> = args.iter().map(std::string::ToString::to_string).collect();
    all.extend(key_args(keys));
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    rekey(database_url, &all)
}

/// The JSON objects a `--json` invocation printed on stdout, one per line.
pub fn json_lines(out: &Output) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// The `report` of the `summary` line a `run --json` prints last.
pub fn run_summary(out: &Output) -> serde_json::Value {
    json_lines(out)
        .into_iter()
        .rev()
        .find(|v| v["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary line in: {}", text(out)))["report"]
        .clone()
}

/// True when schema `rekey` (the tool's journal) exists.
pub async fn journal_schema_exists(pool: &PgPool) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'rekey')")
        .fetch_one(pool)
        .await
        .expect("query pg_namespace")
}

/// Rows in the journal table `rekey.{table}` (0 before the binary has
/// created it).
pub async fn journal_rows(pool: &PgPool, table: &str) -> i64 {
    let exists: bool =
        sqlx::query_scalar(&format!("SELECT to_regclass('rekey.{table}') IS NOT NULL"))
            .fetch_one(pool)
            .await
            .expect("to_regclass");
    if !exists {
        return 0;
    }
    sqlx::query_scalar(&format!("SELECT count(*) FROM rekey.{table}"))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("count rekey.{table}: {e}"))
}

/// Number of runs in the journal (0 when the journal does not exist).
pub async fn run_count(pool: &PgPool) -> i64 {
    journal_rows(pool, "runs").await
}

/// The states of every run, in id order.
pub async fn run_states(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT state FROM rekey.runs ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("run states")
}

/// Every org id recorded in a backup batch, with repetitions.
pub async fn backed_up_ids(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar("SELECT unnest(org_ids) FROM rekey.backups")
        .fetch_all(pool)
        .await
        .expect("unnest backups")
}

/// Ids that appear more than once in `ids`.
pub fn duplicates(ids: &[String]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut dups: Vec<String> = ids
        .iter()
        .filter(|id| !seen.insert(id.as_str()))
        .cloned()
        .collect();
    dups.sort();
    dups.dedup();
    dups
}

/// Asserts that every seeded row opens under `new` to the plaintexts it was seeded with.
pub fn assert_all_open_to_seed(snap: &BTreeMap<String, Fields>, new: &Key, tenants: &[SeedTenant]) {
    assert_eq!(snap.len(), tenants.len(), "row count changed");
    let opened = open_all(snap, &Cipher::new(new));
    for t in tenants {
        let id = t.org_id.to_string();
        let (db, redis) = &opened[&id];
        assert_eq!(
            db.as_deref(),
            Some(t.database_url.as_bytes()),
            "row {id}: database URL does not open under the new key to its seed plaintext"
        );
        assert_eq!(
            redis.as_deref(),
            t.redis_url.as_deref().map(str::as_bytes),
            "row {id}: Redis URL does not open under the new key to its seed plaintext"
        );
    }
}

/// Asserts a refusal: exit code 2, a message on stderr containing every
/// one of `needles` (case-insensitive), and no panic anywhere.
pub fn assert_refused(out: &Output, needles: &[&str]) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(2), "expected exit 2: {all}");
    assert!(
        !all.contains("panicked") && !all.contains("RUST_BACKTRACE"),
        "panic text in output: {all}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(stderr.contains("rekey: "), "no error line on stderr: {all}");
    for n in needles {
        assert!(
            stderr.contains(&n.to_lowercase()),
            "stderr lacks {n:?}: {all}"
        );
    }
}

// ---------------------------------------------------------------------------
// The fake cloud for the re-provisioning tests: started on a runtime of its
// own, because `#[sqlx::test]` runs each test on a current-thread runtime
// that stands still while a test waits for the real binary; registered with
// a seeded fleet under the seed's exact ids; read back through its state.
// ---------------------------------------------------------------------------

/// The database and owner role every seeded tenant has (db::seed).
pub const TENANT_DATABASE: &str = "neondb";
pub const TENANT_ROLE: &str = "neondb_owner";

/// Options that make re-provisioning quick against a fast fake: short
/// polls and settles, and client rate limits out of the way.
pub const FAST_PROVISION: &[&str] = &[
    "--poll-ms",
    "20",
    "--lookup-settle-ms",
    "20",
    "--neon-rps",
    "1000",
    "--fly-rps",
    "1000",
    // The fake's tenant database URLs point nowhere: no session to prove.
    "--prove-connect",
    "off",
];

/// A fake cloud that wants distinctive credentials, and the Redis URL the
/// binary is given for every tenant.
pub struct Cloud {
    fake: Option<fake_cloud::FakeCloud>,
    runtime: Option<tokio::runtime::Runtime>,
    config: fake_cloud::FakeConfig,
    pub neon_key: String,
    pub fly_token: String,
    pub redis_password: String,
    pub redis_url: String,
}

impl Cloud {
    /// Starts the fake with `config` plus credentials it then requires.
    pub fn start(mut config: fake_cloud::FakeConfig) -> Cloud {
        let tag = || uuid::Uuid::new_v4().simple().to_string();
        let neon_key = format!("napiSECRET{}", tag());
        let fly_token = format!("fo1SECRET{}", tag());
        let redis_password = format!("redisSECRET{}", tag());
        let redis_url = format!("rediss://default:{redis_password}@tenant-redis.internal:6379");
        config.neon_api_key = Some(neon_key.clone());
        config.fly_api_token = Some(fly_token.clone());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("fake cloud runtime");
        // block_on refuses to run on a thread that is already inside a
        // runtime (the test's), so the start happens on a scoped thread.
        let start = config.clone();
        let fake = std::thread::scope(|s| {
            s.spawn(|| runtime.block_on(fake_cloud::FakeCloud::start(start)))
                .join()
                .expect("fake cloud start thread")
        })
        .expect("fake cloud starts");
        Cloud {
            fake: Some(fake),
            runtime: Some(runtime),
            config,
            neon_key,
            fly_token,
            redis_password,
            redis_url,
        }
    }

    fn fake(&self) -> &fake_cloud::FakeCloud {
        self.fake
            .as_ref()
            .expect("the fake runs until the Cloud is dropped")
    }

    /// The root URL (`/_fake/...` lives under it).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.fake().addr())
    }

    pub fn neon_url(&self) -> String {
        self.fake().neon_url()
    }

    pub fn fly_url(&self) -> String {
        self.fake().fly_url()
    }

    /// Changes the injected behaviour (credentials stay as they are).
    pub fn configure(&mut self, edit: impl FnOnce(&mut fake_cloud::FakeConfig)) {
        edit(&mut self.config);
        self.fake().set_config(self.config.clone());
    }

    /// Everything the fake holds now.
    pub fn view(&self) -> CloudView {
        CloudView::parse(&self.fake().state())
    }

    /// Registers the seeded tenants' projects, branches, apps and machines.
    pub async fn register(&self, tenants: &[SeedTenant]) {
        rekey::cloud::register::register_fake_tenants(&self.base_url(), tenants)
            .await
            .expect("register the fleet in the fake cloud");
    }

    /// The cloud settings the binary reads from its environment.
    pub fn env(&self, cmd: &mut Command) {
        cmd.env("NEON_API_KEY", &self.neon_key)
            .env("FLY_API_TOKEN", &self.fly_token)
            .env("TENANT_REDIS_URL", &self.redis_url)
            .env("NEON_API_URL", self.neon_url())
            .env("FLY_API_URL", self.fly_url());
    }

    /// The connection URI the fake's Neon API serves for a tenant's branch.
    pub async fn connection_uri(&self, project: &str, branch: &str) -> String {
        let url = format!("{}/projects/{project}/connection_uri", self.neon_url());
        let request = reqwest::Client::new()
            .get(&url)
            .bearer_auth(&self.neon_key)
            .query(&[
                ("branch_id", branch),
                ("database_name", TENANT_DATABASE),
                ("role_name", TENANT_ROLE),
            ]);
        let response =
            send_to_fake(request, &format!("connection_uri of {project}/{branch}")).await;
        let body: serde_json::Value = response.json().await.expect("connection_uri JSON");
        body["uri"].as_str().expect("uri is a string").to_string()
    }

    /// Destroys a machine through the fake's Fly API (a tenant whose
    /// machine someone removed by hand).
    pub async fn destroy_machine(&self, app: &str, machine: &str) {
        let url = format!("{}/apps/{app}/machines/{machine}", self.fly_url());
        let request = reqwest::Client::new()
            .delete(&url)
            .bearer_auth(&self.fly_token)
            .query(&[("force", "true")]);
        send_to_fake(request, &format!("destroy {app}/{machine}")).await;
    }

    /// Takes a lease on a machine through the fake's Fly API, as a
    /// control-plane deploy would; returns its nonce.
    pub async fn lease_machine(&self, app: &str, machine: &str, ttl_secs: u64) -> String {
        let url = format!("{}/apps/{app}/machines/{machine}/lease", self.fly_url());
        let request = reqwest::Client::new()
            .post(&url)
            .bearer_auth(&self.fly_token)
            .json(&serde_json::json!({"ttl": ttl_secs, "description": "deploy"}));
        let response = send_to_fake(request, &format!("lease {app}/{machine}")).await;
        let body: serde_json::Value = response.json().await.expect("lease JSON");
        let lease = body.get("data").unwrap_or(&body);
        lease["nonce"].as_str().expect("a nonce").to_string()
    }

    /// Releases a lease [`Cloud::lease_machine`] took.
    pub async fn release_machine_lease(&self, app: &str, machine: &str, nonce: &str) {
        let url = format!("{}/apps/{app}/machines/{machine}/lease", self.fly_url());
        let request = reqwest::Client::new()
            .delete(&url)
            .bearer_auth(&self.fly_token)
            .header("fly-machine-lease-nonce", nonce);
        send_to_fake(request, &format!("release the lease on {app}/{machine}")).await;
    }

    /// The credentials and Redis URL, for scans of outputs.
    pub fn secrets(&self) -> Vec<String> {
        vec![
            self.neon_key.clone(),
            self.fly_token.clone(),
            self.redis_password.clone(),
            self.redis_url.clone(),
        ]
    }
}

impl Drop for Cloud {
    fn drop(&mut self) {
        drop(self.fake.take());
        // A runtime may not be dropped inside another one (the test's);
        // shutting it down in the background is allowed.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Sends a request a test makes to the fake's API behind the binary's back
/// and asserts that the fake did what was asked (`what` names the request
/// in the failure).
async fn send_to_fake(request: reqwest::RequestBuilder, what: &str) -> reqwest::Response {
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: request failed: {e}"));
    assert!(
        response.status().is_success(),
        "{what}: HTTP {}",
        response.status()
    );
    response
}

/// A fake whose operations and boots take `op_ms` and `boot_ms`.
pub fn fake_config(op_ms: u64, boot_ms: u64) -> fake_cloud::FakeConfig {
    fake_cloud::FakeConfig {
        op_duration: std::time::Duration::from_millis(op_ms),
        boot_duration: std::time::Duration::from_millis(boot_ms),
        ..Default::default()
    }
}

/// Seeds `rows` tenants under `key` and registers them in the fake, each
/// in a Neon project of its own.
pub async fn seed_cloud_fleet(
    pool: &PgPool,
    table: &Table,
    key: &Key,
    rows: u64,
    cloud: &Cloud,
) -> Vec<SeedTenant> {
    seed_cloud_fleet_sharing(pool, table, key, rows, 1, cloud).await
}

/// A re-provisioning test's opening: the reference table with `rows`
/// tenants sealed under `keys.old`, each registered in a fake cloud
/// started with `config`. Returns the keys, the cloud, the tenants and the
/// scratch database's URL (for the binary).
pub async fn cloud_fleet(
    pool: &PgPool,
    config: fake_cloud::FakeConfig,
    rows: u64,
) -> (Keys, Cloud, Vec<SeedTenant>, String) {
    let table = reference_table(pool).await;
    let keys = Keys::new();
    let cloud = Cloud::start(config);
    let tenants = seed_cloud_fleet(pool, &table, &keys.old, rows, &cloud).await;
    (keys, cloud, tenants, db_url(pool))
}

/// Seeds `rows` tenants under `key` and registers them in the fake,
/// `per_project` tenants to a Neon project (their branches then share the
/// project's lock: one tenant's operations make Neon answer another 423).
pub async fn seed_cloud_fleet_sharing(
    pool: &PgPool,
    table: &Table,
    key: &Key,
    rows: u64,
    per_project: usize,
    cloud: &Cloud,
) -> Vec<SeedTenant> {
    let mut tenants = seed::tenants(&plain_fleet(rows));
    for (i, t) in tenants.iter_mut().enumerate() {
        t.neon_project_id = format!("proj-{:07}", i / per_project.max(1));
    }
    seed::seed(pool, table, key, &tenants).await.expect("seed");
    cloud.register(&tenants).await;
    tenants
}

/// The real binary with the cloud settings in its environment.
pub fn rekey_cloud_cmd(database_url: &str, cloud: &Cloud, args: &[&str]) -> Command {
    let mut cmd = rekey_cmd(database_url, args);
    cloud.env(&mut cmd);
    cmd
}

/// Runs the real binary with the cloud settings.
pub fn rekey_cloud(database_url: &str, cloud: &Cloud, args: &[&str]) -> Output {
    rekey_cloud_cmd(database_url, cloud, args)
        .output()
        .expect("run rekey")
}

/// `run` with the fast provisioning options (those `extra` does not set
/// itself), `extra`, then `keys`.
pub fn run_args(extra: &[&str], keys: &[String]) -> Vec<String> {
    let mut args = vec!["run".to_string()];
    for pair in FAST_PROVISION.chunks(2) {
        if !extra.contains(&pair[0]) {
            args.extend(pair.iter().map(std::string::ToString::to_string));
        }
    }
    args.extend(extra.iter().map(std::string::ToString::to_string));
    args.extend(keys.iter().cloned());
    args
}

/// `rekey run` with the fast options, `extra`, then `keys`, and the cloud
/// settings.
pub fn run_cloud(database_url: &str, cloud: &Cloud, extra: &[&str], keys: &[String]) -> Output {
    let args = run_args(extra, keys);
    rekey_cloud(database_url, cloud, &strs(&args))
}

/// Asserts an exit code, and no panic in the output.
pub fn assert_exit(out: &Output, code: i32, what: &str) {
    let all = text(out);
    assert_eq!(out.status.code(), Some(code), "{what}: {all}");
    assert!(!all.contains("panicked"), "{what} panicked: {all}");
}

/// Borrows a `Vec<String>` of arguments as `&str`s.
pub fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `--new-key-file NEW` only: the old key is lost.
pub fn new_key_only(keys: &Keys) -> Vec<String> {
    vec!["--new-key-file".into(), path_str(&keys.new_file).into()]
}

/// A Neon branch as `/_fake/state` shows it.
#[derive(Debug, Clone)]
pub struct FakeBranch {
    pub project: String,
    pub id: String,
    pub name: String,
    pub parent_id: Option<String>,
    /// Role name → the password it answers to now.
    pub passwords: BTreeMap<String, String>,
    /// Passwords set by resets whose operations have not finished.
    pub pending_passwords: Vec<String>,
    pub endpoints: Vec<String>,
}

/// A Fly machine as `/_fake/state` shows it.
#[derive(Debug, Clone)]
pub struct FakeMachine {
    pub app: String,
    pub id: String,
    pub state: String,
    pub env: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
}

/// Everything the fake holds, flattened.
#[derive(Debug, Clone)]
pub struct CloudView {
    pub branches: Vec<FakeBranch>,
    pub machines: Vec<FakeMachine>,
    /// `{"by_api": {"neon": {"200": n, ...}, "fly": {...}}, "by_route":
    /// {"neon": {"GET projects/*/connection_uri": n, ...}, ...}, "total": n}`.
    pub requests: serde_json::Value,
}

fn string_map(v: &serde_json::Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|o| {
            o.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn str_of(v: &serde_json::Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

impl CloudView {
    pub fn parse(state: &serde_json::Value) -> CloudView {
        let empty = Vec::new();
        let mut branches = Vec::new();
        for p in state["neon"]["projects"].as_array().unwrap_or(&empty) {
            for b in p["branches"].as_array().unwrap_or(&empty) {
                let roles = b["roles"].as_array().unwrap_or(&empty);
                branches.push(FakeBranch {
                    project: str_of(&p["id"]),
                    id: str_of(&b["id"]),
                    name: str_of(&b["name"]),
                    parent_id: b["parent_id"].as_str().map(str::to_string),
                    passwords: roles
                        .iter()
                        .map(|r| (str_of(&r["name"]), str_of(&r["password"])))
                        .collect(),
                    pending_passwords: roles
                        .iter()
                        .filter_map(|r| r["pending_password"].as_str().map(str::to_string))
                        .collect(),
                    endpoints: b["endpoints"]
                        .as_array()
                        .unwrap_or(&empty)
                        .iter()
                        .map(|e| str_of(&e["id"]))
                        .collect(),
                });
            }
        }
        let mut machines = Vec::new();
        for a in state["fly"]["apps"].as_array().unwrap_or(&empty) {
            for m in a["machines"].as_array().unwrap_or(&empty) {
                machines.push(FakeMachine {
                    app: str_of(&a["name"]),
                    id: str_of(&m["id"]),
                    state: str_of(&m["state"]),
                    env: string_map(&m["config"]["env"]),
                    metadata: string_map(&m["metadata"]),
                });
            }
        }
        CloudView {
            branches,
            machines,
            requests: state["requests"].clone(),
        }
    }

    pub fn branches_of(&self, project: &str) -> Vec<&FakeBranch> {
        self.branches
            .iter()
            .filter(|b| b.project == project)
            .collect()
    }

    /// The branches made from `parent` in `project` that are not seeded
    /// tenants' own (db::seed names those `br-seed-*`).
    pub fn made_from(&self, project: &str, parent: &str) -> Vec<&FakeBranch> {
        self.branches
            .iter()
            .filter(|b| b.project == project && b.parent_id.as_deref() == Some(parent))
            .filter(|b| !b.id.starts_with("br-seed-"))
            .collect()
    }

    pub fn machines_of(&self, app: &str) -> Vec<&FakeMachine> {
        self.machines.iter().filter(|m| m.app == app).collect()
    }

    /// Answers the fake gave `api` (`neon`/`fly`) with `status`.
    /// Requests `api` received on `route` (`"GET projects/*/connection_uri"`:
    /// the method and the path below the API's prefix, ids as `*`).
    pub fn route_calls(&self, api: &str, route: &str) -> u64 {
        self.requests["by_route"][api][route].as_u64().unwrap_or(0)
    }

    /// Every route `api` received requests on, with their counts.
    pub fn routes(&self, api: &str) -> BTreeMap<String, u64> {
        self.requests["by_route"][api]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn responses(&self, api: &str, status: u16) -> u64 {
        self.requests["by_api"][api][status.to_string()]
            .as_u64()
            .unwrap_or(0)
    }

    /// Every password any role has or is about to have.
    pub fn passwords(&self) -> Vec<String> {
        self.branches
            .iter()
            .flat_map(|b| b.passwords.values().chain(b.pending_passwords.iter()))
            .cloned()
            .collect()
    }

    /// Every value of every machine's env (DATABASE_URL, REDIS_URL, ...).
    pub fn env_values(&self) -> Vec<String> {
        self.machines
            .iter()
            .flat_map(|m| m.env.values())
            .cloned()
            .collect()
    }
}

/// A tenant's row of `org_instances`, re-provision columns included.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub org_id: String,
    pub slug: String,
    pub neon_project_id: Option<String>,
    pub neon_branch_id: Option<String>,
    pub fly_app: Option<String>,
    pub fly_machine_id: Option<String>,
    pub database_url_encrypted: Option<Vec<u8>>,
    pub redis_url_encrypted: Option<Vec<u8>>,
}

/// Every row by org id.
pub async fn tenant_rows(pool: &PgPool) -> BTreeMap<String, TenantRow> {
    let rows: Vec<TenantRow> = sqlx::query_as(
        "SELECT org_id::text AS org_id, slug, neon_project_id, neon_branch_id, fly_app, fly_machine_id,
                database_url_encrypted, redis_url_encrypted
           FROM org_instances",
    )
    .fetch_all(pool)
    .await
    .expect("read org_instances");
    rows.into_iter().map(|r| (r.org_id.clone(), r)).collect()
}

/// A tenant's re-provision record in the journal.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ItemRow {
    pub run_id: i64,
    pub org_id: String,
    pub state: String,
    pub step: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// Every re-provision item of every run.
pub async fn items(pool: &PgPool) -> Vec<ItemRow> {
    sqlx::query_as(
        "SELECT run_id, org_id, state, step, attempts, last_error FROM rekey.items
          ORDER BY run_id, org_id",
    )
    .fetch_all(pool)
    .await
    .expect("read rekey.items")
}

/// Items by state.
pub async fn item_states(pool: &PgPool) -> BTreeMap<String, usize> {
    let mut by_state = BTreeMap::new();
    for item in items(pool).await {
        *by_state.entry(item.state).or_insert(0) += 1;
    }
    by_state
}

/// Asserts that `seed`'s tenant was re-provisioned: its row opens under
/// `new` to the URI the fake serves for its new branch (a new password) and
/// to the cloud's Redis URL, and names the new branch and machine; in the
/// fake, one new branch (child of the old, with an endpoint), one new
/// machine (started, with the new URLs), the old machine destroyed, and the
/// old branch's password reset and its endpoint removed.
pub async fn assert_tenant_reprovisioned(
    cloud: &Cloud,
    view: &CloudView,
    row: &TenantRow,
    seed: &SeedTenant,
    new: &Key,
) {
    let id = &row.org_id;
    let cipher = Cipher::new(new);
    let open = |c: &Option<Vec<u8>>| {
        let c = c
            .as_ref()
            .unwrap_or_else(|| panic!("{id}: a field is NULL"));
        let p = cipher
            .open(c)
            .unwrap_or_else(|| panic!("{id}: a field does not open under the new key"));
        String::from_utf8(p.to_vec()).expect("URLs are UTF-8")
    };
    let db = open(&row.database_url_encrypted);
    let redis = open(&row.redis_url_encrypted);
    let branch = row.neon_branch_id.clone().unwrap_or_default();
    let machine = row.fly_machine_id.clone().unwrap_or_default();
    assert_ne!(
        branch, seed.neon_branch_id,
        "{id}: row still names the old branch"
    );
    assert_ne!(
        machine, seed.fly_machine_id,
        "{id}: row still names the old machine"
    );
    assert_eq!(
        row.neon_project_id.as_deref(),
        Some(seed.neon_project_id.as_str())
    );
    assert_eq!(row.fly_app.as_deref(), Some(seed.fly_app.as_str()));

    let served = cloud.connection_uri(&seed.neon_project_id, &branch).await;
    assert!(
        db == served,
        "{id}: the row's database URL is not the URI Neon serves for its new branch"
    );
    let password = url::Url::parse(&db)
        .expect("a database URL")
        .password()
        .unwrap_or_default()
        .to_string();
    assert!(!password.is_empty(), "{id}: no password in the new URI");
    assert!(
        password != seed.password,
        "{id}: the new URI kept the leaked password"
    );
    assert!(
        redis == cloud.redis_url,
        "{id}: the Redis URL is not TENANT_REDIS_URL"
    );

    let branches = view.branches_of(&seed.neon_project_id);
    let old = branches
        .iter()
        .find(|b| b.id == seed.neon_branch_id)
        .unwrap_or_else(|| panic!("{id}: the old branch is gone"));
    let made = view.made_from(&seed.neon_project_id, &seed.neon_branch_id);
    assert_eq!(
        made.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        [branch.as_str()],
        "{id}: expected exactly one new branch, the row's, a child of the old"
    );
    let fresh = made[0];
    assert_eq!(fresh.endpoints.len(), 1, "{id}: the new branch's endpoint");
    assert!(
        fresh.passwords.get(TENANT_ROLE) == Some(&password),
        "{id}: the new branch's role does not answer to the row's password"
    );
    assert!(
        old.passwords
            .get(TENANT_ROLE)
            .is_some_and(|p| p != &seed.password),
        "{id}: the old branch's leaked password still works"
    );
    assert!(
        old.pending_passwords.is_empty(),
        "{id}: a reset still in flight"
    );
    assert!(
        old.endpoints.is_empty(),
        "{id}: the old branch kept its endpoint"
    );

    let machines = view.machines_of(&seed.fly_app);
    assert_eq!(
        machines.len(),
        2,
        "{id}: expected the old machine and exactly one new one (ever): {:?}",
        machines
            .iter()
            .map(|m| (&m.id, &m.state))
            .collect::<Vec<_>>()
    );
    let old_machine = machines
        .iter()
        .find(|m| m.id == seed.fly_machine_id)
        .unwrap_or_else(|| panic!("{id}: the old machine is gone from the fake"));
    assert_eq!(old_machine.state, "destroyed", "{id}: old machine");
    let new_machine = machines
        .iter()
        .find(|m| m.id == machine)
        .unwrap_or_else(|| panic!("{id}: the row's machine is not in the fake"));
    assert_eq!(new_machine.state, "started", "{id}: new machine");
    assert!(
        new_machine.env.get("DATABASE_URL") == Some(&db),
        "{id}: the new machine's DATABASE_URL is not the row's"
    );
    assert!(
        new_machine.env.get("REDIS_URL") == Some(&redis),
        "{id}: the new machine's REDIS_URL is not the row's"
    );
}

/// Asserts that `seed`'s tenant was re-provisioned in place
/// (`--neon-strategy reset-in-place`): it stays on its own branch and its
/// own machine, which is running with the URL its row holds under the new
/// key; that URL is what Neon serves for the branch now (so its password
/// logs in), the leaked password no longer does, and no other machine of
/// the tenant is alive.
pub async fn assert_tenant_reset_in_place(
    cloud: &Cloud,
    view: &CloudView,
    row: &TenantRow,
    seed: &SeedTenant,
    new: &Key,
) {
    let id = &row.org_id;
    let cipher = Cipher::new(new);
    let open = |c: &Option<Vec<u8>>| {
        let c = c
            .as_ref()
            .unwrap_or_else(|| panic!("{id}: a field is NULL"));
        let p = cipher
            .open(c)
            .unwrap_or_else(|| panic!("{id}: a field does not open under the new key"));
        String::from_utf8(p.to_vec()).expect("URLs are UTF-8")
    };
    let db = open(&row.database_url_encrypted);
    assert!(
        open(&row.redis_url_encrypted) == cloud.redis_url,
        "{id}: the Redis URL is not TENANT_REDIS_URL"
    );
    assert_eq!(
        row.neon_branch_id.as_deref(),
        Some(seed.neon_branch_id.as_str()),
        "{id}: branch"
    );
    assert_eq!(
        row.fly_machine_id.as_deref(),
        Some(seed.fly_machine_id.as_str()),
        "{id}: machine"
    );
    let served = cloud
        .connection_uri(&seed.neon_project_id, &seed.neon_branch_id)
        .await;
    assert!(
        db == served,
        "{id}: the row's database URL is not the one the branch accepts now"
    );
    let branch = view
        .branches_of(&seed.neon_project_id)
        .into_iter()
        .find(|b| b.id == seed.neon_branch_id)
        .unwrap_or_else(|| panic!("{id}: its branch is gone"));
    assert!(
        branch
            .passwords
            .get(TENANT_ROLE)
            .is_some_and(|p| p != &seed.password),
        "{id}: the leaked password still works"
    );
    assert!(
        branch.pending_passwords.is_empty(),
        "{id}: a reset still in flight"
    );
    let live: Vec<&FakeMachine> = view
        .machines_of(&seed.fly_app)
        .into_iter()
        .filter(|m| m.state != "destroyed")
        .collect();
    assert_eq!(
        live.iter()
            .map(|m| (m.id.as_str(), m.state.as_str()))
            .collect::<Vec<_>>(),
        [(seed.fly_machine_id.as_str(), "started")],
        "{id}: expected its own machine, running, and no other"
    );
    assert!(
        live[0].env.get("DATABASE_URL") == Some(&db),
        "{id}: the machine does not run with the row's (the branch's) database URL"
    );
}

/// Asserts that nothing was done to `seed`'s tenant: its row as seeded
/// (`before`), its one branch with its password and endpoint, its one
/// machine still running.
pub fn assert_tenant_untouched(
    view: &CloudView,
    row: &TenantRow,
    before: &TenantRow,
    seed: &SeedTenant,
) {
    let id = &row.org_id;
    assert_eq!(row.neon_branch_id, before.neon_branch_id, "{id}: branch");
    assert_eq!(row.fly_machine_id, before.fly_machine_id, "{id}: machine");
    assert!(
        row.database_url_encrypted == before.database_url_encrypted
            && row.redis_url_encrypted == before.redis_url_encrypted,
        "{id}: ciphertexts changed"
    );
    let made = view.made_from(&seed.neon_project_id, &seed.neon_branch_id);
    assert!(
        made.is_empty(),
        "{id}: branches made from its branch: {made:?}"
    );
    let old = view
        .branches_of(&seed.neon_project_id)
        .into_iter()
        .find(|b| b.id == seed.neon_branch_id)
        .unwrap_or_else(|| panic!("{id}: its branch is gone"));
    assert!(
        old.passwords.get(TENANT_ROLE) == Some(&seed.password),
        "{id}: password changed"
    );
    assert_eq!(old.endpoints.len(), 1, "{id}: endpoint");
    let machines = view.machines_of(&seed.fly_app);
    assert_eq!(machines.len(), 1, "{id}: machines");
    assert_eq!(machines[0].state, "started", "{id}: machine state");
}

/// Asserts that every branch and every live machine the fake holds is
/// either a seeded one or the one a row names: nothing created and left.
pub fn assert_no_orphans(
    view: &CloudView,
    rows: &BTreeMap<String, TenantRow>,
    tenants: &[SeedTenant],
) {
    assert_all_known(
        "branch",
        view.branches.iter().map(|b| {
            (
                b.id.as_str(),
                format!("({}) in project {}", b.name, b.project),
            )
        }),
        tenants.iter().map(|t| t.neon_branch_id.as_str()),
        rows.values().filter_map(|r| r.neon_branch_id.as_deref()),
    );
    assert_all_known(
        "machine",
        view.machines
            .iter()
            .filter(|m| m.state != "destroyed")
            .map(|m| (m.id.as_str(), format!("({}) in app {}", m.state, m.app))),
        tenants.iter().map(|t| t.fly_machine_id.as_str()),
        rows.values().filter_map(|r| r.fly_machine_id.as_deref()),
    );
}

/// Asserts that each of `found` (an id with a description for the failure)
/// is among the `seeded` ids or the ids `named` by a row: a `kind` of cloud
/// resource that is neither was created and left behind.
fn assert_all_known<'a>(
    kind: &str,
    found: impl Iterator<Item = (&'a str, String)>,
    seeded: impl Iterator<Item = &'a str>,
    named: impl Iterator<Item = &'a str>,
) {
    let known: std::collections::BTreeSet<&str> = seeded.chain(named).collect();
    for (id, description) in found {
        assert!(known.contains(id), "orphaned {kind} {id} {description}");
    }
}

/// Asserts the whole fleet was re-provisioned, nothing left behind, and
/// every journal item done.
pub async fn assert_fleet_reprovisioned(
    pool: &PgPool,
    cloud: &Cloud,
    tenants: &[SeedTenant],
    new: &Key,
) {
    let rows = tenant_rows(pool).await;
    let view = cloud.view();
    assert_eq!(rows.len(), tenants.len(), "row count changed");
    for t in tenants {
        let row = &rows[&t.org_id.to_string()];
        assert_tenant_reprovisioned(cloud, &view, row, t, new).await;
    }
    assert_no_orphans(&view, &rows, tenants);
    let not_done: Vec<ItemRow> = items(pool)
        .await
        .into_iter()
        .filter(|i| i.state != "done")
        .collect();
    assert!(not_done.is_empty(), "items not done: {not_done:?}");
}

/// Asserts that none of `secrets` appears in `haystack` (named `what`).
pub fn assert_no_secret(what: &str, haystack: &str, secrets: &[String]) {
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        assert!(
            !haystack.contains(s.as_str()),
            "{what} contains a secret ({} characters, starting {:?})",
            s.len(),
            s.chars().take(4).collect::<String>()
        );
    }
}

/// What most run tests start from (in a database holding the reference
/// table): fresh keys, a fleet sealed under the old key (every row
/// re-encryptable in place) and the scratch database's URL for the binary.
pub struct OldKeyFleet {
    pub keys: Keys,
    pub tenants: Vec<SeedTenant>,
    pub url: String,
}

/// The reference table in `pool` with a [`plain_fleet`] of `rows` tenants
/// sealed under the old key of a fresh [`Keys`].
pub async fn old_key_fleet(pool: &PgPool, rows: u64) -> OldKeyFleet {
    old_key_fleet_with(pool, plain_fleet(rows)).await
}

/// [`old_key_fleet`] with the tenants `spec` draws (undecryptable, KMS and
/// NULL-Redis shares of its own).
pub async fn old_key_fleet_with(pool: &PgPool, spec: SeedSpec) -> OldKeyFleet {
    let table = reference_table(pool).await;
    let keys = Keys::new();
    let tenants = seed_fleet_with(pool, &table, &keys.old, spec).await;
    OldKeyFleet {
        keys,
        tenants,
        url: db_url(pool),
    }
}
