//! Seeding a reference `org_instances` table with a synthetic fleet, for
//! tests, the demo, rehearsals and `fleet-bench`. Rows go in with `COPY`.
//!
//! Every tenant gets realistic URLs with random passwords sealed under the
//! given key; optional shares of tenants are sealed under a throwaway key
//! (undecryptable), already under another key, or carry a KMS envelope.

use rand::distributions::{Alphanumeric, DistString};
use rand::{Rng, SeedableRng};
use rayon::prelude::*;
use serde::Serialize;
use sqlx::PgPool;

use super::{Bounded, DbError, Table};
use crate::envelope::{Cipher, KMS_VERSION_BYTE};
use crate::keys::Key;

/// What fleet to make.
#[derive(Debug, Clone)]
pub struct SeedSpec {
    pub rows: u64,
    /// Share of tenants sealed under a throwaway key (open under neither key).
    pub undecryptable_share: f64,
    /// Share of tenants whose database URL is a KMS envelope blob.
    pub kms_share: f64,
    /// Share of tenants with no Redis URL (NULL).
    pub null_redis_share: f64,
    /// Seed for slugs, ids and which tenants fall in each share.
    pub seed: u64,
}

/// One synthetic tenant: what the row holds and what the cloud should hold.
#[derive(Debug, Clone, Serialize)]
pub struct SeedTenant {
    pub org_id: uuid::Uuid,
    pub slug: String,
    pub region: String,
    pub neon_project_id: String,
    pub neon_branch_id: String,
    pub fly_app: String,
    pub fly_machine_id: String,
    pub role: String,
    pub database: String,
    #[serde(skip)]
    pub password: String,
    #[serde(skip)]
    pub database_url: String,
    #[serde(skip)]
    pub redis_url: Option<String>,
    #[serde(skip)]
    pub kind: SeedKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeedKind {
    Sealed,
    Undecryptable,
    Kms,
}

/// Generates the tenants of a fleet deterministically from `spec.seed`
/// (passwords come from the OS-seeded thread RNG: they are secrets).
pub fn tenants(spec: &SeedSpec) -> Vec<SeedTenant> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(spec.seed);
    let regions = ["ord", "iad", "fra", "sin"];
    (0..spec.rows)
        .map(|i| {
            let slug = format!("tenant-{i:07}");
            let password = Alphanumeric.sample_string(&mut rand::thread_rng(), 24);
            let endpoint = format!("ep-{}-{:08x}", ["cool", "calm", "bold", "wild"][i as usize % 4], rng.gen::<u32>());
            let database_url = format!(
                "postgresql://neondb_owner:{password}@{endpoint}.us-east-2.aws.neon.tech/neondb?sslmode=require"
            );
            let redis_password = Alphanumeric.sample_string(&mut rand::thread_rng(), 32);
            let roll: f64 = rng.gen();
            let kind = if roll < spec.undecryptable_share {
                SeedKind::Undecryptable
            } else if roll < spec.undecryptable_share + spec.kms_share {
                SeedKind::Kms
            } else {
                SeedKind::Sealed
            };
            let redis_url = (rng.gen::<f64>() >= spec.null_redis_share)
                .then(|| format!("rediss://default:{redis_password}@tenant-redis.internal:6379"));
            SeedTenant {
                org_id: uuid::Builder::from_random_bytes(rng.gen()).into_uuid(),
                region: regions[i as usize % regions.len()].into(),
                neon_project_id: format!("proj-{i:07}"),
                neon_branch_id: format!("br-seed-{i:07}"),
                fly_app: format!("app-{slug}"),
                fly_machine_id: format!("{:014x}", rng.gen::<u64>() & 0x00ff_ffff_ffff_ffff),
                role: "neondb_owner".into(),
                database: "neondb".into(),
                slug,
                password,
                database_url,
                redis_url,
                kind,
            }
        })
        .collect()
}

/// A KMS envelope blob of plausible shape (never opened by anyone).
fn kms_blob(rng: &mut impl Rng) -> Vec<u8> {
    let dek_len: u16 = 40;
    let mut blob = vec![KMS_VERSION_BYTE];
    blob.extend_from_slice(&dek_len.to_be_bytes());
    let mut rest = vec![0u8; dek_len as usize + 12 + 64 + 16];
    rng.fill(&mut rest[..]);
    blob.extend_from_slice(&rest);
    blob
}

/// COPY text-format escape of a bytea value.
fn copy_bytea(out: &mut String, value: Option<&[u8]>) {
    match value {
        None => out.push_str("\\N"),
        Some(bytes) => {
            out.push_str("\\\\x");
            out.push_str(&hex::encode(bytes));
        }
    }
}

/// Fills an empty reference table with `tenants`, sealed under `key`.
/// Refuses a table that already has rows: seeding never mixes with real data.
pub async fn seed(
    pool: &PgPool,
    table: &Table,
    key: &Key,
    tenants: &[SeedTenant],
) -> Result<u64, DbError> {
    let existing: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name))
        .fetch_one(pool)
        .bounded()
        .await?;
    if existing > 0 {
        return Err(DbError::TableNotEmpty {
            table: table.display.clone(),
            rows: existing,
        });
    }
    let Some(cols) = &table.provision else {
        return Err(DbError::NoResourceColumns {
            table: table.display.clone(),
        });
    };
    let cipher = Cipher::new(key);
    let stranger = Cipher::new(&Key::generate().map_err(|_| DbError::NoRandomness)?);
    let lines: Vec<String> = tenants
        .par_iter()
        .map(|t| {
            let sealer = if t.kind == SeedKind::Undecryptable {
                &stranger
            } else {
                &cipher
            };
            let db = match t.kind {
                SeedKind::Kms => kms_blob(&mut rand::thread_rng()),
                _ => sealer.seal(t.database_url.as_bytes()),
            };
            let redis = t.redis_url.as_ref().map(|r| sealer.seal(r.as_bytes()));
            let mut line = format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t{}\t",
                t.org_id,
                t.slug,
                t.region,
                t.neon_project_id,
                t.neon_branch_id,
                t.fly_app,
                t.fly_machine_id
            );
            copy_bytea(&mut line, Some(&db));
            line.push('\t');
            copy_bytea(&mut line, redis.as_deref());
            line.push('\n');
            line
        })
        .collect();
    let sql = format!(
        "COPY {} ({}, {}, region, {}, {}, {}, {}, {}, {}) FROM STDIN",
        table.name,
        table.id,
        cols.slug,
        cols.neon_project,
        cols.neon_branch,
        cols.fly_app,
        cols.fly_machine,
        table.db,
        table.redis
    );
    let mut conn = pool.acquire().await?;
    let mut copy = conn.copy_in_raw(&sql).await?;
    for chunk in lines.chunks(5_000) {
        copy.send(chunk.concat().into_bytes()).await?;
    }
    Ok(copy.finish().await?)
}
