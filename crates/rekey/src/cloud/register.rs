//! Registering tenants in the fake cloud (its
//! `POST /_fake/tenants`), so that rows and cloud resources name each other
//! exactly as they would in production: a seeded fleet's tenants, or the
//! resources a restored snapshot's rows name (`rekey register-fake-cloud`,
//! for rehearsals). Refuses any address outside loopback.

use serde_json::{json, Map, Value};

use crate::db::org_instances::TenantResources;
use crate::db::seed::SeedTenant;

/// Why a fleet could not be registered in (or a fake cloud not driven).
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    #[error("{0} is not a loopback address; tenants are registered only in a local fake cloud")]
    NotLoopback(String),
    #[error("fake cloud at {base}: {message}")]
    Fake { base: String, message: String },
}

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
pub async fn register_fake_tenants(
    base: &str,
    tenants: &[SeedTenant],
) -> Result<(), RegisterError> {
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
) -> Result<Registered, RegisterError> {
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

fn refuse_unless_loopback(base: &str) -> Result<(), RegisterError> {
    if is_loopback_url(base) {
        Ok(())
    } else {
        Err(RegisterError::NotLoopback(base.to_string()))
    }
}

/// One `POST /_fake/tenants`; the fake registers all of them or none, and
/// says which ones it refused and why (ids only, never secrets).
async fn post_tenants(
    client: &reqwest::Client,
    base: &str,
    specs: Vec<Value>,
) -> Result<(), RegisterError> {
    let url = format!("{}/_fake/tenants", base.trim_end_matches('/'));
    let response = client
        .post(&url)
        .json(&json!({ "tenants": specs }))
        .send()
        .await
        .map_err(|e| RegisterError::Fake {
            base: base.to_string(),
            message: e.without_url().to_string(),
        })?;
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
    Err(RegisterError::Fake {
        base: base.to_string(),
        message: format!(
            "refused the tenants: HTTP {status}{}{}",
            if shown.is_empty() { "" } else { ": " },
            shown.join("; ")
        ),
    })
}

/// Requests a fake cloud answered, by API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiRequests {
    pub neon: u64,
    pub fly: u64,
}

/// A `fake-cloud` process this tool started (fleet-bench measures the
/// re-provision path against one), killed when dropped. The product never
/// links the fake: it runs the binary built beside it and drives it over
/// HTTP, the way the scripts and rehearsals do.
pub struct FakeCloudProcess {
    child: tokio::process::Child,
    base: String,
    client: reqwest::Client,
}

impl FakeCloudProcess {
    /// Starts `bin` with `args` on an ephemeral loopback port and waits
    /// (at most 20 s) for the line that names its address.
    pub async fn spawn(bin: &std::path::Path, args: &[String]) -> Result<Self, RegisterError> {
        use tokio::io::AsyncBufReadExt;
        let failed = |message: String| RegisterError::Fake {
            base: bin.display().to_string(),
            message,
        };
        let mut child = tokio::process::Command::new(bin)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| {
                failed(format!(
                    "cannot start it ({e}); build it with `cargo build --release` \
                     (it is installed beside rekey) or name it with --fake-cloud-bin"
                ))
            })?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| failed("no stdout".into()))?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
            .await
            .map_err(|_| failed("did not say where it listens within 20 s".into()))?
            .map_err(|e| failed(format!("reading its stdout: {e}")))?
            .ok_or_else(|| failed("exited before saying where it listens".into()))?;
        let base = line
            .strip_prefix("listening on ")
            .ok_or_else(|| failed(format!("unexpected first line {line:?}")))?
            .trim()
            .to_string();
        refuse_unless_loopback(&base)?;
        Ok(FakeCloudProcess {
            child,
            base,
            client: reqwest::Client::new(),
        })
    }

    /// The root URL (`/_fake/...` lives under it).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Base URL of its Neon API.
    pub fn neon_url(&self) -> String {
        format!("{}/api/v2", self.base)
    }

    /// Base URL of its Fly Machines API.
    pub fn fly_url(&self) -> String {
        format!("{}/v1", self.base)
    }

    /// Changes its behaviour (`POST /_fake/config` with the fields to set).
    pub async fn configure(&self, patch: &Value) -> Result<(), RegisterError> {
        self.admin(
            self.client
                .post(format!("{}/_fake/config", self.base))
                .json(patch),
        )
        .await
        .map(drop)
    }

    /// The API requests it has answered so far, Neon's and Fly's, whatever
    /// their status.
    pub async fn requests_by_api(&self) -> Result<ApiRequests, RegisterError> {
        let state = self
            .admin(self.client.get(format!("{}/_fake/state", self.base)))
            .await?;
        let sum = |api: &str| -> u64 {
            state["requests"]["by_api"][api]
                .as_object()
                .map_or(0, |by_status| {
                    by_status.values().filter_map(Value::as_u64).sum()
                })
        };
        Ok(ApiRequests {
            neon: sum("neon"),
            fly: sum("fly"),
        })
    }

    async fn admin(&self, request: reqwest::RequestBuilder) -> Result<Value, RegisterError> {
        let failed = |message: String| RegisterError::Fake {
            base: self.base.clone(),
            message,
        };
        let response = request
            .send()
            .await
            .map_err(|e| failed(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(failed(format!("admin endpoint answered HTTP {status}")));
        }
        response
            .json::<Value>()
            .await
            .map_err(|e| failed(format!("unreadable answer: {}", e.without_url())))
    }

    /// Stops the process.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}
