//! The tool's journal in schema `rekey`: runs (`runs`), the per-batch
//! backup of the ciphertexts that in-place batches replaced (`backups`),
//! and the per-tenant state of re-provisioning (`items`). Written in the
//! same transactions as the rows it describes, so that a crash at any
//! instant leaves the two consistent. Every statement on a journal table
//! lives in that table's file.

mod backups;
mod items;
mod runs;

pub use backups::purge_backups;
pub use items::{failed_items, queue_items, queued_among, FailedItem};
pub use runs::{
    close_run, get_run, mark_verified, open_or_resume, open_run, run_counts, run_of_key, RunCounts,
    RunRecord, RunStart,
};
