//! The HTTP policy both cloud clients share: one `reqwest::Client` per API
//! with timeouts and the auth header, a token-bucket rate limiter awaited
//! before every attempt, retries with jittered exponential backoff that
//! honour `Retry-After`, typed errors, redaction, and request counters.
//!
//! What is retried, and why:
//! - 429 (rate limited) and Neon's 423 (project locked by a running
//!   operation) were refused before anything happened, so any method is
//!   repeated, after at least `Retry-After` when the server sends one. A 423
//!   lasts as long as the operation that holds the lock, so 423s are bounded
//!   only by the deadline, not by the attempt count.
//! - 5xx, 408, timeouts and broken connections are repeated only for
//!   requests that are safe to repeat: GET, DELETE, and POSTs marked
//!   [`ApiRequest::repeatable`] (a second password reset or stop does no
//!   harm). A POST that creates something and got one of these answers may
//!   have landed: the error is *ambiguous* ([`CloudError::is_ambiguous`]) and
//!   the caller recovers by looking the resource up
//!   ([`ApiClient::create_with_recovery`]), never by posting blindly again.
//! - A connection that could not be opened never reached the server, so it
//!   is repeated for every method.
//! - Any other 4xx is final and comes back as [`CloudError::Status`].
//!
//! Nothing here ever logs or stores a token, a request or response body, or
//! a query string: errors and debug lines carry the API, the method, the
//! path, the status and the API's own error message (with any
//! `scheme://user:password@` userinfo masked). The Neon and Fly request
//! shapes live in `neon.rs` and `fly.rs`, not here.

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use rand::Rng;
use reqwest::header::{HeaderMap, HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::time::Instant;
use url::Url;
use zeroize::Zeroizing;

use super::secret::Secret;

/// Longest API error message kept in an error; the rest is cut.
const MAX_MESSAGE_CHARS: usize = 300;

/// Which cloud API a client or an error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    Neon,
    Fly,
}

impl fmt::Display for Api {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Api::Neon => "Neon",
            Api::Fly => "Fly",
        })
    }
}

/// Timeouts, retry bounds and rate limit of one API client.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Time allowed to open a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// Time allowed for one attempt, from sending to the last body byte.
    pub request_timeout: Duration,
    /// Attempts per call, the first included (423s do not count).
    pub max_attempts: u32,
    /// Wall time allowed for one call, all attempts and waits included.
    pub deadline: Duration,
    /// First backoff delay; later ones double, with jitter, up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// Sustained requests per second allowed by the client-side limiter.
    pub rate_per_second: f64,
    /// Requests that may go out at once after a quiet spell.
    pub burst: u32,
}

impl HttpOptions {
    /// Neon's account limit is ~700 requests/minute with bursts to 40/s per
    /// route (docs/cloud-apis.md, "Neon API v2"): 10/s sustained stays under it.
    pub fn neon_defaults() -> HttpOptions {
        HttpOptions {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            max_attempts: 6,
            deadline: Duration::from_secs(180),
            min_backoff: Duration::from_millis(250),
            max_backoff: Duration::from_secs(10),
            rate_per_second: 10.0,
            burst: 40,
        }
    }

    /// Fly limits each action to ~1/s per machine or app, burst 3, and Get
    /// Machine to 5/s burst 10 (docs/cloud-apis.md); 5/s burst 10 is the client-wide cap.
    pub fn fly_defaults() -> HttpOptions {
        HttpOptions {
            rate_per_second: 5.0,
            burst: 10,
            ..HttpOptions::neon_defaults()
        }
    }
}

/// Running totals of one client's traffic, for progress lines and benches.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    locked: AtomicU64,
    server_errors: AtomicU64,
    network_errors: AtomicU64,
    /// Answers by HTTP status code (the 429s that bind show here).
    statuses: Mutex<BTreeMap<u16, u64>>,
}

/// A point-in-time copy of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CounterSnapshot {
    /// HTTP attempts sent (each retry is one more).
    pub requests: u64,
    /// Attempts made because an earlier one failed in a retryable way.
    pub retries: u64,
    /// 429 answers.
    pub rate_limited: u64,
    /// 423 answers (Neon project locked by a running operation).
    pub locked: u64,
    /// 5xx answers.
    pub server_errors: u64,
    /// Attempts that got no HTTP answer (connect failure, reset, timeout).
    pub network_errors: u64,
}

impl Counters {
    pub fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            requests: get(&self.requests),
            retries: get(&self.retries),
            rate_limited: get(&self.rate_limited),
            locked: get(&self.locked),
            server_errors: get(&self.server_errors),
            network_errors: get(&self.network_errors),
        }
    }

    /// Answers by HTTP status code so far, in code order; attempts that got
    /// no answer are [`CounterSnapshot::network_errors`].
    pub fn by_status(&self) -> Vec<(u16, u64)> {
        self.statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(code, n)| (*code, *n))
            .collect()
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn answered(&self, status: StatusCode) {
        *self
            .statuses
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(status.as_u16())
            .or_default() += 1;
    }
}

/// Everything that can go wrong talking to a cloud API. No variant holds a
/// token, a body, a query string or a connection URI.
#[derive(Debug, thiserror::Error)]
pub enum CloudError {
    /// The API answered with a non-success status that the policy does not
    /// retry (or stopped retrying).
    #[error("{api} {method} {path}: HTTP {status}: {message}{}", request_id_note(.request_id))]
    Status {
        api: Api,
        method: Method,
        path: String,
        status: u16,
        /// The API's own error text (Neon `message`, Fly `message` or `error`).
        message: String,
        /// Neon's `request_id` or Fly's `fly-request-id`, to quote to support.
        request_id: Option<String>,
        /// The server's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    #[error("{api} {method} {path}: no answer within {after:?}")]
    Timeout {
        api: Api,
        method: Method,
        path: String,
        after: Duration,
    },
    #[error("{api} {method} {path}: {message}")]
    Network {
        api: Api,
        method: Method,
        path: String,
        message: String,
        /// The connection could not be opened, so the request never left.
        connect: bool,
    },
    #[error("{api} {method} {path}: unexpected response body: {message}")]
    Decode {
        api: Api,
        method: Method,
        path: String,
        message: String,
    },
    #[error("{api} {method} {path}: gave up after {attempts} attempt(s) in {elapsed:.1?}; last: {}", .last.detail())]
    GaveUp {
        api: Api,
        method: Method,
        path: String,
        attempts: u32,
        elapsed: Duration,
        last: Box<CloudError>,
    },
    #[error("Neon operation {operation_id} ({action}) in project {project} ended {status}{}", error_note(.error))]
    OperationFailed {
        project: String,
        operation_id: String,
        action: String,
        status: String,
        error: Option<String>,
    },
    #[error("{what}: deadline passed")]
    DeadlinePassed { what: String },
    /// A Fly machine that cannot pass its health checks any more (it is
    /// gone, or stopped for good), so waiting longer is pointless.
    #[error("Fly machine {machine} in app {app} will not become healthy: {reason}")]
    NotHealthy {
        app: String,
        machine: String,
        reason: String,
    },
    /// A resource with the name we asked for exists but is not the one we
    /// would have created (other parent, other tag): never adopt it.
    #[error("{api}: {what}")]
    Conflict { api: Api, what: String },
    #[error("refusing to copy the config of Fly machine {machine}: {reason}")]
    UnsafeToCopy { machine: String, reason: String },
    #[error("{api} client setup: {message}")]
    Config { api: Api, message: String },
}

fn request_id_note(request_id: &Option<String>) -> String {
    match request_id {
        Some(id) => format!(" (request id {id})"),
        None => String::new(),
    }
}

fn error_note(error: &Option<String>) -> String {
    match error {
        Some(e) => format!(": {e}"),
        None => String::new(),
    }
}

impl CloudError {
    /// The HTTP status behind this error, looking through [`CloudError::GaveUp`].
    pub fn status(&self) -> Option<u16> {
        match self {
            CloudError::Status { status, .. } => Some(*status),
            CloudError::GaveUp { last, .. } => last.status(),
            _ => None,
        }
    }

    /// The API said the thing does not exist (404).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// The request may or may not have taken effect: a 5xx or 408 answer, a
    /// timeout, or a connection lost after sending. Only a lookup can tell.
    /// Refusals (429, 423) and unopened connections are not ambiguous.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            CloudError::Status { status, .. } => *status >= 500 || *status == 408,
            CloudError::Timeout { .. } => true,
            CloudError::Network { connect, .. } => !connect,
            CloudError::GaveUp { last, .. } => last.is_ambiguous(),
            _ => false,
        }
    }

    /// What went wrong, without the "API METHOD PATH:" prefix that
    /// [`CloudError::GaveUp`] already shows.
    fn detail(&self) -> String {
        match self {
            CloudError::Status {
                status,
                message,
                request_id,
                ..
            } => format!("HTTP {status}: {message}{}", request_id_note(request_id)),
            CloudError::Timeout { after, .. } => format!("no answer within {after:?}"),
            CloudError::Network { message, .. } => message.clone(),
            CloudError::Decode { message, .. } => format!("unexpected response body: {message}"),
            other => other.to_string(),
        }
    }

    /// The server's `Retry-After`, looking through [`CloudError::GaveUp`].
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            CloudError::Status { retry_after, .. } => *retry_after,
            CloudError::GaveUp { last, .. } => last.retry_after(),
            _ => None,
        }
    }
}

/// One API call to make: method, path segments (each percent-encoded on
/// the way out), query, optional JSON body, and how the policy may treat it.
///
/// No `Debug`: the body may carry a connection URI.
pub struct ApiRequest {
    method: Method,
    segments: Vec<String>,
    query: Vec<(String, String)>,
    /// Extra headers (Fly's lease nonce), all marked sensitive.
    headers: Vec<(&'static str, HeaderValue)>,
    body: Option<Zeroizing<Vec<u8>>>,
    repeatable: bool,
    final_statuses: Vec<u16>,
    timeout: Option<Duration>,
}

impl ApiRequest {
    pub fn new(method: Method, segments: &[&str]) -> ApiRequest {
        ApiRequest {
            method,
            segments: segments
                .iter()
                .map(std::string::ToString::to_string)
                .collect(),
            query: Vec::new(),
            headers: Vec::new(),
            body: None,
            repeatable: false,
            final_statuses: Vec::new(),
            timeout: None,
        }
    }

    pub fn get(segments: &[&str]) -> ApiRequest {
        ApiRequest::new(Method::GET, segments)
    }

    pub fn post(segments: &[&str]) -> ApiRequest {
        ApiRequest::new(Method::POST, segments)
    }

    pub fn delete(segments: &[&str]) -> ApiRequest {
        ApiRequest::new(Method::DELETE, segments)
    }

    pub fn query(mut self, key: &str, value: impl Into<String>) -> ApiRequest {
        self.query.push((key.to_string(), value.into()));
        self
    }

    /// Sends header `name: value` on every attempt. The value is marked
    /// sensitive, and no header is ever logged.
    pub fn header(mut self, name: &'static str, mut value: HeaderValue) -> ApiRequest {
        value.set_sensitive(true);
        self.headers.push((name, value));
        self
    }

    /// Sends `body` as JSON.
    pub fn json(mut self, body: &serde_json::Value) -> ApiRequest {
        let bytes = serde_json::to_vec(body).expect(
            "a serde_json::Value has string keys and writes to a Vec, so it always serializes",
        );
        self.body = Some(Zeroizing::new(bytes));
        self
    }

    /// Marks a POST whose repetition is harmless (a password reset, a stop),
    /// so 5xx, 408 and lost connections are retried like a GET's.
    pub fn repeatable(mut self) -> ApiRequest {
        self.repeatable = true;
        self
    }

    /// Hands `status` straight back to the caller instead of retrying it
    /// (Fly's `/wait` answers 408 when its own timeout elapses).
    pub fn final_status(mut self, status: u16) -> ApiRequest {
        self.final_statuses.push(status);
        self
    }

    /// Overrides the per-attempt timeout (a long poll needs more than the default).
    pub fn timeout(mut self, timeout: Duration) -> ApiRequest {
        self.timeout = Some(timeout);
        self
    }

    fn safe_to_repeat(&self) -> bool {
        self.repeatable
            || matches!(
                self.method,
                Method::GET | Method::HEAD | Method::DELETE | Method::PUT
            )
    }
}

/// A successful (2xx) answer. The body is zeroized when this is dropped,
/// since some answers carry passwords or URIs.
pub struct ApiResponse {
    api: Api,
    method: Method,
    path: String,
    status: StatusCode,
    body: Zeroizing<Vec<u8>>,
}

impl ApiResponse {
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Decodes the body. The error names the target type and the position,
    /// never the content (serde's own message may quote a value).
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, CloudError> {
        serde_json::from_slice(&self.body).map_err(|e| CloudError::Decode {
            api: self.api,
            method: self.method.clone(),
            path: self.path.clone(),
            message: format!(
                "{:?} error decoding {} at line {} column {}",
                e.classify(),
                short_type_name::<T>(),
                e.line(),
                e.column()
            ),
        })
    }
}

fn short_type_name<T>() -> String {
    let full = std::any::type_name::<T>();
    // Keep `Branch` out of `rekey::cloud::neon::Branch`, generics included.
    full.split(['<', '>', ',', ' '])
        .filter(|s| !s.is_empty())
        .map(|s| s.rsplit("::").next().unwrap_or(s))
        .collect::<Vec<_>>()
        .join("/")
}

/// What a create call came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created<T> {
    /// This call created it.
    New(T),
    /// It already existed (an earlier attempt or run made it) and was found.
    Adopted(T),
}

impl<T> Created<T> {
    pub fn into_inner(self) -> T {
        match self {
            Created::New(t) | Created::Adopted(t) => t,
        }
    }

    pub fn was_adopted(&self) -> bool {
        matches!(self, Created::Adopted(_))
    }
}

/// One API's HTTP client with the policy above. Cheap to share behind an
/// `Arc`; all methods take `&self`.
pub struct ApiClient {
    api: Api,
    base: Url,
    http: reqwest::Client,
    limiter: DefaultDirectRateLimiter,
    options: HttpOptions,
    counters: Arc<Counters>,
}

/// What one attempt came back with, before the policy judges it.
struct RawAnswer {
    status: StatusCode,
    body: Zeroizing<Vec<u8>>,
    retry_after: Option<Duration>,
    request_id: Option<String>,
}

/// The policy's judgement of one attempt.
enum Verdict {
    Done(Result<ApiResponse, CloudError>),
    Retry {
        error: CloudError,
        wait_at_least: Option<Duration>,
        counts_as_attempt: bool,
    },
}

impl ApiClient {
    /// Builds the client for `api` at `base_url` (e.g.
    /// `https://console.neon.tech/api/v2`), authenticating with `token`.
    pub fn new(
        api: Api,
        base_url: &str,
        token: &Secret,
        options: HttpOptions,
    ) -> Result<ApiClient, CloudError> {
        let config = |message: String| CloudError::Config { api, message };
        let base = Url::parse(base_url)
            .map_err(|e| config(format!("base URL {base_url:?} is not a URL: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(config(format!(
                "base URL {base_url:?} is not an http(s) URL"
            )));
        }
        if !base.username().is_empty() || base.password().is_some() || base.query().is_some() {
            return Err(config(
                "the base URL must not carry credentials or a query; pass the token separately"
                    .to_string(),
            ));
        }
        let quota = quota(options.rate_per_second, options.burst).ok_or_else(|| {
            config("rate limit needs rate_per_second > 0 and burst >= 1".to_string())
        })?;
        if options.max_attempts == 0 {
            return Err(config("max_attempts must be at least 1".to_string()));
        }

        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(AUTHORIZATION, authorization_header(api, token)?);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(options.connect_timeout)
            .user_agent(concat!("rekey/", env!("CARGO_PKG_VERSION")))
            // Neither API redirects; refusing redirects keeps the token on
            // the host it was meant for.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| config(format!("building the HTTP client: {}", e.without_url())))?;

        Ok(ApiClient {
            api,
            base,
            http,
            limiter: RateLimiter::direct(quota),
            options,
            counters: Arc::new(Counters::default()),
        })
    }

    pub fn api(&self) -> Api {
        self.api
    }

    pub fn options(&self) -> &HttpOptions {
        &self.options
    }

    /// The live counters, shareable with a progress reporter.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// Sends `request` under the policy. `Ok` only for a 2xx answer.
    pub async fn send(&self, request: ApiRequest) -> Result<ApiResponse, CloudError> {
        let (url, path) = self.url_for(&request);
        let started = Instant::now();
        let allowed = self
            .options
            .deadline
            .max(request.timeout.unwrap_or_default());
        let deadline = started + allowed;
        let mut backoff = self.backoff();
        let mut attempt = 0u32;
        let mut failures = 0u32;
        loop {
            attempt += 1;
            self.limiter.until_ready().await;
            let answer = self.attempt(&request, &url, &path, attempt, deadline).await;
            let (error, wait_at_least, counts) = match self.judge(&request, &path, answer) {
                Verdict::Done(result) => return result,
                Verdict::Retry {
                    error,
                    wait_at_least,
                    counts_as_attempt,
                } => (error, wait_at_least, counts_as_attempt),
            };
            if counts {
                failures += 1;
            }
            let delay = self.next_delay(&mut backoff, wait_at_least);
            if failures >= self.options.max_attempts || Instant::now() + delay > deadline {
                return Err(CloudError::GaveUp {
                    api: self.api,
                    method: request.method.clone(),
                    path,
                    attempts: attempt,
                    elapsed: started.elapsed(),
                    last: Box::new(error),
                });
            }
            Counters::bump(&self.counters.retries);
            tokio::time::sleep(delay).await;
        }
    }

    /// Creates a resource that has no idempotency key, without ever making
    /// two: `post` creates it, `lookup` finds it by its deterministic name or
    /// tag. After an ambiguous failure (the POST may have landed) or a
    /// `conflict` answer (it already exists), `settle` is waited out (for
    /// eventually consistent listings) and `lookup` decides: found means
    /// adopted; not found after an ambiguous failure means post again, within
    /// the attempt and deadline bounds; not found after a conflict is an error.
    pub async fn create_with_recovery<T, P, L>(
        &self,
        post: impl Fn() -> P,
        lookup: impl Fn() -> L,
        conflict: impl Fn(&CloudError) -> bool,
        settle: Duration,
    ) -> Result<Created<T>, CloudError>
    where
        // Plain closures returning futures rather than `AsyncFn`: the
        // latter's futures are not `Send` for every lifetime, which a
        // spawned re-provision task needs.
        P: std::future::Future<Output = Result<T, CloudError>>,
        L: std::future::Future<Output = Result<Option<T>, CloudError>>,
    {
        let started = Instant::now();
        let deadline = started + self.options.deadline;
        let mut backoff = self.backoff();
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let error = match post().await {
                Ok(created) => return Ok(Created::New(created)),
                Err(e) => e,
            };
            let is_conflict = conflict(&error);
            if !is_conflict && !error.is_ambiguous() {
                return Err(error);
            }
            tokio::time::sleep(settle).await;
            if let Some(found) = lookup().await? {
                return Ok(Created::Adopted(found));
            }
            if is_conflict {
                return Err(error);
            }
            let delay = self.next_delay(&mut backoff, error.retry_after());
            if attempt >= self.options.max_attempts || Instant::now() + delay > deadline {
                return Err(error);
            }
            Counters::bump(&self.counters.retries);
            tokio::time::sleep(delay).await;
        }
    }

    fn backoff(&self) -> impl Iterator<Item = Duration> {
        ExponentialBuilder::new()
            .with_jitter()
            .with_min_delay(self.options.min_backoff)
            .with_max_delay(self.options.max_backoff)
            .without_max_times()
            .build()
    }

    /// The next backoff delay, but never less than the server's
    /// `Retry-After` (plus a little jitter, so clients told the same
    /// instant do not all come back at once).
    fn next_delay(
        &self,
        backoff: &mut impl Iterator<Item = Duration>,
        wait_at_least: Option<Duration>,
    ) -> Duration {
        let delay = backoff.next().unwrap_or(self.options.max_backoff);
        match wait_at_least {
            Some(floor) => {
                let spread = self.options.min_backoff.as_millis().max(1) as u64;
                let jitter = Duration::from_millis(rand::thread_rng().gen_range(0..spread));
                delay.max(floor + jitter)
            }
            None => delay,
        }
    }

    /// The full URL, and the path relative to the base for logs and errors.
    fn url_for(&self, request: &ApiRequest) -> (Url, String) {
        let mut url = self.base.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().extend(&request.segments);
        }
        let base_len = self.base.path().trim_end_matches('/').len();
        let path = url.path().get(base_len..).unwrap_or(url.path()).to_string();
        if !request.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&request.query);
        }
        (url, path)
    }

    async fn attempt(
        &self,
        request: &ApiRequest,
        url: &Url,
        path: &str,
        attempt: u32,
        deadline: Instant,
    ) -> Result<RawAnswer, CloudError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = request
            .timeout
            .unwrap_or(self.options.request_timeout)
            .min(remaining)
            .max(Duration::from_millis(1));
        let mut builder = self
            .http
            .request(request.method.clone(), url.clone())
            .timeout(timeout);
        for (name, value) in &request.headers {
            builder = builder.header(*name, value.clone());
        }
        if let Some(body) = &request.body {
            builder = builder
                .header(CONTENT_TYPE, "application/json")
                .body(body.to_vec());
        }
        Counters::bump(&self.counters.requests);
        let sent = Instant::now();
        let result = read_answer(builder).await;
        let latency_ms = sent.elapsed().as_millis() as u64;
        if let Ok(answer) = &result {
            self.counters.answered(answer.status);
        }
        match &result {
            Ok(answer) => tracing::debug!(
                api = %self.api, method = %request.method, path, status = answer.status.as_u16(),
                attempt, latency_ms, "cloud request"
            ),
            Err(_) => tracing::debug!(
                api = %self.api, method = %request.method, path, attempt, latency_ms,
                "cloud request got no answer"
            ),
        }
        result.map_err(|e| self.transport_error(&request.method, path, e, timeout))
    }

    fn transport_error(
        &self,
        method: &Method,
        path: &str,
        error: reqwest::Error,
        timeout: Duration,
    ) -> CloudError {
        Counters::bump(&self.counters.network_errors);
        let (api, method, path) = (self.api, method.clone(), path.to_string());
        // Checked first: a connect timeout never reached the server.
        if error.is_connect() {
            return CloudError::Network {
                api,
                method,
                path,
                message: format!("cannot connect: {}", error_chain(error)),
                connect: true,
            };
        }
        if error.is_timeout() {
            return CloudError::Timeout {
                api,
                method,
                path,
                after: timeout,
            };
        }
        CloudError::Network {
            api,
            method,
            path,
            message: error_chain(error),
            connect: false,
        }
    }

    fn judge(
        &self,
        request: &ApiRequest,
        path: &str,
        answer: Result<RawAnswer, CloudError>,
    ) -> Verdict {
        let safe = request.safe_to_repeat();
        let answer = match answer {
            Ok(answer) => answer,
            Err(error) => {
                let retry = matches!(error, CloudError::Network { connect: true, .. }) || safe;
                return if retry {
                    Verdict::Retry {
                        error,
                        wait_at_least: None,
                        counts_as_attempt: true,
                    }
                } else {
                    Verdict::Done(Err(error))
                };
            }
        };
        let status = answer.status;
        if status.is_success() {
            return Verdict::Done(Ok(ApiResponse {
                api: self.api,
                method: request.method.clone(),
                path: path.to_string(),
                status,
                body: answer.body,
            }));
        }
        let code = status.as_u16();
        match code {
            429 => Counters::bump(&self.counters.rate_limited),
            423 => Counters::bump(&self.counters.locked),
            500..=599 => Counters::bump(&self.counters.server_errors),
            _ => {}
        }
        let retry_after = answer.retry_after;
        let error = self.status_error(&request.method, path, answer);
        if request.final_statuses.contains(&code) {
            return Verdict::Done(Err(error));
        }
        let retry = match code {
            429 | 423 => true,
            408 | 500..=599 => safe,
            _ => false,
        };
        if !retry {
            return Verdict::Done(Err(error));
        }
        Verdict::Retry {
            error,
            wait_at_least: retry_after,
            counts_as_attempt: code != 423,
        }
    }

    fn status_error(&self, method: &Method, path: &str, answer: RawAnswer) -> CloudError {
        let (message, body_request_id) = error_message(&answer.body, answer.status);
        CloudError::Status {
            api: self.api,
            method: method.clone(),
            path: path.to_string(),
            status: answer.status.as_u16(),
            message,
            request_id: answer.request_id.or(body_request_id),
            retry_after: answer.retry_after,
        }
    }
}

async fn read_answer(builder: reqwest::RequestBuilder) -> Result<RawAnswer, reqwest::Error> {
    let response = builder.send().await?;
    let status = response.status();
    let headers = response.headers();
    let retry_after = headers
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let request_id = ["fly-request-id", "x-request-id"]
        .iter()
        .find_map(|name| headers.get(*name))
        .and_then(|v| v.to_str().ok())
        .map(|s| s.chars().take(100).collect());
    let body = Zeroizing::new(Vec::from(response.bytes().await?));
    Ok(RawAnswer {
        status,
        body,
        retry_after,
        request_id,
    })
}

/// The `Authorization` value for `api`. Neon takes `Bearer <key>`. Fly
/// macaroon tokens as printed by `fly tokens create` already start with
/// `FlyV1 ` and are sent verbatim; anything else gets `Bearer ` (docs/cloud-apis.md).
pub fn authorization_header(api: Api, token: &Secret) -> Result<HeaderValue, CloudError> {
    let token = token.expose().trim();
    if token.is_empty() {
        return Err(CloudError::Config {
            api,
            message: "the API token is empty".to_string(),
        });
    }
    let value = Zeroizing::new(match api {
        Api::Fly if token.starts_with("FlyV1 ") => token.to_string(),
        _ => format!("Bearer {token}"),
    });
    let mut header = HeaderValue::from_str(&value).map_err(|_| CloudError::Config {
        api,
        message: "the API token contains characters not allowed in an HTTP header".to_string(),
    })?;
    header.set_sensitive(true);
    Ok(header)
}

fn quota(rate_per_second: f64, burst: u32) -> Option<Quota> {
    if !(rate_per_second.is_finite() && rate_per_second > 0.0) {
        return None;
    }
    let period = Duration::try_from_secs_f64(1.0 / rate_per_second).ok()?;
    Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(burst)?))
}

/// `Retry-After` as delay-seconds or as an HTTP-date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is valid RFC 2822.
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let wait = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(wait.to_std().unwrap_or(Duration::ZERO))
}

/// The API's error text from a non-2xx body (Neon `message`, Fly `message`
/// or `error`), masked and cut, and Neon's `request_id` if present.
fn error_message(body: &[u8], status: StatusCode) -> (String, Option<String>) {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(name))
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let message = field("message")
        .or_else(|| field("error"))
        .unwrap_or_else(|| {
            let reason = status.canonical_reason().unwrap_or("no reason");
            if body.is_empty() {
                reason.to_string()
            } else {
                format!("{reason} (unrecognised {}-byte body)", body.len())
            }
        });
    let request_id = field("request_id").map(|s| s.chars().take(100).collect());
    (
        truncate(&crate::redact::text(&message), MAX_MESSAGE_CHARS),
        request_id,
    )
}

fn truncate(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// A transport error's description without its URL (which may carry a
/// query), with its causes, e.g. "error sending request: connection refused".
fn error_chain(error: reqwest::Error) -> String {
    let error = error.without_url();
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    crate::redact::text(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after(" 3 "), Some(Duration::from_secs(3)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let later = chrono::Utc::now() + chrono::Duration::seconds(30);
        let header = later.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let wait = parse_retry_after(&header).unwrap();
        assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30));
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn error_message_prefers_message_then_error_field() {
        let neon = br#"{"code":"","message":"branch not found","request_id":"r-1"}"#;
        assert_eq!(
            error_message(neon, StatusCode::NOT_FOUND),
            ("branch not found".to_string(), Some("r-1".to_string()))
        );
        let fly = br#"{"error":"machine not found"}"#;
        assert_eq!(
            error_message(fly, StatusCode::NOT_FOUND).0,
            "machine not found"
        );
        assert_eq!(error_message(b"", StatusCode::BAD_GATEWAY).0, "Bad Gateway");
    }

    #[test]
    fn fly_macaroon_tokens_are_sent_verbatim_and_others_as_bearer() {
        let macaroon = Secret::new("FlyV1 fm2_abc,fm2_def");
        let header = authorization_header(Api::Fly, &macaroon).unwrap();
        assert_eq!(header.to_str().unwrap(), "FlyV1 fm2_abc,fm2_def");
        assert!(header.is_sensitive());
        let sent = |api, token: &str| {
            let header = authorization_header(api, &Secret::new(token)).unwrap();
            header.to_str().unwrap().to_owned()
        };
        assert_eq!(sent(Api::Fly, "fo1_token\n"), "Bearer fo1_token");
        assert_eq!(sent(Api::Neon, "napi_key"), "Bearer napi_key");
    }

    #[test]
    fn decode_errors_name_the_type_not_the_content() {
        assert_eq!(short_type_name::<Vec<String>>(), "Vec/String");
    }
}
