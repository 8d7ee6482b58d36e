//! Shared by the integration tests: a fresh database per test (through
//! `#[sqlx::test]`), the reference schema, key files, seeding, running the
//! real binary, and snapshots of the table to compare before and after.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rekey::db::seed::{self, SeedSpec, SeedTenant};
use rekey::db::{self, Table, TableSpec};
use rekey::envelope::Cipher;
use rekey::keys::Key;
use sqlx::PgPool;

pub const SCHEMA: &str = include_str!("../../scripts/schema.sql");

/// The URL of the database a `#[sqlx::test]` pool points at.
pub fn db_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("scripts/test.sh sets DATABASE_URL");
    let name = pool
        .connect_options()
        .get_database()
        .expect("sqlx::test pools name their database")
        .to_string();
    let mut url = url::Url::parse(&base).expect("DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
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

pub fn write_key(dir: &Path, name: &str, key: &Key) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{}\n", key.to_hex().as_str())).expect("write key");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    path
}

/// Seeds `rows` tenants sealed under `key` and returns them (with plaintexts).
pub async fn seed_fleet(pool: &PgPool, table: &Table, key: &Key, rows: u64) -> Vec<SeedTenant> {
    let tenants = seed::tenants(&SeedSpec {
        rows,
        undecryptable_share: 0.0,
        kms_share: 0.0,
        null_redis_share: 0.1,
        seed: 42,
    });
    seed::seed(pool, table, key, &tenants).await.expect("seed");
    tenants
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
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rekey"));
    cmd.args(args)
        .env("DATABASE_URL", database_url)
        .env_remove("OLD_SECRETS_ENCRYPTION_KEY")
        .env_remove("NEW_SECRETS_ENCRYPTION_KEY")
        .env_remove("NEON_API_KEY")
        .env_remove("FLY_API_TOKEN")
        .env_remove("TENANT_REDIS_URL")
        .env("NO_COLOR", "1");
    cmd
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
    let mut all: Vec<String> = args.iter().map(|a| a.to_string()).collect();
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

/// Number of runs in the journal (0 when the journal does not exist).
pub async fn run_count(pool: &PgPool) -> i64 {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('rekey.runs') IS NOT NULL")
        .fetch_one(pool)
        .await
        .expect("to_regclass");
    if !exists {
        return 0;
    }
    sqlx::query_scalar("SELECT count(*) FROM rekey.runs")
        .fetch_one(pool)
        .await
        .expect("count runs")
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
