//! Rendering engine events: progress bars on a terminal, plain periodic
//! lines otherwise, JSON lines with `--json`. Renderers only draw what the
//! engine emits; they never decide anything.

use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::rotate::events::{Event, EventSink, TenantOutcome};
use crate::rotate::reprovision::Step;

/// How progress should be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Bars,
    Plain,
    Json,
    /// `--quiet`: no progress at all; the final report still prints.
    Quiet,
}

impl Style {
    /// Nothing with `--quiet`, JSON on request, bars when stderr is a
    /// terminal, plain lines otherwise.
    pub fn detect(json: bool, quiet: bool) -> Style {
        use std::io::IsTerminal;
        if quiet {
            Style::Quiet
        } else if json {
            Style::Json
        } else if std::io::stderr().is_terminal() {
            Style::Bars
        } else {
            Style::Plain
        }
    }

    pub fn sink(self) -> Box<dyn EventSink> {
        match self {
            Style::Bars => Box::new(Bars::new()),
            Style::Plain => Box::new(Plain::new(Duration::from_secs(2))),
            Style::Json => Box::new(JsonLines),
            Style::Quiet => Box::new(Quiet),
        }
    }
}

/// Running totals a renderer keeps from the events it saw.
#[derive(Debug, Default, Clone)]
struct Totals {
    run_id: i64,
    total_rows: u64,
    to_reprovision: u64,
    rows: u64,
    reencrypted: u64,
    skipped: u64,
    queued: u64,
    left: u64,
    tenants_done: u64,
    tenants_failed: u64,
    /// Seconds the first pass took, once it is over (freezes the rate).
    in_place_secs: Option<f64>,
    /// Each tenant in flight and the step it is at.
    in_flight: std::collections::HashMap<String, String>,
}

impl Totals {
    fn absorb(&mut self, event: &Event) {
        match event {
            Event::RunStarted {
                run_id,
                total_rows,
                to_reprovision,
                ..
            } => {
                self.run_id = *run_id;
                self.total_rows = *total_rows;
                self.to_reprovision = *to_reprovision;
            }
            Event::Batch(b) => {
                self.rows += b.rows;
                self.reencrypted += b.reencrypted;
                self.skipped += b.skipped;
                self.queued += b.queued;
                self.left += b.left;
            }
            Event::Tenant {
                org_id,
                step,
                outcome,
                ..
            } => match outcome {
                TenantOutcome::Done | TenantOutcome::GivenUp | TenantOutcome::Retrying => {
                    self.in_flight.remove(org_id);
                    self.tenants_done += u64::from(*outcome == TenantOutcome::Done);
                    self.tenants_failed += u64::from(*outcome == TenantOutcome::GivenUp);
                }
                TenantOutcome::Started | TenantOutcome::Stepped => {
                    self.in_flight.insert(org_id.clone(), step.clone());
                }
            },
            _ => {}
        }
    }

    fn actions_line(&self) -> String {
        let mut line = format!(
            "reencrypted {}, skipped {}, queued {}, left {}; tenants re-provisioned {}/{} (failed {})",
            self.reencrypted,
            self.skipped,
            self.queued,
            self.left,
            self.tenants_done,
            self.to_reprovision.max(self.queued),
            self.tenants_failed
        );
        line.push_str(&self.steps_line());
        line
    }

    /// Tenants in flight per step, in the state machine's order.
    fn steps_line(&self) -> String {
        let count = |step: Step| {
            self.in_flight
                .values()
                .filter(|s| s.as_str() == step.as_str())
                .count()
        };
        let parts: Vec<String> = Step::ALL
            .into_iter()
            .filter(|s| count(*s) > 0)
            .map(|s| format!("{s} {}", count(s)))
            .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!("; in flight: {}", parts.join(", "))
        }
    }
}

/// JSON event lines on stdout.
pub struct JsonLines;

impl EventSink for JsonLines {
    fn emit(&self, event: &Event) {
        if let Ok(line) = serde_json::to_string(event) {
            // A closed pipe ends output quietly rather than failing the run.
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
        }
    }
}

/// `--quiet`: no progress, but what the operator must still see: the
/// engine's warnings and every tenant given up.
pub struct Quiet;

impl EventSink for Quiet {
    fn emit(&self, event: &Event) {
        match event {
            Event::Warning { message } => eprintln!("warning: {message}"),
            Event::Tenant {
                org_id,
                step,
                outcome: TenantOutcome::GivenUp,
                error,
            } => eprintln!(
                "tenant {org_id}: given up at step {step}: {}",
                error.as_deref().unwrap_or("-")
            ),
            _ => {}
        }
    }
}

/// Plain lines on stderr, at most one per `every`, plus one per milestone.
pub struct Plain {
    every: Duration,
    state: Mutex<(Totals, Instant, Instant)>,
}

impl Plain {
    pub fn new(every: Duration) -> Plain {
        let now = Instant::now();
        Plain {
            every,
            state: Mutex::new((Totals::default(), now, now)),
        }
    }
}

impl EventSink for Plain {
    fn emit(&self, event: &Event) {
        let Ok(mut guard) = self.state.lock() else {
            return;
        };
        let (totals, started, last) = &mut *guard;
        totals.absorb(event);
        let milestone = matches!(
            event,
            Event::RunStarted { .. } | Event::PassFinished { pass: 1, .. }
        );
        if let Event::PassFinished { pass: 1, .. } = event {
            totals.in_place_secs = Some(started.elapsed().as_secs_f64());
        }
        if let Event::Warning { message } = event {
            eprintln!("warning: {message}");
            return;
        }
        if let Event::Tenant {
            org_id,
            step,
            outcome: TenantOutcome::GivenUp,
            error,
        } = event
        {
            eprintln!(
                "tenant {org_id}: given up at step {step}: {}",
                error.as_deref().unwrap_or("-")
            );
        }
        if !milestone && last.elapsed() < self.every {
            return;
        }
        *last = Instant::now();
        let secs = totals
            .in_place_secs
            .unwrap_or_else(|| started.elapsed().as_secs_f64())
            .max(1e-3);
        let rate = totals.rows as f64 / secs;
        let eta = if rate > 0.0 && totals.total_rows > totals.rows {
            format!(
                ", ETA {:.0}s",
                (totals.total_rows - totals.rows) as f64 / rate
            )
        } else {
            String::new()
        };
        eprintln!(
            "run {}: {}/{} rows, {:.0} rows/s{eta}; {}",
            totals.run_id,
            totals.rows,
            totals.total_rows,
            rate,
            totals.actions_line()
        );
    }
}

/// indicatif bars on stderr: rows walked, and tenants re-provisioned.
pub struct Bars {
    multi: MultiProgress,
    rows: ProgressBar,
    /// Added to the display only once there are tenants to re-provision.
    tenants: ProgressBar,
    tenants_shown: std::sync::atomic::AtomicBool,
    totals: Mutex<Totals>,
}

impl Bars {
    pub fn new() -> Bars {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(8));
        let rows = multi.add(ProgressBar::new(0));
        rows.set_style(
            ProgressStyle::with_template(
                "{prefix:>9} [{bar:30}] {pos}/{len} rows, {rate} rows/s, ETA {eta}\n{wide_msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0}", state.per_sec());
                },
            )
            .progress_chars("=> "),
        );
        rows.set_prefix("in place");
        let tenants = ProgressBar::new(0);
        tenants.set_style(
            ProgressStyle::with_template("{prefix:>9} [{bar:30}] {pos}/{len} tenants {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        tenants.set_prefix("reprov");
        Bars {
            multi,
            rows,
            tenants,
            tenants_shown: std::sync::atomic::AtomicBool::new(false),
            totals: Mutex::new(Totals::default()),
        }
    }
}

impl Default for Bars {
    fn default() -> Bars {
        Bars::new()
    }
}

impl EventSink for Bars {
    fn emit(&self, event: &Event) {
        let Ok(mut totals) = self.totals.lock() else {
            return;
        };
        totals.absorb(event);
        match event {
            Event::RunStarted {
                total_rows,
                to_reprovision,
                ..
            } => {
                self.rows.set_length(*total_rows);
                self.tenants.set_length(*to_reprovision);
            }
            Event::Batch(b) => {
                self.rows.inc(b.rows);
                self.tenants
                    .set_length(totals.to_reprovision.max(totals.queued));
            }
            Event::PassStarted { pass, rows } if *pass > 1 => {
                self.rows.set_length(self.rows.length().unwrap_or(0) + rows);
            }
            Event::Tenant {
                org_id,
                step,
                outcome,
                ..
            } => {
                if matches!(outcome, TenantOutcome::Done | TenantOutcome::GivenUp) {
                    self.tenants.inc(1);
                }
                self.tenants.set_message(format!("{org_id}: {step}"));
            }
            Event::Warning { message } => self.rows.println(format!("warning: {message}")),
            _ => {}
        }
        self.rows.set_message(totals.actions_line());
        let tenants_known = totals.to_reprovision.max(totals.queued) > 0;
        if tenants_known
            && !self
                .tenants_shown
                .swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.multi.add(self.tenants.clone());
        }
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        self.rows.finish();
        self.tenants.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(org: &str, step: &str, outcome: TenantOutcome) -> Event {
        Event::Tenant {
            org_id: org.into(),
            step: step.into(),
            outcome,
            error: None,
        }
    }

    #[test]
    fn progress_counts_tenants_in_flight_per_step() {
        let mut t = Totals::default();
        t.absorb(&tenant("a", "queued", TenantOutcome::Started));
        t.absorb(&tenant("b", "queued", TenantOutcome::Started));
        t.absorb(&tenant("a", "machine", TenantOutcome::Stepped));
        assert!(
            t.actions_line()
                .ends_with("; in flight: queued 1, machine 1"),
            "{}",
            t.actions_line()
        );
        t.absorb(&tenant("a", "done", TenantOutcome::Done));
        t.absorb(&tenant("b", "branch", TenantOutcome::Retrying));
        assert_eq!(t.steps_line(), "");
        assert_eq!((t.tenants_done, t.tenants_failed), (1, 0));
    }
}
