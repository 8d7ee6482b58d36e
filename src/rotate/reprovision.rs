//! Re-provisioning tenants whose ciphertexts cannot be re-encrypted: the
//! persisted per-tenant state machine over Neon and Fly.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::error::SetupError;

/// What re-provisioning did in one invocation.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ProvisionTally {
    pub done: u64,
    pub failed: u64,
}

/// Drives queued tenants through their state machine.
pub struct Reprovisioner {}

impl Reprovisioner {
    pub async fn work(
        &self,
        _run_id: i64,
        _queue_closed: Arc<AtomicBool>,
        _stop: Arc<AtomicBool>,
    ) -> Result<ProvisionTally, SetupError> {
        Ok(ProvisionTally::default())
    }
}

/// The re-provision throughput a configuration allows, with how it was reckoned.
pub struct ThroughputBound {
    pub tenants_per_sec: f64,
    pub note: String,
}

pub fn throughput_bound(_args: &crate::cli::ProvisionArgs) -> ThroughputBound {
    ThroughputBound {
        tenants_per_sec: 1.0,
        note: String::new(),
    }
}

pub fn from_environment(
    _cli: &crate::cli::Cli,
    _args: &crate::cli::RunArgs,
    _pool: &sqlx::PgPool,
    _table: &crate::db::Table,
    _keyring: &Arc<crate::envelope::Keyring>,
) -> Result<Option<Arc<Reprovisioner>>, SetupError> {
    Ok(None)
}
