//! `rekey rollback`: the way back from a botched in-place run. Each of the
//! run's backup batches (`rekey.backups`) is put back in one transaction:
//! its rows' pre-run ciphertexts written with a compare-and-swap on the
//! bytes just read, and the batch marked restored, so a rollback killed at
//! any instant and started again converges like a run does.
//!
//! A row is put back only when its current fields open under the run's new
//! key to exactly the plaintexts its latest backup opens to under the old
//! key: a row the control plane changed since the run is left and reported.
//! Tenants the run re-provisioned are listed and left too: their old
//! credentials were reset, so their old ciphertexts open to dead secrets.
//! No clap and no environment here: the command builds the options.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rayon::prelude::*;
use serde::Serialize;
use sqlx::PgPool;

use super::Outcome;
use crate::db::journal::{self, BackupBatch, RunRecord};
use crate::db::org_instances::{claim_batch, restore_batch, scan_page, RowFilter, StoredRow, Swap};
use crate::db::{self, Bounded, DbError, Table};
use crate::envelope::Keyring;

/// Rows listed by id in a report (each list also gives its total).
pub const LISTED: usize = 100;

/// What the operator asked `rekey rollback` to do.
#[derive(Debug, Clone)]
pub struct RollbackOptions {
    pub run_id: i64,
    /// Count what would be restored, left and skipped; write nothing, not
    /// even the tool's migrations.
    pub dry_run: bool,
    /// The operator says every `rekey run` process is stopped: roll back a
    /// run that is still open, and close it as failed.
    pub force_open: bool,
    /// Batches restored at once, each on a connection of its own.
    pub workers: usize,
}

/// What a rollback works on.
#[derive(Clone)]
pub struct RollbackContext {
    pub pool: PgPool,
    pub table: Table,
    pub keyring: Arc<Keyring>,
}

/// Why a rollback refused to start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(
        "a rollback needs the run's old key, to check that each backup opens to what the row holds \
         now: pass --old-key-file FILE or set OLD_SECRETS_ENCRYPTION_KEY"
    )]
    NoOldKey,
    #[error(
        "run {run_id} was finalized ({at}): its backups are purged, so there is nothing to roll back to"
    )]
    Finalized { run_id: i64, at: String },
    #[error(
        "run {run_id} is still open. Stop every `rekey run` process first (on every machine), then run \
         `rekey rollback --run {run_id} --force-open`: the run is then closed as failed, reason \"rolled back\""
    )]
    RunOpen { run_id: i64 },
    #[error(
        "run {open} is open; rolling back run {run_id} under it would race its writes. Let run {open} \
         end first"
    )]
    OtherRunOpen { run_id: i64, open: i64 },
    #[error(
        "run {run_id} was made with {which} key id {run_key}, but the {which} key given has id {given}; \
         a rollback needs the run's own keys"
    )]
    WrongKey {
        run_id: i64,
        which: &'static str,
        run_key: String,
        given: String,
    },
    #[error("{task} crashed: {message}")]
    Crashed { task: &'static str, message: String },
    /// Rows may have been put back when this error stopped the rollback.
    #[error("{source}; the rollback of run {run_id} stopped part-way: run the same command to resume it")]
    Stopped {
        run_id: i64,
        #[source]
        source: Box<RollbackError>,
    },
}

impl RollbackError {
    /// True when rows may have been put back before the error (exit 1, not 2).
    pub fn changed_something(&self) -> bool {
        matches!(self, RollbackError::Stopped { .. })
    }
}

impl From<sqlx::Error> for RollbackError {
    fn from(e: sqlx::Error) -> RollbackError {
        RollbackError::Db(e.into())
    }
}

/// What a rollback did (or, with `--dry-run`, would do), for the report
/// and the exit code. Totals cover earlier, interrupted invocations too.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub run_id: i64,
    pub dry_run: bool,
    pub new_key_id: String,
    pub old_key_id: Option<String>,
    /// The run's state after the rollback (`finished` or `failed`).
    pub run_state: String,
    /// Every backup batch restored: the run is marked rolled back.
    pub rolled_back: bool,
    pub batches: i64,
    /// Rows the run rewrote in place (each counted once, however many
    /// batches backed it up).
    pub rows_backed_up: i64,
    /// Rows put back to their pre-run ciphertexts (would be, in a dry run).
    pub restored: i64,
    /// Of `restored`, rows an earlier invocation put back.
    pub restored_earlier: i64,
    /// Rows left because the control plane changed (or deleted) them since
    /// the run: the first [`LISTED`] by id, and their total.
    pub changed: Vec<String>,
    pub changed_total: i64,
    /// Tenants the run re-provisioned: cannot be rolled back (old
    /// credentials reset). The first [`LISTED`] by id, and their total.
    pub reprovisioned: Vec<String>,
    pub reprovisioned_total: i64,
    #[serde(skip)]
    pub outcome: Outcome,
}

/// Rolls back (or, with `dry_run`, evaluates rolling back) an in-place run.
pub async fn rollback(
    ctx: &RollbackContext,
    opts: &RollbackOptions,
) -> Result<RollbackReport, RollbackError> {
    let run = preflight(ctx, opts).await?;
    if opts.dry_run {
        return dry_run(ctx, &run).await;
    }
    db::migrate(&ctx.pool).await?;
    journal::begin_rollback(&ctx.pool, run.id)
        .await
        .map_err(|e| stopped(run.id, e.into()))?;
    restore(ctx, opts, &run)
        .await
        .map_err(|e| stopped(run.id, e))
}

fn stopped(run_id: i64, e: RollbackError) -> RollbackError {
    RollbackError::Stopped {
        run_id,
        source: Box::new(e),
    }
}

/// The checks before anything is written; a refusal changes nothing.
async fn preflight(
    ctx: &RollbackContext,
    opts: &RollbackOptions,
) -> Result<RunRecord, RollbackError> {
    let run = journal::get_run(&ctx.pool, Some(opts.run_id)).await?;
    if let Some(at) = run.backups_purged_at {
        return Err(RollbackError::Finalized {
            run_id: run.id,
            at: at.to_rfc3339(),
        });
    }
    let Some(old) = ctx.keyring.old_key_id() else {
        return Err(RollbackError::NoOldKey);
    };
    let wrong = |which, run_key: &str, given: &str| RollbackError::WrongKey {
        run_id: run.id,
        which,
        run_key: run_key.to_string(),
        given: given.to_string(),
    };
    let new = ctx.keyring.new_key_id();
    if run.new_key_id != new.0 {
        return Err(wrong("new", &run.new_key_id, &new.0));
    }
    // A run made without the old key re-encrypted nothing in place; any
    // old key then serves to list what it re-provisioned.
    if let Some(run_old) = &run.old_key_id {
        if *run_old != old.0 {
            return Err(wrong("old", run_old, &old.0));
        }
    }
    if let Some(open) = journal::open_run(&ctx.pool).await? {
        if open.id != run.id {
            return Err(RollbackError::OtherRunOpen {
                run_id: run.id,
                open: open.id,
            });
        }
        if !opts.force_open {
            return Err(RollbackError::RunOpen { run_id: run.id });
        }
    }
    Ok(run)
}

/// What every batch needs to know about the whole run.
struct RunView {
    /// Rows in more than one batch, with the latest one (the only one that
    /// restores them).
    rebacked: HashMap<String, i64>,
    /// What those rows are put back to ([`pre_run_fields`]), by id.
    rebacked_to: HashMap<String, Fields>,
    /// Tenants the run re-provisioned, by id.
    reprovisioned: Vec<String>,
    reprovisioned_set: HashSet<String>,
    rows_backed_up: i64,
}

impl RunView {
    async fn load(pool: &PgPool, run_id: i64, keyring: &Keyring) -> Result<RunView, RollbackError> {
        let rebacked_rows = journal::rebacked_rows(pool, run_id).await?;
        let ids: Vec<String> = rebacked_rows.iter().map(|(id, _, _)| id.clone()).collect();
        let rebacked_to = pre_run_fields(keyring, journal::entries_of(pool, run_id, &ids).await?);
        let entries = journal::backup_entry_count(pool, run_id).await?;
        let reprovisioned = journal::item_ids(pool, run_id).await?;
        // A row backed up by several batches is still one row.
        let extra: i64 = rebacked_rows.iter().map(|(_, _, n)| n - 1).sum();
        Ok(RunView {
            rebacked: rebacked_rows
                .into_iter()
                .map(|(id, latest, _)| (id, latest))
                .collect(),
            rebacked_to,
            reprovisioned_set: reprovisioned.iter().cloned().collect(),
            reprovisioned,
            rows_backed_up: entries - extra,
        })
    }

    /// The batch's entries this batch restores: not superseded by a later
    /// batch, and not re-provisioned since.
    fn restorable(&self, batch: BackupBatch) -> Vec<Entry> {
        let BackupBatch {
            id,
            org_ids,
            old_db,
            old_redis,
        } = batch;
        org_ids
            .into_iter()
            .zip(old_db)
            .zip(old_redis)
            .filter(|((org, _), _)| {
                self.rebacked.get(org).is_none_or(|&latest| latest == id)
                    && !self.reprovisioned_set.contains(org)
            })
            .map(|((id, db), redis)| match self.rebacked_to.get(&id) {
                Some((db, redis)) => Entry {
                    db: db.clone(),
                    redis: redis.clone(),
                    id,
                },
                None => Entry { id, db, redis },
            })
            .collect()
    }
}

/// For rows backed up by several batches (`entries`: latest batch first
/// per row), each field as it stood before the run: the latest batch's,
/// unless that is a ciphertext under the new key, which only this run
/// wrote there (the control plane wrote under the old one again into the
/// row's other field, and the re-walk backed up the whole row); then the
/// latest earlier batch's that is not. Restoring the latest batch as it
/// is would leave that field sealed under the new key, which the control
/// plane, back on the old key, cannot open.
fn pre_run_fields(
    keyring: &Keyring,
    entries: Vec<journal::BackupEntry>,
) -> HashMap<String, Fields> {
    let by_new = |field: &Field| {
        field
            .as_deref()
            .is_some_and(|b| keyring.new_cipher().open(b).is_some())
    };
    let pick = |fields: Vec<Field>| -> Field {
        let at = fields.iter().position(|f| !by_new(f)).unwrap_or(0);
        fields.into_iter().nth(at).flatten()
    };
    let mut rows: HashMap<String, (Vec<Field>, Vec<Field>)> = HashMap::new();
    for (id, _batch, db, redis) in entries {
        let row = rows.entry(id).or_default();
        row.0.push(db);
        row.1.push(redis);
    }
    rows.into_iter()
        .map(|(id, (db, redis))| (id, (pick(db), pick(redis))))
        .collect()
}

/// One ciphertext column's value (NULL: `None`).
type Field = Option<Vec<u8>>;

/// A row's database and Redis ciphertexts.
type Fields = (Field, Field);

/// One row's backup: its ciphertexts before the run.
struct Entry {
    id: String,
    db: Option<Vec<u8>>,
    redis: Option<Vec<u8>>,
}

/// The rows of a backup batch's `entries`, read or claimed by id.
fn entries_filter(entries: &[Entry], wait_for_locked: bool) -> RowFilter {
    RowFilter {
        ids: Some(entries.iter().map(|e| e.id.clone()).collect()),
        wait_for_locked,
    }
}

/// Restores every batch not yet restored, `workers` at a time, then marks
/// the run rolled back and reports from the journal.
async fn restore(
    ctx: &RollbackContext,
    opts: &RollbackOptions,
    run: &RunRecord,
) -> Result<RollbackReport, RollbackError> {
    let earlier = journal::restore_totals(&ctx.pool, run.id, 0).await?;
    let view = Arc::new(RunView::load(&ctx.pool, run.id, &ctx.keyring).await?);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..opts.workers.max(1) {
        let (ctx, view, run_id) = (ctx.clone(), Arc::clone(&view), run.id);
        // Every batch commits whole, so workers other than a failing one
        // may go on: what they restore stays restored, and a re-run resumes.
        tasks.spawn(async move {
            while restore_next_batch(&ctx, run_id, &view).await? {}
            Ok::<(), RollbackError>(())
        });
    }
    let mut first_error = None;
    while let Some(joined) = tasks.join_next().await {
        let result = joined.unwrap_or_else(|e| {
            Err(RollbackError::Crashed {
                task: "a rollback worker",
                message: e.to_string(),
            })
        });
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let totals = journal::restore_totals(&ctx.pool, run.id, LISTED as i64).await?;
    let rolled_back = totals.batches_restored == totals.batches;
    if rolled_back {
        journal::mark_rolled_back(&ctx.pool, run.id).await?;
    }
    let run_after = journal::get_run(&ctx.pool, Some(run.id)).await?;
    Ok(report(
        run_after,
        false,
        rolled_back,
        &view,
        Counts {
            batches: totals.batches,
            restored: totals.rows_restored,
            restored_earlier: earlier.rows_restored,
            changed: totals.left_ids,
            changed_total: totals.rows_left,
        },
    ))
}

/// One batch, in one transaction: claim it, lock and read its rows, put
/// back those that still hold what the run wrote, and mark it restored.
/// False when no batch is left.
async fn restore_next_batch(
    ctx: &RollbackContext,
    run_id: i64,
    view: &RunView,
) -> Result<bool, RollbackError> {
    let mut tx = ctx.pool.begin().bounded().await?;
    let Some(batch) = journal::claim_unrestored_backup(&mut tx, run_id).await? else {
        return Ok(false);
    };
    let backup_id = batch.id;
    let entries = view.restorable(batch);
    let rows = if entries.is_empty() {
        Vec::new()
    } else {
        // Wait for rows the control plane holds rather than skip them: a
        // skipped row would be reported as changed when it merely was busy.
        let filter = entries_filter(&entries, true);
        claim_batch(&mut tx, &ctx.table, None, &filter, entries.len() as i64).await?
    };
    let (swaps, mut left) = judge(&ctx.keyring, entries, rows).await?;
    let written: HashSet<String> = restore_batch(&mut tx, &ctx.table, &swaps)
        .await?
        .into_iter()
        .collect();
    left.extend(
        swaps
            .iter()
            .filter(|s| !written.contains(&s.id))
            .map(|s| s.id.clone()),
    );
    left.sort();
    journal::mark_restored(&mut tx, backup_id, written.len() as i64, &left).await?;
    tx.commit().bounded().await?;
    Ok(true)
}

/// Walks the batches not yet restored without writing, and says what a
/// rollback would restore and leave.
async fn dry_run(ctx: &RollbackContext, run: &RunRecord) -> Result<RollbackReport, RollbackError> {
    let marks = journal::has_rollback_marks(&ctx.pool).await?;
    let earlier = journal::restore_totals(&ctx.pool, run.id, LISTED as i64).await?;
    let view = RunView::load(&ctx.pool, run.id, &ctx.keyring).await?;
    let (mut restored, mut changed) = (0i64, Vec::new());
    let mut after = 0;
    while let Some(batch) = journal::next_unrestored_backup(&ctx.pool, run.id, after, marks).await?
    {
        after = batch.id;
        let entries = view.restorable(batch);
        let rows = if entries.is_empty() {
            Vec::new()
        } else {
            let filter = entries_filter(&entries, false);
            scan_page(&ctx.pool, &ctx.table, None, &filter, entries.len() as i64).await?
        };
        let (swaps, left) = judge(&ctx.keyring, entries, rows).await?;
        restored += swaps.len() as i64;
        changed.extend(left);
    }
    let changed_total = earlier.rows_left + changed.len() as i64;
    let mut listed = earlier.left_ids;
    listed.extend(changed);
    listed.sort();
    listed.truncate(LISTED);
    Ok(report(
        run.clone(),
        true,
        false,
        &view,
        Counts {
            batches: earlier.batches,
            restored: earlier.rows_restored + restored,
            restored_earlier: earlier.rows_restored,
            changed: listed,
            changed_total,
        },
    ))
}

/// Decides a batch on rayon's pool: the swaps that put rows back, and the
/// ids of rows left (changed since the run, or gone). Plaintexts never
/// leave this function.
async fn judge(
    keyring: &Arc<Keyring>,
    entries: Vec<Entry>,
    rows: Vec<StoredRow>,
) -> Result<(Vec<Swap>, Vec<String>), RollbackError> {
    let keyring = Arc::clone(keyring);
    tokio::task::spawn_blocking(move || {
        let rows: HashMap<&str, &StoredRow> = rows.iter().map(|r| (r.id.as_str(), r)).collect();
        let verdicts: Vec<Result<Swap, String>> = entries
            .into_par_iter()
            .map(|entry| match rows.get(entry.id.as_str()) {
                Some(row) if still_as_written(&keyring, &entry, row) => Ok(Swap {
                    id: entry.id,
                    tid: row.tid.clone(),
                    old_db: row.db.clone(),
                    old_redis: row.redis.clone(),
                    new_db: entry.db,
                    new_redis: entry.redis,
                }),
                _ => Err(entry.id),
            })
            .collect();
        let mut swaps = Vec::new();
        let mut left = Vec::new();
        for v in verdicts {
            match v {
                Ok(swap) => swaps.push(swap),
                Err(id) => left.push(id),
            }
        }
        (swaps, left)
    })
    .await
    .map_err(|e| RollbackError::Crashed {
        task: "the rollback's crypto task",
        message: e.to_string(),
    })
}

/// True when both of the row's fields are what the run left there: the
/// backup's own bytes (a field the run kept as it was), or a ciphertext
/// that opens under the new key to exactly what the backup opens to under
/// the old one.
fn still_as_written(keyring: &Keyring, entry: &Entry, row: &StoredRow) -> bool {
    field_as_written(keyring, entry.db.as_deref(), row.db.as_deref())
        && field_as_written(keyring, entry.redis.as_deref(), row.redis.as_deref())
}

fn field_as_written(keyring: &Keyring, backup: Option<&[u8]>, current: Option<&[u8]>) -> bool {
    if backup == current {
        return true;
    }
    let (Some(backup), Some(current), Some(old)) = (backup, current, keyring.old_cipher()) else {
        return false;
    };
    match (old.open(backup), keyring.new_cipher().open(current)) {
        (Some(was), Some(now)) => was.as_slice() == now.as_slice(),
        _ => false,
    }
}

/// The figures a report is made of, besides the run itself.
struct Counts {
    batches: i64,
    restored: i64,
    restored_earlier: i64,
    changed: Vec<String>,
    changed_total: i64,
}

fn report(
    run: RunRecord,
    dry_run: bool,
    rolled_back: bool,
    view: &RunView,
    c: Counts,
) -> RollbackReport {
    let reprovisioned_total = view.reprovisioned.len() as i64;
    let outcome = if c.changed_total > 0 || reprovisioned_total > 0 {
        Outcome::Incomplete
    } else {
        Outcome::Done
    };
    RollbackReport {
        run_id: run.id,
        dry_run,
        new_key_id: run.new_key_id,
        old_key_id: run.old_key_id,
        run_state: run.state,
        rolled_back,
        batches: c.batches,
        rows_backed_up: view.rows_backed_up,
        restored: c.restored,
        restored_earlier: c.restored_earlier,
        changed: c.changed,
        changed_total: c.changed_total,
        reprovisioned: view.reprovisioned.iter().take(LISTED).cloned().collect(),
        reprovisioned_total,
        outcome,
    }
}

#[cfg(test)]
mod tests {
    //! When a field still holds what the run wrote: the rule every restore
    //! is decided by, with both keys real and no database.
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::envelope::Cipher;
    use crate::keys::Key;

    struct World {
        keyring: Keyring,
        old: Cipher,
        new: Cipher,
    }

    fn world() -> World {
        let (old, new) = (Key::generate().unwrap(), Key::generate().unwrap());
        World {
            keyring: Keyring::new(&new, Some(&old)),
            old: Cipher::new(&old),
            new: Cipher::new(&new),
        }
    }

    #[test]
    fn a_field_resealed_under_the_new_key_to_the_same_plaintext_is_as_written() {
        let w = world();
        let backup = w.old.seal(b"postgres://u:p@h/db");
        let now = w.new.seal(b"postgres://u:p@h/db");
        assert!(field_as_written(&w.keyring, Some(&backup), Some(&now)));
    }

    #[test]
    fn a_field_the_run_kept_is_as_written_when_its_bytes_are_the_same() {
        let w = world();
        let kept = w.new.seal(b"redis://already-current");
        assert!(field_as_written(&w.keyring, None, None));
        assert!(field_as_written(&w.keyring, Some(&kept), Some(&kept)));
    }

    #[test]
    fn another_plaintext_another_key_or_a_null_is_a_change() {
        let w = world();
        let backup = w.old.seal(b"postgres://u:p@h/db");
        let other_plaintext = w.new.seal(b"postgres://u:changed@h/db");
        let still_old = w.old.seal(b"postgres://u:p@h/db");
        assert!(!field_as_written(
            &w.keyring,
            Some(&backup),
            Some(&other_plaintext)
        ));
        assert!(!field_as_written(
            &w.keyring,
            Some(&backup),
            Some(&still_old)
        ));
        assert!(!field_as_written(&w.keyring, Some(&backup), None));
        assert!(!field_as_written(&w.keyring, None, Some(&other_plaintext)));
    }

    #[test]
    fn a_row_is_as_written_only_when_both_fields_are() {
        let w = world();
        let entry = Entry {
            id: "t1".into(),
            db: Some(w.old.seal(b"db")),
            redis: Some(w.old.seal(b"redis")),
        };
        let row = |redis: &[u8]| StoredRow {
            id: "t1".into(),
            tid: None,
            db: Some(w.new.seal(b"db")),
            redis: Some(w.new.seal(redis)),
        };
        assert!(still_as_written(&w.keyring, &entry, &row(b"redis")));
        assert!(!still_as_written(
            &w.keyring,
            &entry,
            &row(b"redis-changed")
        ));
    }
}
