//! Registering tenants in the fake cloud (its
//! `POST /_fake/tenants`), so that rows and cloud resources name each other
//! exactly as they would in production: a seeded fleet's tenants, or the
//! resources a restored snapshot's rows name (`rekey register-fake-cloud`,
//! for rehearsals). Refuses any address outside loopback.

use serde_json::{json, Map, Value};

use crate::db::org_instances::TenantResources;
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
    refuse_unless_loopback(base)?;
    let client = reqwest::Client::new();
    for chunk in tenants.chunks(2_000) {
        let specs = chunk
            .iter()
            .map(|t| {
                json!({
                    "project_id": t.neon_project_id,
                    "branch_id": t.neon_branch_id,
                    "role": t.role,
                    "database": t.database,
                    "password": t.password,
                    "app": t.fly_app,
                    "machine_id": t.fly_machine_id,
                    "region": t.region,
                    "image": TENANT_IMAGE,
                    "env": { "DATABASE_URL": t.database_url, "TENANT": t.slug },
                })
            })
            .collect();
        post_tenants(&client, base, specs).await?;
    }
    Ok(())
}

/// What [`register_fake_resources`] registered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Registered {
    /// Rows whose Neon project and branch were registered.
    pub neon: u64,
    /// Rows whose Fly app and machine were registered.
    pub fly: u64,
    /// Rows naming neither a complete Neon pair nor a complete Fly pair.
    pub neither: u64,
}

/// Registers the resources that rows of a real table name (a restored
/// snapshot, for a rehearsal). The rows' secrets are not read: the fake
/// gives each branch's role a password of its own, which is harmless
/// because re-provisioning sets a new one anyway. A half (Neon or Fly)
/// is sent only when the row names both of its ids.
pub async fn register_fake_resources(
    base: &str,
    rows: &[TenantResources],
) -> Result<Registered, SetupError> {
    refuse_unless_loopback(base)?;
    let client = reqwest::Client::new();
    let mut registered = Registered::default();
    for chunk in rows.chunks(2_000) {
        let mut specs = Vec::with_capacity(chunk.len());
        for row in chunk {
            let (spec, neon, fly) = resource_spec(row);
            registered.neon += u64::from(neon);
            registered.fly += u64::from(fly);
            if neon || fly {
                specs.push(spec);
            } else {
                registered.neither += 1;
            }
        }
        if !specs.is_empty() {
            post_tenants(&client, base, specs).await?;
        }
    }
    Ok(registered)
}

/// One row's `/_fake/tenants` entry, and whether it has a Neon and a Fly half.
fn resource_spec(row: &TenantResources) -> (Value, bool, bool) {
    let present = |v: &Option<String>| v.as_deref().filter(|s| !s.is_empty()).map(str::to_owned);
    let mut spec = Map::new();
    let neon = match (present(&row.neon_project), present(&row.neon_branch)) {
        (Some(project), Some(branch)) => {
            spec.insert("project_id".into(), json!(project));
            spec.insert("branch_id".into(), json!(branch));
            true
        }
        _ => false,
    };
    let fly = match (present(&row.fly_app), present(&row.fly_machine)) {
        (Some(app), Some(machine)) => {
            spec.insert("app".into(), json!(app));
            spec.insert("machine_id".into(), json!(machine));
            spec.insert("image".into(), json!(TENANT_IMAGE));
            let tenant = row.slug.clone().unwrap_or_else(|| row.id.clone());
            spec.insert("env".into(), json!({ "TENANT": tenant }));
            true
        }
        _ => false,
    };
    (Value::Object(spec), neon, fly)
}

const TENANT_IMAGE: &str = "registry.fly.io/tenant:v1";

fn refuse_unless_loopback(base: &str) -> Result<(), SetupError> {
    if is_loopback_url(base) {
        Ok(())
    } else {
        Err(SetupError::Refused(format!(
            "{base} is not a loopback address; tenants are registered only in a local fake cloud"
        )))
    }
}

/// One `POST /_fake/tenants`; the fake registers all of them or none, and
/// says which ones it refused and why (ids only, never secrets).
async fn post_tenants(
    client: &reqwest::Client,
    base: &str,
    specs: Vec<Value>,
) -> Result<(), SetupError> {
    let url = format!("{}/_fake/tenants", base.trim_end_matches('/'));
    let response = client
        .post(&url)
        .json(&json!({ "tenants": specs }))
        .send()
        .await
        .map_err(|e| SetupError::Refused(format!("fake cloud at {base}: {}", e.without_url())))?;
    let status = response.status();
    if status.is_success() {
        return Ok(());
    }
    let problems = response
        .json::<Value>()
        .await
        .ok()
        .and_then(|body| body.get("problems").cloned())
        .and_then(|p| serde_json::from_value::<Vec<String>>(p).ok())
        .unwrap_or_default();
    let shown: Vec<&str> = problems.iter().take(5).map(String::as_str).collect();
    Err(SetupError::Refused(format!(
        "fake cloud at {base} refused the tenants: HTTP {status}{}{}",
        if shown.is_empty() { "" } else { ": " },
        shown.join("; ")
    )))
}
