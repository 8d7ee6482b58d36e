//! The `rekey` binary: parse arguments, set up logging, dispatch, and turn
//! the outcome into an exit code (0 done, 1 not everything done, 2 usage or
//! setup error: nothing changed). All the work lives in the library.

use clap::Parser;

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
    // Logs go to stderr and default to warnings only; RUST_LOG opens more.
    // No log line ever carries a key, password or URL (see `redact`).
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
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
