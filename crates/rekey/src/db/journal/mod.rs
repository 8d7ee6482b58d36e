//! The tool's journal in schema `rekey`: runs, the per-batch backup of the
//! ciphertexts that in-place batches replaced, and the per-tenant state of
//! re-provisioning. Written in the same transactions as the rows it
//! describes, so that a crash at any instant leaves the two consistent.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

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

/// Queues tenants for re-provisioning in this run, remembering the
/// ciphertexts seen so that the final write can compare-and-swap on them.
/// A tenant already queued in this run is left as it is.
pub async fn queue_items(
    conn: &mut PgConnection,
    run_id: i64,
    ids: &[&str],
    old_db: &[Option<&[u8]>],
    old_redis: &[Option<&[u8]>],
) -> Result<u64, sqlx::Error> {
    if ids.is_empty() {
        return Ok(0);
    }
    let done = sqlx::query(
        "INSERT INTO rekey.items (run_id, org_id, old_db, old_redis)
         SELECT $1, u.id, u.db, u.redis FROM UNNEST($2::text[], $3::bytea[], $4::bytea[]) AS u(id, db, redis)
         ON CONFLICT (run_id, org_id) DO NOTHING",
    )
    .bind(run_id)
    .bind(ids)
    .bind(old_db)
    .bind(old_redis)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// Ids of tenants already queued in a run (any state), among `ids`.
pub async fn queued_among(
    pool: &PgPool,
    run_id: i64,
    ids: &[String],
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT org_id FROM rekey.items WHERE run_id = $1 AND org_id = ANY($2)")
        .bind(run_id)
        .bind(ids)
        .fetch_all(pool)
        .await
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

/// A tenant that was given up, with its reason, for reports.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct FailedItem {
    pub org_id: String,
    pub step: String,
    pub attempts: i32,
    pub last_error: Option<String>,
}

pub async fn failed_items(
    pool: &PgPool,
    run_id: i64,
    limit: i64,
) -> Result<Vec<FailedItem>, DbError> {
    Ok(sqlx::query_as::<_, FailedItem>(
        "SELECT org_id, step, attempts, last_error FROM rekey.items
          WHERE run_id = $1 AND state = 'failed' ORDER BY org_id LIMIT $2",
    )
    .bind(run_id)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

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
