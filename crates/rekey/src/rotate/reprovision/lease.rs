//! The Fly lease rekey holds on a tenant's old machine for one attempt of
//! its saga, from the step that reads the machine's config (to copy it, or
//! to update it in place) to its clean-up: a control-plane deploy or an
//! autoscaler acting on the same machine meanwhile is refused by Fly
//! instead of racing rekey, and every change rekey makes to the machine
//! carries the lease's nonce (docs/cloud-apis.md, "Leases").
//!
//! The lease lives as long as the journal's lease on the tenant (the same
//! length, renewed at the same pace): after a crash both lapse together,
//! and the process that takes the tenant up waits out what is left of the
//! old Fly lease (told apart by its description, which names the run and
//! the tenant) and takes a new one. The nonce is never journaled. A lease
//! someone else holds is a transient failure: retried, and the tenant
//! given up (or, once it may only go forward, owed) if it outlasts them.
//!
//! Not here: which steps need the lease (`step`), the HTTP calls
//! (`cloud::fly`).

use std::sync::Mutex;
use std::time::Duration;

use super::step::{Item, StepError};
use super::Reprovisioner;
use crate::cloud::fly::Lease;

/// How long giving a lease back may take before it is left to lapse.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The lease this attempt holds on its tenant's old machine, if any yet.
pub(super) struct MachineLease {
    app: String,
    machine: String,
    held: Mutex<Option<Lease>>,
}

impl MachineLease {
    /// No lease yet on `item`'s old machine.
    pub(super) fn for_item(item: &Item) -> MachineLease {
        MachineLease {
            app: item.app.clone(),
            machine: item.old_machine.clone(),
            held: Mutex::new(None),
        }
    }

    fn current(&self) -> Option<Lease> {
        self.lock().clone()
    }

    fn set(&self, lease: Option<Lease>) {
        *self.lock() = lease;
    }

    /// Nothing is left half-changed under this lock (a load or a store),
    /// so a poisoned one is taken as it is.
    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Lease>> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Reprovisioner {
    /// The Fly lease's length: the journal lease's, in whole seconds.
    fn machine_lease_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.lease.as_secs().max(1))
    }

    /// The lease on the old machine, taken now when this attempt holds
    /// none. `None` when the machine is gone or destroyed (a clean-up that
    /// destroyed it and was interrupted): there is nothing to protect, and
    /// the step decides what a missing machine means. A lease an earlier,
    /// stopped attempt at this tenant left is waited out here, since it
    /// lapses by itself within a lease length; anyone else's is a failure
    /// to retry later.
    pub(super) async fn hold_machine_lease(
        &self,
        lease: &MachineLease,
        item: &Item,
    ) -> Result<Option<Lease>, StepError> {
        if let Some(held) = lease.current() {
            return Ok(Some(held));
        }
        let description = format!("rekey run {} re-provisioning {}", item.run_id, item.org_id);
        let ttl = self.machine_lease_ttl();
        // One wait for an earlier attempt's lease, and a second in case
        // the clocks disagree about its expiry; then it counts as refused.
        let mut waits_left = 2;
        loop {
            let refusal = match self
                .fly
                .acquire_lease(&lease.app, &lease.machine, ttl, &description)
                .await
            {
                Ok(taken) => {
                    lease.set(Some(taken.clone()));
                    return Ok(Some(taken));
                }
                Err(e) if e.status() == Some(409) => e,
                // Whether the machine is gone is read from the machine,
                // not from the refusal's code (Fly documents none for it).
                Err(_) if self.machine_gone(lease).await => return Ok(None),
                Err(e) => return Err(e.into()),
            };
            match self.earlier_attempts_lease(lease, &description).await {
                Some(left) if waits_left > 0 => {
                    waits_left -= 1;
                    tokio::time::sleep(left).await;
                }
                _ => {
                    return Err(StepError::Transient(format!(
                        "Fly machine {} is leased by someone else (a deploy or an autoscaler?), \
                         so rekey does not touch it until that lease ends: {refusal}",
                        lease.machine
                    )))
                }
            }
        }
    }

    /// Whether the leased machine is gone or destroyed, as Fly shows it
    /// now (read from the machine, not from a refusal's code, which Fly
    /// does not document for this). Unknown counts as not gone.
    async fn machine_gone(&self, lease: &MachineLease) -> bool {
        match self.fly.get_machine(&lease.app, &lease.machine).await {
            Ok(None) => true,
            Ok(Some(m)) => matches!(m.state.as_str(), "destroyed" | "destroying"),
            Err(_) => false,
        }
    }

    /// Forgets the lease once its machine is destroyed: there is nothing
    /// left to hold it for, and Fly would refuse to renew it.
    pub(super) fn machine_destroyed(&self, lease: &MachineLease) {
        lease.set(None);
    }

    /// When the lease on the machine is one this tenant's saga took (its
    /// description), in an attempt that stopped without releasing it: how
    /// long until it lapses (at most a lease length, and a little more; it is
    /// waited for twice at most).
    async fn earlier_attempts_lease(
        &self,
        lease: &MachineLease,
        description: &str,
    ) -> Option<Duration> {
        let held = self
            .fly
            .show_lease(&lease.app, &lease.machine)
            .await
            .ok()
            .flatten()?;
        if held.description != description {
            return None;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let ttl = self.machine_lease_ttl();
        let left = u64::try_from(held.expires_at)
            .unwrap_or(0)
            .saturating_sub(now)
            .min(ttl.as_secs());
        Some(Duration::from_secs(left) + Duration::from_millis(250))
    }

    /// Renews the lease, when one is held, every third of its length;
    /// returns why once a renewal fails, which ends the attempt before it
    /// changes the machine without a lease.
    pub(super) async fn keep_machine_lease(&self, lease: &MachineLease) -> String {
        let ttl = self.machine_lease_ttl();
        loop {
            tokio::time::sleep(ttl / 3).await;
            let Some(held) = lease.current() else {
                continue;
            };
            match self
                .fly
                .renew_lease(&lease.app, &lease.machine, &held, ttl)
                .await
            {
                Ok(renewed) => lease.set(Some(renewed)),
                // A machine destroyed meanwhile (by the clean-up) needs no
                // lease any more; Fly refuses to renew one on it.
                Err(_) if self.machine_gone(lease).await => lease.set(None),
                Err(e) => {
                    lease.set(None);
                    return format!(
                        "the lease on Fly machine {} could not be renewed ({e}); the attempt \
                         stopped before changing the machine without it",
                        lease.machine
                    );
                }
            }
        }
    }

    /// Gives the lease back at the end of the attempt, trying for a few
    /// seconds only: the tenant's journal lease is no longer renewed here,
    /// and what follows (a retry, or giving it up) must not wait out a Fly
    /// outage first. A release that fails is left to lapse at its expiry.
    pub(super) async fn release_machine_lease(&self, lease: &MachineLease) {
        if let Some(held) = lease.current() {
            let release = self.fly.release_lease(&lease.app, &lease.machine, &held);
            let _ = tokio::time::timeout(RELEASE_TIMEOUT, release).await;
            lease.set(None);
        }
    }
}
