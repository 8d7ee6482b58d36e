//! Statements on `rekey.backups`: the ciphertexts in-place batches
//! replaced, one row per batch. They are written by the batch's own
//! compare-and-swap statement (`db::org_instances`), in the same
//! transaction as the rows; here they are only purged.

use sqlx::PgPool;

use super::runs::get_run;
use crate::db::DbError;

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
    let mut tx = pool.begin().await?;
    let deleted = sqlx::query("DELETE FROM rekey.backups WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    sqlx::query("UPDATE rekey.items SET old_db = NULL, old_redis = NULL WHERE run_id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    sqlx::query("UPDATE rekey.runs SET backups_purged_at = now() WHERE id = $1")
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(deleted)
}
