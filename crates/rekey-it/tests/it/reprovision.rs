//! The re-provision path, specified through the real binary against the
//! stateful fake cloud over loopback HTTP: what a re-provisioned tenant ends
//! up with (row and cloud), faults and ambiguous creates, SIGKILL and resume,
//! a tenant that cannot be re-provisioned, the wrong-old-key gate, `--mode
//! reprovision`, and secrets kept out of every output.

use std::collections::BTreeSet;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use rekey::rotate::reprovision::Step;
use rekey_testkit::*;
use sqlx::PgPool;

/// The fleet size of most tests: enough that per-tenant mistakes show, small
/// enough to stay quick in a debug build.
const FLEET: u64 = 6;

/// A fake that is quick but still has operations and boots in flight.
fn quick_config() -> fake_cloud::FakeConfig {
    fake_config(30, 30)
}

#[sqlx::test(migrations = false)]
async fn a_fleet_whose_old_key_is_lost_is_fully_reprovisioned(pool: PgPool) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, quick_config(), FLEET).await;

    let out = run_cloud(&url, &cloud, &[], &new_key_only(&keys));
    assert_exit(&out, 0, "run without the old key");

    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
    assert_eq!(run_states(&pool).await, ["finished"]);
    let items = items(&pool).await;
    assert_eq!(items.len(), tenants.len(), "one journal item per tenant");
    assert!(
        backed_up_ids(&pool).await.is_empty(),
        "nothing was re-encrypted in place"
    );

    let out = rekey(
        &url,
        &["verify", "--new-key-file", path_str(&keys.new_file)],
    );
    assert_exit(&out, 0, "verify");
}

/// A tenant re-provisioned in one go asks the clouds nothing they already
/// answered: the create-branch response names the tenant's database, its
/// owner and the new compute's host, and the roles copied from the old
/// branch; the reset's response carries the new password, so the URI is
/// built, not fetched; and a machine this attempt is the first to create
/// is not looked for first. Counted per route by the fake.
#[sqlx::test(migrations = false)]
async fn a_tenant_done_in_one_attempt_spends_no_call_on_what_neon_already_answered(pool: PgPool) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, quick_config(), FLEET).await;
    let out = run_cloud(&url, &cloud, &[], &new_key_only(&keys));
    assert_exit(&out, 0, "run without the old key");
    // Counted before the checks below, which ask the fake for URIs.
    let view = cloud.view();
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;

    let neon = view.routes("neon");
    let n = tenants.len() as u64;
    for asked in [
        "GET projects/*/connection_uri",
        "GET projects/*/branches/*/databases",
        "GET projects/*/branches/*/roles",
    ] {
        assert_eq!(view.route_calls("neon", asked), 0, "{asked}: {neon:?}");
    }
    assert_eq!(
        view.route_calls("neon", "POST projects/*/branches"),
        n,
        "{neon:?}"
    );
    // One reset on the new branch, one of the old branch's role.
    assert_eq!(
        view.route_calls("neon", "POST projects/*/branches/*/roles/*/reset_password"),
        2 * n,
        "{neon:?}"
    );
    let fly = view.routes("fly");
    assert_eq!(view.route_calls("fly", "GET apps/*/machines"), 0, "{fly:?}");
    assert_eq!(
        view.route_calls("fly", "POST apps/*/machines"),
        n,
        "{fly:?}"
    );
}

/// Two tenants to a Neon project under injected 5xx, applied-then-503 and
/// 429s: one branch and machine each however the dice fall. (The process
/// takes turns per project, so 423s come only from operations it did not
/// wait for, such as an adopted branch's; the HTTP policy tests cover
/// waiting them out.)
#[sqlx::test(migrations = false)]
async fn injected_faults_and_rate_limits_still_end_with_one_branch_and_machine_each(pool: PgPool) {
    let table = reference_table(&pool).await;
    let keys = Keys::new();
    let mut cloud = Cloud::start(fake_config(200, 50));
    let tenants = seed_cloud_fleet_sharing(&pool, &table, &keys.old, 8, 2, &cloud).await;
    let url = db_url(&pool);
    cloud.configure(|c| {
        c.error_rate = 0.2;
        c.error_after_commit_rate = 0.1;
        // Below what the client allows itself: some calls are refused.
        c.rate_limit = Some((30, 4));
        c.retry_after = true;
        c.seed = 7;
    });

    let out = run_cloud(
        &url,
        &cloud,
        &[
            "--provision-concurrency",
            "8",
            "--neon-rps",
            "100",
            "--fly-rps",
            "100",
            "--max-attempts",
            "8",
        ],
        &new_key_only(&keys),
    );
    assert_exit(&out, 0, "run under faults");

    let view = cloud.view();
    let injected = [500, 503]
        .iter()
        .map(|s| view.responses("neon", *s) + view.responses("fly", *s))
        .sum::<u64>();
    assert!(injected > 0, "no 5xx was injected: {}", view.requests);
    assert!(
        view.responses("neon", 429) + view.responses("fly", 429) > 0,
        "no 429 was given: {}",
        view.requests
    );

    cloud.configure(|c| {
        c.error_rate = 0.0;
        c.error_after_commit_rate = 0.0;
        c.rate_limit = None;
    });
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
    assert_eq!(run_states(&pool).await, ["finished"]);
}

/// Six tenants in one Neon project, all in flight at once: the process
/// sends one mutating operation at a time to the project (Neon runs them
/// one at a time), so the fake never has to answer 423, and every tenant
/// is still re-provisioned.
#[sqlx::test(migrations = false)]
async fn tenants_sharing_a_project_take_turns_and_are_never_answered_423(pool: PgPool) {
    let table = reference_table(&pool).await;
    let keys = Keys::new();
    let cloud = Cloud::start(fake_config(100, 20));
    let tenants = seed_cloud_fleet_sharing(&pool, &table, &keys.old, 6, 6, &cloud).await;
    let url = db_url(&pool);
    let out = run_cloud(
        &url,
        &cloud,
        &["--provision-concurrency", "6"],
        &new_key_only(&keys),
    );
    assert_exit(&out, 0, "six tenants of one project");
    let view = cloud.view();
    assert_eq!(view.responses("neon", 423), 0, "{}", view.requests);
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
}

// ---------------------------------------------------------------------------
// Invariant 3 for re-provisioning: SIGKILL at any point, then resume.
// ---------------------------------------------------------------------------

/// When to kill the running binary.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// This long after it was started.
    After(Duration),
    /// Once `more` tenants than when it was started have reached `step` (or
    /// a later one): work this very process did.
    Reached { step: &'static str, more: i64 },
}

/// Tenants whose journal step is `step` or a later one (0 before the
/// journal exists). Steps only move forward, so this only grows.
async fn tenants_reached(pool: &PgPool, step: &str) -> i64 {
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('rekey.items') IS NOT NULL")
        .fetch_one(pool)
        .await
        .expect("to_regclass");
    if !exists {
        return 0;
    }
    let from: Step = step.parse().expect("a known step");
    let later: Vec<String> = Step::ALL
        .into_iter()
        .filter(|s| *s >= from)
        .map(|s| s.as_str().to_string())
        .collect();
    sqlx::query_scalar("SELECT count(*) FROM rekey.items WHERE step = ANY($1)")
        .bind(&later)
        .fetch_one(pool)
        .await
        .expect("count items at steps")
}

/// Spawns `cmd` and kills it (SIGKILL) at `at`; asserts it was still running.
async fn spawn_and_kill(pool: &PgPool, mut cmd: std::process::Command, at: KillAt) {
    let baseline = match at {
        KillAt::Reached { step, .. } => tenants_reached(pool, step).await,
        KillAt::After(_) => 0,
    };
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn rekey");
    match at {
        KillAt::After(delay) => tokio::time::sleep(delay).await,
        KillAt::Reached { step, more } => {
            let deadline = Instant::now() + Duration::from_secs(60);
            while tenants_reached(pool, step).await < baseline + more {
                assert_still_waiting_to_kill(&mut child, deadline, &at);
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
    }
    sigkill_running(&mut child, &at);
}

/// Seeds a fleet with no old key, runs and kills the binary at each of
/// `kills`, then lets one run finish and checks convergence: every tenant
/// re-provisioned once, nothing created twice or left behind.
async fn killed_while_reprovisioning_converges(pool: PgPool, kills: &[KillAt]) {
    const TENANTS: u64 = 10;
    let table = reference_table(&pool).await;
    let keys = Keys::new();
    // Slow enough that every tenant spends a while at each step.
    let mut config = fake_config(120, 150);
    config.latency = Duration::from_millis(5);
    let cloud = Cloud::start(config);
    let tenants = seed_cloud_fleet(&pool, &table, &keys.old, TENANTS, &cloud).await;
    let url = db_url(&pool);
    // Every invocation holds its leases for 1 s only, so the next one can
    // take over a killed one's tenants quickly.
    let args = run_args(
        &["--provision-concurrency", "3", "--lease-secs", "1"],
        &new_key_only(&keys),
    );

    for &at in kills {
        spawn_and_kill(&pool, rekey_cloud_cmd(&url, &cloud, &strs(&args)), at).await;
    }
    let done_before = tenants_reached(&pool, "done").await;
    assert!(
        done_before < TENANTS as i64,
        "the kills left work for the resume"
    );

    let out = rekey_cloud(&url, &cloud, &strs(&args));
    assert_exit(&out, 0, &format!("resume after kills at {kills:?}"));
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
    assert_eq!(run_states(&pool).await, ["finished"], "exactly one run");
    let out = rekey(
        &url,
        &["verify", "--new-key-file", path_str(&keys.new_file)],
    );
    assert_exit(&out, 0, "verify");
}

#[sqlx::test(migrations = false)]
async fn killed_while_machines_are_being_created_then_resumed_converges(pool: PgPool) {
    killed_while_reprovisioning_converges(
        pool,
        &[KillAt::Reached {
            step: "machine",
            more: 2,
        }],
    )
    .await;
}

/// Each resume is killed in turn, at a different point of its own work,
/// before one is let finish.
#[sqlx::test(migrations = false)]
async fn killed_again_and_again_while_reprovisioning_still_converges(pool: PgPool) {
    killed_while_reprovisioning_converges(
        pool,
        &[
            KillAt::After(Duration::from_millis(400)),
            KillAt::Reached {
                step: "password",
                more: 1,
            },
            KillAt::Reached {
                step: "started",
                more: 2,
            },
            KillAt::Reached {
                step: "done",
                more: 2,
            },
            KillAt::Reached {
                step: "row",
                more: 1,
            },
        ],
    )
    .await;
}

/// A lease shorter than a step (machines that take longer to boot than
/// `--lease-secs`): the tenant stays with the task driving it and is not
/// taken up a second time while that task still works on it.
#[sqlx::test(migrations = false)]
async fn a_step_that_outlasts_the_lease_is_not_driven_twice(pool: PgPool) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, fake_config(30, 2_500), 3).await;

    let out = run_cloud(&url, &cloud, &["--lease-secs", "1"], &new_key_only(&keys));
    assert_exit(&out, 0, "run with a 1 s lease and 2.5 s boots");
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
    let items = items(&pool).await;
    assert!(
        items.iter().all(|i| i.attempts == 1),
        "a tenant was claimed again while it was being worked on: {items:?}"
    );
}

// ---------------------------------------------------------------------------
// A tenant that cannot be re-provisioned.
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn a_tenant_whose_machine_is_gone_is_given_up_cleanly_and_the_rest_finish(pool: PgPool) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, quick_config(), FLEET).await;
    let lost = &tenants[2];
    cloud
        .destroy_machine(&lost.fly_app, &lost.fly_machine_id)
        .await;
    let before = tenant_rows(&pool).await;

    let out = run_cloud(&url, &cloud, &[], &new_key_only(&keys));
    assert_exit(&out, 1, "run with one machine gone");
    let lost_id = lost.org_id.to_string();
    assert!(
        text(&out).contains(&lost_id),
        "the summary names the tenant: {}",
        text(&out)
    );

    let items = items(&pool).await;
    let item = items
        .iter()
        .find(|i| i.org_id == lost_id)
        .expect("its item");
    assert_eq!(item.state, "failed");
    let reason = item.last_error.clone().unwrap_or_default();
    assert!(
        reason.contains("machine")
            && reason.contains(&lost.fly_machine_id)
            && reason.contains("gone"),
        "the reason names the missing machine: {reason}"
    );
    assert_eq!(
        items.iter().filter(|i| i.state == "done").count(),
        tenants.len() - 1,
        "{items:?}"
    );

    let rows = tenant_rows(&pool).await;
    let view = cloud.view();
    let row = &rows[&lost_id];
    let was = &before[&lost_id];
    assert_eq!(
        row.neon_branch_id, was.neon_branch_id,
        "its row is as it was"
    );
    assert_eq!(row.fly_machine_id, was.fly_machine_id);
    assert!(row.database_url_encrypted == was.database_url_encrypted);
    let branches = view.branches_of(&lost.neon_project_id);
    assert_eq!(
        branches.iter().map(|b| b.id.as_str()).collect::<Vec<_>>(),
        [lost.neon_branch_id.as_str()],
        "the branch made for it was removed"
    );
    let machines = view.machines_of(&lost.fly_app);
    assert_eq!(
        machines
            .iter()
            .map(|m| (m.id.as_str(), m.state.as_str()))
            .collect::<Vec<_>>(),
        [(lost.fly_machine_id.as_str(), "destroyed")],
        "no machine was made for it"
    );
    for t in tenants.iter().filter(|t| t.org_id != lost.org_id) {
        assert_tenant_reprovisioned(&cloud, &view, &rows[&t.org_id.to_string()], t, &keys.new)
            .await;
    }
    assert_no_orphans(&view, &rows, &tenants);
    assert_eq!(run_states(&pool).await, ["failed"]);

    let status = rekey(&url, &["status"]);
    assert_exit(&status, 0, "status");
    let shown = text(&status);
    assert!(
        shown.contains(&lost_id)
            && shown.contains("given up")
            && shown.contains(&lost.fly_machine_id),
        "status shows the given-up tenant and why: {shown}"
    );
}

// ---------------------------------------------------------------------------
// The wrong-old-key gate, and --mode reprovision.
// ---------------------------------------------------------------------------

#[sqlx::test(migrations = false)]
async fn a_wrong_old_key_is_refused_before_anything_is_created_unless_confirmed(pool: PgPool) {
    // The fleet is under `old`; the operator passes another key as old.
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, quick_config(), FLEET).await;
    let (_, wrong_file) = keys.another("wrong.key");
    let wrong_keys = vec![
        "--old-key-file".to_string(),
        path_str(&wrong_file).to_string(),
        "--new-key-file".to_string(),
        path_str(&keys.new_file).to_string(),
    ];
    let before = snapshot(&pool).await;
    let n = FLEET.to_string();

    let out = run_cloud(&url, &cloud, &[], &wrong_keys);
    assert_refused(&out, &[&format!("--confirm-reprovision {n}")]);
    let off_by_one = (FLEET - 1).to_string();
    let out = run_cloud(
        &url,
        &cloud,
        &["--confirm-reprovision", &off_by_one],
        &wrong_keys,
    );
    assert_refused(&out, &[&format!("--confirm-reprovision {n}")]);

    assert_eq!(snapshot(&pool).await, before, "no row was written");
    assert_eq!(run_count(&pool).await, 0, "no run was opened");
    let view = cloud.view();
    assert_eq!(
        view.requests["total"], 0,
        "the cloud was not called: {}",
        view.requests
    );
    assert_eq!(view.branches.len(), tenants.len());
    assert!(view.machines.iter().all(|m| m.state == "started"));

    let out = run_cloud(&url, &cloud, &["--confirm-reprovision", &n], &wrong_keys);
    assert_exit(&out, 0, "confirmed run");
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
}

#[sqlx::test(migrations = false)]
async fn mode_reprovision_gives_fresh_credentials_even_where_the_old_key_opens(pool: PgPool) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, quick_config(), FLEET).await;

    let out = run_cloud(
        &url,
        &cloud,
        &["--mode", "reprovision", "--json"],
        &key_args(&keys),
    );
    assert_exit(&out, 0, "run --mode reprovision");
    let report = run_summary(&out);
    assert_eq!(report["reencrypted"], 0, "{report}");
    assert_eq!(report["reprovisioned"], FLEET, "{report}");

    assert!(
        backed_up_ids(&pool).await.is_empty(),
        "nothing re-encrypted in place"
    );
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
    let seeded: BTreeSet<&str> = tenants.iter().map(|t| t.database_url.as_str()).collect();
    let opened = open_all(
        &snapshot(&pool).await,
        &rekey::envelope::Cipher::new(&keys.new),
    );
    for (id, (db, _)) in opened {
        let db = String::from_utf8(db.expect("opens")).expect("UTF-8");
        assert!(
            !seeded.contains(db.as_str()),
            "{id} kept its leaked database URL"
        );
    }
}

// ---------------------------------------------------------------------------
// Invariant 5 on the re-provision path.
// ---------------------------------------------------------------------------

/// Every text column the journal has, as one string.
async fn journal_text(pool: &PgPool) -> String {
    let items: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', org_id, slug, state, step, last_error, neon_project_id, old_branch_id,
                          new_branch_id, fly_app, old_machine_id, new_machine_id, owner)
           FROM rekey.items",
    )
    .fetch_all(pool)
    .await
    .expect("items text");
    let runs: Vec<String> = sqlx::query_scalar(
        "SELECT concat_ws(' ', mode, old_key_id, new_key_id, target_table, state, reason, summary::text)
           FROM rekey.runs",
    )
    .fetch_all(pool)
    .await
    .expect("runs text");
    format!("{}\n{}", items.join("\n"), runs.join("\n"))
}

#[sqlx::test(migrations = false)]
async fn no_token_password_or_url_appears_in_any_output_or_the_journal(pool: PgPool) {
    let (keys, mut cloud, tenants, url) = cloud_fleet(&pool, quick_config(), FLEET).await;
    // One tenant fails for good, so errors reach outputs and the journal.
    let lost = &tenants[0];
    cloud
        .destroy_machine(&lost.fly_app, &lost.fly_machine_id)
        .await;
    cloud.configure(|c| {
        c.error_rate = 0.1;
        c.error_after_commit_rate = 0.05;
    });

    let mut outputs: Vec<(String, Output)> = Vec::new();
    let plain = run_cloud(
        &url,
        &cloud,
        &[
            "--mode",
            "reprovision",
            "--max-tenants",
            "3",
            "--max-attempts",
            "8",
        ],
        &key_args(&keys),
    );
    outputs.push(("run (plain)".into(), plain));
    let mut json_cmd = rekey_cloud_cmd(
        &url,
        &cloud,
        &strs(&run_args(
            &["--mode", "reprovision", "--json", "--max-attempts", "8"],
            &key_args(&keys),
        )),
    );
    json_cmd.env("RUST_LOG", "debug");
    outputs.push((
        "run --json, RUST_LOG=debug".into(),
        json_cmd.output().expect("run"),
    ));
    outputs.push(("status".into(), rekey(&url, &["status"])));
    outputs.push(("status --json".into(), rekey(&url, &["status", "--json"])));
    outputs.push((
        "verify --json".into(),
        rekey_with_keys(&url, &keys, &["verify", "--json"]),
    ));
    for (what, out) in &outputs {
        assert!(!text(out).contains("panicked"), "{what}: {}", text(out));
    }
    assert_eq!(
        item_states(&pool).await.get("done"),
        Some(&(tenants.len() - 1))
    );

    cloud.configure(|c| {
        c.error_rate = 0.0;
        c.error_after_commit_rate = 0.0;
    });
    let view = cloud.view();
    let opened = open_all(
        &snapshot(&pool).await,
        &rekey::envelope::Cipher::new(&keys.new),
    );
    let mut secrets = cloud.secrets();
    secrets.extend(keys.secret_texts());
    secrets.extend(view.passwords());
    secrets.extend(view.env_values().into_iter().filter(|v| v.contains("://")));
    for t in &tenants {
        secrets.push(t.password.clone());
        secrets.push(t.database_url.clone());
        secrets.extend(t.redis_url.clone());
    }
    for (db, redis) in opened.values() {
        for field in [db, redis].into_iter().flatten() {
            secrets.push(String::from_utf8(field.clone()).expect("UTF-8"));
        }
    }
    assert!(
        secrets.len() > 4 * tenants.len(),
        "the scan has the fleet's secrets to look for"
    );

    for (what, out) in &outputs {
        assert_no_secret(what, &text(out), &secrets);
    }
    assert_no_secret("the journal", &journal_text(&pool).await, &secrets);
}
