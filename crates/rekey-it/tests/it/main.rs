//! rekey's integration tests, one binary so the test kit compiles once.
//! Each module is a specification of one part of the tool, against real
//! PostgreSQL (a fresh database per test) and, where tenants are
//! re-provisioned, the fake cloud over loopback HTTP.
#![allow(clippy::unwrap_used)]

mod bad_input;
mod cli_help;
mod confirm;
mod connect;
mod crash_resume;
mod envelope_props;
mod events_doc;
mod fleet_bench;
mod http_policy;
mod inplace;
mod ledger;
mod lifecycle;
mod metrics;
mod plan_estimate;
mod progress_screen;
mod provision_caps;
mod rehearsal;
mod reprovision;
mod reprovision_safety;
mod resilience;
mod rollback;
mod smoke;
mod vectors;
mod workers_auto;
