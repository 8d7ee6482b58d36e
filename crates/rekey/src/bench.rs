//! `rekey fleet-bench`: capacity planning. Makes a scratch database, seeds
//! a fleet with `COPY`, runs the real engine at several worker counts,
//! verifies, measures a naive one-row-per-transaction loop on a sample in
//! the same run (the peer baseline), and drops the database. Prints rows/s,
//! batch latency percentiles and projected wall times for fleet sizes.

mod proxy;

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::{ConnectOptions, Connection, PgPool};

use crate::cloud::register::{FakeCloudProcess, RegisterError};
use crate::db::{self, org_instances::RowFilter, DbError};
use crate::envelope::{Cipher, Keyring, Mode};
use crate::keys::Key;
use crate::rotate::events::NullSink;
use crate::rotate::inplace::{auto_tune, Tuning};
use crate::rotate::run::{self, PhaseSecs, RunContext, RunOptions};
use crate::rotate::scan::scan;
use crate::rotate::RunError;

/// Why fleet-bench could not measure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    FakeCloud(#[from] RegisterError),
    #[error("the admin URL is not a URL with a host (the delaying proxy needs TCP)")]
    BadAdminUrl,
    #[error("could not start the delaying proxy on 127.0.0.1: {0}")]
    Proxy(std::io::Error),
}

impl From<sqlx::Error> for BenchError {
    fn from(e: sqlx::Error) -> BenchError {
        BenchError::Db(e.into())
    }
}

/// The reference schema the scratch database gets.
const SCHEMA: &str = include_str!("../../../scripts/schema.sql");

/// Fleet sizes the projection covers.
pub const PROJECTED_FLEETS: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];

/// What fleet-bench measures, and where.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Maintenance database used to create and drop the scratch database.
    pub admin_url: String,
    /// Tenants in the scratch fleet.
    pub rows: u64,
    /// Rows per in-place batch.
    pub batch_size: i64,
    /// Worker counts to measure.
    pub workers: Vec<usize>,
    /// Rows in the naive one-row-per-transaction baseline sample.
    pub naive_sample: u64,
    /// Keep the scratch database instead of dropping it.
    pub keep: bool,
    /// Tenants to re-provision against a fake cloud (0: skip).
    pub provision_tenants: u64,
    /// Tenants re-provisioned at once in that measurement.
    pub provision_concurrency: usize,
    /// Neon projects those tenants share, round robin (0: one each).
    pub provision_projects: u64,
    /// The strategy those tenants are re-provisioned with.
    pub provision_strategy: crate::rotate::reprovision::NeonStrategy,
    /// Fixed latency of every fake-cloud call.
    pub cloud_latency: Duration,
    /// The `fake-cloud` binary to start for the re-provision measurement.
    pub fake_cloud_bin: PathBuf,
    /// Round trips (ms) to measure the engine across, through a delaying proxy.
    pub db_rtt_ms: Vec<u64>,
    /// The cap `--workers auto` respects on connections.
    pub max_connections: usize,
    /// `--quiet`: no progress lines, only warnings and the final report.
    pub quiet: bool,
    /// The pacing a real re-provision runs at, for the projection at the
    /// vendors' limits.
    pub api_pacing: ApiPacing,
}

/// Requests per second a real run sends to each cloud API: `run`'s
/// `--neon-rps` and `--fly-rps`, which stay under the vendors' documented
/// limits (docs/cloud-apis.md).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct ApiPacing {
    pub neon_rps: u32,
    pub fly_rps: u32,
}

impl BenchOptions {
    /// One `fleet-bench:` progress line on stderr, unless `--quiet`.
    fn progress(&self, line: std::fmt::Arguments<'_>) {
        if !self.quiet {
            eprintln!("fleet-bench: {line}");
        }
    }
}

/// One worker count's measurement.
#[derive(Debug, Clone, Serialize)]
pub struct InPlaceFigure {
    pub workers: usize,
    pub rows: u64,
    pub secs: f64,
    pub rows_per_sec: f64,
    pub batch_p50_ms: f64,
    pub batch_p99_ms: f64,
    pub verified: bool,
    /// WAL the run generated per row walked (row versions, index entries,
    /// tuple locks, the backup): what the server writes for each tenant.
    pub wal_bytes_per_row: f64,
    /// Where the batches' time went, summed over workers.
    pub phase_secs: PhaseSecs,
    /// Of `secs`, the in-place passes; the rest is the run's fixed work
    /// (checks, the journal, the read that proves nothing is left), which
    /// across a network is round trips.
    pub pass_secs: f64,
}

/// The engine measured through a proxy adding a round trip, at the best
/// loopback worker count and batch size (`fixed`) and as `--workers auto`
/// tunes itself to the measured round trip (`auto`).
#[derive(Debug, Clone, Serialize)]
pub struct RttFigure {
    /// The round trip the proxy adds.
    pub rtt_ms: u64,
    pub fixed: InPlaceFigure,
    pub fixed_over_loopback: f64,
    pub tuning: Tuning,
    pub auto: InPlaceFigure,
    pub auto_over_loopback: f64,
}

/// Everything fleet-bench measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub rows: u64,
    pub batch_size: i64,
    pub seed_secs: f64,
    pub in_place: Vec<InPlaceFigure>,
    /// The engine through a delaying proxy, per `--db-rtt-ms`.
    pub across_network: Vec<RttFigure>,
    /// The best in-place figure's rows/s.
    pub rows_per_sec: f64,
    pub naive_sample: u64,
    pub naive_rows_per_sec: f64,
    pub speedup_over_naive: f64,
    /// Projected in-place wall seconds per fleet size.
    pub projection: Vec<(u64, f64)>,
    pub naive_projection: Vec<(u64, f64)>,
    /// The re-provision measurement, when one was asked for.
    pub reprovision: Option<ProvisionFigure>,
    /// The server's own floor: every row rewritten once, no client work.
    pub floor: FloorFigure,
    /// The best in-place rate over the floor's (`in place / floor`).
    pub in_place_over_floor: f64,
    /// Peak resident memory of this process (VmHWM), in bytes; `None`
    /// where `/proc/self/status` is not readable.
    pub peak_rss_bytes: Option<u64>,
    /// When, and on what, these figures were measured.
    pub measured_on: MachineFacts,
}

/// What a reader of the figures needs to know to compare them with their
/// own machine: the date, the CPUs this process could use and the server.
#[derive(Debug, Clone, Serialize)]
pub struct MachineFacts {
    /// UTC, RFC 3339, to the second.
    pub date: String,
    pub cpus: usize,
    /// PostgreSQL's `server_version`.
    pub server_version: String,
    pub rekey_version: &'static str,
}

/// The server's floor for rewriting every row once: one `UPDATE` of the
/// whole table, split in two key-range halves on two connections, with no
/// client work at all (no read, no crypto, no backup).
#[derive(Debug, Clone, Serialize)]
pub struct FloorFigure {
    pub connections: usize,
    pub rows: u64,
    pub secs: f64,
    pub rows_per_sec: f64,
    pub wal_bytes_per_row: f64,
}

/// Re-provisioning against the fake cloud at a fixed latency per call.
#[derive(Debug, Clone, Serialize)]
pub struct ProvisionFigure {
    pub tenants: u64,
    pub done: u64,
    pub concurrency: usize,
    pub latency_ms: u64,
    pub secs: f64,
    pub tenants_per_sec: f64,
    /// API calls per tenant, counted by the fake cloud, and of those Neon's and Fly's.
    pub calls_per_tenant: f64,
    pub neon_calls_per_tenant: f64,
    pub fly_calls_per_tenant: f64,
    /// concurrency / (calls per tenant x latency): what the latency allows.
    pub bound_tenants_per_sec: f64,
    /// tenants_per_sec / bound.
    pub efficiency: f64,
    /// At the fake's latency, with no rate limits.
    pub projection: Vec<(u64, f64)>,
    /// The same calls per tenant at a real run's pacing: what bounds a
    /// fleet-wide re-provision on the incident day.
    pub at_api_limits: ApiLimitFigure,
}

/// Re-provisioning projected at the pacing a real run uses: the measured
/// rate, or the rate the API pacing allows at the measured calls per
/// tenant, whichever is lower.
#[derive(Debug, Clone, Serialize)]
pub struct ApiLimitFigure {
    pub neon_rps: u32,
    pub fly_rps: u32,
    pub tenants_per_sec: f64,
    /// What sets that rate: `neon`, `fly` (the API's pacing) or `latency`
    /// (the measured rate is already lower).
    pub binding: &'static str,
    pub projection: Vec<(u64, f64)>,
}

impl ApiLimitFigure {
    /// tenants/s = min(measured, neon_rps / Neon calls, fly_rps / Fly calls).
    pub fn new(pacing: ApiPacing, measured: f64, neon_calls: f64, fly_calls: f64) -> Self {
        let per_tenant = |rps: u32, calls: f64| {
            if calls > 0.0 {
                f64::from(rps) / calls
            } else {
                f64::INFINITY
            }
        };
        let (tenants_per_sec, binding) = if measured.is_finite() && measured > 0.0 {
            [
                (measured, "latency"),
                (per_tenant(pacing.neon_rps, neon_calls), "neon"),
                (per_tenant(pacing.fly_rps, fly_calls), "fly"),
            ]
            .into_iter()
            .min_by(|a, b| a.0.total_cmp(&b.0))
            .unwrap_or((measured, "latency"))
        } else {
            // No tenant was re-provisioned: neither the calls per tenant
            // nor a rate are known (and `project` projects nothing).
            (0.0, "not measured")
        };
        ApiLimitFigure {
            neon_rps: pacing.neon_rps,
            fly_rps: pacing.fly_rps,
            tenants_per_sec,
            binding,
            projection: project(tenants_per_sec),
        }
    }

    /// "0.62 tenants/s, bound by neon", or why there is no figure.
    pub fn rate_text(&self) -> String {
        if self.projection.is_empty() {
            "not measured: no tenant was re-provisioned".into()
        } else {
            format!(
                "{:.2} tenants/s, bound by {}",
                self.tenants_per_sec, self.binding
            )
        }
    }
}

/// Projected wall seconds per fleet size at a rate per second; none when
/// nothing was measured (a rate of 0 projects no time, not an infinite one).
fn project(per_sec: f64) -> Vec<(u64, f64)> {
    if !(per_sec.is_finite() && per_sec > 0.0) {
        return Vec::new();
    }
    PROJECTED_FLEETS
        .iter()
        .map(|&n| (n, n as f64 / per_sec))
        .collect()
}

/// Makes the scratch database, measures, and drops it (unless kept).
pub async fn fleet_bench(opts: &BenchOptions) -> Result<BenchReport, BenchError> {
    let admin_url = &opts.admin_url;
    let scratch = format!(
        "rekey_bench_{}_{}",
        std::process::id(),
        rand::random::<u32>()
    );
    let mut admin =
        tokio::time::timeout(db::CONNECT_TIMEOUT, sqlx::PgConnection::connect(admin_url))
            .await
            .map_err(|_| DbError::Connect {
                url: crate::redact::url(admin_url),
                message: format!("no answer within {} s", db::CONNECT_TIMEOUT.as_secs()),
            })?
            .map_err(|e| DbError::Connect {
                url: crate::redact::url(admin_url),
                message: db::short_db_error(&e),
            })?;
    sqlx::query(&format!("CREATE DATABASE {scratch}"))
        .execute(&mut admin)
        .await?;
    let scratch_url = replace_database(admin_url, &scratch)?;
    opts.progress(format_args!("scratch database {scratch}"));
    let result = measure(&scratch_url, opts).await;
    if !opts.keep {
        let drop = sqlx::query(&format!("DROP DATABASE IF EXISTS {scratch} WITH (FORCE)"))
            .execute(&mut admin)
            .await;
        if let Err(e) = drop {
            eprintln!(
                "warning: could not drop scratch database {scratch}: {}",
                db::short_db_error(&e)
            );
        }
    }
    result
}

fn replace_database(url: &str, database: &str) -> Result<String, BenchError> {
    let mut parsed = url::Url::parse(url).map_err(|_| BenchError::BadAdminUrl)?;
    parsed.set_path(&format!("/{database}"));
    Ok(parsed.to_string())
}

async fn measure(url: &str, args: &BenchOptions) -> Result<BenchReport, BenchError> {
    let max_workers = args.workers.iter().copied().max().unwrap_or(1);
    let pool = db::connect(url, max_workers as u32 + 4).await?;
    sqlx::raw_sql(SCHEMA).execute(&pool).await?;
    db::migrate(&pool).await?;
    let table = db::resolve_table(&pool, &db::TableSpec::default()).await?;
    let measured_on = machine_facts(&pool).await?;
    let seed_started = Instant::now();
    let tenants = db::seed::tenants(&db::seed::SeedSpec {
        rows: args.rows,
        undecryptable_share: 0.0,
        kms_share: 0.0,
        null_redis_share: 0.0,
        seed: 7,
    });
    let mut key = fresh_fleet(&pool, &table, &tenants).await?;
    let seed_secs = seed_started.elapsed().as_secs_f64();
    args.progress(format_args!(
        "seeded {} rows in {seed_secs:.1} s",
        args.rows
    ));

    // Every measurement starts from the same state: a freshly loaded
    // (densely packed) table under a fresh old key, as on the incident day.
    // Rotating an already-rotated table would measure half-empty pages and
    // HOT updates instead, which production will not see the first time.
    let mut figures = Vec::new();
    let mut first = true;
    for &workers in &args.workers {
        if !std::mem::take(&mut first) {
            key = fresh_fleet(&pool, &table, &tenants).await?;
        }
        let f = measure_engine(
            &pool,
            &pool,
            &table,
            &key,
            args.rows,
            workers,
            args.batch_size,
        )
        .await?;
        args.progress(format_args!(
            "{workers} workers: {:.0} rows/s, batch p50 {:.1} ms p99 {:.1} ms, verified {}; \
             batch time: read {:.2}s crypto {:.2}s write {:.2}s; WAL {:.0} B/row",
            f.rows_per_sec,
            f.batch_p50_ms,
            f.batch_p99_ms,
            f.verified,
            f.phase_secs.read,
            f.phase_secs.crypto,
            f.phase_secs.write,
            f.wal_bytes_per_row,
        ));
        figures.push(f);
    }
    let best = figures.iter().map(|f| f.rows_per_sec).fold(0.0, f64::max);
    let best_workers = figures
        .iter()
        .max_by(|a, b| a.rows_per_sec.total_cmp(&b.rows_per_sec))
        .map_or(1, |f| f.workers);
    let mut across_network = Vec::new();
    for &rtt_ms in &args.db_rtt_ms {
        across_network.push(
            measure_rtt(
                &pool,
                url,
                &table,
                &tenants,
                args,
                rtt_ms,
                best_workers,
                best,
            )
            .await?,
        );
    }
    fresh_fleet(&pool, &table, &tenants).await?;
    let floor = measure_floor(&pool, &table, args).await?;
    let key = fresh_fleet(&pool, &table, &tenants).await?;
    let naive_rows_per_sec = naive_loop(&pool, &table, &key, args.naive_sample).await?;
    let reprovision = if args.provision_tenants > 0 {
        Some(measure_reprovision(&pool, &table, args).await?)
    } else {
        None
    };
    Ok(BenchReport {
        rows: args.rows,
        batch_size: args.batch_size,
        seed_secs,
        in_place: figures,
        across_network,
        rows_per_sec: best,
        naive_sample: args.naive_sample,
        naive_rows_per_sec,
        speedup_over_naive: if naive_rows_per_sec > 0.0 {
            best / naive_rows_per_sec
        } else {
            0.0
        },
        projection: project(best),
        naive_projection: project(naive_rows_per_sec),
        reprovision,
        in_place_over_floor: best / floor.rows_per_sec.max(1e-9),
        floor,
        peak_rss_bytes: peak_rss_bytes(),
        measured_on,
    })
}

/// What the server needs to write every row once, measured on the same
/// freshly loaded, checkpointed table as the engine's figures: `SET db = db`
/// still writes a new row version per row (non-HOT on full pages, with its
/// index entries and full-page images), which is the server-side work the
/// engine cannot avoid. Two connections, one per key-range half, as the
/// reference machine has two cores.
async fn measure_floor(
    pool: &PgPool,
    table: &db::Table,
    args: &BenchOptions,
) -> Result<FloorFigure, BenchError> {
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {}", table.name))
        .fetch_one(pool)
        .await?;
    let middle: Option<String> = sqlx::query_scalar(&format!(
        "SELECT {id}::text FROM {t} ORDER BY {id} OFFSET $1 LIMIT 1",
        id = table.id,
        t = table.name
    ))
    .bind(rows / 2)
    .fetch_optional(pool)
    .await?;
    let rewrite = |cmp: &str| {
        format!(
            "UPDATE {t} SET {db} = {db}, {redis} = {redis} WHERE {id} {cmp} $1::text::{ty}",
            t = table.name,
            db = table.db,
            redis = table.redis,
            id = table.id,
            ty = table.id_type
        )
    };
    let (low, high) = (rewrite("<"), rewrite(">="));
    let wal_before: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?;
    // Connections are opened before the clock starts: the floor is the
    // rewrite, not the connect. Their own, without sqlx's slow-statement
    // warning, which every whole-table UPDATE would print.
    let quiet = pool
        .connect_options()
        .as_ref()
        .clone()
        .disable_statement_logging();
    let mut a = sqlx::PgConnection::connect_with(&quiet).await?;
    let mut b = sqlx::PgConnection::connect_with(&quiet).await?;
    let started = Instant::now();
    let written = match &middle {
        Some(middle) => {
            let (x, y) = tokio::try_join!(
                sqlx::query(&low).bind(middle).execute(&mut a),
                sqlx::query(&high).bind(middle).execute(&mut b),
            )?;
            x.rows_affected() + y.rows_affected()
        }
        None => 0,
    };
    let secs = started.elapsed().as_secs_f64();
    // Closing is courtesy: a connection dropped unclosed ends all the same.
    let _ = tokio::join!(a.close(), b.close());
    let wal_bytes: f64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
            .bind(&wal_before)
            .fetch_one(pool)
            .await?;
    let rows_per_sec = written as f64 / secs.max(1e-9);
    args.progress(format_args!(
        "floor (UPDATE of every row on 2 connections): {rows_per_sec:.0} rows/s, \
         WAL {:.0} B/row",
        wal_bytes / written.max(1) as f64
    ));
    Ok(FloorFigure {
        connections: 2,
        rows: written,
        secs,
        rows_per_sec,
        wal_bytes_per_row: wal_bytes / written.max(1) as f64,
    })
}

/// This process's peak resident set (VmHWM in `/proc/self/status`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line
        .trim_start_matches("VmHWM:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// One rotation of a freshly loaded fleet sealed under `key`, run through
/// `run_pool` (direct, or across the delaying proxy), measured and verified
/// through `pool`.
#[allow(clippy::too_many_arguments)]
async fn measure_engine(
    pool: &PgPool,
    run_pool: &PgPool,
    table: &db::Table,
    key: &Key,
    rows: u64,
    workers: usize,
    batch_size: i64,
) -> Result<InPlaceFigure, BenchError> {
    let new = Key::generate().map_err(|_| RunError::NoRandomness)?;
    let keyring = Arc::new(Keyring::new(&new, Some(key)));
    let ctx = RunContext {
        pool: run_pool.clone(),
        table: table.clone(),
        keyring: Arc::clone(&keyring),
        sink: Arc::new(NullSink),
        reprovisioner: None,
        stop: Arc::new(AtomicBool::new(false)),
    };
    let opts = RunOptions::new(Mode::Reencrypt, workers, batch_size);
    let wal_before: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(pool)
        .await?;
    let r = run::run(&ctx, &opts).await?;
    let wal_bytes: f64 =
        sqlx::query_scalar("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::float8")
            .bind(&wal_before)
            .fetch_one(pool)
            .await?;
    let wal_bytes_per_row = wal_bytes / r.rows_walked.max(1) as f64;
    // End to end: the whole `run`, from the open-run check to the run
    // recorded as finished, including the read that proves nothing is
    // left; not only the batches.
    let rows_per_sec = rows as f64 / r.elapsed_secs.max(1e-9);
    let check = scan(pool, table, &keyring, Mode::Auto, &RowFilter::default()).await?;
    let verified = check.fields.current + check.fields.empty == 2 * rows;
    Ok(InPlaceFigure {
        workers,
        rows: r.rows_walked,
        secs: r.elapsed_secs,
        rows_per_sec,
        batch_p50_ms: r.batch_p50_ms,
        batch_p99_ms: r.batch_p99_ms,
        verified,
        wal_bytes_per_row,
        phase_secs: r.phase_secs,
        pass_secs: r.in_place_secs,
    })
}

/// The engine across a network of `rtt_ms` round trip: a delaying proxy in
/// front of the same server, first at the loopback's best configuration,
/// then as `--workers auto` tunes to the round trip it measures.
#[allow(clippy::too_many_arguments)]
async fn measure_rtt(
    pool: &PgPool,
    url: &str,
    table: &db::Table,
    tenants: &[db::seed::SeedTenant],
    args: &BenchOptions,
    rtt_ms: u64,
    best_workers: usize,
    loopback: f64,
) -> Result<RttFigure, BenchError> {
    let parsed = url::Url::parse(url).map_err(|_| BenchError::BadAdminUrl)?;
    let upstream = format!(
        "{}:{}",
        parsed.host_str().ok_or(BenchError::BadAdminUrl)?,
        parsed.port().unwrap_or(5432)
    );
    let proxy = proxy::DelayProxy::start(upstream, Duration::from_millis(rtt_ms))
        .await
        .map_err(BenchError::Proxy)?;
    let mut proxied = parsed.clone();
    proxied
        .set_host(Some("127.0.0.1"))
        .and_then(|()| {
            proxied
                .set_port(Some(proxy.addr().port()))
                .map_err(|()| url::ParseError::InvalidPort)
        })
        .map_err(|_| BenchError::BadAdminUrl)?;
    let run_pool = db::connect(proxied.as_str(), args.max_connections as u32 + 4).await?;
    let key = fresh_fleet(pool, table, tenants).await?;
    let fixed = measure_engine(
        pool,
        &run_pool,
        table,
        &key,
        args.rows,
        best_workers,
        args.batch_size,
    )
    .await?;
    let tuning = auto_tune(&run_pool, args.max_connections).await?;
    let key = fresh_fleet(pool, table, tenants).await?;
    let auto = measure_engine(
        pool,
        &run_pool,
        table,
        &key,
        args.rows,
        tuning.workers,
        tuning.batch_size,
    )
    .await?;
    run_pool.close().await;
    args.progress(format_args!(
        "across {rtt_ms} ms RTT: {best_workers} workers x {}: {:.0} rows/s ({:.2}x loopback, \
         passes {:.2} s of {:.2} s); auto (measured {:.1} ms, {} free connections) {} workers x {}: \
         {:.0} rows/s ({:.2}x loopback, passes {:.2} s of {:.2} s)",
        args.batch_size,
        fixed.rows_per_sec,
        fixed.rows_per_sec / loopback.max(1e-9),
        fixed.pass_secs,
        fixed.secs,
        tuning.rtt_ms,
        tuning.free_connections,
        tuning.workers,
        tuning.batch_size,
        auto.rows_per_sec,
        auto.rows_per_sec / loopback.max(1e-9),
        auto.pass_secs,
        auto.secs,
    ));
    Ok(RttFigure {
        rtt_ms,
        fixed_over_loopback: fixed.rows_per_sec / loopback.max(1e-9),
        fixed,
        tuning,
        auto_over_loopback: auto.rows_per_sec / loopback.max(1e-9),
        auto,
    })
}

/// Re-provisions a fleet that no key opens, against a `fake-cloud`
/// process answering every call after a fixed latency, through the real
/// engine and clients.
async fn measure_reprovision(
    pool: &PgPool,
    table: &db::Table,
    args: &BenchOptions,
) -> Result<ProvisionFigure, BenchError> {
    use crate::cloud::Secret;
    use crate::rotate::reprovision::{self, CloudAccess, CloudLimits, ProvisionSettings};

    sqlx::raw_sql(&format!("TRUNCATE {}", table.name))
        .execute(pool)
        .await?;
    let fake = FakeCloudProcess::spawn(
        &args.fake_cloud_bin,
        &[
            "--op-ms".into(),
            "10".into(),
            "--boot-ms".into(),
            "10".into(),
        ],
    )
    .await?;
    let mut tenants = db::seed::tenants(&db::seed::SeedSpec {
        rows: args.provision_tenants,
        undecryptable_share: 0.0,
        kms_share: 0.0,
        null_redis_share: 0.0,
        seed: 11,
    });
    if args.provision_projects > 0 {
        for (i, t) in tenants.iter_mut().enumerate() {
            t.neon_project_id = format!("proj-shared-{:05}", i as u64 % args.provision_projects);
        }
    }
    // Sealed under a key the run does not have: every tenant re-provisions.
    let lost = Key::generate().map_err(|_| RunError::NoRandomness)?;
    db::seed::seed(pool, table, &lost, &tenants).await?;
    crate::cloud::register::register_fake_tenants(fake.base_url(), &tenants).await?;
    let before = fake.requests_by_api().await?;
    let latency_ms = u64::try_from(args.cloud_latency.as_millis()).unwrap_or(u64::MAX);
    fake.configure(&serde_json::json!({ "latency_ms": latency_ms }))
        .await?;
    let new = Key::generate().map_err(|_| RunError::NoRandomness)?;
    let keyring = Arc::new(Keyring::new(&new, None));
    let sink: Arc<dyn crate::rotate::events::EventSink> = Arc::new(NullSink);
    let limits = CloudLimits {
        // The rate limits are not what this measures: latency is.
        neon_rps: 10_000,
        fly_rps: 10_000,
        poll: Duration::from_millis(10),
        lookup_settle: Duration::from_millis(10),
    };
    let settings = ProvisionSettings {
        concurrency: args.provision_concurrency,
        strategy: args.provision_strategy,
        max_attempts: 5,
        lease: Duration::from_secs(60),
        step_deadline: Duration::from_secs(120),
        max_tenants: None,
        canary: None,
        // The fake's tenant database URLs point nowhere.
        prove_connect: false,
        prove_timeout: Duration::from_secs(10),
    };
    let access = CloudAccess {
        neon_url: fake.neon_url(),
        fly_url: fake.fly_url(),
        neon_key: Secret::new("bench"),
        fly_token: Secret::new("bench"),
        redis_url: Secret::new("rediss://default:bench@tenant-redis.internal:6379"),
    };
    let reprovisioner =
        reprovision::build(access, &limits, settings, pool, table, &keyring, &sink)?;
    let ctx = RunContext {
        pool: pool.clone(),
        table: table.clone(),
        keyring,
        sink,
        reprovisioner: Some(Arc::new(reprovisioner)),
        stop: Arc::new(AtomicBool::new(false)),
    };
    let opts = RunOptions::new(Mode::Auto, 2, 1000);
    let started = Instant::now();
    let r = run::run(&ctx, &opts).await?;
    let secs = started.elapsed().as_secs_f64();
    let after = fake.requests_by_api().await?;
    fake.stop().await;
    let done = r.reprovisioned.max(1) as f64;
    let neon_calls_per_tenant = after.neon.saturating_sub(before.neon) as f64 / done;
    let fly_calls_per_tenant = after.fly.saturating_sub(before.fly) as f64 / done;
    let calls_per_tenant = neon_calls_per_tenant + fly_calls_per_tenant;
    let bound = args.provision_concurrency as f64
        / (calls_per_tenant * args.cloud_latency.as_secs_f64()).max(1e-9);
    let rate = r.reprovisioned as f64 / secs.max(1e-9);
    args.progress(format_args!(
        "re-provisioned {}/{} tenants in {secs:.1} s: {rate:.2} tenants/s, {calls_per_tenant:.1} calls \
         per tenant, bound {bound:.2} tenants/s ({:.0}%)",
        r.reprovisioned,
        args.provision_tenants,
        100.0 * rate / bound
    ));
    let at_api_limits = ApiLimitFigure::new(
        args.api_pacing,
        rate,
        neon_calls_per_tenant,
        fly_calls_per_tenant,
    );
    args.progress(format_args!(
        "at the APIs' pacing (Neon {} req/s, Fly {} req/s): {}",
        at_api_limits.neon_rps,
        at_api_limits.fly_rps,
        at_api_limits.rate_text()
    ));
    Ok(ProvisionFigure {
        tenants: args.provision_tenants,
        done: r.reprovisioned,
        concurrency: args.provision_concurrency,
        latency_ms,
        secs,
        tenants_per_sec: rate,
        calls_per_tenant,
        neon_calls_per_tenant,
        fly_calls_per_tenant,
        bound_tenants_per_sec: bound,
        efficiency: rate / bound,
        projection: project(rate),
        at_api_limits,
    })
}

/// The date, the CPUs this process may use and the server's version.
async fn machine_facts(pool: &PgPool) -> Result<MachineFacts, BenchError> {
    let server_version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(pool)
        .await?;
    Ok(MachineFacts {
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        cpus: std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        server_version,
        rekey_version: env!("CARGO_PKG_VERSION"),
    })
}

/// Empties the table and the journal, loads `tenants` sealed under a fresh
/// key, and returns that key.
async fn fresh_fleet(
    pool: &PgPool,
    table: &db::Table,
    tenants: &[db::seed::SeedTenant],
) -> Result<Key, BenchError> {
    sqlx::raw_sql(&format!(
        "TRUNCATE {}; TRUNCATE rekey.backups, rekey.items, rekey.runs",
        table.name
    ))
    .execute(pool)
    .await?;
    let key = Key::generate().map_err(|_| RunError::NoRandomness)?;
    db::seed::seed(pool, table, &key, tenants).await?;
    sqlx::raw_sql(&format!("VACUUM ANALYZE {}", table.name))
        .execute(pool)
        .await?;
    // On the incident day the table's pages were last written long before
    // the last checkpoint, so the run's first change to each page logs the
    // whole page (full_page_writes). Without this checkpoint the pages the
    // seed just wrote would be spared that, and the WAL and the rate would
    // look better than the real day: measured 786 against 1,249 WAL bytes
    // per row. CHECKPOINT needs superuser or pg_checkpoint; without it the
    // figures are flagged as optimistic.
    if let Err(e) = sqlx::raw_sql("CHECKPOINT").execute(pool).await {
        eprintln!(
            "warning: CHECKPOINT refused ({}): the figures will be optimistic, the run will not pay \
             for the full-page images the incident day pays for",
            db::short_db_error(&e)
        );
    }
    Ok(key)
}

/// The peer baseline: what an ORM's `find_each` + `save` does, one SELECT
/// and one UPDATE per row, each row its own transaction.
async fn naive_loop(
    pool: &PgPool,
    table: &db::Table,
    key: &Key,
    sample: u64,
) -> Result<f64, BenchError> {
    let old = Cipher::new(key);
    let new = Cipher::new(&Key::generate().map_err(|_| RunError::NoRandomness)?);
    let db::Table {
        name: t,
        id,
        db,
        redis,
        id_type: ty,
        ..
    } = table;
    let ids: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT {id}::text FROM {t} ORDER BY {id} LIMIT $1"
    ))
    .bind(sample as i64)
    .fetch_all(pool)
    .await?;
    let select = format!("SELECT {db}, {redis} FROM {t} WHERE {id} = $1::text::{ty}");
    let update = format!("UPDATE {t} SET {db} = $2, {redis} = $3 WHERE {id} = $1::text::{ty}");
    let mut conn = pool.acquire().await?;
    let started = Instant::now();
    for org in &ids {
        let mut tx = conn.begin().await?;
        let (db_ct, redis_ct): (Option<Vec<u8>>, Option<Vec<u8>>) = sqlx::query_as(&select)
            .bind(org)
            .fetch_one(&mut *tx)
            .await?;
        let reseal = |ct: Option<Vec<u8>>| ct.and_then(|c| old.open(&c)).map(|pt| new.seal(&pt));
        sqlx::query(&update)
            .bind(org)
            .bind(reseal(db_ct))
            .bind(reseal(redis_ct))
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(ids.len() as f64 / started.elapsed().as_secs_f64().max(1e-9))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PACING: ApiPacing = ApiPacing {
        neon_rps: 10,
        fly_rps: 20,
    };

    #[test]
    fn the_pacing_bound_is_the_lowest_of_the_measured_rate_and_each_apis() {
        let neon = ApiLimitFigure::new(PACING, 22.0, 16.0, 9.0);
        assert_eq!((neon.tenants_per_sec, neon.binding), (10.0 / 16.0, "neon"));
        assert_eq!(neon.projection[0], (1_000, 1_000.0 / (10.0 / 16.0)));
        let fly = ApiLimitFigure::new(PACING, 22.0, 1.0, 40.0);
        assert_eq!((fly.tenants_per_sec, fly.binding), (0.5, "fly"));
        let latency = ApiLimitFigure::new(PACING, 0.2, 16.0, 9.0);
        assert_eq!(latency.binding, "latency");
    }

    /// Nothing re-provisioned: no rate, no projection, and no claim about
    /// what bound it (it used to project ~10^15 s, "bound by latency").
    #[test]
    fn nothing_re_provisioned_projects_nothing() {
        let none = ApiLimitFigure::new(PACING, 0.0, 0.0, 0.0);
        assert_eq!(none.binding, "not measured");
        assert!(none.projection.is_empty());
        assert!(project(0.0).is_empty());
        assert!(project(f64::NAN).is_empty());
    }
}
