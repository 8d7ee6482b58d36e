//! `rekey run` at a terminal shows what it will change (the database with
//! its password hidden, the table, rows per action, tenants to
//! re-provision) and acts only on `yes`; `--yes` skips the question; with
//! no terminal (every other test here) it never asks. Run on a real
//! pseudo-terminal.

use rekey::db::seed::{SeedKind, SeedSpec};
use rekey_testkit::*;
use sqlx::PgPool;

/// The question's last words, as the operator sees them.
const QUESTION: &str = "Type yes to go on";

/// A fleet of 200 tenants, a tenth of them sealed under a key nobody has,
/// reached through a URL with a password (trust auth ignores it), and the
/// counts of each kind.
async fn fleet_behind_a_password(pool: &PgPool) -> (OldKeyFleet, String, usize, usize) {
    let fleet = old_key_fleet_with(
        pool,
        SeedSpec {
            undecryptable_share: 0.1,
            ..plain_fleet(200)
        },
    )
    .await;
    let url = fleet.url.replacen(
        "postgres://postgres@",
        "postgres://postgres:Typed-Pw-5150@",
        1,
    );
    assert_ne!(
        url, fleet.url,
        "the test URL has the expected form: {}",
        fleet.url
    );
    let lost = fleet
        .tenants
        .iter()
        .filter(|t| t.kind == SeedKind::Undecryptable)
        .count();
    let opened = fleet.tenants.len() - lost;
    assert!(lost > 5, "{lost}");
    (fleet, url, opened, lost)
}

#[sqlx::test(migrations = false)]
async fn at_a_terminal_anything_but_yes_changes_nothing(pool: PgPool) {
    let (fleet, url, opened, lost) = fleet_behind_a_password(&pool).await;
    let before = snapshot(&pool).await;
    for answer in ["no", "", "y", "YES please"] {
        let out = rekey_at_terminal(&url, &strs(&args_with_keys(&["run"], &fleet.keys)), answer);
        let shown = text(&out);
        assert_eq!(out.status.code(), Some(2), "answer {answer:?}: {shown}");
        assert!(shown.contains(QUESTION), "{shown}");
        assert!(shown.contains("nothing changed"), "{shown}");
        for fact in [
            "postgres://postgres:***@127.0.0.1:5432/".to_string(),
            "table           org_instances".to_string(),
            format!("{opened} re-encrypted in place, 0 already current"),
            format!("{lost} re-provisioned"),
            format!("new {}", fleet.keys.new.id().0),
        ] {
            assert!(
                shown.contains(&fact),
                "the question lacks {fact:?}: {shown}"
            );
        }
        assert!(!shown.contains("Typed-Pw-5150"), "{shown}");
        assert_eq!(
            snapshot(&pool).await,
            before,
            "answer {answer:?} changed the table"
        );
        assert!(
            !journal_schema_exists(&pool).await,
            "answer {answer:?} made a journal"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn at_a_terminal_yes_runs_and_yes_flag_does_not_ask(pool: PgPool) {
    let fleet = old_key_fleet(&pool, 150).await;
    let out = rekey_at_terminal(
        &fleet.url,
        &strs(&args_with_keys(&["run", "--quiet"], &fleet.keys)),
        "yes",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(text(&out).contains(QUESTION), "{}", text(&out));
    assert_all_open_to_seed(&snapshot(&pool).await, &fleet.keys.new, &fleet.tenants);

    // --yes: no question, and the answer typed is never read.
    let out = rekey_at_terminal(
        &fleet.url,
        &strs(&args_with_keys(&["run", "--quiet", "--yes"], &fleet.keys)),
        "no",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(QUESTION), "{}", text(&out));
    // --json is for programs: no question either.
    let out = rekey_at_terminal(
        &fleet.url,
        &strs(&args_with_keys(&["run", "--json"], &fleet.keys)),
        "no",
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains(QUESTION), "{}", text(&out));
}

#[sqlx::test(migrations = false)]
async fn without_a_terminal_run_never_asks(pool: PgPool) {
    let fleet = old_key_fleet(&pool, 50).await;
    let out = rekey_with_keys(&fleet.url, &fleet.keys, &["run"]);
    assert_exit(&out, 0, "run without a terminal");
    assert!(!text(&out).contains(QUESTION), "{}", text(&out));
}
