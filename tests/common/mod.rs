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

/// Every row's ciphertexts by id.
pub async fn snapshot(pool: &PgPool) -> BTreeMap<String, Fields> {
    let rows: Vec<(String, Option<Vec<u8>>, Option<Vec<u8>>)> = sqlx::query_as(
        "SELECT org_id::text, database_url_encrypted, redis_url_encrypted FROM org_instances",
    )
    .fetch_all(pool)
    .await
    .expect("snapshot");
    rows.into_iter().map(|(id, d, r)| (id, (d, r))).collect()
}

/// Opens both fields of every row with `cipher`; `None` for a field that does not open.
pub fn open_all(
    snap: &BTreeMap<String, Fields>,
    cipher: &Cipher,
) -> BTreeMap<String, (Option<Vec<u8>>, Option<Vec<u8>>)> {
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
