//! Statements on `rekey.runs`: a rotation's lifecycle (opened, joined by
//! other processes with the same new key, closed as finished or failed,
//! verified) and the counts the journal holds for it.

use serde::Serialize;
use sqlx::PgPool;

use crate::db::{Bounded, DbError};
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
    /// How many times a later `run` re-opened it after it had ended.
    pub reopened: i32,
}

/// `reopened` came with migration 0002, and the journal is read before
/// `run` migrates it (the preflight checks, and `status`, `verify` and
/// `finalize`, which never migrate): the journal may be one an older version
/// wrote, or one another process is migrating at this instant. So that column
/// is read through the row's JSON, as 0 where it does not exist yet.
const RUN_COLUMNS: &str = "id, mode, old_key_id, new_key_id, target_table, state, reason, \
     started_at, finished_at, verified_at, backups_purged_at, \
     coalesce((to_jsonb(runs) ->> 'reopened')::int, 0) AS reopened";

/// Whether `open_or_resume` made a new run, joined the open one, or
/// re-opened the closed run of the same new key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStart {
    Started,
    Resumed,
    /// The new key's run had ended (finished or failed); it is running
    /// again, under the same id, for another convergence pass.
    Reopened,
}

/// Opens the run of `new_key`: joins it when it is open, re-opens it when it
/// has ended (one rotation per new key, docs/design.md "Run lifecycle"), or
/// starts it when the key has none. Refuses, changing nothing, when a run is
/// open with another key.
///
/// Two processes may start together: the unique indexes (one open run, one
/// run per new key) let one INSERT or re-open win, and the other sees the
/// winner on its next look.
pub async fn open_or_resume(
    pool: &PgPool,
    mode: Mode,
    new_key: &KeyId,
    old_key: Option<&KeyId>,
    target: &str,
) -> Result<(RunRecord, RunStart), DbError> {
    // Each lost race means another process opened or closed the run in
    // between; processes starting together lose only a few times.
    for _ in 0..8 {
        let (open, of_key) = open_run_and_run_of_key(pool, new_key).await?;
        if let Some(open) = open {
            if open.new_key_id != new_key.0 {
                return Err(DbError::OpenRunWithOtherKey {
                    run_id: open.id,
                    open_key: open.new_key_id,
                    given_key: new_key.clone(),
                });
            }
            return Ok((open, RunStart::Resumed));
        }
        let attempt = match of_key {
            Some(ended) => reopen(pool, ended.id, mode, old_key)
                .await
                .map(|run| run.map(|r| (r, RunStart::Reopened))),
            None => insert_run(pool, mode, new_key, old_key, target)
                .await
                .map(|r| Some((r, RunStart::Started))),
        };
        match attempt {
            Ok(Some(won)) => return Ok(won),
            // Another process re-opened it first: join it on the next look.
            Ok(None) => continue,
            Err(sqlx::Error::Database(db)) if db.is_unique_violation() => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(DbError::RunsChurning)
}

async fn insert_run(
    pool: &PgPool,
    mode: Mode,
    new_key: &KeyId,
    old_key: Option<&KeyId>,
    target: &str,
) -> Result<RunRecord, sqlx::Error> {
    sqlx::query_as::<_, RunRecord>(&format!(
        "INSERT INTO rekey.runs (mode, old_key_id, new_key_id, target_table)
         VALUES ($1, $2, $3, $4) RETURNING {RUN_COLUMNS}"
    ))
    .bind(mode.as_str())
    .bind(old_key.map(|k| k.0.as_str()))
    .bind(&new_key.0)
    .bind(target)
    .fetch_one(pool)
    .bounded()
    .await
}

/// Puts an ended run back to `running` for another pass: its reason,
/// end, summary and verification no longer describe it (verify and finalize
/// must see it finish again). Tenants it gave up get another chance: those
/// given up before their row was rewritten start over (what they had made
/// was removed when they were given up, and the branch step adopts what was
/// not); those given up while cleaning up retry the clean-up. `None` when
/// another process re-opened it first.
async fn reopen(
    pool: &PgPool,
    run_id: i64,
    mode: Mode,
    old_key: Option<&KeyId>,
) -> Result<Option<RunRecord>, sqlx::Error> {
    let mut tx = pool.begin().bounded().await?;
    let run = sqlx::query_as::<_, RunRecord>(&format!(
        "UPDATE rekey.runs
            SET state = 'running', reason = NULL, finished_at = NULL, verified_at = NULL,
                summary = NULL, mode = $2, old_key_id = $3, reopened = reopened + 1
          WHERE id = $1 AND state <> 'running'
         RETURNING {RUN_COLUMNS}"
    ))
    .bind(run_id)
    .bind(mode.as_str())
    .bind(old_key.map(|k| k.0.as_str()))
    .fetch_optional(&mut *tx)
    .bounded()
    .await?;
    if run.is_some() {
        sqlx::query(
            "UPDATE rekey.items
                SET state = 'pending', attempts = 0, last_error = NULL, owner = NULL,
                    lease_until = NULL, updated_at = now(),
                    step = CASE WHEN step IN ('cleanup', 'done') THEN step ELSE 'queued' END,
                    new_branch_id = CASE WHEN step IN ('cleanup', 'done') THEN new_branch_id END,
                    new_machine_id = CASE WHEN step IN ('cleanup', 'done') THEN new_machine_id END
              WHERE run_id = $1 AND state = 'failed'",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .bounded()
        .await?;
    }
    tx.commit().bounded().await?;
    Ok(run)
}

/// The run of `new_key`, whatever its state (there is at most one).
pub async fn run_of_key(pool: &PgPool, new_key: &KeyId) -> Result<Option<RunRecord>, DbError> {
    Ok(sqlx::query_as::<_, RunRecord>(&format!(
        "SELECT {RUN_COLUMNS} FROM rekey.runs WHERE new_key_id = $1 ORDER BY id DESC LIMIT 1"
    ))
    .bind(&new_key.0)
    .fetch_optional(pool)
    .bounded()
    .await?)
}

/// The open run and the run of `new_key` (either may be missing, both may
/// be the same run), read in one statement: a run starts with this look, and
/// across a network each statement is round trips of the outage.
async fn open_run_and_run_of_key(
    pool: &PgPool,
    new_key: &KeyId,
) -> Result<(Option<RunRecord>, Option<RunRecord>), DbError> {
    let runs = sqlx::query_as::<_, RunRecord>(&format!(
        "SELECT {RUN_COLUMNS} FROM rekey.runs
          WHERE state = 'running' OR new_key_id = $1
          ORDER BY id DESC"
    ))
    .bind(&new_key.0)
    .fetch_all(pool)
    .bounded()
    .await?;
    let open = runs.iter().find(|r| r.state == "running").cloned();
    let of_key = runs.into_iter().find(|r| r.new_key_id == new_key.0);
    Ok((open, of_key))
}

/// The open run, if any.
pub async fn open_run(pool: &PgPool) -> Result<Option<RunRecord>, DbError> {
    Ok(sqlx::query_as::<_, RunRecord>(&format!(
        "SELECT {RUN_COLUMNS} FROM rekey.runs WHERE state = 'running'"
    ))
    .fetch_optional(pool)
    .bounded()
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
            .bounded()
            .await?
        }
        None => {
            sqlx::query_as::<_, RunRecord>(&format!(
                "SELECT {RUN_COLUMNS} FROM rekey.runs ORDER BY id DESC LIMIT 1"
            ))
            .fetch_optional(pool)
            .bounded()
            .await?
        }
    };
    run.ok_or(match id {
        Some(id) => DbError::NoSuchRun(id),
        None => DbError::NoRuns,
    })
}

/// Closes a run as finished or failed, with its final figures, if it is
/// still in the opening the caller joined (`reopened` as the caller saw it):
/// a process that finishes late must not close the run a later `run`
/// re-opened meanwhile, whose work it knows nothing of.
pub async fn close_run(
    pool: &PgPool,
    run: &RunRecord,
    finished: bool,
    reason: Option<&str>,
    summary: &serde_json::Value,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE rekey.runs SET state = $3, reason = $4, summary = $5, finished_at = now()
          WHERE id = $1 AND reopened = $2 AND state = 'running'",
    )
    .bind(run.id)
    .bind(run.reopened)
    .bind(if finished { "finished" } else { "failed" })
    .bind(reason)
    .bind(summary)
    .execute(pool)
    .bounded()
    .await?;
    Ok(())
}

/// Records that `verify` found every row of the table opening under the
/// new key, on the run of that key when it is finished; `finalize`
/// requires it. `None` when the key has no finished run.
pub async fn mark_verified(pool: &PgPool, new_key: &KeyId) -> Result<Option<i64>, DbError> {
    Ok(sqlx::query_scalar(
        "UPDATE rekey.runs SET verified_at = now()
          WHERE new_key_id = $1 AND state = 'finished'
         RETURNING id",
    )
    .bind(&new_key.0)
    .fetch_optional(pool)
    .bounded()
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
    /// Items whose clean-up (revoking the old credentials, or removing
    /// what a given-up attempt created) failed and is owed to a later run.
    pub items_owed: i64,
    /// Pending items by step, for progress.
    pub steps: Vec<(String, i64)>,
}

pub async fn run_counts(pool: &PgPool, run_id: i64) -> Result<RunCounts, DbError> {
    // Three reads at once: across a network each is a round trip or two
    // of the run's start.
    let backups = sqlx::query_as::<_, (i64, i64)>(
        "SELECT coalesce(sum(cardinality(org_ids)), 0)::bigint, count(*) FROM rekey.backups WHERE run_id = $1",
    )
    .bind(run_id)
    .fetch_one(pool)
    .bounded();
    let states = sqlx::query_as::<_, (String, i64)>(
        "SELECT state, count(*) FROM rekey.items WHERE run_id = $1 GROUP BY state",
    )
    .bind(run_id)
    .fetch_all(pool)
    .bounded();
    let steps = sqlx::query_as::<_, (String, i64)>(
        "SELECT step, count(*) FROM rekey.items WHERE run_id = $1 AND state = 'pending'
          GROUP BY step ORDER BY step",
    )
    .bind(run_id)
    .fetch_all(pool)
    .bounded();
    let ((reencrypted, batches), states, steps) = tokio::try_join!(backups, states, steps)?;
    let of = |s: &str| states.iter().find(|(k, _)| k == s).map_or(0, |(_, n)| *n);
    Ok(RunCounts {
        reencrypted,
        batches,
        items_pending: of("pending"),
        items_done: of("done"),
        items_failed: of("failed"),
        items_owed: of("owed"),
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
    .bounded()
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
    .bounded()
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
    .bounded()
    .await?;
    Ok(())
}
