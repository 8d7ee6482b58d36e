//! What the engine tells the outside world while it works.
//!
//! The engine emits [`Event`]s to an [`EventSink`] and knows nothing about
//! terminals; `progress` turns events into bars, plain lines or JSON. No
//! event carries a key, a plaintext or a URL: ids, counts and key ids only.

use std::time::Duration;

use serde::Serialize;

use crate::db::journal::RunStart;

/// One thing that happened during a command.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// A run was opened or joined.
    RunStarted {
        run_id: i64,
        start: RunStart,
        mode: String,
        new_key_id: String,
        old_key_id: Option<String>,
        /// Rows the first pass will walk.
        total_rows: u64,
        /// Tenants the pre-scan found needing re-provisioning (rows that
        /// open under neither key, tenants given up earlier included).
        to_reprovision: u64,
        /// What earlier invocations of this run already did (all zero for
        /// a new run), so that progress counts the whole run.
        earlier: Earlier,
    },
    /// An in-place pass over the table began.
    PassStarted {
        pass: u32,
        /// Rows this pass walks: the whole selection for the first pass,
        /// the rows found needing work again for later ones.
        rows: u64,
    },
    /// One in-place batch was committed.
    Batch(BatchReport),
    /// An in-place pass ended.
    PassFinished { pass: u32, changed: u64 },
    /// A re-provisioned tenant moved to a new step, finished or was given up.
    Tenant {
        org_id: String,
        /// The step's journal name
        /// ([`Step::as_str`](crate::rotate::reprovision::Step::as_str)); kept as text so that
        /// a step this build does not know (from another version's journal)
        /// is reported as it is when its tenant is given up.
        step: String,
        outcome: TenantOutcome,
        /// Set when a step failed; never contains a secret.
        error: Option<String>,
    },
    /// Something the operator should know that does not stop the run.
    Warning { message: String },
    /// Ctrl-C or SIGTERM (`signal`: `SIGINT` or `SIGTERM`): the work in
    /// flight finishes (`again`: a second signal, the process stops at once).
    Interrupted { again: bool, signal: String },
    /// The invocation is over: the run's state as it left it (`finished`,
    /// `failed`, or `running` when it stays open to resume).
    RunFinished {
        run_id: i64,
        state: String,
        reason: Option<String>,
        /// Clean-ups owed when the run concluded (0 when an error stopped
        /// it before it could count them).
        cleanup_owed: u64,
    },
}

/// What earlier invocations of a resumed run did, from its journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Earlier {
    /// Rows re-encrypted in place.
    pub reencrypted: u64,
    /// Tenants re-provisioned.
    pub tenants_done: u64,
    /// Tenants given up (their rows are still in the pre-scan's count).
    pub tenants_given_up: u64,
    /// Tenants whose row is rewritten but whose old branch and machine
    /// are still to be removed (not in the pre-scan's count).
    pub tenants_in_cleanup: u64,
}

/// The fate of a tenant at a step of its re-provision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TenantOutcome {
    Started,
    Stepped,
    Retrying,
    Done,
    GivenUp,
}

/// What one in-place batch did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BatchReport {
    pub worker: usize,
    /// Rows read.
    pub rows: u64,
    /// Rows already current (or KMS/empty only).
    pub skipped: u64,
    /// Rows rewritten under the new key.
    pub reencrypted: u64,
    /// Rows queued for re-provisioning.
    pub queued: u64,
    /// Rows left as they are and reported (undecryptable in reencrypt mode,
    /// or a failed check before write).
    pub left: u64,
    /// Rows whose compare-and-swap found them changed by someone else.
    pub conflicts: u64,
    /// Rows someone held locked when the batch was written: not waited
    /// for, walked again.
    pub held: u64,
    /// Wall time of the batch, read to commit (`latency_ms` in JSON).
    #[serde(rename = "latency_ms", serialize_with = "as_millis")]
    pub latency: Duration,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Receives events. Implementations must be cheap: the engine calls them
/// from its workers.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event);
}

/// Discards events (benchmarks, tests).
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: &Event) {}
}

/// Keeps every event (tests of the engine's events; not in release builds).
#[cfg(any(test, feature = "test-hooks"))]
#[derive(Default)]
pub struct RecordingSink(pub std::sync::Mutex<Vec<Event>>);

#[cfg(any(test, feature = "test-hooks"))]
impl EventSink for RecordingSink {
    fn emit(&self, event: &Event) {
        if let Ok(mut events) = self.0.lock() {
            events.push(event.clone());
        }
    }
}

/// Forwards every event to several sinks (a renderer and a metrics file).
pub struct FanOut(pub Vec<std::sync::Arc<dyn EventSink>>);

impl EventSink for FanOut {
    fn emit(&self, event: &Event) {
        for sink in &self.0 {
            sink.emit(event);
        }
    }
}
