//! Statements on `rekey.runs`: a rotation's lifecycle (opened, joined by
//! other processes with the same new key, closed as finished or failed,
//! verified) and the counts the journal holds for it.

use serde::Serialize;
use sqlx::PgPool;

use crate::db::DbError;
use crate::envelope::Mode;
use crate::keys::KeyId;

/// A run as the journal records it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct RunRecord {
    pub id: i64,
    pub mode: String,
    pub old_key_id: Option<String>,
    pub new_key_id: String,
    pub target_table: String,
    pub state: String,
    pub reason: Option<String>,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub verified_at: Option<chrono::DateTime<chrono::Utc>>,
    pub backups_purged_at: Option<chrono::DateTime<chrono::Utc>>,
}

const RUN_COLUMNS: &str = "id, mode, old_key_id, new_key_id, target_table, state, reason, \
     started_at, finished_at, verified_at, backups_purged_at";

/// Whether `open_or_resume` made a new run or joined the open one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStart {
    Started,
    Resumed,
}

/// Starts a run, or joins the open one when it was started with the same
/// new key. Refuses (changing nothing) when a run is open with another key.
pub async fn open_or_resume(
    pool: &PgPool,
    mode: Mode,
    new_key: &KeyId,
    old_key: Option<&KeyId>,
    target: &str,
) -> Result<(RunRecord, RunStart), DbError> {
    // Two processes may start together: the unique index on open runs lets
    // one INSERT win; the other sees the winner on its second look.
    for _ in 0..2 {
        if let Some(open) = open_run(pool).await? {
            if open.new_key_id != new_key.0 {
                return Err(DbError::OpenRunWithOtherKey {
                    run_id: open.id,
                    open_key: open.new_key_id,
                    given_key: new_key.clone(),
                });
            }
            return Ok((open, RunStart::Resumed));
        }
        let inserted = sqlx::query_as::<_, RunRecord>(&format!(
            "INSERT INTO rekey.runs (mode, old_key_id, new_key_id, target_table)
             VALUES ($1, $2, $3, $4) RETURNING {RUN_COLUMNS}"
        ))
        .bind(mode.as_str())
        .bind(old_key.map(|k| k.0.as_str()))
        .bind(&new_key.0)
        .bind(target)
        .fetch_one(pool)
        .await;
        match inserted {
            Ok(run) => return Ok((run, RunStart::Started)),
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(DbError::RunsChurning)
}

/// The open run, if any.
pub async fn open_run(pool: &PgPool) -> Result<Option<RunRecord>, DbError> {
    Ok(sqlx::query_as::<_, RunRecord>(&format!(
        "SELECT {RUN_COLUMNS} FROM rekey.runs WHERE state = 'running'"
    ))
    .fetch_optional(pool)
    .await?)
}

/// A run by id, or the most recent one.
pub async fn get_run(pool: &PgPool, id: Option<i64>) -> Result<RunRecord, DbError> {
    let run = match id {
        Some(id) => {
            sqlx::query_as::<_, RunRecord>(&format!(
                "SELECT {RUN_COLUMNS} FROM rekey.runs WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(pool)
            .await?
        }
        None => {
            sqlx::query_as::<_, RunRecord>(&format!(
                "SELECT {RUN_COLUMNS} FROM rekey.runs ORDER BY id DESC LIMIT 1"
            ))
            .fetch_optional(pool)
            .await?
        }
    };
    run.ok_or(DbError::NoSuchRun(id.unwrap_or(0)))
}

/// Closes a run as finished or failed, with its final figures.
pub async fn close_run(
    pool: &PgPool,
    run_id: i64,
    finished: bool,
    reason: Option<&str>,
    summary: &serde_json::Value,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE rekey.runs SET state = $2, reason = $3, summary = $4, finished_at = now()
          WHERE id = $1 AND state = 'running'",
    )
    .bind(run_id)
    .bind(if finished { "finished" } else { "failed" })
    .bind(reason)
    .bind(summary)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that `verify` found every row of the table opening under the
/// run's new key; `finalize` requires it.
pub async fn mark_verified(pool: &PgPool, new_key: &KeyId) -> Result<Option<i64>, DbError> {
    Ok(sqlx::query_scalar(
        "UPDATE rekey.runs SET verified_at = now()
          WHERE id = (SELECT max(id) FROM rekey.runs WHERE new_key_id = $1 AND state = 'finished')
         RETURNING id",
    )
    .bind(&new_key.0)
    .fetch_optional(pool)
    .await?)
}

/// The journal's view of a run: what was done so far.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunCounts {
    /// Rows rewritten in place (sum over backup batches).
    pub reencrypted: i64,
    /// Backup batches written.
    pub batches: i64,
    /// Re-provision items by state.
    pub items_pending: i64,
    pub items_done: i64,
    pub items_failed: i64,
    /// Pending items by step, for progress.
    pub steps: Vec<(String, i64)>,
}

pub async fn run_counts(pool: &PgPool, run_id: i64) -> Result<RunCounts, DbError> {
    let (reencrypted, batches): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(cardinality(org_ids)), 0)::bigint, count(*) FROM rekey.backups WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(pool)
    .await?;
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM rekey.items WHERE run_id = $1 GROUP BY state")
            .bind(run_id)
            .fetch_all(pool)
            .await?;
    let steps: Vec<(String, i64)> = sqlx::query_as(
        "SELECT step, count(*) FROM rekey.items WHERE run_id = $1 AND state = 'pending'
          GROUP BY step ORDER BY step",
    )
    .bind(run_id)
    .fetch_all(pool)
    .await?;
    let of = |s: &str| states.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    Ok(RunCounts {
        reencrypted,
        batches,
        items_pending: of("pending"),
        items_done: of("done"),
        items_failed: of("failed"),
        steps,
    })
}

/// A run's rollback marks (migration 0003): when a rollback began and
/// when it ended. Both `None` before any rollback, and on a journal that
/// predates rollback (read-only commands do not migrate).
#[derive(Debug, Clone, Default, Serialize, sqlx::FromRow)]
pub struct RollbackMarks {
    pub started_at: Option<chrono::DateTime<chrono::Utc>>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn rollback_marks(pool: &PgPool, run_id: i64) -> Result<RollbackMarks, DbError> {
    if !super::backups::has_rollback_marks(pool).await? {
        return Ok(RollbackMarks::default());
    }
    Ok(sqlx::query_as::<_, RollbackMarks>(
        "SELECT rollback_started_at AS started_at, rolled_back_at AS finished_at
           FROM rekey.runs WHERE id = $1",
    )
    .bind(run_id)
    .fetch_optional(pool)
    .await?
    .unwrap_or_default())
}

/// Records that a rollback of the run began; a run still open is closed
/// as failed, reason "rolled back", in the same statement, so that no
/// `rekey run` resumes it into the rows being put back.
pub async fn begin_rollback(pool: &PgPool, run_id: i64) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE rekey.runs
            SET rollback_started_at = coalesce(rollback_started_at, now()),
                reason = CASE WHEN state = 'running' THEN 'rolled back' ELSE reason END,
                finished_at = CASE WHEN state = 'running' THEN now() ELSE finished_at END,
                state = CASE WHEN state = 'running' THEN 'failed' ELSE state END
          WHERE id = $1",
    )
    .bind(run_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that every backup batch of the run has been restored.
pub async fn mark_rolled_back(pool: &PgPool, run_id: i64) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE rekey.runs SET rolled_back_at = coalesce(rolled_back_at, now()) WHERE id = $1",
    )
    .bind(run_id)
    .execute(pool)
    .await?;
    Ok(())
}
