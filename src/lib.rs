//! `rekey`: rotate a leaked `SECRETS_ENCRYPTION_KEY` across every tenant row
//! of the control plane's `org_instances` table.
//!
//! The binary (`src/main.rs`) only parses arguments and dispatches; the work
//! lives here so that integration tests and benchmarks drive the same code.

pub mod cloud;
pub mod envelope;
pub mod keys;
