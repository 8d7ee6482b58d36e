//! The vendors' documented rate limits, keyed the way each vendor keys
//! them, for runs that want the fake to push back like production does
//! (`FakeConfig::vendor_limits`, off by default):
//!
//! - Neon (API reference, "API rate limiting"): about 700 requests a minute
//!   per account, and bursts of up to 40 requests a second per route. The
//!   fake has one account; a route is the method and the path with its ids
//!   taken out (`POST projects/*/branches`).
//! - Fly (Machines API docs, rate limits): each action is limited per
//!   identifier, the machine id or, for calls without one such as create,
//!   the app: 1 request a second with bursts to 3; Get Machine 5 a second
//!   with bursts to 10.
//!
//! Neon's per-project mutation lock (423) is not a rate limit and lives in
//! the Neon model. The flat per-API bucket of `FakeConfig::rate_limit` is
//! separate and is checked first.

use std::num::NonZeroU32;
use std::time::Duration;

use axum::http::Method;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::gate::Api;

/// The documented figures; `Default` is what the vendors publish. Fields
/// are public so a test can shrink one to reach it quickly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VendorLimits {
    /// Neon requests per minute per account.
    pub neon_per_minute: u32,
    /// Neon requests per second per route, which is also the route's burst.
    pub neon_route_per_second: u32,
    /// Fly requests per second per action and identifier.
    pub fly_action_per_second: u32,
    /// Fly burst per action and identifier.
    pub fly_action_burst: u32,
    /// Fly Get Machine requests per second per machine.
    pub fly_get_per_second: u32,
    /// Fly Get Machine burst per machine.
    pub fly_get_burst: u32,
}

impl Default for VendorLimits {
    fn default() -> VendorLimits {
        VendorLimits {
            neon_per_minute: 700,
            neon_route_per_second: 40,
            fly_action_per_second: 1,
            fly_action_burst: 3,
            fly_get_per_second: 5,
            fly_get_burst: 10,
        }
    }
}

/// The token buckets behind [`VendorLimits`].
pub(crate) struct VendorLimiters {
    neon_account: DefaultDirectRateLimiter,
    neon_route: DefaultKeyedRateLimiter<String>,
    fly_action: DefaultKeyedRateLimiter<String>,
    fly_get: DefaultKeyedRateLimiter<String>,
}

/// A zero in the figures means "1": a limit cannot be switched off piecemeal.
fn n(value: u32) -> NonZeroU32 {
    NonZeroU32::new(value).unwrap_or(NonZeroU32::MIN)
}

impl VendorLimiters {
    pub(crate) fn new(limits: &VendorLimits) -> VendorLimiters {
        // The account's minute may be spent at once; the route burst caps
        // how fast any one route can spend it.
        let account = Quota::per_minute(n(limits.neon_per_minute));
        let route = Quota::per_second(n(limits.neon_route_per_second));
        let action = Quota::per_second(n(limits.fly_action_per_second))
            .allow_burst(n(limits.fly_action_burst));
        let get =
            Quota::per_second(n(limits.fly_get_per_second)).allow_burst(n(limits.fly_get_burst));
        VendorLimiters {
            neon_account: RateLimiter::direct(account),
            neon_route: RateLimiter::keyed(route),
            fly_action: RateLimiter::keyed(action),
            fly_get: RateLimiter::keyed(get),
        }
    }

    /// `Err(wait)` when the request is over a limit: how long until it
    /// would pass.
    pub(crate) fn check(&self, api: Api, method: &Method, path: &str) -> Result<(), Duration> {
        let now = DefaultClock::default().now();
        let refused = |not_until: governor::NotUntil<_>| not_until.wait_time_from(now);
        match api {
            Api::Neon => {
                // The route first, so a refused burst does not also spend
                // the account's allowance.
                self.neon_route
                    .check_key(&neon_route(method, path))
                    .map_err(refused)?;
                self.neon_account.check().map_err(refused)
            }
            Api::Fly => match fly_key(method, path) {
                FlyKey::GetMachine(key) => self.fly_get.check_key(&key).map_err(refused),
                FlyKey::Action(key) => self.fly_action.check_key(&key).map_err(refused),
            },
        }
    }
}

/// Path segments below the API prefix, which a nested router may or may
/// not have stripped already.
fn segments<'a>(path: &'a str, prefix: &str) -> Vec<&'a str> {
    let path = path.strip_prefix(prefix).unwrap_or(path);
    path.split('/').filter(|s| !s.is_empty()).collect()
}

/// `GET projects/*/branches/*`: collection names kept, ids replaced.
fn neon_route(method: &Method, path: &str) -> String {
    route(Api::Neon, method, path)
}

/// A request's route: the method and the path below the API's prefix,
/// collection names kept and the ids between them replaced by `*`
/// (`POST apps/*/machines/*/stop`). Both vendors' paths alternate the two.
pub(crate) fn route(api: Api, method: &Method, path: &str) -> String {
    let prefix = match api {
        Api::Neon => "/api/v2",
        Api::Fly => "/v1",
    };
    let template: Vec<&str> = segments(path, prefix)
        .into_iter()
        .enumerate()
        .map(|(i, segment)| if i % 2 == 1 { "*" } else { segment })
        .collect();
    format!("{method} {}", template.join("/"))
}

enum FlyKey {
    GetMachine(String),
    Action(String),
}

/// The action and its identifier: `apps/{app}/machines/{id}[/{action}]`
/// is keyed by machine, anything else under an app by the app.
fn fly_key(method: &Method, path: &str) -> FlyKey {
    match segments(path, "/v1").as_slice() {
        ["apps", _, "machines", id] if method == Method::GET => {
            FlyKey::GetMachine(format!("get {id}"))
        }
        ["apps", _, "machines", id] => FlyKey::Action(format!("{method} machine {id}")),
        ["apps", _, "machines", id, action @ ..] => {
            FlyKey::Action(format!("{method} {} {id}", action.join("/")))
        }
        ["apps", app, rest @ ..] => FlyKey::Action(format!("{method} {} {app}", rest.join("/"))),
        other => FlyKey::Action(format!("{method} {}", other.join("/"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neon_routes_drop_ids_and_keep_collections() {
        assert_eq!(
            neon_route(
                &Method::POST,
                "/projects/p-1/branches/br-2/roles/r/reset_password"
            ),
            "POST projects/*/branches/*/roles/*/reset_password"
        );
        assert_eq!(
            neon_route(&Method::GET, "/api/v2/projects/p-9/branches/br-3"),
            "GET projects/*/branches/*"
        );
    }

    #[test]
    fn fly_keys_are_per_machine_or_per_app() {
        let key = |method: Method, path: &str| match fly_key(&method, path) {
            FlyKey::GetMachine(k) => format!("get-machine {k}"),
            FlyKey::Action(k) => k,
        };
        assert_eq!(
            key(Method::GET, "/apps/a/machines/m1"),
            "get-machine get m1"
        );
        assert_eq!(
            key(Method::POST, "/apps/a/machines/m1/stop"),
            "POST stop m1"
        );
        assert_eq!(
            key(Method::DELETE, "/v1/apps/a/machines/m1"),
            "DELETE machine m1"
        );
        assert_eq!(key(Method::POST, "/apps/a/machines"), "POST machines a");
        assert_ne!(
            key(Method::POST, "/apps/a/machines"),
            key(Method::POST, "/apps/b/machines")
        );
    }
}
