//! `rekey verify`: proof that every row opens under the new key.

use std::sync::Arc;

use serde::Serialize;
use sqlx::PgPool;

use super::batch::FieldCounts;
use super::scan::scan;
use super::RunError;
use crate::db::org_instances::RowFilter;
use crate::db::{journal, Table};
use crate::envelope::{Keyring, Mode};

/// What verify found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub table: String,
    pub new_key_id: String,
    pub rows: u64,
    pub fields: FieldCounts,
    /// Rows with a field that does not open under the new key (KMS aside).
    pub failing_rows: u64,
    /// Up to 20 of them.
    pub failing_examples: Vec<String>,
    /// Every one of them, by id (`verify --all-failures`).
    #[serde(skip)]
    pub failing_all: Vec<String>,
    pub kms_rows: u64,
    /// The run recorded as verified, if any.
    pub verified_run: Option<i64>,
    pub ok: bool,
}

/// The top-level entry point for the `verify` computation. KMS envelope
/// fields are not ours and do not fail verification; they are counted.
pub async fn verify(
    pool: &PgPool,
    table: &Table,
    keyring: &Arc<Keyring>,
) -> Result<VerifyReport, RunError> {
    let result = scan(pool, table, keyring, Mode::Auto, &RowFilter::default()).await?;
    let mut failing: Vec<String> = result.reencrypt_ids.clone();
    failing.extend(result.reprovision_ids.iter().cloned());
    failing.sort();
    let ok = failing.is_empty();
    let verified_run = if ok && crate::db::journal_exists(pool).await? {
        journal::mark_verified(pool, keyring.new_key_id()).await?
    } else {
        None
    };
    Ok(VerifyReport {
        table: table.display.clone(),
        new_key_id: keyring.new_key_id().0.clone(),
        rows: result.actions.total(),
        fields: result.fields,
        failing_rows: failing.len() as u64,
        failing_examples: failing.iter().take(20).cloned().collect(),
        failing_all: failing,
        kms_rows: result.kms_rows,
        verified_run,
        ok,
    })
}
