//! The Fly side of the fake's state, and the Machines API's rules over it:
//! apps, their machines, and each machine's life (`created` → `started`,
//! `stopping` → `stopped`, `destroyed`).
//!
//! Like the Neon half, time is lazy: a machine holds at most one pending
//! transition (to `started` after a boot, to `stopped` after a stop) that is
//! applied when the machine is next looked at (`settle`), and a lease ends
//! when a look finds it past its expiry. Leases (`Machines_create_lease`,
//! `…_show_lease`, `…_release_lease`) are held per machine: while one is
//! live, a mutation of the machine without its nonce in
//! `fly-machine-lease-nonce` is refused. Health checks are the keys of
//! `config.checks`; their status (`CheckStatus`) is rendered from the
//! machine's state. Rendering to JSON lives here too, since the machine
//! object is the only big shape.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::http::{timestamp, FlyError, Now, Query};
use crate::ids::Ids;

/// Region for machines that do not name one.
pub(crate) const DEFAULT_REGION: &str = "iad";

/// Every Fly app the fake holds, by name.
#[derive(Default)]
pub(crate) struct Fly {
    pub(crate) apps: BTreeMap<String, App>,
}

pub(crate) struct App {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) org_slug: String,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) machines: BTreeMap<String, Machine>,
    next_seq: u64,
}

pub(crate) struct Machine {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) region: String,
    pub(crate) instance_id: String,
    pub(crate) private_ip: String,
    pub(crate) config: Value,
    pub(crate) image_ref: Value,
    pub(crate) state: MachineState,
    transition: Option<(MachineState, Instant)>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    /// Oldest first; rendered newest first as Fly does.
    events: Vec<Event>,
    seq: u64,
    /// The last lease taken; it counts only until it expires.
    lease: Option<Lease>,
}

/// A Fly machine lease (`Lease` in the OpenAPI).
#[derive(Clone)]
pub(crate) struct Lease {
    pub(crate) nonce: String,
    owner: String,
    description: String,
    expires_at: Instant,
    expires_wall: DateTime<Utc>,
    version: String,
}

impl Lease {
    fn is_live(&self, now: &Now) -> bool {
        now.at < self.expires_at
    }

    /// The OpenAPI `Lease` object; `expires_at` is a Unix timestamp.
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "nonce": self.nonce,
            "expires_at": self.expires_wall.timestamp(),
            "owner": self.owner,
            "description": self.description,
            "version": self.version,
        })
    }
}

/// Who the fake says holds a lease: it has no user accounts.
const LEASE_OWNER: &str = "fake-user@example.com";

/// A lease's time to live when the request names none, in seconds.
pub(crate) const DEFAULT_LEASE_TTL: u64 = 30;

struct Event {
    kind: &'static str,
    status: &'static str,
    source: &'static str,
    at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum MachineState {
    Created,
    Starting,
    Started,
    Stopping,
    Stopped,
    Suspended,
    Destroyed,
}

impl MachineState {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            MachineState::Created => "created",
            MachineState::Starting => "starting",
            MachineState::Started => "started",
            MachineState::Stopping => "stopping",
            MachineState::Stopped => "stopped",
            MachineState::Suspended => "suspended",
            MachineState::Destroyed => "destroyed",
        }
    }

    /// The states `/wait` accepts as targets.
    pub(crate) fn wait_target(s: &str) -> Option<MachineState> {
        match s {
            "started" => Some(MachineState::Started),
            "stopped" => Some(MachineState::Stopped),
            "suspended" => Some(MachineState::Suspended),
            "destroyed" => Some(MachineState::Destroyed),
            _ => None,
        }
    }
}

/// What `/wait` should answer now.
pub(crate) enum WaitVerdict {
    Reached,
    /// The machine can no longer get there (400).
    Unreachable(String),
    /// Not yet; something is scheduled to change at this instant, if known.
    Pending(Option<Instant>),
}

/// `POST /apps` body.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CreateApp {
    pub(crate) app_name: Option<String>,
    pub(crate) org_slug: Option<String>,
}

/// `POST /apps/{app}/machines` body; only `config.image` is required.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CreateMachine {
    pub(crate) name: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) config: Option<Value>,
    #[serde(default)]
    pub(crate) skip_launch: bool,
    /// Take a lease of this many seconds on the new machine; its nonce is
    /// returned as the machine's `nonce`.
    pub(crate) lease_ttl: Option<u64>,
}

/// `POST /apps/{app}/machines/{id}` body (`UpdateMachineRequest`); only
/// `config.image` is required, as on create.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UpdateMachine {
    pub(crate) config: Option<Value>,
    /// The `instance_id` the caller read: refused when the machine has
    /// another one now.
    pub(crate) current_version: Option<String>,
    #[serde(default)]
    pub(crate) skip_launch: bool,
}

/// `POST …/lease` body (`CreateLeaseRequest`).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CreateLease {
    pub(crate) ttl: Option<u64>,
    pub(crate) description: Option<String>,
}

/// A tenant's machine as `POST /_fake/tenants` registers it: started, at
/// once, under an exact id.
pub(crate) struct TenantMachine<'a> {
    pub(crate) app: &'a str,
    pub(crate) machine_id: &'a str,
    pub(crate) region: &'a str,
    pub(crate) config: Value,
}

impl Fly {
    pub(crate) fn app(&self, name: &str) -> Result<&App, FlyError> {
        self.apps
            .get(name)
            .ok_or_else(|| FlyError::not_found("app not found"))
    }

    pub(crate) fn app_mut(&mut self, name: &str) -> Result<&mut App, FlyError> {
        self.apps
            .get_mut(name)
            .ok_or_else(|| FlyError::not_found("app not found"))
    }

    /// `POST /apps`: app names are global; a taken one is 422 `name_taken`.
    pub(crate) fn create_app(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        body: CreateApp,
    ) -> Result<&App, FlyError> {
        let name = body.app_name.unwrap_or_default();
        if !valid_app_name(&name) {
            return Err(FlyError::bad_request(
                "app_name must be 1 to 63 lowercase letters, digits and dashes",
            ));
        }
        if self.apps.contains_key(&name) {
            return Err(FlyError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("app name {name:?} is already taken"),
            )
            .with_code("name_taken"));
        }
        let org_slug = body.org_slug.unwrap_or_else(|| "personal".to_owned());
        let app = App::new(ids, &name, &org_slug, now);
        Ok(self.apps.entry(name).or_insert(app))
    }

    /// `POST /_fake/tenants`, one tenant's machine (its app made if new);
    /// returns the machine's `instance_id`. The caller has checked that the
    /// machine id is free.
    pub(crate) fn register(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        tenant: TenantMachine<'_>,
    ) -> String {
        ids.claim(tenant.machine_id);
        let app = self
            .apps
            .entry(tenant.app.to_owned())
            .or_insert_with(|| App::new(ids, tenant.app, "personal", now));
        let name = format!("{}-{}", tenant.app, tenant.machine_id);
        let mut machine = app.new_machine(
            ids,
            tenant.machine_id,
            &name,
            tenant.region,
            tenant.config,
            now,
        );
        machine.state = MachineState::Started;
        machine.push_event("start", "started", "flyd", now.wall);
        let instance_id = machine.instance_id.clone();
        app.machines.insert(tenant.machine_id.to_owned(), machine);
        instance_id
    }
}

impl App {
    fn new(ids: &mut Ids, name: &str, org_slug: &str, now: &Now) -> App {
        App {
            id: ids.hex(12),
            name: name.to_owned(),
            org_slug: org_slug.to_owned(),
            created_at: now.wall,
            machines: BTreeMap::new(),
            next_seq: 0,
        }
    }

    fn new_machine(
        &mut self,
        ids: &mut Ids,
        id: &str,
        name: &str,
        region: &str,
        config: Value,
        now: &Now,
    ) -> Machine {
        self.next_seq += 1;
        let image = config
            .get("image")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let image_ref = image_ref(image, &ids.hex(64));
        let private_ip = format!(
            "fdaa:0:1:a7b:{}:{}:{}:2",
            ids.hex(4),
            ids.hex(4),
            ids.hex(4)
        );
        let mut machine = Machine {
            id: id.to_owned(),
            name: name.to_owned(),
            region: region.to_owned(),
            instance_id: ids.instance(),
            private_ip,
            config,
            image_ref,
            state: MachineState::Created,
            transition: None,
            created_at: now.wall,
            updated_at: now.wall,
            events: Vec::new(),
            seq: self.next_seq,
            lease: None,
        };
        machine.push_event("launch", "created", "user", now.wall);
        machine
    }

    /// Apply every transition that is due.
    pub(crate) fn settle(&mut self, now: &Now) {
        for machine in self.machines.values_mut() {
            machine.settle(now);
        }
    }

    pub(crate) fn machine(&self, id: &str) -> Result<&Machine, FlyError> {
        self.machines.get(id).ok_or_else(machine_not_found)
    }

    fn machine_mut(&mut self, id: &str) -> Result<&mut Machine, FlyError> {
        self.machines.get_mut(id).ok_or_else(machine_not_found)
    }

    /// Live (not destroyed) machines, oldest first, then the query's
    /// `include_deleted`, `region` and `metadata.<key>` filters.
    pub(crate) fn list(&self, query: &Query) -> Vec<&Machine> {
        let include_deleted = query.flag("include_deleted");
        let region = query.get("region");
        let wanted: Vec<(&str, &str)> = query.with_prefix("metadata.").collect();
        let mut machines: Vec<&Machine> = self
            .machines
            .values()
            .filter(|m| include_deleted || m.state != MachineState::Destroyed)
            .filter(|m| region.is_none_or(|r| m.region == r))
            .filter(|m| wanted.iter().all(|(k, v)| m.metadata(k) == Some(*v)))
            .collect();
        machines.sort_by_key(|m| m.seq);
        machines
    }

    /// `POST /apps/{app}/machines`. `unique_names` refuses a name a live
    /// machine of the app already has (409 `name_taken`).
    pub(crate) fn create_machine(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        boot: Duration,
        unique_names: bool,
        body: CreateMachine,
    ) -> Result<&Machine, FlyError> {
        let config = check_config(body.config)?;
        let region = match body.region {
            Some(region) if !region.is_empty() => region,
            Some(_) => return Err(FlyError::bad_request("region must not be empty")),
            None => DEFAULT_REGION.to_owned(),
        };
        if let Some(name) = &body.name {
            if unique_names
                && self
                    .machines
                    .values()
                    .any(|m| &m.name == name && m.state != MachineState::Destroyed)
            {
                return Err(FlyError::new(
                    StatusCode::CONFLICT,
                    format!("a machine named {name:?} already exists in this app"),
                )
                .with_code("name_taken"));
            }
        }
        let id = ids.machine();
        let name = match body.name {
            Some(name) if !name.is_empty() => name,
            _ => ids.machine_name(),
        };
        let mut machine = self.new_machine(ids, &id, &name, &region, config, now);
        if !body.skip_launch {
            machine.transition = Some((MachineState::Started, now.at + boot));
            machine.settle(now);
        }
        if let Some(ttl) = body.lease_ttl {
            machine.lease = Some(machine.new_lease(ids, now, ttl, String::new()));
        }
        Ok(self.machines.entry(id).or_insert(machine))
    }

    /// `POST …/start`: the state it left.
    pub(crate) fn start(
        &mut self,
        now: &Now,
        boot: Duration,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<MachineState, FlyError> {
        self.machine_mut(id)?.move_towards(
            now,
            nonce,
            MachineState::Starting,
            MachineState::Started,
            boot,
        )
    }

    /// `POST …/stop`. Stopping takes as long as booting.
    pub(crate) fn stop(
        &mut self,
        now: &Now,
        boot: Duration,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<(), FlyError> {
        self.machine_mut(id)?.move_towards(
            now,
            nonce,
            MachineState::Stopping,
            MachineState::Stopped,
            boot,
        )?;
        Ok(())
    }

    /// `POST …/{id}` (`Machines_update`): the config replaced and a new
    /// `instance_id`; the machine restarts with it (`starting`, then
    /// `started` after the boot time) unless `skip_launch`. A
    /// `current_version` other than the machine's `instance_id` is refused
    /// with 400 (Fly documents 400 for this call; which status a stale
    /// version gets is the fake's choice).
    pub(crate) fn update(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        boot: Duration,
        id: &str,
        nonce: Option<&str>,
        body: UpdateMachine,
    ) -> Result<&Machine, FlyError> {
        let config = check_config(body.config)?;
        let instance = ids.instance();
        let machine = self.machine_mut(id)?;
        machine.settle(now);
        machine.check_lease(now, nonce)?;
        if machine.state == MachineState::Destroyed {
            return Err(destroyed());
        }
        if let Some(version) = &body.current_version {
            if *version != machine.instance_id {
                return Err(FlyError::bad_request(format!(
                    "current_version {version} is not the machine's version {}",
                    machine.instance_id
                )));
            }
        }
        machine.config = config;
        machine.instance_id = instance;
        machine.push_event("update", "updated", "user", now.wall);
        if body.skip_launch {
            machine.transition = None;
            machine.set_state(MachineState::Stopped, now);
        } else {
            machine.set_state(MachineState::Starting, now);
            machine.transition = Some((MachineState::Started, now.at + boot));
            machine.settle(now);
        }
        Ok(machine)
    }

    /// `DELETE …/{id}`: a running machine needs `force` (or `kill`);
    /// destroying a destroyed machine again is a no-op.
    pub(crate) fn destroy(
        &mut self,
        now: &Now,
        id: &str,
        force: bool,
        nonce: Option<&str>,
    ) -> Result<(), FlyError> {
        let machine = self.machine_mut(id)?;
        machine.settle(now);
        if machine.state != MachineState::Destroyed {
            machine.check_lease(now, nonce)?;
        }
        if machine.is_running() && !force {
            return Err(FlyError::new(
                StatusCode::PRECONDITION_FAILED,
                "unable to destroy machine, not currently stopped, suspended or failed; use force=true",
            )
            .with_code("failed_precondition"));
        }
        if machine.state != MachineState::Destroyed {
            machine.transition = None;
            machine.set_state(MachineState::Destroyed, now);
            machine.push_event("destroy", "destroyed", "user", now.wall);
        }
        Ok(())
    }
}

/// The lease calls.
impl App {
    /// `POST …/lease`: a new lease when none is live; with the live lease's
    /// nonce in `fly-machine-lease-nonce`, that lease renewed for `ttl`
    /// more seconds (as flyctl refreshes); otherwise 409.
    pub(crate) fn acquire_lease(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        id: &str,
        nonce: Option<&str>,
        body: CreateLease,
    ) -> Result<Lease, FlyError> {
        let machine = self.machine_mut(id)?;
        machine.settle(now);
        if machine.state == MachineState::Destroyed {
            return Err(destroyed());
        }
        let ttl = body.ttl.unwrap_or(DEFAULT_LEASE_TTL);
        if ttl == 0 {
            return Err(FlyError::bad_request("ttl must be at least 1 second"));
        }
        let description = body.description.unwrap_or_default();
        match machine.live_lease(now) {
            Some(held) if Some(held.nonce.as_str()) == nonce => {
                let nonce = held.nonce.clone();
                let mut renewed = machine.new_lease(ids, now, ttl, description);
                renewed.nonce = nonce;
                machine.lease = Some(renewed.clone());
                Ok(renewed)
            }
            Some(held) => Err(held_by_someone_else(&machine.id, held)),
            None => {
                let lease = machine.new_lease(ids, now, ttl, description);
                machine.lease = Some(lease.clone());
                Ok(lease)
            }
        }
    }

    /// `GET …/lease`: the live lease, or 404.
    pub(crate) fn show_lease(&mut self, now: &Now, id: &str) -> Result<Lease, FlyError> {
        let machine = self.machine_mut(id)?;
        machine.settle(now);
        machine.live_lease(now).cloned().ok_or_else(no_lease)
    }

    /// `DELETE …/lease`: needs the live lease's nonce (400 without it);
    /// 404 when no lease is live.
    pub(crate) fn release_lease(
        &mut self,
        now: &Now,
        id: &str,
        nonce: Option<&str>,
    ) -> Result<(), FlyError> {
        let machine = self.machine_mut(id)?;
        let held = machine.live_lease(now).ok_or_else(no_lease)?;
        if Some(held.nonce.as_str()) != nonce {
            return Err(FlyError::bad_request(
                "fly-machine-lease-nonce does not match the lease held on this machine",
            ));
        }
        machine.lease = None;
        Ok(())
    }
}

fn no_lease() -> FlyError {
    FlyError::not_found("no lease is held on this machine")
}

/// The refusal of a change to a machine someone else holds a lease on.
/// Neither Fly reference gives this status; 409 is the fake's choice.
fn held_by_someone_else(machine: &str, held: &Lease) -> FlyError {
    FlyError::new(
        StatusCode::CONFLICT,
        format!(
            "machine {machine} is leased by {} until {}; send its nonce in fly-machine-lease-nonce",
            held.owner,
            timestamp(held.expires_wall)
        ),
    )
}

impl Machine {
    pub(crate) fn metadata(&self, key: &str) -> Option<&str> {
        self.config.get("metadata")?.get(key)?.as_str()
    }

    /// The nonce of the lease taken with the machine (`lease_ttl`).
    pub(crate) fn lease_nonce(&self) -> Option<&str> {
        self.lease.as_ref().map(|l| l.nonce.as_str())
    }

    fn live_lease(&self, now: &Now) -> Option<&Lease> {
        self.lease.as_ref().filter(|l| l.is_live(now))
    }

    fn new_lease(&self, ids: &mut Ids, now: &Now, ttl: u64, description: String) -> Lease {
        let ttl = Duration::from_secs(ttl);
        let expires_at = now.at + ttl;
        Lease {
            nonce: ids.hex(32),
            owner: LEASE_OWNER.to_owned(),
            description,
            expires_at,
            expires_wall: now.wall_at(expires_at),
            version: self.instance_id.clone(),
        }
    }

    /// A live lease admits only callers that send its nonce.
    fn check_lease(&self, now: &Now, nonce: Option<&str>) -> Result<(), FlyError> {
        match self.live_lease(now) {
            Some(held) if Some(held.nonce.as_str()) != nonce => {
                Err(held_by_someone_else(&self.id, held))
            }
            _ => Ok(()),
        }
    }

    /// `CheckStatus` of every check in `config.checks`: `passing` once the
    /// machine is started (unless `failing` says the app is broken),
    /// `critical` before and after.
    fn check_statuses(&self, failing: bool) -> Vec<Value> {
        let Some(Value::Object(checks)) = self.config.get("checks") else {
            return Vec::new();
        };
        let up = self.state == MachineState::Started;
        checks
            .keys()
            .map(|name| {
                let (status, output) = match (up, failing) {
                    (true, false) => ("passing", "success"),
                    (true, true) => ("critical", "check failed: connection refused"),
                    (false, _) => ("critical", "machine is not running"),
                };
                json!({
                    "name": name,
                    "status": status,
                    "output": output,
                    "updated_at": timestamp(self.updated_at),
                })
            })
            .collect()
    }

    /// Booting, up, or on the way down: what a plain destroy refuses.
    fn is_running(&self) -> bool {
        match self.state {
            MachineState::Starting | MachineState::Started | MachineState::Stopping => true,
            MachineState::Created => self.transition.is_some(),
            _ => false,
        }
    }

    fn push_event(
        &mut self,
        kind: &'static str,
        status: &'static str,
        source: &'static str,
        at: DateTime<Utc>,
    ) {
        self.events.push(Event {
            kind,
            status,
            source,
            at,
        });
    }

    /// Start and stop: for the lease holder, a machine neither `going` nor
    /// already at `to` becomes `going` and reaches `to` after `takes`; one
    /// on its way or there is left alone (both calls are idempotent on Fly).
    /// Returns the state it left.
    fn move_towards(
        &mut self,
        now: &Now,
        nonce: Option<&str>,
        going: MachineState,
        to: MachineState,
        takes: Duration,
    ) -> Result<MachineState, FlyError> {
        self.settle(now);
        self.check_lease(now, nonce)?;
        let previous = self.state;
        match previous {
            MachineState::Destroyed => return Err(destroyed()),
            state if state == going || state == to => {}
            _ => {
                self.set_state(going, now);
                self.transition = Some((to, now.at + takes));
                self.settle(now);
            }
        }
        Ok(previous)
    }

    fn set_state(&mut self, state: MachineState, now: &Now) {
        self.state = state;
        self.updated_at = now.wall;
    }

    /// Apply the pending transition if it is due.
    pub(crate) fn settle(&mut self, now: &Now) {
        let Some((to, at)) = self.transition else {
            return;
        };
        if now.at < at {
            return;
        }
        self.transition = None;
        self.state = to;
        self.updated_at = now.wall_at(at);
        let (kind, status) = match to {
            MachineState::Started => ("start", "started"),
            _ => ("exit", "stopped"),
        };
        self.push_event(kind, status, "flyd", self.updated_at);
    }

    /// Whether `/wait` for `target` is satisfied, hopeless, or pending.
    pub(crate) fn wait_verdict(&self, target: MachineState) -> WaitVerdict {
        if self.state == target {
            return WaitVerdict::Reached;
        }
        if self.state == MachineState::Destroyed {
            return WaitVerdict::Unreachable(format!(
                "machine failed to reach desired state, {}: machine is destroyed",
                target.as_str()
            ));
        }
        WaitVerdict::Pending(self.transition.map(|(_, at)| at))
    }

    /// The `Machine` object; `failing_checks` renders every health check
    /// as `critical`.
    pub(crate) fn to_json(&self, failing_checks: bool) -> Value {
        let events: Vec<Value> = self
            .events
            .iter()
            .rev()
            .map(|e| {
                json!({
                    "type": e.kind,
                    "status": e.status,
                    "source": e.source,
                    "timestamp": e.at.timestamp_millis(),
                })
            })
            .collect();
        json!({
            "id": self.id,
            "name": self.name,
            "state": self.state.as_str(),
            "region": self.region,
            "instance_id": self.instance_id,
            "version": self.instance_id,
            "private_ip": self.private_ip,
            "config": self.config,
            "image_ref": self.image_ref,
            "created_at": timestamp(self.created_at),
            "updated_at": timestamp(self.updated_at),
            "events": events,
            "checks": self.check_statuses(failing_checks),
            "host_status": "ok",
        })
    }
}

impl App {
    pub(crate) fn to_json(&self) -> Value {
        let live = self
            .machines
            .values()
            .filter(|m| m.state != MachineState::Destroyed)
            .count();
        json!({
            "id": self.id,
            "name": self.name,
            "status": "deployed",
            "organization": {"name": self.org_slug, "slug": self.org_slug},
            "machine_count": live,
            "created_at": timestamp(self.created_at),
        })
    }
}

fn machine_not_found() -> FlyError {
    FlyError::not_found("machine not found")
}

fn destroyed() -> FlyError {
    FlyError::new(StatusCode::PRECONDITION_FAILED, "machine is destroyed")
        .with_code("failed_precondition")
}

pub(crate) fn valid_app_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `config` must be an object with a non-empty `image`; `env` and
/// `metadata`, when present, maps of strings.
fn check_config(config: Option<Value>) -> Result<Value, FlyError> {
    let Some(Value::Object(config)) = config else {
        return Err(FlyError::bad_request(
            "config is required and must be an object",
        ));
    };
    match config.get("image") {
        Some(Value::String(image)) if !image.is_empty() => {}
        _ => return Err(FlyError::bad_request("config.image is required")),
    }
    if let Some(checks) = config.get("checks") {
        if !checks.is_object() {
            return Err(FlyError::bad_request(
                "config.checks must be an object of named checks",
            ));
        }
    }
    for key in ["env", "metadata"] {
        if let Some(map) = config.get(key) {
            if !is_string_map(map) {
                return Err(FlyError::bad_request(format!(
                    "config.{key} must be an object of strings"
                )));
            }
        }
    }
    Ok(Value::Object(config))
}

fn is_string_map(value: &Value) -> bool {
    value
        .as_object()
        .is_some_and(|map| map.values().all(Value::is_string))
}

/// Build the machine `config` for a registered tenant.
pub(crate) fn tenant_config(
    image: &str,
    env: &BTreeMap<String, String>,
    metadata: &BTreeMap<String, String>,
) -> Value {
    let mut config = Map::new();
    config.insert("image".into(), json!(image));
    config.insert("env".into(), json!(env));
    config.insert("metadata".into(), json!(metadata));
    config.insert(
        "guest".into(),
        json!({"cpu_kind": "shared", "cpus": 1, "memory_mb": 256}),
    );
    config.insert("restart".into(), json!({"policy": "always"}));
    Value::Object(config)
}

/// `image_ref` from an image string (`registry/repository:tag`).
fn image_ref(image: &str, digest_hex: &str) -> Value {
    let (name, tag) = match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    };
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains('.') || first.contains(':') => (first, rest),
        _ => ("docker-hub-mirror.fly.io", name),
    };
    json!({
        "registry": registry,
        "repository": repository,
        "tag": tag,
        "digest": format!("sha256:{digest_hex}"),
        "labels": {},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_ref_splits_registry_repository_and_tag() {
        let value = image_ref("registry.fly.io/tenant-app:v42", "ab");
        assert_eq!(value["registry"], "registry.fly.io");
        assert_eq!(value["repository"], "tenant-app");
        assert_eq!(value["tag"], "v42");
        let plain = image_ref("nginx", "ab");
        assert_eq!(plain["repository"], "nginx");
        assert_eq!(plain["tag"], "latest");
    }

    #[test]
    fn a_machine_boots_after_the_boot_duration() {
        let mut ids = Ids::new(0);
        let now = Now::new();
        let mut fly = Fly::default();
        let body = CreateApp {
            app_name: Some("t1".into()),
            org_slug: None,
        };
        if let Err(e) = fly.create_app(&mut ids, &now, body) {
            panic!("{e:?}");
        }
        let app = fly.app_mut("t1").unwrap_or_else(|e| panic!("{e:?}"));
        let create = CreateMachine {
            config: Some(json!({"image": "nginx"})),
            ..CreateMachine::default()
        };
        let id = app
            .create_machine(&mut ids, &now, Duration::from_secs(2), true, create)
            .map(|m| m.id.clone())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(app.machines[&id].state, MachineState::Created);
        let later = Now {
            at: now.at + Duration::from_secs(2),
            wall: now.wall,
        };
        app.settle(&later);
        assert_eq!(app.machines[&id].state, MachineState::Started);
    }
}
