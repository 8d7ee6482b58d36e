//! Read-only walks over the whole table: the classification behind
//! `plan`, `verify`, the wrong-old-key gate and a run's final check.
//!
//! The whole table is read in one streamed sequential scan; a list of ids
//! (`--org`, a run's re-walk) in key-ordered pages. Either way without locks
//! (a run re-checks what it finds), and each page is classified on rayon's
//! pool while the next one arrives.

use std::sync::Arc;

use rayon::prelude::*;
use sqlx::PgPool;

use super::batch::{classify_row, ActionCounts, FieldCounts};
use super::RunError;
use crate::db::org_instances::{scan_all, scan_page, RowFilter, StoredRow};
use crate::db::Table;
use crate::envelope::{FieldClass, Keyring, Mode, RowAction};

const PAGE: i64 = 10_000;

/// Counts over the whole table, plus the ids of rows that still need work.
#[derive(Debug, Default, Clone)]
pub struct ScanResult {
    pub fields: FieldCounts,
    pub actions: ActionCounts,
    /// Rows whose action is re-encrypt (old fields, nothing undecryptable).
    pub reencrypt_ids: Vec<String>,
    /// Rows whose action is re-provision.
    pub reprovision_ids: Vec<String>,
    /// Rows holding a KMS envelope in some field (never touched).
    pub kms_rows: u64,
    /// Rows whose some field opens under neither key.
    pub undecryptable_rows: u64,
    /// Rows with at least one field that opens only under the old key.
    pub old_rows: u64,
}

/// Classifies every row matching `filter`, keeping the ids of the rows
/// that need work.
pub async fn scan(
    pool: &PgPool,
    table: &Table,
    keyring: &Arc<Keyring>,
    mode: Mode,
    filter: &RowFilter,
) -> Result<ScanResult, RunError> {
    walk(pool, table, keyring, mode, filter, true).await
}

/// The same counts without the ids (`reencrypt_ids` and
/// `reprovision_ids` stay empty): what `plan` and the confirmation need,
/// in memory that does not grow with the table (a million ids are ~70 MB).
pub async fn scan_counts(
    pool: &PgPool,
    table: &Table,
    keyring: &Arc<Keyring>,
    mode: Mode,
    filter: &RowFilter,
) -> Result<ScanResult, RunError> {
    walk(pool, table, keyring, mode, filter, false).await
}

async fn walk(
    pool: &PgPool,
    table: &Table,
    keyring: &Arc<Keyring>,
    mode: Mode,
    filter: &RowFilter,
    keep_ids: bool,
) -> Result<ScanResult, RunError> {
    let mut pages = Pages {
        keyring,
        mode,
        keep_ids,
        pending: None,
        result: ScanResult::default(),
    };
    if filter.ids.is_none() {
        // The whole table: one streamed sequential scan.
        scan_all(pool, table, PAGE as usize, async |rows| {
            pages.push(rows).await
        })
        .await?;
        let mut result = pages.finish().await?;
        // The scan's order is the heap's; sorted, reports list rows in the
        // same order from one invocation to the next.
        result.reencrypt_ids.sort_unstable();
        result.reprovision_ids.sort_unstable();
        return Ok(result);
    }
    let mut after: Option<String> = None;
    loop {
        let rows = scan_page(pool, table, after.as_deref(), filter, PAGE).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id.clone());
        let full = rows.len() as i64 == PAGE;
        pages.push(rows).await?;
        if !full {
            break;
        }
    }
    pages.finish().await
}

/// Classifies pages on rayon's pool, each while the next one is read.
struct Pages<'k> {
    keyring: &'k Arc<Keyring>,
    mode: Mode,
    keep_ids: bool,
    pending: Option<tokio::task::JoinHandle<ScanResult>>,
    result: ScanResult,
}

impl Pages<'_> {
    async fn push(&mut self, rows: Vec<StoredRow>) -> Result<(), RunError> {
        self.merge_pending().await?;
        let keyring = Arc::clone(self.keyring);
        let (mode, keep_ids) = (self.mode, self.keep_ids);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            classify_page(&keyring, &rows, mode, keep_ids)
        }));
        Ok(())
    }

    async fn finish(mut self) -> Result<ScanResult, RunError> {
        self.merge_pending().await?;
        Ok(self.result)
    }

    async fn merge_pending(&mut self) -> Result<(), RunError> {
        if let Some(job) = self.pending.take() {
            let page = job
                .await
                .map_err(|e| RunError::crashed("a scan task", &e))?;
            merge(&mut self.result, page);
        }
        Ok(())
    }
}

fn classify_page(keyring: &Keyring, rows: &[StoredRow], mode: Mode, keep_ids: bool) -> ScanResult {
    let classes: Vec<_> = rows
        .par_iter()
        .map(|r| classify_row(keyring, r, mode))
        .collect();
    let mut out = ScanResult::default();
    for (row, c) in rows.iter().zip(classes) {
        out.fields.add(c.db);
        out.fields.add(c.redis);
        out.actions.add(c.action);
        let has = |class| c.db == class || c.redis == class;
        out.kms_rows += u64::from(has(FieldClass::Kms));
        out.undecryptable_rows += u64::from(has(FieldClass::Undecryptable));
        out.old_rows += u64::from(has(FieldClass::Old));
        match c.action {
            _ if !keep_ids => {}
            RowAction::Skip => {}
            RowAction::Reencrypt => out.reencrypt_ids.push(row.id.clone()),
            RowAction::Reprovision => out.reprovision_ids.push(row.id.clone()),
        }
    }
    out
}

fn merge(into: &mut ScanResult, page: ScanResult) {
    into.fields.merge(&page.fields);
    into.actions.merge(&page.actions);
    into.reencrypt_ids.extend(page.reencrypt_ids);
    into.reprovision_ids.extend(page.reprovision_ids);
    into.kms_rows += page.kms_rows;
    into.undecryptable_rows += page.undecryptable_rows;
    into.old_rows += page.old_rows;
}
