//! Rendering engine events: progress bars on a terminal, plain periodic
//! lines otherwise, JSON lines with `--json`. Renderers only draw what the
//! engine emits; they never decide anything.

use std::io::Write;
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use super::totals::{fit, Totals};
use crate::rotate::events::{Event, EventSink, TenantOutcome};

/// The version of the JSON event lines' shape (`schema_version` in every
/// line; docs/events.md). Raised when a field changes meaning or goes away.
pub const SCHEMA_VERSION: u32 = 1;

/// How often `--json` emits a `progress` event and plain mode a line.
const PERIOD: Duration = Duration::from_secs(2);

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
            Style::Bars => Box::new(Bars::stderr()),
            Style::Plain => Box::new(Plain::stderr()),
            Style::Json => Box::new(JsonLines::stdout()),
            Style::Quiet => Box::new(Quiet),
        }
    }
}

/// Calls a function every [`PERIOD`] on its own thread until dropped, so
/// that rates, ETAs and `progress` events keep coming while no event does
/// (a slow cloud, a long lock wait).
struct Ticker {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start(tick: impl Fn() + Send + 'static) -> Ticker {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("rekey-progress".into())
            .spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(PERIOD) {
                    tick();
                }
            })
            .ok();
        Ticker {
            stop: Some(stop),
            thread,
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        // Disconnecting the channel ends the thread's wait at once.
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// An RFC 3339 UTC timestamp, to the millisecond.
pub fn timestamp() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What a given-up tenant says, in every human renderer.
fn given_up_line(event: &Event) -> Option<String> {
    match event {
        Event::Tenant {
            org_id,
            step,
            outcome: TenantOutcome::GivenUp,
            error,
        } => Some(format!(
            "tenant {org_id}: given up at step {step}: {}",
            error.as_deref().unwrap_or("-")
        )),
        _ => None,
    }
}

/// The lines every human renderer prints above its progress, if any.
pub fn notice_line(event: &Event) -> Option<String> {
    match event {
        Event::Warning { message } => Some(format!("warning: {message}")),
        Event::Interrupted {
            again: false,
            signal,
        } => Some(format!(
            "rekey: interrupted; finishing the work in flight ({signal}; the run stays open to \
             resume); Ctrl-C or SIGTERM again to stop at once"
        )),
        Event::Interrupted {
            again: true,
            signal,
        } => Some(format!(
            "rekey: {signal} again; stopping now (run the same command to resume)"
        )),
        _ => given_up_line(event),
    }
}

/// Where a renderer writes, shared with its ticker.
type Out = Mutex<Box<dyn Write + Send>>;

/// A line renderer's output and totals, shared with a ticker that calls
/// `tick` every [`PERIOD`] while a run is under way.
fn ticking(
    out: Box<dyn Write + Send>,
    tick: fn(&Out, &Totals),
) -> (Arc<(Out, Mutex<Totals>)>, Ticker) {
    let shared = Arc::new((Mutex::new(out), Mutex::new(Totals::default())));
    let ticking = Arc::clone(&shared);
    let ticker = Ticker::start(move || {
        let Ok(totals) = ticking.1.lock() else {
            return;
        };
        if totals.run_id != 0 && totals.ending.is_none() {
            tick(&ticking.0, &totals);
        }
    });
    (shared, ticker)
}

/// JSON event lines: every engine event with `schema_version` and `ts`,
/// plus a `progress` event every [`PERIOD`] and when the run ends.
pub struct JsonLines {
    shared: Arc<(Out, Mutex<Totals>)>,
    _ticker: Ticker,
}

impl JsonLines {
    pub fn stdout() -> JsonLines {
        JsonLines::new(Box::new(std::io::stdout()))
    }

    pub fn new(out: Box<dyn Write + Send>) -> JsonLines {
        let (shared, ticker) = ticking(out, write_progress);
        JsonLines {
            shared,
            _ticker: ticker,
        }
    }
}

/// Writes one JSON line with `schema_version` and `ts` in front.
fn write_json(out: &Out, value: serde_json::Value) {
    let mut line = serde_json::Map::new();
    line.insert("schema_version".into(), SCHEMA_VERSION.into());
    line.insert("ts".into(), timestamp().into());
    if let serde_json::Value::Object(fields) = value {
        line.extend(fields);
    }
    if let (Ok(text), Ok(mut out)) = (serde_json::to_string(&line), out.lock()) {
        // A closed pipe ends output quietly rather than failing the run.
        let _ = writeln!(out, "{text}");
        let _ = out.flush();
    }
}

fn write_progress(out: &Out, totals: &Totals) {
    if let Ok(serde_json::Value::Object(mut fields)) =
        serde_json::to_value(totals.snapshot(Instant::now()))
    {
        fields.insert("event".into(), "progress".into());
        write_json(out, serde_json::Value::Object(fields));
    }
}

impl EventSink for JsonLines {
    fn emit(&self, event: &Event) {
        let Ok(mut totals) = self.shared.1.lock() else {
            return;
        };
        totals.absorb(event, Instant::now());
        if let Ok(value) = serde_json::to_value(event) {
            write_json(&self.shared.0, value);
        }
        // The last figures, so that even a run shorter than a period has one.
        if matches!(event, Event::RunFinished { .. }) {
            write_progress(&self.shared.0, &totals);
        }
    }
}

/// `--quiet`: no progress, but what the operator must still see: the
/// engine's warnings, Ctrl-C, and every tenant given up.
pub struct Quiet;

impl EventSink for Quiet {
    fn emit(&self, event: &Event) {
        if let Some(line) = notice_line(event) {
            eprintln!("{} {line}", timestamp());
        }
    }
}

/// Plain lines on stderr (a pipe, a file), each with an RFC 3339 UTC
/// timestamp: one every [`PERIOD`], one per milestone, and every notice.
pub struct Plain {
    shared: Arc<(Out, Mutex<Totals>)>,
    _ticker: Ticker,
}

impl Plain {
    pub fn stderr() -> Plain {
        Plain::new(Box::new(std::io::stderr()))
    }

    pub fn new(out: Box<dyn Write + Send>) -> Plain {
        let (shared, ticker) = ticking(out, |out, totals| {
            plain_line(out, &status_line(totals, Instant::now()));
        });
        Plain {
            shared,
            _ticker: ticker,
        }
    }
}

fn plain_line(out: &Out, line: &str) {
    if let Ok(mut out) = out.lock() {
        let _ = writeln!(out, "{} {line}", timestamp());
    }
}

/// The whole state in one line, nothing cut: rows, then tenants when any.
fn status_line(totals: &Totals, now: Instant) -> String {
    let mut line = format!(
        "run {}: {}",
        totals.run_id,
        totals.rows_parts(now).join(", ")
    );
    if totals.tenants_total() > 0 || totals.ending.is_some() {
        line.push_str("; ");
        line.push_str(&totals.tenants_parts(now).join(", "));
    }
    line
}

impl EventSink for Plain {
    fn emit(&self, event: &Event) {
        let Ok(mut totals) = self.shared.1.lock() else {
            return;
        };
        let now = Instant::now();
        totals.absorb(event, now);
        if let Some(line) = notice_line(event) {
            plain_line(&self.shared.0, &line);
        }
        if matches!(
            event,
            Event::RunStarted { .. } | Event::PassFinished { .. } | Event::RunFinished { .. }
        ) {
            plain_line(&self.shared.0, &status_line(&totals, now));
        }
    }
}

/// indicatif bars on a terminal: rows walked, and tenants re-provisioned,
/// each on one line fitted to the terminal's width; notices print above
/// them through the bars' own renderer so the block is never torn.
pub struct Bars {
    core: Arc<BarsCore>,
    _ticker: Ticker,
}

struct BarsCore {
    multi: MultiProgress,
    rows: ProgressBar,
    tenants: ProgressBar,
    width: Box<dyn Fn() -> usize + Send + Sync>,
    state: Mutex<BarsState>,
}

#[derive(Default)]
struct BarsState {
    totals: Totals,
    rows_shown: bool,
    tenants_shown: bool,
    ended: bool,
}

/// The prefix's width ("in place", "tenants").
const PREFIX: usize = 8;

impl Bars {
    /// Bars on stderr, at the terminal's width as it is at each redraw.
    pub fn stderr() -> Bars {
        let term = console::Term::stderr();
        Bars::with_target(
            ProgressDrawTarget::stderr_with_hz(8),
            Box::new(move || usize::from(term.size().1)),
        )
    }

    /// Bars drawn into `term` (a test's virtual terminal).
    pub fn on_term<T: TermLike + Clone + 'static>(term: T) -> Bars {
        let width = term.clone();
        Bars::with_target(
            ProgressDrawTarget::term_like_with_hz(Box::new(term), 8),
            Box::new(move || usize::from(width.width())),
        )
    }

    fn with_target(
        target: ProgressDrawTarget,
        width: Box<dyn Fn() -> usize + Send + Sync>,
    ) -> Bars {
        let multi = MultiProgress::with_draw_target(target);
        let rows = ProgressBar::hidden();
        rows.set_prefix("in place");
        let tenants = ProgressBar::hidden();
        tenants.set_prefix("tenants");
        let core = Arc::new(BarsCore {
            multi,
            rows,
            tenants,
            width,
            state: Mutex::new(BarsState::default()),
        });
        let ticking = Arc::clone(&core);
        let ticker = Ticker::start(move || ticking.redraw(None));
        Bars {
            core,
            _ticker: ticker,
        }
    }
}

impl BarsCore {
    /// The bar's width, narrower on narrow terminals to leave room for counts.
    fn bar_width(width: usize) -> usize {
        if width >= 120 {
            30
        } else if width >= 90 {
            20
        } else {
            10
        }
    }

    fn style(bar: usize) -> ProgressStyle {
        ProgressStyle::with_template(&format!("{{prefix:>{PREFIX}}} [{{bar:{bar}}}] {{msg}}"))
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ")
    }

    /// Takes in `event` (if any) and redraws both bars from the totals.
    fn redraw(&self, event: Option<&Event>) {
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if state.ended {
            return;
        }
        let now = Instant::now();
        if let Some(event) = event {
            state.totals.absorb(event, now);
            if let Some(line) = notice_line(event) {
                let _ = self.multi.println(line);
            }
        }
        let t = &state.totals;
        let width = (self.width)().max(20);
        let bar = Self::bar_width(width);
        // prefix, space, [bar], space: what is left is the message's.
        let room = width.saturating_sub(PREFIX + bar + 4);
        let show_rows = t.total_rows > 0;
        let show_tenants = t.tenants_total() > 0;
        self.rows.set_style(Self::style(bar));
        self.rows.set_length(t.total_rows);
        self.rows.set_position(t.rows);
        self.rows.set_message(fit(&t.rows_parts(now), room));
        self.tenants.set_style(Self::style(bar));
        self.tenants.set_length(t.tenants_total());
        self.tenants.set_position(t.tenants_done_all());
        self.tenants
            .set_message(fit(&t.tenants_bar_parts(now), room));
        let ending = matches!(event, Some(Event::RunFinished { .. }));
        if show_rows && !state.rows_shown {
            state.rows_shown = true;
            self.multi.add(self.rows.clone());
        }
        if show_tenants && !state.tenants_shown {
            state.tenants_shown = true;
            self.multi.add(self.tenants.clone());
        }
        if ending {
            state.ended = true;
            self.end(&state);
        }
    }

    /// Leaves the bars as they are, with the truth: a bar is never filled
    /// to the end by finishing (abandon, not finish).
    fn end(&self, state: &BarsState) {
        if state.rows_shown {
            self.rows.abandon();
        }
        if state.tenants_shown {
            self.tenants.abandon();
        }
    }
}

impl EventSink for Bars {
    fn emit(&self, event: &Event) {
        self.core.redraw(Some(event));
    }
}

impl Drop for Bars {
    fn drop(&mut self) {
        if let Ok(mut state) = self.core.state.lock() {
            if !state.ended {
                state.ended = true;
                self.core.end(&state);
            }
        }
    }
}
