//! Re-provisioning tenants whose ciphertexts cannot (or, by the operator's
//! choice, must not) be re-encrypted: a state machine per tenant, persisted
//! step by step in `rekey.items`, over the Neon and Fly clients.
//!
//! Steps, each idempotent and found again after a crash by a deterministic
//! name or tag (docs/design.md, "Re-provision state machine"):
//! `queued` → `branch` (new Neon branch from the tenant's, data kept) →
//! `password` (new role password on it) → `machine` (new Fly machine from
//! the old one's config with the new URLs) → `started` → `row` (compare-
//! and-swap of the row under the new key) → `cleanup` (old machine
//! destroyed, the old branch's leaked credentials reset and its compute
//! removed) → done. Neon refuses to delete a branch with children and the
//! new branch is the old one's child, so the old branch stays as its
//! parent, harmless, and the report says so.
//!
//! A step that fails is retried later (rolling forward) up to a bound; a
//! tenant given up has what it created removed, unless its row already
//! points at the new resources. No secret is ever stored: the connection
//! URI is fetched again from Neon when a resumed tenant needs it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::{PgPool, Row};
use tokio::time::Instant;

use super::RunError;
use crate::cloud::fly::{CreateMachine, FlyClient, FlyOptions, WaitState};
use crate::cloud::neon::{NeonClient, NeonOptions};
use crate::cloud::{CloudError, HttpOptions, Secret};
use crate::db::{DbError, ProvisionColumns, Table};
use crate::envelope::Keyring;
use crate::rotate::events::{Event, EventSink, TenantOutcome};

/// How tenants are given fresh database credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NeonStrategy {
    /// The runbook's path: a new branch (child of the tenant's, data kept),
    /// a new password on it, and the old branch's credentials reset.
    NewBranch,
    /// Keep the tenant on its branch and only reset the role password there:
    /// fewer calls and no growing branch tree.
    ResetInPlace,
}

/// Knobs of the re-provisioning engine.
#[derive(Debug, Clone)]
pub struct ProvisionSettings {
    pub concurrency: usize,
    pub strategy: NeonStrategy,
    /// Attempts per tenant before it is given up.
    pub max_attempts: i32,
    /// How long a claimed tenant stays ours without a heartbeat.
    pub lease: Duration,
    /// Deadline for one tenant's Neon operations or machine start.
    pub step_deadline: Duration,
    /// Re-provision at most this many tenants in this invocation.
    pub max_tenants: Option<u64>,
    /// Do this many tenants first; stop if any of them is given up.
    pub canary: Option<u64>,
}

/// What re-provisioning did in one invocation.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProvisionTally {
    pub done: u64,
    pub failed: u64,
    /// Set when a canary tenant failed and the rest were not started.
    pub canary_failed: bool,
    /// Set when `--max-tenants` stopped the invocation with tenants left.
    pub capped: bool,
}

/// Drives queued tenants through their state machine.
pub struct Reprovisioner {
    pub pool: PgPool,
    pub table: Table,
    pub keyring: Arc<Keyring>,
    pub neon: NeonClient,
    pub fly: FlyClient,
    pub redis_url: Secret,
    pub settings: ProvisionSettings,
    pub sink: Arc<dyn EventSink>,
    /// This process's identity in leases.
    pub owner: String,
}

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

/// A tenant's journal row plus what the row of the table said.
#[derive(Debug, Clone)]
struct Item {
    run_id: i64,
    org_id: String,
    step: String,
    attempts: i32,
    slug: String,
    project: String,
    old_branch: String,
    new_branch: Option<String>,
    app: String,
    old_machine: String,
    new_machine: Option<String>,
    old_db: Option<Vec<u8>>,
    old_redis: Option<Vec<u8>>,
}

/// Why a tenant's attempt stopped.
#[derive(Debug)]
enum StepError {
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
        let done = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let mut started: u64 = 0;
        let mut canary_passed = self.settings.canary.is_none();
        // The canary's tenants, in the order they were taken.
        let mut canary: Vec<String> = Vec::new();
        let mut tasks = tokio::task::JoinSet::new();
        let mut tally = ProvisionTally::default();
        while !stop.load(Ordering::SeqCst) {
            while tasks.len() < self.settings.concurrency.max(1) {
                let only = match self.next_claim(started, &canary, canary_passed) {
                    NextClaim::Nothing => break,
                    NextClaim::Any => None,
                    NextClaim::Only(ids) => Some(ids.to_vec()),
                };
                let Some(item) = self.claim(run_id, only.as_deref()).await? else {
                    break;
                };
                if !canary_passed && !canary.contains(&item.org_id) {
                    canary.push(item.org_id.clone());
                }
                started += 1;
                let this = Arc::clone(self);
                let (done, failed) = (Arc::clone(&done), Arc::clone(&failed));
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
            if tasks.is_empty() {
                if !canary_passed
                    && self
                        .settings
                        .canary
                        .is_some_and(|c| canary.len() as u64 >= c)
                {
                    // A canary tenant waiting for its retry has not passed:
                    // the rest wait with it, and it is taken again in turn.
                    match self.canary_state(run_id, &canary).await? {
                        CanaryState::Failed => {
                            tally.canary_failed = true;
                            break;
                        }
                        CanaryState::Passed => {
                            canary_passed = true;
                            continue;
                        }
                        CanaryState::Retrying => {}
                    }
                }
                if self.settings.max_tenants.is_some_and(|m| started >= m) {
                    tally.capped = self.pending(run_id).await? > 0;
                    break;
                }
                // With no task of ours running, every pending tenant is
                // claimable now, after its retry pause, or once another
                // process lets it go: all worth waiting for. (Asking only
                // about the later two raced with the claim just made: a
                // tenant queued or whose pause ended in between was left.)
                if queue_closed.load(Ordering::SeqCst) && self.pending(run_id).await? == 0 {
                    break;
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
        tally.done = done.load(Ordering::SeqCst);
        tally.failed = failed.load(Ordering::SeqCst);
        Ok(tally)
    }

    /// Which tenants this invocation may take next, given how many it has
    /// taken (`started`) and the canary so far.
    fn next_claim<'a>(
        &self,
        started: u64,
        canary: &'a [String],
        canary_passed: bool,
    ) -> NextClaim<'a> {
        match (canary_passed, self.settings.canary) {
            (false, Some(size)) if (canary.len() as u64) < size => NextClaim::Any,
            (false, Some(_)) => NextClaim::Only(canary),
            _ if self.settings.max_tenants.is_none_or(|m| started < m) => NextClaim::Any,
            _ => NextClaim::Nothing,
        }
    }

    /// Whether the canary's tenants are all done, one was given up, or
    /// some still wait for a retry.
    async fn canary_state(&self, run_id: i64, canary: &[String]) -> Result<CanaryState, RunError> {
        let (failed, done): (i64, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'failed'), count(*) FILTER (WHERE state = 'done')
               FROM rekey.items WHERE run_id = $1 AND org_id = ANY($2)",
        )
        .bind(run_id)
        .bind(canary)
        .fetch_one(&self.pool)
        .await?;
        Ok(if failed > 0 {
            CanaryState::Failed
        } else if done as usize == canary.len() {
            CanaryState::Passed
        } else {
            CanaryState::Retrying
        })
    }

    async fn pending(&self, run_id: i64) -> Result<i64, RunError> {
        Ok(sqlx::query_scalar(
            "SELECT count(*) FROM rekey.items WHERE run_id = $1 AND state = 'pending'",
        )
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Claims the next pending tenant whose lease is free (among `only`,
    /// when given), counting an attempt.
    async fn claim(&self, run_id: i64, only: Option<&[String]>) -> Result<Option<Item>, RunError> {
        let claimed = sqlx::query(
            "UPDATE rekey.items i
                SET owner = $2, lease_until = now() + $3 * interval '1 millisecond',
                    attempts = attempts + 1, updated_at = now()
              WHERE (i.run_id, i.org_id) = (
                    SELECT run_id, org_id FROM rekey.items
                     WHERE run_id = $1 AND state = 'pending'
                       AND (lease_until IS NULL OR lease_until < now())
                       AND ($4::text[] IS NULL OR org_id = ANY($4))
                     ORDER BY updated_at, org_id
                     LIMIT 1 FOR UPDATE SKIP LOCKED)
             RETURNING i.org_id, i.step, i.attempts, i.new_branch_id, i.new_machine_id,
                       i.old_branch_id, i.old_machine_id, i.old_db, i.old_redis",
        )
        .bind(run_id)
        .bind(&self.owner)
        .bind(self.settings.lease.as_millis() as f64)
        .bind(only)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = claimed else { return Ok(None) };
        let org_id: String = row.try_get("org_id")?;
        let cols = self.table.provision.as_ref().ok_or_else(|| {
            RunError::Db(DbError::NoResourceColumns {
                table: self.table.display.clone(),
            })
        })?;
        let tenant = self.read_tenant(cols, &org_id).await?;
        let Some((slug, project, branch, app, machine)) = tenant else {
            self.give_up_quietly(run_id, &org_id, "the tenant's row is gone")
                .await?;
            return Ok(None);
        };
        Ok(Some(Item {
            run_id,
            org_id,
            step: row.try_get("step")?,
            attempts: row.try_get("attempts")?,
            slug,
            project,
            old_branch: row
                .try_get::<Option<String>, _>("old_branch_id")?
                .unwrap_or(branch),
            new_branch: row.try_get("new_branch_id")?,
            app,
            old_machine: row
                .try_get::<Option<String>, _>("old_machine_id")?
                .unwrap_or(machine),
            new_machine: row.try_get("new_machine_id")?,
            old_db: row.try_get("old_db")?,
            old_redis: row.try_get("old_redis")?,
        }))
    }

    async fn read_tenant(
        &self,
        cols: &ProvisionColumns,
        org_id: &str,
    ) -> Result<Option<(String, String, String, String, String)>, RunError> {
        let sql = format!(
            "SELECT coalesce({slug}::text, ''), coalesce({p}::text, ''), coalesce({b}::text, ''),
                    coalesce({a}::text, ''), coalesce({m}::text, '')
               FROM {t} WHERE {id} = $1::text::{ty}",
            slug = cols.slug,
            p = cols.neon_project,
            b = cols.neon_branch,
            a = cols.fly_app,
            m = cols.fly_machine,
            t = self.table.name,
            id = self.table.id,
            ty = self.table.id_type
        );
        Ok(sqlx::query_as(&sql)
            .bind(org_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    async fn give_up_quietly(
        &self,
        run_id: i64,
        org_id: &str,
        reason: &str,
    ) -> Result<(), RunError> {
        sqlx::query(
            "UPDATE rekey.items SET state = 'failed', last_error = $3, owner = NULL, lease_until = NULL,
                    updated_at = now() WHERE run_id = $1 AND org_id = $2",
        )
        .bind(run_id)
        .bind(org_id)
        .bind(reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// One attempt at one tenant: run its remaining steps; on failure,
    /// schedule a retry or give it up (compensating).
    async fn drive(&self, mut item: Item) -> Result<TenantOutcome, RunError> {
        self.emit(&item, TenantOutcome::Started, None);
        // The lease is kept alive for as long as the steps run: a step may
        // well outlast it (a slow boot, a long 429 pause), and a tenant whose
        // lease lapsed mid-step would be claimed and driven a second time,
        // by this process or another, both creating and compensating.
        let (run_id, org_id) = (item.run_id, item.org_id.clone());
        let outcome = tokio::select! {
            outcome = self.steps(&mut item) => outcome,
            () = self.keep_lease(run_id, &org_id) => Err(StepError::LostLease),
        };
        match outcome {
            Ok(()) => {
                self.emit(&item, TenantOutcome::Done, None);
                Ok(TenantOutcome::Done)
            }
            Err(StepError::LostLease) => Ok(TenantOutcome::Stepped),
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

    /// Renews the tenant's lease every third of its length; returns (and
    /// so ends the attempt, as a crash would) once a renewal finds that the
    /// tenant is no longer ours or the journal cannot be reached.
    async fn keep_lease(&self, run_id: i64, org_id: &str) {
        let every = self.settings.lease / 3;
        loop {
            tokio::time::sleep(every).await;
            let renewed = sqlx::query(
                "UPDATE rekey.items SET lease_until = now() + $4 * interval '1 millisecond'
                  WHERE run_id = $1 AND org_id = $2 AND owner = $3 AND state = 'pending'",
            )
            .bind(run_id)
            .bind(org_id)
            .bind(&self.owner)
            .bind(self.settings.lease.as_millis() as f64)
            .execute(&self.pool)
            .await;
            if !matches!(renewed, Ok(r) if r.rows_affected() == 1) {
                return;
            }
        }
    }

    async fn steps(&self, item: &mut Item) -> Result<(), StepError> {
        // Fetched once per attempt; after a resume, again from Neon.
        let mut uri: Option<Secret> = None;
        loop {
            match item.step.as_str() {
                "queued" => self.step_queued(item).await?,
                "branch" => self.step_branch(item).await?,
                "password" => uri = Some(self.step_password(item).await?),
                "machine" => {
                    let u = self.ensure_uri(item, &mut uri).await?;
                    self.step_machine(item, u).await?;
                }
                "started" => self.step_started(item).await?,
                "row" => {
                    let u = self.ensure_uri(item, &mut uri).await?;
                    self.step_row(item, u).await?;
                }
                "cleanup" => self.step_cleanup(item).await?,
                "done" => return Ok(()),
                other => {
                    return Err(StepError::Permanent(format!(
                        "unknown step {other:?} in the journal"
                    )))
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
        let next = match self.settings.strategy {
            NeonStrategy::NewBranch => "branch",
            NeonStrategy::ResetInPlace => "password",
        };
        self.persist(
            item,
            next,
            ", neon_project_id = $4, old_branch_id = $5, fly_app = $6, old_machine_id = $7, slug = $8",
        )
        .await?;
        Ok(())
    }

    fn branch_name(&self, item: &Item) -> String {
        let mut name = format!("rekey-r{}-{}", item.run_id, item.slug);
        name.truncate(200);
        name
    }

    async fn step_branch(&self, item: &mut Item) -> Result<(), StepError> {
        let deadline = Instant::now() + self.settings.step_deadline;
        let mut notes = BTreeMap::new();
        notes.insert("rekey_run".to_string(), item.run_id.to_string());
        notes.insert("rekey_org".to_string(), item.org_id.clone());
        let created = self
            .neon
            .create_branch(
                &item.project,
                &item.old_branch,
                &self.branch_name(item),
                &notes,
            )
            .await?;
        let (branch, ops) = created.into_inner();
        self.neon
            .wait_operations(&item.project, &ops, deadline)
            .await?;
        item.new_branch = Some(branch.id);
        self.persist(item, "password", ", new_branch_id = $9").await
    }

    fn target_branch<'a>(&self, item: &'a Item) -> &'a str {
        item.new_branch.as_deref().unwrap_or(&item.old_branch)
    }

    /// The tenant's database and its owner role on `branch`.
    async fn database_and_role(
        &self,
        item: &Item,
        branch: &str,
    ) -> Result<(String, String), StepError> {
        let databases = self.neon.list_databases(&item.project, branch).await?;
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

    async fn step_password(&self, item: &mut Item) -> Result<Secret, StepError> {
        let deadline = Instant::now() + self.settings.step_deadline;
        let branch = self.target_branch(item).to_string();
        let (database, role) = self.database_and_role(item, &branch).await?;
        let ops = self
            .neon
            .reset_password(&item.project, &branch, &role)
            .await?;
        self.neon
            .wait_operations(&item.project, &ops, deadline)
            .await?;
        let uri = self
            .neon
            .connection_uri(&item.project, &branch, &database, &role, false)
            .await?;
        self.persist(item, "machine", "").await?;
        Ok(uri)
    }

    /// The connection URI as Neon stores it now (after a resume: the
    /// password set by this tenant's reset, fetched again, never journaled).
    async fn current_uri(&self, item: &Item) -> Result<Secret, StepError> {
        let branch = self.target_branch(item).to_string();
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

    fn machine_tag(item: &Item) -> String {
        format!("r{}-{}", item.run_id, item.org_id)
    }

    async fn step_machine(&self, item: &mut Item, uri: &Secret) -> Result<(), StepError> {
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
            .create_machine(&item.app, &spec)
            .await?
            .into_inner();
        item.new_machine = Some(machine.id);
        self.persist(item, "started", ", new_machine_id = $10")
            .await
    }

    async fn step_started(&self, item: &mut Item) -> Result<(), StepError> {
        let id = item
            .new_machine
            .clone()
            .ok_or_else(|| StepError::Permanent("no new machine recorded".into()))?;
        let deadline = Instant::now() + self.settings.step_deadline;
        self.fly
            .wait_for_state(&item.app, &id, WaitState::Started, None, deadline)
            .await?;
        self.persist(item, "row", "").await
    }

    /// Seals the new URLs under the new key (checked before write) and
    /// swaps them in, with the new resource ids, only if the row still
    /// holds what it held when the tenant was queued.
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
        let stamp = cols
            .updated_at
            .as_ref()
            .map(|c| format!(", {c} = now()"))
            .unwrap_or_default();
        let sql = format!(
            "UPDATE {t} SET {db} = $2, {redis} = $3, {br} = $4, {m} = $5{stamp}
              WHERE {id} = $1::text::{ty}
                AND {db} IS NOT DISTINCT FROM $6 AND {redis} IS NOT DISTINCT FROM $7
                AND {br}::text IS NOT DISTINCT FROM $8 AND {m}::text IS NOT DISTINCT FROM $9",
            t = self.table.name,
            db = self.table.db,
            redis = self.table.redis,
            br = cols.neon_branch,
            m = cols.fly_machine,
            id = self.table.id,
            ty = self.table.id_type
        );
        let mut tx = self.pool.begin().await?;
        let swapped = sqlx::query(&sql)
            .bind(&item.org_id)
            .bind(&new_db)
            .bind(&new_redis)
            .bind(self.target_branch(item))
            .bind(&item.new_machine)
            .bind(&item.old_db)
            .bind(&item.old_redis)
            .bind(&item.old_branch)
            .bind(&item.old_machine)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if swapped == 0 {
            tx.rollback().await?;
            return Err(StepError::RowChanged);
        }
        let moved = sqlx::query(
            "UPDATE rekey.items SET step = 'cleanup', updated_at = now(),
                    lease_until = now() + $4 * interval '1 millisecond'
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        )
        .bind(item.run_id)
        .bind(&item.org_id)
        .bind(&self.owner)
        .bind(self.settings.lease.as_millis() as f64)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if moved == 0 {
            tx.rollback().await?;
            return Err(StepError::LostLease);
        }
        tx.commit().await?;
        item.step = "cleanup".into();
        Ok(())
    }

    /// Destroys the old machine and makes the old credentials useless.
    async fn step_cleanup(&self, item: &mut Item) -> Result<(), StepError> {
        let deadline = Instant::now() + self.settings.step_deadline;
        if item.new_machine.as_deref() != Some(item.old_machine.as_str()) {
            self.fly
                .destroy_machine(&item.app, &item.old_machine, true)
                .await?;
        }
        if self.settings.strategy == NeonStrategy::NewBranch
            && item.new_branch.as_deref() != Some(&item.old_branch)
            && self
                .neon
                .get_branch(&item.project, &item.old_branch)
                .await?
                .is_some()
        {
            for role in self
                .neon
                .list_roles(&item.project, &item.old_branch)
                .await?
            {
                if role.protected {
                    continue;
                }
                let ops = self
                    .neon
                    .reset_password(&item.project, &item.old_branch, &role.name)
                    .await?;
                self.neon
                    .wait_operations(&item.project, &ops, deadline)
                    .await?;
            }
            for ep in self
                .neon
                .list_branch_endpoints(&item.project, &item.old_branch)
                .await?
            {
                let ops = self.neon.delete_endpoint(&item.project, &ep.id).await?;
                self.neon
                    .wait_operations(&item.project, &ops, deadline)
                    .await?;
            }
        }
        let done = sqlx::query(
            "UPDATE rekey.items SET state = 'done', step = 'done', owner = NULL, lease_until = NULL,
                    last_error = NULL, updated_at = now()
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        )
        .bind(item.run_id)
        .bind(&item.org_id)
        .bind(&self.owner)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if done == 0 {
            return Err(StepError::LostLease);
        }
        item.step = "done".into();
        Ok(())
    }

    /// Moves the tenant to `next`, renewing the lease, with extra columns
    /// set by `extra` ($4.. are the item's fields). Fails with `LostLease`
    /// when another process owns the tenant now.
    async fn persist(&self, item: &mut Item, next: &str, extra: &str) -> Result<(), StepError> {
        let mut sql = String::from(
            "UPDATE rekey.items SET step = $11, updated_at = now(),
                    lease_until = now() + $12 * interval '1 millisecond'",
        );
        sql.push_str(extra);
        sql.push_str(" WHERE run_id = $1 AND org_id = $2 AND owner = $3");
        let updated = sqlx::query(&sql)
            .bind(item.run_id)
            .bind(&item.org_id)
            .bind(&self.owner)
            .bind(&item.project)
            .bind(&item.old_branch)
            .bind(&item.app)
            .bind(&item.old_machine)
            .bind(&item.slug)
            .bind(&item.new_branch)
            .bind(&item.new_machine)
            .bind(next)
            .bind(self.settings.lease.as_millis() as f64)
            .execute(&self.pool)
            .await?
            .rows_affected();
        if updated == 0 {
            return Err(StepError::LostLease);
        }
        item.step = next.to_string();
        Ok(())
    }

    /// Leaves the tenant pending at its step, with a backoff before the
    /// next claim (the lease doubles as the retry time).
    async fn retry_later(&self, item: &Item, reason: &str) -> Result<(), RunError> {
        let backoff_ms = (500u64 << item.attempts.clamp(0, 6)) as f64;
        sqlx::query(
            "UPDATE rekey.items SET last_error = $4, owner = NULL, updated_at = now(),
                    lease_until = now() + $5 * interval '1 millisecond'
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        )
        .bind(item.run_id)
        .bind(&item.org_id)
        .bind(&self.owner)
        .bind(reason)
        .bind(backoff_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Gives a tenant up: removes what this run created for it unless its
    /// row already points there, and records the reason.
    async fn give_up(&self, item: &mut Item, reason: &str) -> Result<TenantOutcome, RunError> {
        let swapped = matches!(item.step.as_str(), "cleanup" | "done");
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
        sqlx::query(
            "UPDATE rekey.items SET state = 'failed', last_error = $4, owner = NULL, lease_until = NULL,
                    updated_at = now()
              WHERE run_id = $1 AND org_id = $2 AND owner = $3",
        )
        .bind(item.run_id)
        .bind(&item.org_id)
        .bind(&self.owner)
        .bind(&reason)
        .execute(&self.pool)
        .await?;
        self.emit(item, TenantOutcome::GivenUp, Some(reason));
        Ok(TenantOutcome::GivenUp)
    }

    async fn still_owns(&self, item: &Item) -> Result<bool, RunError> {
        let owner: Option<Option<String>> =
            sqlx::query_scalar("SELECT owner FROM rekey.items WHERE run_id = $1 AND org_id = $2")
                .bind(item.run_id)
                .bind(&item.org_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(owner.flatten().as_deref() == Some(self.owner.as_str()))
    }

    /// Deletes the machine and branch this run created for the tenant,
    /// finding them by tag and name even when the journal missed their ids,
    /// but never what the tenant's row names now (whoever wrote it there).
    async fn compensate(&self, item: &Item) -> Result<(), CloudError> {
        let named = match &self.table.provision {
            Some(cols) => self.read_tenant(cols, &item.org_id).await.ok().flatten(),
            None => None,
        };
        let (row_branch, row_machine) = named
            .map(|(_, _, branch, _, machine)| (branch, machine))
            .unwrap_or_default();
        let tag = Self::machine_tag(item);
        let tagged = self
            .fly
            .list_machines(
                &item.app,
                &[(crate::cloud::fly::ITEM_TAG, tag.as_str())],
                false,
            )
            .await?;
        for m in tagged
            .iter()
            .filter(|m| m.id != item.old_machine && m.id != row_machine)
        {
            self.fly.destroy_machine(&item.app, &m.id, true).await?;
        }
        if self.settings.strategy == NeonStrategy::NewBranch && !item.project.is_empty() {
            if let Some(branch) = self
                .neon
                .find_branch_by_name(&item.project, &self.branch_name(item))
                .await?
            {
                if branch.id != item.old_branch && branch.id != row_branch {
                    let ops = self.neon.delete_branch(&item.project, &branch.id).await?;
                    let deadline = Instant::now() + self.settings.step_deadline;
                    self.neon
                        .wait_operations(&item.project, &ops, deadline)
                        .await?;
                }
            }
        }
        Ok(())
    }

    fn emit(&self, item: &Item, outcome: TenantOutcome, error: Option<String>) {
        self.sink.emit(&Event::Tenant {
            org_id: item.org_id.clone(),
            step: item.step.clone(),
            outcome,
            error,
        });
    }
}

/// API calls one tenant costs on the default path, for estimates: Neon
/// create branch, op polls, list databases (x2), reset, op polls, URI,
/// cleanup (get branch, list roles, reset, polls, list endpoints, delete
/// endpoint, polls); Fly get, list by tag, create, wait, destroy.
pub const NEON_CALLS_PER_TENANT: f64 = 14.0;
pub const FLY_CALLS_PER_TENANT: f64 = 5.0;

/// The re-provision throughput a configuration allows, with how it was reckoned.
pub struct ThroughputBound {
    pub tenants_per_sec: f64,
    pub note: String,
}

/// The bound set by the rate limits alone (what `plan` can know without
/// measuring latency): tenants/s ≤ min(neon_rps / neon calls, fly_rps / fly calls).
pub fn throughput_bound(args: &CloudLimits) -> ThroughputBound {
    let neon = args.neon_rps as f64 / NEON_CALLS_PER_TENANT;
    let fly = args.fly_rps as f64 / FLY_CALLS_PER_TENANT;
    ThroughputBound {
        tenants_per_sec: neon.min(fly),
        note: format!(
            "re-provision bounded by rate limits: Neon {} req/s / {} calls per tenant, Fly {} req/s / {} calls \
             (measure latency-bound figures with fleet-bench)",
            args.neon_rps, NEON_CALLS_PER_TENANT, args.fly_rps, FLY_CALLS_PER_TENANT
        ),
    }
}

/// Client-side pacing of the cloud APIs (what `--neon-rps` and friends set).
#[derive(Debug, Clone)]
pub struct CloudLimits {
    /// Neon API requests per second.
    pub neon_rps: u32,
    /// Fly API requests per second.
    pub fly_rps: u32,
    /// Pause between polls of a pending Neon operation.
    pub poll: Duration,
    /// Pause before looking a Fly machine up after an ambiguous create.
    pub lookup_settle: Duration,
}

/// Where the clouds are and what re-provisioning needs to reach them.
pub struct CloudAccess {
    pub neon_url: String,
    pub fly_url: String,
    pub neon_key: Secret,
    pub fly_token: Secret,
    /// The Redis URL every re-provisioned tenant's machine is given.
    pub redis_url: Secret,
}

/// Builds a re-provisioner (the command line, fleet-bench and tests).
pub fn build(
    access: CloudAccess,
    provision: &CloudLimits,
    settings: ProvisionSettings,
    pool: &PgPool,
    table: &Table,
    keyring: &Arc<Keyring>,
    sink: &Arc<dyn EventSink>,
) -> Result<Reprovisioner, RunError> {
    let neon_http = HttpOptions {
        rate_per_second: provision.neon_rps as f64,
        burst: provision.neon_rps.max(1) * 2,
        ..HttpOptions::neon_defaults()
    };
    let fly_http = HttpOptions {
        rate_per_second: provision.fly_rps as f64,
        burst: provision.fly_rps.max(1) * 2,
        ..HttpOptions::fly_defaults()
    };
    let CloudAccess {
        neon_url,
        fly_url,
        neon_key,
        fly_token,
        redis_url,
    } = access;
    let neon = NeonClient::new(
        &neon_url,
        neon_key,
        NeonOptions {
            http: neon_http,
            poll_interval: provision.poll,
        },
    )?;
    let fly = FlyClient::new(
        &fly_url,
        fly_token,
        FlyOptions {
            http: fly_http,
            lookup_settle: provision.lookup_settle,
        },
    )?;
    Ok(Reprovisioner {
        pool: pool.clone(),
        table: table.clone(),
        keyring: Arc::clone(keyring),
        neon,
        fly,
        redis_url,
        settings,
        sink: Arc::clone(sink),
        owner: format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple()),
    })
}
