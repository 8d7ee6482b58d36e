//! The running totals every progress renderer shows, kept from engine
//! events: rows by action, tenants done / given up / pending over the whole
//! run (earlier invocations included, so progress and the summary count
//! the same things), rates over the last few seconds (frozen when the
//! in-place pass ends, so they never decay while nothing is walked), and
//! the line fitting that keeps the most important counts on a narrow
//! terminal. Time is passed in, never read here, so the arithmetic is
//! tested without clocks.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::rotate::events::{Earlier, Event, EventSink, TenantOutcome};
use crate::rotate::reprovision::Step;

/// How far back the in-place rate looks: long enough to smooth batch
/// jitter, short enough to show a slowdown within seconds.
const ROWS_WINDOW: Duration = Duration::from_secs(5);

/// How far back the re-provision rate looks: a tenant takes seconds, so a
/// shorter window would swing between 0 and a burst.
const TENANTS_WINDOW: Duration = Duration::from_secs(30);

/// A rate over a sliding window of cumulative counts.
#[derive(Debug, Default, Clone)]
struct Window {
    samples: VecDeque<(Instant, u64)>,
}

impl Window {
    fn record(&mut self, now: Instant, total: u64, span: Duration) {
        self.samples.push_back((now, total));
        // Keep one sample older than the span, so the rate covers all of it.
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|(t, _)| now.duration_since(*t) >= span)
        {
            self.samples.pop_front();
        }
    }

    /// Units per second between the oldest kept sample and `now`.
    fn rate(&self, now: Instant) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, n0)), Some((_, n1))) => {
                let secs = now.duration_since(*t0).as_secs_f64();
                if secs > 0.0 {
                    n1.saturating_sub(*n0) as f64 / secs
                } else {
                    0.0
                }
            }
            _ => 0.0,
        }
    }
}

/// How the invocation ended, once it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ending {
    pub state: String,
    pub reason: Option<String>,
}

/// Running totals a renderer keeps from the events it saw.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    pub run_id: i64,
    /// Rows the walk covers: the first pass's rows plus every re-walk's.
    pub total_rows: u64,
    pub to_reprovision: u64,
    pub earlier: Earlier,
    pub rows: u64,
    pub reencrypted: u64,
    pub skipped: u64,
    pub queued: u64,
    pub left: u64,
    pub conflicts: u64,
    pub batches: u64,
    /// Tenants this invocation re-provisioned, gave up, retried.
    pub tenants_done: u64,
    pub tenants_given_up: u64,
    pub tenant_retries: u64,
    /// Each tenant in flight and the step it is at.
    pub in_flight: HashMap<String, String>,
    pub interrupted: bool,
    /// Clean-ups owed when the run concluded (from `RunFinished`).
    pub cleanup_owed: u64,
    pub ending: Option<Ending>,
    /// When the run started (the first event), for elapsed time.
    started: Option<Instant>,
    /// When the first in-place pass started.
    pass_started: Option<Instant>,
    /// Set when an in-place pass ends: the pass's average, which is what
    /// the summary reports; no live rate is shown while nothing is walked.
    frozen_rows_rate: Option<f64>,
    in_place: bool,
    rows_window: Window,
    tenants_window: Window,
}

impl Totals {
    /// Takes in one event seen at `now`.
    pub fn absorb(&mut self, event: &Event, now: Instant) {
        self.started.get_or_insert(now);
        match event {
            Event::RunStarted {
                run_id,
                total_rows,
                to_reprovision,
                earlier,
                ..
            } => {
                self.run_id = *run_id;
                self.total_rows = *total_rows;
                self.to_reprovision = *to_reprovision;
                self.earlier = *earlier;
                self.tenants_window.record(now, 0, TENANTS_WINDOW);
            }
            Event::PassStarted { pass, rows } => {
                if *pass > 1 {
                    self.total_rows += rows;
                }
                self.in_place = true;
                self.frozen_rows_rate = None;
                self.pass_started.get_or_insert(now);
                self.rows_window = Window::default();
                self.rows_window.record(now, self.rows, ROWS_WINDOW);
            }
            Event::Batch(b) => {
                self.batches += 1;
                self.rows += b.rows;
                self.reencrypted += b.reencrypted;
                self.skipped += b.skipped;
                self.queued += b.queued;
                self.left += b.left;
                self.conflicts += b.conflicts;
                self.rows_window.record(now, self.rows, ROWS_WINDOW);
            }
            Event::PassFinished { .. } => {
                // Rows over the walk's time, as the summary's rows/s.
                let secs = self
                    .pass_started
                    .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
                self.frozen_rows_rate = Some(if secs > 0.0 {
                    self.rows as f64 / secs
                } else {
                    0.0
                });
                self.in_place = false;
            }
            Event::Tenant {
                org_id,
                step,
                outcome,
                ..
            } => {
                match outcome {
                    TenantOutcome::Done | TenantOutcome::GivenUp => {
                        self.in_flight.remove(org_id);
                        self.tenants_done += u64::from(*outcome == TenantOutcome::Done);
                        self.tenants_given_up += u64::from(*outcome == TenantOutcome::GivenUp);
                    }
                    TenantOutcome::Retrying => {
                        self.in_flight.remove(org_id);
                        self.tenant_retries += 1;
                    }
                    TenantOutcome::Started | TenantOutcome::Stepped => {
                        self.in_flight.insert(org_id.clone(), step.clone());
                    }
                }
                self.tenants_window.record(
                    now,
                    self.tenants_done + self.tenants_given_up,
                    TENANTS_WINDOW,
                );
            }
            Event::Interrupted { .. } => self.interrupted = true,
            Event::RunFinished {
                state,
                reason,
                cleanup_owed,
                ..
            } => {
                self.ending = Some(Ending {
                    state: state.clone(),
                    reason: reason.clone(),
                });
                self.cleanup_owed = *cleanup_owed;
            }
            Event::Warning { .. } => {}
        }
    }

    /// Seconds since the first event.
    pub fn elapsed_secs(&self, now: Instant) -> f64 {
        self.started
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64())
    }

    /// Rows walked per second: over the last few seconds while a pass
    /// runs, the pass's average once it has ended.
    pub fn rows_rate(&self, now: Instant) -> f64 {
        match self.frozen_rows_rate {
            Some(rate) => rate,
            None if self.in_place => self.rows_window.rate(now),
            None => 0.0,
        }
    }

    /// Seconds until the rows still to walk are walked, at the current rate.
    pub fn rows_eta(&self, now: Instant) -> Option<f64> {
        let rate = self.rows_rate(now);
        let rest = self.total_rows.saturating_sub(self.rows);
        (self.in_place && rate > 0.0).then(|| rest as f64 / rate)
    }

    /// Every tenant of the run that needs re-provisioning: those the
    /// pre-scan found (given up earlier included) and those earlier
    /// invocations finished or left in clean-up.
    pub fn tenants_total(&self) -> u64 {
        let found = self.to_reprovision.max(self.queued);
        let total = found + self.earlier.tenants_done + self.earlier.tenants_in_cleanup;
        total.max(self.tenants_done_all() + self.tenants_given_up_all())
    }

    /// Tenants re-provisioned by this run, in every invocation.
    pub fn tenants_done_all(&self) -> u64 {
        self.earlier.tenants_done + self.tenants_done
    }

    /// Tenants given up by this run, in every invocation.
    pub fn tenants_given_up_all(&self) -> u64 {
        self.earlier.tenants_given_up + self.tenants_given_up
    }

    /// Tenants neither done nor given up (in flight, queued, in clean-up).
    pub fn tenants_pending(&self) -> u64 {
        self.tenants_total()
            .saturating_sub(self.tenants_done_all() + self.tenants_given_up_all())
    }

    /// Tenants settled (done or given up) per second, recently.
    pub fn tenants_rate(&self, now: Instant) -> f64 {
        self.tenants_window.rate(now)
    }

    /// Seconds until every pending tenant is settled, at the current rate.
    pub fn tenants_eta(&self, now: Instant) -> Option<f64> {
        let rate = self.tenants_rate(now);
        let pending = self.tenants_pending();
        (self.ending.is_none() && pending > 0 && rate > 0.0).then(|| pending as f64 / rate)
    }

    /// Tenants in flight per step, in the state machine's order.
    pub fn in_flight_by_step(&self) -> Vec<(Step, u64)> {
        Step::ALL
            .into_iter()
            .map(|step| {
                let n = self
                    .in_flight
                    .values()
                    .filter(|s| s.as_str() == step.as_str())
                    .count() as u64;
                (step, n)
            })
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// The in-place counts, most important first: how far, what failed,
    /// how fast, then what was done.
    pub fn rows_parts(&self, now: Instant) -> Vec<String> {
        let mut parts = vec![format!("{}/{} rows", self.rows, self.total_rows)];
        if self.left > 0 {
            parts.push(format!("left {}", self.left));
        }
        if self.frozen_rows_rate.is_some() {
            parts.push(format!("{:.0} rows/s (pass average)", self.rows_rate(now)));
        } else {
            parts.push(format!("{:.0} rows/s", self.rows_rate(now)));
        }
        if let Some(eta) = self.rows_eta(now) {
            parts.push(format!("ETA {}", eta_text(eta)));
        }
        parts.push(format!("queued {}", self.queued));
        parts.push(format!("re-encrypted {}", self.reencrypted));
        parts.push(format!("skipped {}", self.skipped));
        if self.conflicts > 0 {
            parts.push(format!("changed under us {}", self.conflicts));
        }
        parts
    }

    /// The re-provision counts, most important first: done, given up and
    /// pending (they add up to the total), how fast, then what is in flight.
    pub fn tenants_parts(&self, now: Instant) -> Vec<String> {
        self.tenants_parts_in(now, " tenants")
    }

    /// The same, for a line whose prefix already says "tenants" (the bar):
    /// "done 17/101" and "0.95/s", so that at 80 columns the rate and the
    /// ETA still fit beside the failures.
    pub fn tenants_bar_parts(&self, now: Instant) -> Vec<String> {
        self.tenants_parts_in(now, "")
    }

    fn tenants_parts_in(&self, now: Instant, unit: &str) -> Vec<String> {
        let mut parts = vec![
            format!(
                "done {}/{}{unit}",
                self.tenants_done_all(),
                self.tenants_total()
            ),
            format!("given up {}", self.tenants_given_up_all()),
        ];
        // Known once the run ends: the tenants whose clean-up is owed are
        // not pending in this run any more, as the report counts them.
        let owed = self.cleanup_owed.min(self.tenants_pending());
        if owed > 0 {
            parts.push(format!("clean-up owed {owed}"));
        }
        parts.push(format!("pending {}", self.tenants_pending() - owed));
        if let Some(end) = self.ending_text() {
            parts.push(end);
            return parts;
        }
        parts.push(format!("{:.2}{unit}/s", self.tenants_rate(now)));
        if let Some(eta) = self.tenants_eta(now) {
            parts.push(format!("ETA {}", eta_text(eta)));
        }
        let steps: Vec<String> = self
            .in_flight_by_step()
            .into_iter()
            .map(|(step, n)| format!("{step} {n}"))
            .collect();
        if !steps.is_empty() {
            parts.push(format!("in flight: {}", steps.join(" ")));
        }
        parts
    }

    /// How the invocation ended, in words, once it has; "interrupted"
    /// while the work in flight finishes after Ctrl-C.
    pub fn ending_text(&self) -> Option<String> {
        match &self.ending {
            Some(e) if e.state == "running" && self.interrupted => {
                Some("interrupted; run left open to resume".into())
            }
            Some(e) if e.state == "running" => Some("run left open to resume".into()),
            Some(e) => Some(format!("run {}", e.state)),
            None if self.interrupted => Some("interrupted; finishing the work in flight".into()),
            None => None,
        }
    }

    /// The figures of a `progress` JSON event.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        Snapshot {
            run_id: self.run_id,
            elapsed_seconds: self.elapsed_secs(now),
            rows_walked: self.rows,
            rows_total: self.total_rows,
            rows_reencrypted: self.reencrypted,
            rows_skipped: self.skipped,
            rows_queued: self.queued,
            rows_left: self.left,
            rows_per_second: self.rows_rate(now),
            rows_eta_seconds: self.rows_eta(now),
            tenants_total: self.tenants_total(),
            tenants_done: self.tenants_done_all(),
            tenants_given_up: self.tenants_given_up_all(),
            tenants_pending: self.tenants_pending(),
            tenants_per_second: self.tenants_rate(now),
            tenants_eta_seconds: self.tenants_eta(now),
            in_flight: self
                .in_flight_by_step()
                .into_iter()
                .map(|(s, n)| (s.as_str().to_string(), n))
                .collect(),
        }
    }
}

/// Totals kept from every event, for the report of a run that an error
/// stopped: the engine's own report exists only for a run that ended, yet
/// the operator must still be told what this invocation did.
#[derive(Debug, Default)]
pub struct Tally(std::sync::Mutex<Totals>);

impl Tally {
    /// The totals so far.
    pub fn totals(&self) -> Totals {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

impl EventSink for Tally {
    fn emit(&self, event: &Event) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .absorb(event, Instant::now());
    }
}

/// A `progress` event's figures (see docs/events.md).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub run_id: i64,
    pub elapsed_seconds: f64,
    pub rows_walked: u64,
    pub rows_total: u64,
    pub rows_reencrypted: u64,
    pub rows_skipped: u64,
    pub rows_queued: u64,
    pub rows_left: u64,
    pub rows_per_second: f64,
    pub rows_eta_seconds: Option<f64>,
    pub tenants_total: u64,
    pub tenants_done: u64,
    pub tenants_given_up: u64,
    pub tenants_pending: u64,
    pub tenants_per_second: f64,
    pub tenants_eta_seconds: Option<f64>,
    pub in_flight: std::collections::BTreeMap<String, u64>,
}

/// An ETA as a person reads it.
pub fn eta_text(secs: f64) -> String {
    let secs = secs.round() as u64;
    if secs < 120 {
        format!("{secs}s")
    } else if secs < 7200 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs / 60) % 60)
    }
}

/// Joins `parts` with ", " into at most `width` characters, keeping them
/// in order and dropping the least important (the last) first; the first
/// part is cut when even it does not fit.
pub fn fit(parts: &[String], width: usize) -> String {
    let mut line = String::new();
    for part in parts {
        let sep = if line.is_empty() { "" } else { ", " };
        if line.chars().count() + sep.len() + part.chars().count() > width {
            if line.is_empty() {
                line = part.chars().take(width).collect();
            }
            break;
        }
        line.push_str(sep);
        line.push_str(part);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rotate::events::BatchReport;

    fn tenant(org: &str, step: &str, outcome: TenantOutcome) -> Event {
        Event::Tenant {
            org_id: org.into(),
            step: step.into(),
            outcome,
            error: None,
        }
    }

    fn batch(rows: u64) -> Event {
        Event::Batch(BatchReport {
            rows,
            reencrypted: rows,
            ..BatchReport::default()
        })
    }

    fn started(total_rows: u64, to_reprovision: u64, earlier: Earlier) -> Event {
        Event::RunStarted {
            run_id: 1,
            start: crate::db::journal::RunStart::Started,
            mode: "auto".into(),
            new_key_id: "k".into(),
            old_key_id: None,
            total_rows,
            to_reprovision,
            earlier,
        }
    }

    #[test]
    fn tenants_in_flight_are_counted_per_step_in_the_state_machines_order() {
        let t0 = Instant::now();
        let mut t = Totals::default();
        t.absorb(&tenant("a", "queued", TenantOutcome::Started), t0);
        t.absorb(&tenant("b", "queued", TenantOutcome::Started), t0);
        t.absorb(&tenant("a", "machine", TenantOutcome::Stepped), t0);
        assert_eq!(
            t.in_flight_by_step(),
            vec![(Step::Queued, 1), (Step::Machine, 1)]
        );
        t.absorb(&tenant("a", "done", TenantOutcome::Done), t0);
        t.absorb(&tenant("b", "branch", TenantOutcome::Retrying), t0);
        assert!(t.in_flight_by_step().is_empty());
        assert_eq!((t.tenants_done, t.tenants_given_up), (1, 0));
    }

    #[test]
    fn the_rows_rate_covers_the_last_seconds_not_the_whole_run() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Totals::default();
        t.absorb(&started(100_000, 0, Earlier::default()), at(0));
        t.absorb(
            &Event::PassStarted {
                pass: 1,
                rows: 100_000,
            },
            at(0),
        );
        // Fast for 10 s, then 100 rows/s for 10 s.
        for s in 1..=10 {
            t.absorb(&batch(1_000), at(s));
        }
        for s in 11..=20 {
            t.absorb(&batch(100), at(s));
        }
        let rate = t.rows_rate(at(20));
        assert!((90.0..=300.0).contains(&rate), "{rate}");
    }

    #[test]
    fn the_rows_rate_freezes_at_the_pass_average_when_the_pass_ends() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut t = Totals::default();
        t.absorb(&started(1_000, 0, Earlier::default()), at(0));
        t.absorb(
            &Event::PassStarted {
                pass: 1,
                rows: 1_000,
            },
            at(0),
        );
        t.absorb(&batch(1_000), at(4));
        t.absorb(
            &Event::PassFinished {
                pass: 1,
                changed: 1_000,
            },
            at(4),
        );
        assert_eq!(t.rows_rate(at(4)), 250.0);
        assert_eq!(t.rows_rate(at(400)), 250.0, "no decay after the pass");
        assert_eq!(t.rows_eta(at(400)), None);
    }

    #[test]
    fn a_resumed_run_counts_the_tenants_earlier_invocations_settled() {
        let t0 = Instant::now();
        let mut t = Totals::default();
        let earlier = Earlier {
            reencrypted: 0,
            tenants_done: 30,
            tenants_given_up: 2,
            tenants_in_cleanup: 1,
        };
        // The pre-scan sees the 2 given up and 5 never finished.
        t.absorb(&started(100, 7, earlier), t0);
        t.absorb(&tenant("a", "done", TenantOutcome::Done), t0);
        assert_eq!(t.tenants_total(), 38);
        assert_eq!(t.tenants_done_all(), 31);
        assert_eq!(t.tenants_given_up_all(), 2);
        assert_eq!(t.tenants_pending(), 5);
    }

    #[test]
    fn fitting_drops_the_least_important_parts_first() {
        let parts: Vec<String> = [
            "done 1/20 tenants",
            "given up 19",
            "pending 0",
            "0.5 tenants/s",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(fit(&parts, 40), "done 1/20 tenants, given up 19");
        assert_eq!(fit(&parts, 200), parts.join(", "));
        assert_eq!(fit(&parts, 4), "done");
    }
}
