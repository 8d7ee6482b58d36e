//! `rekey verify --connect`: proof that the secrets still work, not only
//! that they decrypt. Every tenant's database URL (PostgreSQL) and Redis
//! URL is opened under the new key and connected to, with a timeout and
//! bounded concurrency; each tenant is classified as reachable,
//! authentication failure, refused (the server answered but turned the
//! session down for another reason than credentials) or network failure.
//! URLs stay in memory only, zeroized after use; reports name tenants,
//! never URLs.
//!
//! The classes tell the operator what to do next, so they are kept
//! apart with care: an authentication failure means the stored secret is
//! wrong (re-provision or reset the password); a refusal means the secret
//! may be fine but the tenant's database is missing or its server is
//! full or starting; a network failure means nothing answered in time.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use serde::Serialize;
use sqlx::{Connection, PgPool};
use zeroize::Zeroizing;

use super::RunError;
use crate::db::org_instances::{scan_page, RowFilter};
use crate::db::Table;
use crate::envelope::{FieldClass, Keyring};

/// How `verify --connect` reaches the fleet.
#[derive(Debug, Clone, Copy)]
pub struct ConnectOptions {
    /// Connection attempts at once.
    pub concurrency: usize,
    /// Per-connection timeout.
    pub timeout: Duration,
}

/// What connecting with one secret gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    Reachable,
    /// The server rejected the credentials (PostgreSQL SQLSTATE class 28,
    /// Redis WRONGPASS/NOAUTH).
    AuthFailure,
    /// The server answered with an error other than a credential check:
    /// the database does not exist, too many connections, starting up.
    Refused,
    NetworkFailure,
    /// The field did not open under the new key (or is not a URL).
    NotOpenable,
    /// The field is empty: nothing to check.
    Absent,
}

/// One tenant's verdict.
#[derive(Debug, Clone, Serialize)]
pub struct TenantReach {
    pub org_id: String,
    pub database: Reach,
    pub redis: Reach,
}

impl TenantReach {
    /// The tenant's overall class: the worse of its two secrets.
    pub fn overall(&self) -> Reach {
        let rank = |r: Reach| match r {
            Reach::Absent | Reach::Reachable => 0,
            Reach::NetworkFailure => 1,
            Reach::Refused => 2,
            Reach::AuthFailure => 3,
            Reach::NotOpenable => 4,
        };
        if rank(self.database) >= rank(self.redis) {
            if self.database == Reach::Absent {
                self.redis
            } else {
                self.database
            }
        } else {
            self.redis
        }
    }
}

/// The fleet's verdicts.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectReport {
    pub tenants: u64,
    pub reachable: u64,
    pub auth_failure: u64,
    pub refused: u64,
    pub network_failure: u64,
    pub not_openable: u64,
    /// Tenants that are not reachable (at most 50).
    pub failing: Vec<TenantReach>,
}

impl ConnectReport {
    pub fn all_reachable(&self) -> bool {
        self.reachable == self.tenants
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "connect: {} tenants: {} reachable, {} authentication failure, {} refused by the server, \
             {} network failure, {} not openable",
            self.tenants,
            self.reachable,
            self.auth_failure,
            self.refused,
            self.network_failure,
            self.not_openable
        );
        for t in &self.failing {
            let _ = writeln!(
                out,
                "  {}  database {:?}, redis {:?}",
                t.org_id, t.database, t.redis
            );
        }
        out
    }
}

/// Connects to every tenant's database and Redis.
pub async fn check_fleet(
    pool: &PgPool,
    table: &Table,
    keyring: &Arc<Keyring>,
    opts: &ConnectOptions,
) -> Result<ConnectReport, RunError> {
    let timeout = opts.timeout.max(Duration::from_millis(1));
    let mut verdicts = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let rows = scan_page(pool, table, after.as_deref(), &RowFilter::default(), 1000).await?;
        let Some(last) = rows.last() else { break };
        after = Some(last.id.clone());
        let page: Vec<TenantReach> = stream::iter(rows)
            .map(|row| {
                let keyring = Arc::clone(keyring);
                async move {
                    let db = open_url(&keyring, row.db.as_deref());
                    let redis = open_url(&keyring, row.redis.as_deref());
                    TenantReach {
                        org_id: row.id,
                        database: check_postgres(db, timeout).await,
                        redis: check_redis(redis, timeout).await,
                    }
                }
            })
            .buffer_unordered(opts.concurrency.max(1))
            .collect()
            .await;
        verdicts.extend(page);
    }
    verdicts.sort_by(|a, b| a.org_id.cmp(&b.org_id));
    let count = |r: Reach| verdicts.iter().filter(|t| t.overall() == r).count() as u64;
    Ok(ConnectReport {
        tenants: verdicts.len() as u64,
        reachable: count(Reach::Reachable) + count(Reach::Absent),
        auth_failure: count(Reach::AuthFailure),
        refused: count(Reach::Refused),
        network_failure: count(Reach::NetworkFailure),
        not_openable: count(Reach::NotOpenable),
        failing: verdicts
            .iter()
            .filter(|t| !matches!(t.overall(), Reach::Reachable | Reach::Absent))
            .take(50)
            .cloned()
            .collect(),
    })
}

/// The field's URL if it opens under the new key; `Err` says why not.
fn open_url(keyring: &Keyring, field: Option<&[u8]>) -> Result<Option<Zeroizing<String>>, Reach> {
    let classified = keyring.classify(field);
    match (classified.class, classified.plaintext) {
        (FieldClass::Empty, _) => Ok(None),
        (FieldClass::Current, Some(pt)) => match String::from_utf8(pt.to_vec()) {
            Ok(url) => Ok(Some(Zeroizing::new(url))),
            Err(_) => Err(Reach::NotOpenable),
        },
        _ => Err(Reach::NotOpenable),
    }
}

async fn check_postgres(url: Result<Option<Zeroizing<String>>, Reach>, timeout: Duration) -> Reach {
    let url = match url {
        Ok(Some(url)) => url,
        Ok(None) => return Reach::Absent,
        Err(r) => return r,
    };
    match tokio::time::timeout(timeout, sqlx::PgConnection::connect(&url)).await {
        Err(_) => Reach::NetworkFailure,
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Reach::Reachable
        }
        Ok(Err(e)) => classify_postgres_error(&e),
    }
}

/// SQLSTATE class 28 ("invalid authorization specification": a wrong
/// password, an unknown role, a role not allowed to log in, no pg_hba
/// entry) is the credentials' fault. Any other error the server sent
/// (3D000 database does not exist, 53300 too many connections, 57P03
/// starting up) came after or apart from the credential check, so it is
/// a refusal, not a bad secret. A URL sqlx cannot parse is not a URL.
fn classify_postgres_error(e: &sqlx::Error) -> Reach {
    match e {
        sqlx::Error::Database(db) if db.code().is_some_and(|c| c.starts_with("28")) => {
            Reach::AuthFailure
        }
        sqlx::Error::Database(_) => Reach::Refused,
        sqlx::Error::Configuration(_) => Reach::NotOpenable,
        _ => Reach::NetworkFailure,
    }
}

async fn check_redis(url: Result<Option<Zeroizing<String>>, Reach>, timeout: Duration) -> Reach {
    let url = match url {
        Ok(Some(url)) => url,
        Ok(None) => return Reach::Absent,
        Err(r) => return r,
    };
    let Ok(client) = redis::Client::open(url.as_str()) else {
        return Reach::NotOpenable;
    };
    let attempt = async {
        let mut conn = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut conn).await
    };
    match tokio::time::timeout(timeout, attempt).await {
        Err(_) => Reach::NetworkFailure,
        Ok(Ok(_)) => Reach::Reachable,
        Ok(Err(e)) => classify_redis_error(&e),
    }
}

/// WRONGPASS (surfaced by the client as a failed AUTH) and NOAUTH are the
/// credentials' fault. NOPERM comes only after the credentials were
/// accepted (the user may not run PING): the secret works, so the tenant
/// is reachable. Any other reply from the server (LOADING, max clients) is
/// a refusal; socket and TLS errors are the network's.
fn classify_redis_error(e: &redis::RedisError) -> Reach {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return Reach::AuthFailure;
    }
    if e.is_io_error() {
        return Reach::NetworkFailure;
    }
    match e.code() {
        Some("WRONGPASS") | Some("NOAUTH") => Reach::AuthFailure,
        Some("NOPERM") => Reach::Reachable,
        Some(_) => Reach::Refused,
        None => Reach::NetworkFailure,
    }
}
