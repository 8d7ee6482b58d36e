//! Why the engine refused to start or had to stop. Each carries what the
//! operator needs to act; none holds a key, a password or a URI.

use crate::cloud::CloudError;
use crate::db::DbError;

/// A rotation (plan, run, verify, connect) that could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// The wrong-old-key gate (docs/design.md, "Safety gate").
    #[error(
        "the old key opens only {opened} of {total} rows that need work; the likeliest cause is a wrong \
         old key, not {to_reprovision} broken rows. Check the old key id with `rekey plan`. If \
         re-provisioning {to_reprovision} tenants is really meant, add --confirm-reprovision {to_reprovision}"
    )]
    GateTripped {
        opened: u64,
        total: u64,
        to_reprovision: u64,
    },
    #[error(
        "{tenants} tenants need re-provisioning, which needs NEON_API_KEY, FLY_API_TOKEN and \
         TENANT_REDIS_URL; set them, or run with --mode reencrypt to rotate only what the old key opens"
    )]
    NoCloudCredentials { tenants: u64 },
    #[error(
        "{tenants} tenants need re-provisioning, but table {table} lacks the slug/Neon/Fly columns \
         (name them with --slug-column, --neon-project-column, ...)"
    )]
    NoProvisionColumns { tenants: u64, table: String },
    #[error("cloud client: {0}")]
    Cloud(Box<CloudError>),
    /// A task of the engine panicked or was cancelled: a defect, not the
    /// operator's mistake; the journal still resumes the run.
    #[error("{task} crashed: {message}")]
    Crashed { task: &'static str, message: String },
    /// The run was open when an error stopped it: rows may have been
    /// rewritten, and the same command resumes it.
    #[error("{source}; run {run_id} is open: run the same command to resume")]
    Stopped {
        run_id: i64,
        #[source]
        source: Box<RunError>,
    },
    #[error("the operating system's random source failed")]
    NoRandomness,
}

impl RunError {
    /// A task's join error, named.
    pub fn crashed(task: &'static str, e: &tokio::task::JoinError) -> RunError {
        RunError::Crashed {
            task,
            message: e.to_string(),
        }
    }

    /// This error, as the reason an open run stopped.
    pub fn stopped(self, run_id: i64) -> RunError {
        match self {
            already @ RunError::Stopped { .. } => already,
            other => RunError::Stopped {
                run_id,
                source: Box::new(other),
            },
        }
    }

    /// True when a retry on a fresh connection may succeed (see
    /// [`crate::db::is_transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, RunError::Db(DbError::Transient(_)))
    }

    /// True when the database or the process may have changed since the
    /// command started (then the exit code is 1, not 2).
    pub fn changed_something(&self) -> bool {
        matches!(self, RunError::Crashed { .. } | RunError::Stopped { .. })
    }
}

/// What a finished command tells the shell: 0 done, 1 not everything done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Outcome {
    #[default]
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

impl From<sqlx::Error> for RunError {
    fn from(e: sqlx::Error) -> RunError {
        RunError::Db(e.into())
    }
}

impl From<CloudError> for RunError {
    fn from(e: CloudError) -> RunError {
        RunError::Cloud(Box::new(e))
    }
}
