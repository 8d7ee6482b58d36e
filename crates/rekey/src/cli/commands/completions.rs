//! `rekey completions`.

use clap::CommandFactory;

use crate::cli::args::{Cli, CompletionsArgs};
use crate::cli::output::report;
use crate::rotate::Outcome;

/// The top-level entry point for `rekey completions`: the completion script
/// for one shell on stdout. Rendered into memory first, because
/// `clap_complete` panics when its writer fails and a closed pipe
/// (`rekey completions bash | head`) must end quietly.
pub fn completions(args: &CompletionsArgs) -> Outcome {
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "rekey", &mut script);
    report::print(&String::from_utf8_lossy(&script));
    Outcome::Done
}
