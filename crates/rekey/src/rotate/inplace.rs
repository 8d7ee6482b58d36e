//! The in-place path: workers read batches of rows, without locks, from
//! key ranges of about a batch each, decide them on rayon's pool, and write
//! each batch as one autocommit statement: the compare-and-swap
//! `UPDATE … FROM UNNEST` (on the address, id and ciphertexts read,
//! skipping rows someone holds locked), its backup and its re-provision
//! queue entries. Two round trips per batch, no transaction held open
//! between them. `--workers auto`'s choice of workers and batch size
//! ([`tune`]) lives here too.
//!
//! A crash at any instant leaves either the whole batch (rows, backup,
//! queue) or none of it; a row changed or locked between the read and the
//! write is left as it is and walked again by the next pass.
//! Re-provisioning itself lives in `reprovision`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::batch::{decide_batch, BatchDecision, FieldCounts, LeftReason};
use super::events::{BatchReport, Event, EventSink};
use super::{retry, RunError};
use crate::db::org_instances::{range_ends, read_range, swap_unlocked_batch, RowFilter, StoredRow};
use crate::db::Bounded;
use crate::db::Table;
use crate::envelope::{Keyring, Mode};

/// Everything an in-place pass needs, shared by its workers.
pub struct InPlace {
    pub pool: PgPool,
    pub table: Table,
    pub keyring: Arc<Keyring>,
    pub run_id: i64,
    pub mode: Mode,
    pub workers: usize,
    pub batch_size: i64,
    pub sink: Arc<dyn EventSink>,
    /// Rows this invocation may still act on (`--limit`); `None` = no cap.
    pub budget: Option<Arc<AtomicU64>>,
    /// Set to stop claiming new batches (Ctrl-C, or a worker's error).
    pub stop: Arc<AtomicBool>,
    /// How long a batch lost with its connection is retried.
    pub db_retry: Duration,
}

/// What a pass did.
#[derive(Debug, Default, Clone)]
pub struct PassTally {
    pub rows: u64,
    pub skipped: u64,
    pub reencrypted: u64,
    pub queued: u64,
    pub conflicts: u64,
    pub left: Vec<(String, LeftReason)>,
    pub fields: FieldCounts,
    pub batch_latencies: Vec<Duration>,
    /// Where the batches' time went, summed over batches.
    pub phases: Phases,
}

/// Time spent per phase of a batch, summed: what bounds the in-place path.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Phases {
    /// The unlocked SELECT of the batch's rows.
    pub read: Duration,
    /// Classification, sealing and the check before write (rayon).
    pub crypto: Duration,
    /// The one statement that swaps, backs up and queues, with its commit
    /// (the WAL flush).
    pub write: Duration,
}

impl Phases {
    pub fn add(&mut self, other: &Phases) {
        self.read += other.read;
        self.crypto += other.crypto;
        self.write += other.write;
    }
}

impl PassTally {
    /// Rows this pass changed or handed on: a pass with none means convergence.
    pub fn changed(&self) -> u64 {
        self.reencrypted + self.queued
    }

    pub fn absorb(&mut self, other: PassTally) {
        self.rows += other.rows;
        self.skipped += other.skipped;
        self.reencrypted += other.reencrypted;
        self.queued += other.queued;
        self.conflicts += other.conflicts;
        self.left.extend(other.left);
        self.fields.merge(&other.fields);
        self.batch_latencies.extend(other.batch_latencies);
        self.phases.add(&other.phases);
    }
}

impl InPlace {
    /// Walks every row matching `filter` once, with `workers` workers
    /// taking key ranges of about a batch each from one shared list.
    pub async fn pass(self: &Arc<Self>, filter: RowFilter) -> Result<PassTally, RunError> {
        let ends = range_ends(&self.pool, &self.table, &filter, self.batch_size).await?;
        let mut list = key_ranges(ends);
        // Processes sharing a run read without locks, so two on the same
        // range would both do its crypto and one would lose every swap:
        // each starts at its own point of the key space instead, and
        // reaches the others' ranges when they are already done (a read
        // that finds the rows under the new key and writes nothing).
        let start = start_offset(std::process::id(), list.len());
        list.rotate_left(start);
        let ranges = Arc::new(std::sync::Mutex::new(list));
        let filter = Arc::new(filter);
        let mut tasks = tokio::task::JoinSet::new();
        for worker in 0..self.workers.max(1) {
            let this = Arc::clone(self);
            let ranges = Arc::clone(&ranges);
            let filter = Arc::clone(&filter);
            tasks.spawn(async move { this.worker(worker, &ranges, &filter).await });
        }
        let mut total = PassTally::default();
        let mut first_error = None;
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(Ok(tally)) => total.absorb(tally),
                Ok(Err(e)) => {
                    self.stop.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(e);
                }
                Err(join) => {
                    self.stop.store(true, Ordering::SeqCst);
                    first_error.get_or_insert(RunError::crashed("an in-place worker", &join));
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    async fn worker(
        &self,
        worker: usize,
        ranges: &std::sync::Mutex<VecDeque<KeyRange>>,
        filter: &RowFilter,
    ) -> Result<PassTally, RunError> {
        let mut tally = PassTally::default();
        // The range this worker is walking; its `after` moves past each
        // batch claimed from it.
        // (A mutex only because the retry closure may not hand out `&mut`.)
        let current = std::sync::Mutex::new(None::<KeyRange>);
        while !self.stop.load(Ordering::SeqCst) {
            let Some(reserved) = self.reserve() else {
                break;
            };
            // A batch lost with its connection rolled back whole (or, lost
            // while its statement committed, committed whole); either way its rows are
            // taken from the range list now, and the convergence read after the pass
            // finds any that still need work and walks them again. So a retry
            // simply goes on with the next batch.
            let batch = retry::on_transient("in-place batch", self.db_retry, || {
                self.batch(worker, ranges, &current, filter, reserved)
            })
            .await;
            let Some((report, decision, phases)) =
                batch.inspect_err(|_| self.refund(reserved, 0))?
            else {
                self.refund(reserved, 0);
                break;
            };
            self.refund(
                reserved,
                report.reencrypted + report.queued + report.conflicts,
            );
            self.sink.emit(&Event::Batch(report.clone()));
            tally.absorb(PassTally {
                rows: report.rows,
                skipped: report.skipped,
                reencrypted: report.reencrypted,
                queued: report.queued,
                conflicts: report.conflicts,
                left: decision.left,
                fields: decision.fields,
                batch_latencies: vec![report.latency],
                phases,
            });
        }
        Ok(tally)
    }

    /// Reads, decides and writes one batch; `None` when the pass has no
    /// ranges left.
    async fn batch(
        &self,
        worker: usize,
        ranges: &std::sync::Mutex<VecDeque<KeyRange>>,
        current: &std::sync::Mutex<Option<KeyRange>>,
        filter: &RowFilter,
        reserved: u64,
    ) -> Result<Option<(BatchReport, BatchDecision, Phases)>, RunError> {
        let started = Instant::now();
        let Some(rows) = self.next_rows(ranges, current, filter).await? else {
            return Ok(None);
        };
        let read = Instant::now();
        let (rows, decision) = self.decide(rows, reserved).await?;
        let decided = Instant::now();
        let queue: Vec<&StoredRow> = decision.queue.iter().map(|&i| &rows[i]).collect();
        let written = swap_unlocked_batch(
            &self.pool,
            &self.table,
            self.run_id,
            &decision.swaps,
            &queue,
        )
        .await?;
        let phases = Phases {
            read: read - started,
            crypto: decided - read,
            write: decided.elapsed(),
        };
        let report = BatchReport {
            worker,
            rows: rows.len() as u64,
            skipped: decision.skipped,
            reencrypted: written.swapped.len() as u64,
            queued: written.queued,
            left: decision.left.len() as u64,
            // Rows held by someone are not changed: the re-walks come back
            // to them, and report them as locked if they stay held.
            conflicts: ((decision.swaps.len() - written.swapped.len()) as u64)
                .saturating_sub(written.held),
            held: written.held,
            latency: started.elapsed(),
        };
        Ok(Some((report, decision, phases)))
    }

    /// The next non-empty page of this worker's range (or of the next range
    /// in the list), read without locks; `None` when the list is empty.
    async fn next_rows(
        &self,
        ranges: &std::sync::Mutex<VecDeque<KeyRange>>,
        current: &std::sync::Mutex<Option<KeyRange>>,
        filter: &RowFilter,
    ) -> Result<Option<Vec<StoredRow>>, RunError> {
        // Ranges keep this process's workers on disjoint keys without a
        // shared cursor to wait for. A range holding more rows than a
        // batch (rows inserted since its ends were read) is walked on.
        loop {
            let resumed = lock_ranges(current).take();
            let range = match resumed {
                Some(range) => range,
                None => match lock_ranges(ranges).pop_front() {
                    Some(range) => range,
                    None => return Ok(None),
                },
            };
            let rows = read_range(
                &self.pool,
                &self.table,
                range.after.as_deref(),
                range.upto.as_deref(),
                filter,
                self.batch_size,
            )
            .await?;
            // A full page may have more rows after it in its range, unless
            // it ended on the range's end (the usual case: ranges are cut
            // a batch long), where reading on would cost a round trip for
            // nothing.
            if rows.len() as i64 == self.batch_size {
                if let Some(last) = rows.last().filter(|l| Some(&l.id) != range.upto.as_ref()) {
                    *lock_ranges(current) = Some(KeyRange {
                        after: Some(last.id.clone()),
                        upto: range.upto,
                    });
                }
            }
            if !rows.is_empty() {
                return Ok(Some(rows));
            }
        }
    }

    /// Takes up to a batch's worth of the `--limit` budget.
    fn reserve(&self) -> Option<u64> {
        let Some(budget) = &self.budget else {
            return Some(u64::MAX);
        };
        let want = self.batch_size as u64;
        let got = budget
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                (left > 0).then(|| left - left.min(want))
            })
            .ok()?;
        Some(got.min(want))
    }

    fn refund(&self, reserved: u64, used: u64) {
        if let Some(budget) = &self.budget {
            budget.fetch_add(reserved.saturating_sub(used), Ordering::SeqCst);
        }
    }

    async fn decide(
        &self,
        rows: Vec<StoredRow>,
        reserved: u64,
    ) -> Result<(Vec<StoredRow>, BatchDecision), RunError> {
        let keyring = Arc::clone(&self.keyring);
        let mode = self.mode;
        let budget = self.budget.as_ref().map(|_| reserved);
        tokio::task::spawn_blocking(move || {
            let decision = decide_batch(&keyring, &rows, mode, budget);
            (rows, decision)
        })
        .await
        .map_err(|e| RunError::crashed("the crypto task", &e))
    }
}

/// A key range `(after, upto]` of a pass; `None` ends are open.
#[derive(Debug, Clone)]
struct KeyRange {
    after: Option<String>,
    upto: Option<String>,
}

/// The ranges between consecutive `ends`, covering the whole key space:
/// rows inserted after the ends were read still fall in one of them.
fn key_ranges(ends: Vec<String>) -> VecDeque<KeyRange> {
    let mut ranges = VecDeque::with_capacity(ends.len() + 1);
    let mut after = None;
    for end in ends {
        ranges.push_back(KeyRange {
            after: after.replace(end.clone()),
            upto: Some(end),
        });
    }
    ranges.push_back(KeyRange { after, upto: None });
    ranges
}

/// Where in a list of `len` ranges process `pid` starts: spread over the
/// list by a multiplicative hash, so processes started one after another
/// (consecutive pids) start far apart.
fn start_offset(pid: u32, len: usize) -> usize {
    if len == 0 {
        return 0;
    }
    (u64::from(pid).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize % len
}

/// The shared range list (or a worker's current range); nothing is left
/// half-changed under it (a pop or a store is all that happens), so a
/// poisoned lock is taken as it is.
fn lock_ranges<T>(ranges: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    ranges
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Workers and rows per batch for an in-place pass, and what they were
/// chosen from (`--workers auto`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Tuning {
    pub workers: usize,
    pub batch_size: i64,
    /// The median of a few `SELECT 1` round trips, in milliseconds.
    pub rtt_ms: f64,
    /// Connections the server would still accept (`max_connections` minus
    /// the reserved and those in use) when measured.
    pub free_connections: i64,
}

/// Worker count that saturates the reference server on loopback, at
/// 1,000-row batches: 2 and 4 workers ran within a few percent of each
/// other there (README, Performance), so 4 is the default and the floor.
const SATURATING_WORKERS: usize = 4;

/// Server time per row of a batch when [`SATURATING_WORKERS`] share it:
/// 4 workers over ~100,000 rows/s on the reference machine.
const ROW_SERVICE: Duration = Duration::from_micros(40);

/// Round trips per batch: the read and the one write statement.
const ROUND_TRIPS_PER_BATCH: u32 = 2;

/// Connections a run keeps beside its workers (journal, progress, the
/// re-provisioner's) and leaves for the control plane.
const SPARE_CONNECTIONS: i64 = 8;

/// Chooses workers and batch size so that the round trips a batch waits
/// for are hidden behind other workers' batches: each worker spends
/// `2 x rtt + batch x ROW_SERVICE` per batch, of which the server is busy
/// only for the second part, so it takes `SATURATING_WORKERS` times that
/// ratio to keep the server as busy as on loopback. Larger batches at
/// higher RTT amortise the round trips; 5,000 rows bounds what one worker
/// holds locked and in memory. On loopback this is the default (4, 1,000).
pub fn tune(rtt: Duration, free_connections: i64, max_connections: usize) -> (usize, i64) {
    let rtt_ms = rtt.as_secs_f64() * 1e3;
    // In steps of 500 rows, and workers rounded to the nearest, so that
    // loopback's fraction of a millisecond keeps the default.
    let batch = ((2.0 * (1.0 + rtt_ms / 10.0)).round() * 500.0).clamp(1000.0, 5000.0) as i64;
    let service = ROW_SERVICE.as_secs_f64() * batch as f64;
    let waited = f64::from(ROUND_TRIPS_PER_BATCH) * rtt.as_secs_f64();
    let wanted = (SATURATING_WORKERS as f64 * (waited + service) / service).round() as usize;
    let allowed = usize::try_from(free_connections - SPARE_CONNECTIONS)
        .unwrap_or(0)
        .min(max_connections);
    (wanted.max(SATURATING_WORKERS).min(allowed).max(1), batch)
}

/// Measures the round trip and the server's free connections, and tunes.
pub async fn auto_tune(pool: &PgPool, max_connections: usize) -> Result<Tuning, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    // The first query on a connection pays for statement preparation;
    // the median of five after it is the network's round trip.
    sqlx::query("SELECT 1")
        .execute(&mut *conn)
        .bounded()
        .await?;
    let mut samples = Vec::with_capacity(5);
    for _ in 0..5 {
        let started = Instant::now();
        sqlx::query("SELECT 1")
            .execute(&mut *conn)
            .bounded()
            .await?;
        samples.push(started.elapsed());
    }
    samples.sort();
    let rtt = samples[samples.len() / 2];
    let free_connections: i64 = sqlx::query_scalar(
        "SELECT current_setting('max_connections')::int8
              - current_setting('superuser_reserved_connections')::int8
              - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')",
    )
    .fetch_one(&mut *conn)
    .bounded()
    .await?;
    let (workers, batch_size) = tune(rtt, free_connections, max_connections);
    Ok(Tuning {
        workers,
        batch_size,
        rtt_ms: rtt.as_secs_f64() * 1e3,
        free_connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLENTY: i64 = 100;

    #[test]
    fn auto_on_loopback_is_the_default_four_workers_of_a_thousand_rows() {
        assert_eq!(tune(Duration::from_micros(100), PLENTY, 16), (4, 1000));
    }

    #[test]
    fn auto_hides_a_longer_round_trip_behind_more_workers_and_larger_batches() {
        let (w10, b10) = tune(Duration::from_millis(10), PLENTY, 64);
        let (w50, b50) = tune(Duration::from_millis(50), PLENTY, 64);
        assert!(
            w10 > 4 && w50 > w10,
            "workers {w10} at 10 ms, {w50} at 50 ms"
        );
        assert!(
            b10 > 1000 && b50 > b10,
            "batches {b10} at 10 ms, {b50} at 50 ms"
        );
        assert!(b50 <= 5000, "a worker holds at most 5,000 rows: {b50}");
    }

    #[test]
    fn auto_stays_within_the_servers_free_connections_and_the_cap() {
        let rtt = Duration::from_millis(50);
        assert_eq!(tune(rtt, PLENTY, 3).0, 3, "--max-connections caps");
        assert_eq!(
            tune(rtt, SPARE_CONNECTIONS + 2, 64).0,
            2,
            "the server's free connections, less the spare ones, cap"
        );
        assert_eq!(tune(rtt, 0, 64).0, 1, "a full server still gets one worker");
    }

    #[test]
    fn processes_start_their_passes_at_different_ranges() {
        let starts: std::collections::HashSet<usize> =
            (1000..1004).map(|pid| start_offset(pid, 100)).collect();
        assert_eq!(starts.len(), 4, "consecutive pids start apart: {starts:?}");
        assert!(starts.iter().all(|&s| s < 100));
        assert_eq!(start_offset(1234, 0), 0);
        assert_eq!(start_offset(1234, 1), 0);
    }

    #[test]
    fn key_ranges_cover_the_whole_key_space_end_to_end() {
        let ranges = key_ranges(vec!["b".into(), "d".into()]);
        let shown: Vec<(Option<&str>, Option<&str>)> = ranges
            .iter()
            .map(|r| (r.after.as_deref(), r.upto.as_deref()))
            .collect();
        assert_eq!(
            shown,
            vec![(None, Some("b")), (Some("b"), Some("d")), (Some("d"), None)]
        );
        let none: Vec<_> = key_ranges(Vec::new()).into_iter().collect();
        assert_eq!(none.len(), 1);
        assert!(none[0].after.is_none() && none[0].upto.is_none());
    }
}
