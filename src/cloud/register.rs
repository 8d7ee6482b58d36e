//! Registering a seeded fleet's tenants in the fake cloud (its
//! `POST /_fake/tenants`), so that rows and cloud resources name each other
//! exactly as they would in production. For tests, the demo and
//! rehearsals; refuses any address outside loopback.

use serde_json::json;

use crate::db::seed::SeedTenant;
use crate::error::SetupError;

/// True when `url` points at 127.0.0.0/8, ::1 or `localhost`.
pub fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Registers `tenants` in the fake cloud at `base` (its root URL, e.g.
/// `http://127.0.0.1:4010`), in chunks.
pub async fn register_fake_tenants(base: &str, tenants: &[SeedTenant]) -> Result<(), SetupError> {
    if !is_loopback_url(base) {
        return Err(SetupError::Refused(format!(
            "{base} is not a loopback address; tenants are registered only in a local fake cloud"
        )));
    }
    let client = reqwest::Client::new();
    let url = format!("{}/_fake/tenants", base.trim_end_matches('/'));
    for chunk in tenants.chunks(2_000) {
        let body = json!({
            "tenants": chunk.iter().map(|t| json!({
                "project_id": t.neon_project_id,
                "branch_id": t.neon_branch_id,
                "role": t.role,
                "database": t.database,
                "password": t.password,
                "app": t.fly_app,
                "machine_id": t.fly_machine_id,
                "region": t.region,
                "image": "registry.fly.io/tenant:v1",
                "env": { "DATABASE_URL": t.database_url, "TENANT": t.slug },
            })).collect::<Vec<_>>()
        });
        let response = client.post(&url).json(&body).send().await.map_err(|e| {
            SetupError::Refused(format!("fake cloud at {base}: {}", e.without_url()))
        })?;
        if !response.status().is_success() {
            return Err(SetupError::Refused(format!(
                "fake cloud at {base} refused the tenants: HTTP {}",
                response.status()
            )));
        }
    }
    Ok(())
}
