//! Read-only walks over the whole table: the classification behind
//! `plan`, `verify`, the wrong-old-key gate and a run's final check.
//!
//! Pages are read in key order without locks (a consistent snapshot is not
//! needed: a run re-checks what it finds) and classified on rayon's pool
//! while the next page is fetched.

use std::sync::Arc;

use rayon::prelude::*;
use sqlx::PgPool;

use super::batch::{classify_row, ActionCounts, FieldCounts};
use crate::db::org_instances::{scan_page, RowFilter, StoredRow};
use crate::db::Table;
use crate::envelope::{FieldClass, Keyring, Mode, RowAction};
use crate::error::SetupError;

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

/// Classifies every row matching `filter`.
pub async fn scan(
    pool: &PgPool,
    table: &Table,
    keyring: &Arc<Keyring>,
    mode: Mode,
    filter: &RowFilter,
) -> Result<ScanResult, SetupError> {
    let mut result = ScanResult::default();
    let mut after: Option<String> = None;
    let mut pending: Option<tokio::task::JoinHandle<ScanResult>> = None;
    loop {
        let rows = scan_page(pool, table, after.as_deref(), filter, PAGE).await?;
        if let Some(job) = pending.take() {
            merge(&mut result, joined(job).await?);
        }
        let Some(last) = rows.last() else { break };
        after = Some(last.id.clone());
        let full = rows.len() as i64 == PAGE;
        let keyring = Arc::clone(keyring);
        pending = Some(tokio::task::spawn_blocking(move || {
            classify_page(&keyring, &rows, mode)
        }));
        if !full {
            break;
        }
    }
    if let Some(job) = pending.take() {
        merge(&mut result, joined(job).await?);
    }
    Ok(result)
}

async fn joined(job: tokio::task::JoinHandle<ScanResult>) -> Result<ScanResult, SetupError> {
    job.await
        .map_err(|e| SetupError::Refused(format!("scan task crashed: {e}")))
}

fn classify_page(keyring: &Keyring, rows: &[StoredRow], mode: Mode) -> ScanResult {
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
