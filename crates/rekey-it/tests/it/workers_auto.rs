//! `rekey run --workers auto`: the run measures the server's round trip
//! and free connections, picks its workers and batch size from them within
//! `--max-connections`, says what it chose, and rotates exactly as a run
//! with a fixed worker count does.

use std::process::Output;

use rekey_testkit::*;
use sqlx::PgPool;

/// Rotates an old-key fleet of `rows` tenants in place with `run --mode
/// reencrypt --workers auto` and `extra`, and asserts what every such run
/// must do: exit 0 with every row open under the new key to its seed
/// plaintext. Returns the run's output, for what it chose.
async fn rotate_with_workers_auto(pool: &PgPool, rows: u64, extra: &[&str]) -> Output {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(pool, rows).await;
    let mut run = vec!["run", "--mode", "reencrypt", "--workers", "auto"];
    run.extend(extra);
    let out = rekey_with_keys(&url, &keys, &run);
    assert_exit(&out, 0, &run.join(" "));
    assert_all_open_to_seed(&snapshot(pool).await, &keys.new, &tenants);
    out
}

#[sqlx::test(migrations = false)]
async fn run_with_workers_auto_says_what_it_chose_and_rotates_every_row(pool: PgPool) {
    let out = rotate_with_workers_auto(&pool, 2500, &["--json"]).await;
    let lines = json_lines(&out);
    let chosen = lines
        .iter()
        .find(|l| l["event"] == "workers_chosen")
        .unwrap_or_else(|| panic!("no workers_chosen event: {}", text(&out)));
    let workers = chosen["tuning"]["workers"].as_u64().unwrap();
    assert!(
        (1..=16).contains(&workers),
        "within the default cap: {chosen}"
    );
    assert!(
        chosen["tuning"]["batch_size"].as_i64().unwrap() >= 1000,
        "{chosen}"
    );
    assert!(
        chosen["tuning"]["rtt_ms"].as_f64().unwrap() >= 0.0,
        "{chosen}"
    );
    let report = run_summary(&out);
    assert_eq!(report["reencrypted"], 2500, "{report}");
}

#[sqlx::test(migrations = false)]
async fn workers_auto_never_takes_more_connections_than_max_connections(pool: PgPool) {
    let out = rotate_with_workers_auto(&pool, 300, &["--max-connections", "2"]).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("workers auto: "))
        .unwrap_or_else(|| panic!("the run did not say what it chose: {stderr}"));
    let workers: usize = line
        .trim_start_matches("workers auto: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no worker count in {line:?}"));
    assert!((1..=2).contains(&workers), "{line}");
}

#[test]
fn workers_must_be_a_number_or_auto() {
    let out = rekey(
        "postgres://postgres@127.0.0.1:1/postgres",
        &["run", "--workers", "many"],
    );
    assert_exit(&out, 2, "run --workers many");
    assert!(text(&out).contains("auto"), "{}", text(&out));
}
