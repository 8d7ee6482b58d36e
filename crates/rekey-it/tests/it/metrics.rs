//! `rekey run --metrics-file FILE`: the file is Prometheus text exposition
//! format (checked by a strict parser below, not by searching for
//! strings) holding exactly the families docs/metrics.md lists, it exists
//! and parses at every moment of the run, it is rewritten while the run
//! waits with nothing to report, and its counters are the run's: rows
//! re-encrypted and left, batches and their durations, tenants
//! re-provisioned and the cloud requests that took, and how the
//! invocation ended.

use std::collections::{BTreeMap, BTreeSet};
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
    /// The value of `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let family = self
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no metric {name}"));
        let found: Vec<f64> = family
            .samples
            .iter()
            .filter(|(l, _)| {
                l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| *v)
            .collect();
        assert_eq!(found.len(), 1, "{name}{labels:?}: {found:?} in {family:?}");
        found[0]
    }

    /// The run `rekey_run_info` names, if it has its sample yet; no other
    /// series carries the run (a label that appears mid-run, or `run="0"`
    /// before the run is known, would split every series in two).
    fn run_id(&self) -> Option<String> {
        for (name, family) in &self.0 {
            if name != "rekey_run_info" {
                assert!(
                    family.samples.keys().all(|l| !l.contains_key("run")),
                    "{name} carries a run label: {family:?}"
                );
            }
        }
        let info = &self.0["rekey_run_info"].samples;
        assert!(info.len() <= 1, "{info:?}");
        info.keys().next().map(|l| l["run"].clone())
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
        let Some(open) = current.as_deref() else {
            return Err(err(format!("sample of {name} before any HELP/TYPE block")));
        };
        // A histogram's samples are its `_bucket`s, `_sum` and `_count`,
        // each kept as a family of its own name (typed `histogram`).
        let histogram_part = families.get(open).is_some_and(|f| f.kind == "histogram")
            && ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_suffix(suffix) == Some(open));
        if histogram_part {
            let (kind, help) = (families[open].kind.clone(), families[open].help.clone());
            let part = families.entry(name.to_string()).or_default();
            part.kind = kind;
            part.help = help;
            if name.ends_with("_bucket") && !labels.contains_key("le") {
                return Err(err(format!("bucket of {open} without le")));
            }
        } else if open != name {
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
    let histogram = "# HELP h H.\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 3\nh_sum 4.5\nh_count 3\n";
    let parsed = parse_exposition(histogram).expect("a histogram parses");
    assert_eq!(parsed.value("h_count", &[]), 3.0);
    assert_eq!(parsed.value("h_bucket", &[("le", "+Inf")]), 3.0);
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
        (
            "bucket without le",
            "# HELP h H.\n# TYPE h histogram\nh_bucket 1\n",
        ),
        (
            "histogram part of a gauge",
            "# HELP g G.\n# TYPE g gauge\ng_count 1\n",
        ),
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted ({why}): {bad:?}");
    }
}

// ---------------------------------------------------------------------------
// The file a real run writes.
// ---------------------------------------------------------------------------

/// A family as docs/metrics.md documents it: its type and, for each label,
/// the values it takes (`None`: open-ended, such as an HTTP status).
#[derive(Debug)]
struct Documented {
    kind: String,
    labels: LabelValues,
}

/// Label names and the values each may take (`None`: any value).
type LabelValues = BTreeMap<String, Option<BTreeSet<String>>>;

/// The words between backticks in a table cell.
fn backticked(cell: &str) -> Vec<String> {
    cell.split('`')
        .skip(1)
        .step_by(2)
        .map(String::from)
        .collect()
}

/// The families table of docs/metrics.md.
fn documented() -> BTreeMap<String, Documented> {
    let text =
        std::fs::read_to_string(repo_root().join("docs/metrics.md")).expect("docs/metrics.md");
    let mut families = BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("| `rekey_")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let [_, name, kind, labels, ..] = cells[..] else {
            panic!("a row of docs/metrics.md without its cells: {line}");
        };
        let mut by_name = BTreeMap::new();
        for part in labels.split(';').filter(|p| !p.trim().is_empty()) {
            match part.split_once(':') {
                Some((names, values)) => {
                    let listed = backticked(values);
                    let mut rest = values.to_string();
                    for v in &listed {
                        rest = rest.replace(&format!("`{v}`"), "");
                    }
                    let closed = rest.chars().all(|c| c == ',' || c.is_whitespace());
                    for label in backticked(names) {
                        by_name.insert(label, closed.then(|| listed.iter().cloned().collect()));
                    }
                }
                None => {
                    for label in backticked(part) {
                        by_name.insert(label, None);
                    }
                }
            }
        }
        let name = backticked(name).pop().expect("a family name in backticks");
        families.insert(
            name,
            Documented {
                kind: kind.to_string(),
                labels: by_name,
            },
        );
    }
    assert!(families.len() > 10, "docs/metrics.md lists {families:?}");
    families
}

/// Reads and parses the file, and checks it against docs/metrics.md: every
/// family there and nothing else, of its type, each sample with exactly the
/// documented labels and only documented values; every value of a closed
/// list present (a series that disappears reads as "no data").
fn read_metrics(path: &Path) -> Exposition {
    let text = std::fs::read_to_string(path).expect("read the metrics file");
    let parsed = parse_exposition(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let docs = documented();
    for (name, doc) in &docs {
        let family = parsed
            .0
            .get(name)
            .unwrap_or_else(|| panic!("no {name}:\n{text}"));
        assert_eq!(family.kind, doc.kind, "{name}");
        if doc.kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} lacks _total");
        }
        // A histogram's labels are its buckets'; its sum and count have none.
        let parts: Vec<(String, LabelValues)> = if doc.kind == "histogram" {
            vec![
                (format!("{name}_bucket"), doc.labels.clone()),
                (format!("{name}_sum"), BTreeMap::new()),
                (format!("{name}_count"), BTreeMap::new()),
            ]
        } else {
            vec![(name.clone(), doc.labels.clone())]
        };
        for (part, labels) in parts {
            let samples = &parsed
                .0
                .get(&part)
                .unwrap_or_else(|| panic!("no {part}"))
                .samples;
            for sample in samples.keys() {
                let names: BTreeSet<&String> = sample.keys().collect();
                assert_eq!(names, labels.keys().collect(), "{part}{sample:?}");
                for (label, values) in &labels {
                    if let Some(values) = values {
                        assert!(values.contains(&sample[label]), "{part}{sample:?}");
                    }
                }
            }
            for (label, values) in &labels {
                for value in values.iter().flatten() {
                    assert!(
                        samples.keys().any(|l| &l[label] == value),
                        "{part} has no {label}={value:?}:\n{text}"
                    );
                }
            }
        }
    }
    for name in parsed.0.keys() {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix))
            .filter(|base| docs.get(*base).is_some_and(|d| d.kind == "histogram"))
            .unwrap_or(name);
        assert!(docs.contains_key(base), "{name} is not in docs/metrics.md");
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

    assert_eq!(m.run_id(), Some(report["run_id"].to_string()));
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
    assert_eq!(m.value("rekey_rows_to_walk", &[]), 3_000.0);
    let batches = m.value("rekey_batches_total", &[]);
    assert!(batches >= 30.0, "{batches}");
    // Every batch is in the duration histogram, whose buckets only grow.
    assert_eq!(m.value("rekey_batch_duration_seconds_count", &[]), batches);
    assert_eq!(
        m.value("rekey_batch_duration_seconds_bucket", &[("le", "+Inf")]),
        batches
    );
    let buckets = &m.0["rekey_batch_duration_seconds_bucket"].samples;
    let mut by_bound: Vec<(f64, f64)> = buckets
        .iter()
        .map(|(l, v)| (parse_value(&l["le"]).expect("a bound"), *v))
        .collect();
    by_bound.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        by_bound.windows(2).all(|w| w[0].1 <= w[1].1),
        "{by_bound:?}"
    );
    assert!(m.value("rekey_batch_duration_seconds_sum", &[]) > 0.0);
    // Counters only: rates are the query's business.
    assert!(!m.0.keys().any(|name| name.contains("per_second")));
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
    let mut run = words("run --mode reencrypt --workers 1 --batch-size 50 --metrics-file");
    run.push(path_str(&file));
    let args = args_with_keys(&run, &keys);
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
    assert_eq!(m.value("rekey_rows_eta_seconds", &[]), 0.0);
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
    // No run was opened: no series names one (never run="0").
    assert_eq!(m.run_id(), None);
    assert!(m.value("rekey_start_time_seconds", &[]) > 1.7e9);
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
    assert_eq!(m.value("rekey_tenants_pending", &[]), 0.0);
    assert_eq!(run_state(&m), "finished");
    // Every request the tenants took, by API and answer.
    let requests = &m.0["rekey_cloud_requests_total"].samples;
    for api in ["neon", "fly"] {
        let answered: f64 = requests
            .iter()
            .filter(|(l, _)| l["api"] == api && l["status"].starts_with('2'))
            .map(|(_, v)| *v)
            .sum();
        assert!(
            answered >= done,
            "{api}: {answered} answered for {done} tenants: {requests:?}"
        );
    }
    cloud.shutdown().await;
}

/// The file is rewritten while the run waits with nothing to report (rows
/// another session holds locked), so a stale last-update time means a dead
/// process, not a quiet one.
#[sqlx::test(migrations = false)]
async fn metrics_file_is_rewritten_while_the_run_waits(pool: PgPool) {
    let table = reference_table(&pool).await;
    let keys = Keys::new();
    let tenants = seed_fleet(&pool, &table, &keys.old, 500).await;
    let held: Vec<String> = tenants
        .iter()
        .take(2)
        .map(|t| t.org_id.to_string())
        .collect();
    let mut guard = pool.begin().await.expect("begin");
    sqlx::query("SELECT 1 FROM org_instances WHERE org_id::text = ANY($1) FOR UPDATE")
        .bind(&held)
        .execute(&mut *guard)
        .await
        .expect("lock two rows");
    let file = keys.dir.path().join("waiting.prom");
    let args = args_with_keys(
        &[
            "run",
            "--lock-wait-secs",
            "120",
            "--metrics-file",
            path_str(&file),
        ],
        &keys,
    );
    let mut child = rekey_cmd(&db_url(&pool), &strs(&args))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rekey run");
    // Wait until every row but the two held is walked: the run now waits.
    let started = Instant::now();
    let first = loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the run never got to the locked rows"
        );
        if file.exists() {
            let m = read_metrics(&file);
            if m.value("rekey_rows_total", &[("action", "reencrypt")]) == 498.0 {
                break m;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::thread::sleep(rekey::cli::output::metrics::HEARTBEAT + Duration::from_secs(2));
    let later = read_metrics(&file);
    assert!(
        child.try_wait().expect("poll").is_none(),
        "the run ended while rows were held"
    );
    let updated = |m: &Exposition| m.value("rekey_last_update_time_seconds", &[]);
    assert!(
        updated(&later) - updated(&first) >= 1.0,
        "not rewritten while waiting: {} then {}",
        updated(&first),
        updated(&later)
    );
    assert_eq!(later.value("rekey_run_finished", &[]), 0.0);
    // The re-walks read the two held rows again (walked grows by them),
    // and neither rotate them nor count them as changed.
    let walked = |m: &Exposition| m.value("rekey_rows_walked_total", &[]);
    assert_eq!((walked(&later) - walked(&first)) % 2.0, 0.0);
    assert_eq!(
        later.value("rekey_rows_total", &[("action", "reencrypt")]),
        498.0
    );
    assert_eq!(later.value("rekey_conflicts_total", &[]), 0.0);

    guard.rollback().await.expect("release the rows");
    let status = child.wait().expect("wait for rekey");
    assert_eq!(status.code(), Some(0));
    let m = read_metrics(&file);
    assert_eq!(
        m.value("rekey_rows_total", &[("action", "reencrypt")]),
        500.0
    );
    assert_eq!(run_state(&m), "finished");
}
