//! rekey's integration tests, one binary so the test kit compiles once.
//! Each module is a specification of one part of the tool, against real
//! PostgreSQL (a fresh database per test) and, where tenants are
//! re-provisioned, the fake cloud over loopback HTTP.
#![allow(clippy::unwrap_used)]

mod bad_input;
mod cli_help;
mod connect;
mod crash_resume;
mod envelope_props;
mod fleet_bench;
mod http_policy;
mod inplace;
mod metrics;
mod provision_caps;
mod rehearsal;
mod reprovision;
mod resilience;
mod rollback;
mod smoke;
mod vectors;
mod workers_auto;
