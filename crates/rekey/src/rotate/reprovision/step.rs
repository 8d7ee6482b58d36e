//! The per-tenant state machine: [`Step`], the one list of the steps a
//! tenant goes through (as the journal's `step` column, events and progress
//! name them), and driving one claimed tenant through its remaining steps,
//! each persisted in `rekey.items` before the next begins.
//!
//! Not here: which tenant is taken when, journal leases and the canary
//! (`schedule`), the Fly lease on the old machine (`lease`), giving a
//! tenant up and undoing what it created (`compensate`), and the SQL
//! itself (`db::journal`, `db::org_instances`).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use tokio::time::Instant;

use super::lease::MachineLease;
use super::{NeonStrategy, Reprovisioner};
use crate::cloud::fly::{CreateMachine, Lease, StopOptions, WaitState};
use crate::cloud::neon::{build_connection_uri, Database, NewBranch, Role};
use crate::cloud::{CloudError, Secret};
use crate::db::journal::{self, ItemFields, ItemKey, Records};
use crate::db::org_instances::{self, ProvisionSwap};
use crate::db::Bounded;
use crate::rotate::events::{Event, TenantOutcome};
use crate::rotate::RunError;

/// The metadata key (Fly) and annotation key (Neon) every resource rekey
/// creates for a tenant carries, with the tenant's org id: how any later
/// run finds what an earlier one left, whatever its run id.
pub(super) const REKEY_ORG: &str = "rekey_org";

/// A tenant's step, in the order it goes through them (docs/design.md,
/// "Re-provision state machine"). The journal stores [`Step::as_str`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// In the journal, its resources not yet recorded.
    Queued,
    /// Creating the new Neon branch (the `new-branch` strategy only).
    Branch,
    /// Resetting the role password on the branch the tenant will use.
    /// With `reset-in-place`, from the moment the reset may have been sent
    /// the tenant's machine cannot log in until it has the new password:
    /// the tenant is only ever rolled forward from here, never given up.
    Password,
    /// Creating the new Fly machine with the new URLs; with
    /// `reset-in-place`, updating the tenant's own machine to them.
    Machine,
    /// Waiting for the new (or updated) machine to start and prove healthy.
    Started,
    /// Compare-and-swap of the tenant's row under the new key.
    Row,
    /// The row points at the new resources; the old ones are retired.
    /// Never given up: retried by every later run until done.
    Cleanup,
    Done,
    /// Given up before its row was swapped; what it created is being
    /// removed. Retried like a step, by later runs too, until done.
    Compensate,
}

impl Step {
    /// Every step, in the state machine's order.
    pub const ALL: [Step; 9] = [
        Step::Queued,
        Step::Branch,
        Step::Password,
        Step::Machine,
        Step::Started,
        Step::Row,
        Step::Cleanup,
        Step::Done,
        Step::Compensate,
    ];

    /// The step's name in the journal, in events and on progress lines.
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Queued => "queued",
            Step::Branch => "branch",
            Step::Password => "password",
            Step::Machine => "machine",
            Step::Started => "started",
            Step::Row => "row",
            Step::Cleanup => "cleanup",
            Step::Done => "done",
            Step::Compensate => "compensate",
        }
    }

    /// Whether the tenant's row already points at the new resources, so
    /// that nothing this run created may be removed any more.
    pub fn row_swapped(self) -> bool {
        matches!(self, Step::Cleanup | Step::Done)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Step {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// A journal `step` this build does not know (written by another version).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown step {0:?} in the journal")]
pub struct UnknownStep(pub String);

impl FromStr for Step {
    type Err = UnknownStep;

    fn from_str(s: &str) -> Result<Step, UnknownStep> {
        Step::ALL
            .into_iter()
            .find(|step| step.as_str() == s)
            .ok_or_else(|| UnknownStep(s.to_string()))
    }
}

/// A tenant's journal row plus what the row of the table said.
#[derive(Debug, Clone)]
pub(super) struct Item {
    pub run_id: i64,
    pub org_id: String,
    /// An unknown step is kept so that the tenant is given up with it
    /// (and what it created removed), as any permanent failure.
    pub step: Result<Step, UnknownStep>,
    pub attempts: i32,
    pub slug: String,
    pub project: String,
    pub old_branch: String,
    pub new_branch: Option<String>,
    pub app: String,
    pub old_machine: String,
    pub new_machine: Option<String>,
    pub old_db: Option<Vec<u8>>,
    pub old_redis: Option<Vec<u8>>,
    /// For a compensation taken up again: the step at which the tenant
    /// was given up (what its given-up event names).
    pub gave_up_step: Option<String>,
    /// The password on the tenant's own branch may have been reset (the
    /// journal's `forward_only`, set before the reset is sent), so its
    /// machine is locked out until it is updated: roll forward only, in
    /// this attempt and every later one, whatever run takes it up.
    pub forward_only: bool,
}

impl Item {
    /// The step as events name it, known or not.
    pub(super) fn step_text(&self) -> String {
        match &self.step {
            Ok(step) => step.as_str().to_string(),
            Err(UnknownStep(text)) => text.clone(),
        }
    }

    /// The branch the tenant ends up on: the new one, or its own when the
    /// password is reset in place.
    fn target_branch(&self) -> &str {
        self.new_branch.as_deref().unwrap_or(&self.old_branch)
    }

    /// The journal row's key, as held by `owner`.
    pub(super) fn key<'a>(&'a self, owner: &'a str) -> ItemKey<'a> {
        ItemKey {
            run_id: self.run_id,
            org_id: &self.org_id,
            owner,
        }
    }

    /// Whether the tenant may no longer be given up, only taken forward:
    /// its row already points at the new resources, or its branch may
    /// already refuse the password its machine runs with.
    fn rolls_forward_only(&self) -> bool {
        self.forward_only || matches!(self.step, Ok(Step::Cleanup))
    }

    /// The strategy this tenant's saga follows: past `queued` it is read
    /// from what the journal recorded (a new branch, or none), not from
    /// this invocation's `--neon-strategy`, so that a run resumed or taken
    /// up with other flags finishes each tenant the way it began.
    fn strategy(&self, flag: NeonStrategy) -> NeonStrategy {
        match self.step {
            Ok(Step::Queued) => flag,
            _ if self.new_branch.is_some() => NeonStrategy::NewBranch,
            _ => NeonStrategy::ResetInPlace,
        }
    }

    /// Whether `step` reads or changes the old machine, so that it needs
    /// the Fly lease on it: from the config copy (or, in place, from the
    /// reset that locks the machine out) to the clean-up that destroys it.
    fn needs_machine_lease(&self, step: Step, strategy: NeonStrategy) -> bool {
        match step {
            Step::Password => strategy == NeonStrategy::ResetInPlace,
            Step::Machine | Step::Started | Step::Row => true,
            Step::Cleanup => self.new_machine.as_deref() != Some(self.old_machine.as_str()),
            _ => false,
        }
    }

    fn fields(&self) -> ItemFields<'_> {
        ItemFields {
            project: &self.project,
            old_branch: &self.old_branch,
            app: &self.app,
            old_machine: &self.old_machine,
            slug: &self.slug,
            new_branch: self.new_branch.as_deref(),
            new_machine: self.new_machine.as_deref(),
        }
    }
}

/// What one attempt learned from the clouds' answers, so that no call is
/// spent asking again. Held in memory only (the URI carries the new
/// password): an attempt taken up after a crash starts empty and asks.
#[derive(Default)]
struct Learned {
    /// The new `DATABASE_URL`, once the password it carries is set.
    uri: Option<Secret>,
    /// From the create-branch response: where the tenant's database is.
    target: Option<Target>,
    /// The roles the new branch was created with: the old branch's, as
    /// Neon copies them, so the clean-up need not list them again.
    old_roles: Option<Vec<Role>>,
    /// This attempt moved the tenant to `machine` itself: no earlier
    /// attempt can have created its new machine, so none is looked for.
    fresh_machine: bool,
}

/// The tenant's database on the branch it ends up on: the database, its
/// owner role, and the host of the branch's read-write compute if known.
struct Target {
    database: String,
    role: String,
    host: Option<String>,
}

impl Target {
    /// From a create-branch response, when it names one owned database.
    fn of(made: &NewBranch) -> Option<Target> {
        let (database, role) = owned_database(&made.branch.id, &made.databases).ok()?;
        let host = made
            .endpoints
            .iter()
            .find(|e| {
                e.endpoint_type == "read_write"
                    && (e.branch_id.is_empty() || e.branch_id == made.branch.id)
            })
            .map(|e| e.host.clone())
            .filter(|h| !h.is_empty());
        Some(Target {
            database,
            role,
            host,
        })
    }
}

/// The one database of `branch` that has an owner, with that owner.
fn owned_database(branch: &str, databases: &[Database]) -> Result<(String, String), StepError> {
    let mut owned = databases.iter().filter(|d| !d.owner_name.is_empty());
    match (owned.next(), owned.next()) {
        (Some(db), None) => Ok((db.name.clone(), db.owner_name.clone())),
        (None, _) => Err(StepError::Permanent(format!(
            "branch {branch} has no database"
        ))),
        (Some(_), Some(_)) => Err(StepError::Permanent(format!(
            "branch {branch} has several databases; rekey cannot tell which one is the tenant's"
        ))),
    }
}

/// Why a tenant's attempt stopped.
#[derive(Debug)]
pub(super) enum StepError {
    /// Worth another attempt later.
    Transient(String),
    /// Will not get better by retrying: give the tenant up.
    Permanent(String),
    /// Another process took the tenant over: leave it alone.
    LostLease,
    /// The row changed meanwhile (control plane wrote it): undo, re-read.
    RowChanged,
    Database(String),
}

impl From<CloudError> for StepError {
    fn from(e: CloudError) -> StepError {
        let permanent = match &e {
            CloudError::UnsafeToCopy { .. }
            | CloudError::Conflict { .. }
            | CloudError::Config { .. } => true,
            CloudError::OperationFailed { .. } => false,
            _ => {
                matches!(e.status(), Some(s) if (400..500).contains(&s) && ![408, 409, 423, 429].contains(&s))
            }
        };
        // CloudError's Display carries method, path and the API's message,
        // never a token, password or URI (cloud::http redacts them).
        if permanent {
            StepError::Permanent(e.to_string())
        } else {
            StepError::Transient(e.to_string())
        }
    }
}

impl From<sqlx::Error> for StepError {
    fn from(e: sqlx::Error) -> StepError {
        StepError::Database(crate::db::short_db_error(&e))
    }
}

/// `LostLease` when a journal write found the tenant owned by someone else.
fn owned(rows_affected: u64) -> Result<(), StepError> {
    if rows_affected == 0 {
        Err(StepError::LostLease)
    } else {
        Ok(())
    }
}

impl Reprovisioner {
    /// One attempt at one tenant: run its remaining steps; on failure,
    /// schedule a retry or give it up (compensating).
    pub(super) async fn drive(&self, mut item: Item) -> Result<TenantOutcome, RunError> {
        self.emit(&item, TenantOutcome::Started, None);
        // The lease is kept alive for as long as the steps run: a step may
        // well outlast it (a slow boot, a long 429 pause), and a tenant whose
        // lease lapsed mid-step would be claimed and driven a second time,
        // by this process or another, both creating and compensating.
        let (run_id, org_id) = (item.run_id, item.org_id.clone());
        if matches!(item.step, Ok(Step::Compensate)) {
            return tokio::select! {
                outcome = self.settle_compensation(&mut item, None) => outcome,
                () = self.keep_lease(run_id, &org_id) => Ok(TenantOutcome::Stepped),
            };
        }
        let machine_lease = MachineLease::for_item(&item);
        let outcome = tokio::select! {
            outcome = self.steps(&mut item, &machine_lease) => outcome,
            () = self.keep_lease(run_id, &org_id) => Err(StepError::LostLease),
            why = self.keep_machine_lease(&machine_lease) => Err(StepError::Transient(why)),
        };
        self.release_machine_lease(&machine_lease).await;
        match outcome {
            Ok(()) => {
                self.emit(&item, TenantOutcome::Done, None);
                Ok(TenantOutcome::Done)
            }
            Err(StepError::LostLease) => Ok(TenantOutcome::Stepped),
            Err(e) if item.rolls_forward_only() => self.roll_forward_later(&item, e).await,
            Err(StepError::RowChanged) => {
                let reason =
                    "the control plane changed the row during re-provisioning; what this run \
                              created was removed and the row is left for the next pass";
                self.give_up(&mut item, reason).await
            }
            Err(StepError::Permanent(reason)) => self.give_up(&mut item, &reason).await,
            Err(StepError::Transient(reason)) | Err(StepError::Database(reason)) => {
                if item.attempts >= self.settings.max_attempts {
                    let plural = if item.attempts == 1 { "" } else { "s" };
                    let reason = format!("{reason} (after {} attempt{plural})", item.attempts);
                    return self.give_up(&mut item, &reason).await;
                }
                self.retry_later(&item, &reason).await?;
                self.emit(&item, TenantOutcome::Retrying, Some(reason));
                Ok(TenantOutcome::Retrying)
            }
        }
    }

    /// A tenant that may only roll forward is never given up. A failed
    /// clean-up: until it is done, the leaked credentials may still open
    /// the old branch and the old machine may still run with them. A
    /// failure after a password reset in place: until the machine has the
    /// new password it cannot log in, and giving up would leave it so for
    /// good. Retried in this invocation up to the attempt bound, then
    /// parked as owed for the next `rekey run`.
    async fn roll_forward_later(
        &self,
        item: &Item,
        e: StepError,
    ) -> Result<TenantOutcome, RunError> {
        let reason = match e {
            StepError::Transient(r) | StepError::Permanent(r) | StepError::Database(r) => r,
            StepError::RowChanged => "the control plane changed the tenant's row meanwhile".into(),
            StepError::LostLease => "the attempt was interrupted".into(),
        };
        let reason = if matches!(item.step, Ok(Step::Cleanup)) {
            format!(
                "clean-up of the old branch and machine not done ({reason}); the old credentials \
                 may still work; run the same `rekey run` again"
            )
        } else {
            format!(
                "the tenant's password was reset in place but its machine does not run with the \
                 new one yet ({reason}); until it does, the tenant's app cannot open new database \
                 sessions; run the same `rekey run` again"
            )
        };
        if item.attempts >= self.settings.max_attempts {
            journal::mark_owed(&self.pool, &item.key(&self.owner), &reason).await?;
        } else {
            self.retry_later(item, &reason).await?;
        }
        self.emit(item, TenantOutcome::Retrying, Some(reason));
        Ok(TenantOutcome::Retrying)
    }

    async fn steps(&self, item: &mut Item, machine_lease: &MachineLease) -> Result<(), StepError> {
        // After a resume, what this holds is asked of the clouds again.
        let mut learned = Learned::default();
        loop {
            let step = item
                .step
                .clone()
                .map_err(|unknown| StepError::Permanent(unknown.to_string()))?;
            let strategy = item.strategy(self.settings.strategy);
            let lease = if item.needs_machine_lease(step, strategy) {
                let held = self.hold_machine_lease(machine_lease, item).await?;
                if held.is_none() && step == Step::Password && !item.forward_only {
                    // Resetting now would lock out whatever machine the
                    // tenant runs on instead: give it up before that.
                    return Err(StepError::Permanent(format!(
                        "the tenant's Fly machine {} in app {} is gone; its password is not \
                         reset in place",
                        item.old_machine, item.app
                    )));
                }
                held
            } else {
                None
            };
            match step {
                Step::Queued => self.step_queued(item).await?,
                Step::Branch => self.step_branch(item, &mut learned).await?,
                Step::Password => {
                    let target = learned.target.take();
                    learned.uri = Some(self.step_password(item, strategy, target).await?);
                    learned.fresh_machine = true;
                }
                Step::Machine => {
                    let fresh = learned.fresh_machine;
                    let u = self.ensure_uri(item, &mut learned.uri).await?;
                    match strategy {
                        NeonStrategy::NewBranch => self.step_machine(item, u, fresh).await?,
                        NeonStrategy::ResetInPlace => {
                            self.step_update_machine(item, u, lease.as_ref()).await?;
                        }
                    }
                }
                Step::Started => {
                    let u = self.ensure_uri(item, &mut learned.uri).await?;
                    self.step_started(item, u).await?;
                }
                Step::Row => {
                    let u = self.ensure_uri(item, &mut learned.uri).await?;
                    self.step_row(item, u).await?;
                }
                Step::Cleanup => {
                    let roles = learned.old_roles.take();
                    self.step_cleanup(item, lease.as_ref(), machine_lease, roles)
                        .await?;
                }
                Step::Done => return Ok(()),
                Step::Compensate => {
                    return Err(StepError::Permanent(
                        "a tenant being compensated is not driven forward".into(),
                    ))
                }
            }
            self.emit(item, TenantOutcome::Stepped, None);
        }
    }

    /// Records the tenant's current resources so later steps (and a resumed
    /// process) know what to replace.
    async fn step_queued(&self, item: &mut Item) -> Result<(), StepError> {
        if item.project.is_empty()
            || item.old_branch.is_empty()
            || item.app.is_empty()
            || item.old_machine.is_empty()
        {
            return Err(StepError::Permanent(
                "the row names no Neon project/branch or Fly app/machine to replace".into(),
            ));
        }
        if journal::earlier_saga_unsettled(&self.pool, item.run_id, &item.org_id).await? {
            return Err(StepError::Transient(
                "an earlier run's clean-up or compensation of this tenant is not done yet".into(),
            ));
        }
        let next = match self.settings.strategy {
            NeonStrategy::NewBranch => Step::Branch,
            NeonStrategy::ResetInPlace => Step::Password,
        };
        self.persist(item, next, Records::Resources).await
    }

    /// The new branch's name: deterministic, so that a resumed or
    /// compensating process finds it again.
    pub(super) fn branch_name(&self, item: &Item) -> String {
        let mut name = format!("rekey-r{}-{}", item.run_id, item.slug);
        name.truncate(200);
        name
    }

    /// Creates the new branch (or adopts the one an earlier attempt made)
    /// and waits for it. A branch this call created comes with its
    /// database, role and compute host, and with the roles copied from the
    /// old branch: `learned` keeps them for the steps after.
    async fn step_branch(&self, item: &mut Item, learned: &mut Learned) -> Result<(), StepError> {
        let deadline = Instant::now() + self.settings.step_deadline;
        let mut notes = BTreeMap::new();
        notes.insert("rekey_run".to_string(), item.run_id.to_string());
        notes.insert(REKEY_ORG.to_string(), item.org_id.clone());
        let _turn = self.turns.take(&item.project).await;
        let created = self
            .neon
            .create_branch(
                &item.project,
                &item.old_branch,
                &self.branch_name(item),
                &notes,
            )
            .await?;
        let adopted = created.was_adopted();
        let made = created.into_inner();
        self.neon
            .wait_operations(&item.project, &made.operations, deadline)
            .await?;
        if !adopted {
            learned.target = Target::of(&made);
            learned.old_roles = Some(made.roles).filter(|r| !r.is_empty());
        }
        item.new_branch = Some(made.branch.id);
        self.persist(item, Step::Password, Records::NewBranch).await
    }

    /// The tenant's database and its owner role on `branch`.
    async fn database_and_role(
        &self,
        item: &Item,
        branch: &str,
    ) -> Result<(String, String), StepError> {
        let databases = self.neon.list_databases(&item.project, branch).await?;
        owned_database(branch, &databases)
    }

    /// Resets the tenant's role on the branch it ends up on and returns the
    /// new URI: built from the reset's password and `target` (what the
    /// create-branch response said) when both are there, else asked of
    /// Neon (`connection_uri`, after listing the branch's databases).
    async fn step_password(
        &self,
        item: &mut Item,
        strategy: NeonStrategy,
        target: Option<Target>,
    ) -> Result<Secret, StepError> {
        let deadline = Instant::now() + self.settings.step_deadline;
        let branch = item.target_branch().to_string();
        let Target {
            database,
            role,
            host,
        } = match target {
            Some(target) => target,
            None => {
                let (database, role) = self.database_and_role(item, &branch).await?;
                Target {
                    database,
                    role,
                    host: None,
                }
            }
        };
        if strategy == NeonStrategy::ResetInPlace && !item.forward_only {
            // Journaled before the reset is sent: a crash between the two
            // leaves a tenant that rolls forward, never one given up with
            // its machine locked out.
            owned(journal::mark_forward_only(&self.pool, &item.key(&self.owner)).await?)?;
            item.forward_only = true;
        }
        let turn = self.turns.take(&item.project).await;
        let reset = self
            .neon
            .reset_password(&item.project, &branch, &role)
            .await?;
        self.neon
            .wait_operations(&item.project, &reset.operations, deadline)
            .await?;
        drop(turn);
        let uri = match (reset.password, host) {
            (Some(password), Some(host)) => {
                build_connection_uri(&role, &password, &host, &database)
            }
            _ => {
                self.neon
                    .connection_uri(&item.project, &branch, &database, &role, false)
                    .await?
            }
        };
        self.persist(item, Step::Machine, Records::StepOnly).await?;
        Ok(uri)
    }

    /// The connection URI as Neon stores it now (after a resume: the
    /// password set by this tenant's reset, fetched again, never journaled).
    async fn current_uri(&self, item: &Item) -> Result<Secret, StepError> {
        let branch = item.target_branch().to_string();
        let (database, role) = self.database_and_role(item, &branch).await?;
        let uri = self
            .neon
            .connection_uri(&item.project, &branch, &database, &role, false)
            .await?;
        Ok(uri)
    }

    /// The URI fetched earlier in this attempt, or fetched now.
    async fn ensure_uri<'u>(
        &self,
        item: &Item,
        uri: &'u mut Option<Secret>,
    ) -> Result<&'u Secret, StepError> {
        if uri.is_none() {
            *uri = Some(self.current_uri(item).await?);
        }
        Ok(uri.as_ref().expect("set just above"))
    }

    /// The new machine's tag: deterministic, so that a resumed or
    /// compensating process finds it again.
    pub(super) fn machine_tag(item: &Item) -> String {
        format!("r{}-{}", item.run_id, item.org_id)
    }

    /// Creates the new machine from the old one's config with the new URLs.
    /// `fresh`: no earlier attempt can have created it, so Fly is not asked
    /// first whether it exists.
    async fn step_machine(
        &self,
        item: &mut Item,
        uri: &Secret,
        fresh: bool,
    ) -> Result<(), StepError> {
        let old = self
            .fly
            .get_machine(&item.app, &item.old_machine)
            .await?
            .filter(|m| m.state != "destroyed")
            .ok_or_else(|| {
                StepError::Permanent(format!(
                    "the tenant's Fly machine {} in app {} is gone (404); nothing to copy the config from",
                    item.old_machine, item.app
                ))
            })?;
        let run = item.run_id.to_string();
        let config = old.replacement_config(
            uri,
            Some(&self.redis_url),
            &Self::machine_tag(item),
            &[
                ("rekey_run", run.as_str()),
                (REKEY_ORG, item.org_id.as_str()),
                ("rekey_replaces", item.old_machine.as_str()),
            ],
        )?;
        let spec = CreateMachine {
            name: Some(format!("rekey-r{}-{}", item.run_id, item.slug)),
            region: (!old.region.is_empty()).then(|| old.region.clone()),
            config,
            skip_launch: false,
        };
        let machine = self
            .fly
            .create_machine(&item.app, &spec, !fresh)
            .await?
            .into_inner();
        item.new_machine = Some(machine.id);
        self.persist(item, Step::Started, Records::NewMachine).await
    }

    /// `reset-in-place`: updates the tenant's own machine to the new URLs
    /// (Fly restarts it with them), pinned to the version read and with
    /// the lease's nonce, unless an earlier attempt's update already
    /// landed. The machine keeps its id, volume and standbys; no machine is
    /// created, so there is none to destroy.
    async fn step_update_machine(
        &self,
        item: &mut Item,
        uri: &Secret,
        lease: Option<&Lease>,
    ) -> Result<(), StepError> {
        let machine = self
            .fly
            .get_machine(&item.app, &item.old_machine)
            .await?
            .filter(|m| !matches!(m.state.as_str(), "destroyed" | "destroying"))
            .ok_or_else(|| {
                StepError::Permanent(format!(
                    "the tenant's Fly machine {} in app {} is gone (404); it cannot be given the \
                     new password",
                    item.old_machine, item.app
                ))
            })?;
        if !machine.runs_with(uri, Some(&self.redis_url)) {
            let run = item.run_id.to_string();
            let config = machine.updated_config(
                uri,
                Some(&self.redis_url),
                &Self::machine_tag(item),
                &[
                    ("rekey_run", run.as_str()),
                    (REKEY_ORG, item.org_id.as_str()),
                ],
            )?;
            self.fly
                .update_machine(
                    &item.app,
                    &item.old_machine,
                    &config,
                    machine.instance_id.as_deref(),
                    lease,
                )
                .await?;
        }
        item.new_machine = Some(item.old_machine.clone());
        self.persist(item, Step::Started, Records::NewMachine).await
    }

    /// Waits for the new machine to start, then proves it works before
    /// anything of the old is touched: its health checks pass (when its
    /// config has any) and, with `--prove-connect on`, the new
    /// `DATABASE_URL` opens a real session. A proof that fails leaves the
    /// old machine and row alone; the tenant is retried, then compensated.
    async fn step_started(&self, item: &mut Item, uri: &Secret) -> Result<(), StepError> {
        let id = item
            .new_machine
            .clone()
            .ok_or_else(|| StepError::Permanent("no new machine recorded".into()))?;
        let deadline = Instant::now() + self.settings.step_deadline;
        let version = self.updated_version(item, &id, uri).await?;
        self.fly
            .wait_for_state(
                &item.app,
                &id,
                WaitState::Started,
                version.as_deref(),
                deadline,
            )
            .await?;
        self.fly
            .wait_healthy(&item.app, &id, self.settings.step_deadline)
            .await
            .map_err(|e| {
                StepError::Transient(format!(
                    "the new machine {id} did not prove healthy, so the old one was kept: {e}"
                ))
            })?;
        if self.settings.prove_connect {
            prove_session(uri, self.settings.prove_timeout).await?;
        }
        self.persist(item, Step::Row, Records::StepOnly).await
    }

    /// For a machine updated in place: the version that runs with the new
    /// URLs, so that the wait is for it and not for the version it
    /// replaced. `None` for a new machine (it has one version).
    async fn updated_version(
        &self,
        item: &Item,
        id: &str,
        uri: &Secret,
    ) -> Result<Option<String>, StepError> {
        if id != item.old_machine {
            return Ok(None);
        }
        let machine = self.fly.get_machine(&item.app, id).await?;
        match machine {
            Some(m) if m.runs_with(uri, Some(&self.redis_url)) => Ok(m.instance_id),
            _ => Err(StepError::Transient(format!(
                "Fly machine {id} does not run with the new URLs (its update did not land)"
            ))),
        }
    }

    /// Seals the new URLs under the new key (checked before write) and
    /// swaps them in, with the new resource ids, only if the row still
    /// holds what it held when the tenant was queued; the journal moves to
    /// `cleanup` in the same transaction.
    async fn step_row(&self, item: &mut Item, uri: &Secret) -> Result<(), StepError> {
        let cols = self
            .table
            .provision
            .as_ref()
            .ok_or(StepError::Permanent("no provision columns".into()))?;
        let new_db = self
            .keyring
            .seal_checked(uri.expose().as_bytes())
            .map_err(|e| StepError::Permanent(e.to_string()))?;
        let new_redis = self
            .keyring
            .seal_checked(self.redis_url.expose().as_bytes())
            .map_err(|e| StepError::Permanent(e.to_string()))?;
        let swap = ProvisionSwap {
            org_id: &item.org_id,
            new_db: &new_db,
            new_redis: &new_redis,
            new_branch: item.target_branch(),
            new_machine: item.new_machine.as_deref(),
            old_db: item.old_db.as_deref(),
            old_redis: item.old_redis.as_deref(),
            old_branch: &item.old_branch,
            old_machine: &item.old_machine,
        };
        let mut tx = self.pool.begin().bounded().await?;
        if org_instances::swap_provisioned(&mut tx, &self.table, cols, &swap).await? == 0 {
            tx.rollback().bounded().await?;
            return Err(StepError::RowChanged);
        }
        let key = item.key(&self.owner);
        if journal::move_to_cleanup(&mut tx, &key, self.settings.lease).await? == 0 {
            tx.rollback().bounded().await?;
            return Err(StepError::LostLease);
        }
        tx.commit().bounded().await?;
        item.step = Ok(Step::Cleanup);
        Ok(())
    }

    /// Destroys the old machine and makes the old credentials useless;
    /// `lease`'s nonce goes with the stop and the destroy, after which
    /// `machine_lease` is let go.
    async fn step_cleanup(
        &self,
        item: &mut Item,
        lease: Option<&Lease>,
        machine_lease: &MachineLease,
        old_roles: Option<Vec<Role>>,
    ) -> Result<(), StepError> {
        if item.new_machine.as_deref() != Some(item.old_machine.as_str()) {
            // Stopped with its signal and grace period, then destroyed
            // without force: the tenant's app shuts down cleanly.
            let deadline = Instant::now() + self.settings.step_deadline;
            self.fly
                .stop_then_destroy(
                    &item.app,
                    &item.old_machine,
                    &StopOptions::default(),
                    lease,
                    deadline,
                )
                .await?;
            self.machine_destroyed(machine_lease);
        }
        // Only a tenant moved to a new branch has an old one to retire; a
        // tenant reset in place is on its own branch, whatever this
        // invocation's --neon-strategy says.
        if item
            .new_branch
            .as_deref()
            .is_some_and(|b| b != item.old_branch)
        {
            self.retire_old_branch(item, old_roles).await?;
        }
        owned(journal::mark_done(&self.pool, &item.key(&self.owner)).await?)?;
        item.step = Ok(Step::Done);
        Ok(())
    }

    /// Resets every unprotected role's password on the old branch (its
    /// leaked credentials) and removes its computes. The branch itself
    /// stays: it is the new branch's parent, and Neon keeps parents. The
    /// roles are `old_roles` when this attempt created the new branch (Neon
    /// copied them from the old one), else listed. A branch that is gone
    /// (404) has nothing left to retire, nor has a role that is gone; no
    /// separate look at the branch is spent on that.
    async fn retire_old_branch(
        &self,
        item: &Item,
        old_roles: Option<Vec<Role>>,
    ) -> Result<(), StepError> {
        let deadline = Instant::now() + self.settings.step_deadline;
        let roles = match old_roles {
            Some(roles) => roles,
            None => match self.neon.list_roles(&item.project, &item.old_branch).await {
                Ok(roles) => roles,
                Err(e) if e.is_not_found() => return Ok(()),
                Err(e) => return Err(e.into()),
            },
        };
        for role in roles {
            if role.protected {
                continue;
            }
            let _turn = self.turns.take(&item.project).await;
            let reset = match self
                .neon
                .reset_password(&item.project, &item.old_branch, &role.name)
                .await
            {
                Ok(reset) => reset,
                Err(e) if e.is_not_found() => continue,
                Err(e) => return Err(e.into()),
            };
            self.neon
                .wait_operations(&item.project, &reset.operations, deadline)
                .await?;
        }
        let endpoints = match self
            .neon
            .list_branch_endpoints(&item.project, &item.old_branch)
            .await
        {
            Ok(endpoints) => endpoints,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        for ep in endpoints {
            let _turn = self.turns.take(&item.project).await;
            let ops = self.neon.delete_endpoint(&item.project, &ep.id).await?;
            self.neon
                .wait_operations(&item.project, &ops, deadline)
                .await?;
        }
        Ok(())
    }

    /// Moves the tenant to `next`, renewing the lease, with the item's
    /// columns `records` names. Fails with `LostLease` when another process
    /// owns the tenant now.
    async fn persist(
        &self,
        item: &mut Item,
        next: Step,
        records: Records,
    ) -> Result<(), StepError> {
        let updated = journal::advance(
            &self.pool,
            &item.key(&self.owner),
            &item.fields(),
            records,
            next.as_str(),
            self.settings.lease,
        )
        .await?;
        owned(updated)?;
        item.step = Ok(next);
        Ok(())
    }

    /// Leaves the tenant pending at its step, with a backoff before the
    /// next claim (the lease doubles as the retry time).
    pub(super) async fn retry_later(&self, item: &Item, reason: &str) -> Result<(), RunError> {
        let backoff_ms = (500u64 << item.attempts.clamp(0, 6)) as f64;
        journal::release_for_retry(&self.pool, &item.key(&self.owner), reason, backoff_ms).await?;
        Ok(())
    }

    /// Tells the sink where the tenant stands.
    pub(super) fn emit(&self, item: &Item, outcome: TenantOutcome, error: Option<String>) {
        self.emit_at(item, item.step_text(), outcome, error);
    }

    /// The same, naming `step` rather than the one the item is at.
    pub(super) fn emit_at(
        &self,
        item: &Item,
        step: String,
        outcome: TenantOutcome,
        error: Option<String>,
    ) {
        self.sink.emit(&Event::Tenant {
            org_id: item.org_id.clone(),
            step,
            outcome,
            error,
        });
    }
}

/// Opens one PostgreSQL session with the new `DATABASE_URL` and runs a
/// query, within `timeout`: proof that the new credentials work before
/// the old ones are retired. The error names the failure's class, never
/// the URL.
async fn prove_session(uri: &Secret, timeout: std::time::Duration) -> Result<(), StepError> {
    use sqlx::Connection;
    let refused = |what: String| {
        StepError::Transient(format!(
            "the new DATABASE_URL did not open a session ({what}), so the old machine was kept"
        ))
    };
    let session = async {
        let mut conn = sqlx::PgConnection::connect(uri.expose()).await?;
        sqlx::query("SELECT 1").execute(&mut conn).bounded().await?;
        conn.close().await
    };
    match tokio::time::timeout(timeout, session).await {
        Err(_) => Err(refused(format!("no answer within {} s", timeout.as_secs()))),
        Ok(Ok(())) => Ok(()),
        Ok(Err(sqlx::Error::Database(db))) => Err(refused(format!(
            "the server refused it, SQLSTATE {}",
            db.code().as_deref().unwrap_or("unknown")
        ))),
        Ok(Err(_)) => Err(refused("no connection".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The journal, events and progress lines all use these names: a step
    /// must read back from its name, and serialize as it.
    #[test]
    fn steps_read_back_from_and_serialize_as_their_journal_names() {
        for step in Step::ALL {
            assert_eq!(step.as_str().parse::<Step>(), Ok(step));
            assert_eq!(step.to_string(), step.as_str());
        }
        let json = serde_json::to_string(&Step::ALL).expect("serialize");
        assert_eq!(
            json,
            r#"["queued","branch","password","machine","started","row","cleanup","done","compensate"]"#
        );
        let err = "teleport".parse::<Step>().expect_err("not a step");
        assert_eq!(err.to_string(), "unknown step \"teleport\" in the journal");
    }
}
