//! Statements on `rekey.items`: one row per tenant queued for
//! re-provisioning in a run, with the step it reached, its attempts, the
//! resources it created and the ciphertexts its final write compares on.

use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::db::DbError;

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

/// Every tenant queued for re-provisioning in a run, in any state, by id:
/// their old credentials were (or are being) reset, so a rollback cannot
/// give them back.
pub async fn item_ids(pool: &PgPool, run_id: i64) -> Result<Vec<String>, DbError> {
    Ok(
        sqlx::query_scalar("SELECT org_id FROM rekey.items WHERE run_id = $1 ORDER BY org_id")
            .bind(run_id)
            .fetch_all(pool)
            .await?,
    )
}
