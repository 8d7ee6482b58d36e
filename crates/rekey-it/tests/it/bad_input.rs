//! Invariant 6: bad input gets a clear error on stderr, exit code 2, and
//! changes nothing; never a panic. Each test checks the table (and the
//! journal) before and after the refused command.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Output;

use rekey_testkit::*;
use sqlx::PgPool;

/// A fleet of 40 tenants under `keys.old`, and the database URL.
async fn small_fleet(pool: &PgPool, keys: &Keys) -> String {
    let table = reference_table(pool).await;
    seed_fleet(pool, &table, &keys.old, 40).await;
    db_url(pool)
}

/// Where most refusal tests start: fresh keys, a [`small_fleet`] under
/// them, its URL, and the table as it was, for [`assert_untouched`].
async fn small_fleet_as_it_was(pool: &PgPool) -> (Keys, String, BTreeMap<String, Fields>) {
    let keys = Keys::new();
    let url = small_fleet(pool, &keys).await;
    let before = snapshot(pool).await;
    (keys, url, before)
}

/// `rekey COMMAND --old-key-file OLD --new-key-file NEW`: a command given
/// key files of the test's own.
fn with_key_files(url: &str, command: &str, old: &Path, new: &Path) -> Output {
    rekey(
        url,
        &[
            command,
            "--old-key-file",
            path_str(old),
            "--new-key-file",
            path_str(new),
        ],
    )
}

/// Asserts that the table is as `before` and that no journal was created.
async fn assert_untouched(pool: &PgPool, before: &BTreeMap<String, Fields>) {
    assert_eq!(&snapshot(pool).await, before, "the table changed");
    assert!(
        !journal_schema_exists(pool).await,
        "schema rekey was created"
    );
}

#[sqlx::test(migrations = false)]
async fn a_malformed_key_file_is_refused_without_echoing_its_content(pool: PgPool) {
    let (keys, url, before) = small_fleet_as_it_was(&pool).await;
    let cases: [(&str, &[u8]); 6] = [
        (
            "wrong-length.key",
            b"0123456789abcdef0123456789abcdef0123456789\n",
        ),
        (
            "one-short.key",
            b"000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1\n",
        ),
        (
            "not-hex.key",
            b"not-hex!not-hex!not-hex!not-hex!not-hex!not-hex!not-hex!not-hex!",
        ),
        ("empty.key", b""),
        ("blank.key", b"  \n\t\n"),
        (
            "binary.key",
            &[
                0xff, 0xfe, 0x00, 0x81, 0x9a, 0xc3, 0x28, 0xa0, 0xa1, 0xe2, 0x28, 0xa1,
            ],
        ),
    ];
    for (name, content) in cases {
        let path = write_key_file(keys.dir.path(), name, content);
        let as_new = with_key_files(&url, "run", &keys.old_file, &path);
        let as_old = with_key_files(&url, "run", &path, &keys.new_file);
        for out in [as_new, as_old] {
            assert_refused(&out, &[name, "64 hex"]);
            let shown = String::from_utf8_lossy(content);
            let shown = shown.trim();
            if shown.len() >= 8 {
                assert!(
                    !text(&out).contains(shown),
                    "{name}: the error echoed the key file: {}",
                    text(&out)
                );
                // Nor any long piece of it.
                for piece in shown.as_bytes().chunks(16).filter(|p| p.len() == 16) {
                    let piece = String::from_utf8_lossy(piece);
                    assert!(
                        !text(&out).contains(piece.as_ref()),
                        "{name}: echoed {piece:?}"
                    );
                }
            }
        }
        assert_untouched(&pool, &before).await;
    }
}

#[sqlx::test(migrations = false)]
async fn a_key_in_the_environment_that_is_malformed_is_refused_without_echoing_it(pool: PgPool) {
    let (keys, url, before) = small_fleet_as_it_was(&pool).await;
    let secretish = "zzzz-this-is-not-a-key-but-it-is-secret-zzzz";
    let out = rekey_cmd(&url, &["run", "--old-key-file", path_str(&keys.old_file)])
        .env("NEW_SECRETS_ENCRYPTION_KEY", secretish)
        .output()
        .expect("run rekey");
    assert_refused(&out, &["NEW_SECRETS_ENCRYPTION_KEY", "64 hex"]);
    assert!(!text(&out).contains(secretish));
    assert_untouched(&pool, &before).await;
}

#[sqlx::test(migrations = false)]
async fn no_new_key_is_refused(pool: PgPool) {
    let (keys, url, before) = small_fleet_as_it_was(&pool).await;
    for command in ["plan", "run", "verify"] {
        let out = rekey(&url, &[command, "--old-key-file", path_str(&keys.old_file)]);
        assert_refused(&out, &["no new key", "--new-key-file"]);
    }
    assert_untouched(&pool, &before).await;
}

#[sqlx::test(migrations = false)]
async fn the_same_key_as_old_and_new_is_refused(pool: PgPool) {
    let (keys, url, before) = small_fleet_as_it_was(&pool).await;
    // The same key in another text form is still the same key.
    let b64 = write_key_file(
        keys.dir.path(),
        "old.b64",
        keys.old.to_base64().as_str().as_bytes(),
    );
    for new in [&keys.old_file, &b64] {
        let out = with_key_files(&url, "run", &keys.old_file, new);
        assert_refused(&out, &["same key", &keys.old.id().0]);
    }
    assert_untouched(&pool, &before).await;
}

#[sqlx::test(migrations = false)]
async fn an_unreachable_database_is_refused_with_its_cause(pool: PgPool) {
    let (keys, url, before) = small_fleet_as_it_was(&pool).await;
    let started = std::time::Instant::now();
    let out = rekey_with_keys(
        "postgres://postgres:Unreachable-Pw-42@127.0.0.1:1/x",
        &keys,
        &["run"],
    );
    assert_refused(&out, &["127.0.0.1:1", "cannot reach"]);
    assert!(!text(&out).contains("Unreachable-Pw-42"), "{}", text(&out));
    assert!(
        started.elapsed().as_secs() < 8,
        "a refused connection took {:?} to report",
        started.elapsed()
    );
    let out = rekey_with_keys(&url, &keys, &["run", "--database-url", "not a url"]);
    assert_refused(&out, &["database"]);
    assert_untouched(&pool, &before).await;
}

#[sqlx::test(migrations = false)]
async fn a_missing_table_is_refused(pool: PgPool) {
    let (keys, url, before) = small_fleet_as_it_was(&pool).await;
    for command in ["plan", "run", "verify"] {
        let out = rekey_with_keys(&url, &keys, &[command, "--table", "nope"]);
        assert_refused(&out, &["table nope not found", "--table"]);
    }
    let out = rekey_with_keys(&url, &keys, &["run", "--table", "no_schema.org_instances"]);
    assert_refused(&out, &["no_schema.org_instances"]);
    assert_untouched(&pool, &before).await;
}

#[sqlx::test(migrations = false)]
async fn a_missing_column_is_refused(pool: PgPool) {
    let (keys, url, before) = small_fleet_as_it_was(&pool).await;
    for flag in ["--db-column", "--redis-column", "--id-column"] {
        let out = rekey_with_keys(&url, &keys, &["run", flag, "nope"]);
        assert_refused(&out, &["no column nope"]);
    }
    assert_untouched(&pool, &before).await;
}

#[sqlx::test(migrations = false)]
async fn a_column_of_the_wrong_type_is_refused(pool: PgPool) {
    let keys = Keys::new();
    let url = small_fleet(&pool, &keys).await;
    sqlx::raw_sql(
        "CREATE TABLE legacy_instances (
             org_id UUID PRIMARY KEY,
             database_url_encrypted INTEGER,
             redis_url_encrypted BYTEA);
         INSERT INTO legacy_instances VALUES (gen_random_uuid(), 42, '\\x0102');",
    )
    .execute(&pool)
    .await
    .expect("legacy table");
    let legacy = || async {
        sqlx::query_as::<_, (String, Option<i32>, Option<Vec<u8>>)>(
            "SELECT org_id::text, database_url_encrypted, redis_url_encrypted FROM legacy_instances",
        )
        .fetch_all(&pool)
        .await
        .expect("legacy rows")
    };
    let before = snapshot(&pool).await;
    let legacy_before = legacy().await;
    for command in ["plan", "run"] {
        let out = rekey_with_keys(&url, &keys, &[command, "--table", "legacy_instances"]);
        assert_refused(&out, &["database_url_encrypted", "integer", "bytea"]);
    }
    assert_eq!(legacy().await, legacy_before);
    assert_untouched(&pool, &before).await;
}

#[sqlx::test(migrations = false)]
async fn a_wrong_old_key_trips_the_gate_before_anything_is_written(pool: PgPool) {
    let (keys, url, before) = small_fleet_as_it_was(&pool).await;
    let (_, wrong_old) = keys.another("wrong-old.key");
    let with_wrong_old = |extra: &[&str]| {
        let mut args = vec![
            "run",
            "--old-key-file",
            path_str(&wrong_old),
            "--new-key-file",
            path_str(&keys.new_file),
        ];
        args.extend_from_slice(extra);
        rekey(&url, &args)
    };

    // No cloud is configured: the gate must speak first, because a wrong
    // key is the likelier story than 40 broken rows.
    let out = with_wrong_old(&["--mode", "auto"]);
    assert_refused(&out, &["--confirm-reprovision 40", "old key"]);
    assert!(
        !text(&out).contains("NEON_API_KEY"),
        "the cloud check spoke before the gate: {}",
        text(&out)
    );
    assert_eq!(snapshot(&pool).await, before);
    assert_eq!(run_count(&pool).await, 0, "a run was opened");

    // Confirmed, it gets as far as the missing cloud credentials, and still writes nothing.
    let out = with_wrong_old(&["--mode", "auto", "--confirm-reprovision", "40"]);
    assert_refused(&out, &["NEON_API_KEY"]);
    assert_eq!(snapshot(&pool).await, before);
    assert_eq!(run_count(&pool).await, 0, "a run was opened");
}

#[sqlx::test(migrations = false)]
async fn corrupt_and_truncated_ciphertexts_are_classified_never_a_panic(pool: PgPool) {
    reference_table(&pool).await;
    let keys = Keys::new();
    let url = db_url(&pool);
    let old = rekey::envelope::Cipher::new(&keys.old);
    // A nonce starting 0x11 keeps the cut-down blobs clear of the KMS shape.
    let sealed = old.seal_with_nonce([0x11; 12], b"postgresql://u:p@h/db");
    // Shapes that probe every length check: one byte, a KMS header claiming
    // a DEK longer than the blob, a nonce and a tag and nothing else, a
    // nonce alone, a blob one byte short of a tag.
    let blobs: Vec<Vec<u8>> = vec![
        vec![0x00],
        vec![0x02],
        vec![0x02, 0xff, 0xff],
        vec![
            0x02, 0xff, 0xff, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
            20, 21, 22, 23, 24, 25, 26, 27, 28,
        ],
        vec![
            0x02, 0x00, 0x00, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19,
            20, 21, 22, 23, 24, 25, 26, 27, 28,
        ],
        vec![0x11; 28],
        vec![0x11; 12],
        sealed[..sealed.len() - 1].to_vec(),
        sealed[..27].to_vec(),
    ];
    for b in &blobs {
        insert_row(&pool, uuid::Uuid::new_v4(), Some(b), Some(&sealed)).await;
    }
    let before = snapshot(&pool).await;

    let out = rekey_with_keys(&url, &keys, &["plan", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(plan["fields"]["undecryptable"], blobs.len(), "{plan:#}");
    assert_eq!(plan["fields"]["old"], blobs.len(), "{plan:#}");
    assert_eq!(plan["actions"]["reprovision"], blobs.len(), "{plan:#}");

    let out = rekey_with_keys(&url, &keys, &["run", "--mode", "reencrypt"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "left, listed, untouched: {}",
        text(&out)
    );
    assert!(!text(&out).contains("panicked"));
    assert_eq!(
        snapshot(&pool).await,
        before,
        "a row with a corrupt field was written"
    );
    let out = rekey_with_keys(&url, &keys, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[sqlx::test(migrations = false)]
async fn zero_workers_or_batch_size_is_a_usage_error(pool: PgPool) {
    let (keys, url, before) = small_fleet_as_it_was(&pool).await;
    for args in [["run", "--workers", "0"], ["run", "--batch-size", "0"]] {
        let out = rekey_with_keys(&url, &keys, &args);
        assert_refused(&out, &["at least 1"]);
    }
    assert_untouched(&pool, &before).await;
}

#[test]
fn keygen_never_overwrites_an_existing_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("precious.key");
    let precious = "an operator's only copy of something\n";
    std::fs::write(&path, precious).expect("write");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");

    let out = rekey("postgres://unused", &["keygen", "--out", path_str(&path)]);
    assert_refused(&out, &["already exists", "never overwrites"]);
    assert_eq!(std::fs::read_to_string(&path).expect("read"), precious);
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "keygen changed the file's mode");

    // A fresh path is created 0600 with a key in it.
    let fresh = dir.path().join("fresh.key");
    let out = rekey("postgres://unused", &["keygen", "--out", path_str(&fresh)]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let mode = std::fs::metadata(&fresh)
        .expect("stat")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let written = std::fs::read_to_string(&fresh).expect("read");
    assert!(written.trim().parse::<rekey::keys::Key>().is_ok());
    assert!(
        !text(&out).contains(written.trim()),
        "keygen --out printed the key"
    );
}

#[sqlx::test(migrations = false)]
async fn a_key_file_readable_by_others_gets_a_warning(pool: PgPool) {
    let keys = Keys::new();
    let url = small_fleet(&pool, &keys).await;
    for file in [&keys.new_file, &keys.old_file] {
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let out = rekey_with_keys(&url, &keys, &["plan"]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("warning") && stderr.contains(path_str(file)) && stderr.contains("644"),
            "no warning about {}: {stderr}",
            file.display()
        );
        std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    let out = rekey_with_keys(&url, &keys, &["plan"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("warning"),
        "{}",
        text(&out)
    );
}

#[sqlx::test(migrations = false)]
async fn seed_fills_an_empty_table_and_refuses_one_with_rows(pool: PgPool) {
    let keys = Keys::new();
    reference_table(&pool).await;
    let url = db_url(&pool);
    let seed = |rows: &str| {
        rekey(
            &url,
            &[
                "seed",
                "--rows",
                rows,
                "--key-file",
                path_str(&keys.old_file),
            ],
        )
    };

    let out = seed("60");
    assert_exit(&out, 0, "seed into an empty table");
    let before = snapshot(&pool).await;
    assert_eq!(before.len(), 60);
    let opened = open_all(&before, &rekey::envelope::Cipher::new(&keys.old));
    for (id, (db, _)) in &opened {
        let url = String::from_utf8(
            db.clone()
                .expect("every database URL opens under the seed key"),
        )
        .expect("UTF-8");
        assert!(url.starts_with("postgres"), "{id}: not a database URL");
    }

    let out = seed("10");
    assert_exit(&out, 2, "seed into a table with rows");
    let all = text(&out);
    assert!(all.contains("already has 60 rows"), "{all}");
    assert_eq!(
        snapshot(&pool).await,
        before,
        "the refused seed changed the table"
    );
}

/// Defect: a database password given as a query parameter (which sqlx
/// honours) was echoed verbatim by setup errors. Every way a URL can carry
/// a secret stays out of the output, whichever command reports it.
#[sqlx::test(migrations = false)]
async fn a_password_in_any_part_of_the_database_url_never_reaches_the_output(pool: PgPool) {
    let (keys, _url, before) = small_fleet_as_it_was(&pool).await;
    let secrets = ["Query-Pw-4242", "Ssl-Pw-4343", "User-Pw-4444"];
    let urls = [
        "postgres://postgres@127.0.0.1:1/x?password=Query-Pw-4242".to_string(),
        "postgres://postgres@127.0.0.1:1/x?sslmode=disable&sslpassword=Ssl-Pw-4343&password=Query-Pw-4242".to_string(),
        "postgres://postgres:User-Pw-4444@127.0.0.1:1/x?password=Query-Pw-4242".to_string(),
        // Unparseable: nothing of it is quoted back.
        "postgres://postgres:User-Pw-4444@[::1/x?password=Query-Pw-4242".to_string(),
    ];
    for url in &urls {
        for command in ["plan", "run", "verify", "status"] {
            let out = if command == "status" {
                rekey(url, &[command])
            } else {
                rekey_with_keys(url, &keys, &[command])
            };
            assert_refused(&out, &["database"]);
            for secret in secrets {
                assert!(
                    !text(&out).contains(secret),
                    "{command} echoed {secret}: {}",
                    text(&out)
                );
            }
        }
    }
    assert_untouched(&pool, &before).await;
}

/// Defect: messages that named the wrong problem. An empty DATABASE_URL
/// read "relative URL without a base"; a key file of 32 bytes that are not
/// UTF-8 was "32 characters long"; a raw key whose last byte is a space
/// was trimmed and refused as the wrong length.
#[sqlx::test(migrations = false)]
async fn setup_errors_name_the_problem_the_operator_has(pool: PgPool) {
    let (keys, url, before) = small_fleet_as_it_was(&pool).await;

    let out = rekey_with_keys("", &keys, &["plan"]);
    assert_refused(&out, &["database url is empty", "DATABASE_URL"]);
    assert!(!text(&out).contains("relative URL"), "{}", text(&out));

    let bytes: Vec<u8> = (0..32u8).map(|b| b.wrapping_mul(37) | 0x80).collect();
    let binary = write_key_file(keys.dir.path(), "binary32.key", &bytes);
    let out = with_key_files(&url, "plan", &keys.old_file, &binary);
    assert_refused(&out, &["binary32.key", "not text"]);
    assert!(!text(&out).contains("characters long"), "{}", text(&out));
    assert_untouched(&pool, &before).await;

    // 32 raw bytes whose first and last are spaces: a key as it is.
    let spaced = format!(" {} ", "k".repeat(30));
    let spaced = write_key_file(keys.dir.path(), "spaced.key", spaced.as_bytes());
    let out = with_key_files(&url, "plan", &keys.old_file, &spaced);
    assert_exit(
        &out,
        0,
        "plan with a raw key that starts and ends with a space",
    );
    assert_eq!(snapshot(&pool).await, before, "plan changed the table");
}
