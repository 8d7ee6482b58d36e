//! The cloud side of a re-provision: real clients for the Neon API v2
//! (`neon`) and the Fly Machines API (`fly`), the HTTP policy they share
//! (`http`: timeouts, retries, rate limits, typed errors, counters), the
//! [`Secret`] types that keep tokens, passwords and URIs out of logs
//! (`secret`), and the client that registers a fleet in the loopback fake
//! cloud for rehearsals (`register`; the fake itself is crate `fake-cloud`).
//! The re-provision state machine that drives these clients lives
//! in `rotate`, not here.

pub mod fly;
pub mod http;
pub mod neon;
pub mod register;
pub mod secret;

pub use http::{Api, CloudError, CounterSnapshot, Created, HttpOptions};
pub use secret::{Secret, SecretJson};
