//! Rotation: deciding what each row needs (`batch`, `scan`), the in-place
//! path (`inplace`) and what `plan` projects it to take
//! (`inplace_estimate`), re-provisioning (`reprovision`), and the run that ties
//! them together (`run`), and the way back from an in-place run
//! (`rollback`). `events` is what all of them report.

pub mod batch;
pub mod connect;
mod error;
pub mod events;
pub mod gate;
pub mod inplace;
pub mod inplace_estimate;
pub mod plan;
pub mod reprovision;
pub mod retry;
pub mod rollback;
pub mod run;
pub mod scan;
pub mod verify;

pub use error::{Outcome, RunError};
