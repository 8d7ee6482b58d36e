//! Reading and compare-and-swapping rows of the control plane's table.
//!
//! Ids travel as text and are cast to the id column's own type inside the
//! SQL, so keyset order and index use are those of the real column (uuid,
//! text, bigint alike). Every write is a compare-and-swap on the
//! ciphertexts read: a row the control plane changed in the meantime is
//! never overwritten.

use sqlx::{PgConnection, PgPool, Row};

use super::{Bounded, ProvisionColumns, Table};

/// A tenant row's ciphertexts as stored.
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub id: String,
    /// The row version's physical address: read under our row lock it
    /// stays valid until our transaction ends; read without one (the
    /// in-place pass) it is a hint that the swap checks, with the id and the
    /// ciphertexts. `None` for plain scans.
    pub tid: Option<String>,
    pub db: Option<Vec<u8>>,
    pub redis: Option<Vec<u8>>,
}

/// Which rows a claim or scan may return.
#[derive(Debug, Clone, Default)]
pub struct RowFilter {
    /// Only rows with these ids (`--org`, re-walks).
    pub ids: Option<Vec<String>>,
    /// Claims wait (at most a minute) for rows someone holds instead of
    /// skipping them: for `rollback`, where a skipped row would be reported
    /// as changed when it merely was busy. A run never waits here; it
    /// re-walks locked rows with one bounded wait for the whole run.
    pub wait_for_locked: bool,
}

/// The SELECT for a claim or scan. Placeholders are numbered for what is
/// present (PostgreSQL refuses a bind count that differs from the text's):
/// the cursor if `after`, the range's end if `upto`, the id list if filtered, and always the limit last.
fn select_sql(table: &Table, after: bool, upto: bool, filter: &RowFilter, read: Read) -> String {
    let mut sql = format!("{} WHERE true", select_rows(table, read != Read::Plain));
    let mut n = 0;
    if after {
        n += 1;
        sql.push_str(&format!(
            " AND {} > ${n}::text::{}",
            table.id, table.id_type
        ));
    }
    if upto {
        n += 1;
        sql.push_str(&format!(
            " AND {} <= ${n}::text::{}",
            table.id, table.id_type
        ));
    }
    if filter.ids.is_some() {
        n += 1;
        sql.push_str(&format!(
            " AND {} = ANY(${n}::text[]::{}[])",
            table.id, table.id_type
        ));
    }
    sql.push_str(&format!(" ORDER BY {} LIMIT ${}", table.id, n + 1));
    // NO KEY UPDATE is the lock an UPDATE of non-key columns takes anyway:
    // taking it up front avoids a lock upgrade later. Locked rows are
    // skipped, never waited for: the run's re-walks come back to them, with
    // one bounded wait for the whole run (rotate::run).
    match read {
        Read::Locked if filter.wait_for_locked => sql.push_str(" FOR NO KEY UPDATE"),
        Read::Locked => sql.push_str(" FOR NO KEY UPDATE SKIP LOCKED"),
        Read::Addressed | Read::Plain => {}
    }
    sql
}

/// How a claim or scan reads its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    /// Under our row lock, with the rows' addresses.
    Locked,
    /// Without locks, with the rows' addresses for a later swap to check.
    Addressed,
    /// Without locks or addresses (plan, verify, rollback's reads).
    Plain,
}

/// The SELECT list and FROM every read of rows shares; the row's address
/// only when asked for.
fn select_rows(table: &Table, addressed: bool) -> String {
    format!(
        "SELECT {id}::text AS id, {tid} AS tid, {db} AS db, {redis} AS redis FROM {t}",
        tid = if addressed {
            "ctid::text"
        } else {
            "NULL::text"
        },
        id = table.id,
        db = table.db,
        redis = table.redis,
        t = table.name
    )
}

/// Runs a claim or scan SELECT with exactly the binds its text names.
async fn fetch_page<'c, E: sqlx::PgExecutor<'c>>(
    executor: E,
    sql: &str,
    after: Option<&str>,
    upto: Option<&str>,
    filter: &RowFilter,
    limit: i64,
) -> Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
    let mut query = sqlx::query(sql);
    if let Some(after) = after {
        query = query.bind(after);
    }
    if let Some(upto) = upto {
        query = query.bind(upto);
    }
    if let Some(ids) = &filter.ids {
        query = query.bind(ids);
    }
    query.bind(limit).fetch_all(executor).bounded().await
}

fn decode_rows(rows: Vec<sqlx::postgres::PgRow>) -> Result<Vec<StoredRow>, sqlx::Error> {
    rows.into_iter().map(decode_row).collect()
}

fn decode_row(r: sqlx::postgres::PgRow) -> Result<StoredRow, sqlx::Error> {
    Ok(StoredRow {
        id: r.try_get("id")?,
        tid: r.try_get("tid")?,
        db: r.try_get("db")?,
        redis: r.try_get("redis")?,
    })
}

/// Reads every row of the table in one statement, without locking and in
/// no particular order, handing them to `page` `page_size` at a time; the
/// first error `page` returns ends the read.
///
/// For reads of the whole table (plan, verify, the convergence check): one
/// sequential scan streamed over one connection instead of keyset pages,
/// each of which walks the primary key and fetches its rows from the heap
/// one by one (measured: see README, Performance). The statement's single
/// snapshot is also a consistent view of the table.
pub async fn scan_all<F, E>(
    pool: &PgPool,
    table: &Table,
    page_size: usize,
    mut page: F,
) -> Result<(), E>
where
    F: AsyncFnMut(Vec<StoredRow>) -> Result<(), E>,
    E: From<sqlx::Error>,
{
    use futures::TryStreamExt;
    let sql = select_rows(table, false);
    let mut rows = sqlx::query(&sql).fetch(pool);
    let mut buffer = Vec::with_capacity(page_size);
    // Each next row within the statement bound: a server gone silent
    // mid-scan ends the read instead of hanging it.
    while let Some(row) = rows.try_next().bounded().await? {
        buffer.push(decode_row(row)?);
        if buffer.len() == page_size {
            page(std::mem::replace(
                &mut buffer,
                Vec::with_capacity(page_size),
            ))
            .await?;
        }
    }
    if !buffer.is_empty() {
        page(buffer).await?;
    }
    Ok(())
}

/// Locks and returns up to `limit` rows after `after` in key order,
/// skipping rows someone else holds (`FOR NO KEY UPDATE SKIP LOCKED`), or
/// with `filter.wait_for_locked` waiting for them, at most a minute.
pub async fn claim_batch(
    conn: &mut PgConnection,
    table: &Table,
    after: Option<&str>,
    filter: &RowFilter,
    limit: i64,
) -> Result<Vec<StoredRow>, sqlx::Error> {
    if filter.wait_for_locked {
        // A holder that keeps rows this long is stuck, and saying so beats
        // hanging; the rollback resumes where it stopped.
        sqlx::query("SET LOCAL lock_timeout = '60s'")
            .execute(&mut *conn)
            .bounded()
            .await?;
    }
    let sql = select_sql(table, after.is_some(), false, filter, Read::Locked);
    decode_rows(fetch_page(conn, &sql, after, None, filter, limit).await?)
}

/// Reads up to `limit` rows of the key range `(after, upto]` in key order
/// without locking them, each with its address: the in-place pass's read,
/// one autocommit round trip, whose rows [`swap_unlocked_batch`] then
/// writes only where they are still exactly as read.
pub async fn read_range(
    pool: &PgPool,
    table: &Table,
    after: Option<&str>,
    upto: Option<&str>,
    filter: &RowFilter,
    limit: i64,
) -> Result<Vec<StoredRow>, sqlx::Error> {
    let sql = select_sql(
        table,
        after.is_some(),
        upto.is_some(),
        filter,
        Read::Addressed,
    );
    decode_rows(fetch_page(pool, &sql, after, upto, filter, limit).await?)
}

/// Every `every`-th id in key order among the rows `filter` admits: the
/// ends of key ranges of about `every` rows each, which in-place workers
/// claim independently instead of each waiting for the previous claim's
/// last id (one round trip per batch, serialised, across a network). One
/// index-only walk of the key.
pub async fn range_ends(
    pool: &PgPool,
    table: &Table,
    filter: &RowFilter,
    every: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let (only, n) = match filter.ids {
        Some(_) => (
            format!(" WHERE {} = ANY($1::text[]::{}[])", table.id, table.id_type),
            2,
        ),
        None => (String::new(), 1),
    };
    let sql = format!(
        "SELECT id::text FROM (
             SELECT {id} AS id, row_number() OVER (ORDER BY {id}) AS n FROM {t}{only}) s
          WHERE n % ${n} = 0 ORDER BY id",
        id = table.id,
        t = table.name,
    );
    let mut query = sqlx::query_scalar(&sql);
    if let Some(ids) = &filter.ids {
        query = query.bind(ids);
    }
    query.bind(every.max(1)).fetch_all(pool).bounded().await
}

/// Reads up to `limit` rows after `after` in key order, without locking:
/// for plan, verify and the final pass.
pub async fn scan_page(
    pool: &PgPool,
    table: &Table,
    after: Option<&str>,
    filter: &RowFilter,
    limit: i64,
) -> Result<Vec<StoredRow>, sqlx::Error> {
    let sql = select_sql(table, after.is_some(), false, filter, Read::Plain);
    decode_rows(fetch_page(pool, &sql, after, None, filter, limit).await?)
}

/// One row's compare-and-swap: expected ciphertexts and their replacements.
#[derive(Debug, Clone)]
pub struct Swap {
    pub id: String,
    /// From a locked claim: lets the UPDATE find the row by address
    /// instead of an index probe (measured ~35% cheaper per batch).
    pub tid: Option<String>,
    pub old_db: Option<Vec<u8>>,
    pub old_redis: Option<Vec<u8>>,
    pub new_db: Option<Vec<u8>>,
    pub new_redis: Option<Vec<u8>>,
}

/// What one [`swap_unlocked_batch`] statement did.
#[derive(Debug, Default)]
pub struct Written {
    /// Ids of the rows swapped (and backed up).
    pub swapped: Vec<String>,
    /// Tenants newly queued for re-provisioning.
    pub queued: u64,
    /// Swaps not written because someone held the row locked (the rest of
    /// those not written were changed since the read).
    pub held: u64,
}

/// Writes a batch read without locks ([`read_range`]) in one autocommit
/// statement: each swap where its row still holds exactly the bytes read
/// at the address read and nobody holds it locked (a locked or changed row
/// is left for the next pass, never waited for); the backup of exactly the
/// rows swapped; and the rows in `queue` (id and ciphertexts as read)
/// queued for re-provisioning. All of it commits or none does.
///
/// Each row is locked (`SKIP LOCKED`) in the statement before it is
/// written: an UPDATE alone would wait for a control-plane transaction
/// holding the row, stalling the worker.
pub async fn swap_unlocked_batch(
    pool: &PgPool,
    table: &Table,
    run_id: i64,
    swaps: &[Swap],
    queue: &[&StoredRow],
) -> Result<Written, sqlx::Error> {
    if swaps.is_empty() && queue.is_empty() {
        return Ok(Written::default());
    }
    let sql = format!(
        "WITH held AS (
             SELECT t.ctid AS at, u.id, u.old_db, u.old_redis, u.new_db, u.new_redis
               FROM {t} AS t
               JOIN UNNEST($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[])
                    AS u(id, tid, old_db, old_redis, new_db, new_redis)
                 ON {join}
                AND t.{db} IS NOT DISTINCT FROM u.old_db
                AND t.{redis} IS NOT DISTINCT FROM u.old_redis
                FOR NO KEY UPDATE OF t SKIP LOCKED),
         written AS (
             UPDATE {t} AS t SET {db} = h.new_db, {redis} = h.new_redis
               FROM held AS h WHERE t.ctid = h.at
             RETURNING h.id, h.old_db, h.old_redis),
         backup AS (
             INSERT INTO rekey.backups (run_id, org_ids, old_db, old_redis)
             SELECT $7, array_agg(id), array_agg(old_db), array_agg(old_redis)
               FROM written HAVING count(*) > 0
             RETURNING 1),
         queued AS (
             INSERT INTO rekey.items (run_id, org_id, old_db, old_redis)
             SELECT $7, q.id, q.db, q.redis
               FROM UNNEST($8::text[], $9::bytea[], $10::bytea[]) AS q(id, db, redis)
             ON CONFLICT (run_id, org_id) DO NOTHING
             RETURNING 1)
         SELECT COALESCE((SELECT array_agg(id) FROM written), '{{}}'),
                (SELECT count(*) FROM queued),
                -- Only when some swap was not written: of those, the ones
                -- still as read (the statement's snapshot does not see its
                -- own update), hence held by someone rather than changed.
                CASE WHEN (SELECT count(*) FROM written) < cardinality($1::text[])
                     THEN (SELECT count(*) FROM {t} AS t
                             JOIN UNNEST($1::text[], $2::text[], $3::bytea[], $4::bytea[])
                                  AS u(id, tid, old_db, old_redis)
                               ON {join}
                              AND t.{db} IS NOT DISTINCT FROM u.old_db
                              AND t.{redis} IS NOT DISTINCT FROM u.old_redis)
                          - (SELECT count(*) FROM written)
                     ELSE 0 END",
        t = table.name,
        db = table.db,
        redis = table.redis,
        join = swap_join(table, swaps),
    );
    let col = |f: fn(&StoredRow) -> &Option<Vec<u8>>| -> Vec<Option<&[u8]>> {
        queue.iter().map(|r| f(r).as_deref()).collect()
    };
    let (swapped, queued, held): (Vec<String>, i64, i64) = bind_swaps(&sql, swaps)
        .bind(run_id)
        .bind(queue.iter().map(|r| r.id.as_str()).collect::<Vec<_>>())
        .bind(col(|r| &r.db))
        .bind(col(|r| &r.redis))
        .fetch_one(pool)
        .bounded()
        .await?;
    Ok(Written {
        swapped,
        queued: queued as u64,
        held: held.max(0) as u64,
    })
}

/// The compare-and-swap UPDATE of `restore_batch`: each row is written
/// only where it still holds the bytes read, found as [`swap_join`] says.
/// Binds `$1`..`$6` ([`bind_swaps`]).
fn cas_update(table: &Table, swaps: &[Swap]) -> String {
    let join = swap_join(table, swaps);
    format!(
        "UPDATE {t} AS t SET {db} = u.new_db, {redis} = u.new_redis
           FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::bytea[], $6::bytea[])
                AS u(id, tid, old_db, old_redis, new_db, new_redis)
          WHERE {join}
            AND t.{db} IS NOT DISTINCT FROM u.old_db
            AND t.{redis} IS NOT DISTINCT FROM u.old_redis
         RETURNING u.id",
        t = table.name,
        db = table.db,
        redis = table.redis,
    )
}

/// How a batch's swaps find their rows: by address when every swap has
/// one (the id is still compared, as a guard against a reused address),
/// else by id.
fn swap_join(table: &Table, swaps: &[Swap]) -> String {
    if swaps.iter().all(|s| s.tid.is_some()) {
        format!(
            "t.ctid = u.tid::tid AND t.{} = u.id::{}",
            table.id, table.id_type
        )
    } else {
        format!("t.{} = u.id::{}", table.id, table.id_type)
    }
}

/// `sql` (built around [`cas_update`]) with the swaps bound as its `$1`..`$6`.
fn bind_swaps<'q, O>(
    sql: &'q str,
    swaps: &'q [Swap],
) -> sqlx::query::QueryAs<'q, sqlx::Postgres, O, sqlx::postgres::PgArguments>
where
    O: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow>,
{
    let col = |f: fn(&Swap) -> &Option<Vec<u8>>| -> Vec<Option<&[u8]>> {
        swaps.iter().map(|s| f(s).as_deref()).collect()
    };
    sqlx::query_as(sql)
        .bind(swaps.iter().map(|s| s.id.as_str()).collect::<Vec<_>>())
        .bind(swaps.iter().map(|s| s.tid.as_deref()).collect::<Vec<_>>())
        .bind(col(|s| &s.old_db))
        .bind(col(|s| &s.old_redis))
        .bind(col(|s| &s.new_db))
        .bind(col(|s| &s.new_redis))
}

/// Counts the table's rows (an exact count: plans and progress bars need it).
pub async fn count_rows(
    pool: &PgPool,
    table: &Table,
    filter: &RowFilter,
) -> Result<i64, sqlx::Error> {
    match &filter.ids {
        None => {
            sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name))
                .fetch_one(pool)
                .bounded()
                .await
        }
        Some(ids) => {
            sqlx::query_scalar(&format!(
                "SELECT count(*) FROM {} WHERE {} = ANY($1::text[]::{}[])",
                table.name, table.id, table.id_type
            ))
            .bind(ids)
            .fetch_one(pool)
            .bounded()
            .await
        }
    }
}

/// The cloud resources a row names, as the re-provision path reads them;
/// `None` where the row's column is NULL.
#[derive(Debug, Clone)]
pub struct TenantResources {
    pub id: String,
    pub slug: Option<String>,
    pub neon_project: Option<String>,
    pub neon_branch: Option<String>,
    pub fly_app: Option<String>,
    pub fly_machine: Option<String>,
}

/// Reads up to `limit` rows' resource columns after `after` in key order
/// (rehearsals register them in a fake cloud). `None` from a table that
/// lacks the provision columns.
pub async fn resources_page(
    pool: &PgPool,
    table: &Table,
    after: Option<&str>,
    limit: i64,
) -> Result<Option<Vec<TenantResources>>, sqlx::Error> {
    let Some(cols) = &table.provision else {
        return Ok(None);
    };
    // Two texts rather than `$1 IS NULL OR id > $1`: the OR would keep the
    // planner off the primary key's index, and every page would scan.
    let cursor = match after {
        Some(_) => format!("WHERE {} > $2::text::{}", table.id, table.id_type),
        None => String::new(),
    };
    let sql = format!(
        "SELECT {id}::text AS id, {slug}::text AS slug, {project}::text AS project,
                {branch}::text AS branch, {app}::text AS app, {machine}::text AS machine
           FROM {t} {cursor}
          ORDER BY {id} LIMIT $1",
        id = table.id,
        slug = cols.slug,
        project = cols.neon_project,
        branch = cols.neon_branch,
        app = cols.fly_app,
        machine = cols.fly_machine,
        t = table.name,
    );
    let mut query = sqlx::query(&sql).bind(limit);
    if let Some(after) = after {
        query = query.bind(after);
    }
    let rows = query.fetch_all(pool).bounded().await?;
    rows.into_iter()
        .map(|r| {
            Ok(TenantResources {
                id: r.try_get("id")?,
                slug: r.try_get("slug")?,
                neon_project: r.try_get("project")?,
                neon_branch: r.try_get("branch")?,
                fly_app: r.try_get("app")?,
                fly_machine: r.try_get("machine")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()
        .map(Some)
}

/// The cloud resources a tenant's row names, each `''` where the column is
/// NULL: what re-provisioning replaces, and must never remove.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NamedResources {
    pub slug: String,
    pub neon_project: String,
    pub neon_branch: String,
    pub fly_app: String,
    pub fly_machine: String,
}

/// Reads the resource columns of the tenant `org_id`; `None` when its row
/// is gone.
pub async fn named_resources(
    pool: &PgPool,
    table: &Table,
    cols: &ProvisionColumns,
    org_id: &str,
) -> Result<Option<NamedResources>, sqlx::Error> {
    let sql = format!(
        "SELECT coalesce({slug}::text, ''), coalesce({p}::text, ''), coalesce({b}::text, ''),
                    coalesce({a}::text, ''), coalesce({m}::text, '')
               FROM {t} WHERE {id} = $1::text::{ty}",
        slug = cols.slug,
        p = cols.neon_project,
        b = cols.neon_branch,
        a = cols.fly_app,
        m = cols.fly_machine,
        t = table.name,
        id = table.id,
        ty = table.id_type
    );
    let row: Option<(String, String, String, String, String)> = sqlx::query_as(&sql)
        .bind(org_id)
        .fetch_optional(pool)
        .bounded()
        .await?;
    Ok(row.map(
        |(slug, neon_project, neon_branch, fly_app, fly_machine)| NamedResources {
            slug,
            neon_project,
            neon_branch,
            fly_app,
            fly_machine,
        },
    ))
}

/// A re-provisioned tenant's row swap: the new ciphertexts and resource
/// ids, and what the row must still hold for them to be written.
#[derive(Debug, Clone, Copy)]
pub struct ProvisionSwap<'a> {
    pub org_id: &'a str,
    pub new_db: &'a [u8],
    pub new_redis: &'a [u8],
    pub new_branch: &'a str,
    pub new_machine: Option<&'a str>,
    pub old_db: Option<&'a [u8]>,
    pub old_redis: Option<&'a [u8]>,
    pub old_branch: &'a str,
    pub old_machine: &'a str,
}

/// Compare-and-swap of one tenant's URLs and resource ids (stamping the
/// table's `updated_at` column when it has one); returns the rows written
/// (0: the row changed meanwhile and is left as it is).
pub async fn swap_provisioned(
    conn: &mut PgConnection,
    table: &Table,
    cols: &ProvisionColumns,
    swap: &ProvisionSwap<'_>,
) -> Result<u64, sqlx::Error> {
    let stamp = cols
        .updated_at
        .as_ref()
        .map(|c| format!(", {c} = now()"))
        .unwrap_or_default();
    let sql = format!(
        "UPDATE {t} SET {db} = $2, {redis} = $3, {br} = $4, {m} = $5{stamp}
              WHERE {id} = $1::text::{ty}
                AND {db} IS NOT DISTINCT FROM $6 AND {redis} IS NOT DISTINCT FROM $7
                AND {br}::text IS NOT DISTINCT FROM $8 AND {m}::text IS NOT DISTINCT FROM $9",
        t = table.name,
        db = table.db,
        redis = table.redis,
        br = cols.neon_branch,
        m = cols.fly_machine,
        id = table.id,
        ty = table.id_type
    );
    let swapped = sqlx::query(&sql)
        .bind(swap.org_id)
        .bind(swap.new_db)
        .bind(swap.new_redis)
        .bind(swap.new_branch)
        .bind(swap.new_machine)
        .bind(swap.old_db)
        .bind(swap.old_redis)
        .bind(swap.old_branch)
        .bind(swap.old_machine)
        .execute(conn)
        .bounded()
        .await?;
    Ok(swapped.rows_affected())
}

/// Puts a batch of rows back to their pre-run ciphertexts (`rekey
/// rollback`): each [`Swap`] carries the bytes just read (`old_*`) and the
/// backup's (`new_*`). Returns the ids written; a row whose bytes changed
/// since they were read is left as it is. Unlike [`swap_unlocked_batch`] it writes
/// no backup: the batch's own backup is what it restores.
pub async fn restore_batch(
    conn: &mut PgConnection,
    table: &Table,
    swaps: &[Swap],
) -> Result<Vec<String>, sqlx::Error> {
    if swaps.is_empty() {
        return Ok(Vec::new());
    }
    let sql = cas_update(table, swaps);
    let written: Vec<(String,)> = bind_swaps(&sql, swaps).fetch_all(conn).bounded().await?;
    Ok(written.into_iter().map(|(id,)| id).collect())
}
