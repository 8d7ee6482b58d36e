//! The Fly Machines API client: get, list, create, wait, stop and destroy
//! machines, a graceful stop-then-destroy, waiting for a machine's health
//! checks, machine leases (take, renew, release; the nonce sent on every
//! change to a leased machine), and create apps (docs/cloud-apis.md, "Fly
//! Machines API"), over the shared policy in `http.rs`, plus the one place
//! that turns an old machine's config into its replacement's.
//!
//! Fly has no idempotency key on machine create, so every machine this tool
//! creates carries a unique `rekey_item` tag in `config.metadata`. Before a
//! create, and after any failed one (whatever the status: Fly documents
//! none for a taken name), the machines with that tag are listed and an
//! existing one is adopted instead of making a second. Machine configs hold `DATABASE_URL`
//! in plain text, so they live in [`MachineConfig`], which is zeroized on
//! drop and prints only its key names. Neon is in `neon.rs`.

use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use super::http::{
    Api, ApiClient, ApiRequest, CloudError, CounterSnapshot, Counters, Created, HttpOptions,
};
use super::secret::{Secret, SecretJson};

/// The `config.metadata` key whose value identifies the work item a machine
/// was created for; what makes machine creation idempotent.
pub const ITEM_TAG: &str = "rekey_item";

/// Fly's `/wait` holds a request at most this long (docs/cloud-apis.md).
const MAX_WAIT_SECS: u64 = 60;

/// The header that proves a caller holds a machine's lease (Fly docs,
/// "Machine leases").
pub const LEASE_NONCE_HEADER: &str = "fly-machine-lease-nonce";

/// Longest pause between two looks at a machine's health checks.
const MAX_HEALTH_POLL: Duration = Duration::from_secs(5);

/// Options of a [`FlyClient`].
#[derive(Debug, Clone)]
pub struct FlyOptions {
    pub http: HttpOptions,
    /// Pause before listing machines after an ambiguous create: the list
    /// reads an eventually consistent store (docs/cloud-apis.md).
    pub lookup_settle: Duration,
}

impl Default for FlyOptions {
    fn default() -> FlyOptions {
        FlyOptions {
            http: HttpOptions::fly_defaults(),
            lookup_settle: Duration::from_secs(2),
        }
    }
}

/// A machine's config, kept as JSON so fields this tool does not know
/// survive a copy. Zeroized on drop; `Debug` prints key names only.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(transparent)]
pub struct MachineConfig(SecretJson);

impl MachineConfig {
    pub fn new(config: Value) -> MachineConfig {
        MachineConfig(SecretJson::new(config))
    }

    /// The whole config, `env` values included.
    pub fn expose(&self) -> &Value {
        self.0.expose()
    }

    pub fn image(&self) -> Option<&str> {
        self.expose().get("image").and_then(Value::as_str)
    }

    /// One `config.metadata` value.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.expose()
            .get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
    }

    /// One `config.env` value, as a secret since env carries URLs.
    pub fn env(&self, key: &str) -> Option<Secret> {
        self.expose()
            .get("env")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(Secret::new)
    }
}

/// A Fly machine. Fields the tool does not read are dropped, except in
/// `config`, which is kept whole. Not `Serialize`, since `config` holds
/// `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Machine {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub region: String,
    /// The current version; changes on every update.
    #[serde(default)]
    pub instance_id: Option<String>,
    #[serde(default)]
    pub private_ip: Option<String>,
    /// Absent when the host is not `ok` (then `incomplete_config` is sent).
    #[serde(default)]
    pub config: Option<MachineConfig>,
    #[serde(default)]
    pub host_status: Option<String>,
    #[serde(default)]
    pub incomplete_config: Option<MachineConfig>,
    #[serde(default)]
    pub checks: Vec<MachineCheck>,
    #[serde(default)]
    pub created_at: Option<String>,
    #[serde(default)]
    pub updated_at: Option<String>,
}

/// One health check's state. Its `output` is not kept: it is free text
/// from the tenant's app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineCheck {
    #[serde(default)]
    pub name: String,
    /// `passing`, `warning` or `critical`.
    #[serde(default)]
    pub status: String,
}

impl Machine {
    /// The config for a machine that replaces this one: everything copied,
    /// except `env.DATABASE_URL` (and `env.REDIS_URL` when given) replaced,
    /// `mounts` dropped (a volume cannot attach to two machines) and
    /// `standbys` dropped (they point at this machine), and `metadata`
    /// given `rekey_item=<item_tag>` plus `extra_metadata`. Refused when the
    /// host is not `ok`, since the config Fly then returns is partial.
    pub fn replacement_config(
        &self,
        database_url: &Secret,
        redis_url: Option<&Secret>,
        item_tag: &str,
        extra_metadata: &[(&str, &str)],
    ) -> Result<MachineConfig, CloudError> {
        self.config_with_urls(database_url, redis_url, item_tag, extra_metadata, false)
    }

    /// The config for updating this machine in place: as
    /// [`Machine::replacement_config`], except that `mounts` and `standbys`
    /// stay (the machine keeps its volume and its standbys).
    pub fn updated_config(
        &self,
        database_url: &Secret,
        redis_url: Option<&Secret>,
        item_tag: &str,
        extra_metadata: &[(&str, &str)],
    ) -> Result<MachineConfig, CloudError> {
        self.config_with_urls(database_url, redis_url, item_tag, extra_metadata, true)
    }

    /// Whether the machine's config already holds these URLs (an update
    /// whose answer was lost may have landed).
    pub fn runs_with(&self, database_url: &Secret, redis_url: Option<&Secret>) -> bool {
        let Some(config) = &self.config else {
            return false;
        };
        let same = |key: &str, want: &Secret| {
            config
                .env(key)
                .is_some_and(|have| have.expose() == want.expose())
        };
        same("DATABASE_URL", database_url) && redis_url.is_none_or(|r| same("REDIS_URL", r))
    }

    fn config_with_urls(
        &self,
        database_url: &Secret,
        redis_url: Option<&Secret>,
        item_tag: &str,
        extra_metadata: &[(&str, &str)],
        in_place: bool,
    ) -> Result<MachineConfig, CloudError> {
        let refuse = |reason: &str| CloudError::UnsafeToCopy {
            machine: self.id.clone(),
            reason: reason.to_string(),
        };
        if let Some(status) = self.host_status.as_deref().filter(|s| *s != "ok") {
            return Err(refuse(&format!(
                "its host status is {status:?}, so Fly returns only a partial config"
            )));
        }
        let Some(old) = &self.config else {
            return Err(refuse("the machine has no config"));
        };
        let mut copy = old.clone();
        let Some(config) = copy.0.expose_mut().as_object_mut() else {
            return Err(refuse("its config is not a JSON object"));
        };
        if config.get("image").and_then(Value::as_str).is_none() {
            return Err(refuse("its config has no image"));
        }
        if !in_place {
            config.remove("mounts");
            config.remove("standbys");
        }
        let env =
            object_entry(config, "env").ok_or_else(|| refuse("config.env is not an object"))?;
        env.insert(
            "DATABASE_URL".to_string(),
            Value::String(database_url.expose().to_string()),
        );
        if let Some(redis) = redis_url {
            env.insert(
                "REDIS_URL".to_string(),
                Value::String(redis.expose().to_string()),
            );
        }
        let metadata = object_entry(config, "metadata")
            .ok_or_else(|| refuse("config.metadata is not an object"))?;
        metadata.insert(ITEM_TAG.to_string(), Value::String(item_tag.to_string()));
        for (key, value) in extra_metadata {
            metadata.insert(key.to_string(), Value::String(value.to_string()));
        }
        Ok(copy)
    }
}

/// `request` with `lease`'s nonce header, when there is a lease.
fn with_lease(request: ApiRequest, lease: Option<&Lease>) -> Result<ApiRequest, CloudError> {
    match lease {
        Some(lease) => Ok(request.header(LEASE_NONCE_HEADER, lease.header()?)),
        None => Ok(request),
    }
}

fn not_healthy(app: &str, id: &str, reason: &str) -> CloudError {
    CloudError::NotHealthy {
        app: app.to_string(),
        machine: id.to_string(),
        reason: reason.to_string(),
    }
}

/// `None` when the machine is healthy; otherwise why not yet, as check
/// names and statuses. An error when it can no longer become healthy.
fn health_verdict(app: &str, machine: &Machine) -> Result<Option<String>, CloudError> {
    let hopeless = |state: &str| {
        not_healthy(
            app,
            &machine.id,
            &format!("it is {state}, and nothing will start it again"),
        )
    };
    match machine.state.as_str() {
        "started" => {}
        state @ ("stopped" | "failed" | "destroyed" | "destroying" | "suspended") => {
            return Err(hopeless(state));
        }
        state => return Ok(Some(format!("state {state}"))),
    }
    let configured: Vec<&str> = machine
        .config
        .as_ref()
        .and_then(|c| c.expose().get("checks"))
        .and_then(Value::as_object)
        .map(|checks| checks.keys().map(String::as_str).collect())
        .unwrap_or_default();
    let mut waiting: Vec<String> = Vec::new();
    for name in configured {
        let status = machine
            .checks
            .iter()
            .find(|c| c.name == name)
            .map_or("not reported yet", |c| c.status.as_str());
        if status != "passing" {
            waiting.push(format!("{name}: {status}"));
        }
    }
    Ok((!waiting.is_empty()).then(|| waiting.join(", ")))
}

/// The object at `config[key]`, created empty when absent; `None` when
/// something else is there.
fn object_entry<'a>(
    config: &'a mut Map<String, Value>,
    key: &str,
) -> Option<&'a mut Map<String, Value>> {
    config
        .entry(key)
        .or_insert_with(|| Value::Object(Map::new()))
        .as_object_mut()
}

/// A lease on one machine (`Lease` in the Fly OpenAPI). While it is live,
/// changes to the machine must carry its nonce, which the `FlyClient`
/// calls that take a `lease` send. `Debug` does not print the nonce: it is
/// what lets a caller change the machine.
#[derive(Clone, PartialEq, Eq, Deserialize)]
pub struct Lease {
    nonce: String,
    /// Unix seconds (UTC) at which the lease lapses.
    #[serde(default)]
    pub expires_at: i64,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub description: String,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("nonce", &"<hidden>")
            .field("expires_at", &self.expires_at)
            .field("owner", &self.owner)
            .field("description", &self.description)
            .finish()
    }
}

impl Lease {
    /// The `fly-machine-lease-nonce` value.
    fn header(&self) -> Result<HeaderValue, CloudError> {
        HeaderValue::from_str(&self.nonce).map_err(|_| CloudError::Config {
            api: Api::Fly,
            message: "Fly returned a lease nonce that cannot be sent as a header".to_string(),
        })
    }
}

/// A lease answer: the OpenAPI documents the bare `Lease`, the prose docs
/// wrap it as `{"status": "success", "data": Lease}`; either is read.
#[derive(Deserialize)]
#[serde(untagged)]
enum LeaseBody {
    Wrapped { data: Lease },
    Bare(Lease),
}

impl LeaseBody {
    fn into_lease(self) -> Lease {
        match self {
            LeaseBody::Wrapped { data } | LeaseBody::Bare(data) => data,
        }
    }
}

/// A lease as anyone may see it: who holds it, why and until when.
#[derive(Debug, Clone, Deserialize)]
pub struct LeaseHeld {
    /// Unix seconds (UTC) at which the lease lapses.
    #[serde(default)]
    pub expires_at: i64,
    #[serde(default)]
    pub owner: String,
    #[serde(default)]
    pub description: String,
}

/// [`LeaseHeld`] bare (the OpenAPI) or inside `data` (Fly's docs).
#[derive(Deserialize)]
#[serde(untagged)]
enum LeaseHeldBody {
    Wrapped { data: LeaseHeld },
    Bare(LeaseHeld),
}

impl LeaseHeldBody {
    fn into_held(self) -> LeaseHeld {
        match self {
            LeaseHeldBody::Wrapped { data } | LeaseHeldBody::Bare(data) => data,
        }
    }
}

/// How to stop a machine (`StopRequest`): the signal to send first (Fly
/// defaults to SIGINT, or the image's stop signal) and how long to wait
/// before SIGKILL. `None` leaves either to Fly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StopOptions {
    pub signal: Option<String>,
    pub timeout: Option<Duration>,
}

impl StopOptions {
    fn body(&self) -> Value {
        let mut body = Map::new();
        if let Some(signal) = &self.signal {
            body.insert("signal".to_string(), json!(signal));
        }
        if let Some(timeout) = self.timeout {
            // A Go duration string, as `StopRequest.timeout` is typed.
            body.insert(
                "timeout".to_string(),
                json!(format!("{}s", timeout.as_secs())),
            );
        }
        Value::Object(body)
    }
}

/// What to create. `config.metadata` must carry [`ITEM_TAG`].
#[derive(Debug, Clone)]
pub struct CreateMachine {
    /// `None` lets Fly generate one.
    pub name: Option<String>,
    /// Pass the old machine's region; `None` means "near the caller".
    pub region: Option<String>,
    pub config: MachineConfig,
    pub skip_launch: bool,
}

/// A state `/wait` can wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitState {
    Started,
    Stopped,
    Suspended,
    Destroyed,
}

impl WaitState {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitState::Started => "started",
            WaitState::Stopped => "stopped",
            WaitState::Suspended => "suspended",
            WaitState::Destroyed => "destroyed",
        }
    }
}

/// What a delete found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    Removed,
    /// It was not there (404): an earlier attempt already removed it.
    AlreadyGone,
}

/// The Fly Machines API client.
pub struct FlyClient {
    http: ApiClient,
    lookup_settle: Duration,
}

impl FlyClient {
    /// A client for the API at `base_url` (`https://api.machines.dev/v1` in
    /// production). A token starting `FlyV1 ` is sent as is, any other as
    /// `Bearer <token>`.
    pub fn new(
        base_url: &str,
        token: Secret,
        options: FlyOptions,
    ) -> Result<FlyClient, CloudError> {
        Ok(FlyClient {
            http: ApiClient::new(Api::Fly, base_url, &token, options.http)?,
            lookup_settle: options.lookup_settle,
        })
    }

    /// Request totals so far.
    pub fn counters(&self) -> CounterSnapshot {
        self.http.counters().snapshot()
    }

    /// The live counters, for a progress reporter that samples them.
    pub fn live_counters(&self) -> std::sync::Arc<Counters> {
        self.http.counters()
    }

    /// The machine, or `None` when Fly says it does not exist.
    pub async fn get_machine(&self, app: &str, id: &str) -> Result<Option<Machine>, CloudError> {
        match self
            .http
            .send(ApiRequest::get(&["apps", app, "machines", id]))
            .await
        {
            Ok(response) => Ok(Some(response.json()?)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The app's machines whose metadata has every `(key, value)` of
    /// `metadata_filter`; destroyed ones only with `include_deleted`. The
    /// filter is also applied here, so a server that ignores it cannot
    /// return a stranger's machine.
    pub async fn list_machines(
        &self,
        app: &str,
        metadata_filter: &[(&str, &str)],
        include_deleted: bool,
    ) -> Result<Vec<Machine>, CloudError> {
        let mut request = ApiRequest::get(&["apps", app, "machines"]);
        for (key, value) in metadata_filter {
            request = request.query(&format!("metadata.{key}"), *value);
        }
        if include_deleted {
            request = request.query("include_deleted", "true");
        }
        let machines: Vec<Machine> = self.http.send(request).await?.json()?;
        Ok(machines
            .into_iter()
            .filter(|m| {
                metadata_filter.iter().all(|(key, value)| {
                    m.config.as_ref().and_then(|c| c.metadata(key)) == Some(*value)
                })
            })
            .collect())
    }

    /// Creates a machine, or adopts the one an earlier attempt made: when
    /// `may_exist` (an earlier attempt may have posted it), the machines
    /// tagged with the config's [`ITEM_TAG`] value are listed before
    /// posting; after any failed post, always. What
    /// `Machines_create` answers for a taken name is not documented, so no
    /// status is read as "it exists": only the listing by tag decides. A
    /// refusal with nothing tagged is returned as it came; an ambiguous
    /// failure (5xx, timeout, lost connection) with nothing tagged is posted
    /// again. Two live machines with one tag is an error, not a choice this
    /// client makes.
    pub async fn create_machine(
        &self,
        app: &str,
        spec: &CreateMachine,
        may_exist: bool,
    ) -> Result<Created<Machine>, CloudError> {
        let Some(tag) = spec.config.metadata(ITEM_TAG) else {
            return Err(CloudError::Config {
                api: Api::Fly,
                message: format!("a machine to create must carry config.metadata.{ITEM_TAG}"),
            });
        };
        if may_exist {
            if let Some(existing) = self.find_tagged(app, tag).await? {
                return Ok(Created::Adopted(existing));
            }
        }
        let mut body = json!({
            "config": spec.config.expose(),
            "skip_launch": spec.skip_launch,
        });
        if let Some(name) = &spec.name {
            body["name"] = json!(name);
        }
        if let Some(region) = &spec.region {
            body["region"] = json!(region);
        }
        // The body holds DATABASE_URL: zeroized when this function returns.
        let body = SecretJson::new(body);
        let post = || async {
            let request = ApiRequest::post(&["apps", app, "machines"]).json(body.expose());
            self.http.send(request).await?.json::<Machine>()
        };
        let lookup = || self.find_tagged(app, tag);
        // Every refusal, whatever its code, is checked against the listing.
        let refused = |e: &CloudError| e.status().is_some_and(|s| (400..500).contains(&s));
        self.http
            .create_with_recovery(post, lookup, refused, self.lookup_settle)
            .await
    }

    /// The one live machine tagged `rekey_item=<tag>`, if any.
    async fn find_tagged(&self, app: &str, tag: &str) -> Result<Option<Machine>, CloudError> {
        let mut found = self.list_machines(app, &[(ITEM_TAG, tag)], false).await?;
        found.retain(|m| !matches!(m.state.as_str(), "destroyed" | "destroying"));
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err(CloudError::Conflict {
                api: Api::Fly,
                what: format!(
                    "app {app} has {} live machines tagged {ITEM_TAG}={tag}: {}",
                    found.len(),
                    found
                        .iter()
                        .map(|m| m.id.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }),
        }
    }

    /// Replaces the machine's config (`Machines_update`: `POST
    /// /apps/{app}/machines/{id}`, body `UpdateMachineRequest`); Fly
    /// restarts the machine with it under a new `instance_id`, which the
    /// answer carries. `current_version` (the `instance_id` the config was
    /// read from) has the update refused when someone changed the machine
    /// since; `lease`'s nonce goes with it. Not repeated after an ambiguous
    /// failure: the caller reads the machine again to see whether it landed.
    pub async fn update_machine(
        &self,
        app: &str,
        id: &str,
        config: &MachineConfig,
        current_version: Option<&str>,
        lease: Option<&Lease>,
    ) -> Result<Machine, CloudError> {
        let mut body = json!({ "config": config.expose() });
        if let Some(version) = current_version {
            body["current_version"] = json!(version);
        }
        // The body holds DATABASE_URL: zeroized when this function returns.
        let body = SecretJson::new(body);
        let request = ApiRequest::post(&["apps", app, "machines", id]).json(body.expose());
        let request = with_lease(request, lease)?;
        self.http.send(request).await?.json::<Machine>()
    }

    /// Waits until machine `id` reaches `state`, by calling `/wait` (at most
    /// 60 s per call) until `deadline`. `instance_id` pins the version to
    /// watch (needed for `stopped`). A 404 right after create is retried a
    /// few times; while waiting for `destroyed` it means done. A 400 means
    /// the machine can no longer get there.
    pub async fn wait_for_state(
        &self,
        app: &str,
        id: &str,
        state: WaitState,
        instance_id: Option<&str>,
        deadline: Instant,
    ) -> Result<(), CloudError> {
        let mut not_found = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CloudError::DeadlinePassed {
                    what: format!(
                        "waiting for Fly machine {id} in app {app} to be {}",
                        state.as_str()
                    ),
                });
            }
            let seconds = remaining.as_secs().clamp(1, MAX_WAIT_SECS);
            let mut request = ApiRequest::get(&["apps", app, "machines", id, "wait"])
                .query("state", state.as_str())
                .query("timeout", seconds.to_string())
                .final_status(408)
                .final_status(404)
                .final_status(400)
                .timeout(Duration::from_secs(seconds + 15));
            if let Some(instance) = instance_id {
                request = request.query("instance_id", instance);
            }
            match self.http.send(request).await {
                Ok(_) => return Ok(()),
                Err(e) if e.status() == Some(408) => continue,
                Err(e) if e.is_not_found() && state == WaitState::Destroyed => return Ok(()),
                Err(e) if e.is_not_found() => {
                    not_found += 1;
                    if not_found >= self.http.options().max_attempts {
                        return Err(e);
                    }
                    let pause = self.http.options().min_backoff * not_found;
                    tokio::time::sleep(pause.min(remaining)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Asks the machine to stop with Fly's default signal and timeout;
    /// wait for `stopped` with its `instance_id`.
    pub async fn stop_machine(&self, app: &str, id: &str) -> Result<(), CloudError> {
        self.stop_machine_with(app, id, &StopOptions::default(), None)
            .await
    }

    /// Asks the machine to stop (`Machines_stop`, body `StopRequest`),
    /// sending `lease`'s nonce when given. A repeated stop is harmless, so
    /// it is retried like a GET.
    pub async fn stop_machine_with(
        &self,
        app: &str,
        id: &str,
        stop: &StopOptions,
        lease: Option<&Lease>,
    ) -> Result<(), CloudError> {
        let request = ApiRequest::post(&["apps", app, "machines", id, "stop"])
            .json(&stop.body())
            .repeatable();
        let request = with_lease(request, lease)?;
        self.http.send(request).await.map(|_| ())
    }

    /// Destroys the machine (`force` kills it if running). Irreversible.
    pub async fn destroy_machine(
        &self,
        app: &str,
        id: &str,
        force: bool,
    ) -> Result<Removal, CloudError> {
        self.destroy_machine_with(app, id, force, None).await
    }

    /// [`FlyClient::destroy_machine`], sending `lease`'s nonce when given.
    pub async fn destroy_machine_with(
        &self,
        app: &str,
        id: &str,
        force: bool,
        lease: Option<&Lease>,
    ) -> Result<Removal, CloudError> {
        let request =
            ApiRequest::delete(&["apps", app, "machines", id]).query("force", force.to_string());
        let request = with_lease(request, lease)?;
        match self.http.send(request).await {
            Ok(_) => Ok(Removal::Removed),
            Err(e) if e.is_not_found() => Ok(Removal::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// Stops the machine gracefully, waits until it is `stopped`, then
    /// destroys it without `force`, so the tenant's app gets its signal
    /// and its `timeout` to shut down instead of being killed. A machine
    /// already gone is [`Removal::AlreadyGone`]; one already stopped is
    /// not stopped again. `lease`'s nonce goes with every change.
    pub async fn stop_then_destroy(
        &self,
        app: &str,
        id: &str,
        stop: &StopOptions,
        lease: Option<&Lease>,
        deadline: Instant,
    ) -> Result<Removal, CloudError> {
        let Some(machine) = self.get_machine(app, id).await? else {
            return Ok(Removal::AlreadyGone);
        };
        match machine.state.as_str() {
            "destroyed" | "destroying" => return Ok(Removal::AlreadyGone),
            "stopped" => {}
            _ => {
                self.stop_machine_with(app, id, stop, lease).await?;
                // `/wait` for `stopped` needs the version it watches.
                let instance = machine.instance_id.as_deref();
                self.wait_for_state(app, id, WaitState::Stopped, instance, deadline)
                    .await?;
            }
        }
        self.destroy_machine_with(app, id, false, lease).await
    }

    /// Waits until the machine is `started` and, when its config has health
    /// checks (`config.checks`), until every check reports `passing`
    /// (`Machine.checks`, `CheckStatus`), looking at most `timeout` long.
    /// A machine that is gone, or stopped, failed or destroyed, will not
    /// get there: [`CloudError::NotHealthy`] at once. Check `output` is the
    /// tenant app's free text and is never put into an error.
    pub async fn wait_healthy(
        &self,
        app: &str,
        id: &str,
        timeout: Duration,
    ) -> Result<Machine, CloudError> {
        let deadline = Instant::now() + timeout;
        let options = self.http.options();
        // Polled with the policy's back-off, capped so a check that turns
        // green is seen within a few seconds.
        let cap = options
            .max_backoff
            .min(MAX_HEALTH_POLL)
            .max(options.min_backoff);
        let mut pause = options.min_backoff;
        loop {
            let Some(machine) = self.get_machine(app, id).await? else {
                return Err(not_healthy(app, id, "the machine does not exist"));
            };
            let Some(reason) = health_verdict(app, &machine)? else {
                return Ok(machine);
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(CloudError::DeadlinePassed {
                    what: format!(
                        "waiting for Fly machine {id} in app {app} to be healthy ({reason})"
                    ),
                });
            }
            tokio::time::sleep(pause.min(remaining)).await;
            pause = (pause * 2).min(cap);
        }
    }

    /// Takes a lease on the machine for `ttl` (whole seconds, at least 1).
    /// Not repeated after an ambiguous failure: a lease that was granted
    /// but whose answer was lost cannot be used without its nonce, and a
    /// second request would be refused until it lapses. A machine leased
    /// by someone else is refused (Fly docs: 409).
    pub async fn acquire_lease(
        &self,
        app: &str,
        id: &str,
        ttl: Duration,
        description: &str,
    ) -> Result<Lease, CloudError> {
        let body = json!({ "ttl": ttl.as_secs().max(1), "description": description });
        let request = ApiRequest::post(&["apps", app, "machines", id, "lease"]).json(&body);
        let answer: LeaseBody = self.http.send(request).await?.json()?;
        Ok(answer.into_lease())
    }

    /// Extends `lease` by `ttl` from now: the same call as taking it, with
    /// its nonce, as flyctl refreshes. Repeating it is harmless.
    pub async fn renew_lease(
        &self,
        app: &str,
        id: &str,
        lease: &Lease,
        ttl: Duration,
    ) -> Result<Lease, CloudError> {
        let body = json!({ "ttl": ttl.as_secs().max(1), "description": lease.description });
        let request = ApiRequest::post(&["apps", app, "machines", id, "lease"])
            .json(&body)
            .repeatable()
            .header(LEASE_NONCE_HEADER, lease.header()?);
        let answer: LeaseBody = self.http.send(request).await?.json()?;
        Ok(answer.into_lease())
    }

    /// Who holds a lease on the machine now (`Machines_show_lease`: 200
    /// with the lease, 404 when none is held), without its nonce.
    pub async fn show_lease(&self, app: &str, id: &str) -> Result<Option<LeaseHeld>, CloudError> {
        let request = ApiRequest::get(&["apps", app, "machines", id, "lease"]);
        match self.http.send(request).await {
            Ok(answer) => Ok(Some(answer.json::<LeaseHeldBody>()?.into_held())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease back. A 404 means no lease is held any more (it
    /// lapsed, or an earlier release landed): [`Removal::AlreadyGone`].
    pub async fn release_lease(
        &self,
        app: &str,
        id: &str,
        lease: &Lease,
    ) -> Result<Removal, CloudError> {
        let request = ApiRequest::delete(&["apps", app, "machines", id, "lease"])
            .header(LEASE_NONCE_HEADER, lease.header()?);
        match self.http.send(request).await {
            Ok(_) => Ok(Removal::Removed),
            Err(e) if e.is_not_found() => Ok(Removal::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// Creates app `name` in organization `org` (seeding and rehearsals), or
    /// adopts it when it already exists and this token can see it.
    pub async fn create_app(&self, name: &str, org: &str) -> Result<Created<()>, CloudError> {
        let body = json!({ "app_name": name, "org_slug": org });
        let post = || async {
            let request = ApiRequest::post(&["apps"]).json(&body);
            self.http.send(request).await.map(|_| ())
        };
        let lookup = || async {
            match self.http.send(ApiRequest::get(&["apps", name])).await {
                Ok(_) => Ok(Some(())),
                Err(e) if e.is_not_found() => Ok(None),
                Err(e) => Err(e),
            }
        };
        let conflict = |e: &CloudError| matches!(e.status(), Some(409 | 422));
        self.http
            .create_with_recovery(post, lookup, conflict, Duration::ZERO)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(config: Value) -> Machine {
        serde_json::from_value(json!({
            "id": "148e1234abcd56", "name": "web-1", "state": "started", "region": "ord",
            "instance_id": "01H", "host_status": "ok", "config": config
        }))
        .unwrap()
    }

    #[test]
    fn replacement_config_swaps_only_the_urls_and_drops_mounts_and_standbys() {
        let old = machine(json!({
            "image": "registry.fly.io/t:1",
            "env": {"DATABASE_URL": "postgresql://u:old@h/db", "REDIS_URL": "redis://old", "PORT": "8080"},
            "mounts": [{"volume": "vol_1", "path": "/data"}],
            "standbys": ["148e1234abcd56"],
            "metadata": {"fly_process_group": "app"},
            "services": [{"internal_port": 8080}],
            "some_future_field": {"x": 1}
        }));
        let new = old
            .replacement_config(
                &Secret::new("postgresql://u:new@h2/db"),
                Some(&Secret::new("redis://new")),
                "run7-org42",
                &[("replaces", "148e1234abcd56")],
            )
            .unwrap();
        let v = new.expose();
        assert_eq!(v["env"]["DATABASE_URL"], "postgresql://u:new@h2/db");
        assert_eq!(v["env"]["REDIS_URL"], "redis://new");
        assert_eq!(v["env"]["PORT"], "8080");
        assert!(v.get("mounts").is_none() && v.get("standbys").is_none());
        assert_eq!(v["metadata"]["fly_process_group"], "app");
        assert_eq!(v["metadata"][ITEM_TAG], "run7-org42");
        assert_eq!(v["metadata"]["replaces"], "148e1234abcd56");
        assert_eq!(v["services"], json!([{"internal_port": 8080}]));
        assert_eq!(v["some_future_field"], json!({"x": 1}));
    }

    #[test]
    fn redis_url_is_kept_when_no_new_one_is_given() {
        let old = machine(json!({"image": "i", "env": {"REDIS_URL": "redis://keep"}}));
        let new = old
            .replacement_config(&Secret::new("postgresql://n"), None, "t", &[])
            .unwrap();
        assert_eq!(new.expose()["env"]["REDIS_URL"], "redis://keep");
    }

    #[test]
    fn a_machine_on_an_unhealthy_host_is_not_copied() {
        let mut old = machine(json!({"image": "i"}));
        old.host_status = Some("unreachable".to_string());
        let err = old
            .replacement_config(&Secret::new("postgresql://n"), None, "t", &[])
            .unwrap_err();
        assert!(matches!(err, CloudError::UnsafeToCopy { .. }), "{err}");
    }

    #[test]
    fn machine_debug_output_hides_env_values() {
        let old =
            machine(json!({"image": "i", "env": {"DATABASE_URL": "postgresql://u:hunter2@h/db"}}));
        let shown = format!("{old:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
