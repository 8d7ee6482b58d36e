//! What re-provisioning costs in API calls per tenant, and the throughput
//! the rate limits alone allow (what `plan` can say without measuring).
//!
//! Not here: the measured, latency-bound figures (`bench`, `fleet-bench`)
//! or the pacing itself (`cloud::http`, configured by [`CloudLimits`]).

use super::CloudLimits;

/// API calls one tenant costs on the default path (new branch, session
/// proof off), as fleet-bench's fake cloud counted them with no failures
/// (15.0 Neon and 10.0 Fly, docs/cloud-apis.md "One tenant, call by
/// call"): Neon create branch, op polls, list databases, reset, op polls,
/// URI, then the clean-up (list roles, reset, polls, list and delete
/// endpoints, polls); Fly lease, get, list by tag, create, wait started,
/// get until healthy, then get, stop, wait stopped, destroy. Retries, 429s
/// and slower operations add to both.
pub const NEON_CALLS_PER_TENANT: f64 = 15.0;
pub const FLY_CALLS_PER_TENANT: f64 = 10.0;

/// The re-provision throughput a configuration allows, with how it was reckoned.
pub struct ThroughputBound {
    pub tenants_per_sec: f64,
    pub note: String,
}

/// The bound set by the rate limits alone (what `plan` can know without
/// measuring latency): tenants/s ≤ min(neon_rps / neon calls, fly_rps / fly calls).
pub fn throughput_bound(args: &CloudLimits) -> ThroughputBound {
    let neon = args.neon_rps as f64 / NEON_CALLS_PER_TENANT;
    let fly = args.fly_rps as f64 / FLY_CALLS_PER_TENANT;
    ThroughputBound {
        tenants_per_sec: neon.min(fly),
        note: format!(
            "re-provision bounded by rate limits: Neon {} req/s / {} calls per tenant, Fly {} req/s / {} calls \
             (measure latency-bound figures with fleet-bench)",
            args.neon_rps, NEON_CALLS_PER_TENANT, args.fly_rps, FLY_CALLS_PER_TENANT
        ),
    }
}
