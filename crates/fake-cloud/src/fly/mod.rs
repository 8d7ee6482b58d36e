//! The fake's Fly Machines API routes (under `/v1`): apps, machine create,
//! list (with `include_deleted`, `region` and `metadata.<key>` filters),
//! get, update, start, stop, destroy, `/wait`, and the machine lease (take
//! or renew, show, release). Update, start, stop, destroy and lease calls
//! read the `fly-machine-lease-nonce` header.
//!
//! `/wait` is the one handler that awaits: it re-checks the machine whenever
//! a Fly change is announced or a scheduled transition falls due, never
//! holding the state lock while it sleeps.

mod model;

use std::sync::Arc;
use std::time::Duration;

use std::convert::Infallible;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::http::{Body, FlyError, Now, Query};
use crate::Shared;

pub(crate) use model::{
    tenant_config, valid_app_name, App, Fly, MachineState, TenantMachine, DEFAULT_REGION,
};

type Answer = Result<Response, FlyError>;

/// A request body of type `T`, refused in Fly's error shape.
type FlyBody<T> = Body<T, FlyError>;

/// The longest a single `/wait` holds, as on Fly.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let machine = "/apps/{app}/machines/{machine_id}";
    Router::new()
        .route("/apps", post(create_app))
        .route("/apps/{app}", get(get_app))
        .route(
            "/apps/{app}/machines",
            get(list_machines).post(create_machine),
        )
        .route(
            machine,
            get(get_machine)
                .post(update_machine)
                .delete(destroy_machine),
        )
        .route(&format!("{machine}/wait"), get(wait))
        .route(&format!("{machine}/start"), post(start_machine))
        .route(&format!("{machine}/stop"), post(stop_machine))
        .route(
            &format!("{machine}/lease"),
            get(show_lease).post(acquire_lease).delete(release_lease),
        )
}

/// The header a lease holder sends on every call to its machine.
const LEASE_NONCE: &str = "fly-machine-lease-nonce";

/// The `fly-machine-lease-nonce` of a call, as a handler argument; an
/// absent or blank header is none.
struct LeaseNonce(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for LeaseNonce {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<LeaseNonce, Infallible> {
        let nonce = parts
            .headers
            .get(LEASE_NONCE)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty());
        Ok(LeaseNonce(nonce.map(str::to_owned)))
    }
}

/// Any path under `/v1` the fake does not serve.
pub(crate) async fn unknown_route() -> FlyError {
    FlyError::not_found("not found")
}

/// Applies `change` to `app` under the state lock and, once the lock is
/// released and the change made, wakes every `/wait` so it re-checks.
fn change_app<T>(
    shared: &Shared,
    app: &str,
    change: impl FnOnce(&mut App) -> Result<T, FlyError>,
) -> Result<T, FlyError> {
    let changed = change(shared.world().fly.app_mut(app)?)?;
    shared.fly_changed.notify_waiters();
    Ok(changed)
}

/// Runs `read` on `app` under the state lock, once the transitions that
/// are due have been applied: every machine as it is now.
fn read_app<T>(
    shared: &Shared,
    app: &str,
    read: impl FnOnce(&App) -> Result<T, FlyError>,
) -> Result<T, FlyError> {
    let now = Now::new();
    let mut world = shared.world();
    let app = world.fly.app_mut(app)?;
    app.settle(&now);
    read(app)
}

fn ok(body: Value) -> Answer {
    Ok(Json(body).into_response())
}

async fn create_app(
    State(shared): State<Arc<Shared>>,
    Body(body, _): FlyBody<model::CreateApp>,
) -> Answer {
    let now = Now::new();
    let mut world = shared.world();
    let world = &mut *world;
    let app = world.fly.create_app(&mut world.ids, &now, body)?;
    Ok((StatusCode::CREATED, Json(app.to_json())).into_response())
}

async fn get_app(State(shared): State<Arc<Shared>>, Path(app): Path<String>) -> Answer {
    let world = shared.world();
    ok(world.fly.app(&app)?.to_json())
}

async fn create_machine(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    Body(body, _): FlyBody<model::CreateMachine>,
) -> Answer {
    let config = shared.config();
    let now = Now::new();
    let answer = {
        let mut world = shared.world();
        let world = &mut *world;
        let app = world.fly.app_mut(&app)?;
        app.settle(&now);
        let unique_names = !config.fly_duplicate_names;
        let machine = app.create_machine(
            &mut world.ids,
            &now,
            config.boot_duration,
            unique_names,
            body,
        )?;
        let mut answer = machine.to_json(config.fly_failing_checks);
        // `Machine.nonce`: "only ever returned on machine creation if a
        // lease duration was provided".
        if let (Some(lease), Some(object)) = (machine.lease_nonce(), answer.as_object_mut()) {
            object.insert("nonce".into(), json!(lease));
        }
        answer
    };
    shared.fly_changed.notify_waiters();
    ok(answer)
}

async fn list_machines(
    State(shared): State<Arc<Shared>>,
    Path(app): Path<String>,
    query: Query,
) -> Answer {
    let failing = shared.config().fly_failing_checks;
    read_app(&shared, &app, |app| {
        let machines = app.list(&query).into_iter().map(|m| m.to_json(failing));
        ok(Value::Array(machines.collect()))
    })
}

async fn get_machine(
    State(shared): State<Arc<Shared>>,
    Path((app, machine_id)): Path<(String, String)>,
) -> Answer {
    let failing = shared.config().fly_failing_checks;
    read_app(&shared, &app, |app| {
        ok(app.machine(&machine_id)?.to_json(failing))
    })
}

/// `Machines_update`: 200 with the `Machine` as it is after the change.
async fn update_machine(
    State(shared): State<Arc<Shared>>,
    Path((app, machine_id)): Path<(String, String)>,
    LeaseNonce(nonce): LeaseNonce,
    Body(body, _): FlyBody<model::UpdateMachine>,
) -> Answer {
    let config = shared.config();
    let now = Now::new();
    let answer = {
        let mut world = shared.world();
        let world = &mut *world;
        let app = world.fly.app_mut(&app)?;
        app.settle(&now);
        let machine = app.update(
            &mut world.ids,
            &now,
            config.boot_duration,
            &machine_id,
            nonce.as_deref(),
            body,
        )?;
        machine.to_json(config.fly_failing_checks)
    };
    shared.fly_changed.notify_waiters();
    ok(answer)
}

async fn start_machine(
    State(shared): State<Arc<Shared>>,
    Path((app, machine_id)): Path<(String, String)>,
    LeaseNonce(nonce): LeaseNonce,
) -> Answer {
    let boot = shared.config().boot_duration;
    let now = Now::new();
    let previous = change_app(&shared, &app, |app| {
        app.start(&now, boot, &machine_id, nonce.as_deref())
    })?;
    ok(json!({"previous_state": previous.as_str(), "migrated": false, "new_host": ""}))
}

/// The optional `StopRequest` body: `signal` and `timeout` (a Go
/// duration string). The fake checks their shape (the handler takes the
/// body only for that); a stop takes the boot duration whatever they say.
#[derive(Debug, Default, serde::Deserialize)]
struct StopRequest {
    #[allow(dead_code)]
    signal: Option<String>,
    #[allow(dead_code)]
    timeout: Option<String>,
}

async fn stop_machine(
    State(shared): State<Arc<Shared>>,
    Path((app, machine_id)): Path<(String, String)>,
    LeaseNonce(nonce): LeaseNonce,
    Body(_, _): FlyBody<StopRequest>,
) -> Answer {
    let boot = shared.config().boot_duration;
    let now = Now::new();
    change_app(&shared, &app, |app| {
        app.stop(&now, boot, &machine_id, nonce.as_deref())
    })?;
    ok(json!({"ok": true}))
}

/// `force=true` or `kill=true` destroys a running machine; without either
/// only a machine that is not running can go.
async fn destroy_machine(
    State(shared): State<Arc<Shared>>,
    Path((app, machine_id)): Path<(String, String)>,
    query: Query,
    LeaseNonce(nonce): LeaseNonce,
) -> Answer {
    let force = query.flag("force") || query.flag("kill");
    let now = Now::new();
    change_app(&shared, &app, |app| {
        app.destroy(&now, &machine_id, force, nonce.as_deref())
    })?;
    ok(json!({"ok": true}))
}

/// `Machines_create_lease`: 200 with the `Lease` object, as the OpenAPI
/// documents (the prose docs show 201 and a `{"status","data"}` wrapper).
async fn acquire_lease(
    State(shared): State<Arc<Shared>>,
    Path((app, machine_id)): Path<(String, String)>,
    LeaseNonce(nonce): LeaseNonce,
    Body(body, _): FlyBody<model::CreateLease>,
) -> Answer {
    let now = Now::new();
    let mut world = shared.world();
    let world = &mut *world;
    let lease = world.fly.app_mut(&app)?.acquire_lease(
        &mut world.ids,
        &now,
        &machine_id,
        nonce.as_deref(),
        body,
    )?;
    ok(lease.to_json())
}

async fn show_lease(
    State(shared): State<Arc<Shared>>,
    Path((app, machine_id)): Path<(String, String)>,
) -> Answer {
    let now = Now::new();
    let mut world = shared.world();
    let lease = world.fly.app_mut(&app)?.show_lease(&now, &machine_id)?;
    ok(lease.to_json())
}

async fn release_lease(
    State(shared): State<Arc<Shared>>,
    Path((app, machine_id)): Path<(String, String)>,
    LeaseNonce(nonce): LeaseNonce,
) -> Answer {
    let now = Now::new();
    let mut world = shared.world();
    world
        .fly
        .app_mut(&app)?
        .release_lease(&now, &machine_id, nonce.as_deref())?;
    ok(json!({"ok": true}))
}

/// What a `/wait` call asks for.
struct WaitFor {
    target: MachineState,
    timeout: Duration,
    version: Option<String>,
}

impl WaitFor {
    fn parse(query: &Query) -> Result<WaitFor, FlyError> {
        let target = match query.get("state") {
            None => MachineState::Started,
            Some(state) => MachineState::wait_target(state).ok_or_else(|| {
                FlyError::bad_request("state must be one of started, stopped, suspended, destroyed")
            })?,
        };
        let timeout = match query.get("timeout") {
            None => MAX_WAIT,
            Some(raw) => parse_seconds(raw)
                .ok_or_else(|| FlyError::bad_request("timeout must be a number of seconds"))?
                .min(MAX_WAIT),
        };
        let version = query
            .get("instance_id")
            .or_else(|| query.get("version"))
            .filter(|v| !v.is_empty())
            .map(str::to_owned);
        if target == MachineState::Stopped && version.is_none() {
            return Err(FlyError::bad_request(
                "instance_id is required when waiting for the stopped state",
            ));
        }
        Ok(WaitFor {
            target,
            timeout,
            version,
        })
    }
}

/// `30` or `30s`.
fn parse_seconds(raw: &str) -> Option<Duration> {
    raw.strip_suffix('s')
        .unwrap_or(raw)
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// 200 `{"ok":true}` once the machine is in the state; 408 when `timeout`
/// passes first; 400 when the state can no longer be reached; 404 for an
/// unknown machine, except that an absent machine is `destroyed`.
async fn wait(
    State(shared): State<Arc<Shared>>,
    Path((app, machine_id)): Path<(String, String)>,
    query: Query,
) -> Answer {
    let wait = WaitFor::parse(&query)?;
    let deadline = Instant::now() + wait.timeout;
    loop {
        // Registered before looking, so a change made between the look and
        // the sleep still wakes us.
        let changed = shared.fly_changed.notified();
        tokio::pin!(changed);
        changed.as_mut().enable();
        if shared.is_closing() {
            return Err(FlyError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "server shutting down",
            ));
        }
        let next_change = match look(&shared, &app, &machine_id, &wait)? {
            model::WaitVerdict::Reached => return ok(json!({"ok": true})),
            model::WaitVerdict::Unreachable(message) => return Err(FlyError::bad_request(message)),
            model::WaitVerdict::Pending(next_change) => next_change,
        };
        if Instant::now() >= deadline {
            return Err(FlyError::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "deadline_exceeded: machine did not reach state {} within {}s",
                    wait.target.as_str(),
                    wait.timeout.as_secs()
                ),
            ));
        }
        let wake = next_change.map_or(deadline, |at| at.min(deadline));
        tokio::select! {
            _ = &mut changed => {}
            _ = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// One look at the machine for `/wait`, under the lock.
fn look(
    shared: &Shared,
    app: &str,
    machine_id: &str,
    wait: &WaitFor,
) -> Result<model::WaitVerdict, FlyError> {
    read_app(shared, app, |app| {
        let Ok(machine) = app.machine(machine_id) else {
            if wait.target == MachineState::Destroyed {
                return Ok(model::WaitVerdict::Reached);
            }
            return Err(FlyError::not_found("machine not found"));
        };
        if let Some(version) = &wait.version {
            if version != &machine.instance_id {
                return Err(FlyError::bad_request(format!(
                    "instance_id {version} is not the machine's current version"
                )));
            }
        }
        Ok(machine.wait_verdict(wait.target))
    })
}
