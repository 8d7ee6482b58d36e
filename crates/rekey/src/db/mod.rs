//! PostgreSQL access: connecting, the tool's own migrations, and the shape
//! of the control plane's table as the operator named it.
//!
//! `org_instances` belongs to the control plane: the tool reads and
//! compare-and-swaps its rows but never creates or alters it. What the
//! tool writes for itself lives in schema `rekey` (`journal`).

mod bound;
mod error;
pub mod journal;
pub mod org_instances;
pub mod seed;

pub use bound::{
    no_answer, set_statement_timeout, statement_timeout, Bounded, DEFAULT_STATEMENT_TIMEOUT,
};
pub use error::{is_transient, short_db_error, DbError};

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool, Row};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The control plane's table and column names (docs/design.md, "Data model").
#[derive(Debug, Clone)]
pub struct TableSpec {
    /// Table holding one row per tenant, optionally schema-qualified.
    pub table: String,
    /// Primary key column (any type PostgreSQL can cast from text: uuid, text, bigint).
    pub id_column: String,
    /// Column with the sealed tenant database URL.
    pub db_column: String,
    /// Column with the sealed tenant Redis URL.
    pub redis_column: String,
    /// Column with the tenant's slug (names new cloud resources).
    pub slug_column: String,
    /// Column with the tenant's Neon project id.
    pub neon_project_column: String,
    /// Column with the tenant's Neon branch id.
    pub neon_branch_column: String,
    /// Column with the tenant's Fly app name.
    pub fly_app_column: String,
    /// Column with the tenant's Fly machine id.
    pub fly_machine_column: String,
    /// Column stamped when a re-provisioned row is rewritten (empty: none).
    pub updated_at_column: String,
}

impl Default for TableSpec {
    fn default() -> TableSpec {
        TableSpec {
            table: "org_instances".into(),
            id_column: "org_id".into(),
            db_column: "database_url_encrypted".into(),
            redis_column: "redis_url_encrypted".into(),
            slug_column: "slug".into(),
            neon_project_column: "neon_project_id".into(),
            neon_branch_column: "neon_branch_id".into(),
            fly_app_column: "fly_app".into(),
            fly_machine_column: "fly_machine_id".into(),
            updated_at_column: "updated_at".into(),
        }
    }
}

/// The control plane's table after it was checked against the database:
/// quoted identifiers ready to splice into SQL, and the id column's type.
#[derive(Debug, Clone)]
pub struct Table {
    /// `"schema"."table"`.
    pub name: String,
    /// The table as the operator named it, for messages.
    pub display: String,
    pub id: String,
    pub db: String,
    pub redis: String,
    /// `format_type` of the id column, e.g. `uuid`; ids travel as text and
    /// are cast back to this type in SQL so indexes and ordering stay native.
    pub id_type: String,
    /// Columns the re-provision path needs; `None` when the table lacks one
    /// (then only in-place rotation is possible).
    pub provision: Option<ProvisionColumns>,
}

/// Quoted names of the columns that describe a tenant's cloud resources.
#[derive(Debug, Clone)]
pub struct ProvisionColumns {
    pub slug: String,
    pub neon_project: String,
    pub neon_branch: String,
    pub fly_app: String,
    pub fly_machine: String,
    pub updated_at: Option<String>,
}

/// Quotes an identifier for PostgreSQL, doubling embedded quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// How long a connection attempt may take before the command gives up:
/// a server that accepts TCP and never answers must not hang the tool.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a pool on `url` with room for `connections` at once, failing
/// fast (10 s) with a message that names the database but not its password.
pub async fn connect(url: &str, connections: u32) -> Result<PgPool, DbError> {
    let shown = || crate::redact::url(url);
    if url.trim().is_empty() {
        return Err(DbError::Connect {
            url: "\"\"".into(),
            message: "the database URL is empty; pass --database-url or set DATABASE_URL \
                      (postgres://user@host:port/database)"
                .into(),
        });
    }
    let (url, ignored) = without_unknown_params(url);
    if !ignored.is_empty() {
        tracing::warn!(
            "ignoring database URL parameter(s) the driver does not use: {}",
            ignored.join(", ")
        );
    }
    let opts: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| DbError::Connect {
        url: shown(),
        message: format!("invalid database URL: {}", short_db_error(&e)),
    })?;
    let opts = opts.application_name("rekey");
    let failed = |e: sqlx::Error| DbError::Connect {
        url: shown(),
        message: short_db_error(&e),
    };
    let timed_out = || DbError::Connect {
        url: shown(),
        message: format!(
            "no answer within {} s (is this a PostgreSQL server, and is it up?)",
            CONNECT_TIMEOUT.as_secs()
        ),
    };
    // The pool retries a refused connection until its acquire timeout and
    // then reports only "timed out waiting for a connection"; one direct
    // attempt first names the real cause (refused, unknown database, ...).
    let probe = tokio::time::timeout(CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&opts))
        .await
        .map_err(|_| timed_out())?
        .map_err(failed)?;
    let _ = probe.close().await;
    tokio::time::timeout(
        CONNECT_TIMEOUT,
        PgPoolOptions::new()
            .max_connections(connections.max(1))
            // sqlx pings every connection it hands out by default: one
            // more round trip per statement in autocommit, which across a
            // network is most of a batch's time. A connection that died
            // idle fails its statement instead, and every caller retries
            // a lost connection (rotate::retry).
            .test_before_acquire(false)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(opts),
    )
    .await
    .map_err(|_| timed_out())?
    .map_err(failed)
}

/// The query parameters sqlx reads from a PostgreSQL URL (its
/// `PgConnectOptions` parser); it logs any other one with its value, which
/// may be a secret (`sslpassword=…`).
const DRIVER_PARAMS: &[&str] = &[
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// `url` without the query parameters the driver would ignore, and their
/// names, so that the warning about them names them and shows no value. A
/// URL that does not parse is returned as it is, for the driver to refuse.
fn without_unknown_params(url: &str) -> (String, Vec<String>) {
    let Ok(mut parsed) = url::Url::parse(url) else {
        return (url.to_string(), Vec::new());
    };
    if parsed.query().is_none() {
        return (url.to_string(), Vec::new());
    }
    let (kept, ignored): (Vec<_>, Vec<_>) = parsed
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .partition(|(k, _)| DRIVER_PARAMS.contains(&k.as_str()));
    if ignored.is_empty() {
        return (url.to_string(), Vec::new());
    }
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    (
        parsed.to_string(),
        ignored.into_iter().map(|(k, _)| k).collect(),
    )
}

/// Applies the tool's own migrations. sqlx keeps its bookkeeping table in
/// the first schema of the search path, so the connection is pointed at
/// schema `rekey` to keep even that out of the control plane's schema.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    if journal_is_current(pool).await {
        return Ok(());
    }
    let mut conn = pool.acquire().await.map_err(DbError::from)?;
    // `IF NOT EXISTS` is not atomic: processes starting together on a fresh
    // database would both create the schema, and the loser would fail on
    // pg_namespace's unique index. A transaction-scoped advisory lock makes
    // the later one wait, then find the schema there.
    let mut tx = conn.begin().bounded().await.map_err(DbError::from)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('rekey: create schema'))")
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(DbError::from)?;
    sqlx::query("CREATE SCHEMA IF NOT EXISTS rekey")
        .execute(&mut *tx)
        .bounded()
        .await
        .map_err(DbError::from)?;
    tx.commit().bounded().await.map_err(DbError::from)?;
    sqlx::query("SET search_path TO rekey")
        .execute(&mut *conn)
        .bounded()
        .await
        .map_err(DbError::from)?;
    let result = match tokio::time::timeout(statement_timeout(), MIGRATOR.run(&mut *conn)).await {
        Ok(result) => result.map_err(|e| DbError::Migration(e.to_string())),
        Err(_) => Err(DbError::from(no_answer())),
    };
    // Return the connection to the pool with the ordinary search path.
    let reset = sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .bounded()
        .await;
    result?;
    reset.map_err(DbError::from)?;
    Ok(())
}

/// True when every migration this binary embeds is applied, checksums
/// matching, and nothing else: one read instead of the migrator's dozen
/// statements (about a second of the outage across 50 ms of round trip).
/// Anything else (no journal yet, a migration another process is applying
/// right now, a failed or unknown one) goes through the migrator, which
/// takes its lock and says what is wrong.
pub async fn journal_is_current(pool: &PgPool) -> bool {
    // Failed rows too: a dirty journal is the migrator's to report.
    let applied: Result<Vec<(i64, Vec<u8>)>, _> = sqlx::raw_sql(
        "SELECT version, CASE WHEN success THEN checksum END
           FROM rekey._sqlx_migrations ORDER BY version",
    )
    .fetch_all(pool)
    .bounded()
    .await
    .and_then(|rows| {
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    });
    let Ok(applied) = applied else {
        return false;
    };
    let embedded: Vec<(i64, &[u8])> = MIGRATOR
        .iter()
        .filter(|m| !m.migration_type.is_down_migration())
        .map(|m| (m.version, m.checksum.as_ref()))
        .collect();
    applied.len() == embedded.len()
        && applied
            .iter()
            .zip(&embedded)
            .all(|((v, c), (ev, ec))| v == ev && c.as_slice() == *ec)
}

/// True when the tool's schema has been created (plan reads the journal
/// only then, because plan never writes).
pub async fn journal_exists(pool: &PgPool) -> Result<bool, DbError> {
    sqlx::query_scalar::<_, bool>("SELECT to_regclass('rekey.runs') IS NOT NULL")
        .fetch_one(pool)
        .bounded()
        .await
        .map_err(DbError::from)
}

/// Checks that the operator's table and columns exist with usable types.
pub async fn resolve_table(pool: &PgPool, spec: &TableSpec) -> Result<Table, DbError> {
    let (schema, table) = match spec.table.split_once('.') {
        Some((s, t)) => (Some(s.to_string()), t.to_string()),
        None => (None, spec.table.clone()),
    };
    let found: Option<(String, String)> = sqlx::query_as(
        "SELECT n.nspname::text, c.relname::text
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE c.relname = $1 AND c.relkind IN ('r', 'p')
            AND (($2::text IS NULL AND n.oid = ANY (current_schemas(false)::regnamespace[]))
                 OR n.nspname = $2)
          ORDER BY array_position(current_schemas(false), n.nspname::text)
          LIMIT 1",
    )
    .bind(&table)
    .bind(&schema)
    .fetch_optional(pool)
    .bounded()
    .await
    .map_err(DbError::from)?;
    let Some((schema, table)) = found else {
        return Err(DbError::MissingTable(spec.table.clone()));
    };
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod)
           FROM pg_attribute a
          WHERE a.attrelid = (quote_ident($1) || '.' || quote_ident($2))::regclass
            AND a.attnum > 0 AND NOT a.attisdropped",
    )
    .bind(&schema)
    .bind(&table)
    .fetch_all(pool)
    .bounded()
    .await
    .map_err(DbError::from)?;
    let type_of = |col: &str| -> Result<String, DbError> {
        columns
            .iter()
            .find(|(name, _)| name == col)
            .map(|(_, ty)| ty.clone())
            .ok_or_else(|| DbError::MissingColumn {
                table: spec.table.clone(),
                column: col.to_string(),
            })
    };
    let id_type = type_of(&spec.id_column)?;
    for col in [&spec.db_column, &spec.redis_column] {
        let ty = type_of(col)?;
        if ty != "bytea" {
            return Err(DbError::UnsupportedColumnType {
                column: col.to_string(),
                found: ty,
            });
        }
    }
    let has = |col: &str| columns.iter().any(|(name, _)| name == col);
    let provision_cols = [
        &spec.slug_column,
        &spec.neon_project_column,
        &spec.neon_branch_column,
        &spec.fly_app_column,
        &spec.fly_machine_column,
    ];
    let provision = provision_cols
        .iter()
        .all(|c| has(c))
        .then(|| ProvisionColumns {
            slug: quote_ident(&spec.slug_column),
            neon_project: quote_ident(&spec.neon_project_column),
            neon_branch: quote_ident(&spec.neon_branch_column),
            fly_app: quote_ident(&spec.fly_app_column),
            fly_machine: quote_ident(&spec.fly_machine_column),
            updated_at: (!spec.updated_at_column.is_empty() && has(&spec.updated_at_column))
                .then(|| quote_ident(&spec.updated_at_column)),
        });
    Ok(Table {
        provision,
        name: format!("{}.{}", quote_ident(&schema), quote_ident(&table)),
        display: spec.table.clone(),
        id: quote_ident(&spec.id_column),
        db: quote_ident(&spec.db_column),
        redis: quote_ident(&spec.redis_column),
        id_type,
    })
}

#[cfg(test)]
mod tests {
    use super::without_unknown_params;

    #[test]
    fn parameters_the_driver_ignores_are_dropped_and_named_without_their_values() {
        let (url, ignored) = without_unknown_params(
            "postgres://u@h/db?sslmode=disable&sslpassword=S3cret&password=P4ss&connect_timeout=5",
        );
        assert_eq!(url, "postgres://u@h/db?sslmode=disable&password=P4ss");
        assert_eq!(ignored, ["sslpassword", "connect_timeout"]);
        let (url, ignored) = without_unknown_params("postgres://u@h/db?sslpassword=S3cret");
        assert_eq!(url, "postgres://u@h/db");
        assert_eq!(ignored, ["sslpassword"]);
        for kept in [
            "postgres://u@h/db",
            "postgres://u@h/db?sslmode=require",
            "not a url",
        ] {
            assert_eq!(without_unknown_params(kept), (kept.to_string(), Vec::new()));
        }
    }
}
