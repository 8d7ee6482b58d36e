//! The in-place time `plan` projects for a run: a model of what `run` does
//! (the passes of batches, the full reads around them, the round trips of
//! its fixed work), as a pure function of what plan measured on the target
//! database and of what it knows, or assumes, of the server's write rate.
//! Also the reading of a `fleet-bench --json` report for that rate.
//!
//! Not here: the measuring itself, which `plan` does read-only, and the
//! re-provisioning bound (`reprovision::throughput_bound`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::inplace::tune;
use crate::envelope::Mode;

/// How many times plan's full read of a row the server takes to write it
/// in place, when no fleet-bench report says: in four runs on the
/// reference 2-core machine, quiet and loaded, a pass at 4 workers (the
/// server saturated) took 8.5 to 9.5 times as long per row as the read
/// before it (README, "Planning"). A server with more cores than the
/// reference writes faster than its one-process read suggests, so there
/// this errs long; `--bench-file` measures instead.
pub const WRITE_COST_IN_READS: f64 = 8.5;

/// The time per row of a batch outside the server's busy share (the
/// client's crypto and decoding, the statement's transfer), in reads of a
/// row, when no fleet-bench report says: from the reference machine's
/// one-worker rate, which is that time plus the server's.
pub const LATENCY_IN_READS: f64 = 8.0;

/// Round trips of a run, one after another, outside its passes and full
/// reads, on a journal that is already this version's (a re-run, or a run
/// after an earlier one): a run of a ten-row table through a proxy adding
/// 20 ms took 53-54 round trips longer than on loopback, of which its reads
/// and batch account for 8 (README, "Planning"). Most of the rest are
/// statements prepared before they run (one more round trip each), the
/// journal's commits, and opening the connections.
pub const FIXED_ROUND_TRIPS: u32 = 46;

/// The round trips a run adds when it must create or bring up to date the
/// journal first (the first run on a database): the migrator's lock, its
/// bookkeeping table and each migration's transaction. The same ten-row run
/// on a database with no journal took 101-105 round trips longer than on
/// loopback.
pub const MIGRATION_ROUND_TRIPS: u32 = 50;

/// A run's fixed work that is not waiting for the network: the process,
/// the migrations' DDL, the journal's commits. 60 ms on loopback for a
/// ten-row table on the reference machine.
pub const FIXED_WORK: Duration = Duration::from_millis(60);

/// Plan's read of a row when the table is empty (nothing to measure) or
/// the read took no longer than its round trips: the reference machine's.
const REFERENCE_READ_PER_ROW: Duration = Duration::from_nanos(1_500);

/// How the run will choose its workers and batch size: the flags `run` and
/// `plan` share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerPlan {
    /// `--workers N --batch-size B`.
    Fixed { workers: usize, batch_size: i64 },
    /// `--workers auto`, within `--max-connections`.
    Auto { max_connections: usize },
}

/// Where the estimate takes the server's write rate from.
#[derive(Debug, Clone, PartialEq)]
pub enum WriteRate {
    /// From plan's read, at the reference machine's ratios.
    FromRead,
    /// Measured by fleet-bench against this server.
    Bench(ServerRate),
}

/// The server's in-place write rate the estimate took, and on what ground.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerRate {
    /// Rows per second of an in-place pass with a free round trip and
    /// enough workers: what the server's own work bounds.
    pub rows_per_sec: f64,
    /// Time per row of a batch outside the server's busy share.
    pub row_latency_us: f64,
    /// `assumed from the read`, or the fleet-bench file it was measured in.
    pub source: String,
}

impl WriteRate {
    /// The rate at which the server is taken to write, from what plan
    /// measured when nothing better is known.
    pub fn resolve(&self, m: &Measured) -> ServerRate {
        match self {
            WriteRate::Bench(rate) => rate.clone(),
            WriteRate::FromRead => {
                let read = read_per_row(m);
                ServerRate {
                    rows_per_sec: 1.0 / (WRITE_COST_IN_READS * read),
                    row_latency_us: LATENCY_IN_READS * read * 1e6,
                    source: ASSUMED.into(),
                }
            }
        }
    }
}

/// `ServerRate::source` when no fleet-bench report was given.
pub const ASSUMED: &str = "assumed";

impl ServerRate {
    /// True when the rate was measured by fleet-bench rather than assumed.
    pub fn measured(&self) -> bool {
        self.source != ASSUMED
    }
}

/// Seconds per row of plan's read, less its two round trips (the
/// statement's preparation and its execution): the server's and the
/// client's work per row, and the transfer.
fn read_per_row(m: &Measured) -> f64 {
    let floor = REFERENCE_READ_PER_ROW.as_secs_f64() / 10.0;
    if m.rows == 0 {
        return REFERENCE_READ_PER_ROW.as_secs_f64();
    }
    let work = m.read.as_secs_f64() - 2.0 * m.rtt.as_secs_f64();
    (work / m.rows as f64).max(floor)
}

/// Why a fleet-bench report gave no write rate.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum BenchFileError {
    #[error("is not the JSON `rekey fleet-bench --json` prints: {0}")]
    NotBenchJson(String),
    #[error("holds no in-place measurement with a positive rate (nor a floor)")]
    NoRate,
}

/// The parts of a `fleet-bench --json` report the estimate reads.
#[derive(Debug, Deserialize)]
struct BenchFile {
    in_place: Vec<BenchFigure>,
    floor: Option<BenchFloor>,
}

#[derive(Debug, Deserialize)]
struct BenchFigure {
    workers: usize,
    rows: u64,
    secs: f64,
    /// Missing in reports from before the field existed: then `secs`.
    pass_secs: Option<f64>,
}

#[derive(Debug, Deserialize)]
struct BenchFloor {
    rows_per_sec: f64,
}

/// The engine's best loopback rate as a share of the server's floor (one
/// `UPDATE` of every row, no client work) on the reference machine: how a
/// report with a floor and no usable engine figure is read.
const ENGINE_SHARE_OF_FLOOR: f64 = 0.6;

/// Reads the server's write rate from a `fleet-bench --json` report made
/// against the same server: the best in-place pass rate (rows over the
/// passes' seconds, without the run's fixed work), and the per-row latency
/// from the one-worker figure when there is one (one worker alone takes
/// `latency + 1 / rate` per row). `name` is how the report names the file.
pub fn rate_from_bench(json: &str, name: &str) -> Result<ServerRate, BenchFileError> {
    let file: BenchFile =
        serde_json::from_str(json).map_err(|e| BenchFileError::NotBenchJson(e.to_string()))?;
    let rate = |f: &BenchFigure| {
        let secs = f.pass_secs.filter(|s| *s > 0.0).unwrap_or(f.secs);
        (secs > 0.0).then(|| f.rows as f64 / secs)
    };
    let best = file
        .in_place
        .iter()
        .filter_map(rate)
        .fold(0.0_f64, f64::max);
    let source = format!("measured by fleet-bench ({name})");
    if best > 0.0 {
        let alone = file.in_place.iter().find(|f| f.workers == 1).and_then(rate);
        let latency = match alone {
            Some(one) => (1.0 / one - 1.0 / best).max(0.0),
            // Without it, the reference machine's latency at this rate.
            None => LATENCY_IN_READS / (WRITE_COST_IN_READS * best),
        };
        return Ok(ServerRate {
            rows_per_sec: best,
            row_latency_us: latency * 1e6,
            source,
        });
    }
    match file.floor {
        Some(floor) if floor.rows_per_sec > 0.0 => Ok(ServerRate {
            rows_per_sec: floor.rows_per_sec * ENGINE_SHARE_OF_FLOOR,
            row_latency_us: LATENCY_IN_READS / (WRITE_COST_IN_READS * floor.rows_per_sec) * 1e6,
            source: format!("{ENGINE_SHARE_OF_FLOOR} x the floor {source}"),
        }),
        _ => Err(BenchFileError::NoRate),
    }
}

/// What plan measured on the target database.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    /// The median of a few `SELECT 1` round trips (as `--workers auto` measures it).
    pub rtt: Duration,
    /// Connections the server would still accept.
    pub free_connections: i64,
    /// Rows a pass walks: the whole table.
    pub rows: u64,
    /// Of those, the rows the pass writes (re-encrypts, or queues for
    /// re-provisioning).
    pub writes: u64,
    /// Plan's own full read of the table, classified: the same read the run
    /// makes before (preflight) and after (convergence) its pass.
    pub read: Duration,
    /// Whether the journal is already this version's, so the run will not
    /// migrate it.
    pub journal_current: bool,
}

/// The projected in-place time and how it was reached.
#[derive(Debug, Clone, Serialize)]
pub struct InPlaceEstimate {
    pub secs: f64,
    /// The in-place pass: batches of `batch_size` rows on `workers` workers.
    pub pass_secs: f64,
    /// The full reads of the table: `reads` of plan's own read each.
    pub reads_secs: f64,
    pub reads: u32,
    /// The fixed round trips (`fixed_round_trips` of the measured one) and
    /// the fixed work that does not wait for the network.
    pub fixed_secs: f64,
    pub fixed_round_trips: u32,
    pub workers: usize,
    pub batch_size: i64,
    /// `auto` (as `--workers auto` would choose at this round trip) or `flags`.
    pub chosen_by: &'static str,
    /// The server's write rate the pass was projected at.
    pub server: ServerRate,
}

/// The in-place time of a run in `mode` choosing its workers as `plan`
/// says, on a server whose write rate is `rate`, from what was `measured`.
///
/// The run is: `FIXED_ROUND_TRIPS` one after another (and
/// `MIGRATION_ROUND_TRIPS` when it must migrate the journal) and `FIXED_WORK`; a
/// full read before the pass (except `--mode reencrypt`, which needs no
/// preflight) and one after it, each as long as plan's; and the pass, a
/// closed loop of `workers` workers each cycling through a batch: two round
/// trips and the per-row latency outside the server, then the server's own
/// work on the batch, which the workers queue for. Mean-value analysis of
/// that loop gives its throughput, which never exceeds the server's rate,
/// nor `workers` batches per cycle.
pub fn in_place(mode: Mode, plan: WorkerPlan, rate: &WriteRate, m: &Measured) -> InPlaceEstimate {
    let (workers, batch_size, chosen_by) = match plan {
        WorkerPlan::Fixed {
            workers,
            batch_size,
        } => (workers.max(1), batch_size.max(1), "flags"),
        WorkerPlan::Auto { max_connections } => {
            let (w, b) = tune(m.rtt, m.free_connections, max_connections);
            (w, b, "auto")
        }
    };
    let server = rate.resolve(m);
    let pass_secs = pass_secs(m, workers, batch_size, &server);
    let reads = if mode == Mode::Reencrypt { 1 } else { 2 };
    let reads_secs = f64::from(reads) * m.read.as_secs_f64();
    let fixed_round_trips = if m.journal_current {
        FIXED_ROUND_TRIPS
    } else {
        FIXED_ROUND_TRIPS + MIGRATION_ROUND_TRIPS
    };
    let fixed_secs = f64::from(fixed_round_trips) * m.rtt.as_secs_f64() + FIXED_WORK.as_secs_f64();
    InPlaceEstimate {
        secs: pass_secs + reads_secs + fixed_secs,
        pass_secs,
        reads_secs,
        reads,
        fixed_secs,
        fixed_round_trips,
        workers,
        batch_size,
        chosen_by,
        server,
    }
}

/// Seconds of one pass over `m.rows` rows in batches of `batch_size` on
/// `workers` workers.
fn pass_secs(m: &Measured, workers: usize, batch_size: i64, rate: &ServerRate) -> f64 {
    if m.rows == 0 {
        return 0.0;
    }
    let batch = batch_size as f64;
    let batches = (m.rows as f64 / batch).ceil();
    // A row the pass only reads (already current) costs what it cost
    // plan's read; a written one what the write rate says.
    let read = read_per_row(m);
    let written = (m.writes.min(m.rows) as f64) / m.rows as f64;
    let server = batch * (written / rate.rows_per_sec.max(1.0) + (1.0 - written) * read);
    let latency = rate.row_latency_us.max(0.0) / 1e6;
    let outside = 2.0 * m.rtt.as_secs_f64() + batch * written * latency;
    // More workers than batches leave the extra ones idle.
    let customers = workers.min(batches as usize).max(1);
    batches / closed_loop_throughput(customers, outside, server)
}

/// Cycles per second of a closed loop of `customers` that each spend
/// `delay` seconds away (in parallel with one another) and then `service`
/// seconds at one shared server, queueing for it: exact mean-value
/// analysis, one customer added at a time.
fn closed_loop_throughput(customers: usize, delay: f64, service: f64) -> f64 {
    let mut queued = 0.0;
    let mut throughput = 0.0;
    for n in 1..=customers {
        let at_server = service * (1.0 + queued);
        throughput = n as f64 / (delay + at_server).max(1e-12);
        queued = throughput * at_server;
    }
    throughput
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured(rtt_ms: f64) -> Measured {
        Measured {
            rtt: Duration::from_secs_f64(rtt_ms / 1e3),
            free_connections: 90,
            rows: 100_000,
            writes: 100_000,
            read: Duration::from_millis(150),
            journal_current: false,
        }
    }

    const DEFAULT_FLAGS: WorkerPlan = WorkerPlan::Fixed {
        workers: 4,
        batch_size: 1000,
    };
    const AUTO: WorkerPlan = WorkerPlan::Auto {
        max_connections: 16,
    };

    #[test]
    fn a_longer_round_trip_never_lowers_the_estimate() {
        let rate = WriteRate::FromRead;
        for workers in [1, 4, 16] {
            for batch_size in [100, 1000, 5000] {
                let plan = WorkerPlan::Fixed {
                    workers,
                    batch_size,
                };
                let mut last = 0.0;
                for tenth_ms in 0..=1000 {
                    let rtt_ms = f64::from(tenth_ms) / 10.0;
                    let e = in_place(Mode::Auto, plan, &rate, &measured(rtt_ms));
                    assert!(
                        e.secs >= last,
                        "{plan:?}: {} s at {rtt_ms} ms after {last} s",
                        e.secs
                    );
                    last = e.secs;
                }
            }
        }
    }

    #[test]
    fn with_workers_auto_a_longer_round_trip_costs_more_overall() {
        // Auto's choice moves in steps (one more worker can make 3.8 ms a
        // little quicker than 3.7 ms), but never enough to hide the trips.
        let rate = WriteRate::FromRead;
        let at = |rtt_ms| in_place(Mode::Auto, AUTO, &rate, &measured(rtt_ms)).secs;
        assert!(at(0.1) < at(10.0) && at(10.0) < at(50.0) && at(50.0) < at(100.0));
    }

    #[test]
    fn auto_models_the_workers_and_batch_size_tune_chooses() {
        let rate = WriteRate::FromRead;
        for rtt_ms in [0.05, 2.0, 10.0, 50.0] {
            let m = measured(rtt_ms);
            let e = in_place(Mode::Auto, AUTO, &rate, &m);
            assert_eq!(
                (e.workers, e.batch_size),
                tune(m.rtt, m.free_connections, 16),
                "at {rtt_ms} ms"
            );
            assert_eq!(e.chosen_by, "auto");
        }
        let e = in_place(Mode::Auto, DEFAULT_FLAGS, &rate, &measured(10.0));
        assert_eq!((e.workers, e.batch_size, e.chosen_by), (4, 1000, "flags"));
    }

    #[test]
    fn on_loopback_the_pass_runs_near_the_servers_rate_and_never_above_it() {
        let e = in_place(
            Mode::Auto,
            DEFAULT_FLAGS,
            &WriteRate::FromRead,
            &measured(0.0),
        );
        let pass_rate = 100_000.0 / e.pass_secs;
        assert!(
            pass_rate <= e.server.rows_per_sec * 1.0001,
            "{pass_rate} {e:?}"
        );
        assert!(pass_rate > e.server.rows_per_sec * 0.8, "{pass_rate} {e:?}");
    }

    #[test]
    fn workers_bound_the_pass_when_the_round_trip_dominates() {
        // At 50 ms, 4 workers of 1,000 rows cannot do better than 4 batches
        // per 100 ms of round trips.
        let e = in_place(
            Mode::Auto,
            DEFAULT_FLAGS,
            &WriteRate::FromRead,
            &measured(50.0),
        );
        assert!(e.pass_secs >= 100.0 / 4.0 * 0.1, "{e:?}");
    }

    #[test]
    fn the_fixed_work_is_the_round_trips_and_the_full_reads() {
        let rate = WriteRate::FromRead;
        let m = measured(10.0);
        let auto = in_place(Mode::Auto, DEFAULT_FLAGS, &rate, &m);
        assert_eq!(auto.reads, 2, "preflight and convergence reads");
        let reencrypt = in_place(Mode::Reencrypt, DEFAULT_FLAGS, &rate, &m);
        assert_eq!(reencrypt.reads, 1, "no preflight in --mode reencrypt");
        assert!((auto.secs - reencrypt.secs - 0.150).abs() < 1e-9);
        let expected =
            f64::from(FIXED_ROUND_TRIPS + MIGRATION_ROUND_TRIPS) * 0.010 + FIXED_WORK.as_secs_f64();
        assert!((auto.fixed_secs - expected).abs() < 1e-9);
    }

    #[test]
    fn a_journal_already_current_saves_the_migrations_round_trips() {
        let rate = WriteRate::FromRead;
        let first = in_place(Mode::Auto, DEFAULT_FLAGS, &rate, &measured(10.0));
        let again = Measured {
            journal_current: true,
            ..measured(10.0)
        };
        let again = in_place(Mode::Auto, DEFAULT_FLAGS, &rate, &again);
        assert_eq!(
            first.fixed_round_trips,
            FIXED_ROUND_TRIPS + MIGRATION_ROUND_TRIPS
        );
        assert_eq!(again.fixed_round_trips, FIXED_ROUND_TRIPS);
        let saved = first.secs - again.secs;
        assert!((saved - f64::from(MIGRATION_ROUND_TRIPS) * 0.010).abs() < 1e-9);
    }

    #[test]
    fn an_empty_table_costs_only_the_fixed_work() {
        let m = Measured {
            rows: 0,
            writes: 0,
            ..measured(10.0)
        };
        let e = in_place(Mode::Auto, AUTO, &WriteRate::FromRead, &m);
        assert_eq!(e.pass_secs, 0.0);
        assert!(e.secs > 0.0);
    }

    #[test]
    fn without_a_bench_file_a_slower_read_means_a_slower_server() {
        let quick = in_place(
            Mode::Auto,
            DEFAULT_FLAGS,
            &WriteRate::FromRead,
            &measured(0.0),
        );
        let slow = Measured {
            read: Duration::from_millis(300),
            ..measured(0.0)
        };
        let slow = in_place(Mode::Auto, DEFAULT_FLAGS, &WriteRate::FromRead, &slow);
        assert!(!quick.server.measured());
        let ratio = quick.server.rows_per_sec / slow.server.rows_per_sec;
        assert!((ratio - 2.0).abs() < 1e-9, "{ratio}");
        assert!(
            slow.pass_secs > quick.pass_secs * 1.9,
            "{slow:?} vs {quick:?}"
        );
    }

    #[test]
    fn a_bench_file_rate_is_taken_as_measured() {
        let bench = ServerRate {
            rows_per_sec: 50_000.0,
            row_latency_us: 10.0,
            source: "measured by fleet-bench (b.json)".into(),
        };
        let e = in_place(
            Mode::Auto,
            DEFAULT_FLAGS,
            &WriteRate::Bench(bench.clone()),
            &measured(0.0),
        );
        assert_eq!(e.server, bench);
        assert!(100_000.0 / e.pass_secs <= 50_000.0 * 1.0001, "{e:?}");
    }

    #[test]
    fn a_table_already_current_costs_reads_not_writes() {
        let rate = WriteRate::FromRead;
        let current = Measured {
            writes: 0,
            ..measured(0.0)
        };
        let old = measured(0.0);
        let a = in_place(Mode::Auto, DEFAULT_FLAGS, &rate, &current);
        let b = in_place(Mode::Auto, DEFAULT_FLAGS, &rate, &old);
        assert!(a.pass_secs < b.pass_secs / 2.0, "{a:?} vs {b:?}");
    }

    #[test]
    fn closed_loop_throughput_meets_its_two_bounds() {
        // One customer: one cycle per delay + service.
        assert!((closed_loop_throughput(1, 0.03, 0.01) - 25.0).abs() < 1e-9);
        // Many: the server's rate, and never more.
        let many = closed_loop_throughput(64, 0.03, 0.01);
        assert!(many <= 100.0 + 1e-9 && many > 99.0, "{many}");
        // Few, with a long delay: n / (delay + service) at most.
        let few = closed_loop_throughput(4, 1.0, 0.01);
        assert!(few <= 4.0 / 1.01 + 1e-9 && few > 3.9, "{few}");
    }

    const BENCH: &str = r#"{
        "rows": 100000, "batch_size": 1000,
        "in_place": [
            {"workers": 1, "rows": 100000, "secs": 2.0, "pass_secs": 1.6},
            {"workers": 4, "rows": 100000, "secs": 1.2, "pass_secs": 1.0}
        ],
        "floor": {"rows_per_sec": 124000.0}
    }"#;

    #[test]
    fn a_bench_file_gives_the_best_pass_rate_and_the_one_worker_latency() {
        let rate = rate_from_bench(BENCH, "bench.json").unwrap();
        assert!((rate.rows_per_sec - 100_000.0).abs() < 1e-6, "{rate:?}");
        // One worker: 16 us per row, of which 10 us the server's.
        assert!((rate.row_latency_us - 6.0).abs() < 1e-6, "{rate:?}");
        assert!(rate.measured());
        assert!(rate.source.contains("bench.json"), "{}", rate.source);
    }

    #[test]
    fn a_bench_file_without_engine_figures_falls_back_on_its_floor() {
        let json = r#"{"in_place": [], "floor": {"rows_per_sec": 100000.0}}"#;
        let rate = rate_from_bench(json, "b.json").unwrap();
        assert!((rate.rows_per_sec - 100_000.0 * ENGINE_SHARE_OF_FLOOR).abs() < 1e-6);
        assert!(rate.source.contains("floor"), "{}", rate.source);
    }

    #[test]
    fn a_file_that_is_not_a_bench_report_is_refused_by_name() {
        assert!(matches!(
            rate_from_bench("{\"rows\": 3}", "x"),
            Err(BenchFileError::NotBenchJson(_))
        ));
        assert!(matches!(
            rate_from_bench("not json", "x"),
            Err(BenchFileError::NotBenchJson(_))
        ));
        assert_eq!(
            rate_from_bench(r#"{"in_place": [], "floor": null}"#, "x"),
            Err(BenchFileError::NoRate)
        );
    }
}
