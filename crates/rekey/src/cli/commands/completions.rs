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
    clap_complete::generate(args.shell, &mut visible_command(), "rekey", &mut script);
    report::print(&String::from_utf8_lossy(&script));
    Outcome::Done
}

/// The command line as an operator may use it: clap_complete offers hidden
/// subcommands too (`register-fake-cloud`, a test aid), and clap cannot
/// remove one, so the completion command is rebuilt from the visible ones
/// and the global options.
fn visible_command() -> clap::Command {
    let full = Cli::command();
    clap::Command::new("rekey")
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned())
}
