//! The command line's error: every layer's error, and the exit code each
//! means (0 done, 1 not everything done, 2 usage or setup error: nothing
//! changed).

use crate::bench::BenchError;
use crate::cloud::register::RegisterError;
use crate::db::DbError;
use crate::keys::KeyLoadError;
use crate::rotate::rollback::RollbackError;
use crate::rotate::RunError;

/// What stopped a command.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The command line or the environment asks for something impossible.
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Key(#[from] KeyLoadError),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    Rollback(#[from] RollbackError),
    #[error(transparent)]
    Bench(#[from] BenchError),
    #[error(transparent)]
    FakeCloud(#[from] RegisterError),
    /// A file the command must not touch, or could not write.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

impl CliError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> CliError {
        CliError::Io {
            context: context.into(),
            source,
        }
    }

    /// 2 when nothing changed (the command refused or could not start), 1
    /// when the command may have changed something before it stopped (a
    /// crashed task, an error after the run was open).
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Run(e) | CliError::Bench(BenchError::Run(e)) if e.changed_something() => 1,
            CliError::Rollback(e) if e.changed_something() => 1,
            _ => 2,
        }
    }
}

impl From<sqlx::Error> for CliError {
    fn from(e: sqlx::Error) -> CliError {
        CliError::Db(e.into())
    }
}
