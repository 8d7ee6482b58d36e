//! `rekey`: rotate a leaked `SECRETS_ENCRYPTION_KEY` across every tenant row
//! of the control plane's `org_instances` table.
//!
//! The binary (`main.rs`) only hands the command line to `cli`; the engine
//! below it never sees clap or the environment, so tests, benchmarks and
//! the command line drive the same code through option structs.
//!
//! Where things are: `keys` and `envelope` (the control plane's formats),
//! `redact` (the one place that hides secrets in text), `db` (PostgreSQL,
//! the control plane's table and the journal), `rotate` (the engine: plan,
//! run, in place, re-provisioning, verify), `cloud` (Neon and Fly clients),
//! `bench` (fleet-bench's measurements), `cli` (arguments, configuration,
//! one entry point per command, and the renderers of its output).

pub mod bench;
pub mod cli;
pub mod cloud;
pub mod db;
pub mod envelope;
pub mod keys;
pub mod redact;
pub mod rotate;
