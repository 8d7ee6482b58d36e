//! HTTP plumbing shared by the fake's Neon and Fly halves: each API's error
//! body (Neon `{"code","message"}`, Fly `{"error"}`), lenient JSON body and
//! query-string parsing that answers 400 instead of axum's own rejection
//! texts (both also as handler arguments, `Body` and `Query`), and the
//! moment ("now") a request is handled at.
//!
//! Routes and API rules live in `neon` and `fly`; this file only shapes
//! requests and responses.

use std::convert::Infallible;
use std::marker::PhantomData;

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::de::DeserializeOwned;
use serde_json::json;
use tokio::time::Instant;

/// The moment a request is handled: a monotonic instant for the state
/// machines (operations, boots) and the wall clock for timestamps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Now {
    pub(crate) at: Instant,
    pub(crate) wall: DateTime<Utc>,
}

impl Now {
    pub(crate) fn new() -> Now {
        Now {
            at: Instant::now(),
            wall: Utc::now(),
        }
    }

    /// The wall-clock time of a later (or earlier) monotonic instant.
    pub(crate) fn wall_at(&self, at: Instant) -> DateTime<Utc> {
        if at >= self.at {
            self.wall + chrono::Duration::from_std(at - self.at).unwrap_or_default()
        } else {
            self.wall - chrono::Duration::from_std(self.at - at).unwrap_or_default()
        }
    }
}

/// RFC 3339 with a `Z`, as both APIs print timestamps.
pub(crate) fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// A Neon API error: rendered as `{"code": "", "message": "…"}`.
#[derive(Debug)]
pub(crate) struct NeonError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
}

impl NeonError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> NeonError {
        NeonError {
            status,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> NeonError {
        NeonError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> NeonError {
        NeonError::new(StatusCode::NOT_FOUND, message)
    }

    pub(crate) fn conflict(message: impl Into<String>) -> NeonError {
        NeonError::new(StatusCode::CONFLICT, message)
    }

    /// The answer to any mutation while the project has operations in flight.
    pub(crate) fn locked() -> NeonError {
        NeonError::new(
            StatusCode::LOCKED,
            "project already has running operations, scheduling of new ones is prohibited",
        )
    }
}

impl IntoResponse for NeonError {
    fn into_response(self) -> Response {
        neon_error(self.status, &self.message)
    }
}

/// A Neon-shaped error response; the gate adds `request_id` on the way out.
pub(crate) fn neon_error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({"code": "", "message": message}))).into_response()
}

/// A Fly Machines API error: rendered as `{"error": "…"}`, with `status`
/// when Fly gives the failure a code (`name_taken`, …).
#[derive(Debug)]
pub(crate) struct FlyError {
    pub(crate) status: StatusCode,
    pub(crate) message: String,
    pub(crate) code: Option<&'static str>,
}

impl FlyError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> FlyError {
        FlyError {
            status,
            message: message.into(),
            code: None,
        }
    }

    pub(crate) fn with_code(mut self, code: &'static str) -> FlyError {
        self.code = Some(code);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> FlyError {
        FlyError::new(StatusCode::BAD_REQUEST, message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> FlyError {
        FlyError::new(StatusCode::NOT_FOUND, message)
    }
}

impl IntoResponse for FlyError {
    fn into_response(self) -> Response {
        let body = match self.code {
            Some(code) => json!({"error": self.message, "status": code}),
            None => json!({"error": self.message}),
        };
        (self.status, Json(body)).into_response()
    }
}

/// A Fly-shaped error response.
pub(crate) fn fly_error(status: StatusCode, message: &str) -> Response {
    FlyError::new(status, message).into_response()
}

/// Parse a JSON request body; an empty body is `T::default()` (Neon accepts
/// an empty create-branch body). The error text is meant for a 400.
pub(crate) fn parse_body<T: DeserializeOwned + Default>(body: &Bytes) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| format!("invalid request body: {e}"))
}

/// A request body that does not parse: the message of the API's 400.
pub(crate) struct BadBody(pub(crate) String);

impl From<BadBody> for NeonError {
    fn from(bad: BadBody) -> NeonError {
        NeonError::bad_request(bad.0)
    }
}

impl From<BadBody> for FlyError {
    fn from(bad: BadBody) -> FlyError {
        FlyError::bad_request(bad.0)
    }
}

/// A JSON request body as a handler argument, parsed as `parse_body` does.
/// `E` is the API's error type: a body that does not parse is refused with
/// a 400 in that API's shape. A body that cannot be read at all (too large,
/// cut off) gets axum's own refusal, as a `Bytes` argument does.
pub(crate) struct Body<T, E>(pub(crate) T, pub(crate) PhantomData<E>);

impl<T, E, S> FromRequest<S> for Body<T, E>
where
    T: DeserializeOwned + Default,
    E: From<BadBody> + IntoResponse,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request(request: Request, state: &S) -> Result<Self, Response> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(IntoResponse::into_response)?;
        match parse_body(&bytes) {
            Ok(value) => Ok(Body(value, PhantomData)),
            Err(message) => Err(E::from(BadBody(message)).into_response()),
        }
    }
}

/// A decoded query string. Kept as pairs because Fly's `metadata.<key>`
/// filters are open-ended.
#[derive(Debug, Default)]
pub(crate) struct Query(Vec<(String, String)>);

impl Query {
    pub(crate) fn parse(raw: Option<&str>) -> Query {
        let pairs = raw
            .map(|raw| {
                url::form_urlencoded::parse(raw.as_bytes())
                    .into_owned()
                    .collect()
            })
            .unwrap_or_default();
        Query(pairs)
    }

    /// The first value of `name`, if present.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// `name=true` (or `1`); absent or anything else is false.
    pub(crate) fn flag(&self, name: &str) -> bool {
        matches!(self.get(name), Some("true" | "1"))
    }

    /// Every pair whose key starts with `prefix`, with the prefix removed.
    pub(crate) fn with_prefix<'a>(
        &'a self,
        prefix: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a str)> + 'a {
        self.0.iter().filter_map(move |(key, value)| {
            key.strip_prefix(prefix).map(|rest| (rest, value.as_str()))
        })
    }
}

/// The query string as a handler argument; having none is an empty query.
impl<S: Send + Sync> FromRequestParts<S> for Query {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Query, Infallible> {
        Ok(Query::parse(parts.uri.query()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_body_is_the_default() {
        let parsed: Vec<u8> =
            parse_body(&Bytes::from_static(b"  ")).unwrap_or_else(|e| panic!("{e}"));
        assert!(parsed.is_empty());
    }

    #[test]
    fn malformed_json_is_an_error_not_a_panic() {
        assert!(parse_body::<Vec<u8>>(&Bytes::from_static(b"{")).is_err());
    }

    #[test]
    fn query_decodes_and_finds_prefixed_keys() {
        let query = Query::parse(Some("metadata.run=r%201&region=ord&force=true"));
        assert_eq!(query.get("region"), Some("ord"));
        assert!(query.flag("force"));
        assert_eq!(
            query.with_prefix("metadata.").collect::<Vec<_>>(),
            vec![("run", "r 1")]
        );
    }
}
