//! `rekey plan`'s estimate: it measures the target database (the round
//! trip, its own full read, the table's size), models the workers and
//! batches `run` would use with the same flags, takes the server's write
//! rate from a fleet-bench report when given one, and through all of it
//! still writes nothing. No timing is asserted: the figures are checked
//! for being measured and reported, not for their size.

use rekey_testkit::*;
use serde_json::Value;
use sqlx::PgPool;

/// `plan --json` with `extra` on an old-key fleet of `rows`, asserting
/// exit 0 and that the table and the journal are as they were; returns
/// the report.
async fn plan_json(pool: &PgPool, rows: u64, extra: &[&str]) -> Value {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(pool, rows).await;
    let before = snapshot(pool).await;
    let mut args = vec!["plan", "--json"];
    args.extend(extra);
    let out = rekey_with_keys(&url, &keys, &args);
    assert_exit(&out, 0, &args.join(" "));
    assert_eq!(snapshot(pool).await, before, "plan changed the table");
    assert!(
        !journal_schema_exists(pool).await,
        "plan created schema rekey"
    );
    serde_json::from_slice(&out.stdout).expect("plan --json is one JSON object")
}

#[sqlx::test(migrations = false)]
async fn plan_reports_a_measured_round_trip_and_read_and_an_estimate_and_writes_nothing(
    pool: PgPool,
) {
    let plan = plan_json(&pool, 1500, &[]).await;
    let e = &plan["estimate"];
    let measured = &e["measured"];
    assert!(measured["rtt_ms"].as_f64().unwrap() > 0.0, "{e:#}");
    assert!(measured["read_secs"].as_f64().unwrap() > 0.0, "{e:#}");
    assert_eq!(measured["rows"], 1500, "{e:#}");
    assert!(measured["table_bytes"].as_i64().unwrap() > 0, "{e:#}");
    assert!(e["in_place_secs"].as_f64().unwrap() > 0.0, "{e:#}");
    assert_eq!(e["in_place_secs"], e["model"]["secs"], "{e:#}");
    // Run's defaults, as run would use them.
    let model = &e["model"];
    assert_eq!(
        (&model["workers"], &model["batch_size"], &model["chosen_by"]),
        (&Value::from(4), &Value::from(1000), &Value::from("flags")),
        "{e:#}"
    );
    assert_eq!(model["server"]["source"], "assumed", "{e:#}");
    let said = e["in_place_assumptions"].as_str().unwrap();
    for part in [
        "round trip",
        "ms measured",
        "4 workers x 1000 rows",
        "assumed",
    ] {
        assert!(said.contains(part), "no {part:?} in {said:?}");
    }
}

#[sqlx::test(migrations = false)]
async fn plan_with_workers_auto_models_the_choice_within_the_cap_and_repeats_the_flags(
    pool: PgPool,
) {
    let plan = plan_json(&pool, 300, &["--workers", "auto", "--max-connections", "2"]).await;
    let model = &plan["estimate"]["model"];
    assert_eq!(model["chosen_by"], "auto", "{model:#}");
    let workers = model["workers"].as_u64().unwrap();
    assert!((1..=2).contains(&workers), "{model:#}");
    assert!(model["batch_size"].as_i64().unwrap() >= 1000, "{model:#}");
    let next = plan["next_command"].as_str().unwrap();
    assert!(
        next.contains("--workers auto") && next.contains("--max-connections 2"),
        "the run should use what the estimate assumed: {next}"
    );
}

#[sqlx::test(migrations = false)]
async fn plan_takes_the_servers_write_rate_from_a_fleet_bench_report(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let bench = dir.path().join("bench.json");
    std::fs::write(
        &bench,
        r#"{"rows": 1000, "in_place": [
            {"workers": 1, "rows": 1000, "secs": 0.05, "pass_secs": 0.04},
            {"workers": 4, "rows": 1000, "secs": 0.03, "pass_secs": 0.02}
        ], "floor": {"rows_per_sec": 90000.0}}"#,
    )
    .unwrap();
    let path = bench.to_str().unwrap();
    let plan = plan_json(&pool, 200, &["--bench-file", path]).await;
    let e = &plan["estimate"];
    let server = &e["model"]["server"];
    assert!(
        (server["rows_per_sec"].as_f64().unwrap() - 50_000.0).abs() < 1e-6,
        "{server:#}"
    );
    assert!(
        server["source"].as_str().unwrap().contains(path),
        "{server:#}"
    );
    let said = e["in_place_assumptions"].as_str().unwrap();
    assert!(said.contains("measured by fleet-bench"), "{said}");
}

#[sqlx::test(migrations = false)]
async fn plan_refuses_a_bench_file_that_is_not_a_fleet_bench_report(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 10).await;
    let dir = tempfile::tempdir().unwrap();
    let bogus = dir.path().join("notes.json");
    std::fs::write(&bogus, "{\"hello\": 1}").unwrap();
    let path = bogus.to_str().unwrap();
    let out = rekey_with_keys(&url, &keys, &["plan", "--bench-file", path]);
    assert_exit(&out, 2, "plan --bench-file notes.json");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(path) && err.contains("fleet-bench"),
        "the error should name the file and what it should be: {err}"
    );
}

#[sqlx::test(migrations = false)]
async fn in_place_rate_still_overrides_the_measured_estimate(pool: PgPool) {
    let plan = plan_json(&pool, 500, &["--in-place-rate", "100"]).await;
    let e = &plan["estimate"];
    assert!(
        (e["in_place_secs"].as_f64().unwrap() - 5.0).abs() < 1e-9,
        "{e:#}"
    );
    assert_eq!(e["in_place_rate"], 100.0, "{e:#}");
    assert!(
        e["measured"]["rtt_ms"].as_f64().unwrap() > 0.0,
        "still measured: {e:#}"
    );
}
