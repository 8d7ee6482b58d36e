//! The control plane's ciphertext format, sealing and opening, and the
//! classification of a stored field against the new and old keys.
//!
//! Static-key format: `nonce (12 random bytes) || AES-256-GCM ciphertext ||
//! tag (16 bytes)`, no associated data: the bytes Go's
//! `gcm.Seal(nonce, nonce, plaintext, nil)` returns. KMS envelope ("v2")
//! blobs are recognised by shape only and never opened or written.
//!
//! The AES-GCM backend is `ring`, chosen by measurement (README,
//! "Performance"): it is the only thing in this file that names `ring`, so
//! changing backend is a change to [`Cipher`] alone. Database access and
//! row-level decisions about batches live in `rotate`, not here.

use rand::RngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use zeroize::Zeroize;

use crate::keys::{Key, KeyId};

/// Bytes of the random nonce that starts every static-key blob.
pub const NONCE_BYTES: usize = NONCE_LEN;
/// Bytes of the GCM tag that ends every static-key blob.
pub const TAG_BYTES: usize = 16;
/// First byte of a KMS envelope ("v2") blob.
pub const KMS_VERSION_BYTE: u8 = 0x02;

/// An AES-256-GCM cipher for one key, built once and shared by every worker.
pub struct Cipher {
    key: LessSafeKey,
    id: KeyId,
}

/// A plaintext that has been opened: its whole allocation is zeroed on
/// drop, and it cannot be printed.
///
/// Not `Zeroizing<Vec<u8>>`: that zeroes a `Vec` one volatile byte store at
/// a time, which cost a third of a 128-byte rekey in the cipher benchmark;
/// zeroing the slice goes through `zeroize`'s bulk path (a fill plus an
/// optimisation barrier).
pub struct Plaintext(Vec<u8>);

impl Plaintext {
    pub fn as_slice(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::Deref for Plaintext {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Plaintext {
    fn drop(&mut self) {
        self.0.as_mut_slice().zeroize();
        // The tag's bytes (and whatever a failed open left) sit past `len`.
        self.0.spare_capacity_mut().zeroize();
    }
}

impl Cipher {
    pub fn new(key: &Key) -> Cipher {
        let unbound = UnboundKey::new(&AES_256_GCM, key.expose_bytes())
            .expect("a 32-byte key is always a valid AES-256 key");
        Cipher {
            key: LessSafeKey::new(unbound),
            id: key.id(),
        }
    }

    /// The id of the key this cipher was built from.
    pub fn key_id(&self) -> &KeyId {
        &self.id
    }

    /// Seals `plaintext` under a fresh random nonce: `nonce || ct || tag`.
    pub fn seal(&self, plaintext: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_BYTES];
        // The thread-local CSPRNG is seeded from the OS and reseeds itself; a
        // syscall per field would cost more than the encryption.
        rand::thread_rng().fill_bytes(&mut nonce);
        self.seal_with_nonce(nonce, plaintext)
    }

    /// Seals under a caller-chosen nonce. For test vectors only: reusing a
    /// nonce under one key destroys GCM's confidentiality and integrity.
    #[doc(hidden)]
    pub fn seal_with_nonce(&self, nonce: [u8; NONCE_BYTES], plaintext: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(NONCE_BYTES + plaintext.len() + TAG_BYTES);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plaintext);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut out[NONCE_BYTES..],
            )
            .expect("AES-GCM sealing only fails for inputs over 64 GiB");
        out.extend_from_slice(tag.as_ref());
        out
    }

    /// Re-encrypts a blob sealed under `from` to this cipher's key, in one
    /// buffer: open in place, fresh nonce, seal in place. Encryption
    /// overwrites the plaintext, so nothing secret is left to zero. `None`
    /// when the blob does not open under `from`.
    pub fn reseal(&self, from: &Cipher, blob: &[u8]) -> Option<Vec<u8>> {
        if blob.len() < NONCE_BYTES + TAG_BYTES {
            return None;
        }
        let old_nonce = Nonce::try_assume_unique_for_key(&blob[..NONCE_BYTES]).ok()?;
        // Plaintext-holding until sealed: a failed open leaves it zeroed.
        let mut buf = Plaintext(blob.to_vec());
        let len = from
            .key
            .open_in_place(old_nonce, Aad::empty(), &mut buf.0[NONCE_BYTES..])
            .ok()?
            .len();
        buf.0.truncate(NONCE_BYTES + len);
        let mut nonce = [0u8; NONCE_BYTES];
        rand::thread_rng().fill_bytes(&mut nonce);
        buf.0[..NONCE_BYTES].copy_from_slice(&nonce);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::empty(),
                &mut buf.0[NONCE_BYTES..],
            )
            .expect("AES-GCM sealing only fails for inputs over 64 GiB");
        // Same length as the input, so this never reallocates (which would
        // free a copy of the plaintext unzeroed).
        buf.0.extend_from_slice(tag.as_ref());
        Some(std::mem::take(&mut buf.0))
    }

    /// Opens a static-key blob. `None` when it does not open under this key:
    /// too short, wrong key, or altered. We cannot tell those apart, and a
    /// failed open is the ordinary way to learn which key a field is under,
    /// so it is not an error.
    pub fn open(&self, blob: &[u8]) -> Option<Plaintext> {
        if blob.len() < NONCE_BYTES + TAG_BYTES {
            return None;
        }
        let (nonce, sealed) = blob.split_at(NONCE_BYTES);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        // Wrapped before opening: a failed open leaves the buffer in an
        // unspecified state, possibly holding plaintext, and it is zeroed too.
        let mut buf = Plaintext(sealed.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf.0[..])
            .ok()?
            .len();
        buf.0.truncate(len);
        Some(buf)
    }
}

/// What a stored field is, relative to the keys at hand.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldClass {
    /// NULL or zero bytes.
    Empty,
    /// Opens under the new key: already rotated.
    Current,
    /// Opens under the old key: can be re-encrypted in place.
    Old,
    /// A KMS envelope blob: not ours to touch.
    Kms,
    /// Opens under neither key and is not KMS-shaped.
    Undecryptable,
}

impl FieldClass {
    pub const ALL: [FieldClass; 5] = [
        FieldClass::Current,
        FieldClass::Old,
        FieldClass::Kms,
        FieldClass::Undecryptable,
        FieldClass::Empty,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FieldClass::Empty => "empty",
            FieldClass::Current => "current",
            FieldClass::Old => "old",
            FieldClass::Kms => "kms",
            FieldClass::Undecryptable => "undecryptable",
        }
    }
}

/// True when `blob` has the shape of a KMS envelope:
/// `0x02 || u16 BE dek_len || wrapped DEK || nonce (12) || ciphertext+tag`.
pub fn is_kms_shaped(blob: &[u8]) -> bool {
    if blob.len() < 3 || blob[0] != KMS_VERSION_BYTE {
        return false;
    }
    let dek_len = u16::from_be_bytes([blob[1], blob[2]]) as usize;
    dek_len > 0 && blob.len() >= 3 + dek_len + NONCE_BYTES + TAG_BYTES
}

/// A field after classification, with its plaintext when a key opened it.
pub struct Classified {
    pub class: FieldClass,
    pub plaintext: Option<Plaintext>,
}

/// The new key and, when the operator has it, the old one.
pub struct Keyring {
    new: Cipher,
    old: Option<Cipher>,
    /// Seals new ciphertexts in place of `new`, in tests that prove a
    /// ciphertext that does not open under the new key is never written.
    /// Not in release builds.
    #[cfg(any(test, feature = "test-hooks"))]
    sealer: Option<Cipher>,
}

/// A field that could not be re-encrypted safely.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RekeyError {
    #[error("the new ciphertext did not open under the new key to the same plaintext")]
    VerifyFailed,
}

impl Keyring {
    pub fn new(new: &Key, old: Option<&Key>) -> Keyring {
        Keyring {
            new: Cipher::new(new),
            old: old.map(Cipher::new),
            #[cfg(any(test, feature = "test-hooks"))]
            sealer: None,
        }
    }

    /// A keyring whose sealing key differs from its new key: every rekey must
    /// then fail its check before write. For tests of invariant 1 only.
    #[cfg(any(test, feature = "test-hooks"))]
    pub fn with_mismatched_sealer(new: &Key, old: Option<&Key>, sealer: &Key) -> Keyring {
        Keyring {
            sealer: Some(Cipher::new(sealer)),
            ..Keyring::new(new, old)
        }
    }

    pub fn new_cipher(&self) -> &Cipher {
        &self.new
    }

    pub fn old_cipher(&self) -> Option<&Cipher> {
        self.old.as_ref()
    }

    pub fn new_key_id(&self) -> &KeyId {
        self.new.key_id()
    }

    pub fn old_key_id(&self) -> Option<&KeyId> {
        self.old.as_ref().map(Cipher::key_id)
    }

    /// Classifies a field in docs/design.md's order: current, old, kms,
    /// undecryptable. GCM is tried before the KMS shape because 1 in 256
    /// static-key blobs starts with 0x02 by chance, while a GCM open that
    /// succeeds cannot be a coincidence.
    pub fn classify(&self, field: Option<&[u8]>) -> Classified {
        let blob = match field {
            None => return classified(FieldClass::Empty, None),
            Some([]) => return classified(FieldClass::Empty, None),
            Some(blob) => blob,
        };
        if let Some(pt) = self.new.open(blob) {
            return classified(FieldClass::Current, Some(pt));
        }
        if let Some(pt) = self.old.as_ref().and_then(|old| old.open(blob)) {
            return classified(FieldClass::Old, Some(pt));
        }
        if is_kms_shaped(blob) {
            return classified(FieldClass::Kms, None);
        }
        classified(FieldClass::Undecryptable, None)
    }

    /// Seals `plaintext` under the new key and checks, before anyone writes
    /// it, that it opens again under the new key to the same bytes.
    pub fn seal_checked(&self, plaintext: &[u8]) -> Result<Vec<u8>, RekeyError> {
        #[cfg(any(test, feature = "test-hooks"))]
        let sealed = self.sealer.as_ref().unwrap_or(&self.new).seal(plaintext);
        #[cfg(not(any(test, feature = "test-hooks")))]
        let sealed = self.new.seal(plaintext);
        match self.new.open(&sealed) {
            Some(reopened) if reopened.as_slice() == plaintext => Ok(sealed),
            _ => Err(RekeyError::VerifyFailed),
        }
    }
}

fn classified(class: FieldClass, plaintext: Option<Plaintext>) -> Classified {
    Classified { class, plaintext }
}

/// What to do with a whole row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowAction {
    /// Every field is current or empty (KMS fields are never touched).
    Skip,
    /// Some field opens only under the old key; none is undecryptable.
    Reencrypt,
    /// Some field opens under neither key: the tenant needs fresh credentials.
    Reprovision,
}

impl RowAction {
    pub const ALL: [RowAction; 3] = [
        RowAction::Skip,
        RowAction::Reencrypt,
        RowAction::Reprovision,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RowAction::Skip => "skip",
            RowAction::Reencrypt => "reencrypt",
            RowAction::Reprovision => "reprovision",
        }
    }
}

/// How the operator asked rows to be rotated (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Re-encrypt what the old key opens, re-provision the rest.
    Auto,
    /// In place only; undecryptable rows are reported and left alone.
    Reencrypt,
    /// Every non-current tenant gets fresh credentials.
    Reprovision,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Auto => "auto",
            Mode::Reencrypt => "reencrypt",
            Mode::Reprovision => "reprovision",
        }
    }
}

/// The action docs/design.md's classification rules give a row whose fields
/// are `classes`. KMS fields never force an action.
pub fn row_action(classes: &[FieldClass], mode: Mode) -> RowAction {
    let has = |c: FieldClass| classes.contains(&c);
    if classes
        .iter()
        .all(|c| matches!(c, FieldClass::Current | FieldClass::Empty | FieldClass::Kms))
    {
        return RowAction::Skip;
    }
    if mode == Mode::Reprovision || has(FieldClass::Undecryptable) {
        return RowAction::Reprovision;
    }
    RowAction::Reencrypt
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(byte: u8) -> Key {
        Key::from_bytes([byte; 32])
    }

    #[test]
    fn sealed_field_round_trips_and_has_the_documented_layout() {
        let cipher = Cipher::new(&key(1));
        let sealed = cipher.seal(b"postgres://u:p@h/db");
        assert_eq!(sealed.len(), NONCE_BYTES + 19 + TAG_BYTES);
        assert_eq!(
            cipher.open(&sealed).unwrap().as_slice(),
            b"postgres://u:p@h/db"
        );
    }

    #[test]
    fn reseal_moves_a_blob_to_the_new_key_with_the_same_plaintext() {
        let (old, new) = (Cipher::new(&key(1)), Cipher::new(&key(2)));
        let blob = old.seal(b"rediss://default:pw@host:6379");
        let moved = new.reseal(&old, &blob).expect("opens under old");
        assert_eq!(moved.len(), blob.len());
        assert_ne!(moved[..NONCE_BYTES], blob[..NONCE_BYTES]);
        assert_eq!(
            new.open(&moved).unwrap().as_slice(),
            b"rediss://default:pw@host:6379"
        );
        assert!(old.open(&moved).is_none());
        assert!(new.reseal(&new, &blob).is_none());
    }

    #[test]
    fn classification_follows_the_design_order() {
        let ring = Keyring::new(&key(1), Some(&key(2)));
        let current = Cipher::new(&key(1)).seal(b"a");
        let old = Cipher::new(&key(2)).seal(b"a");
        let stranger = Cipher::new(&key(3)).seal(b"a");
        let mut kms = vec![KMS_VERSION_BYTE, 0, 4, 9, 9, 9, 9];
        kms.extend_from_slice(&[0u8; NONCE_BYTES + TAG_BYTES + 5]);
        let class = |f: Option<&[u8]>| ring.classify(f).class;
        assert_eq!(class(None), FieldClass::Empty);
        assert_eq!(class(Some(&[])), FieldClass::Empty);
        assert_eq!(class(Some(&current)), FieldClass::Current);
        assert_eq!(class(Some(&old)), FieldClass::Old);
        assert_eq!(class(Some(&kms)), FieldClass::Kms);
        assert_eq!(class(Some(&stranger)), FieldClass::Undecryptable);
    }

    #[test]
    fn an_old_blob_whose_nonce_starts_with_0x02_is_old_not_kms() {
        let ring = Keyring::new(&key(1), Some(&key(2)));
        let old = Cipher::new(&key(2));
        // A nonce that also reads as `0x02, dek_len = 4`: the blob fits the
        // KMS shape, and only trying GCM first tells it apart.
        let blob = old.seal_with_nonce([2, 0, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9], &[7u8; 40]);
        assert!(is_kms_shaped(&blob));
        assert_eq!(ring.classify(Some(&blob)).class, FieldClass::Old);
    }

    #[test]
    fn a_mismatched_sealer_fails_the_check_before_write() {
        let ring = Keyring::with_mismatched_sealer(&key(1), None, &key(9));
        assert_eq!(ring.seal_checked(b"x"), Err(RekeyError::VerifyFailed));
        let good = Keyring::new(&key(1), None);
        assert!(good.seal_checked(b"x").is_ok());
    }

    #[test]
    fn row_actions_follow_the_design_rules() {
        use FieldClass::*;
        assert_eq!(row_action(&[Current, Empty], Mode::Auto), RowAction::Skip);
        assert_eq!(row_action(&[Kms, Current], Mode::Auto), RowAction::Skip);
        assert_eq!(
            row_action(&[Old, Current], Mode::Auto),
            RowAction::Reencrypt
        );
        assert_eq!(row_action(&[Old, Kms], Mode::Auto), RowAction::Reencrypt);
        assert_eq!(
            row_action(&[Old, Undecryptable], Mode::Auto),
            RowAction::Reprovision
        );
        assert_eq!(
            row_action(&[Old, Empty], Mode::Reprovision),
            RowAction::Reprovision
        );
        assert_eq!(
            row_action(&[Current, Current], Mode::Reprovision),
            RowAction::Skip
        );
    }
}
