//! What can go wrong talking to PostgreSQL or with what it holds. Messages
//! name the database (its URL redacted), the table, the column or the run:
//! never a password, a key or a ciphertext.

use crate::keys::KeyId;

/// A database or journal error, with the context an operator needs to act.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database {url}: {message}")]
    Connect { url: String, message: String },
    #[error("database: {0}")]
    Sql(String),
    /// The connection was lost or the server could not serve the statement
    /// for a reason that may pass (see [`is_transient`]).
    #[error("database connection: {0}")]
    Transient(String),
    #[error("applying the tool's migrations (schema rekey): {0}")]
    Migration(String),
    #[error("table {0} not found; name it with --table (schema-qualified if needed)")]
    MissingTable(String),
    #[error("table {table} has no column {column}; name it with the matching --*-column option")]
    MissingColumn { table: String, column: String },
    #[error("column {column} has type {found}; rekey reads and writes BYTEA ciphertexts")]
    UnsupportedColumnType { column: String, found: String },
    #[error(
        "table {table} lacks the columns naming cloud resources (slug, neon_*, fly_*); \
             name them with the --*-column options"
    )]
    NoResourceColumns { table: String },
    #[error("table {table} already has {rows} rows; seed fills only an empty table")]
    TableNotEmpty { table: String, rows: i64 },
    #[error("run {run_id} is open with new key {open_key}, but the new key given is {given_key}; \
             resume it with the same new key (a second new key while a run is open would strand rows)")]
    OpenRunWithOtherKey {
        run_id: i64,
        open_key: String,
        given_key: KeyId,
    },
    #[error("another process keeps opening and closing runs; try again")]
    RunsChurning,
    #[error("no run {0} in the journal")]
    NoSuchRun(i64),
    #[error("no run in the journal yet: no rotation has been started on this database")]
    NoRuns,
    #[error("run {run_id} is {state}; only a finished run's backups can be purged")]
    RunNotFinished { run_id: i64, state: String },
    #[error("run {run_id} has not passed `rekey verify` since it finished; run verify first")]
    RunNotVerified { run_id: i64 },
    #[error("run {run_id} has been rolled back (or a rollback of it began); there is nothing to finalize")]
    RunRolledBack { run_id: i64 },
    #[error(
        "{tenants} re-provisioned tenants' clean-up is not done (old credentials or created \
         resources still live); run the same `rekey run` again until it reports cleanup_pending 0, \
         then finalize"
    )]
    CleanupPending { tenants: i64 },
    #[error("the operating system's random source failed")]
    NoRandomness,
}

impl From<sqlx::Error> for DbError {
    fn from(e: sqlx::Error) -> DbError {
        if is_transient(&e) {
            DbError::Transient(short_db_error(&e))
        } else {
            DbError::Sql(short_db_error(&e))
        }
    }
}

/// A one-line description of a database error that never includes a URL
/// or a secret (a driver may quote a DSN in a configuration error).
pub fn short_db_error(e: &sqlx::Error) -> String {
    let text = match e {
        sqlx::Error::Database(db) => db.message().to_string(),
        sqlx::Error::Io(io) => format!("cannot reach the server: {io}"),
        sqlx::Error::PoolTimedOut => "timed out waiting for a connection".into(),
        sqlx::Error::Configuration(c) => format!("configuration: {c}"),
        sqlx::Error::Tls(t) => format!("TLS: {t}"),
        other => other.to_string(),
    };
    crate::redact::text(&text)
}

/// True for an error that says nothing about the statement and may well
/// not happen again on a fresh connection: the server went away (restart,
/// failover, a terminated backend), the network dropped, the pool could
/// not connect in time, or a serialization failure or deadlock. A batch is
/// one transaction, so retrying it after one of these is always safe.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // Class 08: connection exception; 57P01-57P03: admin or crash
            // shutdown, cannot connect now; 40001/40P01: serialization
            // failure and deadlock, which PostgreSQL asks clients to retry.
            code.starts_with("08")
                || ["57P01", "57P02", "57P03", "40001", "40P01"].contains(&&*code)
        }),
        _ => false,
    }
}
