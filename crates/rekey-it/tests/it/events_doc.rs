//! `docs/events.md` is the contract of `rekey run --json`: a real run (in
//! place, then re-provisioning through the fake cloud) is read line by
//! line, and every line's event must be a section of the doc carrying
//! exactly the fields its table lists, with the types it states, plus the
//! fields every event carries (`schema_version` 1 and an RFC 3339 `ts`).

use std::collections::{BTreeMap, BTreeSet};

use rekey_testkit::*;
use sqlx::PgPool;

/// Fields of one event as the doc lists them: name to JSON type.
type Fields = BTreeMap<String, String>;

/// The doc's tables: the common fields and each event's own.
fn documented() -> (Fields, BTreeMap<String, Fields>) {
    let text = std::fs::read_to_string(repo_root().join("docs/events.md")).expect("docs/events.md");
    let mut common = Fields::new();
    let mut events: BTreeMap<String, Fields> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("## Every event") {
            current = Some(String::new());
        } else if let Some(name) = line.strip_prefix("### ") {
            let name = name.trim().trim_matches('`').to_string();
            events.insert(name.clone(), Fields::new());
            current = Some(name);
        } else if let (Some(section), Some(row)) = (&current, line.strip_prefix("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let field = cells[0].trim_end_matches('`').to_string();
            let kind = cells[1].to_string();
            let table = if section.is_empty() {
                &mut common
            } else {
                events.get_mut(section).expect("section opened")
            };
            table.insert(field, kind);
        }
    }
    (common, events)
}

fn type_ok(value: &serde_json::Value, kind: &str) -> bool {
    let (kind, nullable) = match kind.strip_suffix(" or null") {
        Some(k) => (k, true),
        None => (kind, false),
    };
    match value {
        serde_json::Value::Null => nullable,
        serde_json::Value::Bool(_) => kind == "boolean",
        serde_json::Value::Number(n) => match kind {
            "integer" => n.is_u64() || n.is_i64(),
            "number" => true,
            _ => false,
        },
        serde_json::Value::String(_) => kind == "string",
        serde_json::Value::Object(_) => kind == "object",
        serde_json::Value::Array(_) => kind == "array",
    }
}

/// The events every run that re-provisions emits (`warning` and
/// `interrupted` only when something warns or interrupts).
const RUN_EVENTS: [&str; 8] = [
    "run_started",
    "pass_started",
    "batch",
    "pass_finished",
    "tenant",
    "run_finished",
    "progress",
    "summary",
];

#[test]
fn the_doc_has_the_common_fields_and_every_event_a_table() {
    let (common, events) = documented();
    assert_eq!(
        common.keys().map(String::as_str).collect::<Vec<_>>(),
        ["event", "schema_version", "ts"]
    );
    for &name in RUN_EVENTS.iter().chain(&["warning", "interrupted"]) {
        assert!(
            events.get(name).is_some_and(|f| !f.is_empty()),
            "docs/events.md lacks a table for {name}"
        );
    }
}

#[sqlx::test(migrations = false)]
async fn every_json_event_of_a_real_run_is_as_docs_events_md_says(pool: PgPool) {
    let (keys, cloud, _tenants, url) = cloud_fleet(&pool, fake_config(20, 20), 4).await;
    let out = run_cloud(
        &url,
        &cloud,
        &["--mode", "reprovision", "--json", "--batch-size", "2"],
        &key_args(&keys),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let (common, documented) = documented();
    let lines = json_lines(&out);
    let mut seen = BTreeSet::new();
    for line in &lines {
        let obj = line
            .as_object()
            .unwrap_or_else(|| panic!("not an object: {line}"));
        let name = obj["event"]
            .as_str()
            .unwrap_or_else(|| panic!("no event: {line}"));
        let fields = documented
            .get(name)
            .unwrap_or_else(|| panic!("event {name} is not in docs/events.md: {line}"));
        assert_eq!(obj["schema_version"], 1, "{line}");
        let ts = obj["ts"].as_str().expect("ts is text");
        chrono::DateTime::parse_from_rfc3339(ts).unwrap_or_else(|e| panic!("ts {ts}: {e}"));
        assert!(ts.ends_with('Z'), "ts in UTC: {ts}");
        let expected: BTreeSet<&String> = fields.keys().chain(common.keys()).collect();
        let got: BTreeSet<&String> = obj.keys().collect();
        assert_eq!(
            got, expected,
            "{name}: fields differ from docs/events.md: {line}"
        );
        for (field, kind) in fields.iter().chain(&common) {
            assert!(
                type_ok(&obj[field], kind),
                "{name}.{field} is not {kind}: {line}"
            );
        }
        seen.insert(name.to_string());
    }
    for name in RUN_EVENTS {
        assert!(seen.contains(name), "no {name} event in the run: {seen:?}");
    }
    let pass = lines
        .iter()
        .find(|l| l["event"] == "pass_started" && l["pass"] == 1)
        .expect("pass 1");
    assert_eq!(pass["rows"], 4, "the first pass's real row count: {pass}");
    let progress = lines
        .iter()
        .rev()
        .find(|l| l["event"] == "progress")
        .expect("progress");
    assert_eq!(progress["tenants_done"], 4, "{progress}");
    assert_eq!(progress["tenants_pending"], 0, "{progress}");
}
