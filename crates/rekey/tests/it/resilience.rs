//! A run rides out what a production database does to it: a connection
//! terminated mid-run (failover, an operator's `pg_terminate_backend`) is
//! retried on a fresh connection, and rows the control plane keeps locked
//! are waited for once per run, then reported, with exit code 1.

use std::time::{Duration, Instant};

use rekey_testkit::*;
use sqlx::PgPool;

/// Large enough that a debug build is still working when its connections
/// are cut (small batches make many transactions).
const ROWS: u64 = 20_000;

/// Waits until the running binary has committed at least `batches` batches
/// and still has a transaction open; fails the test if it ended first.
async fn wait_mid_run(pool: &PgPool, child: &mut std::process::Child, batches: i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the run ended before its connections could be cut"
        );
        assert!(Instant::now() < deadline, "the run never got going");
        if journal_rows(pool, "backups").await >= batches {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Terminates every backend of the `rekey` binary on this database.
async fn terminate_rekey_backends(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'rekey') t",
    )
    .fetch_one(pool)
    .await
    .expect("pg_terminate_backend")
}

#[sqlx::test(migrations = false)]
async fn connections_terminated_mid_run_are_retried_and_the_run_finishes(pool: PgPool) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, ROWS).await;
    let run: Vec<&str> = "run --mode reencrypt --workers 2 --batch-size 50"
        .split(' ')
        .collect();
    let args = args_with_keys(&run, &keys);
    let mut child = rekey_cmd(&url, &strs(&args))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rekey");
    wait_mid_run(&pool, &mut child, 20).await;
    let cut = terminate_rekey_backends(&pool).await;
    assert!(cut > 0, "no rekey backend to terminate");
    let done_before_second_cut = journal_rows(&pool, "backups").await;
    wait_mid_run(&pool, &mut child, done_before_second_cut + 20).await;
    terminate_rekey_backends(&pool).await;
    let out = child.wait_with_output().expect("rekey output");
    assert_exit(&out, 0, "a run whose connections were cut twice");
    let after = snapshot(&pool).await;
    assert_all_open_to_seed(&after, &keys.new, &tenants);
    assert_eq!(run_states(&pool).await, vec!["finished".to_string()]);
    assert_no_secret("run output", &text(&out), &keys.secret_texts());
}

/// Holds `FOR UPDATE` locks on `ids` in a transaction of its own, the way a
/// control-plane request stuck mid-transaction would, until dropped.
async fn lock_rows(pool: &PgPool, ids: &[String]) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let mut tx = pool.begin().await.expect("begin");
    let locked: Vec<String> = sqlx::query_scalar(
        "SELECT org_id::text FROM org_instances WHERE org_id::text = ANY($1) FOR UPDATE",
    )
    .bind(ids)
    .fetch_all(&mut *tx)
    .await
    .expect("lock rows");
    assert_eq!(locked.len(), ids.len());
    tx
}

/// The 2,000-row fleet of the lock tests, the ids of its first three rows
/// and the transaction of another session that holds them locked.
async fn fleet_with_locked_rows(
    pool: &PgPool,
) -> (
    OldKeyFleet,
    Vec<String>,
    sqlx::Transaction<'static, sqlx::Postgres>,
) {
    let fleet = old_key_fleet(pool, 2_000).await;
    let locked: Vec<String> = fleet
        .tenants
        .iter()
        .take(3)
        .map(|t| t.org_id.to_string())
        .collect();
    let guard = lock_rows(pool, &locked).await;
    (fleet, locked, guard)
}

/// An in-place run, 4 workers of 100-row batches, that waits at most
/// `secs` for rows someone else holds locked.
fn reencrypt_waiting_for_locks(secs: &str) -> [&str; 9] {
    [
        "run",
        "--mode",
        "reencrypt",
        "--workers",
        "4",
        "--batch-size",
        "100",
        "--lock-wait-secs",
        secs,
    ]
}

#[sqlx::test(migrations = false)]
async fn rows_kept_locked_past_the_lock_wait_are_reported_and_the_run_exits_1(pool: PgPool) {
    let (OldKeyFleet { keys, url, .. }, locked, guard) = fleet_with_locked_rows(&pool).await;
    let mut run = vec!["--json"];
    run.extend(reencrypt_waiting_for_locks("2"));
    let args = args_with_keys(&run, &keys);
    let out = rekey(&url, &strs(&args));
    guard.rollback().await.expect("release the locks");
    assert_exit(&out, 1, "a run facing rows locked past its lock wait");
    let report = &run_summary(&out);
    assert_eq!(report["left_total"], 3, "{report}");
    let left: Vec<&str> = report["left"]
        .as_array()
        .expect("left rows")
        .iter()
        .map(|l| {
            assert!(
                l["reason"]
                    .as_str()
                    .unwrap_or("")
                    .contains("locked by another session"),
                "{l}"
            );
            l["org_id"].as_str().expect("org_id")
        })
        .collect();
    let mut expected: Vec<&str> = locked.iter().map(String::as_str).collect();
    let mut left_sorted = left.clone();
    left_sorted.sort_unstable();
    expected.sort_unstable();
    assert_eq!(left_sorted, expected);
    assert_eq!(report["reencrypted"], 2_000 - 3);
    assert_eq!(run_states(&pool).await, vec!["failed".to_string()]);
}

#[sqlx::test(migrations = false)]
async fn rows_locked_for_a_while_are_waited_for_and_rotated(pool: PgPool) {
    let (OldKeyFleet { keys, tenants, url }, _, guard) = fleet_with_locked_rows(&pool).await;
    let args = args_with_keys(&reencrypt_waiting_for_locks("600"), &keys);
    let mut child = rekey_cmd(&url, &strs(&args))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn rekey");
    // Release the locks once every other row has been rotated: the run is
    // then waiting for exactly the locked ones.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "the run ended while rows were locked"
        );
        assert!(
            Instant::now() < deadline,
            "the unlocked rows were never rotated"
        );
        if journal_rows(&pool, "backups").await > 0 && backed_up_ids(&pool).await.len() >= 2_000 - 3
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    guard.rollback().await.expect("release the locks");
    let out = child.wait_with_output().expect("rekey output");
    assert_exit(
        &out,
        0,
        "a run whose locked rows were released within the lock wait",
    );
    assert_all_open_to_seed(&snapshot(&pool).await, &keys.new, &tenants);
}

#[sqlx::test(migrations = false)]
async fn until_quiet_keeps_walking_while_the_control_plane_still_writes_under_the_old_key(
    pool: PgPool,
) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, 500).await;
    let old = rekey::envelope::Cipher::new(&keys.old);
    // A control-plane instance not yet restarted: it keeps writing rows
    // under the old key for a while after the run has started.
    let writer = {
        let pool = pool.clone();
        let ids: Vec<uuid::Uuid> = tenants.iter().map(|t| t.org_id).collect();
        tokio::spawn(async move {
            let mut written = std::collections::BTreeMap::new();
            for (i, id) in ids.iter().cycle().take(40).enumerate() {
                let plain = format!("postgresql://u:p{i}@db-{i}.internal/neondb");
                sqlx::query(
                    "UPDATE org_instances SET database_url_encrypted = $2 WHERE org_id = $1",
                )
                .bind(id)
                .bind(old.seal(plain.as_bytes()))
                .execute(&pool)
                .await
                .expect("old-key write");
                written.insert(*id, plain);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            written
        })
    };
    let args = args_with_keys(
        &["run", "--mode", "reencrypt", "--until-quiet", "3s"],
        &keys,
    );
    // The binary runs on a blocking thread so the writer keeps writing.
    let out = tokio::task::spawn_blocking(move || rekey(&url, &strs(&args)))
        .await
        .expect("rekey thread");
    let written = writer.await.expect("writer");
    assert_exit(&out, 0, "a run with --until-quiet after the writes stopped");
    let new = rekey::envelope::Cipher::new(&keys.new);
    let after = snapshot(&pool).await;
    for (id, plain) in &written {
        let (db, _) = &after[&id.to_string()];
        let opened = db.as_deref().and_then(|ct| new.open(ct));
        assert_eq!(
            opened.as_deref(),
            Some(plain.as_bytes()),
            "{id}: the last old-key write was not rotated"
        );
    }
    assert_eq!(run_states(&pool).await, vec!["finished".to_string()]);
}
