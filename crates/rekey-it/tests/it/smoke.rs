//! The shortest path through the tool, as a user takes it: seed, plan, run,
//! verify, status, finalize.

use rekey_testkit::*;
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn plan_run_verify_finalize_rotates_a_small_fleet(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 500).await;
    let k = [
        "--old-key-file",
        path_str(&keys.old_file),
        "--new-key-file",
        path_str(&keys.new_file),
    ];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = extra.to_vec();
        args.extend_from_slice(&k);
        rekey(&url, &args)
    };
    let plan = run(&["plan", "--json"]);
    assert!(plan.status.success(), "{}", text(&plan));
    let plan: serde_json::Value =
        serde_json::from_slice(&plan.stdout).expect("plan --json is JSON");
    assert_eq!(plan["actions"]["reencrypt"], 500);

    let out = run(&["run", "--mode", "reencrypt", "--batch-size", "64"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let out = run(&["verify"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // status and finalize read only the journal: they take no keys.
    let out = rekey(&url, &["status"]);
    assert!(text(&out).contains("finished"), "{}", text(&out));
    let out = rekey(&url, &["finalize", "--run", "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM rekey.backups")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}
