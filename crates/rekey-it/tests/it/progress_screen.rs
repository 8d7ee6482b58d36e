//! What the progress bars leave on a terminal, read back from a virtual
//! terminal of a fixed size (indicatif's `InMemoryTerm`): the tenants bar
//! tells done, given up and pending apart and ends with the truth, every
//! given-up tenant and the Ctrl-C notice print above the bars, the lines
//! fit 80 columns with the failures kept, and nothing is drawn before the
//! run knows what it walks.

use indicatif::InMemoryTerm;
use rekey::cli::output::progress::Bars;
use rekey::db::journal::RunStart;
use rekey::rotate::events::{BatchReport, Earlier, Event, EventSink, TenantOutcome};

fn started(total_rows: u64, to_reprovision: u64) -> Event {
    Event::RunStarted {
        run_id: 3,
        start: RunStart::Started,
        mode: "auto".into(),
        new_key_id: "new".into(),
        old_key_id: Some("old".into()),
        total_rows,
        to_reprovision,
        earlier: Earlier::default(),
    }
}

fn tenant(org: &str, step: &str, outcome: TenantOutcome, error: Option<&str>) -> Event {
    Event::Tenant {
        org_id: org.into(),
        step: step.into(),
        outcome,
        error: error.map(String::from),
    }
}

/// The events of `n` tenants, `org-00`, `org-01`, …, each reaching
/// `outcome` at `step`.
fn tenants(n: usize, step: &str, outcome: TenantOutcome, error: Option<&str>) -> Vec<Event> {
    (0..n)
        .map(|i| tenant(&format!("org-{i:02}"), step, outcome, error))
        .collect()
}

/// `n` tenants given up at `step` with `error`.
fn given_up(n: usize, step: &str, error: &str) -> Vec<Event> {
    tenants(n, step, TenantOutcome::GivenUp, Some(error))
}

fn finished(state: &str) -> Event {
    finished_owing(state, 0)
}

fn finished_owing(state: &str, cleanup_owed: u64) -> Event {
    Event::RunFinished {
        run_id: 3,
        state: state.into(),
        reason: None,
        cleanup_owed,
    }
}

/// The screen after `events`, rendered at `cols` columns.
fn screen(cols: u16, events: &[Event]) -> String {
    let term = InMemoryTerm::new(40, cols);
    let bars = Bars::on_term(term.clone());
    for e in events {
        bars.emit(e);
    }
    drop(bars);
    term.contents()
}

fn line_with<'a>(screen: &'a str, needle: &str) -> &'a str {
    screen
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no line with {needle:?}:\n{screen}"))
}

/// A run of `rows` rows that starts and walks them all in one pass,
/// leaving `left` and queueing `queued` tenants to re-provision.
fn walked_in_place(rows: u64, left: u64, queued: u64) -> Vec<Event> {
    vec![
        started(rows, queued),
        Event::PassStarted { pass: 1, rows },
        Event::Batch(BatchReport {
            rows,
            reencrypted: rows - left - queued,
            left,
            queued,
            ..BatchReport::default()
        }),
        Event::PassFinished {
            pass: 1,
            changed: rows - left,
        },
    ]
}

#[test]
fn tenants_all_given_up_leave_an_empty_bar_that_says_so_and_each_is_printed() {
    let mut events = walked_in_place(100, 0, 20);
    for i in 0..20 {
        let org = format!("org-{i:02}");
        events.push(tenant(&org, "queued", TenantOutcome::Started, None));
        events.push(tenant(
            &org,
            "branch",
            TenantOutcome::GivenUp,
            Some("neon 500"),
        ));
    }
    events.push(finished("failed"));
    let s = screen(160, &events);
    for i in 0..20 {
        let printed = format!("tenant org-{i:02}: given up at step branch: neon 500");
        assert!(s.contains(&printed), "{printed:?} not printed:\n{s}");
    }
    let bar = line_with(&s, "tenants [");
    assert!(
        bar.contains("done 0/20, given up 20, pending 0, run failed"),
        "{bar}"
    );
    assert!(!bar.contains("20/20"), "{bar}");
    assert!(!bar.contains('='), "an empty bar: {bar}");
}

#[test]
fn an_interrupted_run_shows_the_notice_once_and_the_tenants_still_pending() {
    let mut events = walked_in_place(503, 0, 503);
    events.extend(tenants(129, "done", TenantOutcome::Done, None));
    events.push(Event::Interrupted {
        again: false,
        signal: "SIGINT".into(),
    });
    events.push(finished("running"));
    let s = screen(160, &events);
    assert_eq!(
        s.matches("interrupted; finishing the work in flight")
            .count(),
        1,
        "{s}"
    );
    assert_eq!(
        s.matches("tenants [").count(),
        1,
        "the bars drawn once:\n{s}"
    );
    assert_eq!(
        s.matches("in place").count(),
        1,
        "the bars drawn once:\n{s}"
    );
    let bar = line_with(&s, "tenants [");
    assert!(
        bar.contains("done 129/503, given up 0, pending 374, interrupted; run left open to resume"),
        "{bar}"
    );
    assert!(!bar.contains("503/503"), "{bar}");
}

#[test]
fn at_80_columns_every_line_fits_and_failures_come_before_the_rest() {
    let mut events = walked_in_place(10_000, 38, 40);
    events.extend(tenants(
        40,
        "machine",
        TenantOutcome::GivenUp,
        Some("fly 503"),
    ));
    events.push(finished("failed"));
    let s = screen(80, &events);
    for line in s.lines() {
        assert!(line.chars().count() <= 80, "{line:?} is wider than 80");
    }
    let rows = line_with(&s, "in place");
    assert!(rows.contains("10000/10000 rows, left 38"), "{rows}");
    let tenants = line_with(&s, "tenants [");
    assert!(tenants.contains("given up 40, pending 0"), "{tenants}");
}

/// Mid-run at 80 columns the tenants bar keeps, after the failures, how
/// fast tenants settle and when they will all have (the re-provision pass
/// is most of an outage's wall time).
#[test]
fn at_80_columns_the_tenants_bar_mid_run_shows_its_rate_and_eta() {
    let mut events = walked_in_place(300_000, 0, 101);
    events.extend(given_up(3, "machine", "fly 503"));
    for i in 10..27 {
        let org = format!("org-{i:02}");
        events.push(tenant(&org, "queued", TenantOutcome::Started, None));
        std::thread::sleep(std::time::Duration::from_millis(5));
        events.push(tenant(&org, "done", TenantOutcome::Done, None));
    }
    events.push(tenant("org-90", "branch", TenantOutcome::Started, None));
    let s = screen(80, &events);
    let bar = line_with(&s, "tenants [");
    assert!(bar.chars().count() <= 80, "{bar:?} is wider than 80");
    assert!(
        bar.contains("done 17/101, given up 3, pending 81, "),
        "{bar}"
    );
    assert!(
        bar.contains("/s, ETA "),
        "no rate or ETA at 80 columns: {bar}"
    );
}

/// The bar ends with the counts the run's report gives: tenants whose
/// clean-up is owed are counted as such, not as pending.
#[test]
fn the_tenants_bar_ends_with_the_owed_clean_ups_counted_as_the_report_does() {
    let mut events = walked_in_place(1_000, 0, 101);
    events.extend(given_up(3, "branch", "neon 503"));
    for i in 3..99 {
        events.push(tenant(
            &format!("org-{i:02}"),
            "done",
            TenantOutcome::Done,
            None,
        ));
    }
    for org in ["org-99", "org-100"] {
        events.push(tenant(
            org,
            "cleanup",
            TenantOutcome::Retrying,
            Some("neon 503"),
        ));
    }
    events.push(finished_owing("failed", 2));
    let s = screen(160, &events);
    let bar = line_with(&s, "tenants [");
    assert!(
        bar.contains("done 96/101, given up 3, clean-up owed 2, pending 0, run failed"),
        "{bar}"
    );
}

#[test]
fn nothing_is_drawn_before_the_run_starts_and_no_empty_rows_bar_ever() {
    assert_eq!(screen(160, &[]).trim(), "", "bars before the run started");
    // A run whose selection has no rows to walk in place: no `0/0 rows` bar.
    let s = screen(
        160,
        &[
            started(0, 2),
            tenant("a", "done", TenantOutcome::Done, None),
            finished("running"),
        ],
    );
    assert!(!s.contains("in place"), "{s}");
    assert!(line_with(&s, "tenants [").contains("done 1/2,"), "{s}");
}

#[test]
fn the_rows_bar_ends_at_the_pass_average_rate_not_a_decaying_one() {
    let mut events = walked_in_place(1_000, 0, 0);
    events.push(finished("finished"));
    let s = screen(160, &events);
    assert!(
        line_with(&s, "in place").contains("rows/s (pass average)"),
        "{s}"
    );
}
