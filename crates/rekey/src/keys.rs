//! Encryption keys: parsing the accepted text forms, generation, the key id,
//! and loading a key from a file or an environment variable.
//!
//! Key bytes live only in [`Key`], which zeroizes on drop and implements
//! neither `Debug` nor `Display`, so a key cannot reach a log line by
//! accident. Errors describe what was wrong with the text ("not 64 hex
//! characters") and never contain the text itself. Ciphers built from a
//! key live in `envelope`, not here.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::{Zeroize, Zeroizing};

/// Length of an AES-256 key in bytes.
pub const KEY_LEN: usize = 32;

/// The HMAC message whose tag identifies a key (docs/design.md, "Key id").
const KEY_ID_CONTEXT: &[u8] = b"rekey key id v1";

/// What every parse error tells the operator, since the input itself is never shown.
pub const ACCEPTED_FORMS: &str = "expected 64 hex characters (`openssl rand -hex 32`), \
standard base64 of exactly 32 bytes, or a raw 32-byte string";

/// A 32-byte AES-256 key. Zeroized on drop; deliberately not printable.
pub struct Key(Zeroizing<[u8; KEY_LEN]>);

/// Why a key's text was refused. None of these carry the text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyParseError {
    #[error("the key is empty; {ACCEPTED_FORMS}")]
    Empty,
    #[error("the key is {0} characters long and is none of the accepted forms; {ACCEPTED_FORMS}")]
    UnrecognisedForm(usize),
    #[error("the key looks like hex but is not valid hex; {ACCEPTED_FORMS}")]
    BadHex,
    /// A key file's bytes are not UTF-8: no accepted form is (a raw key is
    /// 32 bytes of text, as the control plane's loader reads it).
    #[error("the key file is not text (its {0} bytes are not valid UTF-8); {ACCEPTED_FORMS}")]
    NotText(usize),
}

/// Why a key could not be loaded from where the operator pointed.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    ParseFile {
        path: PathBuf,
        source: KeyParseError,
    },
    #[error("environment variable {var}: {source}")]
    ParseEnv {
        var: &'static str,
        source: KeyParseError,
    },
    #[error("environment variable {var} is not valid UTF-8")]
    EnvNotUnicode { var: &'static str },
}

impl Key {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Key {
        let mut owned = Zeroizing::new([0u8; KEY_LEN]);
        owned.copy_from_slice(&bytes);
        let mut bytes = bytes;
        bytes.zeroize();
        Key(owned)
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Key, ring::error::Unspecified> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new().fill(&mut bytes[..])?;
        Ok(Key(bytes))
    }

    /// The raw key bytes, for building ciphers. Callers must not copy them out.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The key's public identifier: hex of the first 8 bytes of
    /// HMAC-SHA256(key, "rekey key id v1"). Safe to print and store.
    pub fn id(&self) -> KeyId {
        let mac = hmac::Key::new(hmac::HMAC_SHA256, &self.0[..]);
        let tag = hmac::sign(&mac, KEY_ID_CONTEXT);
        KeyId(hex::encode(&tag.as_ref()[..8]))
    }

    /// The key as 64 lowercase hex characters, the runbook's form.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(&self.0[..]))
    }

    /// The key as standard base64, the form the platform's loader reads first.
    pub fn to_base64(&self) -> Zeroizing<String> {
        Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&self.0[..]))
    }
}

impl FromStr for Key {
    type Err = KeyParseError;

    /// Parses, after trimming surrounding whitespace: 64 hex characters, then
    /// standard base64 decoding to 32 bytes, then a raw 32-byte string. The
    /// order matters: 64 hex characters are also valid base64 (of 48 bytes,
    /// so no clash), and a 32-character hex string is accepted as raw bytes,
    /// exactly as the control plane's loader would.
    ///
    /// Trimming would cut a raw key whose first or last byte is whitespace,
    /// so text that is exactly 32 bytes *before* trimming, and whose trimmed
    /// form is none of the forms, is taken as the raw key as it is. This is
    /// never ambiguous: when trimming removed anything, the trimmed text is
    /// shorter than 32 bytes, so it could only have been refused. Such a key
    /// must be given with nothing around it (no line ending: `printf %s`).
    /// Text that is nothing but whitespace is refused as empty.
    fn from_str(text: &str) -> Result<Key, KeyParseError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err(KeyParseError::Empty);
        }
        match parse_trimmed(trimmed) {
            Err(_) if text.len() == KEY_LEN => Ok(raw_key(text)),
            parsed => parsed,
        }
    }
}

/// The three forms, tried in order on text already trimmed.
fn parse_trimmed(text: &str) -> Result<Key, KeyParseError> {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        hex::decode_to_slice(text, &mut bytes[..]).map_err(|_| KeyParseError::BadHex)?;
        return Ok(Key(bytes));
    }
    if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(text) {
        let decoded = Zeroizing::new(decoded);
        if decoded.len() == KEY_LEN {
            bytes.copy_from_slice(&decoded);
            return Ok(Key(bytes));
        }
    }
    if text.len() == KEY_LEN {
        return Ok(raw_key(text));
    }
    if text.len() == 2 * KEY_LEN {
        return Err(KeyParseError::BadHex);
    }
    Err(KeyParseError::UnrecognisedForm(text.chars().count()))
}

/// The bytes of a 32-byte text as the key. The caller checked the length.
fn raw_key(text: &str) -> Key {
    let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
    bytes.copy_from_slice(text.as_bytes());
    Key(bytes)
}

/// A key's public identifier (16 hex characters). See [`Key::id`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a key comes from. Never the command line itself: argv is visible in `ps`.
#[derive(Debug, Clone)]
pub enum KeySource {
    File(PathBuf),
    Env(&'static str),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::File(path) => write!(f, "key file {}", path.display()),
            KeySource::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// A loaded key and anything the operator should be told about where it came from.
pub struct LoadedKey {
    pub key: Key,
    pub source: KeySource,
    pub warnings: Vec<String>,
}

/// Loads a key from `file` if given, else from the environment variable `var`
/// if set. `Ok(None)` means neither was provided.
pub fn load(file: Option<&Path>, var: &'static str) -> Result<Option<LoadedKey>, KeyLoadError> {
    if let Some(path) = file {
        return load_file(path).map(Some);
    }
    match std::env::var(var) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let key = text
                .parse::<Key>()
                .map_err(|source| KeyLoadError::ParseEnv { var, source })?;
            Ok(Some(LoadedKey {
                key,
                source: KeySource::Env(var),
                warnings: Vec::new(),
            }))
        }
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(KeyLoadError::EnvNotUnicode { var }),
    }
}

fn load_file(path: &Path) -> Result<LoadedKey, KeyLoadError> {
    let read_err = |source| KeyLoadError::Read {
        path: path.to_path_buf(),
        source,
    };
    let raw = Zeroizing::new(std::fs::read(path).map_err(read_err)?);
    let text = std::str::from_utf8(&raw).map_err(|_| KeyLoadError::ParseFile {
        path: path.to_path_buf(),
        source: KeyParseError::NotText(raw.len()),
    })?;
    let key = text
        .parse::<Key>()
        .map_err(|source| KeyLoadError::ParseFile {
            path: path.to_path_buf(),
            source,
        })?;
    let mut warnings = Vec::new();
    if let Some(mode) = group_or_other_access(path) {
        warnings.push(format!(
            "key file {} is readable by group or others (mode {mode:o}); `chmod 600` it",
            path.display()
        ));
    }
    Ok(LoadedKey {
        key,
        source: KeySource::File(path.to_path_buf()),
        warnings,
    })
}

#[cfg(unix)]
fn group_or_other_access(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
    (mode & 0o077 != 0).then_some(mode)
}

#[cfg(not(unix))]
fn group_or_other_access(_path: &Path) -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn hex_base64_and_raw_forms_parse_to_the_same_bytes() {
        let from_hex: Key = HEX.parse().unwrap();
        let b64 = from_hex.to_base64();
        let from_b64: Key = b64.parse().unwrap();
        assert_eq!(from_hex.expose_bytes(), from_b64.expose_bytes());
        let raw: Key = "abcdefghijklmnopqrstuvwxyz012345".parse().unwrap();
        assert_eq!(&raw.expose_bytes()[..], b"abcdefghijklmnopqrstuvwxyz012345");
    }

    #[test]
    fn surrounding_whitespace_is_trimmed() {
        let key: Key = format!("  {HEX}\n").parse().unwrap();
        assert_eq!(key.to_hex().as_str(), HEX);
    }

    #[test]
    fn errors_never_contain_the_input() {
        for bad in [
            "",
            "short",
            &HEX[..63],
            &format!("{HEX}00"),
            &"zz".repeat(32),
        ] {
            let err = bad.parse::<Key>().err().expect("must be refused");
            let text = err.to_string();
            assert!(text.contains("64 hex"), "{text}");
            if bad.len() > 3 {
                assert!(!text.contains(bad), "error echoed the input: {text}");
            }
        }
    }

    #[test]
    fn key_id_matches_hmac_sha256_test_vector() {
        // HMAC-SHA256(key=00..1f, "rekey key id v1") computed with Python's
        // hmac module; the id is its first 8 bytes in hex.
        let key: Key = HEX.parse().unwrap();
        assert_eq!(key.id().0.len(), 16);
        assert_eq!(key.id().0, KEY_ID_OF_HEX);
    }

    const KEY_ID_OF_HEX: &str = "cb1cf07faec54353";

    #[test]
    fn a_raw_key_with_whitespace_at_either_end_is_taken_as_it_is() {
        for raw in [
            " bcdefghijklmnopqrstuvwxyz012345",
            "abcdefghijklmnopqrstuvwxyz01234\t",
            " bcdefghijklmnopqrstuvwxyz01234 ",
        ] {
            assert_eq!(raw.len(), KEY_LEN);
            let key: Key = raw.parse().unwrap();
            assert_eq!(&key.expose_bytes()[..], raw.as_bytes());
        }
    }

    #[test]
    fn text_that_trims_to_a_valid_form_is_read_in_that_form() {
        // 32 bytes around a 30-byte text: no form once trimmed, so raw.
        let raw = format!(" {} ", "x".repeat(30));
        let key: Key = raw.parse().unwrap();
        assert_eq!(&key.expose_bytes()[..], raw.as_bytes());
        // A raw key with a line ending trims to the key.
        let key: Key = "abcdefghijklmnopqrstuvwxyz012345\n".parse().unwrap();
        assert_eq!(&key.expose_bytes()[..], b"abcdefghijklmnopqrstuvwxyz012345");
        // Whitespace only is empty, whatever its length.
        assert_eq!(
            " ".repeat(32).parse::<Key>().err(),
            Some(KeyParseError::Empty)
        );
    }

    #[test]
    fn a_key_file_that_is_not_text_is_refused_as_not_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("binary.key");
        let bytes: Vec<u8> = (0..32u8).map(|b| b.wrapping_mul(37) | 0x80).collect();
        std::fs::write(&path, &bytes).unwrap();
        let message = match load(Some(&path), "REKEY_TEST_UNUSED") {
            Err(e) => e.to_string(),
            Ok(_) => panic!("a non-UTF-8 key file must be refused"),
        };
        assert!(message.contains("not text"), "{message}");
        assert!(!message.contains("characters long"), "{message}");
    }
}
