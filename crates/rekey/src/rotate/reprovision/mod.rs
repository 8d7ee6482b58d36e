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
//!
//! Where things are: `schedule` (the work loop: claims, concurrency, the
//! canary and `--max-tenants`, leases), `step` (the [`Step`] list and one
//! tenant's state machine), `compensate` (giving a tenant up and removing
//! what it created), `estimate` (calls per tenant, the rate-limit bound).
//! Every statement they run is in `db::journal` (on `rekey.items`) or
//! `db::org_instances` (on the tenant's row). This file holds the public
//! types and [`build`].

mod compensate;
mod estimate;
mod lease;
mod schedule;
mod step;
mod turns;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::PgPool;

use super::RunError;
use crate::cloud::fly::{FlyClient, FlyOptions};
use crate::cloud::neon::{NeonClient, NeonOptions};
use crate::cloud::{HttpOptions, Secret};
use crate::db::Table;
use crate::envelope::Keyring;
use crate::rotate::events::EventSink;

pub use estimate::{
    throughput_bound, ThroughputBound, FLY_CALLS_PER_TENANT, NEON_CALLS_PER_TENANT,
};
pub use step::{Step, UnknownStep};

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
    /// Open a real session with each new `DATABASE_URL` before the row is
    /// swapped and the old machine stopped (`--prove-connect`, on by
    /// default; the fake cloud's URLs point nowhere, so its runs say off).
    pub prove_connect: bool,
    /// How long that session may take to open.
    pub prove_timeout: Duration,
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
    /// Clean-ups and compensations not done when the invocation ended (any
    /// run's): rows may have been swapped without a tenant counted done.
    pub cleanup_pending: u64,
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
    /// One mutating Neon operation in flight per project.
    turns: turns::ProjectTurns,
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
    let CloudAccess {
        neon_url,
        fly_url,
        neon_key,
        fly_token,
        redis_url,
    } = access;
    let (neon, fly) = clients(&neon_url, neon_key, &fly_url, fly_token, provision)?;
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
        turns: turns::ProjectTurns::default(),
    })
}

/// The Neon and Fly clients, each paced at its `--*-rps` with a burst of
/// twice that.
fn clients(
    neon_url: &str,
    neon_key: Secret,
    fly_url: &str,
    fly_token: Secret,
    provision: &CloudLimits,
) -> Result<(NeonClient, FlyClient), RunError> {
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
    let neon = NeonClient::new(
        neon_url,
        neon_key,
        NeonOptions {
            http: neon_http,
            poll_interval: provision.poll,
        },
    )?;
    let fly = FlyClient::new(
        fly_url,
        fly_token,
        FlyOptions {
            http: fly_http,
            lookup_settle: provision.lookup_settle,
        },
    )?;
    Ok((neon, fly))
}
