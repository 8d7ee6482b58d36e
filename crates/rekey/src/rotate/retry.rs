//! Riding out a lost database connection. A restart, a failover or a
//! terminated backend must not end a run that has rewritten half the
//! fleet: the work in flight is one transaction (a batch, a scan), so it is
//! simply done again on a fresh connection from the pool, with backoff, for
//! up to the run's budget (`--db-retry-secs`). An error that persists past
//! that, or one that is not about the connection, is returned as it is.

use std::future::Future;
use std::time::{Duration, Instant};

use super::RunError;

/// Runs `op` until it succeeds, fails for a reason other than the
/// connection, or keeps failing for longer than `budget`.
pub async fn on_transient<T, F, Fut>(what: &str, budget: Duration, mut op: F) -> Result<T, RunError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, RunError>>,
{
    let started = Instant::now();
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Err(e) if e.is_transient() && started.elapsed() + delay < budget => {
                tracing::warn!(
                    "{what}: {e}; retrying on a fresh connection in {:.1} s",
                    delay.as_secs_f64()
                );
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}
