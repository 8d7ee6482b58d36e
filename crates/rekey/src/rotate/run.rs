//! The top of `rekey run`: open, resume or re-open the run, check the gate, walk the
//! table in place, hand unopenable tenants to re-provisioning, check that
//! every row converged, and close the run with its reason.
//!
//! A run is finished only when a final read of every row finds nothing left
//! to do; otherwise it is recorded as failed with the reason, or left open
//! when the invocation was deliberately partial (`--limit`, `--org`,
//! `--max-tenants` with tenants left) or interrupted, so that running the
//! same command again resumes it. There is one run per new key: a later
//! `run` with a key whose run has ended (finished or failed) re-opens that
//! run, under the same id, for another convergence pass.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::PgPool;

use super::batch::{FieldCounts, LeftReason};
use super::events::{Earlier, Event, EventSink};
use super::gate;
use super::inplace::{InPlace, PassTally};
use super::reprovision::{ProvisionTally, Reprovisioner};
use super::scan::{scan, ScanResult};
use super::{retry, Outcome, RunError};
use crate::db::journal::{self, RunRecord, RunStart};
use crate::db::org_instances::{count_rows, RowFilter};
use crate::db::Table;
use crate::envelope::{Keyring, Mode};

/// How many times a run re-walks rows that changed back under it before
/// it gives up and says why.
const MAX_PASSES: u32 = 5;

/// How long a run waits by default, in all, for rows someone keeps locked
/// before it reports them as left (`--lock-wait-secs`).
pub const DEFAULT_LOCK_WAIT: Duration = Duration::from_secs(60);

/// How long a run retries a lost database connection by default before it
/// stops, open (`--db-retry-secs`).
pub const DEFAULT_DB_RETRY: Duration = Duration::from_secs(60);

/// What the operator asked `rekey run` to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub mode: Mode,
    pub workers: usize,
    pub batch_size: i64,
    pub orgs: Vec<String>,
    pub limit: Option<u64>,
    /// `--confirm-reprovision N`: the operator's acknowledgement of the
    /// wrong-old-key gate, naming the count of tenants to re-provision.
    pub confirm_reprovision: Option<u64>,
    /// How long the run waits, in all, for rows someone keeps locked; then
    /// it reports them as left and the run closes as failed (exit 1).
    pub lock_wait: Duration,
    /// `--until-quiet`: keep re-walking until no row has needed work for
    /// this long (a rolling restart of the control plane, during which some
    /// instances still write under the old key), instead of giving up after
    /// a few passes.
    pub until_quiet: Option<Duration>,
    /// How long a lost database connection is retried (a fresh connection,
    /// the transaction in flight again) before the run stops, open.
    pub db_retry: Duration,
}

impl RunOptions {
    /// A run of the whole table in `mode` with `workers` workers and batches
    /// of `batch_size` rows, everything else at its default: no `--org` or
    /// `--limit`, no confirmation, the default lock wait and retry budget.
    pub fn new(mode: Mode, workers: usize, batch_size: i64) -> RunOptions {
        RunOptions {
            mode,
            workers,
            batch_size,
            orgs: Vec::new(),
            limit: None,
            confirm_reprovision: None,
            lock_wait: DEFAULT_LOCK_WAIT,
            until_quiet: None,
            db_retry: DEFAULT_DB_RETRY,
        }
    }
}

/// The outcome of a run invocation, for the summary and the exit code.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_id: i64,
    pub start: RunStart,
    pub mode: Mode,
    pub new_key_id: String,
    pub old_key_id: Option<String>,
    /// `finished`, `failed` or `running` (left open to be resumed).
    pub state: String,
    pub reason: Option<String>,
    pub rows_walked: u64,
    /// Rows walked that were already current (or KMS or empty only).
    pub skipped: u64,
    pub reencrypted: u64,
    pub queued_for_reprovision: u64,
    pub reprovisioned: u64,
    pub reprovision_failed: u64,
    /// Re-provisioned or given-up tenants (of any run) whose clean-up or
    /// compensation is not done: their leaked credentials may still open
    /// something. Exit 1 and `finalize` refused until it is 0.
    pub cleanup_pending: u64,
    /// Of those, the tenants of this run: what its tenant counts include.
    pub run_cleanup_owed: u64,
    pub conflicts: u64,
    pub kms_rows_untouched: u64,
    /// Rows left as they are and why (at most 100 listed).
    pub left: Vec<LeftRow>,
    pub left_total: u64,
    pub fields_seen: FieldCounts,
    pub elapsed_secs: f64,
    pub in_place_secs: f64,
    pub rows_per_sec: f64,
    pub batch_p50_ms: f64,
    pub batch_p99_ms: f64,
    pub passes: u32,
    /// Seconds per batch phase, summed over workers.
    pub phase_secs: PhaseSecs,
    /// What earlier invocations of this run did (zero for a new run).
    pub earlier: Earlier,
    /// Tenants of the run neither done nor given up when this invocation
    /// ended, queued or in flight before their clean-up, from the journal
    /// (those at clean-up are `cleanup_pending`).
    pub tenants_pending: u64,
    #[serde(skip)]
    pub outcome: Outcome,
}

/// [`super::inplace::Phases`] in seconds, for reports.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct PhaseSecs {
    pub read: f64,
    pub crypto: f64,
    pub write: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeftRow {
    pub org_id: String,
    pub reason: String,
}

/// Inputs a run shares with its workers.
pub struct RunContext {
    pub pool: PgPool,
    pub table: Table,
    pub keyring: Arc<Keyring>,
    pub sink: Arc<dyn EventSink>,
    /// `None` when no cloud credentials were given: then no tenant can be
    /// re-provisioned and a run that needs to refuses before it starts.
    pub reprovisioner: Option<Arc<Reprovisioner>>,
    /// Set by Ctrl-C: finish the batches in flight, then stop.
    pub stop: Arc<AtomicBool>,
}

/// Runs (or resumes) a rotation.
pub async fn run(ctx: &RunContext, opts: &RunOptions) -> Result<RunReport, RunError> {
    let started = Instant::now();
    let filter = RowFilter {
        ids: (!opts.orgs.is_empty()).then(|| opts.orgs.clone()),
        wait_for_locked: false,
    };
    gate::refuse_other_open_run(ctx).await?;
    let prescan = gate::preflight(ctx, opts, &filter).await?;
    // Only now that the run is going to act: a refusal above leaves the
    // database as it was, without even schema rekey.
    crate::db::migrate(&ctx.pool).await?;
    let (run, start) = journal::open_or_resume(
        &ctx.pool,
        opts.mode,
        ctx.keyring.new_key_id(),
        ctx.keyring.old_key_id(),
        &ctx.table.display,
    )
    .await?;
    let run_id = run.id;
    match run_opened(ctx, opts, &filter, run, start, prescan, started).await {
        Ok(report) => Ok(report),
        Err(e) => {
            // Whatever stopped the run, it is open: the renderers, the
            // metrics file and a JSON consumer are told so and why.
            let e = e.stopped(run_id);
            if let RunError::Stopped { source, .. } = &e {
                ctx.sink.emit(&Event::RunFinished {
                    run_id,
                    state: "running".into(),
                    reason: Some(source.to_string()),
                    cleanup_owed: 0,
                });
            }
            Err(e)
        }
    }
}

/// The run once it is open in the journal: any error from here on leaves
/// it open, to be resumed by the same command.
async fn run_opened(
    ctx: &RunContext,
    opts: &RunOptions,
    filter: &RowFilter,
    run: RunRecord,
    start: RunStart,
    prescan: Option<ScanResult>,
    started: Instant,
) -> Result<RunReport, RunError> {
    // At once: across a network every read here is round trips of the
    // outage, and the workers need the connections this opens anyway.
    let (total_rows, earlier) = tokio::try_join!(
        async { Ok::<_, RunError>(count_rows(&ctx.pool, &ctx.table, filter).await? as u64) },
        earlier_counts(&ctx.pool, run.id),
    )?;
    ctx.sink.emit(&Event::RunStarted {
        run_id: run.id,
        start,
        mode: opts.mode.as_str().into(),
        new_key_id: ctx.keyring.new_key_id().0.clone(),
        old_key_id: ctx.keyring.old_key_id().map(|k| k.0.clone()),
        total_rows,
        to_reprovision: prescan
            .as_ref()
            .map_or(0, |s| s.reprovision_ids.len() as u64),
        earlier,
    });

    let inplace = Arc::new(InPlace {
        pool: ctx.pool.clone(),
        table: ctx.table.clone(),
        keyring: Arc::clone(&ctx.keyring),
        run_id: run.id,
        mode: opts.mode,
        workers: opts.workers,
        batch_size: opts.batch_size,
        sink: Arc::clone(&ctx.sink),
        budget: opts.limit.map(|l| Arc::new(AtomicU64::new(l))),
        stop: Arc::clone(&ctx.stop),
        db_retry: opts.db_retry,
    });
    let queue_closed = Arc::new(AtomicBool::new(false));
    let provisioning = ctx
        .reprovisioner
        .as_ref()
        .filter(|_| opts.mode != Mode::Reencrypt)
        .map(|r| {
            let r = Arc::clone(r);
            let closed = Arc::clone(&queue_closed);
            let stop = Arc::clone(&ctx.stop);
            let run_id = run.id;
            tokio::spawn(async move { r.work(run_id, closed, stop).await })
        });

    let walked = walk(ctx, &inplace, opts, filter, total_rows).await;
    queue_closed.store(true, Ordering::SeqCst);
    let provisioned = match provisioning {
        Some(task) => task
            .await
            .map_err(|e| RunError::crashed("re-provisioning", &e))
            .and_then(|tally| tally)?,
        None => ProvisionTally::default(),
    };
    let Walk {
        tally,
        passes,
        secs: in_place_secs,
        last_scan,
    } = walked?;
    // `--max-tenants` is as deliberate a stop as `--limit`: the tenants it
    // left are for the next invocation, not reasons to fail the run.
    let partial = opts.limit.is_some() || !opts.orgs.is_empty() || provisioned.capped;
    // The walk ended on a full read that found nothing left to do; if
    // nothing has written rows since (no tenant re-provisioned, no stop
    // mid-way), that read is the conclusion's, and a second full read of the
    // table would only add to the outage.
    let quiet_since = provisioned.done == 0
        && provisioned.failed == 0
        && provisioned.cleanup_pending == 0
        && !provisioned.capped
        && !provisioned.canary_failed
        && !ctx.stop.load(Ordering::SeqCst);
    let check = match last_scan {
        Some(check) if quiet_since => check,
        _ => {
            retry::on_transient("final read", opts.db_retry, || {
                scan(&ctx.pool, &ctx.table, &ctx.keyring, opts.mode, filter)
            })
            .await?
        }
    };
    let timing = Timing {
        passes,
        in_place_secs,
        started,
    };
    let report = conclude(
        ctx,
        opts,
        &run,
        start,
        &tally,
        &provisioned,
        &check,
        partial,
        &timing,
    )
    .await?;
    ctx.sink.emit(&Event::RunFinished {
        run_id: run.id,
        state: report.state.clone(),
        reason: report.reason.clone(),
        cleanup_owed: report.run_cleanup_owed,
    });
    Ok(RunReport { earlier, ..report })
}

/// How long the invocation took, for the report and the journal's summary.
struct Timing {
    passes: u32,
    in_place_secs: f64,
    started: Instant,
}

/// What the in-place walk did.
struct Walk {
    tally: PassTally,
    passes: u32,
    secs: f64,
    /// The full read that ended the walk, when one did.
    last_scan: Option<ScanResult>,
}

/// In-place passes until a read finds nothing left to do, the pass limit
/// (rows the control plane keeps writing under the old key), or the lock
/// wait (rows someone keeps locked) runs out.
async fn walk(
    ctx: &RunContext,
    inplace: &Arc<InPlace>,
    opts: &RunOptions,
    filter: &RowFilter,
    total_rows: u64,
) -> Result<Walk, RunError> {
    let started = Instant::now();
    let mut total = PassTally::default();
    let mut pass_filter = filter.clone();
    let mut passes = 0;
    let mut busy_passes = 0;
    // When re-walks began to change nothing: from then on the rows left are
    // locked by someone (another process's batch, which commits in well
    // under a second, or a control-plane transaction). One bounded wait for
    // the whole run, not one per worker and row.
    let mut idle_since: Option<Instant> = None;
    // When the reads began to find nothing to do, with `--until-quiet`.
    let mut quiet_since: Option<Instant> = None;
    while (opts.until_quiet.is_some() || busy_passes < MAX_PASSES)
        && !ctx.stop.load(Ordering::SeqCst)
    {
        let nothing_to_walk = pass_filter.ids.as_ref().is_some_and(Vec::is_empty);
        let tally = if nothing_to_walk {
            PassTally::default()
        } else {
            passes += 1;
            let rows = pass_filter
                .ids
                .as_ref()
                .map_or(total_rows, |ids| ids.len() as u64);
            ctx.sink.emit(&Event::PassStarted { pass: passes, rows });
            let tally = inplace.pass(pass_filter.clone()).await?;
            ctx.sink.emit(&Event::PassFinished {
                pass: passes,
                changed: tally.changed(),
            });
            tally
        };
        let changed = tally.changed();
        // The last pass says what is still left (a watch without a pass
        // leaves what the last pass said).
        if !nothing_to_walk {
            total.left.clear();
        }
        total.absorb(tally);
        if opts.limit.is_some() {
            return Ok(Walk {
                tally: total,
                passes,
                secs: started.elapsed().as_secs_f64(),
                last_scan: None,
            });
        }
        // Rows the control plane wrote under the old key meanwhile, or that
        // someone held locked, are found by a read without locks and
        // walked again; everything else is not touched twice.
        let check = retry::on_transient("convergence read", opts.db_retry, || {
            scan(&ctx.pool, &ctx.table, &ctx.keyring, opts.mode, filter)
        })
        .await?;
        let mut again = needing_work(ctx, inplace.run_id, opts.mode, &check).await?;
        // Rows the pass saw and decided to leave (a failed check before
        // write) will be left again: only rows it did not get to (locked,
        // or changed under it) are worth another pass.
        let decided: std::collections::HashSet<&str> =
            total.left.iter().map(|(id, _)| id.as_str()).collect();
        again.retain(|id| !decided.contains(id.as_str()));
        if again.is_empty() {
            let quiet_for = quiet_since.get_or_insert_with(Instant::now).elapsed();
            match opts.until_quiet {
                Some(quiet) if quiet_for < quiet => {
                    // Watch, not walk: the next read finds what old-key
                    // writers wrote meanwhile.
                    tokio::time::sleep((quiet - quiet_for).min(Duration::from_secs(1))).await;
                    pass_filter = RowFilter {
                        ids: Some(Vec::new()),
                        wait_for_locked: false,
                    };
                    continue;
                }
                _ => {
                    return Ok(Walk {
                        tally: total,
                        passes,
                        secs: started.elapsed().as_secs_f64(),
                        last_scan: Some(check),
                    });
                }
            }
        }
        quiet_since = None;
        if changed > 0 {
            busy_passes += 1;
            idle_since = None;
        } else if idle_since.get_or_insert_with(Instant::now).elapsed() >= opts.lock_wait {
            total.left.clear();
            total
                .left
                .extend(again.into_iter().map(|id| (id, LeftReason::Locked)));
            return Ok(Walk {
                tally: total,
                passes,
                secs: started.elapsed().as_secs_f64(),
                last_scan: Some(check),
            });
        }
        pass_filter = RowFilter {
            ids: Some(again),
            wait_for_locked: false,
        };
        tokio::time::sleep(Duration::from_millis(if changed > 0 { 100 } else { 500 })).await;
    }
    Ok(Walk {
        secs: started.elapsed().as_secs_f64(),
        tally: total,
        passes,
        last_scan: None,
    })
}

/// The ids a convergence read found still needing in-place work: rows
/// under the old key, and unopenable rows not yet queued for
/// re-provisioning.
async fn needing_work(
    ctx: &RunContext,
    run_id: i64,
    mode: Mode,
    check: &ScanResult,
) -> Result<Vec<String>, RunError> {
    let mut again = check.reencrypt_ids.clone();
    if mode != Mode::Reencrypt {
        let queued = journal::queued_among(&ctx.pool, run_id, &check.reprovision_ids).await?;
        let queued: std::collections::HashSet<String> = queued.into_iter().collect();
        again.extend(
            check
                .reprovision_ids
                .iter()
                .filter(|id| !queued.contains(*id))
                .cloned(),
        );
    }
    Ok(again)
}

#[allow(clippy::too_many_arguments)]
async fn conclude(
    ctx: &RunContext,
    opts: &RunOptions,
    run: &RunRecord,
    start: RunStart,
    tally: &PassTally,
    provisioned: &ProvisionTally,
    check: &ScanResult,
    partial: bool,
    timing: &Timing,
) -> Result<RunReport, RunError> {
    let mut left: Vec<LeftRow> = Vec::new();
    let reason_of = |r: LeftReason| {
        match r {
        LeftReason::Undecryptable => {
            "opens under neither key (mode reencrypt leaves it)".to_string()
        }
        LeftReason::CheckBeforeWriteFailed => {
            "new ciphertext failed the check before write".to_string()
        }
        LeftReason::Locked => format!(
            "locked by another session for more than {} s; run the same command once it is released",
            opts.lock_wait.as_secs()
        ),
    }
    };
    let mut still_old = 0u64;
    for id in &check.reencrypt_ids {
        still_old += 1;
        if left.len() < 100 {
            left.push(LeftRow {
                org_id: id.clone(),
                reason: tally
                    .left
                    .iter()
                    .find(|(l, _)| l == id)
                    .map_or("still under the old key".into(), |(_, r)| reason_of(*r)),
            });
        }
    }
    // The journal's counts at once (each a round trip or two across a
    // network); the tenants pending before clean-up do not change when the
    // run is closed below.
    let (failed_items, cleanup_pending, run_cleanup_owed, tenants_pending) = tokio::try_join!(
        async { Ok::<_, RunError>(journal::failed_items(&ctx.pool, run.id, 100).await?) },
        async { Ok(journal::cleanup_pending_count(&ctx.pool).await?) },
        async { Ok(journal::run_cleanup_owed_count(&ctx.pool, run.id).await?) },
        // Informational only: a failed read of it does not fail the run.
        async {
            Ok(journal::pending_before_cleanup_count(&ctx.pool, run.id)
                .await
                .unwrap_or(0))
        },
    )?;
    let (cleanup_pending, run_cleanup_owed) = (cleanup_pending as u64, run_cleanup_owed as u64);
    let unprovisioned = check.reprovision_ids.len() as u64;
    for id in check
        .reprovision_ids
        .iter()
        .take(100usize.saturating_sub(left.len()))
    {
        let reason = match failed_items.iter().find(|f| &f.org_id == id) {
            Some(f) => format!(
                "re-provision given up at step {}: {}",
                f.step,
                f.last_error.as_deref().unwrap_or("no error recorded")
            ),
            None if opts.mode == Mode::Reencrypt => reason_of(LeftReason::Undecryptable),
            None => "not re-provisioned yet".into(),
        };
        left.push(LeftRow {
            org_id: id.clone(),
            reason,
        });
    }
    let left_total = still_old + unprovisioned;
    let interrupted = ctx.stop.load(Ordering::SeqCst);
    let (state, reason) = if left_total == 0 && !partial {
        ("finished", None)
    } else if partial || interrupted {
        ("running", None)
    } else if provisioned.canary_failed {
        // The fleet was not attempted: the run stays open for the same
        // command once the canary's failures are understood.
        (
            "running",
            Some(format!(
                "the canary failed ({} given up); the other tenants were not started",
                provisioned.failed
            )),
        )
    } else {
        (
            "failed",
            Some(format!(
                "{left_total} rows left: {still_old} still under the old key, {unprovisioned} not re-provisioned"
            )),
        )
    };
    let report = RunReport {
        run_id: run.id,
        start,
        mode: opts.mode,
        new_key_id: ctx.keyring.new_key_id().0.clone(),
        old_key_id: ctx.keyring.old_key_id().map(|k| k.0.clone()),
        state: state.into(),
        reason: reason.clone(),
        rows_walked: tally.rows,
        skipped: tally.skipped,
        reencrypted: tally.reencrypted,
        queued_for_reprovision: tally.queued,
        reprovisioned: provisioned.done,
        reprovision_failed: provisioned.failed,
        cleanup_pending,
        run_cleanup_owed,
        conflicts: tally.conflicts,
        kms_rows_untouched: check.kms_rows,
        left,
        left_total,
        fields_seen: tally.fields,
        elapsed_secs: timing.started.elapsed().as_secs_f64(),
        in_place_secs: timing.in_place_secs,
        rows_per_sec: if timing.in_place_secs > 0.0 {
            tally.rows as f64 / timing.in_place_secs
        } else {
            0.0
        },
        batch_p50_ms: percentile_ms(&tally.batch_latencies, 0.50),
        batch_p99_ms: percentile_ms(&tally.batch_latencies, 0.99),
        passes: timing.passes,
        earlier: Earlier::default(),
        tenants_pending: u64::try_from(tenants_pending).unwrap_or(0),
        phase_secs: PhaseSecs {
            read: tally.phases.read.as_secs_f64(),
            crypto: tally.phases.crypto.as_secs_f64(),
            write: tally.phases.write.as_secs_f64(),
        },
        outcome: if left_total == 0 && cleanup_pending == 0 && !interrupted {
            Outcome::Done
        } else {
            Outcome::Incomplete
        },
    };
    if state != "running" {
        let summary = serde_json::to_value(&report).unwrap_or(serde_json::Value::Null);
        journal::close_run(
            &ctx.pool,
            run,
            state == "finished",
            reason.as_deref(),
            &summary,
        )
        .await?;
    }
    Ok(report)
}

/// What earlier invocations of run `run_id` did, from its journal.
async fn earlier_counts(pool: &PgPool, run_id: i64) -> Result<Earlier, RunError> {
    let c = journal::run_counts(pool, run_id).await?;
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    Ok(Earlier {
        reencrypted: n(c.reencrypted),
        tenants_done: n(c.items_done),
        tenants_given_up: n(c.items_failed),
        // Pending at clean-up, or owed by an earlier invocation (taken up
        // again by this one).
        tenants_in_cleanup: c
            .steps
            .iter()
            .filter(|(step, _)| step == "cleanup")
            .map(|(_, k)| n(*k))
            .sum::<u64>()
            + n(c.items_owed),
    })
}

/// The `q` quantile of batch latencies in milliseconds (nearest rank).
pub fn percentile_ms(latencies: &[Duration], q: f64) -> f64 {
    if latencies.is_empty() {
        return 0.0;
    }
    let mut sorted: Vec<Duration> = latencies.to_vec();
    sorted.sort_unstable();
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1].as_secs_f64() * 1000.0
}
