//! `rekey`: rotate a leaked `SECRETS_ENCRYPTION_KEY` across every tenant row
//! of the control plane's `org_instances` table.
//!
//! The binary (`src/main.rs`) only parses arguments and dispatches; the work
//! lives here so that integration tests and benchmarks drive the same code.
//! Where things are: `keys` and `envelope` (formats), `db` (PostgreSQL and
//! the journal), `rotate` (the engine), `cloud` (Neon, Fly, the fake cloud),
//! `progress`/`report`/`metrics` (output), `bench`/`chart` (fleet-bench),
//! `connect` (`verify --connect`).

pub mod bench;
pub mod chart;
pub mod cli;
pub mod cloud;
pub mod commands;
pub mod connect;
pub mod db;
pub mod envelope;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod rotate;
