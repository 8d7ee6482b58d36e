//! The tool's journal in schema `rekey`: runs (`runs`), the per-batch
//! backup of the ciphertexts that in-place batches replaced (`backups`),
//! and the per-tenant state of re-provisioning (`items`). Written in the
//! same transactions as the rows it describes, so that a crash at any
//! instant leaves the two consistent. Every statement on a journal table
//! lives in that table's file.

mod backups;
mod items;
mod runs;

pub use backups::{
    backup_entry_count, claim_unrestored_backup, entries_of, has_rollback_marks, mark_restored,
    next_unrestored_backup, purge_backups, rebacked_rows, restore_totals, BackupBatch, BackupEntry,
    RestoreTotals,
};
pub use items::{
    advance, begin_compensation, claim_item, cleanup_pending_count, earlier_saga_unsettled,
    failed_and_done_among, failed_items, finish_compensation, item_ids, ledger, mark_done,
    mark_failed, mark_failed_unowned, mark_forward_only, mark_owed, move_to_cleanup, owner_of,
    pending_before_cleanup_count, pending_count, queue_items, queued_among, rearm_owed,
    refuse_pending_cleanup, release_for_retry, renew_lease, run_cleanup_owed_count, ClaimedItem,
    FailedAndDone, FailedItem, ItemFields, ItemKey, LedgerItem, Records,
};
pub use runs::{
    begin_rollback, close_run, get_run, mark_rolled_back, mark_verified, open_or_resume, open_run,
    rollback_marks, run_counts, run_of_key, RollbackMarks, RunCounts, RunRecord, RunStart,
};
