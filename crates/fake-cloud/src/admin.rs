//! The harness's own endpoints under `/_fake`, which no real cloud has:
//! `GET /state` (everything held, so tests can prove nothing is orphaned or
//! doubled), `POST /tenants` (bulk registration of tenants under exact ids,
//! for seeding and rehearsals), and `GET`/`POST /config` (change injection
//! at runtime). These bypass the gate: no auth, latency, limits or faults.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Deserializer};
use serde_json::{json, Map, Value};

use crate::fly::{self, MachineState};
use crate::http::{parse_body, Now};
use crate::neon::{self, Project};
use crate::{FakeConfig, Shared, World};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/state", get(state))
        .route("/tenants", axum::routing::post(register_tenants))
        .route("/config", get(get_config).post(set_config))
}

/// A `/_fake` error: `{"error": "…"}` plus, for bulk calls, the problems.
fn refuse(status: StatusCode, message: &str, problems: &[String]) -> Response {
    (
        status,
        Json(json!({"error": message, "problems": problems})),
    )
        .into_response()
}

async fn state(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(snapshot(&shared))
}

/// Everything held: Neon projects → branches (roles with passwords,
/// databases, endpoints, annotations) and operation counts; Fly apps →
/// machines; and responses counted by API and status code.
pub(crate) fn snapshot(shared: &Shared) -> Value {
    let now = Now::new();
    let (neon, fly) = {
        let mut world = shared.world();
        let world = &mut *world;
        for app in world.fly.apps.values_mut() {
            app.settle(&now);
        }
        let projects: Vec<Value> = world
            .neon
            .projects
            .values()
            .map(|p| project_snapshot(p, &now))
            .collect();
        let apps: Vec<Value> = world.fly.apps.values().map(app_snapshot).collect();
        (projects, apps)
    };
    let mut requests: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    let mut total = 0;
    for ((api, status), count) in shared.counters() {
        requests
            .entry(api.name())
            .or_default()
            .insert(status.to_string(), json!(count));
        total += count;
    }
    let mut by_route: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for ((api, route), count) in shared.route_counters() {
        by_route
            .entry(api.name())
            .or_default()
            .insert(route, json!(count));
    }
    json!({
        "neon": {"projects": neon},
        "fly": {"apps": fly},
        "requests": {"by_api": requests, "by_route": by_route, "total": total},
    })
}

fn project_snapshot(p: &Project, now: &Now) -> Value {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for op in &p.operations {
        *counts.entry(op.status(now.at)).or_default() += 1;
    }
    let branches: Vec<Value> = p
        .branches
        .values()
        .map(|b| {
            let roles: Vec<Value> = b
                .roles
                .values()
                .map(|r| {
                    json!({
                        "name": r.name,
                        "password": r.password(now.at),
                        "pending_password": r.pending_password(now.at),
                    })
                })
                .collect();
            let databases: Vec<Value> = b
                .databases
                .values()
                .map(|d| json!({"id": d.id, "name": d.name, "owner_name": d.owner_name}))
                .collect();
            let endpoints: Vec<Value> = p
                .branch_endpoints(&b.id)
                .map(|e| {
                    json!({
                        "id": e.id,
                        "host": e.host,
                        "type": e.kind.as_str(),
                        "disabled": e.disabled,
                        "current_state": e.current_state(now.at),
                    })
                })
                .collect();
            json!({
                "id": b.id,
                "name": b.name,
                "parent_id": b.parent_id,
                "default": b.default,
                "protected": b.protected,
                "current_state": b.current_state(now.at),
                "annotations": b.annotation,
                "roles": roles,
                "databases": databases,
                "endpoints": endpoints,
            })
        })
        .collect();
    json!({
        "id": p.id,
        "name": p.name,
        "region_id": p.region_id,
        "default_branch_id": p.default_branch,
        "busy": p.is_busy(now.at),
        "operations": {"total": p.operations.len(), "by_status": counts},
        "branches": branches,
    })
}

fn app_snapshot(app: &fly::App) -> Value {
    let machines: Vec<Value> = app
        .machines
        .values()
        .map(|m| {
            json!({
                "id": m.id,
                "name": m.name,
                "state": m.state.as_str(),
                "region": m.region,
                "instance_id": m.instance_id,
                "config": m.config,
                "metadata": m.config.get("metadata").cloned().unwrap_or_else(|| json!({})),
            })
        })
        .collect();
    let live = app
        .machines
        .values()
        .filter(|m| m.state != MachineState::Destroyed)
        .count();
    json!({"name": app.name, "org_slug": app.org_slug, "live_machines": live, "machines": machines})
}

/// One tenant of `POST /_fake/tenants`. The Neon half is present when
/// `project_id` is; the Fly half when `app` is.
#[derive(Debug, Deserialize)]
struct TenantSpec {
    project_id: Option<String>,
    branch_id: Option<String>,
    /// Optional: the endpoint id the tenant's stored URI already names.
    endpoint_id: Option<String>,
    role: Option<String>,
    database: Option<String>,
    password: Option<String>,
    region_id: Option<String>,
    app: Option<String>,
    machine_id: Option<String>,
    region: Option<String>,
    image: Option<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
struct TenantsBody {
    #[serde(default)]
    tenants: Vec<TenantSpec>,
}

/// Why a tenant cannot be registered.
enum Problem {
    Invalid(String),
    Conflict(String),
}

/// Register every tenant or none: all are checked first, under the same
/// lock that then applies them.
async fn register_tenants(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let body: TenantsBody = match parse_body(&body) {
        Ok(body) => body,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, &message, &[]),
    };
    let now = Now::new();
    let mut world = shared.world();
    let problems = check_tenants(&world, &body.tenants);
    if !problems.is_empty() {
        let conflict = problems.iter().any(|p| matches!(p, Problem::Conflict(_)));
        let texts: Vec<String> = problems
            .into_iter()
            .take(50)
            .map(|p| match p {
                Problem::Invalid(t) | Problem::Conflict(t) => t,
            })
            .collect();
        let (status, message) = if conflict {
            (StatusCode::CONFLICT, "some tenant ids are already in use")
        } else {
            (StatusCode::BAD_REQUEST, "some tenants are invalid")
        };
        return refuse(status, message, &texts);
    }
    let registered: Vec<Value> = body
        .tenants
        .iter()
        .map(|t| register_one(&mut world, &now, t))
        .collect();
    drop(world);
    shared.fly_changed.notify_waiters();
    Json(json!({"registered": registered.len(), "tenants": registered})).into_response()
}

fn check_tenants(world: &World, tenants: &[TenantSpec]) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut new_ids: HashSet<&str> = HashSet::new();
    let mut new_projects: HashSet<&str> = HashSet::new();
    for (i, t) in tenants.iter().enumerate() {
        if let Some(project_id) = t.project_id.as_deref() {
            let Some(branch_id) = t.branch_id.as_deref().filter(|b| !b.is_empty()) else {
                problems.push(Problem::Invalid(format!(
                    "tenants[{i}]: branch_id is required with project_id"
                )));
                continue;
            };
            if !valid_project_id(project_id) {
                problems.push(Problem::Invalid(format!(
                    "tenants[{i}]: project_id must be 1 to 60 of [a-z0-9-]"
                )));
            }
            let known_project =
                world.neon.projects.contains_key(project_id) || new_projects.contains(project_id);
            if !known_project {
                if world.ids.is_taken(project_id) || !new_ids.insert(project_id) {
                    problems.push(Problem::Conflict(format!(
                        "tenants[{i}]: id {project_id} is already in use"
                    )));
                }
                new_projects.insert(project_id);
            }
            if world.ids.is_taken(branch_id) || !new_ids.insert(branch_id) {
                problems.push(Problem::Conflict(format!(
                    "tenants[{i}]: branch id {branch_id} is already in use"
                )));
            }
        }
        if let Some(app) = t.app.as_deref() {
            let Some(machine_id) = t.machine_id.as_deref().filter(|m| !m.is_empty()) else {
                problems.push(Problem::Invalid(format!(
                    "tenants[{i}]: machine_id is required with app"
                )));
                continue;
            };
            if !fly::valid_app_name(app) {
                problems.push(Problem::Invalid(format!(
                    "tenants[{i}]: app must be 1 to 63 of [a-z0-9-]"
                )));
            }
            if world.ids.is_taken(machine_id) || !new_ids.insert(machine_id) {
                problems.push(Problem::Conflict(format!(
                    "tenants[{i}]: machine id {machine_id} is already in use"
                )));
            }
        }
    }
    problems
}

fn valid_project_id(id: &str) -> bool {
    (1..=60).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// Apply one checked tenant; the answer names what was made.
fn register_one(world: &mut World, now: &Now, t: &TenantSpec) -> Value {
    let mut answer = Map::new();
    if let (Some(project_id), Some(branch_id)) = (t.project_id.as_deref(), t.branch_id.as_deref()) {
        let password = t.password.clone().unwrap_or_else(|| world.ids.password());
        let role = t.role.as_deref().unwrap_or("neondb_owner");
        let database = t.database.as_deref().unwrap_or("neondb");
        let tenant = neon::TenantBranch {
            project_id,
            branch_id,
            role,
            database,
            password: &password,
            endpoint_id: t.endpoint_id.as_deref(),
            region_id: t.region_id.as_deref().unwrap_or(neon::DEFAULT_REGION),
        };
        let endpoint_id = world.neon.register(&mut world.ids, now, &tenant);
        let host = world
            .neon
            .projects
            .get(project_id)
            .and_then(|p| p.endpoints.get(&endpoint_id))
            .map(|e| e.host.clone())
            .unwrap_or_default();
        answer.insert("project_id".into(), json!(project_id));
        answer.insert("branch_id".into(), json!(branch_id));
        answer.insert("endpoint_id".into(), json!(endpoint_id));
        answer.insert("host".into(), json!(host));
        answer.insert(
            "connection_uri".into(),
            json!(neon::render_connection_uri(
                role, &password, &host, database
            )),
        );
    }
    if let (Some(app), Some(machine_id)) = (t.app.as_deref(), t.machine_id.as_deref()) {
        let image = t
            .image
            .clone()
            .unwrap_or_else(|| format!("registry.fly.io/{app}:latest"));
        let tenant = fly::TenantMachine {
            app,
            machine_id,
            region: t.region.as_deref().unwrap_or(fly::DEFAULT_REGION),
            config: fly::tenant_config(&image, &t.env, &t.metadata),
        };
        let instance_id = world.fly.register(&mut world.ids, now, tenant);
        answer.insert("app".into(), json!(app));
        answer.insert("machine_id".into(), json!(machine_id));
        answer.insert("instance_id".into(), json!(instance_id));
    }
    Value::Object(answer)
}

/// `POST /_fake/config`: every field optional; absent fields keep their
/// value. Durations in milliseconds; `rate_limit_rps: 0` turns limiting
/// off; a credential set to `null` turns that API's auth off.
#[derive(Debug, Default, Deserialize)]
struct ConfigPatch {
    latency_ms: Option<u64>,
    error_rate: Option<f64>,
    error_after_commit_rate: Option<f64>,
    rate_limit_rps: Option<u32>,
    rate_limit_burst: Option<u32>,
    retry_after: Option<bool>,
    op_ms: Option<u64>,
    boot_ms: Option<u64>,
    seed: Option<u64>,
    #[serde(default, deserialize_with = "present")]
    neon_api_key: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    fly_api_token: Option<Option<String>>,
    fly_duplicate_names: Option<bool>,
    /// `true`: machine health checks report `critical`.
    failing_checks: Option<bool>,
    /// `true`: enforce the vendors' documented rate limits.
    vendor_limits: Option<bool>,
}

/// Tells a field set to `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

impl ConfigPatch {
    fn apply(self, mut config: FakeConfig) -> Result<FakeConfig, String> {
        for (name, share) in [
            ("error_rate", self.error_rate),
            ("error_after_commit_rate", self.error_after_commit_rate),
        ] {
            if share.is_some_and(|s| !(0.0..=1.0).contains(&s)) {
                return Err(format!("{name} must be between 0 and 1"));
            }
        }
        let ms = Duration::from_millis;
        config.latency = self.latency_ms.map_or(config.latency, ms);
        config.error_rate = self.error_rate.unwrap_or(config.error_rate);
        config.error_after_commit_rate = self
            .error_after_commit_rate
            .unwrap_or(config.error_after_commit_rate);
        let (rps, burst) = config.rate_limit.unwrap_or((0, 0));
        let rps = self.rate_limit_rps.unwrap_or(rps);
        let burst = self.rate_limit_burst.unwrap_or(burst);
        config.rate_limit = (rps > 0).then_some((rps, if burst == 0 { rps } else { burst }));
        config.retry_after = self.retry_after.unwrap_or(config.retry_after);
        config.op_duration = self.op_ms.map_or(config.op_duration, ms);
        config.boot_duration = self.boot_ms.map_or(config.boot_duration, ms);
        config.seed = self.seed.unwrap_or(config.seed);
        if let Some(key) = self.neon_api_key {
            config.neon_api_key = key;
        }
        if let Some(token) = self.fly_api_token {
            config.fly_api_token = token;
        }
        config.fly_duplicate_names = self
            .fly_duplicate_names
            .unwrap_or(config.fly_duplicate_names);
        config.fly_failing_checks = self.failing_checks.unwrap_or(config.fly_failing_checks);
        match self.vendor_limits {
            Some(true) if config.vendor_limits.is_none() => {
                config.vendor_limits = Some(crate::VendorLimits::default());
            }
            Some(false) => config.vendor_limits = None,
            _ => {}
        }
        Ok(config)
    }
}

/// The configuration as JSON; credentials only as whether they are set.
fn config_json(config: &FakeConfig) -> Value {
    let millis = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    json!({
        "latency_ms": millis(config.latency),
        "error_rate": config.error_rate,
        "error_after_commit_rate": config.error_after_commit_rate,
        "rate_limit_rps": config.rate_limit.map_or(0, |(rps, _)| rps),
        "rate_limit_burst": config.rate_limit.map_or(0, |(_, burst)| burst),
        "retry_after": config.retry_after,
        "op_ms": millis(config.op_duration),
        "boot_ms": millis(config.boot_duration),
        "seed": config.seed,
        "neon_api_key_set": config.neon_api_key.is_some(),
        "fly_api_token_set": config.fly_api_token.is_some(),
        "fly_duplicate_names": config.fly_duplicate_names,
        "failing_checks": config.fly_failing_checks,
        "vendor_limits": config.vendor_limits.is_some(),
    })
}

async fn get_config(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(config_json(&shared.config()))
}

async fn set_config(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let patch: ConfigPatch = match parse_body(&body) {
        Ok(patch) => patch,
        Err(message) => return refuse(StatusCode::BAD_REQUEST, &message, &[]),
    };
    let current = FakeConfig::clone(&shared.config());
    match patch.apply(current) {
        Ok(config) => {
            let answer = config_json(&config);
            shared.set_config(config);
            Json(answer).into_response()
        }
        Err(message) => refuse(StatusCode::BAD_REQUEST, &message, &[]),
    }
}
