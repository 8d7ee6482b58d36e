//! `rekey verify --connect` against real servers: the local PostgreSQL,
//! a throwaway PostgreSQL cluster of the test's own that checks passwords
//! (the local server trusts loopback, so it never checks one), and the
//! local Redis with ACL users. Each tenant's row is sealed by hand under the
//! new key; the binary must sort tenants into reachable, authentication
//! failure, refused, network failure and not openable, exit 1 when any
//! tenant is not reachable, and never print a password.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use rand::distributions::{Alphanumeric, DistString};
use rekey::envelope::Cipher;
use rekey_testkit::*;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

// ---------------------------------------------------------------------------
// Servers and credentials the tenants point at, each removed on drop.
// ---------------------------------------------------------------------------

fn password() -> String {
    Alphanumeric.sample_string(&mut rand::thread_rng(), 24)
}

/// A short name unique to this process and call, for roles and ACL users.
fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        Alphanumeric
            .sample_string(&mut rand::thread_rng(), 8)
            .to_lowercase()
    )
}

/// Roles created on the local server (cluster-wide, so they outlive the
/// test's database): dropped on drop, from a thread of their own because
/// the test's runtime may be shutting down.
struct PgRoles {
    admin_url: String,
    names: Vec<String>,
}

impl PgRoles {
    fn new() -> PgRoles {
        PgRoles {
            admin_url: admin_url(),
            names: Vec::new(),
        }
    }

    /// Creates a role; `password: None` makes it NOLOGIN.
    async fn create(&mut self, pool: &PgPool, password: Option<&str>) -> String {
        let name = unique("rekey_conn");
        let sql = match password {
            Some(pw) => format!("CREATE ROLE {name} LOGIN PASSWORD '{pw}'"),
            None => format!("CREATE ROLE {name} NOLOGIN"),
        };
        self.names.push(name.clone());
        sqlx::query(&sql).execute(pool).await.expect("create role");
        name
    }
}

impl Drop for PgRoles {
    fn drop(&mut self) {
        let names = std::mem::take(&mut self.names);
        let url = self.admin_url.clone();
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime for clean-up");
            runtime.block_on(async {
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                for name in names {
                    sqlx::query(&format!("DROP ROLE IF EXISTS {name}"))
                        .execute(&mut conn)
                        .await?;
                }
                Ok::<(), sqlx::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("warning: could not drop the test's roles: {dropped:?}");
        }
    }
}

const REDIS: &str = "redis://127.0.0.1:6379";

/// ACL users on the local Redis, deleted on drop.
struct RedisUsers(Vec<String>);

impl RedisUsers {
    /// Creates an enabled user with `password` and the given ACL rules.
    fn create(&mut self, password: &str, rules: &[&str]) -> String {
        let name = unique("rekey_conn");
        let mut conn = redis_admin();
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER")
            .arg(&name)
            .arg("reset")
            .arg("on")
            .arg(format!(">{password}"));
        for rule in rules {
            cmd.arg(*rule);
        }
        cmd.query::<()>(&mut conn).expect("ACL SETUSER");
        self.0.push(name.clone());
        name
    }
}

impl Drop for RedisUsers {
    fn drop(&mut self) {
        if self.0.is_empty() {
            return;
        }
        let mut conn = redis_admin();
        let deleted = redis::cmd("ACL")
            .arg("DELUSER")
            .arg(&self.0)
            .query::<i64>(&mut conn);
        if deleted.is_err() {
            eprintln!("warning: could not delete the test's Redis users: {deleted:?}");
        }
    }
}

/// A URL of the local Redis for an ACL user and its password.
fn redis_url(user: &str, password: &str) -> String {
    format!("redis://{user}:{password}@127.0.0.1:6379")
}

fn redis_admin() -> redis::Connection {
    redis::Client::open(REDIS)
        .and_then(|c| c.get_connection())
        .expect("the local Redis answers on 127.0.0.1:6379")
}

/// A PostgreSQL cluster of the test's own, made with `initdb` in a
/// temporary directory, listening on a free loopback port, with
/// `scram-sha-256` for every connection: the one way to get a real
/// password check without touching the shared server's `pg_hba.conf`.
/// Stopped (immediately) and removed on drop.
struct PasswordCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    superuser_password: String,
}

impl PasswordCluster {
    fn start() -> PasswordCluster {
        let bin = postgres_bindir();
        let dir = tempfile::tempdir().expect("tempdir");
        let superuser_password = password();
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, format!("{superuser_password}\n")).expect("write pwfile");
        hand_to_postgres_user(dir.path());
        let data = dir.path().join("data");
        run_as_server_user(
            Command::new(bin.join("initdb"))
                .arg("-D")
                .arg(&data)
                .args(["-U", "postgres", "--auth=scram-sha-256", "-N"])
                .arg(format!("--pwfile={}", pwfile.display())),
            "initdb",
        );
        let port = free_port();
        let options = format!(
            "-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c shared_buffers=16MB",
            dir.path().display()
        );
        run_as_server_user(
            Command::new(bin.join("pg_ctl"))
                .arg("-D")
                .arg(&data)
                .args(["-o", &options, "-w", "-t", "30", "-l"])
                .arg(dir.path().join("log"))
                .arg("start"),
            "pg_ctl start",
        );
        PasswordCluster {
            dir,
            bin,
            port,
            superuser_password,
        }
    }

    fn url(&self, password: &str) -> String {
        format!(
            "postgres://postgres:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }
}

impl Drop for PasswordCluster {
    fn drop(&mut self) {
        let mut stop = Command::new(self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "-w", "stop"]);
        if let Err(e) = as_server_user(&mut stop).output() {
            eprintln!("warning: could not stop the test's PostgreSQL cluster: {e}");
        }
    }
}

/// The newest installed PostgreSQL's binaries (`PG_BINDIR` overrides).
fn postgres_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (or set PG_BINDIR)")
        .filter_map(std::result::Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("an initdb under /usr/lib/postgresql/*/bin (or set PG_BINDIR)")
        .1
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The server refuses to run as root: as root, hand the directory to the
/// `postgres` user and run the server's tools as that user.
fn hand_to_postgres_user(dir: &Path) {
    if !is_root() {
        return;
    }
    let status = Command::new("chown")
        .arg("-R")
        .arg("postgres:")
        .arg(dir)
        .status()
        .expect("run chown");
    assert!(
        status.success(),
        "chown {} to postgres failed",
        dir.display()
    );
}

fn as_server_user(cmd: &mut Command) -> Command {
    if !is_root() {
        let mut same = Command::new(cmd.get_program());
        same.args(cmd.get_args());
        return same;
    }
    let mut wrapped = Command::new("runuser");
    wrapped
        .args(["-u", "postgres", "--"])
        .arg(cmd.get_program())
        .args(cmd.get_args());
    wrapped
}

fn run_as_server_user(cmd: &mut Command, what: &str) {
    let out = as_server_user(cmd)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}", text(&out));
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// `base` (the test server's URL) with another user, password and database.
fn pg_url(base: &str, user: &str, password: &str, database: &str) -> String {
    let mut url = url::Url::parse(base).expect("DATABASE_URL is a URL");
    url.set_username(user).expect("URL takes a user");
    url.set_password(Some(password))
        .expect("URL takes a password");
    url.set_path(&format!("/{database}"));
    url.to_string()
}

/// What a reachable tenant is given: a role with a password on the local
/// server, able to log in to this test's database, and a Redis ACL user
/// that may PING, with the URLs that reach them. Removed on drop, with
/// any other role or user the test adds to `roles` and `users`.
struct Reachable {
    roles: PgRoles,
    users: RedisUsers,
    pg_password: String,
    pg_role: String,
    pg_url: String,
    redis_password: String,
    redis_user: String,
}

impl Reachable {
    async fn create(pool: &PgPool) -> Reachable {
        let (admin, this_db) = server_and_database(pool);
        let mut roles = PgRoles::new();
        let pg_password = password();
        let pg_role = roles.create(pool, Some(&pg_password)).await;
        let mut users = RedisUsers(Vec::new());
        let redis_password = password();
        let redis_user = users.create(&redis_password, &["+ping", "+client", "+select"]);
        Reachable {
            roles,
            users,
            pg_url: pg_url(&admin, &pg_role, &pg_password, &this_db),
            pg_password,
            pg_role,
            redis_password,
            redis_user,
        }
    }

    fn redis_url(&self) -> String {
        redis_url(&self.redis_user, &self.redis_password)
    }
}

// ---------------------------------------------------------------------------
// The fleet: one row per case, sealed under the new key by hand.
// ---------------------------------------------------------------------------

/// One tenant: its two URLs (or a field under the wrong key) and the
/// verdicts the binary must give them.
struct Case {
    name: &'static str,
    database: Field,
    redis: Field,
    expect_database: &'static str,
    expect_redis: &'static str,
    expect_overall: &'static str,
}

impl Case {
    /// A tenant without a Redis URL: its Redis is `absent` and the tenant
    /// is judged by its database alone.
    fn database_only(name: &'static str, database: Field, verdict: &'static str) -> Case {
        Case {
            name,
            database,
            redis: Field::Null,
            expect_database: verdict,
            expect_redis: "absent",
            expect_overall: verdict,
        }
    }

    /// A tenant whose database is `reachable`: the tenant is judged by its
    /// Redis.
    fn reachable_database(
        name: &'static str,
        database: Field,
        redis: Field,
        verdict: &'static str,
    ) -> Case {
        Case {
            name,
            database,
            redis,
            expect_database: "reachable",
            expect_redis: verdict,
            expect_overall: verdict,
        }
    }
}

enum Field {
    Url(String),
    /// Sealed under the old key: does not open under the new one.
    OldKey(String),
    Null,
}

async fn insert_cases(pool: &PgPool, keys: &Keys, cases: &[Case]) -> Vec<(Uuid, usize)> {
    let new = Cipher::new(&keys.new);
    let old = Cipher::new(&keys.old);
    let seal = |f: &Field| match f {
        Field::Url(url) => Some(new.seal(url.as_bytes())),
        Field::OldKey(url) => Some(old.seal(url.as_bytes())),
        Field::Null => None,
    };
    let mut ids = Vec::new();
    for (i, case) in cases.iter().enumerate() {
        let id = Uuid::new_v4();
        insert_row(
            pool,
            id,
            seal(&case.database).as_deref(),
            seal(&case.redis).as_deref(),
        )
        .await;
        ids.push((id, i));
    }
    ids
}

fn verify_connect(url: &str, keys: &Keys, json: bool) -> Output {
    let mut args = vec![
        "verify",
        "--connect",
        "--connect-timeout",
        "5",
        "--new-key-file",
        path_str(&keys.new_file),
    ];
    if json {
        args.push("--json");
    }
    rekey(url, &args)
}

/// The test server's URL (`DATABASE_URL`) and the name of this test's
/// database on it, to build URLs for other roles with `pg_url`.
fn server_and_database(pool: &PgPool) -> (String, String) {
    let this_db = pool
        .connect_options()
        .get_database()
        .expect("sqlx::test names its database")
        .to_string();
    (admin_url(), this_db)
}

/// `verify_connect` on this test's database; asserts the exit code and that
/// none of `secrets` shows in the output.
fn verify_connect_exits(
    pool: &PgPool,
    keys: &Keys,
    json: bool,
    code: i32,
    secrets: &[String],
) -> Output {
    let out = verify_connect(&db_url(pool), keys, json);
    assert_eq!(out.status.code(), Some(code), "{}", text(&out));
    assert_no_secret(&out, secrets);
    out
}

fn assert_no_secret(out: &Output, secrets: &[String]) {
    let all = text(out);
    for s in secrets {
        assert!(
            !all.contains(s.as_str()),
            "a password leaked into the output: {all}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn verify_connect_sorts_tenants_by_what_their_servers_answer(pool: PgPool) {
    reference_table(&pool).await;
    let keys = Keys::new();
    let mut good = Reachable::create(&pool).await;
    let (admin, this_db) = server_and_database(&pool);
    let nologin_role = good.roles.create(&pool, None).await;
    let good_pg = &good.pg_url;

    let cluster = PasswordCluster::start();
    let wrong_pw = password();

    let get_only_pw = password();
    let get_only_user = good.users.create(&get_only_pw, &["+get", "~*"]);

    let url = |u: &str| Field::Url(u.to_string());
    let cases = vec![
        Case::reachable_database(
            "role with a password, Redis ACL user with the right password",
            url(good_pg),
            url(&good.redis_url()),
            "reachable",
        ),
        Case::database_only("no Redis URL", url(good_pg), "reachable"),
        Case::reachable_database(
            "right password on the password-checking cluster, Redis default user",
            url(&cluster.url(&cluster.superuser_password)),
            url(REDIS),
            "reachable",
        ),
        Case::reachable_database(
            "Redis user that may not PING: its password was accepted",
            url(good_pg),
            url(&redis_url(&get_only_user, &get_only_pw)),
            "reachable",
        ),
        Case::database_only(
            "wrong password on the password-checking cluster (28P01)",
            url(&cluster.url(&wrong_pw)),
            "auth_failure",
        ),
        Case::database_only(
            "role that may not log in (28000)",
            url(&pg_url(&admin, &nologin_role, &password(), &this_db)),
            "auth_failure",
        ),
        Case::database_only(
            "role that does not exist (28000)",
            url(&pg_url(
                &admin,
                &unique("rekey_gone"),
                &password(),
                &this_db,
            )),
            "auth_failure",
        ),
        Case::reachable_database(
            "Redis ACL user with a wrong password (WRONGPASS)",
            url(good_pg),
            url(&redis_url(&good.redis_user, &wrong_pw)),
            "auth_failure",
        ),
        Case::database_only(
            "database that does not exist (3D000): not the credentials' fault",
            url(&pg_url(
                &admin,
                &good.pg_role,
                &good.pg_password,
                &unique("rekey_no_db"),
            )),
            "refused",
        ),
        Case::database_only(
            "nothing listens on the database port",
            url(&pg_url("postgres://x@127.0.0.1:1/x", "u", &password(), "d")),
            "network_failure",
        ),
        Case::reachable_database(
            "nothing listens on the Redis port",
            url(good_pg),
            url(&format!("redis://default:{}@127.0.0.1:1", password())),
            "network_failure",
        ),
        Case::reachable_database(
            "rediss:// (TLS) to a plain-text Redis: the handshake fails",
            url(good_pg),
            url(&format!("rediss://default:{}@127.0.0.1:6379", password())),
            "network_failure",
        ),
        Case::database_only(
            "database URL still under the old key",
            Field::OldKey(good_pg.clone()),
            "not_openable",
        ),
    ];
    let ids = insert_cases(&pool, &keys, &cases).await;
    let secrets = vec![
        good.pg_password.clone(),
        wrong_pw.clone(),
        cluster.superuser_password.clone(),
        good.redis_password.clone(),
        get_only_pw.clone(),
    ];

    let out = verify_connect_exits(&pool, &keys, true, 1, &secrets);
    let lines = json_lines(&out);
    let report = &lines.last().expect("one JSON line")["connect"];
    let counts: Vec<u64> = [
        "tenants",
        "reachable",
        "auth_failure",
        "refused",
        "network_failure",
        "not_openable",
    ]
    .iter()
    .map(|k| {
        report[k]
            .as_u64()
            .unwrap_or_else(|| panic!("no {k}: {report}"))
    })
    .collect();
    assert_eq!(counts, vec![13, 4, 4, 1, 3, 1], "{report:#}");

    let failing: Vec<&Value> = report["failing"]
        .as_array()
        .expect("failing")
        .iter()
        .collect();
    for (id, i) in &ids {
        let case = &cases[*i];
        let verdict = failing
            .iter()
            .find(|t| t["org_id"] == id.to_string().as_str());
        match verdict {
            None => assert_eq!(
                case.expect_overall, "reachable",
                "{}: listed as reachable: {report:#}",
                case.name
            ),
            Some(t) => {
                assert_eq!(t["database"], case.expect_database, "{}: {t}", case.name);
                assert_eq!(t["redis"], case.expect_redis, "{}: {t}", case.name);
            }
        }
    }

    let out = verify_connect_exits(&pool, &keys, false, 1, &secrets);
    assert!(
        text(&out).contains(
            "connect: 13 tenants: 4 reachable, 4 authentication failure, 1 refused by the server, \
             3 network failure, 1 not openable"
        ),
        "{}",
        text(&out)
    );
}

#[sqlx::test(migrations = false)]
async fn verify_connect_exits_zero_when_every_tenant_is_reachable(pool: PgPool) {
    reference_table(&pool).await;
    let keys = Keys::new();
    let good = Reachable::create(&pool).await;
    let cases: Vec<Case> = (0..20)
        .map(|i| {
            let database = Field::Url(good.pg_url.clone());
            if i % 4 == 0 {
                Case::database_only("reachable", database, "reachable")
            } else {
                let redis = Field::Url(good.redis_url());
                Case::reachable_database("reachable", database, redis, "reachable")
            }
        })
        .collect();
    insert_cases(&pool, &keys, &cases).await;

    let secrets = [good.pg_password.clone(), good.redis_password.clone()];
    let out = verify_connect_exits(&pool, &keys, false, 0, &secrets);
    assert!(
        text(&out).contains("connect: 20 tenants: 20 reachable, 0 authentication failure"),
        "{}",
        text(&out)
    );
}
