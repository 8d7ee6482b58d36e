//! `rekey status --run N --tenants`: the run's ledger from `rekey.items`,
//! every tenant not finished (last step, attempts, reason) and every
//! tenant re-provisioned (old and new branch and machine ids), as a table,
//! as JSON and as CSV; and `verify --all-failures` lists every failing id.

use rekey_testkit::*;
use sqlx::PgPool;

#[sqlx::test(migrations = false)]
async fn the_ledger_lists_tenants_given_up_and_re_provisioned_with_their_ids(pool: PgPool) {
    let (keys, cloud, tenants, url) = cloud_fleet(&pool, fake_config(20, 20), 3).await;
    let out = run_cloud(&url, &cloud, &["--mode", "reprovision"], &key_args(&keys));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    // A tenant the run gave up, as the journal records one.
    sqlx::query(
        "INSERT INTO rekey.items (run_id, org_id, state, step, attempts, last_error)
         VALUES (1, 'org-given-up', 'failed', 'machine', 5, 'fly: 503, then \"no capacity\"')",
    )
    .execute(&pool)
    .await
    .unwrap();

    let table = rekey(&url, &["status", "--run", "1", "--tenants"]);
    assert_eq!(table.status.code(), Some(0), "{}", text(&table));
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        table.contains("1 tenants not finished, 3 re-provisioned"),
        "{table}"
    );
    let given_up = table
        .lines()
        .find(|l| l.contains("org-given-up"))
        .unwrap_or_else(|| panic!("{table}"));
    for part in ["given up", "machine", "5", "no capacity"] {
        assert!(given_up.contains(part), "{part:?} in {given_up}");
    }

    let json = rekey(&url, &["status", "--run", "1", "--tenants", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&json.stdout).expect("JSON");
    let items = json["tenants"].as_array().expect("tenants");
    assert_eq!(items.len(), 4, "{json}");
    assert_eq!(
        items[0]["org_id"], "org-given-up",
        "unfinished first: {json}"
    );
    for t in &tenants {
        let item = items
            .iter()
            .find(|i| i["org_id"] == t.org_id.to_string().as_str())
            .unwrap_or_else(|| panic!("{} not in {json}", t.org_id));
        assert_eq!(item["state"], "done");
        for id in [
            "old_branch_id",
            "new_branch_id",
            "old_machine_id",
            "new_machine_id",
        ] {
            assert!(
                item[id].as_str().is_some_and(|s| !s.is_empty()),
                "{id}: {item}"
            );
        }
        assert_ne!(item["old_branch_id"], item["new_branch_id"], "{item}");
        assert_ne!(item["old_machine_id"], item["new_machine_id"], "{item}");
        assert!(
            table.contains(item["new_machine_id"].as_str().unwrap()),
            "{table}"
        );
    }

    let csv = rekey(&url, &["status", "--run", "1", "--tenants", "--csv"]);
    let csv = String::from_utf8_lossy(&csv.stdout).to_string();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 5, "{csv}");
    assert!(
        lines[0].starts_with("org_id,state,step,attempts,reason,"),
        "{csv}"
    );
    assert!(
        lines[1].contains(r#"org-given-up,failed,machine,5,"fly: 503, then ""no capacity""""#),
        "{csv}"
    );
}

#[sqlx::test(migrations = false)]
async fn verify_all_failures_lists_every_failing_id_not_the_first_20(pool: PgPool) {
    let OldKeyFleet { keys, tenants, url } = old_key_fleet(&pool, 30).await;
    let ids: Vec<String> = tenants.iter().map(|t| t.org_id.to_string()).collect();
    // Nothing rotated: all 30 fail under the new key.
    let out = rekey_with_keys(&url, &keys, &["verify", "--all-failures"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for id in &ids {
        assert!(stdout.contains(id.as_str()), "{id} not listed:\n{stdout}");
    }
    let out = rekey_with_keys(&url, &keys, &["verify", "--json", "--all-failures"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        json["verify"]["failing"].as_array().map(Vec::len),
        Some(30),
        "{json}"
    );
}
