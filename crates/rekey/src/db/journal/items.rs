//! Statements on `rekey.items`: one row per tenant queued for
//! re-provisioning in a run, with the step it reached, its attempts, the
//! resources it created and the ciphertexts its final write compares on.

use std::time::Duration;

use serde::Serialize;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::db::{Bounded, DbError};

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
    .execute(conn).bounded()
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
        .bounded()
        .await
}

/// A tenant that was given up (including one whose clean-up or
/// compensation is still owed), with its reason, for reports.
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
          WHERE run_id = $1 AND state IN ('failed', 'owed') ORDER BY org_id LIMIT $2",
    )
    .bind(run_id)
    .bind(limit)
    .fetch_all(pool)
    .bounded()
    .await?)
}

/// One tenant of a run's ledger: where it stands and, once re-provisioned,
/// what it was moved from and to. No secret: ids, steps and errors only.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LedgerItem {
    pub org_id: String,
    /// `pending`, `done` or `failed`.
    pub state: String,
    /// The last step reached.
    pub step: String,
    pub attempts: i32,
    /// Why the last attempt failed, when one did.
    pub last_error: Option<String>,
    pub old_branch_id: Option<String>,
    pub new_branch_id: Option<String>,
    pub old_machine_id: Option<String>,
    pub new_machine_id: Option<String>,
}

/// Every tenant of the run's re-provisioning, unfinished ones first (the
/// ones an operator must act on), then the re-provisioned, each by id.
pub async fn ledger(pool: &PgPool, run_id: i64) -> Result<Vec<LedgerItem>, DbError> {
    Ok(sqlx::query_as::<_, LedgerItem>(
        "SELECT org_id, state, step, attempts, last_error,
                old_branch_id, new_branch_id, old_machine_id, new_machine_id
           FROM rekey.items WHERE run_id = $1
          ORDER BY state = 'done', state, org_id",
    )
    .bind(run_id)
    .fetch_all(pool)
    .bounded()
    .await?)
}

/// A tenant's journal row as held by one process: every write of the
/// re-provisioner's steps names the owner, so a process whose lease lapsed
/// and was taken over writes nothing.
#[derive(Debug, Clone, Copy)]
pub struct ItemKey<'a> {
    pub run_id: i64,
    pub org_id: &'a str,
    /// The process's identity in leases.
    pub owner: &'a str,
}

/// The resources a tenant's steps record, bound as `$4`..`$10` of every
/// step's write (each step sets only the ones its [`Records`] names).
#[derive(Debug, Clone, Copy)]
pub struct ItemFields<'a> {
    pub project: &'a str,
    pub old_branch: &'a str,
    pub app: &'a str,
    pub old_machine: &'a str,
    pub slug: &'a str,
    pub new_branch: Option<&'a str>,
    pub new_machine: Option<&'a str>,
}

/// Which of [`ItemFields`] a step's write records besides the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Records {
    StepOnly,
    /// What the tenant has now (the first step, so a resume knows what to
    /// replace).
    Resources,
    NewBranch,
    NewMachine,
}

impl Records {
    fn assignments(self) -> &'static str {
        match self {
            Records::StepOnly => "",
            Records::Resources => {
                ", neon_project_id = $4, old_branch_id = $5, fly_app = $6, old_machine_id = $7, slug = $8"
            }
            Records::NewBranch => ", new_branch_id = $9",
            Records::NewMachine => ", new_machine_id = $10",
        }
    }
}

/// A tenant claimed for an attempt: its journal row as the claim returned it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedItem {
    /// The run that queued the tenant: this one's, or an earlier run's
    /// for a clean-up or compensation still owed.
    pub run_id: i64,
    pub org_id: String,
    /// The step's journal name (`rotate::reprovision::Step` parses it).
    pub step: String,
    pub attempts: i32,
    pub new_branch_id: Option<String>,
    pub new_machine_id: Option<String>,
    pub old_branch_id: Option<String>,
    pub old_machine_id: Option<String>,
    pub old_db: Option<Vec<u8>>,
    pub old_redis: Option<Vec<u8>>,
    /// For a compensation: the step at which the tenant was given up.
    pub gave_up_step: Option<String>,
    /// The tenant's password may have been reset in place: forward only.
    pub forward_only: bool,
}

/// A lease's length as the statements bind it.
fn millis(lease: Duration) -> f64 {
    lease.as_millis() as f64
}

/// A statement on one tenant's row as its owner holds it, with `$1`..`$3`
/// bound to `key` (the rest follow in the caller).
fn owned<'q>(sql: &'q str, key: &ItemKey<'q>) -> Query<'q, Postgres, PgArguments> {
    sqlx::query(sql)
        .bind(key.run_id)
        .bind(key.org_id)
        .bind(key.owner)
}

/// The steps whose work makes a leak harmless or removes what a given-up
/// tenant left: taken up by any later run, whichever run queued them.
const OWED_STEPS: &str = "('cleanup', 'compensate')";

/// Tenants whose saga may only go forward and is not done, pending or
/// owed: at a step of [`OWED_STEPS`], or marked `forward_only` (a password
/// reset in place whose machine does not have it yet). Any later run
/// takes them up, and `finalize` waits for them. `forward_only` came with
/// migration 0005 and `status` and `finalize`, which never migrate, read
/// this too: an older journal has no such column, and no such tenant.
const UNSETTLED: &str = "(state IN ('pending', 'owed')
     AND (step IN ('cleanup', 'compensate')
          OR coalesce((to_jsonb(items) ->> 'forward_only')::boolean, false)))";

/// Claims the next pending tenant of the run whose lease is free (among
/// `only`, when given) for `owner`, counting an attempt. Clean-ups and
/// compensations of earlier runs are claimable too, and go first: a
/// tenant's new saga waits for its earlier one's to be settled.
pub async fn claim_item(
    pool: &PgPool,
    run_id: i64,
    owner: &str,
    lease: Duration,
    only: Option<&[String]>,
) -> Result<Option<ClaimedItem>, sqlx::Error> {
    sqlx::query_as::<_, ClaimedItem>(&format!(
        "UPDATE rekey.items i
                SET owner = $2, lease_until = now() + $3 * interval '1 millisecond',
                    attempts = attempts + 1, updated_at = now()
              WHERE (i.run_id, i.org_id) = (
                    SELECT run_id, org_id FROM rekey.items
                     WHERE (run_id = $1 OR step IN {OWED_STEPS} OR forward_only)
                       AND state = 'pending'
                       AND (lease_until IS NULL OR lease_until < now())
                       AND ($4::text[] IS NULL OR org_id = ANY($4))
                     ORDER BY (step IN {OWED_STEPS} OR forward_only) DESC, updated_at, org_id
                     LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING i.run_id, i.org_id, i.step, i.attempts, i.new_branch_id, i.new_machine_id,
                       i.old_branch_id, i.old_machine_id, i.old_db, i.old_redis, i.gave_up_step,
                       i.forward_only"
    ))
    .bind(run_id)
    .bind(owner)
    .bind(millis(lease))
    .bind(only)
    .fetch_optional(pool)
    .bounded()
    .await
}

/// Items matching `condition` (`$1` is the run's id).
async fn count_items(pool: &PgPool, run_id: i64, condition: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM rekey.items WHERE {condition}"
    ))
    .bind(run_id)
    .fetch_one(pool)
    .bounded()
    .await
}

/// Tenants of the run still pending (claimable now, later, or held), and
/// earlier runs' clean-ups and compensations this invocation took up.
pub async fn pending_count(pool: &PgPool, run_id: i64) -> Result<i64, sqlx::Error> {
    count_items(
        pool,
        run_id,
        &format!("(run_id = $1 OR step IN {OWED_STEPS} OR forward_only) AND state = 'pending'"),
    )
    .await
}

/// The run's own tenants whose clean-up or compensation is not done
/// (pending or owed): the part of [`cleanup_pending_count`] the run's
/// report counts among its tenants.
pub async fn run_cleanup_owed_count(pool: &PgPool, run_id: i64) -> Result<i64, sqlx::Error> {
    count_items(pool, run_id, &format!("run_id = $1 AND {UNSETTLED}")).await
}

/// Tenants of the run still pending before their clean-up: the report's
/// `pending`, apart from the clean-ups it counts as owed.
pub async fn pending_before_cleanup_count(pool: &PgPool, run_id: i64) -> Result<i64, sqlx::Error> {
    count_items(
        pool,
        run_id,
        &format!(
            "run_id = $1 AND state = 'pending' AND step NOT IN {OWED_STEPS} AND NOT forward_only"
        ),
    )
    .await
}

/// Makes the clean-ups and compensations earlier invocations parked as
/// `owed` claimable again, each with a fresh budget of attempts: every
/// `rekey run` with cloud access takes them up. Returns how many.
pub async fn rearm_owed(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let rearmed = sqlx::query(
        "UPDATE rekey.items SET state = 'pending', attempts = 0, lease_until = NULL, owner = NULL,
                    updated_at = now()
          WHERE state = 'owed'",
    )
    .execute(pool)
    .bounded()
    .await?;
    Ok(rearmed.rows_affected())
}

/// Parks a tenant whose clean-up or compensation this invocation could
/// not finish: not given up, taken up again by the next `rekey run`.
pub async fn mark_owed(pool: &PgPool, key: &ItemKey<'_>, reason: &str) -> Result<(), sqlx::Error> {
    owned(
        "UPDATE rekey.items SET state = 'owed', last_error = $4, owner = NULL, lease_until = NULL,
                    updated_at = now()
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        key,
    )
    .bind(reason)
    .execute(pool)
    .bounded()
    .await?;
    Ok(())
}

/// Clean-ups and compensations not done yet, in any run: tenants whose
/// leaked credentials may still work, or whose created resources (each
/// answering to a credential) are still there.
pub async fn cleanup_pending_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM rekey.items
          WHERE {UNSETTLED}"
    ))
    .fetch_one(pool)
    .bounded()
    .await
}

/// Whether another run's clean-up or compensation of this tenant is not
/// settled yet: a new saga for it would race the removal of what the
/// earlier one created.
pub async fn earlier_saga_unsettled(
    pool: &PgPool,
    run_id: i64,
    org_id: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM rekey.items
                         WHERE org_id = $2 AND run_id <> $1
                           AND {UNSETTLED})"
    ))
    .bind(run_id)
    .bind(org_id)
    .fetch_one(pool)
    .bounded()
    .await
}

/// Refuses (for `finalize`) while any clean-up or compensation is pending
/// or owed: until they are done, leaked credentials may still open
/// something, and the run is not over.
pub async fn refuse_pending_cleanup(pool: &PgPool) -> Result<(), DbError> {
    let pending = cleanup_pending_count(pool).await?;
    if pending > 0 {
        return Err(DbError::CleanupPending { tenants: pending });
    }
    Ok(())
}

/// Gives a tenant up and moves it to `compensate`, keeping the step it
/// stopped at and why; returns the rows updated (0: lease lost).
pub async fn begin_compensation(
    pool: &PgPool,
    key: &ItemKey<'_>,
    reason: &str,
    gave_up_step: &str,
) -> Result<u64, sqlx::Error> {
    let moved = owned(
        "UPDATE rekey.items SET step = 'compensate', last_error = $4,
                    gave_up_step = coalesce(gave_up_step, $5), updated_at = now()
              WHERE run_id = $1 AND org_id = $2 AND owner = $3
                AND step NOT IN ('cleanup', 'done') AND NOT forward_only",
        key,
    )
    .bind(reason)
    .bind(gave_up_step)
    .execute(pool)
    .bounded()
    .await?;
    Ok(moved.rows_affected())
}

/// Marks the tenant forward only before its password is reset in place:
/// from then on no attempt or run gives it up. Returns the rows updated
/// (0: lease lost).
pub async fn mark_forward_only(pool: &PgPool, key: &ItemKey<'_>) -> Result<u64, sqlx::Error> {
    let marked = owned(
        "UPDATE rekey.items SET forward_only = true, updated_at = now()
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        key,
    )
    .execute(pool)
    .bounded()
    .await?;
    Ok(marked.rows_affected())
}

/// Marks a compensated tenant given up, back at the step it stopped at.
pub async fn finish_compensation(pool: &PgPool, key: &ItemKey<'_>) -> Result<(), sqlx::Error> {
    owned(
        "UPDATE rekey.items SET state = 'failed', step = coalesce(gave_up_step, step),
                    owner = NULL, lease_until = NULL, updated_at = now()
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        key,
    )
    .execute(pool)
    .bounded()
    .await?;
    Ok(())
}

/// How many of `org_ids` were given up, and how many are done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedAndDone {
    pub failed: i64,
    pub done: i64,
}

pub async fn failed_and_done_among(
    pool: &PgPool,
    run_id: i64,
    org_ids: &[String],
) -> Result<FailedAndDone, sqlx::Error> {
    let (failed, done): (i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE state = 'failed'), count(*) FILTER (WHERE state = 'done')
               FROM rekey.items WHERE run_id = $1 AND org_id = ANY($2)",
    )
    .bind(run_id)
    .bind(org_ids)
    .fetch_one(pool)
    .bounded()
    .await?;
    Ok(FailedAndDone { failed, done })
}

/// Extends the lease of a pending tenant `key.owner` still holds; returns
/// the rows renewed (0: the tenant is no longer ours).
pub async fn renew_lease(
    pool: &PgPool,
    key: &ItemKey<'_>,
    lease: Duration,
) -> Result<u64, sqlx::Error> {
    let renewed = owned(
        "UPDATE rekey.items SET lease_until = now() + $4 * interval '1 millisecond'
                  WHERE run_id = $1 AND org_id = $2 AND owner = $3 AND state = 'pending'",
        key,
    )
    .bind(millis(lease))
    .execute(pool)
    .bounded()
    .await?;
    Ok(renewed.rows_affected())
}

/// Moves a tenant to step `next`, renewing the lease, and records the
/// fields `records` names; returns the rows updated (0: lease lost).
pub async fn advance(
    pool: &PgPool,
    key: &ItemKey<'_>,
    fields: &ItemFields<'_>,
    records: Records,
    next: &str,
    lease: Duration,
) -> Result<u64, sqlx::Error> {
    let mut sql = String::from(
        "UPDATE rekey.items SET step = $11, updated_at = now(),
                    lease_until = now() + $12 * interval '1 millisecond'",
    );
    sql.push_str(records.assignments());
    sql.push_str(" WHERE run_id = $1 AND org_id = $2 AND owner = $3");
    let updated = owned(&sql, key)
        .bind(fields.project)
        .bind(fields.old_branch)
        .bind(fields.app)
        .bind(fields.old_machine)
        .bind(fields.slug)
        .bind(fields.new_branch)
        .bind(fields.new_machine)
        .bind(next)
        .bind(millis(lease))
        .execute(pool)
        .bounded()
        .await?;
    Ok(updated.rows_affected())
}

/// Moves a tenant to `cleanup` inside the transaction that swapped its row;
/// returns the rows updated (0: lease lost).
pub async fn move_to_cleanup(
    conn: &mut PgConnection,
    key: &ItemKey<'_>,
    lease: Duration,
) -> Result<u64, sqlx::Error> {
    let moved = owned(
        "UPDATE rekey.items SET step = 'cleanup', updated_at = now(),
                    lease_until = now() + $4 * interval '1 millisecond'
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        key,
    )
    .bind(millis(lease))
    .execute(conn)
    .bounded()
    .await?;
    Ok(moved.rows_affected())
}

/// Marks a tenant done and lets it go; returns the rows updated (0: lease
/// lost).
pub async fn mark_done(pool: &PgPool, key: &ItemKey<'_>) -> Result<u64, sqlx::Error> {
    let done = owned(
        "UPDATE rekey.items SET state = 'done', step = 'done', owner = NULL, lease_until = NULL,
                    last_error = NULL, updated_at = now()
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        key,
    )
    .execute(pool)
    .bounded()
    .await?;
    Ok(done.rows_affected())
}

/// Lets a tenant go, pending at its step, claimable again after
/// `backoff_ms` (the lease doubles as the retry time).
pub async fn release_for_retry(
    pool: &PgPool,
    key: &ItemKey<'_>,
    reason: &str,
    backoff_ms: f64,
) -> Result<(), sqlx::Error> {
    owned(
        "UPDATE rekey.items SET last_error = $4, owner = NULL, updated_at = now(),
                    lease_until = now() + $5 * interval '1 millisecond'
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        key,
    )
    .bind(reason)
    .bind(backoff_ms)
    .execute(pool)
    .bounded()
    .await?;
    Ok(())
}

/// Marks a tenant `key.owner` holds as given up, with its reason.
pub async fn mark_failed(
    pool: &PgPool,
    key: &ItemKey<'_>,
    reason: &str,
) -> Result<(), sqlx::Error> {
    owned(
            "UPDATE rekey.items SET state = 'failed', last_error = $4, owner = NULL, lease_until = NULL,
                    updated_at = now()
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        key,
    )
    .bind(reason)
    .execute(pool).bounded()
    .await?;
    Ok(())
}

/// Marks a tenant as given up whoever holds it (just claimed, nothing
/// created yet: its row is gone).
pub async fn mark_failed_unowned(
    pool: &PgPool,
    run_id: i64,
    org_id: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
            "UPDATE rekey.items SET state = 'failed', last_error = $3, owner = NULL, lease_until = NULL,
                    updated_at = now() WHERE run_id = $1 AND org_id = $2",
    )
    .bind(run_id)
    .bind(org_id)
    .bind(reason)
    .execute(pool).bounded()
    .await?;
    Ok(())
}

/// The process holding a tenant's lease, if any.
pub async fn owner_of(
    pool: &PgPool,
    run_id: i64,
    org_id: &str,
) -> Result<Option<String>, sqlx::Error> {
    let owner: Option<Option<String>> =
        sqlx::query_scalar("SELECT owner FROM rekey.items WHERE run_id = $1 AND org_id = $2")
            .bind(run_id)
            .bind(org_id)
            .fetch_optional(pool)
            .bounded()
            .await?;
    Ok(owner.flatten())
}

/// Every tenant queued for re-provisioning in a run, in any state, by id:
/// their old credentials were (or are being) reset, so a rollback cannot
/// give them back.
pub async fn item_ids(pool: &PgPool, run_id: i64) -> Result<Vec<String>, DbError> {
    Ok(
        sqlx::query_scalar("SELECT org_id FROM rekey.items WHERE run_id = $1 ORDER BY org_id")
            .bind(run_id)
            .fetch_all(pool)
            .bounded()
            .await?,
    )
}
