//! The `rekey` binary: parse arguments, set up logging, dispatch, and turn
//! the outcome into an exit code (0 done, 1 not everything done, 2 usage or
//! setup error: nothing changed; 130 when a second ctrl-c stops a run). All
//! the work lives in the library.

use clap::Parser;
use rekey::cli::args::{LogFormat, OutputArgs};
use tracing_subscriber::EnvFilter;

fn main() {
    std::process::exit(try_main());
}

fn try_main() -> i32 {
    let cli = match rekey::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { 2 } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    init_logging(&cli.output);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rekey: cannot start the async runtime: {e}");
            return 2;
        }
    };
    match runtime.block_on(rekey::cli::dispatch(cli)) {
        Ok(outcome) => outcome.exit_code(),
        Err(e) => {
            eprintln!("rekey: {e}");
            e.exit_code()
        }
    }
}

/// Logs go to stderr, as text or JSON lines (`--log-format`). RUST_LOG
/// picks which; without it, warnings, or only errors with `--quiet`. No log
/// line ever carries a key, password or URL (see `redact`).
fn init_logging(output: &OutputArgs) {
    let default = if output.quiet { "error" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // Setting a second subscriber is the only way this fails, and none is
    // set before: nothing to report.
    let _ = match output.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
