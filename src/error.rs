//! Errors that stop a command before or while it works, each carrying what
//! the operator needs to act. None of them ever holds a key, a password or
//! a connection URI: messages name where a secret came from, never its value.

use crate::keys::{KeyId, KeyLoadError};

/// A command could not start, or had to stop: exit code 2.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("database {url}: {message}")]
    Database { url: String, message: String },
    #[error("database: {0}")]
    Sql(String),
    #[error("applying the tool's migrations (schema rekey): {0}")]
    Migration(String),
    #[error("table {0} not found; name it with --table (schema-qualified if needed)")]
    MissingTable(String),
    #[error("table {table} has no column {column}; name it with the matching --*-column option")]
    MissingColumn { table: String, column: String },
    #[error("column {column} has type {found}; rekey reads and writes BYTEA ciphertexts")]
    UnsupportedColumnType { column: String, found: String },
    #[error(transparent)]
    Key(#[from] KeyLoadError),
    #[error("no new key: pass --new-key-file FILE or set NEW_SECRETS_ENCRYPTION_KEY (make one with `rekey keygen --out FILE`)")]
    NoNewKey,
    #[error("the old and new keys are the same key (id {0}); a compromised key must be replaced by a fresh one")]
    SameKey(KeyId),
    #[error("run {run_id} is open with new key {open_key}, but the new key given is {given_key}; \
             resume it with the same new key (a second new key while a run is open would strand rows)")]
    OpenRunWithOtherKey {
        run_id: i64,
        open_key: String,
        given_key: KeyId,
    },
    #[error("no run {0} in the journal")]
    NoSuchRun(i64),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl SetupError {
    /// Wraps a database error without any connection details.
    pub fn from_sqlx(e: sqlx::Error) -> SetupError {
        SetupError::Sql(crate::db::short_db_error(&e))
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> SetupError {
        SetupError::Io {
            context: context.into(),
            source,
        }
    }
}

impl From<sqlx::Error> for SetupError {
    fn from(e: sqlx::Error) -> SetupError {
        SetupError::from_sqlx(e)
    }
}

/// What a finished command tells the shell (STYLE.md: 0 done, 1 not
/// everything done, 2 usage or setup error).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Done,
    Incomplete,
}

impl Outcome {
    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Done => 0,
            Outcome::Incomplete => 1,
        }
    }
}
