//! The cloud side of a re-provision: real clients for the Neon API v2
//! (`neon`) and the Fly Machines API (`fly`), the HTTP policy they share
//! (`http`: timeouts, retries, rate limits, typed errors, counters), the
//! [`Secret`] types that keep tokens, passwords and URIs out of logs
//! (`secret`), and the loopback fake cloud tests and rehearsals run against
//! (`fake`). The re-provision state machine that drives these clients lives
//! in `rotate`, not here.

pub mod fake;
pub mod fly;
pub mod http;
pub mod neon;
pub mod register;
pub mod secret;

pub use http::{Api, CloudError, CounterSnapshot, Created, HttpOptions};
pub use secret::{Secret, SecretJson};
