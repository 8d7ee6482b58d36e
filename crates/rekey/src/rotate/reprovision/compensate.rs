//! Giving a tenant up: removing the branches and machines rekey created for
//! it (compensation, journaled as step `compensate` and retried, by later
//! runs too, until done), unless its row already points at them or another
//! process owns it now, and recording why in the journal.
//!
//! Not here: deciding that a tenant is given up (`step`, from how its
//! attempt failed; `schedule`, when its row is gone) or any SQL
//! (`db::journal`, `db::org_instances`).

use tokio::time::Instant;

use super::step::{Item, Step, REKEY_ORG};
use super::Reprovisioner;
use crate::cloud::fly::ITEM_TAG;
use crate::cloud::CloudError;
use crate::db::{journal, org_instances};
use crate::rotate::events::TenantOutcome;
use crate::rotate::RunError;

impl Reprovisioner {
    /// Gives a tenant up: journals it at step `compensate` (so that the
    /// removal of what it created is retried, by later runs too, until it
    /// is done) unless its row already points there, then removes it.
    pub(super) async fn give_up(
        &self,
        item: &mut Item,
        reason: &str,
    ) -> Result<TenantOutcome, RunError> {
        let swapped = matches!(item.step, Ok(step) if step.row_swapped());
        // Only the tenant's owner may undo: a process paused past its lease
        // must not delete what the process that took over has built.
        if swapped || !self.still_owns(item).await? {
            journal::mark_failed(&self.pool, &item.key(&self.owner), reason).await?;
            self.emit(item, TenantOutcome::GivenUp, Some(reason.to_string()));
            return Ok(TenantOutcome::GivenUp);
        }
        let at = item.step_text();
        let moved =
            journal::begin_compensation(&self.pool, &item.key(&self.owner), reason, &at).await?;
        if moved == 0 {
            return Ok(TenantOutcome::Stepped);
        }
        item.step = Ok(Step::Compensate);
        // As the journal keeps it: the first step it was given up at.
        item.gave_up_step.get_or_insert(at);
        self.settle_compensation(item, Some(reason)).await
    }

    /// Removes what the tenant's saga created; done, it is given up for
    /// good. Failed, it stays at `compensate`: retried after a pause in
    /// this invocation, then parked as owed for the next `rekey run`.
    /// `reason`: why, when this invocation gave the tenant up. The
    /// given-up event names the step it was given up at (as the journal
    /// and the report do), not `compensate`.
    pub(super) async fn settle_compensation(
        &self,
        item: &mut Item,
        reason: Option<&str>,
    ) -> Result<TenantOutcome, RunError> {
        match self.compensate(item).await {
            Ok(()) => {
                journal::finish_compensation(&self.pool, &item.key(&self.owner)).await?;
                let step = item
                    .gave_up_step
                    .clone()
                    .unwrap_or_else(|| item.step_text());
                let why = reason.map_or_else(
                    || "given up earlier; what its attempt created is now removed".to_string(),
                    str::to_string,
                );
                self.emit_at(item, step, TenantOutcome::GivenUp, Some(why));
                Ok(TenantOutcome::GivenUp)
            }
            Err(e) => {
                let why = format!(
                    "{}; removing what it created failed ({e}); retried until done",
                    reason.unwrap_or("given up")
                );
                if item.attempts >= self.settings.max_attempts {
                    journal::mark_owed(&self.pool, &item.key(&self.owner), &why).await?;
                } else {
                    self.retry_later(item, &why).await?;
                }
                self.emit(item, TenantOutcome::Retrying, Some(why));
                Ok(TenantOutcome::Retrying)
            }
        }
    }

    /// Gives up a tenant just claimed, before anything was created for it
    /// (its row is gone): nothing to remove, no event.
    pub(super) async fn give_up_quietly(
        &self,
        run_id: i64,
        org_id: &str,
        reason: &str,
    ) -> Result<(), RunError> {
        journal::mark_failed_unowned(&self.pool, run_id, org_id, reason).await?;
        Ok(())
    }

    async fn still_owns(&self, item: &Item) -> Result<bool, RunError> {
        let owner = journal::owner_of(&self.pool, item.run_id, &item.org_id).await?;
        Ok(owner.as_deref() == Some(self.owner.as_str()))
    }

    /// Deletes the machine and branch this run created for the tenant,
    /// finding them by tag and name even when the journal missed their ids,
    /// but never what the tenant's row names now (whoever wrote it there).
    async fn compensate(&self, item: &Item) -> Result<(), CloudError> {
        let named = match &self.table.provision {
            Some(cols) => {
                org_instances::named_resources(&self.pool, &self.table, cols, &item.org_id)
                    .await
                    .ok()
                    .flatten()
            }
            None => None,
        };
        let named = named.unwrap_or_default();
        let (row_branch, row_machine) = (named.neon_branch, named.fly_machine);
        // Found by the tenant's marker, whichever run made them, and by this
        // run's tag (machines made before the marker existed).
        let tag = Self::machine_tag(item);
        let mut found = self
            .fly
            .list_machines(&item.app, &[(REKEY_ORG, item.org_id.as_str())], false)
            .await?;
        found.extend(
            self.fly
                .list_machines(&item.app, &[(ITEM_TAG, tag.as_str())], false)
                .await?,
        );
        let mut seen = std::collections::BTreeSet::new();
        for m in found.iter().filter(|m| {
            m.id != item.old_machine
                && m.id != row_machine
                && !matches!(m.state.as_str(), "destroyed" | "destroying")
        }) {
            if seen.insert(m.id.clone()) {
                self.fly.destroy_machine(&item.app, &m.id, true).await?;
            }
        }
        // Branches are found by the tenant's marker and this run's name,
        // whichever strategy this invocation was given: one an earlier
        // new-branch attempt made is removed either way.
        if !item.project.is_empty() {
            self.remove_new_branches(item, &row_branch).await?;
        }
        Ok(())
    }

    /// Deletes the branches rekey made for the tenant (its marker, or this
    /// run's name), unless one is the tenant's own, the one its row names,
    /// or a parent (a branch an earlier saga retired stays as its
    /// successor's parent, and Neon refuses to delete parents).
    async fn remove_new_branches(&self, item: &Item, row_branch: &str) -> Result<(), CloudError> {
        let all = self.neon.list_branches(&item.project).await?;
        let name = self.branch_name(item);
        let doomed: Vec<&str> = all
            .iter()
            .filter(|b| {
                b.annotations.get(REKEY_ORG).map(String::as_str) == Some(item.org_id.as_str())
                    || b.name == name
            })
            .filter(|b| b.id != item.old_branch && b.id != row_branch)
            .filter(|b| {
                !all.iter()
                    .any(|c| c.parent_id.as_deref() == Some(b.id.as_str()))
            })
            .map(|b| b.id.as_str())
            .collect();
        for id in doomed {
            let _turn = self.turns.take(&item.project).await;
            let ops = self.neon.delete_branch(&item.project, id).await?;
            let deadline = Instant::now() + self.settings.step_deadline;
            self.neon
                .wait_operations(&item.project, &ops, deadline)
                .await?;
        }
        Ok(())
    }
}
