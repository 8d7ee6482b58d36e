//! What every Neon and Fly request passes through before and after its
//! handler: the configured latency, authentication, the per-API token
//! bucket and, when switched on, the vendors' own limits (`limits`; 429,
//! optionally with `Retry-After`), injected 5xx before the work
//! and injected 503 after a committed mutation, request ids, and the
//! per-status request counters `/_fake/state` reports.
//!
//! `/_fake` requests do not pass through here: the harness's own calls are
//! never delayed, refused or counted.

use std::sync::Arc;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_LENGTH, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use governor::clock::{Clock, DefaultClock};
use serde_json::Value;

use crate::http::{fly_error, neon_error};
use crate::{FakeConfig, Shared};

/// Which API a request is for: decides the error body shape, the token
/// bucket and the credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Api {
    Neon,
    Fly,
}

impl Api {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Api::Neon => "neon",
            Api::Fly => "fly",
        }
    }

    fn error(self, status: StatusCode, message: &str) -> Response {
        match self {
            Api::Neon => neon_error(status, message),
            Api::Fly => fly_error(status, message),
        }
    }
}

/// The gate for `/api/v2`. Error bodies get the `request_id` Neon echoes
/// (the caller's `X-Request-ID`, or a generated one).
pub(crate) async fn neon(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let response = pass(Api::Neon, &shared, request, next).await;
    with_request_id(response, &request_id).await
}

/// The gate for `/v1`. Every answer carries a `fly-request-id` header.
pub(crate) async fn fly(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    let mut response = pass(Api::Fly, &shared, request, next).await;
    let id = uuid::Uuid::new_v4().simple().to_string();
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("fly-request-id", value);
    }
    response
}

async fn pass(api: Api, shared: &Shared, request: Request, next: Next) -> Response {
    let config = shared.config();
    if !config.latency.is_zero() {
        tokio::time::sleep(config.latency).await;
    }
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = match refusal(api, shared, &config, &method, &path, request.headers()) {
        Some(refusal) => refusal,
        None => {
            let response = next.run(request).await;
            if is_mutation(&method)
                && response.status().is_success()
                && shared.roll(config.error_after_commit_rate)
            {
                // The change is already in the state: the caller cannot tell
                // whether it landed, which is the point.
                injected(api, StatusCode::SERVICE_UNAVAILABLE)
            } else {
                response
            }
        }
    };
    shared.count(
        api,
        crate::limits::route(api, &method, &path),
        response.status(),
    );
    tracing::debug!(api = api.name(), %method, path, status = response.status().as_u16(), "request");
    response
}

/// The answer when the request does not get to its handler: checked in
/// order, authentication, rate limit, then injected failure.
fn refusal(
    api: Api,
    shared: &Shared,
    config: &FakeConfig,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
) -> Option<Response> {
    if !authorized(api, config, headers) {
        return Some(api.error(StatusCode::UNAUTHORIZED, "authentication required"));
    }
    if let Some(limiter) = shared.limiter(api) {
        if let Err(not_until) = limiter.check() {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Some(rate_limited(api, config, wait));
        }
    }
    if let Some(vendor) = shared.vendor_limiters() {
        if let Err(wait) = vendor.check(api, method, path) {
            return Some(rate_limited(api, config, wait));
        }
    }
    if shared.roll(config.error_rate) {
        let status = if shared.roll(0.5) {
            StatusCode::INTERNAL_SERVER_ERROR
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        return Some(injected(api, status));
    }
    None
}

/// A 429, with `Retry-After` in whole seconds (at least 1) when configured.
fn rate_limited(api: Api, config: &FakeConfig, wait: std::time::Duration) -> Response {
    let mut refusal = api.error(StatusCode::TOO_MANY_REQUESTS, "rate limit exceeded");
    if config.retry_after {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        refusal
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    }
    refusal
}

/// Neon wants `Bearer <key>`; Fly takes `Bearer <token>` or
/// `FlyV1 <token>[,<token>…]`. No credential configured: anything goes.
fn authorized(api: Api, config: &FakeConfig, headers: &HeaderMap) -> bool {
    let expected = match api {
        Api::Neon => config.neon_api_key.as_deref(),
        Api::Fly => config.fly_api_token.as_deref(),
    };
    let Some(expected) = expected else {
        return true;
    };
    let Some(header) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    match api {
        Api::Neon => header.strip_prefix("Bearer ") == Some(expected),
        Api::Fly => {
            // `fly tokens create` prints the token with its scheme; accept
            // the configured value either way.
            let expected = expected.strip_prefix("FlyV1 ").unwrap_or(expected);
            if let Some(token) = header.strip_prefix("Bearer ") {
                token.trim() == expected
            } else if let Some(tokens) = header.strip_prefix("FlyV1 ") {
                tokens.trim() == expected || tokens.split(',').any(|t| t.trim() == expected)
            } else {
                false
            }
        }
    }
}

fn is_mutation(method: &Method) -> bool {
    matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    )
}

/// An injected failure, marked with `x-fake-injected` so a test log shows
/// which 5xx were on purpose.
fn injected(api: Api, status: StatusCode) -> Response {
    let message = match status {
        StatusCode::INTERNAL_SERVER_ERROR => "internal server error",
        _ => "service unavailable",
    };
    let mut response = api.error(status, message);
    response
        .headers_mut()
        .insert("x-fake-injected", HeaderValue::from_static("true"));
    response
}

/// Add `request_id` to a Neon error body.
async fn with_request_id(response: Response, request_id: &str) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let Ok(bytes) = to_bytes(body, 1 << 20).await else {
        return Response::from_parts(parts, Body::empty());
    };
    let body = match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(mut object)) => {
            object.insert("request_id".into(), Value::String(request_id.to_owned()));
            parts.headers.remove(CONTENT_LENGTH);
            Body::from(Value::Object(object).to_string())
        }
        _ => Body::from(bytes),
    };
    Response::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Ok(value) = HeaderValue::from_str(authorization) {
            headers.insert(AUTHORIZATION, value);
        }
        headers
    }

    #[test]
    fn fly_accepts_bearer_and_flyv1_with_several_macaroons() {
        let config = FakeConfig {
            fly_api_token: Some("fm2_abc".into()),
            ..FakeConfig::default()
        };
        let admits = |auth: &str| authorized(Api::Fly, &config, &headers(auth));
        assert!(admits("Bearer fm2_abc"));
        assert!(admits("FlyV1 fm2_abc"));
        assert!(admits("FlyV1 fm2_other,fm2_abc"));
        assert!(!admits("FlyV1 fm2_other"));
        assert!(!authorized(Api::Fly, &config, &HeaderMap::new()));
    }

    #[test]
    fn neon_wants_bearer_only() {
        let config = FakeConfig {
            neon_api_key: Some("napi_1".into()),
            ..FakeConfig::default()
        };
        assert!(authorized(Api::Neon, &config, &headers("Bearer napi_1")));
        assert!(!authorized(Api::Neon, &config, &headers("FlyV1 napi_1")));
        assert!(!authorized(Api::Neon, &config, &headers("Bearer napi_2")));
    }
}
