//! Stamps the binary with the commit it was built from and the build date,
//! for `rekey --version`: an incident log should say which binary ran.
//!
//! Never fails the build: without git (a source tarball) or outside a
//! checkout the commit is "unknown". The date honours SOURCE_DATE_EPOCH so
//! that reproducible builds stay reproducible.

use std::path::PathBuf;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

fn main() {
    println!("cargo:rustc-env=REKEY_GIT_COMMIT={}", git_commit());
    println!("cargo:rustc-env=REKEY_BUILD_DATE={}", build_date());
    println!("cargo:rerun-if-env-changed=SOURCE_DATE_EPOCH");
    // Rebuild the stamp when HEAD moves. Only paths that exist: cargo
    // treats a missing one as always changed and would rerun every build.
    // `--git-path` resolves them in a worktree too (where .git is a file).
    for path in ["HEAD", "packed-refs"]
        .into_iter()
        .map(String::from)
        .chain(head_ref())
        .filter_map(|p| git(&["rev-parse", "--git-path", &p]))
    {
        if PathBuf::from(&path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }
}

/// Output of `git ARGS` in this crate's folder, trimmed; `None` on any failure.
fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn git_commit() -> String {
    git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into())
}

/// The branch HEAD points at (`refs/heads/main`), whose file changes on commit.
fn head_ref() -> Option<String> {
    git(&["symbolic-ref", "-q", "HEAD"])
}

/// Today (UTC), or SOURCE_DATE_EPOCH's day, as YYYY-MM-DD.
fn build_date() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .ok()
                .and_then(|d| i64::try_from(d.as_secs()).ok())
        });
    match secs {
        Some(secs) => {
            let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
            format!("{y:04}-{m:02}-{d:02}")
        }
        None => "unknown".into(),
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `civil_from_days`). Written out rather than pulling a date crate into
/// the build script for one line of output.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}
