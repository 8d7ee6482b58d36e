//! Property tests of the crypto core: sealing round-trips any plaintext;
//! classification never panics and calls a damaged field `undecryptable`
//! (or `kms` exactly when the damaged bytes happen to fit the KMS shape);
//! key text of any other shape is refused without being echoed; a key file
//! others can read draws a warning. Fixed vectors live in `tests/vectors.rs`.

use std::io::Write as _;

use proptest::prelude::*;
use rekey::envelope::{
    is_kms_shaped, Cipher, FieldClass, Keyring, KMS_VERSION_BYTE, NONCE_BYTES, TAG_BYTES,
};
use rekey::keys::{self, Key, KeyParseError, KEY_LEN};

const NEW: [u8; KEY_LEN] = [0x11; KEY_LEN];
const OLD: [u8; KEY_LEN] = [0x22; KEY_LEN];
/// Named in `keys::load` calls that always pass a file, so it is never read.
const UNUSED_VAR: &str = "REKEY_PROPTEST_UNUSED_KEY_VAR";
/// Byte lengths at which key text can be accepted after trimming: a raw
/// string (32), base64 of 32 bytes (44), hex (64).
const ACCEPTED_LENGTHS: [usize; 3] = [32, 44, 64];
/// A fragment of the input this long appearing in an error would be an echo,
/// not a coincidence with the error's fixed wording.
const ECHO_WINDOW: usize = 12;

fn keyring() -> Keyring {
    Keyring::new(&Key::from_bytes(NEW), Some(&Key::from_bytes(OLD)))
}

/// What classification must say about bytes that no key at hand opens.
fn expected_class_of_unopenable(blob: &[u8]) -> FieldClass {
    if blob.is_empty() {
        FieldClass::Empty
    } else if is_kms_shaped(blob) {
        FieldClass::Kms
    } else {
        FieldClass::Undecryptable
    }
}

/// Nonces, a quarter of them starting `0x02, 0x00, n`, so that sealed and
/// damaged fields also land in the KMS shape, the case that needs care.
fn nonce() -> impl Strategy<Value = [u8; NONCE_BYTES]> {
    prop_oneof![
        3 => any::<[u8; NONCE_BYTES]>(),
        1 => (any::<[u8; NONCE_BYTES]>(), 1u8..40).prop_map(|(mut n, dek_len)| {
            n[0] = KMS_VERSION_BYTE;
            n[1] = 0;
            n[2] = dek_len;
            n
        }),
    ]
}

/// A field sealed under the new or the old key, as the table holds them.
fn sealed_field() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        nonce(),
        proptest::collection::vec(any::<u8>(), 0..256),
    )
        .prop_map(|(under_new, nonce, plaintext)| {
            let key = Key::from_bytes(if under_new { NEW } else { OLD });
            Cipher::new(&key).seal_with_nonce(nonce, &plaintext)
        })
}

/// True when some `ECHO_WINDOW`-long run of `input` appears in `message`.
fn echoes(message: &[u8], input: &[u8]) -> bool {
    input.len() >= ECHO_WINDOW
        && input
            .windows(ECHO_WINDOW)
            .any(|w| message.windows(ECHO_WINDOW).any(|m| m == w))
}

/// Key-like and arbitrary text whose byte length is none of the accepted ones.
fn key_text_of_another_length() -> impl Strategy<Value = String> {
    prop_oneof![
        "[0-9a-fA-F]{0,100}",
        "[A-Za-z0-9+/=]{0,100}",
        "[ \t\r\n]{0,3}[ -~]{0,100}[ \t\r\n]{0,3}",
        "\\PC{0,100}",
    ]
    .prop_filter("length is an accepted one", |s| {
        !ACCEPTED_LENGTHS.contains(&s.len())
    })
}

fn write_key_file(contents: &[u8], mode: u32) -> tempfile::NamedTempFile {
    let mut file = tempfile::NamedTempFile::new().expect("a temporary file");
    file.write_all(contents).expect("key file written");
    set_mode(file.path(), mode);
    file
}

#[cfg(unix)]
fn set_mode(path: &std::path::Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

#[cfg(not(unix))]
fn set_mode(_path: &std::path::Path, _mode: u32) {}

proptest! {
    #[test]
    fn any_plaintext_up_to_4_kib_round_trips_with_the_documented_length(
        plaintext in proptest::collection::vec(any::<u8>(), 0..=4096),
    ) {
        let cipher = Cipher::new(&Key::from_bytes(NEW));
        let sealed = cipher.seal(&plaintext);
        prop_assert_eq!(sealed.len(), NONCE_BYTES + plaintext.len() + TAG_BYTES);
        let opened = cipher.open(&sealed);
        prop_assert_eq!(opened.as_ref().map(rekey::envelope::Plaintext::as_slice), Some(plaintext.as_slice()));
    }

    #[test]
    fn a_field_sealed_under_the_old_key_classifies_as_old_with_its_plaintext(
        plaintext in proptest::collection::vec(any::<u8>(), 0..=4096),
    ) {
        let sealed = Cipher::new(&Key::from_bytes(OLD)).seal(&plaintext);
        let classified = keyring().classify(Some(&sealed));
        prop_assert_eq!(classified.class, FieldClass::Old);
        let opened = classified.plaintext;
        prop_assert_eq!(opened.as_ref().map(rekey::envelope::Plaintext::as_slice), Some(plaintext.as_slice()));
    }

    #[test]
    fn arbitrary_bytes_classify_without_panicking_as_kms_only_when_kms_shaped(
        bytes in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..200),
            // A KMS header with a plausible DEK length, so both answers of
            // the shape check are reached.
            (any::<u8>(), proptest::collection::vec(any::<u8>(), 0..197)).prop_map(
                |(dek_len, rest)| [&[KMS_VERSION_BYTE, 0, dek_len][..], &rest].concat()
            ),
        ],
    ) {
        let classified = keyring().classify(Some(&bytes));
        prop_assert_eq!(classified.class, expected_class_of_unopenable(&bytes));
        prop_assert!(classified.plaintext.is_none());
        let without_old = Keyring::new(&Key::from_bytes(NEW), None);
        prop_assert_eq!(
            without_old.classify(Some(&bytes)).class,
            expected_class_of_unopenable(&bytes)
        );
    }

    #[test]
    fn a_truncated_sealed_field_is_undecryptable_or_kms_shaped(
        sealed in sealed_field(),
        cut in any::<prop::sample::Index>(),
        keep_front in any::<bool>(),
    ) {
        // Any strictly shorter, non-empty piece; truncation to nothing is an
        // empty field, which is `empty` by definition.
        let kept = 1 + cut.index(sealed.len() - 1);
        let damaged = if keep_front {
            &sealed[..kept]
        } else {
            &sealed[sealed.len() - kept..]
        };
        let class = keyring().classify(Some(damaged)).class;
        prop_assert_ne!(class, FieldClass::Empty);
        prop_assert_eq!(class, expected_class_of_unopenable(damaged));
    }

    #[test]
    fn a_single_bit_flip_anywhere_in_a_sealed_field_is_undecryptable_or_kms_shaped(
        mut sealed in sealed_field(),
        bit in any::<prop::sample::Index>(),
    ) {
        let bit = bit.index(sealed.len() * 8);
        sealed[bit / 8] ^= 1 << (bit % 8);
        let class = keyring().classify(Some(&sealed)).class;
        prop_assert_eq!(class, expected_class_of_unopenable(&sealed));
    }

    #[test]
    fn key_text_of_another_length_is_accepted_only_when_trimming_fits_or_refused_without_echo(
        text in key_text_of_another_length(),
    ) {
        let trimmed = text.trim();
        match text.parse::<Key>() {
            Ok(_) => prop_assert!(ACCEPTED_LENGTHS.contains(&trimmed.len()), "{text:?}"),
            Err(err) => {
                // The variants carry a length at most, so no variant can
                // carry the text; the message check guards the wording too.
                let content_free = matches!(err, KeyParseError::Empty | KeyParseError::BadHex)
                    || err == KeyParseError::UnrecognisedForm(trimmed.chars().count());
                prop_assert!(content_free, "{err:?}");
                let message = err.to_string();
                prop_assert!(!echoes(message.as_bytes(), trimmed.as_bytes()), "{message}");
            }
        }
    }

    #[test]
    fn a_key_file_of_arbitrary_bytes_loads_or_is_refused_without_echo(
        contents in proptest::collection::vec(any::<u8>(), 0..=100)
            .prop_filter("length is an accepted one", |b| !ACCEPTED_LENGTHS.contains(&b.len())),
    ) {
        let file = write_key_file(&contents, 0o600);
        match keys::load(Some(file.path()), UNUSED_VAR) {
            Ok(loaded) => prop_assert!(loaded.is_some()),
            Err(err) => {
                let message = err.to_string();
                prop_assert!(!echoes(message.as_bytes(), &contents), "{message}");
                prop_assert!(!echoes(message.as_bytes(), contents.trim_ascii()), "{message}");
            }
        }
    }
}

#[cfg(unix)]
mod key_file_mode {
    use super::*;

    const KEY_HEX: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    fn warnings_for_mode(mode: u32) -> Vec<String> {
        let file = write_key_file(format!("{KEY_HEX}\n").as_bytes(), mode);
        let loaded = keys::load(Some(file.path()), UNUSED_VAR)
            .expect("a valid key file loads")
            .expect("a file was given");
        assert_eq!(loaded.key.to_hex().as_str(), KEY_HEX);
        loaded.warnings
    }

    #[test]
    fn a_key_file_with_mode_0644_yields_a_warning_naming_the_mode_but_not_the_key() {
        let warnings = warnings_for_mode(0o644);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(warnings[0].contains("644"), "{}", warnings[0]);
        assert!(warnings[0].contains("chmod 600"), "{}", warnings[0]);
        assert!(!warnings[0].contains(KEY_HEX), "{}", warnings[0]);
    }

    #[test]
    fn a_key_file_with_mode_0600_yields_no_warning() {
        assert_eq!(warnings_for_mode(0o600), Vec::<String>::new());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn an_owner_readable_key_file_warns_exactly_when_group_or_others_have_any_access(
            other_bits in 0u32..=0o377,
        ) {
            let mode = 0o400 | other_bits;
            let warned = !warnings_for_mode(mode).is_empty();
            prop_assert_eq!(warned, mode & 0o077 != 0, "mode {:o}", mode);
        }
    }
}
