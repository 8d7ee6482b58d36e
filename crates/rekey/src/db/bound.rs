//! A bound on how long the tool waits for the database to answer one
//! statement. A server that accepts TCP and then goes silent (a frozen VM,
//! a half-open connection after a failover, a black-holing firewall) must
//! end in a clear error, never in a process that hangs: every statement,
//! `BEGIN` and `COMMIT` the tool sends is awaited through [`Bounded`], and
//! a streamed read waits at most that long for each next row.
//!
//! The bound is an I/O error, so [`super::is_transient`] treats it like a
//! lost connection: a run retries the transaction on a fresh connection,
//! and a command that does not retry reports it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::Timeout;

/// How long a statement may go unanswered by default
/// (`--statement-timeout-secs`): longer than the 60 s `lock_timeout` a
/// statement that waits for a lock sets, so the server's own answer comes
/// first.
pub const DEFAULT_STATEMENT_TIMEOUT: Duration = Duration::from_secs(90);

/// The bound in milliseconds; set once from the command line before the
/// first connection.
static STATEMENT_TIMEOUT_MS: AtomicU64 = AtomicU64::new(90_000);

/// Sets the bound for every statement from now on (at least 1 ms).
pub fn set_statement_timeout(limit: Duration) {
    let ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX).max(1);
    STATEMENT_TIMEOUT_MS.store(ms, Ordering::Relaxed);
}

/// The bound in force.
pub fn statement_timeout() -> Duration {
    Duration::from_millis(STATEMENT_TIMEOUT_MS.load(Ordering::Relaxed))
}

/// The error a statement that got no answer in time ends with.
pub fn no_answer() -> sqlx::Error {
    no_answer_within(statement_timeout())
}

fn no_answer_within(limit: Duration) -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!(
            "no answer from the database within {} (--statement-timeout-secs)",
            humantime::format_duration(limit)
        ),
    ))
}

/// The future of a statement awaited with a bound (boxed: one small
/// allocation per statement, next to a round trip to the server).
pub struct BoundedFuture<F> {
    inner: Pin<Box<Timeout<F>>>,
    limit: Duration,
}

impl<T, F: Future<Output = Result<T, sqlx::Error>>> Future for BoundedFuture<F> {
    type Output = Result<T, sqlx::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let limit = self.limit;
        self.inner
            .as_mut()
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err(no_answer_within(limit))))
    }
}

/// `.bounded()` on any database future: its answer, or [`no_answer`] once
/// [`statement_timeout`] has passed.
pub trait Bounded<T>: Future<Output = Result<T, sqlx::Error>> + Sized {
    fn bounded(self) -> BoundedFuture<Self> {
        self.bounded_by(statement_timeout())
    }

    fn bounded_by(self, limit: Duration) -> BoundedFuture<Self> {
        BoundedFuture {
            inner: Box::pin(tokio::time::timeout(limit, self)),
            limit,
        }
    }
}

impl<T, F: Future<Output = Result<T, sqlx::Error>>> Bounded<T> for F {}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_statement_without_an_answer_ends_in_a_transient_error_naming_the_bound() {
        let silent = std::future::pending::<Result<(), sqlx::Error>>();
        let e = silent
            .bounded_by(Duration::from_millis(20))
            .await
            .expect_err("never answered");
        assert!(super::super::is_transient(&e), "{e}");
        assert!(
            e.to_string()
                .contains("no answer from the database within 20ms"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_answer_in_time_is_passed_through_by_the_bound() {
        let quick = async { Ok::<_, sqlx::Error>(7) };
        assert_eq!(quick.bounded().await.expect("answered"), 7);
    }
}
