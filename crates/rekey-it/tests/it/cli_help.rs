//! The operator interface as someone meets it at 3 a.m.: what `--help`
//! prints (`--version` and `completions` are in crates/rekey/tests/cli.rs),
//! what `plan` advises next (pasted, it must work and never carry a
//! secret), and how `--quiet`, `--log-format` and `--json` shape the output. Always the real binary's output.

use std::process::Output;

use rekey_testkit::*;
use sqlx::PgPool;

/// Help and version need no database; this URL is never connected to.
const NO_DB: &str = "postgres://nobody@127.0.0.1:9/none";

/// `rekey ARGS` at 100 columns, the width the help is laid out for.
fn rekey_at_100(args: &[&str]) -> Output {
    rekey_cmd(NO_DB, args)
        .env("COLUMNS", "100")
        .output()
        .expect("run rekey")
}

fn help(args: &[&str]) -> String {
    let out = rekey_at_100(&[args, &["--help"]].concat());
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The lines of the help section under `heading` ("Keys:"), up to the next
/// heading: the options clap grouped there.
fn section<'a>(help: &'a str, heading: &str) -> Vec<&'a str> {
    let mut lines = help.lines().skip_while(|l| *l != heading);
    assert!(lines.next().is_some(), "no section {heading:?} in:\n{help}");
    lines
        .take_while(|l| l.is_empty() || l.starts_with(' '))
        .collect()
}

fn lists_option(lines: &[&str], option: &str) -> bool {
    lines
        .iter()
        .any(|l| l.split_whitespace().any(|w| w == option))
}

#[test]
fn run_help_groups_its_options_under_headings_and_fits_a_screen() {
    let h = help(&["run"]);
    let lines = h.lines().count();
    assert!(
        lines <= 80,
        "run --help is {lines} lines at 100 columns:\n{h}"
    );
    let groups: [(&str, &[&str]); 5] = [
        ("Keys:", &["--old-key-file", "--new-key-file"]),
        ("Database:", &["--database-url"]),
        (
            "Control-plane table:",
            &[
                "--table",
                "--id-column",
                "--db-column",
                "--updated-at-column",
            ],
        ),
        (
            "Re-provisioning:",
            &["--neon-rps", "--canary", "--neon-api-url", "--fly-api-url"],
        ),
        ("Output:", &["--json", "--quiet", "--log-format"]),
    ];
    for (heading, options) in groups {
        let lines = section(&h, heading);
        for option in options {
            assert!(
                lists_option(&lines, option),
                "{option} not under {heading}:\n{h}"
            );
        }
    }
    let own = section(&h, "Options:");
    for option in ["--mode", "--workers", "--batch-size", "--limit"] {
        assert!(
            lists_option(&own, option),
            "{option} not under Options:\n{h}"
        );
    }
    assert!(
        !lists_option(&own, "--table"),
        "table options mixed in:\n{h}"
    );
}

#[test]
fn each_command_lists_only_the_options_it_uses() {
    let absent: [(&str, &[&str]); 5] = [
        (
            "keygen",
            &[
                "--database-url",
                "--table",
                "--id-column",
                "--neon-api-url",
                "--old-key-file",
            ],
        ),
        ("completions", &["--database-url", "--table"]),
        ("status", &["--old-key-file", "--table", "--neon-api-url"]),
        (
            "finalize",
            &["--new-key-file", "--db-column", "--fly-api-url"],
        ),
        ("plan", &["--neon-api-url", "--fly-api-url", "--limit"]),
    ];
    for (command, options) in absent {
        let h = help(&[command]);
        for option in options {
            assert!(
                !h.contains(option),
                "`{command} --help` lists {option}, which {command} ignores:\n{h}"
            );
        }
    }
    let keygen = help(&["keygen"]);
    for option in ["--out", "--format", "--json"] {
        assert!(keygen.contains(option), "keygen lacks {option}:\n{keygen}");
    }
}

#[test]
fn every_environment_variable_is_named_in_the_help_of_the_commands_that_read_it() {
    let keys = ["OLD_SECRETS_ENCRYPTION_KEY", "NEW_SECRETS_ENCRYPTION_KEY"];
    let cloud = ["NEON_API_KEY", "FLY_API_TOKEN", "TENANT_REDIS_URL"];
    let cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "run",
            [
                &["DATABASE_URL", "NEON_API_URL", "FLY_API_URL"][..],
                &keys,
                &cloud,
            ]
            .concat(),
        ),
        ("plan", [&["DATABASE_URL"][..], &keys, &cloud].concat()),
        ("verify", [&["DATABASE_URL"][..], &keys].concat()),
        ("status", vec!["DATABASE_URL"]),
        ("finalize", vec!["DATABASE_URL"]),
        (
            "seed",
            vec![
                "DATABASE_URL",
                "SEED_SECRETS_ENCRYPTION_KEY",
                "OLD_SECRETS_ENCRYPTION_KEY",
            ],
        ),
        ("fleet-bench", vec!["DATABASE_URL", "REKEY_FAKE_CLOUD_BIN"]),
    ];
    for (command, vars) in cases {
        let h = help(&[command]);
        // Every command logs, and --log-format says how to choose the logs.
        for var in vars.iter().chain(&["RUST_LOG"]) {
            assert!(
                h.contains(var),
                "`{command} --help` does not name {var}:\n{h}"
            );
        }
    }
}

#[test]
fn help_never_shows_the_value_of_a_secret_variable() {
    let secret = "s3cr3t-do-not-print";
    let secret_url = format!("postgres://admin:{secret}@db.internal/cp");
    let commands = [
        "run", "plan", "verify", "status", "finalize", "seed", "keygen",
    ];
    for command in commands {
        let out = rekey_cmd(&secret_url, &[command, "--help"])
            .env("OLD_SECRETS_ENCRYPTION_KEY", secret)
            .env("NEW_SECRETS_ENCRYPTION_KEY", secret)
            .env("NEON_API_KEY", secret)
            .env("FLY_API_TOKEN", secret)
            .env("TENANT_REDIS_URL", format!("redis://:{secret}@r/0"))
            .env("SEED_SECRETS_ENCRYPTION_KEY", secret)
            .output()
            .expect("run rekey");
        let all = text(&out);
        assert!(
            !all.contains(secret),
            "`{command} --help` shows a secret:\n{all}"
        );
    }
}

#[test]
fn top_level_help_states_what_each_exit_code_means() {
    let h = help(&[]);
    let codes = section(&h, "Exit codes:");
    for (code, meaning) in [
        ("0", "done"),
        ("1", "not everything done"),
        ("2", "nothing changed"),
        ("130", "ctrl-c"),
    ] {
        assert!(
            codes
                .iter()
                .any(|l| l.trim_start().starts_with(&format!("{code} ")) && l.contains(meaning)),
            "exit code {code} ({meaning}) not explained:\n{h}"
        );
    }
    assert!(h.contains("RUST_LOG"), "{h}");
    assert!(h.contains("completions"), "{h}");
}

#[test]
fn keygen_with_json_prints_the_key_and_its_id_as_one_json_object() {
    let out = rekey_at_100(&["--json", "keygen"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", text(&out));
    let key = lines[0]["key"].as_str().expect("a key field");
    let key_id = lines[0]["key_id"].as_str().expect("a key_id field");
    let parsed: rekey::keys::Key = key.parse().expect("the key field is a key");
    assert_eq!(parsed.id().0, key_id);
    assert!(!String::from_utf8_lossy(&out.stderr).contains(key));

    // To a file, the key stays out of stdout: only its id and the file.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("new.key");
    let out = rekey_at_100(&["keygen", "--json", "--out", path_str(&file)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", text(&out));
    assert!(lines[0].get("key").is_none(), "{}", lines[0]);
    assert!(lines[0]["key_id"].is_string(), "{}", lines[0]);
    let written = std::fs::read_to_string(&file).expect("key file");
    assert!(!text(&out).contains(written.trim()));
}

/// A fleet in a table and a column the defaults do not name, so that the
/// next command only works if plan repeats the table options.
async fn renamed_fleet(pool: &PgPool, keys: &Keys, rows: u64) -> String {
    let table = reference_table(pool).await;
    seed_fleet(pool, &table, &keys.old, rows).await;
    sqlx::raw_sql(
        "ALTER TABLE org_instances RENAME COLUMN slug TO tenant_slug;
         ALTER TABLE org_instances RENAME TO tenants_v2;",
    )
    .execute(pool)
    .await
    .expect("rename the table");
    db_url(pool)
}

/// The command on plan's `next:` line, split as a shell would, without
/// the leading `rekey`.
fn next_command(plan: &Output) -> Vec<String> {
    let stdout = String::from_utf8_lossy(&plan.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("next: "))
        .unwrap_or_else(|| panic!("no next: line in\n{}", text(plan)));
    let words = shlex::split(line).unwrap_or_else(|| panic!("not shell words: {line}"));
    assert_eq!(words.first().map(String::as_str), Some("rekey"), "{line}");
    words[1..].to_vec()
}

#[sqlx::test(migrations = false)]
async fn plan_next_command_works_when_pasted(pool: PgPool) {
    let keys = Keys::new();
    let url = renamed_fleet(&pool, &keys, 40).await;
    // Key files in a folder with a space: the command must quote them.
    let spaced = keys.dir.path().join("key files");
    std::fs::create_dir(&spaced).expect("mkdir");
    let (old, new) = (spaced.join("old.key"), spaced.join("new.key"));
    std::fs::copy(&keys.old_file, &old).expect("copy old key");
    std::fs::copy(&keys.new_file, &new).expect("copy new key");
    let given = [
        "--old-key-file",
        path_str(&old),
        "--new-key-file",
        path_str(&new),
        "--table",
        "tenants_v2",
        "--slug-column",
        "tenant_slug",
    ];
    let paste = |next: &[String]| {
        let out = rekey(&url, &strs(next));
        assert_exit(&out, 0, &format!("pasted {next:?}"));
    };

    let plan = rekey(&url, &[&["plan", "--neon-rps", "5"][..], &given].concat());
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    let stdout = String::from_utf8_lossy(&plan.stdout);
    assert!(
        stdout.contains("(with DATABASE_URL set as now)"),
        "{stdout}"
    );
    let next = next_command(&plan);
    assert_eq!(next[..3], ["run", "--mode", "auto"], "{next:?}");
    for flag in given.iter().chain(&["--neon-rps", "5"]) {
        assert!(
            next.iter().any(|w| w == flag),
            "{flag} not repeated: {next:?}"
        );
    }
    paste(&next);

    // Once all rows are under the new key, the next step is verify, which
    // takes the same keys and table (and no re-provisioning knobs).
    let plan = rekey(&url, &[&["plan", "--neon-rps", "5"][..], &given].concat());
    let next = next_command(&plan);
    assert_eq!(next[0], "verify", "{next:?}");
    assert!(!next.iter().any(|w| w == "--neon-rps"), "{next:?}");
    paste(&next);
}

#[sqlx::test(migrations = false)]
async fn plan_next_command_never_repeats_a_database_password(pool: PgPool) {
    let OldKeyFleet { keys, .. } = old_key_fleet(&pool, 10).await;
    let mut with_password = url::Url::parse(&db_url(&pool)).expect("test URL");
    // The test server trusts local connections, so any password works.
    with_password
        .set_password(Some("hunter2-not-for-logs"))
        .expect("set password");
    let mut args = vec!["plan", "--database-url", with_password.as_str()];
    let keys_given = key_args(&keys);
    args.extend(keys_given.iter().map(String::as_str));
    let out = rekey_cmd(NO_DB, &args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run rekey");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let all = text(&out);
    assert!(!all.contains("hunter2"), "{all}");
    assert!(all.contains("export it as DATABASE_URL"), "{all}");
    let next = next_command(&out);
    assert!(!next.iter().any(|w| w == "--database-url"), "{next:?}");

    // Without a password the URL is no secret: repeated as given.
    let plain = db_url(&pool);
    let mut args = vec!["plan", "--database-url", plain.as_str()];
    args.extend(keys_given.iter().map(String::as_str));
    let out = rekey_cmd(NO_DB, &args)
        .env_remove("DATABASE_URL")
        .output()
        .expect("run rekey");
    let next = next_command(&out);
    let at = next.iter().position(|w| w == "--database-url");
    assert_eq!(
        at.map(|i| next[i + 1].as_str()),
        Some(plain.as_str()),
        "{next:?}"
    );
}

#[sqlx::test(migrations = false)]
async fn plan_warns_when_tenants_need_reprovisioning_and_cloud_variables_are_missing(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 10).await;
    // No old key: every tenant is re-provisioned.
    let new_only = ["plan", "--new-key-file", path_str(&keys.new_file)];
    let warning = |out: &Output| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("WARNING") && l.contains("not set:"))
            .map(String::from)
    };

    let out = rekey_cmd(&url, &new_only)
        .env("NEON_API_KEY", "neon-test-key")
        .output()
        .expect("run rekey");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let line = warning(&out).unwrap_or_else(|| panic!("no warning:\n{}", text(&out)));
    assert!(line.contains("10 tenants"), "{line}");
    assert!(
        line.contains("not set: FLY_API_TOKEN, TENANT_REDIS_URL"),
        "{line}"
    );
    assert!(!line.contains("neon-test-key"), "{line}");

    let out = rekey_cmd(&url, &new_only)
        .env("NEON_API_KEY", "neon-test-key")
        .env("FLY_API_TOKEN", "fly-test-token")
        .env("TENANT_REDIS_URL", "redis://127.0.0.1:6379/0")
        .output()
        .expect("run rekey");
    assert_eq!(warning(&out), None, "{}", text(&out));

    // In place only, nobody is re-provisioned: nothing to warn about.
    let with_old = rekey_with_keys(&url, &keys, &["plan"]);
    assert_eq!(warning(&with_old), None, "{}", text(&with_old));
}

/// `plan --neon-strategy reset-in-place` estimates re-provisioning from that
/// path's own calls per tenant (4 Neon, 7 Fly, not the default's 10 and
/// 9), and the command it suggests next keeps the strategy.
#[sqlx::test(migrations = false)]
async fn plan_estimates_reset_in_place_from_its_own_calls_and_keeps_it_in_the_next_command(
    pool: PgPool,
) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 10).await;
    let args = ["plan", "--new-key-file", path_str(&keys.new_file), "--json"];
    let plan_with = |extra: &[&str]| {
        let out = rekey(&url, &[&args[..], extra].concat());
        assert_exit(&out, 0, "plan");
        json_lines(&out)
            .into_iter()
            .find(|l| l.get("next_command").is_some())
            .unwrap_or_else(|| panic!("no plan report: {}", text(&out)))
    };
    let default = plan_with(&[]);
    let in_place = plan_with(&["--neon-strategy", "reset-in-place"]);
    let secs = |p: &serde_json::Value| p["estimate"]["reprovision_secs"].as_f64().expect("secs");
    // 10 tenants at 10 Neon req/s: 10 s at 10 calls, 4 s at 4.
    assert!((secs(&default) - 10.0).abs() < 1e-6, "{default}");
    assert!((secs(&in_place) - 4.0).abs() < 1e-6, "{in_place}");
    let next = in_place["next_command"].as_str().expect("next command");
    assert!(next.contains("--neon-strategy reset-in-place"), "{next}");
    let next = default["next_command"].as_str().expect("next command");
    assert!(!next.contains("--neon-strategy"), "{next}");
}

#[sqlx::test(migrations = false)]
async fn quiet_run_prints_no_progress_only_the_report(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 30).await;
    // Not a terminal, so without --quiet progress is plain lines on stderr.
    let loud = rekey_with_keys(
        &url,
        &keys,
        &["run", "--mode", "reencrypt", "--limit", "10"],
    );
    assert_eq!(loud.status.code(), Some(1), "{}", text(&loud));
    assert!(
        String::from_utf8_lossy(&loud.stderr).contains("rows/s"),
        "{}",
        text(&loud)
    );

    let quiet = rekey_with_keys(
        &url,
        &keys,
        &["run", "--quiet", "--mode", "reencrypt", "--limit", "10"],
    );
    assert_eq!(quiet.status.code(), Some(1), "{}", text(&quiet));
    assert_eq!(
        String::from_utf8_lossy(&quiet.stderr),
        "",
        "{}",
        text(&quiet)
    );
    assert!(
        String::from_utf8_lossy(&quiet.stdout).contains("re-encrypted"),
        "the final report still prints: {}",
        text(&quiet)
    );

    // With --json too: the summary line and no event lines.
    let out = rekey_with_keys(&url, &keys, &["--json", "-q", "run", "--mode", "reencrypt"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", text(&out));
    assert_eq!(lines[0]["event"], "summary", "{}", lines[0]);
}

#[sqlx::test(migrations = false)]
async fn log_format_json_writes_every_log_line_as_json(pool: PgPool) {
    let OldKeyFleet { keys, url, .. } = old_key_fleet(&pool, 5).await;
    let logs = |format: &str| {
        let mut cmd = rekey_cmd(&url, &["plan", "--log-format", format]);
        cmd.args(key_args(&keys)).env("RUST_LOG", "debug");
        let out = cmd.output().expect("run rekey");
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let json = logs("json");
    let lines: Vec<&str> = json.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "RUST_LOG=debug logged nothing");
    for line in lines {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    let text_logs = logs("text");
    assert!(
        text_logs
            .lines()
            .any(|l| serde_json::from_str::<serde_json::Value>(l).is_err()),
        "{text_logs}"
    );
}
