//! Human summaries of plans, runs, verifications and journal status, as
//! plain tables on stdout; `--json` prints the same reports as JSON.
//! Nothing here decides anything, and nothing here ever sees a secret.

use std::fmt::Write as _;
use std::io::Write;

use serde::Serialize;

use crate::cli::output::totals::Totals;
use crate::db::journal::{FailedItem, LedgerItem, RollbackMarks, RunCounts, RunRecord};
use crate::envelope::FieldClass;
use crate::rotate::batch::{ActionCounts, FieldCounts};
use crate::rotate::plan::PlanReport;
use crate::rotate::run::RunReport;
use crate::rotate::verify::VerifyReport;

/// Prints `text` to stdout; a closed pipe ends output quietly.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}

/// Prints a report as one JSON object line.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(line) => print(&format!("{line}\n")),
        Err(e) => eprintln!("rekey: cannot render JSON: {e}"),
    }
}

/// A duration in the unit a person reads best (ms, s, min, h).
pub fn duration(secs: f64) -> String {
    if secs < 1.0 {
        format!("{:.0} ms", secs * 1000.0)
    } else if secs < 120.0 {
        format!("{secs:.1} s")
    } else if secs < 7200.0 {
        format!("{:.1} min", secs / 60.0)
    } else if secs < 172_800.0 {
        format!("{:.1} h", secs / 3600.0)
    } else {
        format!("{:.1} days", secs / 86_400.0)
    }
}

fn fields_table(out: &mut String, fields: &FieldCounts) {
    let _ = writeln!(out, "  fields by class:");
    for class in FieldClass::ALL {
        let _ = writeln!(out, "    {:<14} {:>10}", class.as_str(), fields.get(class));
    }
}

fn actions_table(out: &mut String, a: &ActionCounts) {
    let _ = writeln!(out, "  rows by action:");
    let _ = writeln!(out, "    {:<14} {:>10}", "skip", a.skip);
    let _ = writeln!(out, "    {:<14} {:>10}", "reencrypt", a.reencrypt);
    let _ = writeln!(out, "    {:<14} {:>10}", "reprovision", a.reprovision);
}

pub fn plan_text(p: &PlanReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "plan for table {} (mode {}): {} rows",
        p.table,
        p.mode.as_str(),
        p.rows
    );
    let _ = writeln!(out, "  new key id: {}", p.new_key_id);
    let _ = writeln!(
        out,
        "  old key id: {}",
        p.old_key_id.as_deref().unwrap_or("(none given)")
    );
    actions_table(&mut out, &p.actions);
    fields_table(&mut out, &p.fields);
    let e = &p.estimate;
    let _ = writeln!(
        out,
        "  estimate: {} (in place {}, re-provision {})",
        duration(e.total_secs),
        duration(e.in_place_secs),
        duration(e.reprovision_secs),
    );
    let _ = writeln!(out, "    in place: {}", e.in_place_assumptions);
    let _ = writeln!(out, "    {}", e.reprovision_assumptions);
    for w in &p.warnings {
        let _ = writeln!(out, "  WARNING: {w}");
    }
    let _ = writeln!(out, "next: {}", p.next_command);
    if !p.next_command_env.is_empty() {
        let _ = writeln!(out, "  (with {} set as now)", p.next_command_env.join(", "));
    }
    out
}

pub fn run_text(r: &RunReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {} ({}, mode {}): {}{}",
        r.run_id,
        serde_json::to_value(r.start)
            .ok()
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default(),
        r.mode.as_str(),
        r.state,
        r.reason
            .as_ref()
            .map(|x| format!(" — {x}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  new key id {}, old key id {}",
        r.new_key_id,
        r.old_key_id.as_deref().unwrap_or("(none)")
    );
    counts_lines(&mut out, r);
    let _ = writeln!(
        out,
        "  in place: {:.0} rows/s over {}, batch p50 {:.1} ms p99 {:.1} ms, {} pass(es); total {}",
        r.rows_per_sec,
        duration(r.in_place_secs),
        r.batch_p50_ms,
        r.batch_p99_ms,
        r.passes,
        duration(r.elapsed_secs)
    );
    if !r.left.is_empty() {
        let shown = r.left.len().min(20);
        let _ = writeln!(
            out,
            "  rows left (first {shown} of {}; all of them with --json):",
            r.left_total
        );
        for l in r.left.iter().take(shown) {
            let _ = writeln!(out, "    {}  {}", l.org_id, l.reason);
        }
    }
    if r.cleanup_pending > 0 {
        let others = r.cleanup_pending.saturating_sub(r.run_cleanup_owed);
        let _ = writeln!(
            out,
            "  clean-up owed for {}{}: {}",
            tenants(r.cleanup_pending),
            if others > 0 {
                format!(" ({others} of other runs)")
            } else {
                String::new()
            },
            OWED_MEANS
        );
    }
    match r.state.as_str() {
        "finished" if r.cleanup_pending > 0 => {
            let _ = writeln!(
                out,
                "next: run the same command again once the clouds answer: it finishes the clean-up"
            );
        }
        "finished" => {
            let _ = writeln!(
                out,
                "next: rekey verify, then rekey finalize --run {}",
                r.run_id
            );
        }
        "running" => {
            let _ = writeln!(
                out,
                "next: run the same command again to resume run {}",
                r.run_id
            );
        }
        _ => {
            let _ = writeln!(
                out,
                "next: fix what the rows left say, then run the same command again (it re-opens run {})",
                r.run_id
            );
        }
    }
    out
}

/// The report of a run an error stopped before it could conclude: what
/// this invocation did, from the events it emitted, and that the run is
/// open. The error itself follows on stderr.
pub fn stopped_text(t: &Totals, now: std::time::Instant) -> String {
    let mut out = String::new();
    let reason = t
        .ending
        .as_ref()
        .and_then(|e| e.reason.as_deref())
        .unwrap_or("an error");
    let _ = writeln!(out, "run {}: stopped — {reason}", t.run_id);
    let _ = writeln!(
        out,
        "  this invocation, over {}: rows walked {} = skipped {} + re-encrypted {} + queued to \
         re-provision {} + left {}",
        duration(t.elapsed_secs(now)),
        t.rows,
        t.skipped,
        t.reencrypted,
        t.queued,
        t.rows.saturating_sub(t.skipped + t.reencrypted + t.queued)
    );
    if t.tenants_total() > 0 {
        let _ = writeln!(
            out,
            "  tenants {} = re-provisioned {} + given up {} + pending {}",
            t.tenants_total(),
            t.tenants_done_all(),
            t.tenants_given_up_all(),
            t.tenants_pending()
        );
    }
    let _ = writeln!(
        out,
        "  every batch that committed stays done; the journal holds the way back"
    );
    let _ = writeln!(
        out,
        "next: run {} is open: run the same command to resume",
        t.run_id
    );
    out
}

/// The run's counts as sums that add up, with the same definitions as
/// the progress display: rows by what the walk did with them, tenants by
/// where they stand over the whole run (earlier invocations included).
fn counts_lines(out: &mut String, r: &RunReport) {
    let rows = [
        ("rows walked", r.rows_walked),
        ("re-encrypted", r.reencrypted),
        ("queued to re-provision", r.queued_for_reprovision),
        ("re-provisioned", r.earlier.tenants_done + r.reprovisioned),
        (
            "re-provision given up",
            r.earlier.tenants_given_up + r.reprovision_failed,
        ),
        ("re-provision pending", r.tenants_pending),
        ("clean-up owed", r.cleanup_pending),
        ("changed under us", r.conflicts),
        ("KMS rows untouched", r.kms_rows_untouched),
        // Rows that do not open under the new key at the end: those of
        // tenants given up or pending are among them.
        ("rows left", r.left_total),
    ];
    for (name, n) in rows {
        let _ = writeln!(out, "  {name:<24} {n:>10}");
    }
    let unchanged = r
        .rows_walked
        .saturating_sub(r.skipped + r.reencrypted + r.queued_for_reprovision);
    let _ = writeln!(
        out,
        "  rows walked {} = skipped {} + re-encrypted {} + queued to re-provision {} + left {}",
        r.rows_walked, r.skipped, r.reencrypted, r.queued_for_reprovision, unchanged
    );
    let done = r.earlier.tenants_done + r.reprovisioned;
    let given_up = r.earlier.tenants_given_up + r.reprovision_failed;
    let total = done + r.run_cleanup_owed + given_up + r.tenants_pending;
    let owed = if r.run_cleanup_owed > 0 {
        format!(" + clean-up owed {}", r.run_cleanup_owed)
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "  tenants {total} = re-provisioned {done}{owed} + given up {given_up} + pending {}{}",
        r.tenants_pending,
        if r.earlier.tenants_done + r.earlier.tenants_given_up > 0 {
            format!(
                " (this invocation: re-provisioned {}, given up {})",
                r.reprovisioned, r.reprovision_failed
            )
        } else {
            String::new()
        }
    );
}

/// The verify report; `all`: every failing id, not only the first 20.
pub fn verify_text(v: &VerifyReport, all: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "verify table {} under new key {}: {} rows, {}",
        v.table,
        v.new_key_id,
        v.rows,
        if v.ok {
            "every field opens"
        } else {
            "SOME FIELDS DO NOT OPEN"
        }
    );
    fields_table(&mut out, &v.fields);
    if v.kms_rows > 0 {
        let _ = writeln!(
            out,
            "  {} rows hold KMS envelope blobs (not ours; not counted as failures)",
            v.kms_rows
        );
    }
    if !v.ok {
        let ids = if all {
            let _ = writeln!(out, "  {} rows fail:", v.failing_rows);
            &v.failing_all
        } else {
            let _ = writeln!(
                out,
                "  {} rows fail; first ones (every one with --all-failures):",
                v.failing_rows
            );
            &v.failing_examples
        };
        for id in ids {
            let _ = writeln!(out, "    {id}");
        }
    }
    if let Some(run) = v.verified_run {
        let _ = writeln!(
            out,
            "recorded run {run} as verified; next: rekey finalize --run {run}"
        );
    }
    out
}

/// A run as `status` shows it.
#[derive(Debug, Serialize)]
pub struct StatusReport {
    pub run: RunRecord,
    pub counts: RunCounts,
    /// Clean-ups owed in the whole journal (any run): `finalize` refuses
    /// while any is.
    pub cleanup_owed_all: i64,
    pub failed: Vec<FailedItem>,
    pub rollback: RollbackMarks,
}

pub fn status_text(s: &StatusReport) -> String {
    let r = &s.run;
    let c = &s.counts;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "run {}: {} (mode {}) on {}",
        r.id, r.state, r.mode, r.target_table
    );
    let _ = writeln!(
        out,
        "  new key id {}, old key id {}",
        r.new_key_id,
        r.old_key_id.as_deref().unwrap_or("(none)")
    );
    let _ = writeln!(out, "  started {}", r.started_at.to_rfc3339());
    if r.reopened > 0 {
        let _ = writeln!(
            out,
            "  re-opened {} time(s) by a later run with this key",
            r.reopened
        );
    }
    if let Some(f) = r.finished_at {
        let _ = writeln!(out, "  ended   {}", f.to_rfc3339());
    }
    if let Some(reason) = &r.reason {
        let _ = writeln!(out, "  reason: {reason}");
    }
    let _ = writeln!(
        out,
        "  re-encrypted in place {:>10} rows in {} batches",
        c.reencrypted, c.batches
    );
    let _ = writeln!(
        out,
        "  re-provision          {:>10} done, {} pending, {} given up, {} clean-up owed",
        c.items_done, c.items_pending, c.items_failed, c.items_owed
    );
    if c.items_owed > 0 {
        let _ = writeln!(out, "    clean-up owed: {OWED_MEANS}");
    }
    for (step, n) in &c.steps {
        let _ = writeln!(out, "    pending at {step:<18} {n:>8}");
    }
    for f in &s.failed {
        let _ = writeln!(
            out,
            "    given up {} at {} after {}: {}",
            f.org_id,
            f.step,
            attempts(i64::from(f.attempts)),
            f.last_error.as_deref().unwrap_or("-")
        );
    }
    let _ = writeln!(
        out,
        "  verified: {}; backups: {}",
        r.verified_at.map_or("no".into(), |v| v.to_rfc3339()),
        r.backups_purged_at
            .map_or("kept".into(), |p| format!("purged {}", p.to_rfc3339()))
    );
    match (&s.rollback.started_at, &s.rollback.finished_at) {
        (_, Some(done)) => {
            let _ = writeln!(out, "  rolled back {}", done.to_rfc3339());
        }
        (Some(began), None) => {
            let _ = writeln!(
                out,
                "  rollback begun {} and not complete: rekey rollback --run {} resumes it",
                began.to_rfc3339(),
                r.id
            );
        }
        (None, None) => {}
    }
    if s.cleanup_owed_all > c.items_owed {
        let _ = writeln!(
            out,
            "    plus {} clean-up(s) owed by other runs",
            s.cleanup_owed_all - c.items_owed
        );
    }
    let _ = writeln!(out, "next: {}", status_next(r, s.cleanup_owed_all));
    out
}

/// What `rekey run` shows a person at a terminal before it acts.
pub struct ConfirmFacts<'a> {
    /// The database URL, its secrets already hidden.
    pub database: &'a str,
    pub table: &'a str,
    pub mode: crate::envelope::Mode,
    pub new_key_id: &'a str,
    pub old_key_id: Option<&'a str>,
    pub actions: &'a crate::rotate::batch::ActionCounts,
}

/// The confirmation question: what will change, then "type yes".
pub fn confirm_text(f: &ConfirmFacts<'_>) -> String {
    let a = f.actions;
    let mut out = String::new();
    let _ = writeln!(out, "rekey run will change this control plane:");
    let _ = writeln!(out, "  database        {}", f.database);
    let _ = writeln!(out, "  table           {}", f.table);
    let _ = writeln!(
        out,
        "  keys            new {}, old {}",
        f.new_key_id,
        f.old_key_id.unwrap_or("none given")
    );
    let _ = writeln!(out, "  mode            {}", f.mode.as_str());
    let _ = writeln!(
        out,
        "  rows            {} re-encrypted in place, {} already current",
        a.reencrypt, a.skip
    );
    if a.reprovision > 0 {
        let what = if f.mode == crate::envelope::Mode::Reencrypt {
            "left as they are (reencrypt mode)"
        } else {
            "re-provisioned: new Neon branch, new Fly machine, fresh credentials"
        };
        let _ = writeln!(out, "  tenants         {} {what}", a.reprovision);
    }
    let _ = write!(
        out,
        "Type yes to go on (anything else stops with nothing changed): "
    );
    out
}

/// What an owed clean-up means for the operator, wherever it is counted.
const OWED_MEANS: &str = "the old credentials or the resources a given-up attempt made are still \
     there; every later `rekey run` retries the removal, and finalize is refused until it is done";

/// "1 tenant", "3 tenants".
fn tenants(n: u64) -> String {
    format!("{n} tenant{}", if n == 1 { "" } else { "s" })
}

/// "1 attempt", "3 attempts".
pub fn attempts(n: i64) -> String {
    format!("{n} attempt{}", if n == 1 { "" } else { "s" })
}

/// What the operator does next with the run `status` shows.
fn status_next(r: &RunRecord, owed: i64) -> String {
    let verified_after_finish = matches!(
        (r.verified_at, r.finished_at),
        (Some(v), Some(f)) if v >= f
    );
    match r.state.as_str() {
        "running" => format!(
            "run the same `rekey run` command to resume run {} (unless a process is still on it)",
            r.id
        ),
        "finished" if owed > 0 => format!(
            "run the same `rekey run` command again once the clouds answer: it finishes the clean-up \
             of run {} (finalize is refused until then)",
            r.id
        ),
        "failed" => format!(
            "fix what the reason says, then run the same `rekey run` command again: it re-opens run {}",
            r.id
        ),
        _ if r.backups_purged_at.is_some() && verified_after_finish => format!(
            "nothing: run {} is finished, verified and its backups are purged",
            r.id
        ),
        _ if verified_after_finish => format!(
            "rekey finalize --run {} (deletes the backups of the old ciphertexts)",
            r.id
        ),
        _ => format!("rekey verify, then rekey finalize --run {}", r.id),
    }
}

/// A run's ledger as a table: the tenants not finished first, then the
/// re-provisioned with what they moved from and to.
pub fn ledger_text(run_id: i64, items: &[LedgerItem]) -> String {
    let mut out = String::new();
    let (done, open): (Vec<&LedgerItem>, Vec<&LedgerItem>) =
        items.iter().partition(|i| i.state == "done");
    let _ = writeln!(
        out,
        "run {run_id}: {} tenants not finished, {} re-provisioned",
        open.len(),
        done.len()
    );
    if !open.is_empty() {
        let _ = writeln!(
            out,
            "  {:<38} {:<8} {:<10} {:>8}  reason",
            "tenant", "state", "last step", "attempts"
        );
        for i in &open {
            let _ = writeln!(
                out,
                "  {:<38} {:<8} {:<10} {:>8}  {}",
                i.org_id,
                if i.state == "failed" {
                    "given up"
                } else {
                    "pending"
                },
                i.step,
                i.attempts,
                i.last_error.as_deref().unwrap_or("-")
            );
        }
    }
    if !done.is_empty() {
        let _ = writeln!(
            out,
            "  {:<38} {:<24} {:<24} {:<18} {:<18}",
            "tenant", "old branch", "new branch", "old machine", "new machine"
        );
        let id = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        for i in &done {
            let _ = writeln!(
                out,
                "  {:<38} {:<24} {:<24} {:<18} {:<18}",
                i.org_id,
                id(&i.old_branch_id),
                id(&i.new_branch_id),
                id(&i.old_machine_id),
                id(&i.new_machine_id)
            );
        }
    }
    out
}

/// A run's ledger as CSV (RFC 4180 quoting), one tenant a line.
pub fn ledger_csv(items: &[LedgerItem]) -> String {
    fn cell(v: &str) -> String {
        if v.contains([',', '"', '\n', '\r']) {
            format!("\"{}\"", v.replace('"', "\"\""))
        } else {
            v.to_string()
        }
    }
    let mut out = String::from(
        "org_id,state,step,attempts,reason,old_branch_id,new_branch_id,old_machine_id,new_machine_id\n",
    );
    for i in items {
        let o = |v: &Option<String>| cell(v.as_deref().unwrap_or(""));
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{}",
            cell(&i.org_id),
            i.state,
            cell(&i.step),
            i.attempts,
            o(&i.last_error),
            o(&i.old_branch_id),
            o(&i.new_branch_id),
            o(&i.old_machine_id),
            o(&i.new_machine_id)
        );
    }
    out
}

/// What `--workers auto` chose and from what: a line on stderr, or an
/// event on stdout's JSON stream.
pub fn workers_chosen(t: &crate::rotate::inplace::Tuning, json: bool) {
    if json {
        print_json(&serde_json::json!({"event": "workers_chosen", "tuning": t}));
    } else {
        eprintln!(
            "workers auto: {} workers x {} rows per batch (measured round trip {:.1} ms, {} free connections)",
            t.workers, t.batch_size, t.rtt_ms, t.free_connections
        );
    }
}

/// fleet-bench's figures as a table.
pub fn bench_text(b: &crate::bench::BenchReport) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "fleet-bench: {} rows, batch size {}",
        b.rows, b.batch_size
    );
    let _ = writeln!(
        out,
        "  {:>8} {:>12} {:>10} {:>10} {:>9} {:>10}",
        "workers", "rows/s", "p50 ms", "p99 ms", "verified", "WAL B/row"
    );
    for f in &b.in_place {
        let _ = writeln!(
            out,
            "  {:>8} {:>12.0} {:>10.1} {:>10.1} {:>9} {:>10.0}",
            f.workers,
            f.rows_per_sec,
            f.batch_p50_ms,
            f.batch_p99_ms,
            f.verified,
            f.wal_bytes_per_row
        );
    }
    let _ = writeln!(
        out,
        "  floor (the server alone: one UPDATE of every row on {} connections): {:.0} rows/s, WAL {:.0} B/row; \
         in place / floor = {:.2}",
        b.floor.connections, b.floor.rows_per_sec, b.floor.wal_bytes_per_row, b.in_place_over_floor
    );
    for n in &b.across_network {
        let _ = writeln!(
            out,
            "  across {:>3} ms RTT: {} workers x {}: {:.0} rows/s = {:.2}x loopback; auto ({} workers x {}, \
             measured {:.1} ms): {:.0} rows/s = {:.2}x loopback, verified {}",
            n.rtt_ms,
            n.fixed.workers,
            b.batch_size,
            n.fixed.rows_per_sec,
            n.fixed_over_loopback,
            n.tuning.workers,
            n.tuning.batch_size,
            n.tuning.rtt_ms,
            n.auto.rows_per_sec,
            n.auto_over_loopback,
            n.fixed.verified && n.auto.verified
        );
    }
    let _ = writeln!(
        out,
        "  naive loop (1 SELECT + 1 UPDATE per row, 1 tx each) on {} rows: {:.0} rows/s; engine is {:.1}x faster",
        b.naive_sample, b.naive_rows_per_sec, b.speedup_over_naive
    );
    let _ = writeln!(
        out,
        "  projected wall time (= outage) for the in-place path:"
    );
    projection_table(
        &mut out,
        ["engine", "naive loop"],
        &b.projection,
        &b.naive_projection,
    );
    if let Some(p) = &b.reprovision {
        let a = &p.at_api_limits;
        let _ = writeln!(
            out,
            "  re-provision ({} tenants, concurrency {}, {} ms per call): {:.2} tenants/s, {:.1} calls per tenant \
             (Neon {:.1}, Fly {:.1}), {:.0}% of the latency bound {:.2} tenants/s",
            p.done,
            p.concurrency,
            p.latency_ms,
            p.tenants_per_sec,
            p.calls_per_tenant,
            p.neon_calls_per_tenant,
            p.fly_calls_per_tenant,
            100.0 * p.efficiency,
            p.bound_tenants_per_sec
        );
        let _ = writeln!(
            out,
            "  at a real run's pacing (Neon {} req/s, Fly {} req/s): {}",
            a.neon_rps,
            a.fly_rps,
            a.rate_text()
        );
        let _ = writeln!(out, "  projected wall time for the re-provision path:");
        projection_table(
            &mut out,
            ["API pacing", "fake, no limits"],
            &a.projection,
            &p.projection,
        );
    }
    if let Some(bytes) = b.peak_rss_bytes {
        let _ = writeln!(
            out,
            "  peak memory of this fleet-bench process (VmHWM): {:.1} MiB",
            bytes as f64 / (1024.0 * 1024.0)
        );
    }
    let m = &b.measured_on;
    let _ = writeln!(
        out,
        "  measured {} on {} CPUs, PostgreSQL {}, rekey {}",
        m.date, m.cpus, m.server_version, m.rekey_version
    );
    out
}

/// Two projections side by side: fleet size, then each path's wall time.
fn projection_table(
    out: &mut String,
    columns: [&str; 2],
    first: &[(u64, f64)],
    second: &[(u64, f64)],
) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "  {:>10} {:>14} {:>18}",
        "tenants", columns[0], columns[1]
    );
    let at = |points: &[(u64, f64)], n: u64| {
        points
            .iter()
            .find(|p| p.0 == n)
            .map_or_else(|| "not measured".to_string(), |p| duration(p.1))
    };
    for n in crate::bench::PROJECTED_FLEETS {
        let _ = writeln!(out, "  {n:>10} {:>14} {:>18}", at(first, n), at(second, n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::journal::RunStart;
    use crate::envelope::Mode;
    use crate::rotate::events::Earlier;
    use crate::rotate::run::PhaseSecs;
    use crate::rotate::Outcome;

    fn report(earlier: Earlier, done: u64, given_up: u64, pending: u64) -> RunReport {
        RunReport {
            run_id: 2,
            cleanup_pending: 0,
            run_cleanup_owed: 0,
            start: RunStart::Resumed,
            mode: Mode::Auto,
            new_key_id: "new".into(),
            old_key_id: None,
            state: "failed".into(),
            reason: None,
            rows_walked: 1_000,
            skipped: 100,
            reencrypted: 800,
            queued_for_reprovision: 60,
            reprovisioned: done,
            reprovision_failed: given_up,
            conflicts: 0,
            kms_rows_untouched: 0,
            left: Vec::new(),
            left_total: 38,
            fields_seen: FieldCounts::default(),
            elapsed_secs: 1.0,
            in_place_secs: 1.0,
            rows_per_sec: 1_000.0,
            batch_p50_ms: 1.0,
            batch_p99_ms: 1.0,
            passes: 1,
            phase_secs: PhaseSecs::default(),
            earlier,
            tenants_pending: pending,
            outcome: Outcome::Incomplete,
        }
    }

    #[test]
    fn durations_read_in_the_unit_an_outage_is_planned_in() {
        let cases = [
            (0.013, "13 ms"),
            (64.5, "64.5 s"),
            (642.0, "10.7 min"),
            (159_840.0, "44.4 h"),
            (1_600_000.0, "18.5 days"),
        ];
        for (secs, text) in cases {
            assert_eq!(duration(secs), text, "{secs} s");
        }
    }

    #[test]
    fn the_run_summary_counts_add_up() {
        let text = run_text(&report(Earlier::default(), 20, 40, 0));
        assert!(
            text.contains("rows walked 1000 = skipped 100 + re-encrypted 800 + queued to re-provision 60 + left 40"),
            "{text}"
        );
        assert!(
            text.contains("tenants 60 = re-provisioned 20 + given up 40 + pending 0"),
            "{text}"
        );
    }

    /// Tenants whose clean-up is owed are neither re-provisioned nor given
    /// up nor pending: counted apart so that the tenants add up, and the
    /// next step is the run again, not `finalize` (which refuses them).
    #[test]
    fn owed_clean_ups_are_counted_and_the_next_step_is_to_run_again() {
        let mut r = report(Earlier::default(), 99, 0, 0);
        r.state = "finished".into();
        r.cleanup_pending = 2;
        r.run_cleanup_owed = 2;
        let text = run_text(&r);
        assert!(
            text.contains(
                "tenants 101 = re-provisioned 99 + clean-up owed 2 + given up 0 + pending 0"
            ),
            "{text}"
        );
        assert!(text.contains("clean-up owed for 2 tenants: "), "{text}");
        let next = text.lines().find(|l| l.starts_with("next: ")).unwrap();
        assert!(!next.contains("finalize"), "{next}");
        assert!(next.contains("run the same command again"), "{next}");
    }

    #[test]
    fn a_resumed_runs_summary_counts_the_whole_run_as_progress_does() {
        let earlier = Earlier {
            tenants_done: 32,
            ..Earlier::default()
        };
        let text = run_text(&report(earlier, 7, 0, 0));
        assert!(
            text.contains("tenants 39 = re-provisioned 39 + given up 0 + pending 0 (this invocation: re-provisioned 7, given up 0)"),
            "{text}"
        );
    }
}
