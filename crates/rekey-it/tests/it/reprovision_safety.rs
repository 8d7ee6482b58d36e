//! Re-provisioning that never leaves a leaked credential alive nor a
//! tenant without a working machine: a clean-up that fails after the row
//! was swapped is not given up but owed, counted, kept at exit 1, blocks
//! `finalize`, and is done by a later `rekey run`; a password reset in
//! place is rolled forward until the tenant's machine runs with it; a
//! machine someone else holds a Fly lease on is left alone. Real binary
//! against the fake cloud over loopback HTTP.

use std::process::Stdio;
use std::time::{Duration, Instant};

use rekey_testkit::*;
use sqlx::PgPool;

/// Waits until the fake holds a machine for `app` other than `old`: the
/// new machine exists, so every Neon call before the row swap is made
/// (the URI is fetched at the password step), and the run is waiting for
/// the new machine to boot.
fn wait_for_new_machine(cloud: &Cloud, app: &str, old: &str, child: &mut std::process::Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cloud.view().machines_of(app).iter().any(|m| m.id != old) {
        assert!(
            child.try_wait().expect("poll rekey").is_none(),
            "rekey exited before creating the new machine"
        );
        assert!(Instant::now() < deadline, "no new machine within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `verify` (which must pass: every row opens under the new key) and then
/// `finalize --run RUN_ID`, whose output is returned: whether it may finish
/// the run is what the test asks.
fn verify_then_finalize(url: &str, keys: &Keys, run_id: &str, when: &str) -> std::process::Output {
    let verify = rekey(url, &["verify", "--new-key-file", path_str(&keys.new_file)]);
    assert_exit(&verify, 0, &format!("verify {when}"));
    rekey(url, &["finalize", "--run", run_id])
}

#[sqlx::test(migrations = false)]
async fn a_cleanup_that_fails_after_the_swap_is_owed_blocks_finalize_and_a_later_run_finishes_it(
    pool: PgPool,
) {
    // A slow boot leaves seconds between the new machine's creation and
    // the swap: Neon is cut off in between, so only the clean-up meets it.
    let (keys, mut cloud, tenants, url) = cloud_fleet(&pool, fake_config(20, 3000), 1).await;
    let t = &tenants[0];
    let args = run_args(&["--max-attempts", "1", "--json"], &new_key_only(&keys));
    let mut child = rekey_cloud_cmd(&url, &cloud, &strs(&args))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rekey");
    wait_for_new_machine(&cloud, &t.fly_app, &t.fly_machine_id, &mut child);
    let real_key = cloud.neon_key.clone();
    cloud.configure(|c| c.neon_api_key = Some("napi-not-the-binarys".into()));
    let out = child.wait_with_output().expect("rekey output");

    assert_exit(&out, 1, "a run whose clean-up could not be done");
    let report = run_summary(&out);
    assert_eq!(report["cleanup_pending"], 1, "{report}");
    assert_eq!(report["reprovision_failed"], 0, "{report}");
    assert_eq!(report["state"], "finished", "{report}");
    let items = items(&pool).await;
    assert_eq!(items.len(), 1);
    assert_eq!(
        (items[0].state.as_str(), items[0].step.as_str()),
        ("owed", "cleanup")
    );
    let view = cloud.view();
    let old = view
        .branches_of(&t.neon_project_id)
        .into_iter()
        .find(|b| b.id == t.neon_branch_id)
        .expect("the old branch");
    assert!(
        old.passwords.get(TENANT_ROLE) == Some(&t.password),
        "the leaked password was to be still live here (the defect's premise)"
    );

    // The tenants add up, the owed clean-up among them, and neither the
    // report nor status sends the operator to finalize.
    let status = text(&rekey(&url, &["status"]));
    assert!(status.contains("0 given up, 1 clean-up owed"), "{status}");
    let next = status
        .lines()
        .find(|l| l.starts_with("next: "))
        .unwrap_or("");
    assert!(
        next.contains("run the same `rekey run` command again")
            && next.contains("finalize is refused"),
        "{status}"
    );
    let plain = run_cloud(&url, &cloud, &["--max-attempts", "1"], &new_key_only(&keys));
    assert_exit(&plain, 1, "the run again while Neon still refuses");
    let plain = text(&plain);
    assert!(
        plain.contains("tenants 1 = re-provisioned 0 + clean-up owed 1 + given up 0 + pending 0"),
        "{plain}"
    );
    assert!(!plain.contains("then rekey finalize"), "{plain}");

    let run_id = report["run_id"].as_i64().expect("run id").to_string();
    let finalize = verify_then_finalize(&url, &keys, &run_id, "while a clean-up is owed");
    assert_exit(&finalize, 2, "finalize while a clean-up is owed");
    assert!(
        text(&finalize).contains("clean-up is not done"),
        "{}",
        text(&finalize)
    );

    cloud.configure(|c| c.neon_api_key = Some(real_key));
    let again = run_cloud(&url, &cloud, &["--json"], &new_key_only(&keys));
    assert_exit(&again, 0, "a later run finishes the clean-up");
    assert_eq!(run_summary(&again)["cleanup_pending"], 0);
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
    let finalize = verify_then_finalize(&url, &keys, &run_id, "after the clean-up");
    assert_exit(&finalize, 0, "finalize once nothing is owed");
}

/// A tenant given up before its row was swapped, whose new branch and
/// machine were then removed: what it prints names the step that failed,
/// the one the run's report and the journal name, not the removal that
/// followed it (`compensate`).
#[sqlx::test(migrations = false)]
async fn a_tenant_given_up_is_reported_at_the_step_that_failed_not_at_its_compensation(
    pool: PgPool,
) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, fake_config(0, 0), 3).await;
    // The fake's tenant database URLs open no session: every proof fails,
    // and the old machines are kept.
    let args = run_args(
        &["--max-attempts", "1", "--prove-connect", "on"],
        &new_key_only(&keys),
    );
    let out = rekey_cloud(&url, &cloud, &strs(&args));
    assert_exit(&out, 1, "every tenant given up at the session proof");
    let all = text(&out);
    for t in &tenants {
        let org = t.org_id.to_string();
        let printed = all
            .lines()
            .find_map(|l| {
                let at = l.find(&format!("tenant {org}: given up at step "))?;
                Some(
                    l[at..]
                        .split(": ")
                        .nth(1)?
                        .trim_start_matches("given up at step ")
                        .to_string(),
                )
            })
            .unwrap_or_else(|| panic!("no given-up line for {}: {all}", t.org_id));
        let reported = all
            .lines()
            .find_map(|l| {
                let rest = l.trim_start().strip_prefix(org.as_str())?;
                let step = rest
                    .trim_start()
                    .strip_prefix("re-provision given up at step ")?;
                Some(step.split(':').next()?.to_string())
            })
            .unwrap_or_else(|| panic!("{} not in the report's rows left: {all}", t.org_id));
        assert_ne!(printed, "compensate", "{all}");
        assert_eq!(printed, reported, "the line and the report disagree: {all}");
    }
    // And what was created for them is gone: only the tenants' own
    // machines are left running.
    let view = cloud.view();
    for t in &tenants {
        let machines = view.machines_of(&t.fly_app);
        assert!(
            machines
                .iter()
                .all(|m| m.id == t.fly_machine_id || m.state == "destroyed"),
            "a new machine was left for {}: {machines:?}",
            t.org_id
        );
    }
}

/// `--neon-strategy reset-in-place`: every tenant stays on its branch and
/// its machine, which is updated in place to the new password (no second
/// machine, nothing destroyed), and the leaked password is dead.
#[sqlx::test(migrations = false)]
async fn reset_in_place_updates_each_tenants_own_machine_to_the_new_password(pool: PgPool) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, fake_config(20, 20), 3).await;
    let out = run_cloud(
        &url,
        &cloud,
        &["--neon-strategy", "reset-in-place", "--json"],
        &new_key_only(&keys),
    );
    assert_exit(&out, 0, "reset-in-place run");
    assert_eq!(run_summary(&out)["reprovisioned"], 3, "{}", text(&out));
    let rows = tenant_rows(&pool).await;
    let view = cloud.view();
    for t in &tenants {
        let row = &rows[&t.org_id.to_string()];
        assert_tenant_reset_in_place(&cloud, &view, row, t, &keys.new).await;
    }
    let verify = rekey(
        &url,
        &["verify", "--new-key-file", path_str(&keys.new_file)],
    );
    assert_exit(&verify, 0, "verify after reset-in-place");
}

/// Waits until the fake holds a password reset in flight on `branch`: the
/// reset was sent and its operation has not finished.
fn wait_for_pending_reset(
    cloud: &Cloud,
    project: &str,
    branch: &str,
    child: &mut std::process::Child,
) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let view = cloud.view();
        let pending = view
            .branches_of(project)
            .into_iter()
            .any(|b| b.id == branch && !b.pending_passwords.is_empty());
        if pending {
            return;
        }
        assert!(
            child.try_wait().expect("poll rekey").is_none(),
            "rekey exited before resetting the password"
        );
        assert!(Instant::now() < deadline, "no password reset within 60 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Fly stops answering right after the password on the tenant's own
/// branch was reset: its machine now runs with a password the branch
/// refuses. The tenant is not given up (that would leave it locked out for
/// good, the new password recorded nowhere): it is owed, the run exits 1,
/// and once Fly answers again the next run updates the machine, after
/// which the tenant logs in with what its row and its branch agree on.
#[sqlx::test(migrations = false)]
async fn a_password_reset_in_place_is_rolled_forward_until_the_machine_runs_with_it(pool: PgPool) {
    // The reset's operation takes 3 s: Fly is cut off while it runs.
    let (keys, mut cloud, tenants, url) = cloud_fleet(&pool, fake_config(3000, 20), 1).await;
    let t = &tenants[0];
    let extra = [
        "--neon-strategy",
        "reset-in-place",
        "--max-attempts",
        "1",
        "--lease-secs",
        "2",
        "--json",
    ];
    let args = run_args(&extra, &new_key_only(&keys));
    let mut child = rekey_cloud_cmd(&url, &cloud, &strs(&args))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rekey");
    wait_for_pending_reset(&cloud, &t.neon_project_id, &t.neon_branch_id, &mut child);
    let real_token = cloud.fly_token.clone();
    cloud.configure(|c| c.fly_api_token = Some("fo1-not-the-binarys".into()));
    let out = child.wait_with_output().expect("rekey output");

    assert_exit(&out, 1, "a run whose tenant's machine could not be updated");
    let report = run_summary(&out);
    assert_eq!(report["reprovision_failed"], 0, "not given up: {report}");
    assert_eq!(report["cleanup_pending"], 1, "{report}");
    let parked = items(&pool).await;
    assert_eq!(parked.len(), 1);
    assert_eq!(parked[0].state, "owed", "{parked:?}");
    let status = text(&rekey(&url, &["status"]));
    assert!(status.contains("1 clean-up owed"), "{status}");
    let forward: bool = sqlx::query_scalar("SELECT forward_only FROM rekey.items")
        .fetch_one(&pool)
        .await
        .expect("forward_only");
    assert!(
        forward,
        "the journal must know the tenant only rolls forward"
    );

    // Taken up again while Fly still refuses, by a run with the default
    // --neon-strategy and a fresh budget of one attempt (the owed item is
    // rearmed): still owed, not given up, and finalize refused.
    let still_down = run_cloud(
        &url,
        &cloud,
        &["--max-attempts", "1", "--lease-secs", "2", "--json"],
        &new_key_only(&keys),
    );
    assert_exit(&still_down, 1, "a run while Fly still refuses");
    let report = run_summary(&still_down);
    assert_eq!(report["reprovision_failed"], 0, "not given up: {report}");
    assert_eq!(report["cleanup_pending"], 1, "{report}");
    assert_eq!(items(&pool).await[0].state, "owed");
    let run_id = report["run_id"].as_i64().expect("run id").to_string();
    let finalize = rekey(&url, &["finalize", "--run", &run_id]);
    assert_exit(
        &finalize,
        2,
        "finalize while the machine lacks its password",
    );

    cloud.configure(|c| c.fly_api_token = Some(real_token));
    // Its lease on the machine, whose release Fly refused, lapses in 2 s;
    // until then the run waits it out. No --neon-strategy: the journal
    // says the tenant is reset in place, and it is finished that way.
    let again = run_cloud(&url, &cloud, &["--lease-secs", "2"], &new_key_only(&keys));
    assert_exit(&again, 0, "the next run, with Fly back");
    let rows = tenant_rows(&pool).await;
    let row = &rows[&t.org_id.to_string()];
    assert_tenant_reset_in_place(&cloud, &cloud.view(), row, t, &keys.new).await;
    assert_eq!(items(&pool).await[0].state, "done");
}

/// A machine a control-plane deploy holds a Fly lease on is never touched:
/// no replacement is made from its config, nothing is stopped, and the
/// tenant is given up naming the lease. Once the lease is released, the
/// next run replaces it, its own lease's nonce going with the stop and
/// the destroy (the fake refuses them without it).
#[sqlx::test(migrations = false)]
async fn a_machine_someone_else_holds_a_lease_on_is_left_alone_until_it_is_released(pool: PgPool) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, fake_config(20, 20), 2).await;
    let (held, free) = (&tenants[0], &tenants[1]);
    let nonce = cloud
        .lease_machine(&held.fly_app, &held.fly_machine_id, 300)
        .await;
    let out = run_cloud(
        &url,
        &cloud,
        &["--max-attempts", "2", "--json"],
        &new_key_only(&keys),
    );
    assert_exit(&out, 1, "a run that met a leased machine");
    let report = run_summary(&out);
    assert_eq!(report["reprovisioned"], 1, "{report}");
    assert_eq!(report["reprovision_failed"], 1, "{report}");
    let all = text(&out);
    assert!(all.contains("is leased by someone else"), "{all}");
    let view = cloud.view();
    let machines = view.machines_of(&held.fly_app);
    assert_eq!(
        machines
            .iter()
            .map(|m| (m.id.as_str(), m.state.as_str()))
            .collect::<Vec<_>>(),
        [(held.fly_machine_id.as_str(), "started")],
        "the leased machine's app: {all}"
    );
    let rows = tenant_rows(&pool).await;
    let row = &rows[&held.org_id.to_string()];
    assert_eq!(
        row.fly_machine_id.as_deref(),
        Some(held.fly_machine_id.as_str())
    );
    assert_eq!(
        row.neon_branch_id.as_deref(),
        Some(held.neon_branch_id.as_str())
    );
    assert!(
        view.made_from(&held.neon_project_id, &held.neon_branch_id)
            .is_empty(),
        "the given-up tenant's new branch was removed"
    );
    let free_row = &rows[&free.org_id.to_string()];
    assert_tenant_reprovisioned(&cloud, &view, free_row, free, &keys.new).await;

    cloud
        .release_machine_lease(&held.fly_app, &held.fly_machine_id, &nonce)
        .await;
    let again = run_cloud(&url, &cloud, &["--json"], &new_key_only(&keys));
    assert_exit(&again, 0, "the next run, the lease released");
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
}

/// Both APIs stop answering while every tenant's new branch and machine
/// exist: each tenant is given up and the removal of what it created fails
/// too. That removal is journaled and owed, not forgotten: once the APIs
/// answer, the next run removes it and re-provisions the tenants, and no
/// branch or machine an earlier attempt made is left (each would answer
/// to the tenant's leaked password, and hold a copy of its data).
#[sqlx::test(migrations = false)]
async fn an_outage_of_both_apis_leaves_no_orphan_once_a_later_run_settles_the_compensations(
    pool: PgPool,
) {
    let (keys, mut cloud, tenants, url) = cloud_fleet(&pool, fake_config(20, 3000), 3).await;
    // Short leases: the Fly leases whose release the outage refused lapse
    // within 2 s, rather than the default minute the next runs would wait.
    let args = run_args(
        &["--max-attempts", "1", "--lease-secs", "2", "--json"],
        &new_key_only(&keys),
    );
    let mut child = rekey_cloud_cmd(&url, &cloud, &strs(&args))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rekey");
    for t in &tenants {
        wait_for_new_machine(&cloud, &t.fly_app, &t.fly_machine_id, &mut child);
    }
    let (neon_key, fly_token) = (cloud.neon_key.clone(), cloud.fly_token.clone());
    cloud.configure(|c| {
        c.neon_api_key = Some("napi-not-the-binarys".into());
        c.fly_api_token = Some("fo1-not-the-binarys".into());
    });
    let out = child.wait_with_output().expect("rekey output");
    assert_exit(&out, 1, "a run that met an outage of both APIs");
    let report = run_summary(&out);
    assert_eq!(report["reprovisioned"], 0, "{report}");
    let view = cloud.view();
    let made: usize = tenants
        .iter()
        .map(|t| view.made_from(&t.neon_project_id, &t.neon_branch_id).len())
        .sum();
    assert_eq!(
        made, 3,
        "the outage's premise: every new branch is still there"
    );
    let owed: Vec<ItemRow> = items(&pool)
        .await
        .into_iter()
        .filter(|i| i.state == "owed")
        .collect();
    assert_eq!(owed.len(), 3, "each removal is owed: {owed:?}");
    assert!(owed.iter().all(|i| i.step == "compensate"), "{owed:?}");

    cloud.configure(|c| {
        c.neon_api_key = Some(neon_key);
        c.fly_api_token = Some(fly_token);
    });
    // The next run settles the removals: the tenants stay given up for
    // this invocation (as any tenant given up in a run), with nothing an
    // attempt made left behind.
    let again = run_cloud(&url, &cloud, &["--lease-secs", "2"], &new_key_only(&keys));
    assert_exit(&again, 1, "the next run, the APIs back");
    let view = cloud.view();
    assert_no_orphans(&view, &tenant_rows(&pool).await, &tenants);
    for t in &tenants {
        let made = view.made_from(&t.neon_project_id, &t.neon_branch_id);
        assert!(made.is_empty(), "{}: branches left {made:?}", t.org_id);
    }
    assert!(
        items(&pool).await.iter().all(|i| i.state == "failed"),
        "{:?}",
        items(&pool).await
    );
    // And the one after re-provisions them: each row on a new branch and
    // machine, the machines the given-up attempt made destroyed, nothing
    // else alive.
    let last = run_cloud(&url, &cloud, &["--lease-secs", "2"], &new_key_only(&keys));
    assert_exit(&last, 0, "the run after");
    let rows = tenant_rows(&pool).await;
    let view = cloud.view();
    assert_no_orphans(&view, &rows, &tenants);
    for t in &tenants {
        let row = &rows[&t.org_id.to_string()];
        let machine = row.fly_machine_id.as_deref().unwrap_or_default();
        assert_ne!(
            machine, t.fly_machine_id,
            "{}: still the old machine",
            t.org_id
        );
        let live: Vec<&str> = view
            .machines_of(&t.fly_app)
            .into_iter()
            .filter(|m| m.state != "destroyed")
            .map(|m| m.id.as_str())
            .collect();
        assert_eq!(live, [machine], "{}: live machines", t.org_id);
    }
    assert!(items(&pool).await.iter().all(|i| i.state == "done"));
    let verify = rekey(
        &url,
        &["verify", "--new-key-file", path_str(&keys.new_file)],
    );
    assert_exit(&verify, 0, "verify after the outage");
}
