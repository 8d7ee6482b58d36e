//! A run's lifecycle as the journal records it: one run per new key (a
//! later `run` re-opens the ended run rather than starting a second one),
//! `verify`, `status` and `finalize` naming that run, a refused command
//! leaving the database as it was, the summary written when a run closes,
//! the metrics file never replacing a file it did not write, and SIGTERM
//! handled like the first Ctrl-C.

use rekey::db::seed::{SeedKind, SeedSpec, SeedTenant};
use rekey_testkit::*;
use sqlx::PgPool;

/// `rekey run --json` with the test's keys and `extra`.
fn run_json(url: &str, keys: &Keys, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "--json"];
    args.extend_from_slice(extra);
    rekey_with_keys(url, keys, &args)
}

/// Backup batches the journal holds for `run_id`.
async fn backup_batches(pool: &PgPool, run_id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM rekey.backups WHERE run_id = $1")
        .bind(run_id)
        .fetch_one(pool)
        .await
        .unwrap()
}

// ---------------------------------------------------------------------------
// One run per new key.
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn a_second_run_with_the_same_new_key_reopens_the_first_and_finalize_purges_its_backups(
    pool: PgPool,
) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, 120).await;

    let first = run_json(&url, &keys, &["--batch-size", "20"]);
    assert_exit(&first, 0, "first run");
    assert_eq!(run_summary(&first)["start"], "started");
    let held = backup_batches(&pool, 1).await;
    assert!(held > 0, "the first run backed up what it rewrote");

    let second = run_json(&url, &keys, &[]);
    assert_exit(&second, 0, "second run with the same keys");
    let report = run_summary(&second);
    assert_eq!(report["run_id"], 1, "{report}");
    assert_eq!(report["start"], "reopened", "{report}");
    assert_eq!(run_states(&pool).await, ["finished"], "no second run");

    let verify = rekey_with_keys(&url, &keys, &["verify"]);
    assert_exit(&verify, 0, "verify");
    assert!(
        text(&verify).contains("recorded run 1 as verified"),
        "{}",
        text(&verify)
    );

    let status = rekey(&url, &["status"]);
    assert_exit(&status, 0, "status");
    assert!(
        text(&status).starts_with("run 1: finished"),
        "{}",
        text(&status)
    );
    assert!(
        text(&status).contains("re-opened 1 time(s)"),
        "{}",
        text(&status)
    );
    assert!(
        text(&status).contains("next: rekey finalize --run 1"),
        "{}",
        text(&status)
    );

    assert_refused(&rekey(&url, &["finalize", "--run", "2"]), &["no run 2"]);
    let out = rekey(&url, &["finalize", "--run", "1"]);
    assert_exit(&out, 0, "finalize run 1");
    assert!(
        text(&out).contains(&format!("purged {held} backup batches")),
        "{}",
        text(&out)
    );
    assert_eq!(
        journal_rows(&pool, "backups").await,
        0,
        "every backup purged"
    );
    assert_all_open_to_seed(&snapshot(&pool).await, &keys.new, &tenants);
}

#[sqlx::test(migrations = false)]
async fn the_journal_refuses_a_second_run_for_one_new_key(pool: PgPool) {
    rekey::db::migrate(&pool).await.expect("migrate");
    let insert = "INSERT INTO rekey.runs (mode, new_key_id, target_table, state)
                  VALUES ('auto', 'k1', 'org_instances', $1)";
    sqlx::query(insert)
        .bind("finished")
        .execute(&pool)
        .await
        .unwrap();
    let second = sqlx::query(insert).bind("finished").execute(&pool).await;
    let err = second.expect_err("a second run for key k1 must be refused");
    assert!(
        err.to_string().contains("runs_one_per_new_key"),
        "refused by the wrong constraint: {err}"
    );
}

#[sqlx::test(migrations = false)]
async fn a_run_that_gave_tenants_up_is_reopened_and_retries_them(pool: PgPool) {
    let table = reference_table(&pool).await;
    let keys = Keys::new();
    let mut cloud = Cloud::start(fake_config(20, 20));
    let tenants = seed_cloud_fleet(&pool, &table, &keys.old, 4, &cloud).await;
    let url = db_url(&pool);
    cloud.configure(|c| c.error_rate = 1.0);
    let extra = ["--json", "--max-attempts", "1"];

    let out = run_cloud(&url, &cloud, &extra, &new_key_only(&keys));
    assert_exit(&out, 1, "every tenant given up");
    assert_eq!(run_states(&pool).await, ["failed"]);
    // Given up; with the cloud down, removing what they may have created
    // is owed to the next run.
    let states = item_states(&pool).await;
    let given_up = states.get("failed").unwrap_or(&0) + states.get("owed").unwrap_or(&0);
    assert_eq!(given_up, 4, "{states:?}");
    let status = text(&rekey(&url, &["status"]));
    assert!(status.contains(" after 1 attempt: "), "{status}");
    assert!(status.contains("(after 1 attempt)"), "{status}");
    assert!(!status.contains("1 attempts"), "{status}");
    assert!(
        status.contains("next: fix what the reason says, then run the same `rekey run` command again: it re-opens run 1"),
        "{status}"
    );

    cloud.configure(|c| c.error_rate = 0.0);
    let mut out = run_cloud(&url, &cloud, &extra, &new_key_only(&keys));
    if out.status.code() == Some(1) {
        // Removing what the first attempts may have created was owed: the
        // invocation that settles it reports those tenants given up, at
        // the step they were given up at (not `compensate`), and the same
        // command once more retries them.
        let settled = String::from_utf8_lossy(&out.stdout).to_string();
        for line in settled.lines().filter(|l| l.contains("\"given_up\"")) {
            let event: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_ne!(event["step"], "compensate", "{line}");
        }
        out = run_cloud(&url, &cloud, &extra, &new_key_only(&keys));
    }
    assert_exit(&out, 0, "the same command once the cloud answers");
    let report = run_summary(&out);
    assert_eq!(report["run_id"], 1, "{report}");
    assert_eq!(report["start"], "reopened", "{report}");
    assert_eq!(report["reason"], serde_json::Value::Null, "{report}");
    assert_eq!(run_states(&pool).await, ["finished"]);
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
}

// ---------------------------------------------------------------------------
// A refusal changes nothing.
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn a_run_refused_at_preflight_leaves_no_journal_behind(pool: PgPool) {
    let keys = Keys::new();
    fleet_under_a_third_key(&pool, &keys, 30).await;
    let url = db_url(&pool);
    let before = snapshot(&pool).await;

    // The wrong-old-key gate.
    assert_refused(
        &rekey_with_keys(&url, &keys, &["run"]),
        &["--confirm-reprovision 30"],
    );
    assert!(
        !journal_schema_exists(&pool).await,
        "the gate's refusal created schema rekey"
    );
    // No cloud credentials, the gate acknowledged.
    let out = rekey_with_keys(&url, &keys, &["run", "--confirm-reprovision", "30"]);
    assert_refused(&out, &["NEON_API_KEY"]);
    assert!(
        !journal_schema_exists(&pool).await,
        "the credentials' refusal created schema rekey"
    );

    assert_eq!(snapshot(&pool).await, before);
    assert_refused(&rekey(&url, &["status"]), &["no run in the journal"]);
}

// ---------------------------------------------------------------------------
// The wrong-old-key gate after a run ended.
// ---------------------------------------------------------------------------

/// A fleet with a few tenants sealed under a throwaway key, registered in
/// the fake cloud (a Neon project each).
async fn fleet_with_unopenable(pool: &PgPool, keys: &Keys, cloud: &Cloud) -> Vec<SeedTenant> {
    let table = reference_table(pool).await;
    let mut tenants = rekey::db::seed::tenants(&SeedSpec {
        rows: 40,
        undecryptable_share: 0.1,
        kms_share: 0.0,
        null_redis_share: 0.0,
        seed: 5,
    });
    for (i, t) in tenants.iter_mut().enumerate() {
        t.neon_project_id = format!("proj-{i:07}");
    }
    rekey::db::seed::seed(pool, &table, &keys.old, &tenants)
        .await
        .unwrap();
    cloud.register(&tenants).await;
    tenants
}

#[sqlx::test(migrations = false)]
async fn after_a_failed_run_the_same_key_is_not_refused_by_the_gate(pool: PgPool) {
    let keys = Keys::new();
    let cloud = Cloud::start(fake_config(20, 20));
    let tenants = fleet_with_unopenable(&pool, &keys, &cloud).await;
    let unopenable = tenants
        .iter()
        .filter(|t| t.kind == SeedKind::Undecryptable)
        .count();
    assert!(unopenable > 0 && unopenable * 2 < tenants.len());
    let url = db_url(&pool);
    let keys_args = key_args(&keys);

    // In place only: the unopenable tenants are left and the run fails.
    let out = run_cloud(&url, &cloud, &["--mode", "reencrypt"], &keys_args);
    assert_exit(&out, 1, "reencrypt leaves the unopenable tenants");
    assert_eq!(run_states(&pool).await, ["failed"]);

    // Everything the old key opens is already re-encrypted by that run: the
    // gate counts it, and the tenants left are re-provisioned.
    let out = run_cloud(&url, &cloud, &["--json"], &keys_args);
    assert_exit(&out, 0, "the same key, re-provisioning what is left");
    let report = run_summary(&out);
    assert_eq!(report["run_id"], 1, "{report}");
    assert_eq!(report["reprovisioned"], unopenable, "{report}");
    assert_eq!(run_states(&pool).await, ["finished"]);
}

// ---------------------------------------------------------------------------
// The summary in the journal.
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn the_journal_summary_holds_the_runs_timings(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 200).await;
    let out = run_json(&url, &keys, &["--batch-size", "25"]);
    assert_exit(&out, 0, "run");

    let summary: serde_json::Value = sqlx::query_scalar("SELECT summary FROM rekey.runs")
        .fetch_one(&pool)
        .await
        .unwrap();
    let printed = run_summary(&out);
    for field in ["elapsed_secs", "in_place_secs", "rows_per_sec"] {
        let v = summary[field].as_f64().unwrap_or_default();
        assert!(v > 0.0, "summary {field} is {v}: {summary}");
    }
    assert!(
        summary["passes"].as_u64().unwrap_or_default() >= 1,
        "{summary}"
    );
    assert_eq!(summary["passes"], printed["passes"]);
    assert_eq!(summary["in_place_secs"], printed["in_place_secs"]);
    assert_eq!(summary["rows_per_sec"], printed["rows_per_sec"]);
}

// ---------------------------------------------------------------------------
// --metrics-file replaces only its own file.
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn a_metrics_file_pointed_at_a_key_file_is_refused_before_anything_changes(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 20).await;
    let before = snapshot(&pool).await;
    let new_key = std::fs::read(&keys.new_file).unwrap();
    let old_key = std::fs::read(&keys.old_file).unwrap();

    for key_file in [&keys.new_file, &keys.old_file] {
        let out = rekey_with_keys(&url, &keys, &["run", "--metrics-file", path_str(key_file)]);
        assert_refused(&out, &["--metrics-file", "key file"]);
        assert_no_secret("refusal", &text(&out), &keys.secret_texts());
    }
    assert_eq!(
        std::fs::read(&keys.new_file).unwrap(),
        new_key,
        "new key file changed"
    );
    assert_eq!(
        std::fs::read(&keys.old_file).unwrap(),
        old_key,
        "old key file changed"
    );
    assert!(
        !journal_schema_exists(&pool).await,
        "the refusal created schema rekey"
    );
    assert_eq!(snapshot(&pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn a_metrics_file_replaces_only_a_metrics_file_rekey_wrote(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 20).await;
    let before = snapshot(&pool).await;

    // Another key, not named on this command line: still not a metrics file.
    let (_, stray_key) = keys.another("spare.key");
    let notes = keys.dir.path().join("notes.txt");
    std::fs::write(&notes, "# runbook notes\nstep 1: rotate\n").unwrap();
    for other in [&stray_key, &notes] {
        let held = std::fs::read(other).unwrap();
        let out = rekey_with_keys(&url, &keys, &["run", "--metrics-file", path_str(other)]);
        assert_refused(&out, &["--metrics-file", "not a metrics file rekey wrote"]);
        assert_eq!(
            std::fs::read(other).unwrap(),
            held,
            "{} changed",
            other.display()
        );
    }
    assert!(!journal_schema_exists(&pool).await);
    assert_eq!(snapshot(&pool).await, before);

    // Its own file, from an earlier invocation, it replaces.
    let prom = keys.dir.path().join("rekey.prom");
    let out = rekey_with_keys(
        &url,
        &keys,
        &["run", "--limit", "5", "--metrics-file", path_str(&prom)],
    );
    assert_exit(&out, 1, "a partial run");
    let out = rekey_with_keys(&url, &keys, &["run", "--metrics-file", path_str(&prom)]);
    assert_exit(&out, 0, "the rest, into the same metrics file");
    let written = std::fs::read_to_string(&prom).unwrap();
    assert!(
        written.contains("rekey_run_state{state=\"finished\"} 1")
            && written.contains("rekey_run_info{run=\"1\","),
        "{written}"
    );
}

// ---------------------------------------------------------------------------
// SIGTERM is the first Ctrl-C.
// ---------------------------------------------------------------------------

/// A run of the real binary held mid-batch: the test holds a lock that the
/// batch's backup INSERT waits for, so the process is certainly in the
/// middle of a batch, with rows left, for as long as the test likes.
struct HeldRun {
    child: std::process::Child,
    stderr: std::sync::mpsc::Receiver<String>,
    stdout: std::thread::JoinHandle<String>,
    blocker: sqlx::Transaction<'static, sqlx::Postgres>,
    metrics: std::path::PathBuf,
}

impl HeldRun {
    /// Opens the run with a first `--limit` invocation (so the journal
    /// exists to lock), locks rekey.backups, and starts the run that will
    /// wait on it; returns once its batch waits for the lock.
    async fn start(pool: &PgPool, keys: &Keys) -> HeldRun {
        let url = db_url(pool);
        let out = rekey_with_keys(&url, keys, &["run", "--mode", "reencrypt", "--limit", "1"]);
        assert_exit(&out, 1, "the opening --limit run");
        let mut blocker = pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE rekey.backups IN SHARE ROW EXCLUSIVE MODE")
            .execute(&mut *blocker)
            .await
            .unwrap();
        let metrics = keys.dir.path().join("held.prom");
        let mut run: Vec<&str> = "run --json --mode reencrypt --workers 1 --batch-size 20"
            .split(' ')
            .collect();
        run.extend(["--metrics-file", path_str(&metrics)]);
        let args = args_with_keys(&run, keys);
        let mut child = spawn_piped(&url, &args);
        let stderr = lines_of(child.stderr.take().unwrap());
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut out, &mut s).unwrap();
            s
        });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !rekey_waits_for_a_lock(pool).await {
            assert_still_waiting_to_kill(&mut child, deadline, &"a batch waiting for the lock");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        HeldRun {
            child,
            stderr,
            stdout,
            blocker,
            metrics,
        }
    }

    fn signal(&self, name: &str) {
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name}");
    }

    /// Waits for a line on stderr containing `needle`.
    fn wait_for_stderr(&self, needle: &str) -> String {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(line) => seen.push_str(&line),
                Err(e) => panic!("no {needle:?} on stderr ({e}); saw: {seen}"),
            }
        }
    }

    /// Releases the lock and waits for the process; returns its exit code
    /// and its stdout.
    async fn release_and_wait(mut self) -> (Option<i32>, String) {
        self.blocker.rollback().await.unwrap();
        let status = self.child.wait().unwrap();
        (status.code(), self.stdout.join().unwrap())
    }
}

/// Lines of a child's stream as they come.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stream)) {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// True when one of the binary's connections waits for a lock.
async fn rekey_waits_for_a_lock(pool: &PgPool) -> bool {
    sqlx::query_scalar(
        "SELECT count(*) > 0 FROM pg_stat_activity
          WHERE datname = current_database() AND application_name = 'rekey'
            AND wait_event_type = 'Lock'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn sigterm_finishes_the_batch_in_flight_and_ends_the_run_open_with_its_report(pool: PgPool) {
    let OldKeyFleet { keys, tenants, .. } = old_key_fleet(&pool, 200).await;
    let held = HeldRun::start(&pool, &keys).await;

    held.signal("TERM");
    held.wait_for_stderr("SIGTERM");
    let metrics = held.metrics.clone();
    let (code, stdout) = held.release_and_wait().await;

    assert_eq!(code, Some(1), "not everything done: {stdout}");
    assert_eq!(
        run_states(&pool).await,
        ["running"],
        "the run stays open to resume"
    );
    // The opening --limit batch and the one in flight; no batch after the signal.
    assert_eq!(journal_rows(&pool, "backups").await, 2);
    let summary = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "summary")
        .unwrap_or_else(|| panic!("no summary: {stdout}"));
    assert_eq!(summary["report"]["state"], "running", "{summary}");
    let written = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        written.contains("rekey_run_finished 1") && written.contains("rekey_run_info{run=\"1\","),
        "{written}"
    );
    assert!(
        written.contains("rekey_run_state{state=\"running\"} 1"),
        "{written}"
    );

    let out = rekey_with_keys(&db_url(&pool), &keys, &["run"]);
    assert_exit(&out, 0, "the same command resumes");
    assert_all_open_to_seed(&snapshot(&pool).await, &keys.new, &tenants);
    assert_eq!(run_states(&pool).await, ["finished"]);
}

#[sqlx::test(migrations = false)]
async fn a_second_signal_after_sigterm_stops_at_once(pool: PgPool) {
    let OldKeyFleet { keys, tenants, .. } = old_key_fleet(&pool, 200).await;
    let mut held = HeldRun::start(&pool, &keys).await;

    held.signal("TERM");
    held.wait_for_stderr("SIGTERM");
    held.signal("INT");
    // It exits while its batch still waits for the lock the test holds.
    let status = held.child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "exit 128 + SIGINT");
    let (_, _) = held.release_and_wait().await;
    assert_eq!(run_states(&pool).await, ["running"]);
    assert_eq!(
        journal_rows(&pool, "backups").await,
        1,
        "the batch in flight rolled back"
    );

    let out = rekey_with_keys(&db_url(&pool), &keys, &["run"]);
    assert_exit(&out, 0, "the same command resumes");
    assert_all_open_to_seed(&snapshot(&pool).await, &keys.new, &tenants);
}

// ---------------------------------------------------------------------------
// Journals written before the rule.
// ---------------------------------------------------------------------------

/// Applies only the first migration, as a version of the tool before one
/// run per new key left the journal.
async fn journal_of_an_older_version(pool: &PgPool) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("0001_journal.sql"),
        include_str!("../../../rekey/migrations/0001_journal.sql"),
    )
    .unwrap();
    let older = sqlx::migrate::Migrator::new(dir.path()).await.unwrap();
    let mut conn = pool.acquire().await.unwrap();
    sqlx::query("CREATE SCHEMA rekey")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SET search_path TO rekey")
        .execute(&mut *conn)
        .await
        .unwrap();
    older.run(&mut *conn).await.unwrap();
    sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn duplicate_runs_of_an_older_journal_are_folded_into_the_first(pool: PgPool) {
    journal_of_an_older_version(&pool).await;
    sqlx::raw_sql(
        "INSERT INTO rekey.runs (id, mode, new_key_id, target_table, state, finished_at, summary)
         VALUES (1, 'auto', 'k1', 'org_instances', 'finished', now(), '{\"run_id\": 1}'),
                (2, 'auto', 'k1', 'org_instances', 'finished', now(), '{\"run_id\": 2}'),
                (3, 'auto', 'k2', 'org_instances', 'finished', now(), NULL),
                (4, 'reencrypt', 'k1', 'org_instances', 'failed', now(), '{\"run_id\": 4}');
         UPDATE rekey.runs SET reason = '1 rows left' WHERE id = 4;
         INSERT INTO rekey.backups (run_id, org_ids, old_db, old_redis)
         VALUES (1, '{a}', '{\"\\\\x01\"}', '{NULL}'), (4, '{b}', '{\"\\\\x02\"}', '{NULL}');
         INSERT INTO rekey.items (run_id, org_id, state) VALUES (4, 'c', 'failed');",
    )
    .execute(&pool)
    .await
    .unwrap();

    rekey::db::migrate(&pool)
        .await
        .expect("migration 0002 applies");

    let runs: Vec<(i64, String, String, String, Option<String>)> =
        sqlx::query_as("SELECT id, new_key_id, mode, state, reason FROM rekey.runs ORDER BY id")
            .fetch_all(&pool)
            .await
            .unwrap();
    let k1_latest = (
        1,
        "k1".to_string(),
        "reencrypt".to_string(),
        "failed".to_string(),
        Some("1 rows left".to_string()),
    );
    let k2 = (
        3,
        "k2".to_string(),
        "auto".to_string(),
        "finished".to_string(),
        None,
    );
    assert_eq!(
        runs,
        [k1_latest, k2],
        "k1's runs fold into run 1 with the latest's state"
    );
    let backup_runs: Vec<i64> = sqlx::query_scalar("SELECT run_id FROM rekey.backups ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(backup_runs, [1, 1], "every backup of k1 is run 1's");
    let item_runs: Vec<i64> = sqlx::query_scalar("SELECT run_id FROM rekey.items")
        .fetch_all(&pool)
        .await
        .unwrap();
    assert_eq!(item_runs, [1]);
}

#[sqlx::test(migrations = false)]
async fn verify_names_the_run_of_its_key_when_it_cannot_record_it(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 30).await;
    // Every row done, but by a deliberately partial invocation: the run is open.
    let out = rekey_with_keys(&url, &keys, &["run", "--limit", "1000"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        run_states(&pool).await,
        ["running"],
        "a --limit run stays open"
    );

    let out = rekey_with_keys(&url, &keys, &["verify"]);
    assert_exit(&out, 0, "every row opens under the new key");
    let said = text(&out);
    assert!(
        said.contains("run 1 of new key")
            && said.contains("is running, so it is not recorded as verified"),
        "{said}"
    );
    assert_refused(
        &rekey(&url, &["finalize", "--run", "1"]),
        &["run 1 is running"],
    );
}

#[sqlx::test(migrations = false)]
async fn a_process_still_in_an_earlier_opening_does_not_close_the_reopened_run(pool: PgPool) {
    use rekey::db::journal::{self, RunStart};
    use rekey::envelope::Mode;
    rekey::db::migrate(&pool).await.unwrap();
    let key = rekey::keys::KeyId("k1".into());
    let open = || journal::open_or_resume(&pool, Mode::Auto, &key, None, "org_instances");
    let nothing = serde_json::json!({});

    let (first, start) = open().await.unwrap();
    assert_eq!(start, RunStart::Started);
    // A second process joins and is slow; the first closes the run.
    let (slow, start) = open().await.unwrap();
    assert_eq!(start, RunStart::Resumed);
    journal::close_run(&pool, &first, true, None, &nothing)
        .await
        .unwrap();
    // A later invocation re-opens it, and only then the slow one concludes.
    let (again, start) = open().await.unwrap();
    assert_eq!(
        (start, again.id, again.reopened),
        (RunStart::Reopened, first.id, 1)
    );
    journal::close_run(&pool, &slow, false, Some("stale"), &nothing)
        .await
        .unwrap();
    let run = journal::get_run(&pool, Some(first.id)).await.unwrap();
    assert_eq!(
        (run.state.as_str(), run.reason),
        ("running", None),
        "the stale close changed the re-opened run"
    );

    journal::close_run(&pool, &again, true, None, &nothing)
        .await
        .unwrap();
    assert_eq!(
        journal::get_run(&pool, None).await.unwrap().state,
        "finished"
    );
}

#[sqlx::test(migrations = false)]
async fn status_on_a_journal_without_runs_says_so(pool: PgPool) {
    rekey::db::migrate(&pool).await.unwrap();
    let out = rekey(&db_url(&pool), &["status"]);
    assert_refused(&out, &["no run in the journal yet"]);
    assert!(!text(&out).contains("run 0"), "{}", text(&out));
}

#[sqlx::test(migrations = false)]
async fn a_journal_an_older_version_wrote_is_read_before_it_is_migrated(pool: PgPool) {
    let keys = Keys::new();
    fleet_under_a_third_key(&pool, &keys, 10).await;
    journal_of_an_older_version(&pool).await;
    sqlx::query(
        "INSERT INTO rekey.runs (mode, new_key_id, target_table, state, finished_at)
         VALUES ('auto', 'older', 'org_instances', 'finished', now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    let url = db_url(&pool);

    // Read-only commands read it as it is (another process may be
    // migrating it at this very moment, too).
    let out = rekey(&url, &["status"]);
    assert_exit(&out, 0, "status on an older journal");
    assert!(text(&out).starts_with("run 1: finished"), "{}", text(&out));
    // A run refused at preflight reads it too, and leaves it unmigrated.
    assert_refused(
        &rekey_with_keys(&url, &keys, &["run"]),
        &["--confirm-reprovision 10"],
    );
    let reopened_column: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                         WHERE table_schema = 'rekey' AND table_name = 'runs'
                           AND column_name = 'reopened')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(!reopened_column, "the refused run migrated the journal");
}

/// `rows` tenants sealed under a key that is neither of `keys`: nothing
/// opens under the old key.
async fn fleet_under_a_third_key(pool: &PgPool, keys: &Keys, rows: u64) {
    let table = reference_table(pool).await;
    let (third, _) = keys.another("third.key");
    seed_fleet(pool, &table, &third, rows).await;
}

// ---------------------------------------------------------------------------
// Migrations: skipped only when the journal is exactly this binary's.
// ---------------------------------------------------------------------------

/// Whether `rekey.items` has the column migration 0005 adds, and whether
/// that migration is recorded as applied.
async fn forward_only_migrated(pool: &PgPool) -> (bool, bool) {
    let column: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM information_schema.columns
                         WHERE table_schema = 'rekey' AND table_name = 'items'
                           AND column_name = 'forward_only')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    let recorded: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM rekey._sqlx_migrations WHERE version = 5 AND success)",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    (column, recorded)
}

#[sqlx::test(migrations = false)]
async fn a_run_on_a_journal_one_migration_behind_applies_it(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 40).await;
    assert_exit(&run_json(&url, &keys, &[]), 0, "first run");
    assert_eq!(forward_only_migrated(&pool).await, (true, true));
    sqlx::raw_sql(
        "ALTER TABLE rekey.items DROP COLUMN forward_only;
         DELETE FROM rekey._sqlx_migrations WHERE version = 5;",
    )
    .execute(&pool)
    .await
    .unwrap();

    assert_exit(&run_json(&url, &keys, &[]), 0, "run on the older journal");
    assert_eq!(
        forward_only_migrated(&pool).await,
        (true, true),
        "the missing migration was applied, not skipped"
    );
}

#[sqlx::test(migrations = false)]
async fn a_journal_whose_applied_migration_was_changed_is_refused(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 40).await;
    assert_exit(&run_json(&url, &keys, &[]), 0, "first run");
    sqlx::raw_sql("UPDATE rekey._sqlx_migrations SET checksum = '\\x00' WHERE version = 1")
        .execute(&pool)
        .await
        .unwrap();
    let rows = snapshot(&pool).await;

    let out = run_json(&url, &keys, &[]);
    assert_refused(&out, &["migration 1"]);
    assert_eq!(snapshot(&pool).await, rows, "nothing written");
}
