//! `rekey run --metrics-file FILE`: the file is Prometheus text exposition
//! format (checked by a strict parser below, not by searching for
//! strings), it exists and parses at every moment of the run, and its
//! counters are the run's: rows re-encrypted and left, batches, tenants
//! re-provisioned through the fake cloud, and how the invocation ended.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use rekey::db::seed::SeedSpec;
use rekey_testkit::fake_cloud::{FakeCloud, FakeConfig};
use rekey_testkit::*;
use sqlx::PgPool;

// ---------------------------------------------------------------------------
// A strict parser of the text exposition format (version 0.0.4): what a
// Prometheus server or node_exporter's textfile collector accepts, and a
// little more strict (every family has HELP and TYPE, before its samples).
// ---------------------------------------------------------------------------

/// A metric family: its type, help and samples by label set.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: String,
    samples: BTreeMap<BTreeMap<String, String>, f64>,
}

/// Parsed exposition: families by name.
#[derive(Debug, Default)]
struct Exposition(BTreeMap<String, Family>);

impl Exposition {
    /// The value of `name` with exactly `labels` (besides `run`).
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let family = self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        let found: Vec<f64> = family
            .samples
            .iter()
            .filter(|(l, _)| {
                l.len() == labels.len() + 1
                    && l.contains_key("run")
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?} in {family:?}");
        found[0]
    }

    /// The one `run` label value every sample carries.
    fn run_label(&self) -> String {
        let runs: std::collections::BTreeSet<&String> = self
            .0
            .values()
            .flat_map(|f| f.samples.keys())
            .map(|l| l.get("run").expect("every sample has a run label"))
            .collect();
        assert_eq!(runs.len(), 1, "samples of several runs: {runs:?}");
        runs.into_iter().next().expect("one run").clone()
    }
}

fn is_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !s.starts_with("__")
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => s.parse::<f64>().map_err(|_| format!("bad value {s:?}")),
    }
}

/// `{k="v",...}` (the braces included) into a map; escapes `\\`, `\"`, `\n`.
fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, String> {
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| format!("labels not in braces: {s:?}"))?;
    let mut labels = BTreeMap::new();
    let mut rest = inner;
    while !rest.is_empty() {
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("label without =\": {rest:?}"))?;
        if !is_label_name(name) {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                None => return Err(format!("unterminated label value in {s:?}")),
                Some((i, '"')) => break i,
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                Some((_, c)) => value.push(c),
            }
        };
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("label {name} twice in {s:?}"));
        }
        rest = &after[end + 1..];
        rest = match rest.strip_prefix(',') {
            Some(r) if !r.is_empty() => r,
            Some(_) => return Err(format!("trailing comma in {s:?}")),
            None if rest.is_empty() => rest,
            None => return Err(format!("junk after a label value: {rest:?}")),
        };
    }
    Ok(labels)
}

/// Parses a whole file; any deviation is an error naming the line.
fn parse_exposition(text: &str) -> Result<Exposition, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("the file does not end with a newline".into());
    }
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    // Families whose samples have ended: a name may not come back later.
    let mut closed: std::collections::BTreeSet<String> = Default::default();
    let mut current: Option<String> = None;
    for (n, line) in text.lines().enumerate() {
        let err = |m: String| format!("line {}: {m}: {line:?}", n + 1);
        if line.is_empty() {
            continue;
        }
        if let Some(comment) = line.strip_prefix("# ") {
            let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
            let (name, arg) = rest.split_once(' ').unwrap_or((rest, ""));
            if !matches!(keyword, "HELP" | "TYPE") {
                return Err(err("comment that is neither HELP nor TYPE".into()));
            }
            if !is_metric_name(name) {
                return Err(err(format!("bad metric name {name:?}")));
            }
            if current.as_deref() != Some(name) {
                if let Some(done) = current.take() {
                    closed.insert(done);
                }
                if closed.contains(name) {
                    return Err(err(format!("{name} appears again after other metrics")));
                }
                current = Some(name.to_string());
            }
            let family = families.entry(name.to_string()).or_default();
            if !family.samples.is_empty() {
                return Err(err(format!("{keyword} after samples of {name}")));
            }
            let slot = if keyword == "HELP" {
                &mut family.help
            } else {
                if !matches!(
                    arg,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ) {
                    return Err(err(format!("unknown type {arg:?}")));
                }
                &mut family.kind
            };
            if !slot.is_empty() {
                return Err(err(format!("second {keyword} for {name}")));
            }
            *slot = arg.to_string();
            continue;
        }
        if line.starts_with('#') {
            return Err(err("comment without a space after #".into()));
        }
        let (series, value) = match line.find('}') {
            Some(i) => (&line[..=i], line[i + 1..].trim_start_matches(' ')),
            None => line
                .split_once(' ')
                .ok_or_else(|| err("sample without a value".into()))?,
        };
        let (name, labels) = match series.find('{') {
            Some(i) => (&series[..i], parse_labels(&series[i..]).map_err(err)?),
            None => (series, BTreeMap::new()),
        };
        if !is_metric_name(name) {
            return Err(err(format!("bad metric name {name:?}")));
        }
        if current.as_deref() != Some(name) {
            return Err(err(format!("sample of {name} outside its HELP/TYPE block")));
        }
        let mut parts = value.split(' ');
        let value = parse_value(parts.next().unwrap_or_default()).map_err(err)?;
        if let Some(ts) = parts.next() {
            ts.parse::<i64>()
                .map_err(|_| err(format!("bad timestamp {ts:?}")))?;
        }
        if parts.next().is_some() {
            return Err(err("junk after the value".into()));
        }
        let family = families.get_mut(name).expect("opened by its HELP/TYPE");
        if family.kind.is_empty() || family.help.is_empty() {
            return Err(err(format!(
                "{name} has no TYPE or no HELP before its samples"
            )));
        }
        if family.kind == "counter" && (value.is_nan() || value < 0.0) {
            return Err(err(format!("counter {name} is {value}")));
        }
        if family.samples.insert(labels, value).is_some() {
            return Err(err("the same series twice".into()));
        }
    }
    Ok(Exposition(families))
}

#[test]
fn the_parser_refuses_what_prometheus_would() {
    let good = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\n";
    let parsed = parse_exposition(good).expect("good file parses");
    assert_eq!(parsed.0["a_total"].samples.len(), 1);
    for (why, bad) in [
        ("no HELP", "# TYPE a counter\na 1\n"),
        ("no final newline", "# HELP a A.\n# TYPE a counter\na 1"),
        ("unknown type", "# HELP a A.\n# TYPE a countr\na 1\n"),
        (
            "same series twice",
            "# HELP a A.\n# TYPE a counter\na{x=\"1\"} 1\na{x=\"1\"} 2\n",
        ),
        ("negative counter", "# HELP a A.\n# TYPE a counter\na -1\n"),
        (
            "unquoted label value",
            "# HELP a A.\n# TYPE a gauge\na{x=1} 1\n",
        ),
        (
            "trailing comma",
            "# HELP a A.\n# TYPE a gauge\na{x=\"1\",} 1\n",
        ),
        ("not a number", "# HELP a A.\n# TYPE a gauge\na one\n"),
        (
            "sample outside its block",
            "# HELP a A.\n# TYPE a gauge\nb 1\n",
        ),
        (
            "family split in two",
            "# HELP a A.\n# TYPE a gauge\na 1\n# HELP b B.\n# TYPE b gauge\nb 1\n# HELP a A.\n",
        ),
        ("bad metric name", "# HELP 1a A.\n# TYPE 1a gauge\n1a 1\n"),
        ("malformed comment", "#HELP a A.\n"),
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted ({why}): {bad:?}");
    }
}

// ---------------------------------------------------------------------------
// The file a real run writes.
// ---------------------------------------------------------------------------

/// Every family the file must carry, with its type.
const FAMILIES: [(&str, &str); 11] = [
    ("rekey_rows_total", "counter"),
    ("rekey_rows_walked_total", "counter"),
    ("rekey_rows_in_table", "gauge"),
    ("rekey_batches_total", "counter"),
    ("rekey_conflicts_total", "counter"),
    ("rekey_tenants_total", "counter"),
    ("rekey_errors_total", "counter"),
    ("rekey_rows_per_second", "gauge"),
    ("rekey_eta_seconds", "gauge"),
    ("rekey_run_finished", "gauge"),
    ("rekey_run_state", "gauge"),
];

fn read_metrics(path: &Path) -> Exposition {
    let text = std::fs::read_to_string(path).expect("read the metrics file");
    let parsed = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    for (name, kind) in FAMILIES {
        let family = parsed
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no {name}:\n{text}"));
        assert_eq!(family.kind, kind, "{name}");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} lacks _total");
        }
    }
    parsed
}

/// The state `rekey_run_state` marks with 1 (exactly one of them).
fn run_state(m: &Exposition) -> String {
    let on: Vec<&String> = m.0["rekey_run_state"]
        .samples
        .iter()
        .filter(|(_, v)| **v == 1.0)
        .map(|(l, _)| &l["state"])
        .collect();
    assert_eq!(on.len(), 1, "{:?}", m.0["rekey_run_state"]);
    on[0].clone()
}

fn n(v: &serde_json::Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[sqlx::test(migrations = false)]
async fn metrics_file_counters_match_the_run_report(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet_with(&pool, mixed_fleet(3_000)).await;
    let file = keys.dir.path().join("rekey.prom");
    let out = rekey_with_keys(
        &url,
        &keys,
        &[
            "run",
            "--json",
            "--mode",
            "reencrypt",
            "--batch-size",
            "100",
            "--metrics-file",
            path_str(&file),
        ],
    );
    // Undecryptable rows are left in reencrypt mode: not everything done.
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let report = run_summary(&out);
    let m = read_metrics(&file);

    assert_eq!(m.run_label(), report["run_id"].to_string());
    let rows = |action| m.value("rekey_rows_total", &[("action", action)]);
    assert_eq!(rows("reencrypt"), n(&report["reencrypted"]));
    assert!(rows("reencrypt") > 2_000.0, "{report}");
    assert_eq!(rows("left"), n(&report["left_total"]));
    assert!(rows("left") > 200.0, "{report}");
    assert_eq!(rows("reprovision_queued"), 0.0);
    assert_eq!(
        m.value("rekey_rows_walked_total", &[]),
        n(&report["rows_walked"])
    );
    // Every walked row got exactly one action.
    let actions = rows("reencrypt") + rows("skip") + rows("left") + rows("reprovision_queued");
    assert_eq!(actions, m.value("rekey_rows_walked_total", &[]));
    assert_eq!(m.value("rekey_rows_in_table", &[]), 3_000.0);
    assert!(m.value("rekey_batches_total", &[]) >= 30.0);
    assert_eq!(
        m.value("rekey_conflicts_total", &[]),
        n(&report["conflicts"])
    );
    assert_eq!(
        m.value("rekey_errors_total", &[("class", "row_left")]),
        n(&report["left_total"])
    );
    assert_eq!(m.value("rekey_tenants_total", &[("outcome", "done")]), 0.0);
    assert_eq!(m.value("rekey_run_finished", &[]), 1.0);
    assert_eq!(run_state(&m), report["state"].as_str().expect("state"));
    assert!(!std::path::PathBuf::from(format!("{}.tmp", file.display())).exists());
}

#[sqlx::test(migrations = false)]
async fn metrics_file_exists_and_parses_throughout_the_run(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 30_000).await;
    let file = keys.dir.path().join("progress.prom");
    let args = args_with_keys(
        &[
            "run",
            "--mode",
            "reencrypt",
            "--workers",
            "1",
            "--batch-size",
            "50",
            "--metrics-file",
            path_str(&file),
        ],
        &keys,
    );
    let mut child = spawn_piped(&url, &args);

    let started = Instant::now();
    let mut reads_while_running = 0;
    let mut walked_seen: Vec<f64> = Vec::new();
    loop {
        let exited = child.try_wait().expect("poll the child").is_some();
        if file.exists() {
            let m = read_metrics(&file);
            walked_seen.push(m.value("rekey_rows_walked_total", &[]));
            // Still running after the read: the file was there during the run.
            if !exited && child.try_wait().expect("poll the child").is_none() {
                reads_while_running += 1;
            }
        }
        if exited {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "run hangs");
        std::thread::sleep(Duration::from_millis(25));
    }
    let out: Output = child.wait_with_output().expect("collect output");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(
        reads_while_running > 0,
        "the metrics file never existed while the run went on"
    );
    assert!(
        walked_seen.windows(2).all(|w| w[0] <= w[1]),
        "rows walked went backwards: {walked_seen:?}"
    );
    let m = read_metrics(&file);
    assert_eq!(m.value("rekey_rows_walked_total", &[]), 30_000.0);
    assert_eq!(
        m.value("rekey_rows_total", &[("action", "reencrypt")]),
        30_000.0
    );
    assert_eq!(m.value("rekey_batches_total", &[]), 600.0);
    assert_eq!(m.value("rekey_run_finished", &[]), 1.0);
    assert_eq!(run_state(&m), "finished");
    assert_eq!(m.value("rekey_eta_seconds", &[]), 0.0);
}

#[sqlx::test(migrations = false)]
async fn a_run_refused_after_the_file_was_made_marks_it_ended_in_error(pool: PgPool) {
    let table = reference_table(&pool).await;
    let keys = Keys::new();
    // Sealed under a third key: the old key opens nothing, the wrong-key
    // gate refuses to re-provision them all.
    let (third, _) = keys.another("third.key");
    seed_fleet(&pool, &table, &third, 50).await;
    let file = keys.dir.path().join("refused.prom");
    let out = rekey_with_keys(
        &db_url(&pool),
        &keys,
        &["run", "--metrics-file", path_str(&file)],
    );
    assert_refused(&out, &["--confirm-reprovision 50"]);
    let m = read_metrics(&file);
    assert_eq!(m.value("rekey_run_finished", &[]), 1.0);
    assert_eq!(run_state(&m), "error");
}

#[sqlx::test(migrations = false)]
async fn metrics_file_counts_tenants_reprovisioned_through_the_fake_cloud(pool: PgPool) {
    let spec = SeedSpec {
        rows: 120,
        undecryptable_share: 0.25,
        kms_share: 0.0,
        null_redis_share: 0.0,
        seed: 11,
    };
    let OldKeyFleet { keys, tenants, url } = old_key_fleet_with(&pool, spec).await;
    let unopenable = tenants
        .iter()
        .filter(|t| t.kind == rekey::db::seed::SeedKind::Undecryptable)
        .count();
    assert!(unopenable > 10, "{unopenable}");
    let cloud = FakeCloud::start(FakeConfig::default())
        .await
        .expect("fake cloud starts");
    let base = format!("http://{}", cloud.addr());
    rekey::cloud::register::register_fake_tenants(&base, &tenants)
        .await
        .expect("register tenants");

    let file = keys.dir.path().join("reprovision.prom");
    let args = args_with_keys(
        &[
            "run",
            "--json",
            "--neon-api-url",
            &cloud.neon_url(),
            "--fly-api-url",
            &cloud.fly_url(),
            "--poll-ms",
            "20",
            "--lookup-settle-ms",
            "50",
            "--prove-connect",
            "off",
            "--metrics-file",
            path_str(&file),
        ],
        &keys,
    );
    let mut cmd = rekey_cmd(&url, &[]);
    cmd.args(&args)
        .env("NEON_API_KEY", "fake-neon-key")
        .env("FLY_API_TOKEN", "fake-fly-token")
        .env("TENANT_REDIS_URL", "redis://tenant:fake@127.0.0.1:6379");
    // The fake cloud serves from this test's runtime: run the binary off it.
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run rekey");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let report = run_summary(&out);
    let m = read_metrics(&file);
    let done = m.value("rekey_tenants_total", &[("outcome", "done")]);
    assert_eq!(done, n(&report["reprovisioned"]));
    assert_eq!(done, unopenable as f64);
    assert_eq!(
        m.value("rekey_rows_total", &[("action", "reprovision_queued")]),
        unopenable as f64
    );
    assert_eq!(
        m.value("rekey_rows_total", &[("action", "reencrypt")]),
        (tenants.len() - unopenable) as f64
    );
    assert_eq!(
        m.value("rekey_tenants_total", &[("outcome", "given_up")]),
        0.0
    );
    assert_eq!(run_state(&m), "finished");
    cloud.shutdown().await;
}
