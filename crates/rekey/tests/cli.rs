//! The `rekey` binary on its own, with no database and no test kit:
//! `--version` and `completions`. Being an integration test of this crate,
//! it also makes `cargo test --workspace` build the binary that the tests
//! in crates/rekey-it run.

use std::process::{Command, Output};

/// `rekey ARGS` at 100 columns; the database URL is never connected to.
fn rekey_at_100(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rekey"))
        .args(args)
        .env("COLUMNS", "100")
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:9/none")
        .output()
        .expect("run rekey")
}

/// Both output streams as text, for assertion messages.
fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn version_names_the_commit_and_the_build_date() {
    for flag in ["--version", "-V"] {
        let out = rekey_at_100(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let line = String::from_utf8(out.stdout).expect("UTF-8");
        // rekey 0.1.0 (commit 40e907a39932, built 2026-12-01)
        let rest = line
            .trim_end()
            .strip_prefix(&format!("rekey {} (commit ", env!("CARGO_PKG_VERSION")))
            .unwrap_or_else(|| panic!("{flag}: {line}"));
        let (commit, date) = rest
            .strip_suffix(')')
            .and_then(|r| r.split_once(", built "))
            .unwrap_or_else(|| panic!("{flag}: {line}"));
        assert!(
            commit == "unknown"
                || (commit.len() >= 7 && commit.chars().all(|c| c.is_ascii_hexdigit())),
            "{flag}: commit {commit:?}"
        );
        let parts: Vec<&str> = date.split('-').collect();
        assert!(
            parts.len() == 3
                && [4, 2, 2] == [parts[0].len(), parts[1].len(), parts[2].len()]
                && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit())),
            "{flag}: date {date:?}"
        );
    }
}

#[test]
fn completions_print_a_script_for_bash_zsh_and_fish() {
    for (shell, marker) in [
        ("bash", "complete -F _rekey"),
        ("zsh", "#compdef rekey"),
        ("fish", "complete -c rekey"),
    ] {
        let out = rekey_at_100(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let script = String::from_utf8(out.stdout).expect("UTF-8");
        assert!(script.contains(marker), "{shell}: no {marker:?}");
        for word in ["keygen", "verify", "old-key-file", "confirm-reprovision"] {
            assert!(script.contains(word), "{shell} script lacks {word}");
        }
        // The hidden test aid is never offered as a command; the word
        // stays only as seed's `--register-fake-cloud` option (`-l` in fish).
        for (at, _) in script.match_indices("register-fake-cloud") {
            let before = &script[..at];
            assert!(
                before.ends_with("--") || before.ends_with("-l "),
                "{shell} offers the hidden command: {}",
                &script[at.saturating_sub(60)..at + 20]
            );
        }
    }
    let out = rekey_at_100(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
