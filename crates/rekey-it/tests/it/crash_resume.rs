//! Invariant 3, in place: the real binary killed with SIGKILL at any
//! instant and run again converges - every row under the new key with its
//! plaintext unchanged, one run, and every rotated row backed up exactly
//! once with the ciphertexts it had before the run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rekey_testkit::*;
use sqlx::PgPool;

/// Large enough that a debug build is still working when it is killed.
const ROWS: u64 = 20_000;

/// When to kill the running binary.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after it was started (startup, migrations, pre-scan, first batches).
    After(Duration),
    /// Once this many more batches have committed, while batches are open.
    InFlight { more_batches: i64 },
}

/// Batches committed so far (0 before the journal exists).
async fn batches_committed(pool: &PgPool) -> i64 {
    journal_rows(pool, "backups").await
}

/// Transactions the binary has open on this database right now.
async fn open_rekey_transactions(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'rekey'
            AND xact_start IS NOT NULL",
    )
    .fetch_one(pool)
    .await
    .expect("pg_stat_activity")
}

/// Waits for `at`, then kills the child; asserts it was still running.
async fn kill_at(pool: &PgPool, child: &mut std::process::Child, at: KillAt) {
    match at {
        KillAt::After(delay) => tokio::time::sleep(delay).await,
        KillAt::InFlight { more_batches } => {
            let target = batches_committed(pool).await + more_batches;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                assert_still_waiting_to_kill(child, deadline, &at);
                if batches_committed(pool).await >= target
                    && open_rekey_transactions(pool).await > 0
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    }
    sigkill_running(child, &at);
}

/// The backup's (old database, old Redis) ciphertexts by org id.
async fn backups_by_id(pool: &PgPool) -> BTreeMap<String, Fields> {
    let sql = "SELECT unnest(org_ids), unnest(old_db), unnest(old_redis) FROM rekey.backups";
    let rows: Vec<IdFields> = sqlx::query_as(sql).fetch_all(pool).await.expect("backups");
    rows.into_iter().map(|(id, d, r)| (id, (d, r))).collect()
}

/// Seeds the fleet, runs the binary and kills it at each of `kills` in turn,
/// then runs it to the end and checks convergence.
async fn killed_and_resumed_converges(pool: PgPool, kills: &[KillAt]) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, ROWS).await;
    let before = snapshot(&pool).await;
    let args = args_with_keys(&["run", "--workers", "2", "--batch-size", "50"], &keys);
    let args = strs(&args);

    for &at in kills {
        let mut child = rekey_cmd(&url, &args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn rekey");
        kill_at(&pool, &mut child, at).await;
    }
    let killed_at_batches = batches_committed(&pool).await;

    let out = rekey(&url, &args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "resume after kills at {kills:?}: {}",
        text(&out)
    );
    assert_all_open_to_seed(&snapshot(&pool).await, &keys.new, &tenants);
    assert_eq!(
        run_states(&pool).await,
        ["finished"],
        "exactly one run, finished"
    );

    let ids = backed_up_ids(&pool).await;
    assert_eq!(duplicates(&ids), Vec::<String>::new(), "rows rotated twice");
    assert_eq!(ids.len(), tenants.len(), "every row backed up once");
    assert_eq!(
        backups_by_id(&pool).await,
        before,
        "the backup holds the pre-run ciphertexts"
    );
    assert!(
        batches_committed(&pool).await > killed_at_batches,
        "the resumed run did the rest of the work"
    );

    let out = rekey_with_keys(&url, &keys, &["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
}

#[sqlx::test(migrations = false)]
async fn killed_30ms_after_start_then_resumed_converges(pool: PgPool) {
    killed_and_resumed_converges(pool, &[KillAt::After(Duration::from_millis(30))]).await;
}

#[sqlx::test(migrations = false)]
async fn killed_with_batches_in_flight_then_resumed_converges(pool: PgPool) {
    killed_and_resumed_converges(pool, &[KillAt::InFlight { more_batches: 25 }]).await;
}

/// Each resume is killed in turn, at a different point of its own start
/// or walk, before one is let finish.
#[sqlx::test(migrations = false)]
async fn killed_again_and_again_while_resuming_still_converges(pool: PgPool) {
    killed_and_resumed_converges(
        pool,
        &[
            KillAt::After(Duration::from_millis(150)),
            KillAt::InFlight { more_batches: 10 },
            KillAt::After(Duration::from_millis(400)),
            KillAt::InFlight { more_batches: 5 },
            KillAt::After(Duration::from_millis(60)),
        ],
    )
    .await;
}
