//! The checks a run passes before it writes anything: no other run open
//! under another new key, the wrong-old-key gate, and what re-provisioning
//! needs (cloud credentials, the table's resource columns). A refusal here
//! changes nothing, not even the journal's schema: these checks read the
//! journal only when it exists, and `run` applies the migrations after them.

use super::run::{RunContext, RunOptions};
use super::scan::{scan, ScanResult};
use super::RunError;
use crate::db::org_instances::RowFilter;
use crate::db::{self, journal, DbError};
use crate::envelope::Mode;

/// Refuses a new key other than the open run's before anything else is
/// checked: the gate or the cloud check would otherwise speak first and send
/// the operator after the wrong cause (`open_or_resume` checks again, under
/// the unique index, for a run opened meanwhile).
pub(crate) async fn refuse_other_open_run(ctx: &RunContext) -> Result<(), RunError> {
    if !db::journal_exists(&ctx.pool).await? {
        return Ok(());
    }
    match journal::open_run(&ctx.pool).await? {
        Some(open) if open.new_key_id != ctx.keyring.new_key_id().0 => {
            Err(DbError::OpenRunWithOtherKey {
                run_id: open.id,
                open_key: open.new_key_id,
                given_key: ctx.keyring.new_key_id().clone(),
            }
            .into())
        }
        _ => Ok(()),
    }
}

/// Checks, before anything is written, that the run can do what it is
/// asked: the wrong-old-key gate first (a wrong key is the likelier story),
/// then cloud credentials if tenants need re-provisioning. Returns the pre-scan when one was needed.
pub(crate) async fn preflight(
    ctx: &RunContext,
    opts: &RunOptions,
    filter: &RowFilter,
) -> Result<Option<ScanResult>, RunError> {
    if opts.mode == Mode::Reencrypt {
        return Ok(None);
    }
    let prescan = scan(&ctx.pool, &ctx.table, &ctx.keyring, opts.mode, filter).await?;
    let to_reprovision = prescan.reprovision_ids.len() as u64;
    if to_reprovision == 0 {
        return Ok(Some(prescan));
    }
    if opts.mode == Mode::Auto && ctx.keyring.old_key_id().is_some() {
        let already = reencrypted_by_this_key(ctx).await?;
        let opened = prescan.reencrypt_ids.len() as u64 + already;
        if gate_trips(opened, to_reprovision) && opts.confirm_reprovision != Some(to_reprovision) {
            return Err(RunError::GateTripped {
                opened,
                total: opened + to_reprovision,
                to_reprovision,
            });
        }
    }
    if ctx.reprovisioner.is_none() {
        return Err(RunError::NoCloudCredentials {
            tenants: to_reprovision,
        });
    }
    if ctx.table.provision.is_none() {
        return Err(RunError::NoProvisionColumns {
            tenants: to_reprovision,
            table: ctx.table.display.clone(),
        });
    }
    Ok(Some(prescan))
}

/// Rows the run of this new key has already re-encrypted, whatever its
/// state: they opened under the old key once, and a run that ended failed
/// (its `next:` says to run the same command again) or finished must not
/// be refused for having done its work.
async fn reencrypted_by_this_key(ctx: &RunContext) -> Result<u64, RunError> {
    if !db::journal_exists(&ctx.pool).await? {
        return Ok(0);
    }
    Ok(
        match journal::run_of_key(&ctx.pool, ctx.keyring.new_key_id()).await? {
            Some(run) => journal::run_counts(&ctx.pool, run.id).await?.reencrypted as u64,
            None => 0,
        },
    )
}

/// The wrong-old-key gate (docs/design.md, "Invariants"): trips when the old
/// key opens fewer than half of the rows that need work.
pub fn gate_trips(opened: u64, unopened: u64) -> bool {
    unopened > 0 && opened < unopened
}
