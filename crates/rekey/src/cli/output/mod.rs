//! Everything a command prints: progress renderers of engine events
//! (`progress`), the reports (`report`), the Prometheus text file
//! (`metrics`) and fleet-bench's chart (`chart`). Renderers never decide
//! anything and never see a secret.

pub mod chart;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod totals;
