//! The brakes on re-provisioning, through the real binary against the fake
//! cloud: `--max-tenants N` does exactly N tenants and leaves the run open
//! for the next invocation; `--canary N` does N tenants first and goes no
//! further if one of them fails.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;

use rekey_testkit::*;
use sqlx::PgPool;

const FLEET: u64 = 6;

/// Journal items by org id (one run).
async fn items_by_org(pool: &PgPool) -> BTreeMap<String, ItemRow> {
    items(pool)
        .await
        .into_iter()
        .map(|i| (i.org_id.clone(), i))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn max_tenants_reprovisions_exactly_n_and_leaves_the_run_open_for_the_next_invocation(
    pool: PgPool,
) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, fake_config(30, 30), FLEET).await;
    let before = tenant_rows(&pool).await;

    let out = run_cloud(&url, &cloud, &["--max-tenants", "2"], &new_key_only(&keys));
    assert_exit(&out, 1, "run --max-tenants 2");
    assert_eq!(run_states(&pool).await, ["running"], "the run stays open");

    let items = items_by_org(&pool).await;
    let done: Vec<&ItemRow> = items.values().filter(|i| i.state == "done").collect();
    assert_eq!(done.len(), 2, "exactly 2 tenants re-provisioned: {items:?}");
    let started: Vec<&ItemRow> = items.values().filter(|i| i.attempts > 0).collect();
    assert_eq!(started.len(), 2, "no other tenant was started: {items:?}");
    let rows = tenant_rows(&pool).await;
    let view = cloud.view();
    for t in &tenants {
        let id = t.org_id.to_string();
        if items[&id].state == "done" {
            assert_tenant_reprovisioned(&cloud, &view, &rows[&id], t, &keys.new).await;
        } else {
            assert_tenant_untouched(&view, &rows[&id], &before[&id], t);
        }
    }

    let out = run_cloud(&url, &cloud, &[], &new_key_only(&keys));
    assert_exit(&out, 0, "the next invocation");
    assert_eq!(
        run_states(&pool).await,
        ["finished"],
        "the same run was continued and finished"
    );
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;
}

/// The `tenant` events of a `run --json`, as (org id, outcome).
fn tenant_events(out: &Output) -> Vec<(String, String)> {
    json_lines(out)
        .into_iter()
        .filter(|e| e["event"] == "tenant")
        .map(|e| {
            (
                e["org_id"].as_str().unwrap_or_default().to_string(),
                e["outcome"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// The tenants that `events` show started (each once).
fn started_tenants(events: &[(String, String)]) -> BTreeSet<&str> {
    events
        .iter()
        .filter(|(_, o)| o == "started")
        .map(|(id, _)| id.as_str())
        .collect()
}

#[sqlx::test(migrations = false)]
async fn a_failing_canary_stops_the_run_before_any_other_tenant_starts(pool: PgPool) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, fake_config(30, 30), FLEET).await;
    // Tenants are taken in org id order: the first one is in the canary.
    let first = tenants
        .iter()
        .min_by_key(|t| t.org_id.to_string())
        .expect("a fleet");
    cloud
        .destroy_machine(&first.fly_app, &first.fly_machine_id)
        .await;
    let before = tenant_rows(&pool).await;

    let out = run_cloud(
        &url,
        &cloud,
        &["--canary", "3", "--workers", "1", "--json"],
        &new_key_only(&keys),
    );
    assert_exit(&out, 1, "run --canary 3 with a failing canary");

    let items = items_by_org(&pool).await;
    let started: Vec<&ItemRow> = items.values().filter(|i| i.attempts > 0).collect();
    assert_eq!(started.len(), 3, "only the canary was started: {items:?}");
    let first_id = first.org_id.to_string();
    assert_eq!(items[&first_id].state, "failed", "{items:?}");
    let events = tenant_events(&out);
    let begun = started_tenants(&events);
    assert_eq!(begun.len(), 3, "tenant events: {events:?}");

    let rows = tenant_rows(&pool).await;
    let view = cloud.view();
    for t in &tenants {
        let id = t.org_id.to_string();
        match items[&id].state.as_str() {
            "done" => assert_tenant_reprovisioned(&cloud, &view, &rows[&id], t, &keys.new).await,
            "failed" => assert!(
                view.made_from(&t.neon_project_id, &t.neon_branch_id)
                    .is_empty()
                    && view.machines_of(&t.fly_app).len() == 1,
                "{id}: what was made for the failed canary was removed"
            ),
            _ => {
                assert_eq!(items[&id].step, "queued", "{id}");
                assert_tenant_untouched(&view, &rows[&id], &before[&id], t);
            }
        }
    }
    assert_no_orphans(&view, &rows, &tenants);
}

#[sqlx::test(migrations = false)]
async fn a_healthy_canary_finishes_before_the_rest_of_the_fleet_proceeds(pool: PgPool) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, fake_config(30, 30), FLEET).await;

    let out = run_cloud(
        &url,
        &cloud,
        &["--canary", "2", "--json"],
        &new_key_only(&keys),
    );
    assert_exit(&out, 0, "run --canary 2");
    assert_fleet_reprovisioned(&pool, &cloud, &tenants, &keys.new).await;

    // No tenant beyond the canary starts before both canary tenants are done.
    let events = tenant_events(&out);
    let mut canary: Vec<&str> = Vec::new();
    let mut canary_done = 0;
    for (id, outcome) in &events {
        match outcome.as_str() {
            "started" if canary.len() < 2 && !canary.contains(&id.as_str()) => canary.push(id),
            "started" if !canary.contains(&id.as_str()) => assert_eq!(
                canary_done, 2,
                "tenant {id} started before the canary was done: {events:?}"
            ),
            "done" if canary.contains(&id.as_str()) => canary_done += 1,
            _ => {}
        }
    }
    assert_eq!(canary_done, 2, "{events:?}");
}

/// A canary tenant that fails in a way worth retrying (its machine does not
/// start within the step deadline) is still the canary: the rest wait for
/// it, and when it is finally given up they never start.
#[sqlx::test(migrations = false)]
async fn a_canary_that_is_retrying_holds_the_rest_back_until_it_is_given_up(pool: PgPool) {
    // Machines take far longer to start than the step deadline allows.
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, fake_config(30, 30_000), 4).await;
    let before = tenant_rows(&pool).await;

    let out = run_cloud(
        &url,
        &cloud,
        &[
            "--canary",
            "1",
            "--workers",
            "1",
            "--step-deadline-secs",
            "1",
            "--max-attempts",
            "2",
            "--json",
        ],
        &new_key_only(&keys),
    );
    assert_exit(&out, 1, "run --canary 1 whose canary never starts");

    let events = tenant_events(&out);
    let begun = started_tenants(&events);
    assert_eq!(begun.len(), 1, "only the canary started: {events:?}");
    let items = items_by_org(&pool).await;
    let canary = begun.iter().next().expect("a canary").to_string();
    assert_eq!(items[&canary].state, "failed", "{items:?}");
    assert_eq!(items[&canary].attempts, 2, "{items:?}");
    let rows = tenant_rows(&pool).await;
    let view = cloud.view();
    for t in &tenants {
        let id = t.org_id.to_string();
        if id != canary {
            assert_eq!(items[&id].attempts, 0, "{id} was started: {items:?}");
            assert_tenant_untouched(&view, &rows[&id], &before[&id], t);
        }
    }
    assert_no_orphans(&view, &rows, &tenants);
}
