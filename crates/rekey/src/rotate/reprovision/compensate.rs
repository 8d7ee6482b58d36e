//! Giving a tenant up: removing the branch and machine this run created for
//! it (compensation), unless its row already points at them or another
//! process owns it now, and recording why in the journal.
//!
//! Not here: deciding that a tenant is given up (`step`, from how its
//! attempt failed; `schedule`, when its row is gone) or any SQL
//! (`db::journal`, `db::org_instances`).

use tokio::time::Instant;

use super::step::Item;
use super::{NeonStrategy, Reprovisioner};
use crate::cloud::fly::ITEM_TAG;
use crate::cloud::CloudError;
use crate::db::{journal, org_instances};
use crate::rotate::events::TenantOutcome;
use crate::rotate::RunError;

impl Reprovisioner {
    /// Gives a tenant up: removes what this run created for it unless its
    /// row already points there, and records the reason.
    pub(super) async fn give_up(
        &self,
        item: &mut Item,
        reason: &str,
    ) -> Result<TenantOutcome, RunError> {
        let swapped = matches!(item.step, Ok(step) if step.row_swapped());
        let mut note = String::new();
        // Only the tenant's owner may undo: a process paused past its lease
        // must not delete what the process that took over has built.
        if !swapped && self.still_owns(item).await? {
            if let Err(e) = self.compensate(item).await {
                note = format!(
                    "; removing what it created failed too ({e}); running the same command \
                     again re-opens the run and retries this tenant"
                );
            }
        }
        let reason = format!("{reason}{note}");
        journal::mark_failed(&self.pool, &item.key(&self.owner), &reason).await?;
        self.emit(item, TenantOutcome::GivenUp, Some(reason));
        Ok(TenantOutcome::GivenUp)
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
        let tag = Self::machine_tag(item);
        let tagged = self
            .fly
            .list_machines(&item.app, &[(ITEM_TAG, tag.as_str())], false)
            .await?;
        for m in tagged
            .iter()
            .filter(|m| m.id != item.old_machine && m.id != row_machine)
        {
            self.fly.destroy_machine(&item.app, &m.id, true).await?;
        }
        if self.settings.strategy == NeonStrategy::NewBranch && !item.project.is_empty() {
            self.remove_new_branch(item, &row_branch).await?;
        }
        Ok(())
    }

    /// Deletes the branch this run created for the tenant (found by its
    /// name), unless it is the tenant's own or the one its row names.
    async fn remove_new_branch(&self, item: &Item, row_branch: &str) -> Result<(), CloudError> {
        let Some(branch) = self
            .neon
            .find_branch_by_name(&item.project, &self.branch_name(item))
            .await?
        else {
            return Ok(());
        };
        if branch.id != item.old_branch && branch.id != row_branch {
            let ops = self.neon.delete_branch(&item.project, &branch.id).await?;
            let deadline = Instant::now() + self.settings.step_deadline;
            self.neon
                .wait_operations(&item.project, &ops, deadline)
                .await?;
        }
        Ok(())
    }
}
