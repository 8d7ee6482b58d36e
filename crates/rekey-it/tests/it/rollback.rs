//! `rekey rollback`, specified through the real binary: a rotated fleet
//! (100,000 rows plain, or mixed) is put back byte for byte; a row the control plane
//! changed since the run is left and reported; `--dry-run` writes nothing;
//! a finalized, unknown or still open run is refused with nothing changed;
//! SIGKILL at three points and a re-run still converge; tenants the run
//! re-provisioned are listed and left.

use std::collections::BTreeMap;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rekey::db::seed::SeedSpec;
use rekey::envelope::Cipher;
use rekey_testkit::*;
use sqlx::PgPool;

/// A few thousand rows in batches of 100: dozens of backup batches.
const ROWS: u64 = 3000;
const BATCH: &str = "100";

/// Runs `rekey run` in place to the end with `extra` options.
fn run_in_place(url: &str, keys: &Keys, extra: &[&str]) {
    run_expecting(url, keys, extra, 0);
}

/// Runs `rekey run` with `extra` options that leave it open (exit 1).
fn run_partly(url: &str, keys: &Keys, extra: &[&str]) {
    run_expecting(url, keys, extra, 1);
}

fn run_expecting(url: &str, keys: &Keys, extra: &[&str], code: i32) {
    let mut args = vec!["run", "--batch-size", BATCH];
    args.extend(extra);
    let out = rekey_with_keys(url, keys, &args);
    assert_exit(&out, code, "run");
}

/// `rekey rollback --run 1 --json` with `extra` and the keys.
fn rollback(url: &str, keys: &Keys, extra: &[&str]) -> Output {
    let mut args = vec!["rollback", "--run", "1", "--json"];
    args.extend(extra);
    rekey_with_keys(url, keys, &args)
}

/// The run's rollback marks and every backup batch's restore mark, for
/// "nothing in the journal changed" (NULLs when the columns do not exist).
async fn journal_marks(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT to_jsonb(r)::text FROM rekey.runs r
         UNION ALL
         SELECT (to_jsonb(b) - 'org_ids' - 'old_db' - 'old_redis')::text FROM rekey.backups b
         ORDER BY 1",
    )
    .fetch_all(pool)
    .await
    .expect("journal marks")
}

/// Seeds a fleet under the old key, returning the table's state before any run.
async fn seeded(pool: &PgPool, keys: &Keys, spec: SeedSpec) -> BTreeMap<String, Fields> {
    let table = reference_table(pool).await;
    seed_fleet_with(pool, &table, &keys.old, spec).await;
    snapshot(pool).await
}

/// A plain fleet of `rows` under fresh keys, rotated in place by one
/// finished run: where most rollback tests start. Returns the keys, the
/// database URL and every row's ciphertexts from before the run.
async fn rotated_fleet(pool: &PgPool, rows: u64) -> (Keys, String, BTreeMap<String, Fields>) {
    let keys = Keys::new();
    let before = seeded(pool, &keys, plain_fleet(rows)).await;
    let url = db_url(pool);
    run_in_place(&url, &keys, &[]);
    (keys, url, before)
}

/// The size the operator's question is asked at: a fleet of 100,000 rows.
const FLEET: u64 = 100_000;

#[sqlx::test(migrations = false)]
async fn rollback_restores_a_rotated_fleet_byte_for_byte(pool: PgPool) {
    let (keys, url, before) = rotated_fleet(&pool, FLEET).await;
    assert_ne!(snapshot(&pool).await, before, "the run rewrote the rows");
    let out = rekey_with_keys(&url, &keys, &["verify"]);
    assert_exit(&out, 0, "verify");

    let out = rollback(&url, &keys, &[]);
    assert_exit(&out, 0, "rollback");
    assert_eq!(snapshot(&pool).await, before, "every row as before the run");
    let report = run_summary(&out);
    assert_eq!(report["restored"], FLEET);
    assert_eq!(report["rows_backed_up"], FLEET);
    assert_eq!(report["changed_total"], 0);
    assert_eq!(report["rolled_back"], true);

    let out = rekey(&url, &["status", "--run", "1"]);
    assert_exit(&out, 0, "status");
    assert!(text(&out).contains("rolled back"), "{}", text(&out));
    let out = rekey(&url, &["finalize", "--run", "1"]);
    assert_refused(&out, &["rolled back"]);
    let out = rollback(&url, &keys, &[]);
    assert_exit(&out, 0, "a second rollback finds everything done");
    assert_eq!(snapshot(&pool).await, before);
}

/// KMS blobs, NULL Redis URLs, rows already under the new key, and a row
/// the control plane rewrote under the old key mid-run (so that the run
/// backed it up twice): each ends as it stood just before the run last
/// rewrote it.
#[sqlx::test(migrations = false)]
async fn rollback_restores_a_mixed_fleet_to_each_rows_latest_backup(pool: PgPool) {
    let keys = Keys::new();
    let mut spec = plain_fleet(ROWS);
    spec.kms_share = 0.05;
    spec.null_redis_share = 0.3;
    let mut before = seeded(&pool, &keys, spec).await;
    let new = Cipher::new(&keys.new);
    let already_new = uuid::Uuid::new_v4();
    let sealed = new.seal(b"postgres://already-rotated");
    insert_row(&pool, already_new, Some(&sealed), None).await;
    before.insert(already_new.to_string(), (Some(sealed), None));
    let url = db_url(&pool);

    // Half the fleet, then the control plane writes under the old key
    // again into a row the run already rotated, then the rest.
    run_partly(&url, &keys, &["--limit", "1500"]);
    let rewritten: String = sqlx::query_scalar(
        // One with a Redis URL: the run's re-walk backs up that field too,
        // already under the new key, and rollback must put back the one
        // from before the run.
        "SELECT u.org_id FROM rekey.backups b, unnest(b.org_ids) AS u(org_id)
           JOIN org_instances o ON o.org_id::text = u.org_id
          WHERE o.redis_url_encrypted IS NOT NULL ORDER BY b.id LIMIT 1",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let written_again =
        Cipher::new(&keys.old).seal(b"postgres://written-again-by-the-control-plane");
    sqlx::query("UPDATE org_instances SET database_url_encrypted = $1 WHERE org_id::text = $2")
        .bind(&written_again)
        .bind(&rewritten)
        .execute(&pool)
        .await
        .unwrap();
    run_in_place(&url, &keys, &[]);
    assert_eq!(
        duplicates(&backed_up_ids(&pool).await),
        std::slice::from_ref(&rewritten),
        "the re-written row was backed up twice"
    );

    let out = rollback(&url, &keys, &[]);
    assert_exit(&out, 0, "rollback");
    let mut expected = before;
    expected.get_mut(&rewritten).unwrap().0 = Some(written_again);
    assert_eq!(snapshot(&pool).await, expected);
    let mut rotated = backed_up_ids(&pool).await;
    rotated.sort();
    rotated.dedup();
    let report = run_summary(&out);
    assert_eq!(report["rows_backed_up"], rotated.len());
    assert_eq!(report["restored"], rotated.len());
}

/// One tenant gets a new URL from the control plane, one is deleted, and
/// 118 more have a field overwritten (under the new key, with another
/// plaintext): all 120 left as they are now, the first 100 listed.
#[sqlx::test(migrations = false)]
async fn rows_changed_since_the_run_are_left_untouched_and_reported(pool: PgPool) {
    let (keys, url, before) = rotated_fleet(&pool, ROWS).await;
    let ids: Vec<String> = before.keys().take(120).cloned().collect();
    let fresh = Cipher::new(&keys.new).seal(b"postgres://changed-after-the-run");
    sqlx::query(
        "UPDATE org_instances SET database_url_encrypted = $1 WHERE org_id::text = ANY($2)",
    )
    .bind(&fresh)
    .bind(&ids[..119])
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("DELETE FROM org_instances WHERE org_id::text = $1")
        .bind(&ids[119])
        .execute(&pool)
        .await
        .unwrap();
    let changed = snapshot(&pool).await;

    let out = rollback(&url, &keys, &[]);
    assert_exit(&out, 1, "rollback leaving rows");
    let after = snapshot(&pool).await;
    let mut expected = before.clone();
    for id in &ids[..119] {
        assert_eq!(after[id], changed[id], "changed row {id} is left as it is");
        expected.insert(id.clone(), changed[id].clone());
    }
    expected.remove(&ids[119]);
    assert_eq!(after, expected, "every other row as before the run");
    let report = run_summary(&out);
    assert_eq!(report["changed_total"], 120);
    assert_eq!(report["restored"], ROWS - 120);
    let listed: Vec<String> = serde_json::from_value(report["changed"].clone()).unwrap();
    let mut want = ids.clone();
    want.sort();
    assert_eq!(listed, want[..100], "the first 100 by id");
    assert_no_secret("rollback output", &text(&out), &keys.secret_texts());

    let out = rekey_with_keys(&url, &keys, &["rollback", "--run", "1"]);
    assert_exit(&out, 1, "re-run");
    assert!(text(&out).contains("first 100 of 120"), "{}", text(&out));
    assert!(text(&out).contains(&want[0]), "{}", text(&out));
}

#[sqlx::test(migrations = false)]
async fn dry_run_counts_and_changes_nothing(pool: PgPool) {
    let (keys, url, _) = rotated_fleet(&pool, ROWS).await;
    let after_run = snapshot(&pool).await;
    let journal = journal_marks(&pool).await;

    let out = rollback(&url, &keys, &["--dry-run"]);
    assert_exit(&out, 0, "dry run");
    let report = run_summary(&out);
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["restored"], ROWS);
    assert_eq!(report["changed_total"], 0);
    assert_eq!(snapshot(&pool).await, after_run, "no row written");
    assert_eq!(journal_marks(&pool).await, journal, "no journal mark");
}

/// The run's migrations without 0003, as an older rekey left them: a dry
/// run must read such a journal and still not migrate it.
#[sqlx::test(migrations = false)]
async fn dry_run_on_a_journal_from_before_rollback_does_not_migrate(pool: PgPool) {
    let (keys, url, _) = rotated_fleet(&pool, 300).await;
    sqlx::raw_sql(
        "ALTER TABLE rekey.runs DROP COLUMN rollback_started_at, DROP COLUMN rolled_back_at;
         ALTER TABLE rekey.backups DROP COLUMN restored_at, DROP COLUMN restored, DROP COLUMN left_ids;
         DELETE FROM rekey._sqlx_migrations WHERE version = 3;",
    )
    .execute(&pool)
    .await
    .unwrap();
    let journal = journal_marks(&pool).await;

    let out = rollback(&url, &keys, &["--dry-run"]);
    assert_exit(&out, 0, "dry run");
    assert_eq!(run_summary(&out)["restored"], 300);
    assert_eq!(journal_marks(&pool).await, journal, "not migrated");
}

#[sqlx::test(migrations = false)]
async fn a_finalized_run_is_refused_and_nothing_changes(pool: PgPool) {
    let (keys, url, _) = rotated_fleet(&pool, 500).await;
    assert_exit(&rekey_with_keys(&url, &keys, &["verify"]), 0, "verify");
    assert_exit(&rekey(&url, &["finalize", "--run", "1"]), 0, "finalize");
    let rows = snapshot(&pool).await;
    let journal = journal_marks(&pool).await;

    let out = rollback(&url, &keys, &[]);
    assert_refused(&out, &["finalized", "nothing to roll back"]);
    assert_eq!(snapshot(&pool).await, rows);
    assert_eq!(journal_marks(&pool).await, journal);
}

#[sqlx::test(migrations = false)]
async fn an_unknown_run_is_refused(pool: PgPool) {
    let keys = Keys::new();
    seeded(&pool, &keys, plain_fleet(50)).await;
    let url = db_url(&pool);
    let out = rollback(&url, &keys, &[]);
    assert_refused(&out, &["no run 1"]);
    assert!(
        !journal_schema_exists(&pool).await,
        "no journal was created"
    );
    run_in_place(&url, &keys, &[]);
    let out = rekey_with_keys(&url, &keys, &["rollback", "--run", "7"]);
    assert_refused(&out, &["no run 7"]);
}

#[sqlx::test(migrations = false)]
async fn the_wrong_keys_are_refused(pool: PgPool) {
    let (keys, url, _) = rotated_fleet(&pool, 50).await;
    let rows = snapshot(&pool).await;
    let (_, other) = keys.another("other.key");
    let out = rekey(
        &url,
        &[
            "rollback",
            "--run",
            "1",
            "--old-key-file",
            path_str(&other),
            "--new-key-file",
            path_str(&keys.new_file),
        ],
    );
    assert_refused(&out, &["old key id"]);
    let out = rekey(
        &url,
        &[
            "rollback",
            "--run",
            "1",
            "--new-key-file",
            path_str(&keys.new_file),
        ],
    );
    assert_refused(&out, &["needs the run's old key"]);
    assert_eq!(snapshot(&pool).await, rows);
}

#[sqlx::test(migrations = false)]
async fn an_open_run_is_refused_until_force_open_then_closed_as_rolled_back(pool: PgPool) {
    let keys = Keys::new();
    let before = seeded(&pool, &keys, plain_fleet(ROWS)).await;
    let url = db_url(&pool);
    run_partly(&url, &keys, &["--limit", "1000"]);
    assert_eq!(run_states(&pool).await, ["running"]);
    let rows = snapshot(&pool).await;

    let out = rollback(&url, &keys, &[]);
    assert_refused(
        &out,
        &["still open", "stop every `rekey run`", "--force-open"],
    );
    assert_eq!(snapshot(&pool).await, rows);
    assert_eq!(run_states(&pool).await, ["running"]);

    let out = rollback(&url, &keys, &["--force-open"]);
    assert_exit(&out, 0, "forced rollback");
    assert_eq!(snapshot(&pool).await, before);
    let (state, reason): (String, Option<String>) =
        sqlx::query_as("SELECT state, reason FROM rekey.runs WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), reason.as_deref()),
        ("failed", Some("rolled back"))
    );
}

/// The control plane refuses the write of one row of the fifth batch (a
/// trigger raises): the four batches before stay restored, the command
/// says it stopped part-way (exit 1), and once the cause is gone the same
/// command finishes the job.
#[sqlx::test(migrations = false)]
async fn a_rollback_stopped_by_an_error_keeps_what_it_restored_and_resumes(pool: PgPool) {
    let (keys, url, before) = rotated_fleet(&pool, 1000).await;
    let refused: String =
        sqlx::query_scalar("SELECT org_ids[1] FROM rekey.backups ORDER BY id OFFSET 4 LIMIT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION refuse_one() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             IF OLD.org_id::text = '{refused}' THEN RAISE EXCEPTION 'write refused'; END IF;
             RETURN NEW;
         END $$;
         CREATE TRIGGER refuse_one BEFORE UPDATE ON org_instances
             FOR EACH ROW EXECUTE FUNCTION refuse_one();"
    ))
    .execute(&pool)
    .await
    .unwrap();

    let args = ["rollback", "--run", "1", "--workers", "1"];
    let out = rekey_with_keys(&url, &keys, &args);
    assert_exit(&out, 1, "rollback stopped by an error");
    assert!(text(&out).contains("stopped part-way"), "{}", text(&out));
    assert_eq!(
        batches_restored(&pool).await,
        4,
        "the batches before it stay restored"
    );
    assert_ne!(snapshot(&pool).await, before);

    sqlx::raw_sql("DROP TRIGGER refuse_one ON org_instances")
        .execute(&pool)
        .await
        .unwrap();
    let out = rekey_with_keys(&url, &keys, &args);
    assert_exit(&out, 0, "resumed rollback");
    assert_eq!(snapshot(&pool).await, before);
}

// ---------------------------------------------------------------------------
// SIGKILL during a rollback, then the same command again.
// ---------------------------------------------------------------------------

/// Where to kill the rollback.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// Once the run is marked as being rolled back.
    Begun,
    /// Once this many more batches are restored, with a batch open.
    InFlight { more_batches: i64 },
}

async fn batches_restored(pool: &PgPool) -> i64 {
    let marks: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
                         WHERE attrelid = 'rekey.backups'::regclass AND attname = 'restored_at')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    if !marks {
        return 0;
    }
    sqlx::query_scalar("SELECT count(restored_at) FROM rekey.backups")
        .fetch_one(pool)
        .await
        .unwrap()
}

async fn rollback_begun(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, bool>(
        "SELECT coalesce((to_jsonb(r) ->> 'rollback_started_at') IS NOT NULL, false)
           FROM rekey.runs r WHERE id = 1",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn rekey_transaction_open(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT count(*) > 0 FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'rekey'
            AND xact_start IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn kill_rollback_at(pool: &PgPool, child: &mut std::process::Child, at: KillAt) {
    let target = batches_restored(pool).await
        + match at {
            KillAt::Begun => 0,
            KillAt::InFlight { more_batches } => more_batches,
        };
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert_still_waiting_to_kill(child, deadline, &at);
        let ready = match at {
            KillAt::Begun => rollback_begun(pool).await,
            KillAt::InFlight { .. } => {
                batches_restored(pool).await >= target && rekey_transaction_open(pool).await
            }
        };
        if ready {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    sigkill_running(child, &at);
}

#[sqlx::test(migrations = false)]
async fn killed_three_times_during_a_rollback_then_rerun_converges(pool: PgPool) {
    let keys = Keys::new();
    let before = seeded(&pool, &keys, plain_fleet(4000)).await;
    let url = db_url(&pool);
    // Small batches: many of them to restore, so the rollback is still
    // working at each kill.
    let out = rekey_with_keys(&url, &keys, &["run", "--batch-size", "20"]);
    assert_exit(&out, 0, "run");
    let args = args_with_keys(&["rollback", "--run", "1", "--workers", "1"], &keys);
    let args = strs(&args);
    for at in [
        KillAt::Begun,
        KillAt::InFlight { more_batches: 10 },
        KillAt::InFlight { more_batches: 20 },
    ] {
        let mut child = rekey_cmd(&url, &args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn rekey");
        kill_rollback_at(&pool, &mut child, at).await;
    }
    let killed_at = batches_restored(&pool).await;
    assert!(
        killed_at >= 30,
        "{killed_at} batches restored before the last kill"
    );

    let out = rekey(&url, &args);
    assert_exit(&out, 0, "rollback after kills");
    assert_eq!(snapshot(&pool).await, before, "every row as before the run");
    let out = rollback(&url, &keys, &[]);
    let report = run_summary(&out);
    assert_eq!(report["restored"], 4000, "each row restored once");
    assert_eq!(report["rolled_back"], true);
}

// ---------------------------------------------------------------------------
// Re-provisioned tenants cannot be rolled back.
// ---------------------------------------------------------------------------

/// One tenant the old key never opened, and one the run re-encrypted and
/// then re-provisioned (the control plane wrote a ciphertext under a key
/// nobody has into it mid-run): both listed, both left under the new key.
#[sqlx::test(migrations = false)]
async fn reprovisioned_tenants_are_listed_and_left(pool: PgPool) {
    let table = reference_table(&pool).await;
    let keys = Keys::new();
    let cloud = Cloud::start(fake_config(30, 30));
    let tenants = seed_cloud_fleet(&pool, &table, &keys.old, 12, &cloud).await;
    let url = db_url(&pool);
    let ids: Vec<String> = tenants.iter().map(|t| t.org_id.to_string()).collect();
    let (lost, _) = keys.another("lost.key");
    let lost = Cipher::new(&lost);
    let set_db = |id: String, blob: Vec<u8>| {
        let pool = pool.clone();
        async move {
            sqlx::query(
                "UPDATE org_instances SET database_url_encrypted = $1 WHERE org_id::text = $2",
            )
            .bind(blob)
            .bind(id)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    set_db(ids[0].clone(), lost.seal(b"postgres://never-opened")).await;
    let before = snapshot(&pool).await;

    // Only tenant 1 first (the run stays open), then it is overwritten,
    // then the whole fleet.
    let key_args = key_args(&keys);
    let out = run_cloud(&url, &cloud, &["--org", &ids[1]], &key_args);
    assert_exit(&out, 0, "partial run");
    set_db(ids[1].clone(), lost.seal(b"postgres://overwritten")).await;
    let out = run_cloud(&url, &cloud, &[], &key_args);
    assert_exit(&out, 0, "full run");
    let after_run = snapshot(&pool).await;

    let out = rollback(&url, &keys, &[]);
    assert_exit(&out, 1, "rollback with re-provisioned tenants");
    let report = run_summary(&out);
    let mut listed: Vec<String> = serde_json::from_value(report["reprovisioned"].clone()).unwrap();
    listed.sort();
    let mut want = vec![ids[0].clone(), ids[1].clone()];
    want.sort();
    assert_eq!(listed, want);
    assert_eq!(report["reprovisioned_total"], 2);
    assert_eq!(report["changed_total"], 0);
    let now = snapshot(&pool).await;
    for (id, fields) in &now {
        if want.contains(id) {
            assert_eq!(
                fields, &after_run[id],
                "re-provisioned {id} left as the run left it"
            );
        } else {
            assert_eq!(fields, &before[id], "{id} as before the run");
        }
    }
    let out = rekey_with_keys(&url, &keys, &["rollback", "--run", "1"]);
    assert!(
        text(&out).contains("cannot be rolled back: re-provisioned (old credentials reset)"),
        "{}",
        text(&out)
    );
}
