//! Statements on `rekey.backups`: the ciphertexts in-place batches
//! replaced, one row per batch. They are written by the batch's own
//! compare-and-swap statement (`db::org_instances`), in the same
//! transaction as the rows; here they are purged (`finalize`), and read
//! back and marked restored batch by batch (`rollback`).

use sqlx::{PgConnection, PgPool};

use super::runs::{get_run, rollback_marks};
use crate::db::{Bounded, DbError};

/// Deletes a finished, verified run's backup ciphertexts. Refused unless
/// `verify` passed after the run finished: until then the backup is the
/// only way back from a botched run.
pub async fn purge_backups(pool: &PgPool, run_id: i64) -> Result<u64, DbError> {
    let run = get_run(pool, Some(run_id)).await?;
    if run.state != "finished" {
        return Err(DbError::RunNotFinished {
            run_id,
            state: run.state,
        });
    }
    let verified_after_finish = matches!(
        (run.verified_at, run.finished_at),
        (Some(v), Some(f)) if v >= f
    );
    if !verified_after_finish {
        return Err(DbError::RunNotVerified { run_id });
    }
    // A rollback under way or done needs these ciphertexts (to finish, or
    // to show what it restored); and a rolled-back run has nothing to
    // finalize.
    if rollback_marks(pool, run_id).await?.started_at.is_some() {
        return Err(DbError::RunRolledBack { run_id });
    }
    super::items::refuse_pending_cleanup(pool).await?;
    let mut tx = pool.begin().bounded().await?;
    let deleted = sqlx::query("DELETE FROM rekey.backups WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .bounded()
        .await?
        .rows_affected();
    sqlx::query("UPDATE rekey.items SET old_db = NULL, old_redis = NULL WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .bounded()
        .await?;
    sqlx::query("UPDATE rekey.runs SET backups_purged_at = now() WHERE id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .bounded()
        .await?;
    tx.commit().bounded().await?;
    Ok(deleted)
}

/// One in-place batch's backup: the ciphertexts its rows had before the
/// batch rewrote them, index for index.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct BackupBatch {
    pub id: i64,
    pub org_ids: Vec<String>,
    pub old_db: Vec<Option<Vec<u8>>>,
    pub old_redis: Vec<Option<Vec<u8>>>,
}

/// True when the journal has the rollback marks (migration 0003). A dry
/// run never migrates, so it must read a journal that predates them.
pub async fn has_rollback_marks(pool: &PgPool) -> Result<bool, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_attribute
                         WHERE attrelid = to_regclass('rekey.backups')
                           AND attname = 'restored_at' AND NOT attisdropped)",
    )
    .fetch_one(pool)
    .bounded()
    .await?)
}

/// Rows backed up by more than one batch of the run (re-walked after the
/// control plane wrote under the old key again): each with its latest
/// batch, the only one holding the ciphertext whose plaintext the row now
/// carries, and how many batches hold it. Usually few, so one pass over
/// the run's ids finds them all instead of a probe of later batches per row.
pub async fn rebacked_rows(pool: &PgPool, run_id: i64) -> Result<Vec<(String, i64, i64)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT u.org_id, max(b.id), count(*) FROM rekey.backups b, unnest(b.org_ids) AS u(org_id)
          WHERE b.run_id = $1 GROUP BY u.org_id HAVING count(*) > 1",
    )
    .bind(run_id)
    .fetch_all(pool)
    .bounded()
    .await?)
}

/// Every backup entry of the run for the rows `ids`, latest batch first per
/// row: (org id, batch id, old db, old redis).
pub async fn entries_of(
    pool: &PgPool,
    run_id: i64,
    ids: &[String],
) -> Result<Vec<BackupEntry>, DbError> {
    Ok(sqlx::query_as(
        "SELECT u.org_id, b.id, u.db, u.redis
           FROM rekey.backups b, unnest(b.org_ids, b.old_db, b.old_redis) AS u(org_id, db, redis)
          WHERE b.run_id = $1 AND u.org_id = ANY($2)
          ORDER BY u.org_id, b.id DESC",
    )
    .bind(run_id)
    .bind(ids)
    .fetch_all(pool)
    .bounded()
    .await?)
}

/// One row's entry in one backup batch: (org id, batch id, old db, old redis).
pub type BackupEntry = (String, i64, Option<Vec<u8>>, Option<Vec<u8>>);

/// Backup entries of the run (a row backed up twice counts twice).
pub async fn backup_entry_count(pool: &PgPool, run_id: i64) -> Result<i64, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(cardinality(org_ids)), 0)::bigint FROM rekey.backups WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(pool).bounded()
    .await?)
}

/// Claims the run's next batch not yet restored, locked for this
/// transaction; batches other workers hold are skipped, so workers never
/// restore one batch twice.
pub async fn claim_unrestored_backup(
    conn: &mut PgConnection,
    run_id: i64,
) -> Result<Option<BackupBatch>, DbError> {
    Ok(sqlx::query_as::<_, BackupBatch>(
        "SELECT id, org_ids, old_db, old_redis FROM rekey.backups
          WHERE run_id = $1 AND restored_at IS NULL
          ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .bind(run_id)
    .fetch_optional(conn)
    .bounded()
    .await?)
}

/// The run's next batch after `after` not yet restored, unlocked: for a
/// dry run (`marks`: whether the journal has the restore marks at all).
pub async fn next_unrestored_backup(
    pool: &PgPool,
    run_id: i64,
    after: i64,
    marks: bool,
) -> Result<Option<BackupBatch>, DbError> {
    let unrestored = if marks { "AND restored_at IS NULL" } else { "" };
    Ok(sqlx::query_as::<_, BackupBatch>(&format!(
        "SELECT id, org_ids, old_db, old_redis FROM rekey.backups
          WHERE run_id = $1 AND id > $2 {unrestored}
          ORDER BY id LIMIT 1"
    ))
    .bind(run_id)
    .bind(after)
    .fetch_optional(pool)
    .bounded()
    .await?)
}

/// Marks a batch restored, with what it put back and what it left, in the
/// transaction that wrote its rows.
pub async fn mark_restored(
    conn: &mut PgConnection,
    backup_id: i64,
    restored: i64,
    left_ids: &[String],
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE rekey.backups SET restored_at = now(), restored = $2, left_ids = $3
          WHERE id = $1 AND restored_at IS NULL",
    )
    .bind(backup_id)
    .bind(restored)
    .bind(left_ids)
    .execute(conn)
    .bounded()
    .await?;
    Ok(())
}

/// What the journal records of a run's rollback so far.
#[derive(Debug, Clone, Default)]
pub struct RestoreTotals {
    pub batches: i64,
    pub batches_restored: i64,
    pub rows_restored: i64,
    pub rows_left: i64,
    /// The first `limit` rows left, by id.
    pub left_ids: Vec<String>,
}

pub async fn restore_totals(
    pool: &PgPool,
    run_id: i64,
    limit: i64,
) -> Result<RestoreTotals, DbError> {
    if !has_rollback_marks(pool).await? {
        let batches: i64 =
            sqlx::query_scalar("SELECT count(*) FROM rekey.backups WHERE run_id = $1")
                .bind(run_id)
                .fetch_one(pool)
                .bounded()
                .await?;
        return Ok(RestoreTotals {
            batches,
            ..RestoreTotals::default()
        });
    }
    let (batches, batches_restored, rows_restored, rows_left): (i64, i64, i64, i64) =
        sqlx::query_as(
            "SELECT count(*), count(restored_at), coalesce(sum(restored), 0)::bigint,
                    coalesce(sum(cardinality(left_ids)), 0)::bigint
               FROM rekey.backups WHERE run_id = $1",
        )
        .bind(run_id)
        .fetch_one(pool)
        .bounded()
        .await?;
    let left_ids = sqlx::query_scalar(
        "SELECT l FROM rekey.backups, unnest(left_ids) AS l
          WHERE run_id = $1 ORDER BY l LIMIT $2",
    )
    .bind(run_id)
    .bind(limit)
    .fetch_all(pool)
    .bounded()
    .await?;
    Ok(RestoreTotals {
        batches,
        batches_restored,
        rows_restored,
        rows_left,
        left_ids,
    })
}
