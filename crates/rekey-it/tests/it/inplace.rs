//! The in-place path, specified through the real binary (and, for
//! invariant 1, the library): classification in `plan`, what `run` writes
//! and what it leaves, concurrent writers, several processes, `--limit` and
//! `--org`, the key check on resume, `finalize`, and secrets kept out of
//! every output.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use rand::{Rng, RngCore};
use rekey::envelope::{is_kms_shaped, Cipher, Keyring, Mode, KMS_VERSION_BYTE, NONCE_BYTES};
use rekey::keys::Key;
use rekey::rotate::events::NullSink;
use rekey::rotate::run::{self, RunContext, RunOptions};
use rekey::rotate::Outcome;
use rekey_testkit::*;
use serde_json::json;
use sqlx::PgPool;

// ---------------------------------------------------------------------------
// A hand-built mixed fleet: every kind of field docs/design.md's classification
// distinguishes, in every combination that decides a row's action.
// ---------------------------------------------------------------------------

/// What a field holds, and so which class `plan` must put it in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Blob {
    Null,
    /// Zero bytes (not NULL).
    Empty,
    /// Sealed under the new key.
    Current,
    /// Sealed under the new key with a nonce that makes it KMS-shaped.
    Current02,
    /// Sealed under the old key.
    Old,
    /// Sealed under the old key with a nonce that makes it KMS-shaped:
    /// only trying GCM before the shape tells it apart.
    Old02,
    /// `0x02 || u16 BE dek_len || dek || nonce || ct+tag`.
    Kms,
    /// Sealed under a key that is neither old nor new.
    Third,
    /// An old-key blob with its last bytes cut off.
    Truncated,
    /// An old-key blob with one bit of its ciphertext flipped.
    BitFlipped,
}

impl Blob {
    /// The class docs/design.md ("Classification") gives this field.
    fn class(self) -> &'static str {
        match self {
            Blob::Null | Blob::Empty => "empty",
            Blob::Current | Blob::Current02 => "current",
            Blob::Old | Blob::Old02 => "old",
            Blob::Kms => "kms",
            Blob::Third | Blob::Truncated | Blob::BitFlipped => "undecryptable",
        }
    }

    fn is_old(self) -> bool {
        self.class() == "old"
    }
}

/// Each pattern: database field, Redis field, the row's action in mode auto.
const MIXED: &[(Blob, Blob, &str)] = &[
    (Blob::Old, Blob::Old, "reencrypt"),
    (Blob::Current, Blob::Current, "skip"),
    (Blob::Old, Blob::Current, "reencrypt"),
    (Blob::Current, Blob::Old, "reencrypt"),
    (Blob::Old, Blob::Null, "reencrypt"),
    (Blob::Null, Blob::Null, "skip"),
    (Blob::Current, Blob::Empty, "skip"),
    (Blob::Empty, Blob::Old, "reencrypt"),
    (Blob::Kms, Blob::Old, "reencrypt"),
    (Blob::Kms, Blob::Null, "skip"),
    (Blob::Kms, Blob::Current, "skip"),
    (Blob::Old02, Blob::Null, "reencrypt"),
    (Blob::Old02, Blob::Old02, "reencrypt"),
    (Blob::Current02, Blob::Kms, "skip"),
    (Blob::Third, Blob::Old, "reprovision"),
    (Blob::Truncated, Blob::Current, "reprovision"),
    (Blob::BitFlipped, Blob::Null, "reprovision"),
    (Blob::Kms, Blob::Third, "reprovision"),
    (Blob::Old, Blob::BitFlipped, "reprovision"),
    (Blob::Empty, Blob::Truncated, "reprovision"),
];

/// How many rows of each pattern, so that no count is a coincidence of one.
const COPIES: usize = 3;

/// One row of the hand-built fleet, with the plaintexts its sealed fields hold.
struct Built {
    id: String,
    db: Blob,
    redis: Blob,
    action: &'static str,
    db_plain: Vec<u8>,
    redis_plain: Vec<u8>,
}

/// A random nonce whose first byte is `first`.
fn nonce(first: u8) -> [u8; NONCE_BYTES] {
    let mut n = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut n);
    n[0] = first;
    n
}

/// A sealed blob that can never be mistaken for a KMS envelope (first byte not 0x02).
fn sealed(cipher: &Cipher, plaintext: &[u8]) -> Vec<u8> {
    cipher.seal_with_nonce(nonce(0x11), plaintext)
}

/// Sealed with a nonce `0x02, 0x00, 0x04, …`: reads as a KMS envelope with a 4-byte DEK.
fn sealed_kms_shaped(cipher: &Cipher, plaintext: &[u8]) -> Vec<u8> {
    let mut n = nonce(KMS_VERSION_BYTE);
    n[1] = 0;
    n[2] = 4;
    let blob = cipher.seal_with_nonce(n, plaintext);
    assert!(is_kms_shaped(&blob), "test blob must fit the KMS shape");
    blob
}

fn kms_blob() -> Vec<u8> {
    let mut rng = rand::thread_rng();
    let dek_len: u16 = 40;
    let mut blob = vec![KMS_VERSION_BYTE];
    blob.extend_from_slice(&dek_len.to_be_bytes());
    let mut rest = vec![0u8; dek_len as usize + NONCE_BYTES + 48 + 16];
    rng.fill(&mut rest[..]);
    blob.extend_from_slice(&rest);
    assert!(is_kms_shaped(&blob));
    blob
}

fn make_blob(kind: Blob, keys: &Keys, third: &Cipher, plaintext: &[u8]) -> Option<Vec<u8>> {
    let old = Cipher::new(&keys.old);
    let new = Cipher::new(&keys.new);
    let blob = match kind {
        Blob::Null => return None,
        Blob::Empty => Vec::new(),
        Blob::Current => sealed(&new, plaintext),
        Blob::Current02 => sealed_kms_shaped(&new, plaintext),
        Blob::Old => sealed(&old, plaintext),
        Blob::Old02 => sealed_kms_shaped(&old, plaintext),
        Blob::Kms => kms_blob(),
        Blob::Third => sealed(third, plaintext),
        Blob::Truncated => {
            let mut b = sealed(&old, plaintext);
            b.truncate(b.len() - 5);
            b
        }
        Blob::BitFlipped => {
            let mut b = sealed(&old, plaintext);
            b[NONCE_BYTES + 3] ^= 0x01;
            b
        }
    };
    Some(blob)
}

/// The reference table with [`build_fleet`]'s rows of `patterns` under
/// fresh keys, and what the tests compare against: the keys, the rows, the
/// URL for the binary and every row's ciphertexts before the first command.
async fn hand_built(
    pool: &PgPool,
    patterns: &[(Blob, Blob, &'static str)],
) -> (Keys, Vec<Built>, String, BTreeMap<String, Fields>) {
    reference_table(pool).await;
    let keys = Keys::new();
    let fleet = build_fleet(pool, &keys, patterns).await;
    (keys, fleet, db_url(pool), snapshot(pool).await)
}

/// Inserts `COPIES` rows of every pattern in `patterns`.
async fn build_fleet(
    pool: &PgPool,
    keys: &Keys,
    patterns: &[(Blob, Blob, &'static str)],
) -> Vec<Built> {
    let third = Cipher::new(&Key::generate().expect("random"));
    let mut built = Vec::new();
    for copy in 0..COPIES {
        for (n, &(db, redis, action)) in patterns.iter().enumerate() {
            let i = copy * patterns.len() + n;
            let db_plain = format!(
                "postgresql://neondb_owner:pw{i:04}x@ep-{i}.neon.tech/neondb?sslmode=require"
            )
            .into_bytes();
            let redis_plain =
                format!("rediss://default:rpw{i:04}y@redis-{i}.internal:6379").into_bytes();
            let id = uuid::Uuid::new_v4();
            insert_row(
                pool,
                id,
                make_blob(db, keys, &third, &db_plain).as_deref(),
                make_blob(redis, keys, &third, &redis_plain).as_deref(),
            )
            .await;
            built.push(Built {
                id: id.to_string(),
                db,
                redis,
                action,
                db_plain,
                redis_plain,
            });
        }
    }
    built
}

fn expected_actions(fleet: &[Built]) -> serde_json::Value {
    let n = |a: &str| fleet.iter().filter(|b| b.action == a).count();
    json!({"skip": n("skip"), "reencrypt": n("reencrypt"), "reprovision": n("reprovision")})
}

fn expected_fields(fleet: &[Built]) -> serde_json::Value {
    let n = |c: &str| {
        fleet
            .iter()
            .map(|b| usize::from(b.db.class() == c) + usize::from(b.redis.class() == c))
            .sum::<usize>()
    };
    json!({
        "current": n("current"),
        "old": n("old"),
        "kms": n("kms"),
        "undecryptable": n("undecryptable"),
        "empty": n("empty"),
    })
}

/// Checks every row of `fleet` after an in-place run: rows the run was to
/// re-encrypt have their old fields open under the new key to the same
/// plaintext and every other field byte for byte as before; every other
/// row is byte for byte as before.
fn assert_reencrypted_exactly(
    fleet: &[Built],
    before: &BTreeMap<String, Fields>,
    after: &BTreeMap<String, Fields>,
    new: &Key,
) {
    let new = Cipher::new(new);
    for b in fleet {
        let (db0, redis0) = &before[&b.id];
        let (db1, redis1) = &after[&b.id];
        let converted = b.action == "reencrypt";
        for (kind, plain, was, now, name) in [
            (b.db, &b.db_plain, db0, db1, "database"),
            (b.redis, &b.redis_plain, redis0, redis1, "redis"),
        ] {
            if converted && kind.is_old() {
                let now = now
                    .as_ref()
                    .unwrap_or_else(|| panic!("row {}: {name} field became NULL", b.id));
                assert_ne!(
                    Some(now),
                    was.as_ref(),
                    "row {}: old {name} field not rewritten",
                    b.id
                );
                assert_eq!(
                    new.open(now)
                        .as_ref()
                        .map(rekey::envelope::Plaintext::as_slice),
                    Some(plain.as_slice()),
                    "row {}: {name} field does not open under the new key to its plaintext",
                    b.id
                );
            } else {
                assert_eq!(
                    now, was,
                    "row {} ({:?}/{:?}, {}): {name} field changed",
                    b.id, b.db, b.redis, b.action
                );
            }
        }
    }
}

#[sqlx::test(migrations = false)]
async fn plan_counts_every_class_and_action_of_a_mixed_fleet_and_writes_nothing(pool: PgPool) {
    let (keys, fleet, url, before) = hand_built(&pool, MIXED).await;

    let out = rekey_with_keys(&url, &keys, &["plan", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("plan --json is one JSON object");
    assert_eq!(plan["rows"], fleet.len());
    assert_eq!(plan["actions"], expected_actions(&fleet), "{plan:#}");
    assert_eq!(plan["fields"], expected_fields(&fleet), "{plan:#}");
    let kms_rows = fleet
        .iter()
        .filter(|b| b.db == Blob::Kms || b.redis == Blob::Kms)
        .count();
    assert_eq!(plan["kms_rows"], kms_rows);
    assert_eq!(plan["new_key_id"], keys.new.id().0);
    assert_eq!(plan["old_key_id"], keys.old.id().0);

    let out = rekey_with_keys(&url, &keys, &["plan"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    assert_eq!(snapshot(&pool).await, before, "plan changed the table");
    assert!(
        !journal_schema_exists(&pool).await,
        "plan created schema rekey"
    );
}

#[sqlx::test(migrations = false)]
async fn run_reencrypt_converts_exactly_the_old_fields_and_lists_undecryptable_rows(pool: PgPool) {
    let (keys, fleet, url, before) = hand_built(&pool, MIXED).await;

    let out = rekey_with_keys(
        &url,
        &keys,
        &words("run --mode reencrypt --json --workers 2 --batch-size 7"),
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "undecryptable rows are left: {}",
        text(&out)
    );
    let report = run_summary(&out);
    let undecryptable: BTreeSet<String> = fleet
        .iter()
        .filter(|b| b.action == "reprovision")
        .map(|b| b.id.clone())
        .collect();
    let listed: BTreeSet<String> = report["left"]
        .as_array()
        .expect("left is a list")
        .iter()
        .map(|l| l["org_id"].as_str().expect("org_id").to_string())
        .collect();
    assert_eq!(listed, undecryptable, "{report:#}");
    assert_eq!(report["left_total"], undecryptable.len());
    let reencrypt: Vec<String> = fleet
        .iter()
        .filter(|b| b.action == "reencrypt")
        .map(|b| b.id.clone())
        .collect();
    assert_eq!(report["reencrypted"], reencrypt.len());

    assert_reencrypted_exactly(&fleet, &before, &snapshot(&pool).await, &keys.new);
    let mut backed = backed_up_ids(&pool).await;
    backed.sort();
    let mut expected = reencrypt.clone();
    expected.sort();
    assert_eq!(
        backed, expected,
        "the backup holds exactly the rewritten rows, once each"
    );
    assert_eq!(run_states(&pool).await, ["failed"]);
}

#[sqlx::test(migrations = false)]
async fn run_reencrypt_exits_0_when_no_undecryptable_row_is_left(pool: PgPool) {
    let openable: Vec<_> = MIXED
        .iter()
        .copied()
        .filter(|(_, _, action)| *action != "reprovision")
        .collect();
    let (keys, fleet, url, before) = hand_built(&pool, &openable).await;

    let out = rekey_with_keys(
        &url,
        &keys,
        &["run", "--mode", "reencrypt", "--batch-size", "5"],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_reencrypted_exactly(&fleet, &before, &snapshot(&pool).await, &keys.new);
    assert_eq!(run_states(&pool).await, ["finished"]);
    let out = rekey_with_keys(&url, &keys, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

/// Plaintexts the concurrent writer stores, recognisable as its own.
fn writer_plaintexts(n: u64) -> (String, String) {
    (
        format!("postgresql://writer:wpw{n}@ep-writer-{n}.neon.tech/neondb"),
        format!("rediss://default:wr{n}@writer-redis.internal:6379"),
    )
}

#[sqlx::test(migrations = false)]
async fn writes_of_another_connection_during_a_run_are_never_lost(pool: PgPool) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, 3_000).await;
    let ids: Vec<uuid::Uuid> = tenants.iter().map(|t| t.org_id).collect();
    // One worker, batches of 100: a batch's read and write are far enough
    // apart that the writer often lands in between, so an engine without
    // row locks and compare-and-swap fails this test.
    let args = args_with_keys(
        &words("run --mode reencrypt --workers 1 --batch-size 100"),
        &keys,
    );
    let args = strs(&args);
    let mut child = rekey_cmd(&url, &args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rekey");

    // The control plane: rewrites random rows, some under the old key and
    // some under the new one, until the run ends.
    let old = Cipher::new(&keys.old);
    let new = Cipher::new(&keys.new);
    let mut last: HashMap<uuid::Uuid, (String, String)> = HashMap::new();
    let mut writes = 0u64;
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll rekey") {
            break status;
        }
        let (id, under_old) = {
            let mut rng = rand::thread_rng();
            (ids[rng.gen_range(0..ids.len())], rng.gen_bool(0.5))
        };
        let cipher = if under_old { &old } else { &new };
        let (db, redis) = writer_plaintexts(writes);
        sqlx::query(
            "UPDATE org_instances SET database_url_encrypted = $2, redis_url_encrypted = $3 WHERE org_id = $1",
        )
        .bind(id)
        .bind(cipher.seal(db.as_bytes()))
        .bind(cipher.seal(redis.as_bytes()))
        .execute(&pool)
        .await
        .expect("writer UPDATE");
        last.insert(id, (db, redis));
        writes += 1;
        tokio::task::yield_now().await;
    };
    let stderr = {
        use std::io::Read;
        let mut s = String::new();
        let _ = child.stderr.take().expect("piped").read_to_string(&mut s);
        s
    };
    // 1 when the writer kept the last pass busy: rows it wrote under the old
    // key after that pass are still old, which is not a loss.
    assert!(matches!(status.code(), Some(0 | 1)), "{status:?}: {stderr}");
    assert!(
        writes >= 20,
        "the writer must overlap the run (only {writes} writes)"
    );

    // With the writer gone, a second run converts what it left under the old key.
    let out = rekey_with_keys(&url, &keys, &["run", "--mode", "reencrypt"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));

    let opened = open_all(&snapshot(&pool).await, &new);
    for t in &tenants {
        let (db, redis) = &opened[&t.org_id.to_string()];
        let (want_db, want_redis) = match last.get(&t.org_id) {
            Some((d, r)) => (Some(d.as_bytes()), Some(r.as_bytes())),
            None => (
                Some(t.database_url.as_bytes()),
                t.redis_url.as_deref().map(str::as_bytes),
            ),
        };
        let who = if last.contains_key(&t.org_id) {
            "writer's last"
        } else {
            "seed"
        };
        assert_eq!(
            db.as_deref(),
            want_db,
            "row {}: database URL is not the {who} plaintext",
            t.org_id
        );
        assert_eq!(
            redis.as_deref(),
            want_redis,
            "row {}: Redis URL is not the {who} plaintext",
            t.org_id
        );
    }
}

#[sqlx::test(migrations = false)]
async fn a_new_ciphertext_that_fails_the_check_before_write_is_never_written(pool: PgPool) {
    let table = reference_table(&pool).await;
    let keys = Keys::new();
    seed_fleet(&pool, &table, &keys.old, 150).await;
    rekey::db::migrate(&pool).await.expect("migrate");
    let before = snapshot(&pool).await;

    let (wrong, _) = keys.another("wrong.key");
    let ctx = RunContext {
        pool: pool.clone(),
        table,
        keyring: Arc::new(Keyring::with_mismatched_sealer(
            &keys.new,
            Some(&keys.old),
            &wrong,
        )),
        sink: Arc::new(NullSink),
        reprovisioner: None,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let opts = RunOptions::new(Mode::Reencrypt, 2, 16);
    let report = run::run(&ctx, &opts)
        .await
        .expect("the run itself completes");

    assert_eq!(snapshot(&pool).await, before, "a row was written");
    assert!(backed_up_ids(&pool).await.is_empty());
    assert_eq!(report.reencrypted, 0);
    assert_eq!(report.left_total, 150);
    assert_eq!(report.left.len(), 100, "the report lists the first 100");
    for l in &report.left {
        assert!(before.contains_key(&l.org_id), "unknown id {}", l.org_id);
        assert!(
            l.reason.contains("check before write"),
            "{}: {}",
            l.org_id,
            l.reason
        );
    }
    assert_eq!(report.outcome, Outcome::Incomplete);
    assert_eq!(report.state, "failed");
}

#[sqlx::test(migrations = false)]
async fn two_processes_share_one_run_and_never_rewrite_a_row_twice(pool: PgPool) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, 4_000).await;
    let args = args_with_keys(
        &["run", "--json", "--workers", "2", "--batch-size", "25"],
        &keys,
    );
    let (a, b) = (spawn_piped(&url, &args), spawn_piped(&url, &args));
    let a = a.wait_with_output().expect("wait for rekey");
    let b = b.wait_with_output().expect("wait for rekey");

    assert_eq!(a.status.code(), Some(0), "first process: {}", text(&a));
    assert_eq!(b.status.code(), Some(0), "second process: {}", text(&b));
    let (ra, rb) = (run_summary(&a), run_summary(&b));
    assert_eq!(
        (&ra["run_id"], &rb["run_id"]),
        (&json!(1), &json!(1)),
        "both joined run 1"
    );
    let (na, nb) = (
        ra["reencrypted"].as_u64().unwrap_or(0),
        rb["reencrypted"].as_u64().unwrap_or(0),
    );
    assert_eq!(
        na + nb,
        tenants.len() as u64,
        "rows re-encrypted by the two processes"
    );
    assert!(
        na > 0 && nb > 0,
        "both processes must have worked ({na} + {nb})"
    );
    assert_all_open_to_seed(&snapshot(&pool).await, &keys.new, &tenants);
    let backed = backed_up_ids(&pool).await;
    assert_eq!(
        duplicates(&backed),
        Vec::<String>::new(),
        "rows rewritten twice"
    );
    assert_eq!(backed.len(), tenants.len());
    assert_eq!(
        run_states(&pool).await,
        ["finished"],
        "exactly one run, finished"
    );
}

#[sqlx::test(migrations = false)]
async fn processes_starting_together_on_a_fresh_database_all_join_one_run(pool: PgPool) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, 300).await;
    let args = args_with_keys(
        &["run", "--json", "--workers", "1", "--batch-size", "20"],
        &keys,
    );
    // Spawned back to back, they reach the journal's migration together:
    // the first one to run on a database creates schema rekey. However the
    // scheduler orders them (a late one may start after the run finished),
    // they share one run: joined while it is open, re-opened once it ended.
    let children: Vec<_> = (0..6).map(|_| spawn_piped(&url, &args)).collect();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().expect("wait for rekey");
        assert_eq!(out.status.code(), Some(0), "process {i}: {}", text(&out));
        assert_eq!(run_summary(&out)["run_id"], 1, "process {i}");
    }
    assert_all_open_to_seed(&snapshot(&pool).await, &keys.new, &tenants);
    assert_eq!(
        duplicates(&backed_up_ids(&pool).await),
        Vec::<String>::new()
    );
    assert_eq!(run_states(&pool).await, ["finished"]);
}

#[sqlx::test(migrations = false)]
async fn resumed_run_refuses_a_different_new_key(pool: PgPool) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, 200).await;

    let out = rekey_with_keys(&url, &keys, &["run", "--limit", "10", "--batch-size", "4"]);
    assert_eq!(out.status.code(), Some(1), "rows remain: {}", text(&out));
    assert_eq!(
        run_states(&pool).await,
        ["running"],
        "--limit leaves the run open"
    );
    let before = snapshot(&pool).await;

    let (_, other) = keys.another("other.key");
    for mode in ["auto", "reencrypt"] {
        let out = rekey(
            &url,
            &[
                "run",
                "--mode",
                mode,
                "--old-key-file",
                path_str(&keys.old_file),
                "--new-key-file",
                path_str(&other),
            ],
        );
        assert_refused(&out, &["run 1", "open"]);
        assert_eq!(
            snapshot(&pool).await,
            before,
            "the refused call changed the table"
        );
        assert_eq!(run_states(&pool).await, ["running"]);
    }

    let out = rekey_with_keys(&url, &keys, &["run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_all_open_to_seed(&snapshot(&pool).await, &keys.new, &tenants);
    assert_eq!(run_states(&pool).await, ["finished"]);
}

/// Ids of rows whose ciphertexts differ between two snapshots.
fn changed_ids(
    before: &BTreeMap<String, Fields>,
    after: &BTreeMap<String, Fields>,
) -> BTreeSet<String> {
    before
        .iter()
        .filter(|(id, fields)| after.get(*id) != Some(*fields))
        .map(|(id, _)| id.clone())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn limit_acts_on_exactly_n_rows_even_when_batches_hold_current_rows(pool: PgPool) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, 300).await;
    // Every third row is already current, so batches mix skips and work.
    let new = Cipher::new(&keys.new);
    for t in tenants.iter().step_by(3) {
        sqlx::query("UPDATE org_instances SET database_url_encrypted = $2, redis_url_encrypted = $3 WHERE org_id = $1")
            .bind(t.org_id)
            .bind(new.seal(t.database_url.as_bytes()))
            .bind(t.redis_url.as_ref().map(|r| new.seal(r.as_bytes())))
            .execute(&pool)
            .await
            .expect("make row current");
    }
    let mut total = 0;
    for limit in [37, 1, 50] {
        let before = snapshot(&pool).await;
        let line = format!("run --mode reencrypt --workers 2 --batch-size 10 --limit {limit}");
        let out = rekey_with_keys(&url, &keys, &words(&line));
        assert_eq!(out.status.code(), Some(1), "rows remain: {}", text(&out));
        let after = snapshot(&pool).await;
        let changed = changed_ids(&before, &after);
        assert_eq!(
            changed.len(),
            limit,
            "--limit {limit} changed {} rows",
            changed.len()
        );
        let opened = open_all(&after, &new);
        for id in &changed {
            assert!(
                opened[id].0.is_some(),
                "row {id} changed but does not open under the new key"
            );
        }
        total += limit;
        assert_eq!(backed_up_ids(&pool).await.len(), total);
    }
    assert_eq!(run_states(&pool).await, ["running"]);
}

#[sqlx::test(migrations = false)]
async fn org_touches_only_the_named_tenants(pool: PgPool) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, 120).await;
    let chosen: BTreeSet<String> = [3usize, 17, 18, 64, 119]
        .iter()
        .map(|&i| tenants[i].org_id.to_string())
        .collect();
    let before = snapshot(&pool).await;
    let mut args = vec!["run", "--mode", "reencrypt", "--batch-size", "2"];
    for id in &chosen {
        args.extend(["--org", id.as_str()]);
    }
    let out = rekey_with_keys(&url, &keys, &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "every named tenant done: {}",
        text(&out)
    );
    let after = snapshot(&pool).await;
    assert_eq!(changed_ids(&before, &after), chosen);
    let opened = open_all(&after, &Cipher::new(&keys.new));
    for t in tenants
        .iter()
        .filter(|t| chosen.contains(&t.org_id.to_string()))
    {
        assert_eq!(
            opened[&t.org_id.to_string()].0.as_deref(),
            Some(t.database_url.as_bytes())
        );
    }
}

#[sqlx::test(migrations = false)]
async fn finalize_refuses_before_verify_passed_and_purges_after(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 100).await;
    let backups = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM rekey.backups")
            .fetch_one(&pool)
            .await
            .expect("count backups")
    };

    // While the run is open.
    let out = rekey_with_keys(&url, &keys, &["run", "--limit", "30", "--batch-size", "10"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_refused(&rekey(&url, &["finalize", "--run", "1"]), &["run 1"]);
    assert!(backups().await > 0);

    // Finished but not verified.
    let out = rekey_with_keys(&url, &keys, &["run", "--batch-size", "10"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let held = backups().await;
    assert!(held > 0);
    assert_refused(&rekey(&url, &["finalize", "--run", "1"]), &["verify"]);
    assert_eq!(backups().await, held, "a refused finalize purged backups");

    let out = rekey_with_keys(&url, &keys, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = rekey(&url, &["finalize", "--run", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(backups().await, 0);
    let purged: bool =
        sqlx::query_scalar("SELECT backups_purged_at IS NOT NULL FROM rekey.runs WHERE id = 1")
            .fetch_one(&pool)
            .await
            .expect("run 1");
    assert!(purged);
}

#[sqlx::test(migrations = false)]
async fn no_key_password_or_url_appears_in_any_output_or_the_journal(pool: PgPool) {
    let OldKeyFleet { keys, tenants, .. } = old_key_fleet_with(&pool, mixed_fleet(300)).await;
    // The server trusts loopback, so a password in the URL is accepted and
    // ignored: it only has to stay out of every output.
    let db_password = "Url-Pa55word-never-printed";
    let mut with_password = url::Url::parse(&db_url(&pool)).expect("URL");
    with_password
        .set_password(Some(db_password))
        .expect("set password");
    let url = with_password.to_string();
    let mut missing_db = with_password.clone();
    missing_db.set_path("/no_such_database_here");

    let mut forbidden = keys.secret_texts();
    forbidden.push(db_password.to_string());
    for t in &tenants {
        forbidden.push(t.password.clone());
        forbidden.push(t.database_url.clone());
        if let Some(redis) = &t.redis_url {
            let parsed = url::Url::parse(redis).expect("redis URL");
            forbidden.push(parsed.password().expect("redis password").to_string());
            forbidden.push(redis.clone());
        }
    }
    let (_, other_key) = keys.another("other.key");
    let mut outputs: Vec<(String, String)> = Vec::new();
    // Read when the run fails: a later run with the same key re-opens the
    // run and clears its reason.
    let mut failed_reasons: Vec<String> = Vec::new();
    let mut record = |what: &str, out: std::process::Output| {
        outputs.push((what.to_string(), text(&out)));
        out
    };

    let keygen_out = keys.dir.path().join("generated.key");
    for json in [false, true] {
        let j: &[&str] = if json { &["--json"] } else { &[] };
        // The same command with and without --json.
        macro_rules! with {
            ($($arg:expr),* $(,)?) => {
                [&[$($arg),*][..], j].concat()
            };
        }
        record("keygen", rekey(&url, &with!("keygen")));
        record(
            "keygen base64",
            rekey(&url, &with!("keygen", "--format", "base64")),
        );
        let _ = std::fs::remove_file(&keygen_out);
        record(
            "keygen --out",
            rekey(&url, &with!("keygen", "--out", path_str(&keygen_out))),
        );
        record("plan", rekey_with_keys(&url, &keys, &with!("plan")));
        record(
            "plan missing db",
            rekey_with_keys(missing_db.as_str(), &keys, &with!("plan")),
        );
        let out = record(
            "run reencrypt",
            rekey_with_keys(
                &url,
                &keys,
                &with!("run", "--mode", "reencrypt", "--batch-size", "16"),
            ),
        );
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        let reasons: Vec<Option<String>> = sqlx::query_scalar("SELECT reason FROM rekey.runs")
            .fetch_all(&pool)
            .await
            .expect("run reasons");
        failed_reasons.extend(reasons.into_iter().flatten());
        record(
            "run auto (gate)",
            rekey_with_keys(&url, &keys, &with!("run")),
        );
        record("verify", rekey_with_keys(&url, &keys, &with!("verify")));
        record("status", rekey(&url, &with!("status")));
        record(
            "finalize refused",
            rekey(&url, &with!("finalize", "--run", "1")),
        );
        record(
            "run other key",
            rekey(
                &url,
                &with!(
                    "run",
                    "--limit",
                    "5",
                    "--new-key-file",
                    path_str(&other_key),
                    "--old-key-file",
                    path_str(&keys.old_file),
                ),
            ),
        );
    }
    let mut cmd = rekey_cmd(&url, &["run", "--mode", "reencrypt"]);
    cmd.args(key_args(&keys)).env("RUST_LOG", "debug");
    record("run with RUST_LOG=debug", cmd.output().expect("run rekey"));

    // Clear the undecryptable rows so a run finishes and can be finalized.
    let undecryptable: Vec<uuid::Uuid> = tenants
        .iter()
        .filter(|t| t.kind == rekey::db::seed::SeedKind::Undecryptable)
        .map(|t| t.org_id)
        .collect();
    assert!(!undecryptable.is_empty());
    sqlx::query("DELETE FROM org_instances WHERE org_id = ANY($1)")
        .bind(&undecryptable)
        .execute(&pool)
        .await
        .expect("delete undecryptable rows");
    let out = record(
        "run to finish",
        rekey_with_keys(&url, &keys, &["run", "--json"]),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let run_id = run_summary(&out)["run_id"]
        .as_i64()
        .expect("run id")
        .to_string();
    for j in [&[][..], &["--json"][..]] {
        record(
            "verify ok",
            rekey_with_keys(&url, &keys, &[&["verify"], j].concat()),
        );
        record(
            "status ok",
            rekey(&url, &[&["status", "--run", &run_id], j].concat()),
        );
    }
    let out = record("finalize", rekey(&url, &["finalize", "--run", &run_id]));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    record(
        "finalize --json again",
        rekey(&url, &["finalize", "--run", &run_id, "--json"]),
    );

    let journal: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT reason FROM rekey.runs UNION ALL SELECT summary::text FROM rekey.runs
         UNION ALL SELECT last_error FROM rekey.items",
    )
    .fetch_all(&pool)
    .await
    .expect("journal text");
    assert!(
        failed_reasons.iter().any(|r| r.contains("rows left")),
        "a failed run records its reason"
    );
    let journal = journal.into_iter().flatten().chain(failed_reasons);
    for (i, t) in journal.enumerate() {
        outputs.push((format!("journal text {i}"), t));
    }

    for (what, out) in &outputs {
        for secret in &forbidden {
            assert!(
                !out.contains(secret.as_str()),
                "{what} printed a secret ({} chars): {out}",
                secret.len()
            );
        }
    }
}

/// The in-place write reads without locks, so its one statement must hold
/// the line itself: a row changed since the read is not overwritten, a row
/// the control plane holds locked is skipped without waiting, and only the
/// rows written are backed up; rows to re-provision are queued with it.
#[sqlx::test(migrations = false)]
async fn the_unlocked_batch_write_skips_changed_and_locked_rows_and_backs_up_only_what_it_wrote(
    pool: PgPool,
) {
    use rekey::db::org_instances::{read_range, swap_unlocked_batch, RowFilter, Swap};
    let table = reference_table(&pool).await;
    rekey::db::migrate(&pool).await.expect("journal schema");
    let run_id: i64 = sqlx::query_scalar(
        "INSERT INTO rekey.runs (mode, new_key_id, target_table) VALUES ('auto', 'k', 't') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let mut ids: Vec<uuid::Uuid> = (0..4).map(|_| uuid::Uuid::new_v4()).collect();
    ids.sort();
    for (n, id) in ids.iter().enumerate() {
        insert_row(&pool, *id, Some(format!("db-{n}").as_bytes()), None).await;
    }
    let rows = read_range(&pool, &table, None, None, &RowFilter::default(), 10)
        .await
        .unwrap();
    assert_eq!(rows.len(), 4);
    assert!(
        rows.iter().all(|r| r.tid.is_some()),
        "the read carries addresses"
    );
    let [changed, locked, written, queued] = [&rows[0], &rows[1], &rows[2], &rows[3]];

    // The control plane rewrites one row and holds another.
    sqlx::query("UPDATE org_instances SET database_url_encrypted = 'cp' WHERE org_id::text = $1")
        .bind(&changed.id)
        .execute(&pool)
        .await
        .unwrap();
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM org_instances WHERE org_id::text = $1 FOR UPDATE")
        .bind(&locked.id)
        .execute(&mut *holder)
        .await
        .unwrap();

    let swap = |r: &rekey::db::org_instances::StoredRow| Swap {
        id: r.id.clone(),
        tid: r.tid.clone(),
        old_db: r.db.clone(),
        old_redis: r.redis.clone(),
        new_db: Some(b"rotated".to_vec()),
        new_redis: None,
    };
    let swaps = [swap(changed), swap(locked), swap(written)];
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        swap_unlocked_batch(&pool, &table, run_id, &swaps, &[queued]),
    )
    .await
    .expect("a locked row is skipped, not waited for")
    .unwrap();
    holder.rollback().await.unwrap();

    assert_eq!(out.swapped, vec![written.id.clone()]);
    assert_eq!(out.queued, 1);
    assert_eq!(
        out.held, 1,
        "the locked row is told apart from the changed one"
    );
    let db_of = |id: String| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT database_url_encrypted FROM org_instances WHERE org_id::text = $1",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(
        db_of(changed.id.clone()).await,
        b"cp",
        "the control plane's write stands"
    );
    assert_eq!(db_of(locked.id.clone()).await, b"db-1");
    assert_eq!(db_of(written.id.clone()).await, b"rotated");
    let backed: Vec<String> =
        sqlx::query_scalar("SELECT unnest(org_ids) FROM rekey.backups WHERE run_id = $1")
            .bind(run_id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(backed, vec![written.id.clone()]);
    let items: Vec<String> = sqlx::query_scalar("SELECT org_id FROM rekey.items WHERE run_id = $1")
        .bind(run_id)
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(items, vec![queued.id.clone()]);
}
