//! What re-provisioning costs in API calls per tenant, and the throughput
//! the rate limits alone allow (what `plan` can say without measuring).
//!
//! Not here: the measured, latency-bound figures (`bench`, `fleet-bench`)
//! or the pacing itself (`cloud::http`, configured by [`CloudLimits`]).

use super::{CloudLimits, NeonStrategy};

/// API calls one tenant costs on the default path (new branch, session
/// proof off), as the fake cloud counted them with no failures, 64 tenants
/// with Neon operations of 1 s (9.6 Neon and 9.0 Fly, docs/cloud-apis.md
/// "One tenant, call by call"): Neon create branch, op polls, reset, op
/// polls, then the clean-up (reset, polls, list and delete endpoints,
/// polls); Fly lease, get, create, wait started, get until healthy, then
/// get, stop, wait stopped, destroy. Retries, 429s and slower operations
/// add to both.
pub const NEON_CALLS_PER_TENANT: f64 = 10.0;
pub const FLY_CALLS_PER_TENANT: f64 = 9.0;

/// The same with `reset-in-place` (4.1 Neon, 7.0 Fly counted): Neon list
/// databases, reset, polls, URI; Fly lease, get, update, get, wait
/// started, get until healthy, release.
pub const RESET_IN_PLACE_NEON_CALLS: f64 = 4.0;
pub const RESET_IN_PLACE_FLY_CALLS: f64 = 7.0;

/// The re-provision throughput a configuration allows, with how it was reckoned.
pub struct ThroughputBound {
    pub tenants_per_sec: f64,
    pub note: String,
}

/// Neon and Fly calls per tenant for `strategy`.
pub fn calls_per_tenant(strategy: NeonStrategy) -> (f64, f64) {
    match strategy {
        NeonStrategy::NewBranch => (NEON_CALLS_PER_TENANT, FLY_CALLS_PER_TENANT),
        NeonStrategy::ResetInPlace => (RESET_IN_PLACE_NEON_CALLS, RESET_IN_PLACE_FLY_CALLS),
    }
}

/// The bound set by the rate limits alone (what `plan` can know without
/// measuring latency): tenants/s ≤ min(neon_rps / neon calls, fly_rps / fly calls).
pub fn throughput_bound(args: &CloudLimits, strategy: NeonStrategy) -> ThroughputBound {
    let (neon_calls, fly_calls) = calls_per_tenant(strategy);
    let neon = args.neon_rps as f64 / neon_calls;
    let fly = args.fly_rps as f64 / fly_calls;
    ThroughputBound {
        tenants_per_sec: neon.min(fly),
        note: format!(
            "re-provision bounded by rate limits: Neon {} req/s / {} calls per tenant, Fly {} req/s / {} calls \
             (measure latency-bound figures with fleet-bench)",
            args.neon_rps, neon_calls, args.fly_rps, fly_calls
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limits(neon_rps: u32, fly_rps: u32) -> CloudLimits {
        CloudLimits {
            neon_rps,
            fly_rps,
            poll: Duration::from_millis(500),
            lookup_settle: Duration::from_millis(500),
        }
    }

    #[test]
    fn reset_in_place_is_bounded_by_its_own_fewer_calls() {
        let new_branch = throughput_bound(&limits(10, 20), NeonStrategy::NewBranch);
        let in_place = throughput_bound(&limits(10, 20), NeonStrategy::ResetInPlace);
        assert!((new_branch.tenants_per_sec - 10.0 / 10.0).abs() < 1e-9);
        // Neon 10/4 = 2.5, Fly 20/7 = 2.86: Neon binds.
        assert!((in_place.tenants_per_sec - 2.5).abs() < 1e-9);
        assert!(
            in_place.note.contains("4 calls per tenant"),
            "{}",
            in_place.note
        );
    }
}
