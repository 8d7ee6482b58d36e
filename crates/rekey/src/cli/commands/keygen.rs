//! `rekey keygen`.

use std::io::Write;

use zeroize::Zeroizing;

use crate::cli::args::{Global, KeyFormat, KeygenArgs};
use crate::cli::output::report;
use crate::cli::CliError;
use crate::keys::Key;
use crate::rotate::Outcome;

/// The top-level entry point for `rekey keygen`: a fresh key to stdout or
/// to a new 0600 file; its id to stderr. With `--json`, one JSON object on
/// stdout instead: the key id, and the file or (only when it goes to
/// stdout anyway) the key itself.
pub fn keygen(global: &Global, args: &KeygenArgs) -> Result<Outcome, CliError> {
    let key =
        Key::generate().map_err(|_| CliError::Refused("the OS random source failed".into()))?;
    let text = match args.format {
        KeyFormat::Hex => key.to_hex(),
        KeyFormat::Base64 => key.to_base64(),
    };
    match &args.out {
        Some(path) => {
            let mut file = create_private(path)?;
            file.write_all(format!("{}\n", text.as_str()).as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| CliError::io(format!("writing {}", path.display()), e))?;
            if global.json {
                report::print_json(&serde_json::json!({
                    "key_id": key.id().0,
                    "file": path.display().to_string(),
                }));
            } else {
                eprintln!(
                    "wrote a new key to {} (mode 0600); key id {}",
                    path.display(),
                    key.id()
                );
            }
        }
        // With --json the key goes to stdout as a field of the one JSON
        // object, so that a script reading it gets both in one parse.
        None if global.json => report::print(&key_json_line(&key.id().0, &text)),
        None => {
            report::print(&format!("{}\n", text.as_str()));
            eprintln!("key id {}", key.id());
        }
    }
    Ok(Outcome::Done)
}

/// `{"key_id":…,"key":…}` and a newline, assembled by hand in one zeroized
/// buffer sized up front: a `serde_json::Value` would keep a copy of the key
/// that is never wiped. Neither a key id (hex) nor a key (hex or base64)
/// holds a character JSON must escape.
fn key_json_line(key_id: &str, key: &str) -> Zeroizing<String> {
    let mut line = Zeroizing::new(String::with_capacity(key_id.len() + key.len() + 32));
    for part in [r#"{"key_id":""#, key_id, r#"","key":""#, key, "\"}\n"] {
        line.push_str(part);
    }
    line
}

/// Creates `path` for writing with mode 0600; never opens an existing file.
pub(crate) fn create_private(path: &std::path::Path) -> Result<std::fs::File, CliError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            CliError::Refused(format!(
                "{} already exists; keygen never overwrites a key file",
                path.display()
            ))
        } else {
            CliError::io(format!("creating {}", path.display()), e)
        }
    })
}
