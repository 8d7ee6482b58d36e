//! Deciding what to do with a batch of rows: pure computation, no I/O.
//!
//! Runs on rayon's pool, off the async runtime. For each row it classifies
//! both fields, picks the row's action, and for in-place rows seals each
//! old field under the new key and opens it again before anyone may write
//! it (invariant 1). Plaintexts never leave this function.

use rayon::prelude::*;
use serde::Serialize;

use crate::db::org_instances::{StoredRow, Swap};
use crate::envelope::{row_action, FieldClass, Keyring, Mode, RowAction};

/// Counts of fields by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FieldCounts {
    pub current: u64,
    pub old: u64,
    pub kms: u64,
    pub undecryptable: u64,
    pub empty: u64,
}

impl FieldCounts {
    pub fn add(&mut self, class: FieldClass) {
        *self.slot(class) += 1;
    }

    pub fn get(&self, class: FieldClass) -> u64 {
        match class {
            FieldClass::Current => self.current,
            FieldClass::Old => self.old,
            FieldClass::Kms => self.kms,
            FieldClass::Undecryptable => self.undecryptable,
            FieldClass::Empty => self.empty,
        }
    }

    fn slot(&mut self, class: FieldClass) -> &mut u64 {
        match class {
            FieldClass::Current => &mut self.current,
            FieldClass::Old => &mut self.old,
            FieldClass::Kms => &mut self.kms,
            FieldClass::Undecryptable => &mut self.undecryptable,
            FieldClass::Empty => &mut self.empty,
        }
    }

    pub fn merge(&mut self, other: &FieldCounts) {
        for class in FieldClass::ALL {
            *self.slot(class) += other.get(class);
        }
    }
}

/// Counts of rows by action.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ActionCounts {
    pub skip: u64,
    pub reencrypt: u64,
    pub reprovision: u64,
}

impl ActionCounts {
    pub fn add(&mut self, action: RowAction) {
        match action {
            RowAction::Skip => self.skip += 1,
            RowAction::Reencrypt => self.reencrypt += 1,
            RowAction::Reprovision => self.reprovision += 1,
        }
    }

    pub fn merge(&mut self, other: &ActionCounts) {
        self.skip += other.skip;
        self.reencrypt += other.reencrypt;
        self.reprovision += other.reprovision;
    }

    pub fn total(&self) -> u64 {
        self.skip + self.reencrypt + self.reprovision
    }
}

/// The classification of one row, without plaintexts.
#[derive(Debug, Clone, Copy)]
pub struct RowClasses {
    pub db: FieldClass,
    pub redis: FieldClass,
    pub action: RowAction,
}

/// Classifies a row's two fields and picks its action.
pub fn classify_row(keyring: &Keyring, row: &StoredRow, mode: Mode) -> RowClasses {
    let db = keyring.classify(row.db.as_deref()).class;
    let redis = keyring.classify(row.redis.as_deref()).class;
    RowClasses {
        db,
        redis,
        action: row_action(&[db, redis], mode),
    }
}

/// Classifies many rows in parallel and counts them.
pub fn count_rows(
    keyring: &Keyring,
    rows: &[StoredRow],
    mode: Mode,
) -> (FieldCounts, ActionCounts) {
    rows.par_iter()
        .map(|row| classify_row(keyring, row, mode))
        .fold(
            || (FieldCounts::default(), ActionCounts::default()),
            |(mut f, mut a), c| {
                f.add(c.db);
                f.add(c.redis);
                a.add(c.action);
                (f, a)
            },
        )
        .reduce(
            || (FieldCounts::default(), ActionCounts::default()),
            |(mut f1, mut a1), (f2, a2)| {
                f1.merge(&f2);
                a1.merge(&a2);
                (f1, a1)
            },
        )
}

/// Why a row was left as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LeftReason {
    /// Opens under neither key and the mode does not re-provision.
    Undecryptable,
    /// A new ciphertext did not open to the same plaintext: never written.
    CheckBeforeWriteFailed,
    /// Someone kept the row locked for longer than the run's lock wait.
    Locked,
}

/// What to do with a batch.
#[derive(Debug, Default)]
pub struct BatchDecision {
    /// Rows to rewrite in place (compare-and-swap on the old ciphertexts).
    pub swaps: Vec<Swap>,
    /// Indices (into the batch) of rows to queue for re-provisioning.
    pub queue: Vec<usize>,
    /// Rows left as they are, with the reason.
    pub left: Vec<(String, LeftReason)>,
    pub skipped: u64,
    pub fields: FieldCounts,
}

enum RowDecision {
    Skip,
    Swap(Swap),
    Queue,
    Left(LeftReason),
}

fn decide_row(
    keyring: &Keyring,
    row: &StoredRow,
    mode: Mode,
) -> (RowDecision, FieldClass, FieldClass) {
    let db = keyring.classify(row.db.as_deref());
    let redis = keyring.classify(row.redis.as_deref());
    let (db_class, redis_class) = (db.class, redis.class);
    let decision = match row_action(&[db_class, redis_class], mode) {
        RowAction::Skip => RowDecision::Skip,
        RowAction::Reprovision if mode == Mode::Reencrypt => {
            RowDecision::Left(LeftReason::Undecryptable)
        }
        RowAction::Reprovision => RowDecision::Queue,
        RowAction::Reencrypt => {
            let reseal = |class: FieldClass,
                          pt: &Option<crate::envelope::Plaintext>,
                          stored: &Option<Vec<u8>>| {
                match (class, pt) {
                    (FieldClass::Old, Some(pt)) => keyring.seal_checked(pt).map(Some),
                    _ => Ok(stored.clone()),
                }
            };
            match (
                reseal(db_class, &db.plaintext, &row.db),
                reseal(redis_class, &redis.plaintext, &row.redis),
            ) {
                (Ok(new_db), Ok(new_redis)) => RowDecision::Swap(Swap {
                    id: row.id.clone(),
                    tid: row.tid.clone(),
                    old_db: row.db.clone(),
                    old_redis: row.redis.clone(),
                    new_db,
                    new_redis,
                }),
                _ => RowDecision::Left(LeftReason::CheckBeforeWriteFailed),
            }
        }
    };
    (decision, db_class, redis_class)
}

/// Decides a whole batch, in parallel. `budget` caps how many rows may be
/// acted on (`--limit`); rows past it are left for a later invocation and
/// not counted at all.
pub fn decide_batch(
    keyring: &Keyring,
    rows: &[StoredRow],
    mode: Mode,
    budget: Option<u64>,
) -> BatchDecision {
    let decided: Vec<(RowDecision, FieldClass, FieldClass)> = rows
        .par_iter()
        .map(|row| decide_row(keyring, row, mode))
        .collect();
    let mut out = BatchDecision::default();
    let mut acted = 0u64;
    for (index, (decision, db, redis)) in decided.into_iter().enumerate() {
        let acts = matches!(decision, RowDecision::Swap(_) | RowDecision::Queue);
        if acts && budget.is_some_and(|b| acted >= b) {
            continue;
        }
        out.fields.add(db);
        out.fields.add(redis);
        match decision {
            RowDecision::Skip => out.skipped += 1,
            RowDecision::Swap(swap) => out.swaps.push(swap),
            RowDecision::Queue => out.queue.push(index),
            RowDecision::Left(reason) => out.left.push((rows[index].id.clone(), reason)),
        }
        acted += u64::from(acts);
    }
    out
}
