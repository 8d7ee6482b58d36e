//! The work loop: which tenant is claimed next and when, how many run at
//! once, the `--canary` and `--max-tenants` caps, and the leases (with
//! their heartbeat) that keep two processes off the same tenant.
//!
//! Not here: what is done to a claimed tenant (`step`) or how one is given
//! up (`compensate`); the SQL is in `db::journal` and `db::org_instances`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;

use super::step::Item;
use super::{ProvisionTally, Reprovisioner};
use crate::db::journal::{self, ClaimedItem, FailedAndDone, ItemKey};
use crate::db::{org_instances, DbError};
use crate::rotate::events::{Event, TenantOutcome};
use crate::rotate::RunError;

/// Which tenants the work loop may claim next.
enum NextClaim<'a> {
    Nothing,
    Any,
    /// Only these: the canary's own, for their retries.
    Only(&'a [String]),
}

/// Where the canary stands once all its tenants have been taken.
enum CanaryState {
    Passed,
    Failed,
    Retrying,
}

/// What the loop does once none of its tenants is running.
enum Idle {
    /// Claim again at once (the canary just passed).
    ClaimAgain,
    /// Wait a little: more may become claimable.
    Wait,
    /// Stop: nothing left, or a cap or the canary says so.
    Stop,
}

/// The loop's bookkeeping across claims.
struct Schedule {
    /// Tenants this invocation has taken (retries counted again).
    started: u64,
    canary_passed: bool,
    /// The canary's tenants, in the order they were taken.
    canary: Vec<String>,
    done: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    tally: ProvisionTally,
}

impl Reprovisioner {
    /// Works on the run's pending tenants, `concurrency` at a time, until
    /// the in-place walk has closed the queue and nothing claimable is
    /// left, or `stop` is set. `--canary N` runs N tenants to completion
    /// first and stops if any was given up; `--max-tenants` caps the count.
    pub async fn work(
        self: &Arc<Self>,
        run_id: i64,
        queue_closed: Arc<AtomicBool>,
        stop: Arc<AtomicBool>,
    ) -> Result<ProvisionTally, RunError> {
        let mut schedule = Schedule {
            started: 0,
            canary_passed: self.settings.canary.is_none(),
            canary: Vec::new(),
            done: Arc::new(AtomicU64::new(0)),
            failed: Arc::new(AtomicU64::new(0)),
            tally: ProvisionTally::default(),
        };
        // Clean-ups and compensations earlier invocations could not finish
        // are taken up again first: each is what makes a leak harmless.
        journal::rearm_owed(&self.pool).await?;
        let mut tasks = JoinSet::new();
        while !stop.load(Ordering::SeqCst) {
            self.fill(run_id, &mut schedule, &mut tasks).await?;
            if tasks.is_empty() {
                match self.when_idle(run_id, &mut schedule, &queue_closed).await? {
                    Idle::Stop => break,
                    Idle::ClaimAgain => continue,
                    Idle::Wait => {}
                }
            }
            // Wake when a tenant finishes, or soon anyway: the in-place walk
            // may have queued more tenants meanwhile.
            tokio::select! {
                _ = tasks.join_next(), if !tasks.is_empty() => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
        let mut tally = schedule.tally;
        tally.done = schedule.done.load(Ordering::SeqCst);
        tally.failed = schedule.failed.load(Ordering::SeqCst);
        tally.cleanup_pending = journal::cleanup_pending_count(&self.pool).await? as u64;
        Ok(tally)
    }

    /// Claims and starts tenants until `concurrency` run, the caps allow no
    /// more, or none is claimable now.
    async fn fill(
        self: &Arc<Self>,
        run_id: i64,
        schedule: &mut Schedule,
        tasks: &mut JoinSet<()>,
    ) -> Result<(), RunError> {
        while tasks.len() < self.settings.concurrency.max(1) {
            let only = match self.next_claim(schedule) {
                NextClaim::Nothing => break,
                NextClaim::Any => None,
                NextClaim::Only(ids) => Some(ids.to_vec()),
            };
            let Some(item) = self.claim(run_id, only.as_deref()).await? else {
                break;
            };
            if !schedule.canary_passed && !schedule.canary.contains(&item.org_id) {
                schedule.canary.push(item.org_id.clone());
            }
            schedule.started += 1;
            let this = Arc::clone(self);
            let (done, failed) = (Arc::clone(&schedule.done), Arc::clone(&schedule.failed));
            tasks.spawn(async move {
                match this.drive(item).await {
                    Ok(TenantOutcome::Done) => {
                        done.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(TenantOutcome::GivenUp) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    Err(e) => this.sink.emit(&Event::Warning {
                        message: format!("re-provision journal error: {e}"),
                    }),
                }
            });
        }
        Ok(())
    }

    /// With no tenant of ours running: whether the canary has passed or
    /// failed, a cap is reached, or nothing is left to wait for.
    async fn when_idle(
        &self,
        run_id: i64,
        schedule: &mut Schedule,
        queue_closed: &AtomicBool,
    ) -> Result<Idle, RunError> {
        if !schedule.canary_passed
            && self
                .settings
                .canary
                .is_some_and(|c| schedule.canary.len() as u64 >= c)
        {
            // A canary tenant waiting for its retry has not passed:
            // the rest wait with it, and it is taken again in turn.
            match self.canary_state(run_id, &schedule.canary).await? {
                CanaryState::Failed => {
                    schedule.tally.canary_failed = true;
                    return Ok(Idle::Stop);
                }
                CanaryState::Passed => {
                    schedule.canary_passed = true;
                    return Ok(Idle::ClaimAgain);
                }
                CanaryState::Retrying => {}
            }
        }
        if self
            .settings
            .max_tenants
            .is_some_and(|m| schedule.started >= m)
        {
            schedule.tally.capped = journal::pending_count(&self.pool, run_id).await? > 0;
            return Ok(Idle::Stop);
        }
        // With no task of ours running, every pending tenant is
        // claimable now, after its retry pause, or once another
        // process lets it go: all worth waiting for. (Asking only
        // about the later two raced with the claim just made: a
        // tenant queued or whose pause ended in between was left.)
        if queue_closed.load(Ordering::SeqCst)
            && journal::pending_count(&self.pool, run_id).await? == 0
        {
            return Ok(Idle::Stop);
        }
        Ok(Idle::Wait)
    }

    /// Which tenants this invocation may take next, given how many it has
    /// taken and the canary so far.
    fn next_claim<'a>(&self, schedule: &'a Schedule) -> NextClaim<'a> {
        let canary = &schedule.canary;
        match (schedule.canary_passed, self.settings.canary) {
            (false, Some(size)) if (canary.len() as u64) < size => NextClaim::Any,
            (false, Some(_)) => NextClaim::Only(canary),
            _ if self
                .settings
                .max_tenants
                .is_none_or(|m| schedule.started < m) =>
            {
                NextClaim::Any
            }
            _ => NextClaim::Nothing,
        }
    }

    /// Whether the canary's tenants are all done, one was given up, or
    /// some still wait for a retry.
    async fn canary_state(&self, run_id: i64, canary: &[String]) -> Result<CanaryState, RunError> {
        let FailedAndDone { failed, done } =
            journal::failed_and_done_among(&self.pool, run_id, canary).await?;
        Ok(if failed > 0 {
            CanaryState::Failed
        } else if done as usize == canary.len() {
            CanaryState::Passed
        } else {
            CanaryState::Retrying
        })
    }

    /// Claims the next pending tenant whose lease is free (among `only`,
    /// when given), counting an attempt, and reads what its row names.
    async fn claim(&self, run_id: i64, only: Option<&[String]>) -> Result<Option<Item>, RunError> {
        let claimed =
            journal::claim_item(&self.pool, run_id, &self.owner, self.settings.lease, only).await?;
        let Some(row) = claimed else { return Ok(None) };
        let cols = self.table.provision.as_ref().ok_or_else(|| {
            RunError::Db(DbError::NoResourceColumns {
                table: self.table.display.clone(),
            })
        })?;
        let named =
            org_instances::named_resources(&self.pool, &self.table, cols, &row.org_id).await?;
        let Some(named) = named else {
            self.give_up_quietly(row.run_id, &row.org_id, "the tenant's row is gone")
                .await?;
            return Ok(None);
        };
        Ok(Some(item_of(row, named)))
    }

    /// Renews the tenant's lease every third of its length; returns (and
    /// so ends the attempt, as a crash would) once a renewal finds that the
    /// tenant is no longer ours or the journal cannot be reached.
    pub(super) async fn keep_lease(&self, run_id: i64, org_id: &str) {
        let every = self.settings.lease / 3;
        let key = ItemKey {
            run_id,
            org_id,
            owner: &self.owner,
        };
        loop {
            tokio::time::sleep(every).await;
            let renewed = journal::renew_lease(&self.pool, &key, self.settings.lease).await;
            if !matches!(renewed, Ok(1)) {
                return;
            }
        }
    }
}

/// A claimed tenant: the journal's record of what it had when it was
/// queued, or else what its row names now.
fn item_of(row: ClaimedItem, named: org_instances::NamedResources) -> Item {
    Item {
        run_id: row.run_id,
        org_id: row.org_id,
        step: row.step.parse(),
        attempts: row.attempts,
        slug: named.slug,
        project: named.neon_project,
        old_branch: row.old_branch_id.unwrap_or(named.neon_branch),
        new_branch: row.new_branch_id,
        app: named.fly_app,
        old_machine: row.old_machine_id.unwrap_or(named.fly_machine),
        new_machine: row.new_machine_id,
        old_db: row.old_db,
        old_redis: row.old_redis,
        gave_up_step: row.gave_up_step,
        forward_only: row.forward_only,
    }
}
