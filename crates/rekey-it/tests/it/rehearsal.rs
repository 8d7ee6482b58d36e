//! The staging rehearsal, end to end, as an operator runs it:
//! `scripts/make_snapshot.sh` makes a pg_dump of a seeded fleet (some
//! tenants undecryptable, so the fake cloud re-provisions them), then
//! `scripts/rehearse.sh` restores it, rotates, verifies and reports. Each
//! test also proves the rehearsal leaves nothing behind: no scratch
//! database, no fake-cloud process, no temporary directory, whether it
//! passed, failed or was stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rekey_testkit::{
    admin_connection, admin_url, binary, database_exists, path_str, repo_root, text,
};

fn repo() -> PathBuf {
    repo_root()
}

/// A script of `scripts/`, with the test-built binaries and the test server.
fn script(name: &str) -> Command {
    let mut cmd = Command::new(repo().join("scripts").join(name));
    cmd.env("REKEY_BIN", binary("rekey"))
        .env("FAKE_CLOUD_BIN", binary("fake-cloud"))
        .env("REKEY_ADMIN_URL", admin_url())
        .env_remove("OLD_SECRETS_ENCRYPTION_KEY")
        .env_remove("NEW_SECRETS_ENCRYPTION_KEY")
        .env_remove("NEON_API_URL")
        .env_remove("FLY_API_URL")
        .env_remove("NEON_API_KEY")
        .env_remove("FLY_API_TOKEN")
        .env("NO_COLOR", "1");
    cmd
}

/// A snapshot of `rows` tenants, a tenth of them undecryptable, sealed
/// under a key written next to it.
struct Snapshot {
    dir: tempfile::TempDir,
    dump: PathBuf,
    key: PathBuf,
}

fn make_snapshot(rows: u64, plain: bool) -> Snapshot {
    let dir = tempfile::tempdir().expect("tempdir");
    let dump = dir
        .path()
        .join(if plain { "fleet.sql" } else { "fleet.dump" });
    let key = dir.path().join("old.key");
    let mut cmd = script("make_snapshot.sh");
    if plain {
        cmd.arg("--plain");
    }
    let out = cmd
        .arg(&dump)
        .arg(&key)
        .arg(rows.to_string())
        .args([
            "--",
            "--undecryptable-share",
            "0.1",
            "--null-redis-share",
            "0.1",
            "--kms-share",
            "0.02",
        ])
        .output()
        .expect("run make_snapshot.sh");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(dump.exists() && key.exists(), "{}", text(&out));
    Snapshot { dir, dump, key }
}

/// Options that keep a rehearsal short: the fake cloud has no account
/// limits to respect, and its operations finish at once.
const FAST_RUN: [&str; 11] = [
    "--",
    "--neon-rps",
    "200",
    "--fly-rps",
    "200",
    "--poll-ms",
    "20",
    "--lookup-settle-ms",
    "100",
    // The fake's tenant database URLs point nowhere.
    "--prove-connect",
    "off",
];

/// What a rehearsal made, as its output names it.
struct Made {
    database: String,
    fake_cloud_pid: Option<u32>,
    fake_cloud_url: Option<String>,
    temp_dir: Option<PathBuf>,
}

fn what_it_made(script_pid: u32, out: &str) -> Made {
    let after = |marker: &str| {
        out.lines()
            .find_map(|l| l.split_once(marker).map(|(_, rest)| rest.to_string()))
    };
    let cloud = after("fake cloud at ");
    Made {
        database: format!("rekey_rehearsal_{script_pid}"),
        fake_cloud_url: cloud
            .as_deref()
            .and_then(|c| c.split_whitespace().next())
            .map(str::to_string),
        fake_cloud_pid: cloud.as_deref().and_then(|c| {
            c.split_once("(pid ")
                .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
        }),
        temp_dir: after("wrote a new key to ").map(|p| {
            PathBuf::from(p.split(" (mode").next().unwrap_or_default())
                .parent()
                .expect("the key file is in the rehearsal's directory")
                .to_path_buf()
        }),
    }
}

/// Databases named like a rehearsal's, whoever made them.
async fn rehearsal_databases() -> Vec<String> {
    sqlx::query_scalar(
        "SELECT datname FROM pg_database WHERE datname LIKE 'rekey\\_rehearsal\\_%' ORDER BY 1",
    )
    .fetch_all(&mut admin_connection().await)
    .await
    .expect("query pg_database")
}

fn process_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Asserts that everything the rehearsal made is gone.
async fn assert_left_nothing(made: &Made, out: &str) {
    assert!(
        !database_exists(&made.database).await,
        "scratch database {} left behind: {out}",
        made.database
    );
    if let Some(pid) = made.fake_cloud_pid {
        assert!(
            !process_alive(pid),
            "fake cloud (pid {pid}) left running: {out}"
        );
    }
    if let Some(url) = &made.fake_cloud_url {
        let addr = url.trim_start_matches("http://");
        assert!(
            std::net::TcpStream::connect(addr).is_err(),
            "something still answers on {addr}: {out}"
        );
    }
    if let Some(dir) = &made.temp_dir {
        assert!(
            !dir.exists(),
            "temporary directory {} left: {out}",
            dir.display()
        );
    }
}

/// Reads from the output `out` of the rehearsal `pid` what it made,
/// asserts that it started a fake cloud and that [`assert_left_nothing`]
/// holds; returns what it made, for the test's own checks.
async fn assert_cleaned_up(pid: u32, out: &str) -> Made {
    let made = what_it_made(pid, out);
    assert!(made.fake_cloud_pid.is_some(), "{out}");
    assert_left_nothing(&made, out).await;
    made
}

/// Asserts that the old key (the file `key`) is nowhere in `out`.
fn assert_key_not_printed(key: &Path, out: &str) {
    let key = std::fs::read_to_string(key).expect("read the old key");
    assert!(!out.contains(key.trim()), "the old key was printed: {out}");
}

/// Runs a rehearsal to its end; the script's pid names its database.
/// (Blocking is fine in these tests: nothing else runs on their runtime,
/// which only serves the queries of `pg_database`.)
fn rehearse(args: &[&str]) -> (u32, Output) {
    let child = script("rehearse.sh")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rehearse.sh");
    let pid = child.id();
    (pid, child.wait_with_output().expect("rehearse.sh output"))
}

#[tokio::test]
async fn rehearsal_rotates_a_restored_snapshot_and_leaves_nothing_behind() {
    let snap = make_snapshot(300, false);
    let mut args = vec!["--old-key-file", path_str(&snap.key), path_str(&snap.dump)];
    args.extend(FAST_RUN);
    let (pid, out) = rehearse(&args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");

    let stdout = String::from_utf8_lossy(&out.stdout);
    let run_line = stdout
        .lines()
        .find(|l| l.starts_with("run ") && l.contains("mode auto"))
        .unwrap_or_else(|| panic!("no run report: {all}"));
    assert!(run_line.ends_with(": finished"), "{run_line}");
    let count = |label: &str| -> u64 {
        stdout
            .lines()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {label:?} in the report: {all}"))
    };
    let reprovisioned = count("re-provisioned");
    assert!(reprovisioned >= 15, "few tenants re-provisioned: {all}");
    assert_eq!(count("queued to re-provision"), reprovisioned);
    assert_eq!(count("re-provision given up"), 0);
    assert_eq!(count("rows left"), 0);
    assert!(count("re-encrypted") >= 200, "{all}");
    assert!(stdout.contains("every field opens"), "{all}");
    assert!(stdout.contains("rekey verify:         passed"), "{all}");
    assert!(
        stdout.contains("cloud resources:      live machines per app unchanged"),
        "{all}"
    );
    assert!(stdout.contains("rekey run wall time:"), "{all}");
    assert!(stdout.contains("result:               passed"), "{all}");

    assert_key_not_printed(&snap.key, &all);

    let made = assert_cleaned_up(pid, &all).await;
    assert!(made.temp_dir.is_some(), "{all}");
    let ours: Vec<String> = rehearsal_databases()
        .await
        .into_iter()
        .filter(|d| *d == made.database)
        .collect();
    assert!(ours.is_empty(), "{ours:?}");
    drop(snap.dir);
}

#[tokio::test]
async fn a_failed_rehearsal_of_a_plain_sql_snapshot_still_cleans_up() {
    // The wrong old key: the run's wrong-key gate refuses to re-provision
    // the whole fleet, verify fails, and the rehearsal says FAILED.
    let snap = make_snapshot(60, true);
    let wrong = snap.dir.path().join("wrong.key");
    let out = Command::new(binary("rekey"))
        .arg("keygen")
        .arg("--out")
        .arg(&wrong)
        .output()
        .expect("keygen");
    assert!(out.status.success(), "{}", text(&out));
    let mut args = vec!["--old-key-file", path_str(&wrong), path_str(&snap.dump)];
    args.extend(FAST_RUN);
    let (pid, out) = rehearse(&args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("(sql) into scratch database"), "{all}");
    assert!(all.contains("--confirm-reprovision"), "{all}");
    assert!(all.contains("result:               FAILED"), "{all}");
    assert_cleaned_up(pid, &all).await;
}

#[tokio::test]
async fn a_rehearsal_stopped_with_sigterm_mid_run_cleans_up() {
    let snap = make_snapshot(200, false);
    // A slow fake cloud keeps `rekey run` busy re-provisioning.
    let mut child = script("rehearse.sh")
        .args(["--old-key-file", path_str(&snap.key)])
        .args(["--cloud-latency-ms", "200", "--cloud-op-ms", "300"])
        .arg(&snap.dump)
        // Two tenants in flight: the graceful stop has little to finish.
        .args([
            "--",
            "--provision-concurrency",
            "2",
            "--poll-ms",
            "20",
            "--prove-connect",
            "off",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run rehearse.sh");
    let pid = child.id();
    let (lines, seen) = mpsc::channel::<String>();
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let err_lines = lines.clone();
    let readers = [
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        }),
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = err_lines.send(line);
            }
        }),
    ];
    let mut all = String::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let line = seen
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("the run never started: {all}"));
        all.push_str(&line);
        all.push('\n');
        if line.starts_with("== rekey run") {
            break;
        }
    }
    // Let the run get going, then stop the script (and only the script).
    std::thread::sleep(Duration::from_millis(1500));
    let killed = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(killed.success());
    let status = child.wait().expect("wait for rehearse.sh");
    for reader in readers {
        reader.join().expect("reader thread");
    }
    all.extend(seen.try_iter().map(|l| l + "\n"));
    assert_eq!(status.code(), Some(143), "{all}");
    assert!(all.contains("stopping rekey"), "{all}");
    assert!(
        !all.contains("result:"),
        "the rehearsal went on after SIGTERM: {all}"
    );
    let made = assert_cleaned_up(pid, &all).await;
    assert!(made.temp_dir.is_some(), "{all}");
}

#[tokio::test]
async fn rehearsal_refuses_a_cloud_url_outside_loopback_before_making_anything() {
    let snap = make_snapshot(5, false);
    let out = script("rehearse.sh")
        .env("FLY_API_URL", "https://api.machines.dev/v1")
        .args(["--old-key-file", path_str(&snap.key)])
        .arg(&snap.dump)
        .output()
        .expect("run rehearse.sh");
    let all = text(&out);
    assert_eq!(out.status.code(), Some(2), "{all}");
    assert!(
        all.contains("FLY_API_URL") && all.contains("loopback"),
        "{all}"
    );
    assert!(!all.contains("restoring"), "{all}");
    assert!(!all.contains("fake cloud at"), "{all}");
}

/// The line of a rehearsal's output that starts with `prefix`.
fn line_starting<'a>(out: &'a str, prefix: &str) -> &'a str {
    out.lines()
        .map(str::trim_start)
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?}: {out}"))
}

#[tokio::test]
async fn chaos_rehearsal_killed_three_times_equals_the_uninterrupted_run_and_replays_by_seed() {
    let snap = make_snapshot(150, false);
    // A fake cloud slow enough that re-provisioning outlasts the journal
    // polls, and small batches, so that every kill point falls mid-run.
    // This seed draws the points 3, 43 and 54 of this fleet's 113 (15
    // backup batches, 14 tenants' 7 steps each): all well before the end,
    // so each attempt is still running when its point comes.
    let mut args = vec![
        "--chaos",
        "3",
        "--seed",
        "20261201",
        "--cloud-op-ms",
        "100",
        "--cloud-boot-ms",
        "100",
        "--old-key-file",
        path_str(&snap.key),
        path_str(&snap.dump),
    ];
    args.extend(FAST_RUN);
    args.extend(["--batch-size", "10"]);

    let (pid, out) = rehearse(&args);
    let all = text(&out);
    assert_eq!(out.status.code(), Some(0), "{all}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("CHAOS PASS:")),
        "{all}"
    );
    assert!(!all.contains("CHAOS FAIL"), "{all}");
    assert!(!all.contains("differs:"), "{all}");
    let kills = stdout
        .lines()
        .filter(|l| l.trim_start().starts_with("attempt ") && l.contains(": SIGKILL at"))
        .count();
    assert_eq!(kills, 3, "{all}");
    assert!(
        line_starting(&stdout, "chaos:").contains("3 kills (seed 20261201;"),
        "{all}"
    );
    assert!(stdout.contains("resumed after 3 kills"), "{all}");
    assert!(stdout.contains("rekey verify:         passed"), "{all}");
    assert!(stdout.contains("result:               passed"), "{all}");
    assert_key_not_printed(&snap.key, &all);

    let made = assert_cleaned_up(pid, &all).await;
    let reference = format!("{}_ref", made.database);
    assert!(
        !database_exists(&reference).await,
        "the reference copy {reference} was left behind: {all}"
    );
    let reference_cloud = line_starting(&all, "rehearse.sh: reference fake cloud at ");
    let reference_pid: u32 = reference_cloud
        .rsplit_once("(pid ")
        .and_then(|(_, p)| p.trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no pid in {reference_cloud:?}"));
    assert!(
        !process_alive(reference_pid),
        "the reference fake cloud was left running: {all}"
    );

    // The same seed on the same snapshot: the same kill points.
    let (_, again) = rehearse(&args);
    let again_all = text(&again);
    assert_eq!(again.status.code(), Some(0), "{again_all}");
    assert_eq!(
        line_starting(&String::from_utf8_lossy(&again.stdout), "== chaos: seed"),
        line_starting(&stdout, "== chaos: seed"),
        "{again_all}"
    );
    drop(snap.dir);
}
