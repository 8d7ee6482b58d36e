//! The command line: clap definitions (`args`), the step from arguments
//! and environment to the engine's option structs (`config`), one entry
//! point per command (`commands`), and the renderers of what commands
//! print (`output`). Nothing below this module reads the environment or
//! knows about clap.

pub mod args;
pub mod commands;
pub mod config;
mod error;
pub mod output;

pub use args::Cli;
pub use commands::dispatch;
pub use error::CliError;
