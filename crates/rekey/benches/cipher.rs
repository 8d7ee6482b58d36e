//! Criterion benchmarks of the crypto the tool does per field: `seal`,
//! `open` and `rekey` (open under the old key, seal under the new one) with
//! [`rekey::envelope::Cipher`] at 64 B, 128 B, 256 B and 16 KiB; for the
//! 128 B rekey, the same work written directly on `ring` (`ring_raw`, the
//! floor for this backend) and on the `aes-gcm` crate (`aes_gcm_crate`, the
//! other backend one might pick), plus the tool's full per-field path
//! through [`Keyring`] (`keyring_classify_seal_checked`); and `batch_rekey`
//! of 100,000 fields of 128 B, sequential against rayon across all cores.
//!
//! Every variant's output is checked once, before timing, to open under the
//! new key to the original plaintext, so no variant is fast by being wrong.
//! Database and cloud costs are measured by `rekey fleet-bench`, not here.
//!
//! Run: `cargo bench --bench cipher` (about two minutes).

use std::time::Duration;

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::Aes256Gcm;
use criterion::{
    black_box, criterion_group, criterion_main, measurement::WallTime, BenchmarkGroup, BenchmarkId,
    Criterion, SamplingMode, Throughput,
};
use rand::RngCore;
use rayon::prelude::*;
use rekey::envelope::{Cipher, Keyring, NONCE_BYTES, TAG_BYTES};
use rekey::keys::{Key, KEY_LEN};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};

const OLD: [u8; KEY_LEN] = [0x0d; KEY_LEN];
const NEW: [u8; KEY_LEN] = [0x0e; KEY_LEN];
const SIZES: [usize; 4] = [64, 128, 256, 16 * 1024];
/// The size of a realistic `postgresql://` URL with a generated password.
const URL_SIZE: usize = 128;
const BATCH_FIELDS: usize = 100_000;

fn plaintext(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

fn ciphers() -> (Cipher, Cipher) {
    (
        Cipher::new(&Key::from_bytes(OLD)),
        Cipher::new(&Key::from_bytes(NEW)),
    )
}

fn fresh_nonce() -> [u8; NONCE_BYTES] {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::thread_rng().fill_bytes(&mut nonce);
    nonce
}

/// The rekey primitive with the crate's own cipher (`Cipher::reseal`); the
/// engine's full per-field path, with its check before write, is
/// `keyring_classify_seal_checked` below.
fn rekey_with_cipher(old: &Cipher, new: &Cipher, blob: &[u8]) -> Vec<u8> {
    new.reseal(old, blob)
        .expect("bench blobs are sealed under the old key")
}

/// The same operation on `ring` directly, with one buffer and no zeroizing:
/// the least this backend can do, so the gap to `rekey_with_cipher` is what
/// `Cipher`'s safety (a zeroized plaintext copy) costs.
fn rekey_with_ring(old: &LessSafeKey, new: &LessSafeKey, blob: &[u8]) -> Vec<u8> {
    let mut buf = blob.to_vec();
    let nonce = Nonce::try_assume_unique_for_key(&blob[..NONCE_BYTES]).expect("12-byte nonce");
    let len = old
        .open_in_place(nonce, Aad::empty(), &mut buf[NONCE_BYTES..])
        .expect("bench blobs are sealed under the old key")
        .len();
    buf.truncate(NONCE_BYTES + len);
    let nonce = fresh_nonce();
    buf[..NONCE_BYTES].copy_from_slice(&nonce);
    let tag = new
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut buf[NONCE_BYTES..],
        )
        .expect("small inputs always seal");
    buf.extend_from_slice(tag.as_ref());
    buf
}

/// The same operation on the `aes-gcm` crate, shaped like `rekey_with_ring`.
fn rekey_with_aes_gcm(old: &Aes256Gcm, new: &Aes256Gcm, blob: &[u8]) -> Vec<u8> {
    let (nonce, rest) = blob.split_at(NONCE_BYTES);
    let (ciphertext, tag) = rest.split_at(rest.len() - TAG_BYTES);
    let mut buf = Vec::with_capacity(blob.len());
    buf.extend_from_slice(ciphertext);
    old.decrypt_in_place_detached(nonce.into(), b"", &mut buf, tag.into())
        .expect("bench blobs are sealed under the old key");
    let nonce = fresh_nonce();
    let tag = new
        .encrypt_in_place_detached((&nonce).into(), b"", &mut buf)
        .expect("small inputs always seal");
    let mut out = Vec::with_capacity(blob.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&buf);
    out.extend_from_slice(&tag);
    out
}

fn ring_key(bytes: &[u8; KEY_LEN]) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("32-byte key"))
}

fn aes_gcm_key(bytes: &[u8; KEY_LEN]) -> Aes256Gcm {
    Aes256Gcm::new(bytes.into())
}

/// Panics unless `rekeyed` opens under the new key to `expected`.
fn check(label: &str, new: &Cipher, rekeyed: &[u8], expected: &[u8]) {
    let opened = new.open(rekeyed);
    assert_eq!(
        opened.as_ref().map(rekey::envelope::Plaintext::as_slice),
        Some(expected),
        "{label}"
    );
}

fn configure<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .warm_up_time(Duration::from_millis(800))
        .measurement_time(Duration::from_secs(3))
        .sample_size(40);
    group
}

fn seal_and_open(c: &mut Criterion) {
    let (_, new) = ciphers();
    let mut seal = configure(c, "seal");
    for size in SIZES {
        let pt = plaintext(size);
        seal.throughput(Throughput::Bytes(size as u64));
        seal.bench_with_input(BenchmarkId::from_parameter(size), &pt, |b, pt| {
            b.iter(|| new.seal(black_box(pt)));
        });
    }
    seal.finish();

    let mut open = configure(c, "open");
    for size in SIZES {
        let blob = new.seal(&plaintext(size));
        open.throughput(Throughput::Bytes(size as u64));
        open.bench_with_input(BenchmarkId::from_parameter(size), &blob, |b, blob| {
            b.iter(|| new.open(black_box(blob)).expect("sealed under this key"));
        });
    }
    open.finish();
}

fn rekey(c: &mut Criterion) {
    let (old, new) = ciphers();
    let mut group = configure(c, "rekey");
    for size in SIZES {
        let pt = plaintext(size);
        let blob = old.seal(&pt);
        check("cipher", &new, &rekey_with_cipher(&old, &new, &blob), &pt);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("cipher", size), &blob, |b, blob| {
            b.iter(|| rekey_with_cipher(&old, &new, black_box(blob)));
        });
    }

    let pt = plaintext(URL_SIZE);
    let blob = old.seal(&pt);
    group.throughput(Throughput::Bytes(URL_SIZE as u64));

    let (ring_old, ring_new) = (ring_key(&OLD), ring_key(&NEW));
    check(
        "ring_raw",
        &new,
        &rekey_with_ring(&ring_old, &ring_new, &blob),
        &pt,
    );
    group.bench_with_input(BenchmarkId::new("ring_raw", URL_SIZE), &blob, |b, blob| {
        b.iter(|| rekey_with_ring(&ring_old, &ring_new, black_box(blob)));
    });

    let (aes_old, aes_new) = (aes_gcm_key(&OLD), aes_gcm_key(&NEW));
    check(
        "aes_gcm_crate",
        &new,
        &rekey_with_aes_gcm(&aes_old, &aes_new, &blob),
        &pt,
    );
    group.bench_with_input(
        BenchmarkId::new("aes_gcm_crate", URL_SIZE),
        &blob,
        |b, blob| b.iter(|| rekey_with_aes_gcm(&aes_old, &aes_new, black_box(blob))),
    );

    // What the engine really does per field: try the new key (fails), open
    // under the old one, seal under the new one and open that again to check
    // it before writing: four AES-GCM passes instead of two.
    let keyring = Keyring::new(&Key::from_bytes(NEW), Some(&Key::from_bytes(OLD)));
    let full = |blob: &[u8]| {
        let opened = keyring
            .classify(Some(blob))
            .plaintext
            .expect("opens under old");
        keyring.seal_checked(&opened).expect("verifies under new")
    };
    check("keyring", &new, &full(&blob), &pt);
    group.bench_with_input(
        BenchmarkId::new("keyring_classify_seal_checked", URL_SIZE),
        &blob,
        |b, blob| b.iter(|| full(black_box(blob))),
    );
    group.finish();
}

fn batch_rekey(c: &mut Criterion) {
    let (old, new) = ciphers();
    let pt = plaintext(URL_SIZE);
    let blobs: Vec<Vec<u8>> = (0..BATCH_FIELDS).map(|_| old.seal(&pt)).collect();
    let threads = rayon::current_num_threads();
    eprintln!("batch_rekey: {BATCH_FIELDS} fields of {URL_SIZE} B; rayon uses {threads} threads");

    let mut group = c.benchmark_group("batch_rekey");
    group
        .sampling_mode(SamplingMode::Flat)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(6))
        .sample_size(10)
        .throughput(Throughput::Elements(BATCH_FIELDS as u64));
    group.bench_function("sequential", |b| {
        b.iter(|| {
            blobs
                .iter()
                .map(|blob| rekey_with_cipher(&old, &new, blob))
                .collect::<Vec<_>>()
        });
    });
    group.bench_function(
        BenchmarkId::new("rayon_par_iter", format!("{threads}_threads")),
        |b| {
            b.iter(|| {
                blobs
                    .par_iter()
                    .map(|blob| rekey_with_cipher(&old, &new, blob))
                    .collect::<Vec<_>>()
            });
        },
    );
    group.finish();
}

criterion_group!(benches, seal_and_open, rekey, batch_rekey);
criterion_main!(benches);
