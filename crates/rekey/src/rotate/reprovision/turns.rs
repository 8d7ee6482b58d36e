//! One mutating Neon operation in flight per project, per process: Neon
//! runs a project's operations one at a time and answers 423 to a change
//! sent while one runs, so tenants that share a project would otherwise
//! spend calls (and the account's rate) on 423s and their retries. A tenant
//! takes its project's turn for a mutation and the wait for its
//! operations, then gives it back; tenants of other projects go on.
//!
//! Other processes sharing the run are not seen here: their changes still
//! meet 423s, which the HTTP policy waits out without spending attempts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// The turns, one per project seen.
#[derive(Default)]
pub(super) struct ProjectTurns {
    projects: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A project's turn, held until dropped.
pub(super) type Turn = OwnedMutexGuard<()>;

impl ProjectTurns {
    /// Waits for `project`'s turn, first come first served.
    pub(super) async fn take(&self, project: &str) -> Turn {
        let turn = {
            // Nothing is left half-changed under this lock (an insert), so
            // a poisoned one is taken as it is.
            let mut projects = self
                .projects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(projects.entry(project.to_string()).or_default())
        };
        turn.lock_owned().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_project_has_one_turn_and_other_projects_are_not_held_up() {
        let turns = ProjectTurns::default();
        let held = turns.take("p-1").await;
        let same = tokio::time::timeout(Duration::from_millis(50), turns.take("p-1")).await;
        assert!(
            same.is_err(),
            "a second turn of p-1 while the first is held"
        );
        let other = tokio::time::timeout(Duration::from_secs(5), turns.take("p-2")).await;
        assert!(other.is_ok(), "p-2 waited for p-1's turn");
        drop(held);
        let again = tokio::time::timeout(Duration::from_secs(5), turns.take("p-1")).await;
        assert!(again.is_ok(), "p-1's turn was not given back");
    }
}
