//! A run rides out what a production database does to it: a connection
//! terminated mid-run (failover, an operator's `pg_terminate_backend`) is
//! retried on a fresh connection, and rows the control plane keeps locked
//! are waited for once per run, then reported, with exit code 1. A
//! database lost for good, or gone silent, ends the command within its
//! bounds: a run stops open with its report and exit code 1, any other
//! command with a clear error.

use std::time::{Duration, Instant};

use rekey_testkit::*;
use sqlx::PgPool;

/// Large enough that a debug build is still working when its connections
/// are cut (small batches make many transactions).
const ROWS: u64 = 20_000;

/// The in-place run of these tests: small batches on two workers.
const SMALL_BATCHES: &str = "run --mode reencrypt --workers 2 --batch-size 50";

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
    let run: Vec<&str> = SMALL_BATCHES.split(' ').collect();
    let args = args_with_keys(&run, &keys);
    let mut child = spawn_piped(&url, &args);
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
    let mut child = spawn_piped(&url, &args);
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

/// Waits for the binary to end, killing it and failing the test if it is
/// still running after `limit` (a hang, which these tests exist to catch).
fn finish_within(child: std::process::Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let out = child.wait_with_output().expect("rekey output");
        let _ = tx.send(());
        out
    });
    if rx.recv_timeout(limit).is_err() {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        let out = waiter.join().expect("waiter");
        panic!(
            "rekey still running after {limit:?}: it hangs\n{}",
            text(&out)
        );
    }
    waiter.join().expect("waiter")
}

#[sqlx::test(migrations = false)]
async fn a_server_that_accepts_and_never_answers_fails_plan_within_the_connect_bound(pool: PgPool) {
    let (_proxy, url) = FaultProxy::in_front_of(&db_url(&pool), Fault::Silent);
    let keys = Keys::new();
    let args = args_with_keys(&["plan"], &keys);
    let child = spawn_piped(&url, &args);
    let out = tokio::task::spawn_blocking(move || finish_within(child, Duration::from_secs(120)))
        .await
        .expect("waiter thread");
    assert_exit(&out, 2, "plan against a server that never answers");
    assert!(
        text(&out).contains("no answer within 10 s"),
        "{}",
        text(&out)
    );
    assert!(!journal_schema_exists(&pool).await, "nothing changed");
}

#[sqlx::test(migrations = false)]
async fn a_statement_the_server_never_answers_ends_plan_and_verify_with_a_clear_error(
    pool: PgPool,
) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 100).await;
    // The reads of the table name its quoted column; the connection that
    // sends one goes silent, the way a frozen server does mid-session.
    let (_proxy, url) =
        FaultProxy::in_front_of(&url, Fault::SilentOn("\"database_url_encrypted\""));
    for command in ["plan", "verify"] {
        let args = args_with_keys(&[command, "--statement-timeout-secs", "2"], &keys);
        let child = spawn_piped(&url, &args);
        let out =
            tokio::task::spawn_blocking(move || finish_within(child, Duration::from_secs(120)))
                .await
                .expect("waiter thread");
        assert_exit(&out, 2, &format!("{command} on a server gone silent"));
        assert!(
            text(&out).contains("no answer from the database within 2s"),
            "{command}: {}",
            text(&out)
        );
        assert_no_secret(command, &text(&out), &keys.secret_texts());
    }
}

/// A 20,000-row in-place run through `proxy`'s `url`, cut to the fault
/// `fault` once it has committed some batches.
async fn run_until_the_database_fails(
    pool: &PgPool,
    fault: Fault,
    extra: &[&str],
) -> (OldKeyFleet, FaultProxy, String, std::process::Output) {
    let fleet = old_key_fleet(pool, ROWS).await;
    let (proxy, url) = FaultProxy::in_front_of(&fleet.url, Fault::Pass);
    let mut run: Vec<&str> = SMALL_BATCHES.split(' ').collect();
    run.extend(["--db-retry-secs", "3"]);
    run.extend(extra);
    let args = args_with_keys(&run, &fleet.keys);
    let mut child = spawn_piped(&url, &args);
    wait_mid_run(pool, &mut child, 10).await;
    proxy.set(fault);
    let out = tokio::task::spawn_blocking(move || finish_within(child, Duration::from_secs(180)))
        .await
        .expect("waiter thread");
    (fleet, proxy, url, out)
}

#[sqlx::test(migrations = false)]
async fn a_database_lost_for_good_mid_run_stops_it_open_with_its_report_then_it_resumes(
    pool: PgPool,
) {
    let (OldKeyFleet { keys, tenants, .. }, proxy, url, out) =
        run_until_the_database_fails(&pool, Fault::Cut, &[]).await;
    assert_exit(&out, 1, "a run whose database stayed unreachable");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let run_id = 1;
    assert!(
        stdout.contains(&format!("run {run_id}: stopped — database connection"))
            && stdout.contains("this invocation, over")
            && stdout.contains(&format!(
                "next: run {run_id} is open: run the same command to resume"
            )),
        "the report of the stopped run: {}",
        text(&out)
    );
    // The rows walked it reports are the rows it rewrote.
    let walked: u64 = stdout
        .split("rows walked ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("rows walked in the report");
    assert!(walked > 0 && walked < ROWS, "{stdout}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run 1 is open"),
        "{}",
        text(&out)
    );
    assert_eq!(run_states(&pool).await, vec!["running".to_string()]);
    assert_no_secret("stopped run", &text(&out), &keys.secret_texts());

    proxy.set(Fault::Pass);
    let run: Vec<&str> = SMALL_BATCHES.split(' ').collect();
    let args = args_with_keys(&run, &keys);
    let again = rekey(&url, &strs(&args));
    assert_exit(&again, 0, "the same command once the database is back");
    assert_all_open_to_seed(&snapshot(&pool).await, &keys.new, &tenants);
    assert_eq!(run_states(&pool).await, vec!["finished".to_string()]);
}

#[sqlx::test(migrations = false)]
async fn a_database_gone_silent_mid_run_ends_it_within_its_bounds_with_a_stopped_event(
    pool: PgPool,
) {
    let (OldKeyFleet { keys, .. }, _proxy, _url, out) = run_until_the_database_fails(
        &pool,
        Fault::Silent,
        &["--statement-timeout-secs", "2", "--json"],
    )
    .await;
    assert_exit(&out, 1, "a run whose database went silent");
    let lines = json_lines(&out);
    let last = lines.last().expect("a JSON line");
    assert_eq!(last["event"], "stopped", "{last}");
    assert_eq!(last["run_id"], 1, "{last}");
    let reason = last["reason"].as_str().expect("a reason");
    assert!(
        reason.contains("no answer from the database within 2s")
            || reason.contains("timed out waiting for a connection"),
        "{reason}"
    );
    assert!(last["progress"]["rows_walked"].as_u64() > Some(0), "{last}");
    let finished = lines
        .iter()
        .find(|l| l["event"] == "run_finished")
        .expect("run_finished");
    assert_eq!(finished["state"], "running", "{finished}");
    assert_eq!(run_states(&pool).await, vec!["running".to_string()]);
    assert_no_secret("silent run", &text(&out), &keys.secret_texts());
}
