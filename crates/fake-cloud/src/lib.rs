//! A stateful fake of the Neon API v2 and Fly Machines API subsets `rekey`
//! uses, served by axum on loopback only. Tests, the demo, benchmarks and
//! rehearsals point the real clients at it; it keeps real state (projects,
//! branches, roles and passwords, endpoints, operations, apps, machines) and
//! gives the real refusals (409, 412, 422, 423, 429, …).
//!
//! This file holds the public handle (`FakeCloud`), its configuration
//! (`FakeConfig`: latency, injected errors, rate limits, operation and boot
//! durations, credentials) and the shared state behind every handler. The
//! APIs live in `neon` and `fly`, the per-request gate (auth, limits,
//! injection) in `gate`, the vendors' documented rate limits in `limits`,
//! and the harness's own `/_fake` endpoints in `admin`. The `fake-cloud`
//! binary wraps this module.

mod admin;
mod fly;
mod gate;
mod http;
mod ids;
mod limits;
mod neon;

pub use limits::VendorLimits;

use std::fmt;
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::{middleware, Router};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::TcpListener;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;

use crate::gate::Api;
use crate::ids::Ids;

/// How the fake behaves: injected latency and failures, rate limits, how
/// long Neon operations and Fly boots take, and which credentials it wants.
/// `Default` is fast and forgiving: no latency, no failures, no limits,
/// instant operations, no auth.
#[derive(Clone, Default)]
pub struct FakeConfig {
    /// Added to every Neon and Fly call before anything else happens.
    pub latency: Duration,
    /// Share (0..=1) of calls answered 500 or 503 before doing anything.
    pub error_rate: f64,
    /// Share (0..=1) of successful mutations answered 503 after the change
    /// was applied: the caller cannot know it landed.
    pub error_after_commit_rate: f64,
    /// Token bucket per API (requests per second, burst); beyond it, 429.
    pub rate_limit: Option<(u32, u32)>,
    /// Whether 429s carry `Retry-After`.
    pub retry_after: bool,
    /// How long the operations of one Neon mutation take to finish.
    pub op_duration: Duration,
    /// How long a Fly machine takes from `created` (or `stopped`) to
    /// `started`, and from `stopping` to `stopped`.
    pub boot_duration: Duration,
    /// Seed for every generated id and password, and for injection rolls.
    pub seed: u64,
    /// When set, Neon calls need `Authorization: Bearer <key>`.
    pub neon_api_key: Option<String>,
    /// When set, Fly calls need `Bearer <token>` or `FlyV1 <token>`.
    pub fly_api_token: Option<String>,
    /// `false`: creating a machine under a name a live machine of the app
    /// already has is refused with 409. `true`: duplicates are accepted.
    pub fly_duplicate_names: bool,
    /// `true`: every machine health check (`config.checks`) reports
    /// `critical`, as if the tenant's app never came up. `false`: checks
    /// pass once the machine is started.
    pub fly_failing_checks: bool,
    /// The vendors' documented rate limits, keyed as they key them (Neon
    /// per account and per route, Fly per action and machine or app);
    /// beyond them, 429. `None`: not enforced.
    pub vendor_limits: Option<VendorLimits>,
}

/// Credentials are shown as set or not, never printed.
impl fmt::Debug for FakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeConfig")
            .field("latency", &self.latency)
            .field("error_rate", &self.error_rate)
            .field("error_after_commit_rate", &self.error_after_commit_rate)
            .field("rate_limit", &self.rate_limit)
            .field("retry_after", &self.retry_after)
            .field("op_duration", &self.op_duration)
            .field("boot_duration", &self.boot_duration)
            .field("seed", &self.seed)
            .field("neon_api_key", &self.neon_api_key.as_ref().map(|_| "<set>"))
            .field(
                "fly_api_token",
                &self.fly_api_token.as_ref().map(|_| "<set>"),
            )
            .field("fly_duplicate_names", &self.fly_duplicate_names)
            .field("fly_failing_checks", &self.fly_failing_checks)
            .field("vendor_limits", &self.vendor_limits)
            .finish()
    }
}

/// A running fake cloud. Dropping it stops the server too; `shutdown`
/// also waits for it to finish.
pub struct FakeCloud {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

impl FakeCloud {
    /// Serve on a fresh port of 127.0.0.1.
    pub async fn start(config: FakeConfig) -> std::io::Result<FakeCloud> {
        let listener = TcpListener::bind(("127.0.0.1", 0)).await?;
        FakeCloud::start_on(listener, config).await
    }

    /// Serve on `listener`, which must be bound to a loopback address.
    pub async fn start_on(listener: TcpListener, config: FakeConfig) -> std::io::Result<FakeCloud> {
        let addr = listener.local_addr()?;
        if !addr.ip().is_loopback() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("the fake cloud serves loopback only, not {addr}"),
            ));
        }
        let shared = Arc::new(Shared::new(config));
        let app = router(shared.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                // A dropped sender means the handle is gone: stop as well.
                let _ = stopped.await;
            });
            if let Err(error) = serve.await {
                tracing::warn!(%error, "fake cloud server stopped with an error");
            }
        });
        Ok(FakeCloud {
            addr,
            shared,
            stop: Some(stop),
            server: Some(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the Neon API: `http://ADDR/api/v2`.
    pub fn neon_url(&self) -> String {
        format!("http://{}/api/v2", self.addr)
    }

    /// Base URL of the Fly Machines API: `http://ADDR/v1`.
    pub fn fly_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Replace the configuration; takes effect for the next request. A
    /// changed seed restarts the id draw (ids in use stay in use).
    pub fn set_config(&self, config: FakeConfig) {
        self.shared.set_config(config);
    }

    /// Everything the fake holds, as `GET /_fake/state` returns it.
    pub fn state(&self) -> serde_json::Value {
        admin::snapshot(&self.shared)
    }

    /// Stop accepting requests, end pending `/wait`s, and wait (briefly) for
    /// in-flight requests to finish.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        if let Some(mut server) = self.server.take() {
            if tokio::time::timeout(Duration::from_secs(2), &mut server)
                .await
                .is_err()
            {
                server.abort();
            }
        }
    }

    fn begin_shutdown(&mut self) {
        self.shared.closing.store(true, Ordering::SeqCst);
        self.shared.fly_changed.notify_waiters();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

impl Drop for FakeCloud {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

fn router(shared: Arc<Shared>) -> Router {
    let neon = neon::routes()
        .fallback(neon::unknown_route)
        .layer(middleware::from_fn_with_state(shared.clone(), gate::neon));
    let fly = fly::routes()
        .fallback(fly::unknown_route)
        .layer(middleware::from_fn_with_state(shared.clone(), gate::fly));
    // Bulk registration of 10,000 tenants is a few megabytes.
    let admin = admin::routes().layer(DefaultBodyLimit::max(256 << 20));
    Router::new()
        .nest("/api/v2", neon)
        .nest("/v1", fly)
        .nest("/_fake", admin)
        .with_state(shared)
}

/// Everything handlers share. The world is behind one mutex held only for
/// the synchronous part of a request, never across an `.await`.
pub(crate) struct Shared {
    world: Mutex<World>,
    runtime: Mutex<Runtime>,
    counters: Mutex<Counters>,
    routes: Mutex<RouteCounters>,
    /// Woken on every Fly machine change, so `/wait` need not poll.
    pub(crate) fly_changed: Notify,
    /// Set when the handle shuts down: pending waits give up.
    pub(crate) closing: AtomicBool,
}

/// All cloud state.
pub(crate) struct World {
    pub(crate) ids: Ids,
    pub(crate) neon: neon::Neon,
    pub(crate) fly: fly::Fly,
}

/// The configuration and what is derived from it.
struct Runtime {
    config: Arc<FakeConfig>,
    limiters: Option<Limiters>,
    vendor: Option<Arc<limits::VendorLimiters>>,
    rolls: StdRng,
}

struct Limiters {
    neon: Arc<DefaultDirectRateLimiter>,
    fly: Arc<DefaultDirectRateLimiter>,
}

/// Responses by API and status code.
pub(crate) type Counters = std::collections::BTreeMap<(Api, u16), u64>;

/// Requests per API and route (method and path with ids replaced by `*`).
pub(crate) type RouteCounters = std::collections::BTreeMap<(Api, String), u64>;

impl Shared {
    fn new(config: FakeConfig) -> Shared {
        let world = World {
            ids: Ids::new(config.seed),
            neon: neon::Neon::default(),
            fly: fly::Fly::default(),
        };
        Shared {
            world: Mutex::new(world),
            runtime: Mutex::new(Runtime::new(config)),
            counters: Mutex::new(Counters::new()),
            routes: Mutex::new(RouteCounters::new()),
            fly_changed: Notify::new(),
            closing: AtomicBool::new(false),
        }
    }

    /// The state; a handler that panicked mid-change cannot make it
    /// unusable for the rest of a test run.
    pub(crate) fn world(&self) -> MutexGuard<'_, World> {
        self.world.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn runtime(&self) -> MutexGuard<'_, Runtime> {
        self.runtime.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn config(&self) -> Arc<FakeConfig> {
        self.runtime().config.clone()
    }

    pub(crate) fn set_config(&self, config: FakeConfig) {
        let reseed = self.config().seed != config.seed;
        if reseed {
            self.world().ids.reseed(config.seed);
        }
        *self.runtime() = Runtime::new(config);
    }

    fn limiter(&self, api: Api) -> Option<Arc<DefaultDirectRateLimiter>> {
        let runtime = self.runtime();
        let limiters = runtime.limiters.as_ref()?;
        Some(match api {
            Api::Neon => limiters.neon.clone(),
            Api::Fly => limiters.fly.clone(),
        })
    }

    fn vendor_limiters(&self) -> Option<Arc<limits::VendorLimiters>> {
        self.runtime().vendor.clone()
    }

    /// True with probability `share`.
    pub(crate) fn roll(&self, share: f64) -> bool {
        share > 0.0 && self.runtime().rolls.gen::<f64>() < share
    }

    fn count(&self, api: Api, route: String, status: axum::http::StatusCode) {
        {
            let mut counters = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
            *counters.entry((api, status.as_u16())).or_default() += 1;
        }
        let mut routes = self.routes.lock().unwrap_or_else(PoisonError::into_inner);
        *routes.entry((api, route)).or_default() += 1;
    }

    pub(crate) fn route_counters(&self) -> RouteCounters {
        self.routes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn counters(&self) -> Counters {
        self.counters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::SeqCst)
    }
}

impl Runtime {
    fn new(config: FakeConfig) -> Runtime {
        let limiters = config.rate_limit.and_then(|(rps, burst)| {
            let rps = NonZeroU32::new(rps)?;
            let burst = NonZeroU32::new(burst).unwrap_or(rps);
            let quota = Quota::per_second(rps).allow_burst(burst);
            Some(Limiters {
                neon: Arc::new(RateLimiter::direct(quota)),
                fly: Arc::new(RateLimiter::direct(quota)),
            })
        });
        // Injection rolls have their own stream so that they do not shift
        // the ids a seed produces.
        let rolls = StdRng::seed_from_u64(config.seed ^ 0x5eed_f00d);
        let vendor = config
            .vendor_limits
            .as_ref()
            .map(|limits| Arc::new(limits::VendorLimiters::new(limits)));
        Runtime {
            config: Arc::new(config),
            limiters,
            vendor,
            rolls,
        }
    }
}
