#!/usr/bin/env python3
"""Writes crates/rekey-it/tests/it/vectors/static_key.json: compatibility vectors for rekey's
static-key format, key id and key text forms, computed independently of
rekey with Python's `cryptography` package (OpenSSL's AES-GCM) and the
standard library's hmac/base64.

Everything here is deterministic (fixed keys, nonces and plaintexts), so
running the script again must reproduce the committed file byte for byte;
tests/vectors.rs checks that when python3 is available.

Formats (docs/design.md, "Formats"):
  blob   = nonce (12) || AES-256-GCM ciphertext || tag (16), no associated
           data. AESGCM.encrypt returns ciphertext || tag, so the blob is
           nonce + AESGCM(key).encrypt(nonce, plaintext, None): the same
           bytes as Go's gcm.Seal(nonce, nonce, plaintext, nil), which
           appends ciphertext || tag to its first argument, the nonce.
  key id = hex(HMAC-SHA256(key, b"rekey key id v1")[:8])

Usage: scripts/make_vectors.py [--out PATH]
"""

import argparse
import base64
import hashlib
import hmac
import json
import pathlib

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEY_ID_CONTEXT = b"rekey key id v1"
NONCE_LEN = 12
TAG_LEN = 16

# The key of keys.rs's unit tests: bytes 00..1f.
KEY_SEQUENTIAL = bytes(range(32))
# A key that is printable ASCII, so it can also be written as a raw
# 32-character string: the parse vectors give it in all three forms.
KEY_ASCII = b"rekey-vectors/ascii-key-32-bytes"
assert len(KEY_ASCII) == 32


def derived(label: str, n: int = 32) -> bytes:
    """Fixed pseudo-random bytes, so the vectors do not depend on a seed."""
    out = b""
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{counter}".encode()).digest()
        counter += 1
    return out[:n]


def key_whose_base64_uses_plus_and_slash() -> bytes:
    """A random-looking key whose standard base64 differs from its URL-safe
    base64, so a vector can show that only the standard alphabet is read."""
    for i in range(1000):
        key = derived(f"rekey vector base64 key {i}")
        text = base64.b64encode(key).decode()
        if "+" in text and "/" in text:
            return key
    raise AssertionError("no such key in 1000 tries")


KEY_RANDOM = derived("rekey vector key random")
KEY_BASE64 = key_whose_base64_uses_plus_and_slash()

PG_URL = (
    b"postgresql://tenant_acme_owner:Xk9%40pQ2vL7mN4rT8@"
    b"ep-quiet-river-a1b2c3d4.us-east-2.aws.neon.tech/neondb?sslmode=require"
)
REDIS_URL = b"rediss://default:AZx9AAIjcDE0Nzg5ZGQ1YjJmZWY@fly-acme-cache.upstash.io:6379"


def seal(key: bytes, nonce: bytes, plaintext: bytes) -> bytes:
    blob = nonce + AESGCM(key).encrypt(nonce, plaintext, None)
    # Self-checks of the layout, by a second route through the library: the
    # streaming GCM encryptor gives the ciphertext and the tag separately.
    enc = Cipher(algorithms.AES(key), modes.GCM(nonce)).encryptor()
    ct = enc.update(plaintext) + enc.finalize()
    assert blob == nonce + ct + enc.tag
    assert len(enc.tag) == TAG_LEN and len(blob) == NONCE_LEN + len(plaintext) + TAG_LEN
    assert AESGCM(key).decrypt(blob[:NONCE_LEN], blob[NONCE_LEN:], None) == plaintext
    return blob


def seal_vectors():
    cases = [
        ("empty plaintext", KEY_SEQUENTIAL, bytes(range(12)), b""),
        ("one byte", KEY_SEQUENTIAL, bytes(range(12, 24)), b"a"),
        ("17 bytes: one full block and a partial one", KEY_RANDOM, derived("nonce 17", 12), b"0123456789abcdefg"),
        ("postgresql URL", KEY_RANDOM, derived("nonce pg", 12), PG_URL),
        ("postgresql URL under another key", KEY_ASCII, derived("nonce pg 2", 12), PG_URL),
        ("rediss URL", KEY_RANDOM, derived("nonce redis", 12), REDIS_URL),
        # 0x02, then 0x0004: the blob also fits the KMS envelope's shape, and
        # must still be recognised as static-key by opening it.
        ("rediss URL, nonce that reads as a KMS header", KEY_BASE64, bytes([2, 0, 4]) + derived("nonce kms", 9), REDIS_URL),
        ("all-ones nonce", KEY_SEQUENTIAL, b"\xff" * 12, PG_URL),
        ("16 KiB", KEY_RANDOM, derived("nonce 16k", 12), derived("plaintext 16k", 16 * 1024)),
    ]
    return [
        {
            "name": name,
            "key": key.hex(),
            "nonce": nonce.hex(),
            "plaintext": pt.hex(),
            "blob": seal(key, nonce, pt).hex(),
        }
        for name, key, nonce, pt in cases
    ]


def key_id(key: bytes) -> str:
    return hmac.new(key, KEY_ID_CONTEXT, hashlib.sha256).digest()[:8].hex()


def key_id_vectors():
    keys = [KEY_SEQUENTIAL, KEY_ASCII, KEY_RANDOM, KEY_BASE64, b"\x00" * 32, b"\xff" * 32]
    return [{"key": k.hex(), "id": key_id(k)} for k in keys]


def parse_vectors():
    hex_ascii = KEY_ASCII.hex()
    b64_ascii = base64.b64encode(KEY_ASCII).decode()
    b64 = base64.b64encode(KEY_BASE64).decode()
    raw_hexlike = "0123456789abcdef0123456789abcdef"
    raw_b64like = base64.b64encode(derived("24 bytes", 24)).decode()
    assert len(raw_b64like) == 32
    accepted = [
        ("64 hex characters", hex_ascii, KEY_ASCII),
        ("64 upper-case hex characters", hex_ascii.upper(), KEY_ASCII),
        ("hex with the newline `openssl rand -hex 32 >file` leaves", hex_ascii + "\n", KEY_ASCII),
        ("standard base64", b64_ascii, KEY_ASCII),
        ("raw 32-character string", KEY_ASCII.decode(), KEY_ASCII),
        ("raw string with surrounding whitespace", "  " + KEY_ASCII.decode() + "\r\n", KEY_ASCII),
        ("standard base64 using + and /", b64, KEY_BASE64),
        ("standard base64 with a trailing newline", b64 + "\n", KEY_BASE64),
        ("32 hex characters are a raw string, not 16 bytes of hex", raw_hexlike, raw_hexlike.encode()),
        ("32 base64 characters (24 bytes) are a raw string", raw_b64like, raw_b64like.encode()),
    ]
    refused = [
        ("empty", ""),
        ("only whitespace", " \n\t"),
        ("63 hex characters", hex_ascii[:63]),
        ("66 hex characters", hex_ascii + "00"),
        ("64 characters, not all hex", "g" + hex_ascii[1:]),
        ("base64 without its padding", b64.rstrip("=")),
        ("URL-safe base64", base64.urlsafe_b64encode(KEY_BASE64).decode()),
        ("base64 of 31 bytes", base64.b64encode(KEY_BASE64[:31]).decode()),
        ("base64 of 33 bytes", base64.b64encode(KEY_BASE64 + b"!").decode()),
        ("raw 31-character string", KEY_ASCII.decode()[:31]),
        ("raw 33-character string", KEY_ASCII.decode() + "x"),
    ]
    return [{"name": n, "text": t, "key": k.hex()} for n, t, k in accepted] + [
        {"name": n, "text": t, "key": None} for n, t in refused
    ]


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=root / "crates/rekey-it/tests/it/vectors/static_key.json")
    args = parser.parse_args()
    doc = {
        "about": "rekey compatibility vectors, written by scripts/make_vectors.py; do not edit by hand",
        "blob_format": "nonce (12) || AES-256-GCM ciphertext || tag (16), no associated data; hex",
        "key_id_format": 'hex(HMAC-SHA256(key, "rekey key id v1")[:8])',
        "parse_format": "text: key text as an operator supplies it; key: the 32 bytes it means (hex), or null when it must be refused",
        "seal": seal_vectors(),
        "key_id": key_id_vectors(),
        "parse": parse_vectors(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")


if __name__ == "__main__":
    main()
