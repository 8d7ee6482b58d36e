//! The Neon API v2 client: the branch, role, endpoint, connection-URI and
//! operation calls a re-provision makes (docs/cloud-apis.md, "Neon API v2"), over the
//! shared policy in `http.rs`.
//!
//! Mutations return operations that finish in the background;
//! [`NeonClient::wait_operations`] polls them, treating `failed` as "Neon is
//! retrying it" and only `error`/`cancelled` as the end. Creating a branch
//! is made idempotent by its deterministic name: a 409 or an ambiguous
//! failure is answered by looking the branch up, never by a blind second
//! POST. A password returned by a reset is decoded straight into a
//! [`Secret`], and so is every connection URI, fetched or built. The Fly
//! side lives in `fly.rs`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::time::Instant;

use super::http::{
    Api, ApiClient, ApiRequest, CloudError, CounterSnapshot, Counters, Created, HttpOptions,
};
use super::secret::Secret;

/// The page size asked for when listing branches.
const BRANCH_PAGE: &str = "100";

/// The page size asked for when listing a project's operations to poll
/// several at once: a process has one mutation in flight per project, so
/// its operations are among the most recent.
const OPERATION_PAGE: &str = "20";

/// Options of a [`NeonClient`]: the HTTP policy plus operation polling.
#[derive(Debug, Clone)]
pub struct NeonOptions {
    pub http: HttpOptions,
    /// Pause between two polls of the same pending operations. Neon's
    /// advice is 0.5-2 s; every poll spends rate-limit budget (docs/cloud-apis.md).
    pub poll_interval: Duration,
}

impl Default for NeonOptions {
    fn default() -> NeonOptions {
        NeonOptions {
            http: HttpOptions::neon_defaults(),
            poll_interval: Duration::from_millis(750),
        }
    }
}

/// A Neon branch. Only the fields the tool reads; unknown ones are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Branch {
    pub id: String,
    #[serde(default)]
    pub project_id: String,
    pub name: String,
    #[serde(default)]
    pub parent_id: Option<String>,
    /// `init` while being created, then `ready` (also `resetting`, `archived`).
    #[serde(default)]
    pub current_state: Option<String>,
    #[serde(default)]
    pub default: bool,
    #[serde(default)]
    pub protected: bool,
    #[serde(default)]
    pub created_at: Option<String>,
    /// The branch's annotation (`annotation_value` at creation), when the
    /// API returned it alongside the branch.
    #[serde(default, skip_deserializing)]
    pub annotations: BTreeMap<String, String>,
}

/// A Neon asynchronous operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: String,
    #[serde(default)]
    pub project_id: String,
    #[serde(default)]
    pub branch_id: Option<String>,
    #[serde(default)]
    pub endpoint_id: Option<String>,
    #[serde(default)]
    pub action: String,
    pub status: OperationStatus,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub failures_count: u32,
}

/// Where an operation stands (docs/cloud-apis.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationStatus {
    Scheduling,
    Running,
    Finished,
    /// Not terminal: Neon retries it and bumps `failures_count`.
    Failed,
    /// In the enum but undocumented; treated as a terminal failure.
    Error,
    Cancelling,
    Cancelled,
    Skipped,
    /// A status this tool does not know yet; waited on like `running`.
    #[serde(other)]
    Unknown,
}

impl OperationStatus {
    /// Done, and done well: what every operation must reach.
    pub fn is_success(self) -> bool {
        matches!(self, OperationStatus::Finished | OperationStatus::Skipped)
    }

    /// Ended without doing its work.
    pub fn is_fatal(self) -> bool {
        matches!(self, OperationStatus::Error | OperationStatus::Cancelled)
    }

    fn as_str(self) -> &'static str {
        match self {
            OperationStatus::Scheduling => "scheduling",
            OperationStatus::Running => "running",
            OperationStatus::Finished => "finished",
            OperationStatus::Failed => "failed",
            OperationStatus::Error => "error",
            OperationStatus::Cancelling => "cancelling",
            OperationStatus::Cancelled => "cancelled",
            OperationStatus::Skipped => "skipped",
            OperationStatus::Unknown => "unknown",
        }
    }
}

/// A compute endpoint (what clients connect to).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub id: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub branch_id: String,
    #[serde(default)]
    pub project_id: String,
    /// `read_write` or `read_only`.
    #[serde(rename = "type", default)]
    pub endpoint_type: String,
    #[serde(default)]
    pub current_state: Option<String>,
    #[serde(default)]
    pub disabled: bool,
}

/// A Postgres role on a branch. The password is deliberately not decoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    #[serde(default)]
    pub branch_id: String,
    #[serde(default)]
    pub protected: bool,
}

/// A database on a branch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Database {
    pub id: i64,
    pub name: String,
    #[serde(default)]
    pub branch_id: String,
    #[serde(default)]
    pub owner_name: String,
}

/// A Neon project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub region_id: Option<String>,
}

/// What creating a project returns: the project, its default branch with
/// its role, database and endpoint, and the operations to wait for.
#[derive(Debug, Clone)]
pub struct CreatedProject {
    pub project: Project,
    pub branch: Branch,
    pub roles: Vec<Role>,
    pub databases: Vec<Database>,
    pub endpoints: Vec<Endpoint>,
    pub operations: Vec<Operation>,
}

/// A branch [`NeonClient::create_branch`] made or adopted. A branch this
/// call created comes with what the 201 response (`CreatedBranch`) holds
/// beside it: its endpoints, and its roles and databases (copied from the
/// parent). An adopted one has none of them (nor operations): the caller
/// lists what it needs.
#[derive(Debug, Clone)]
pub struct NewBranch {
    pub branch: Branch,
    pub operations: Vec<Operation>,
    pub endpoints: Vec<Endpoint>,
    pub roles: Vec<Role>,
    pub databases: Vec<Database>,
}

/// What a password reset returns: the operations to wait for, and the new
/// password (when the response carried one), valid once they finish.
#[derive(Debug)]
pub struct PasswordReset {
    pub operations: Vec<Operation>,
    pub password: Option<Secret>,
}

#[derive(Deserialize)]
struct BranchBody {
    branch: Branch,
    #[serde(default)]
    annotation: Option<Value>,
}

#[derive(Deserialize)]
struct BranchPage {
    #[serde(default)]
    branches: Vec<Branch>,
    #[serde(default)]
    annotations: BTreeMap<String, Value>,
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    next: Option<String>,
}

#[derive(Deserialize)]
struct CreatedBranchBody {
    branch: Branch,
    #[serde(default)]
    operations: Vec<Operation>,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    roles: Vec<Role>,
    #[serde(default)]
    databases: Vec<Database>,
}

/// What a password reset returns (`RoleOperations`): the role with its new
/// password, and the operations after which that password works.
#[derive(Deserialize)]
struct ResetBody {
    #[serde(default)]
    role: Option<ResetRole>,
    #[serde(default)]
    operations: Vec<Operation>,
}

#[derive(Deserialize)]
struct ResetRole {
    #[serde(default)]
    password: Option<Secret>,
}

#[derive(Deserialize)]
struct OperationsBody {
    #[serde(default)]
    operations: Vec<Operation>,
}

#[derive(Deserialize)]
struct OperationBody {
    operation: Operation,
}

#[derive(Deserialize)]
struct RolesBody {
    #[serde(default)]
    roles: Vec<Role>,
}

#[derive(Deserialize)]
struct DatabasesBody {
    #[serde(default)]
    databases: Vec<Database>,
}

#[derive(Deserialize)]
struct EndpointsBody {
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct UriBody {
    uri: Secret,
}

#[derive(Deserialize)]
struct CreatedProjectBody {
    project: Project,
    branch: Branch,
    #[serde(default)]
    roles: Vec<Role>,
    #[serde(default)]
    databases: Vec<Database>,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
    #[serde(default)]
    operations: Vec<Operation>,
}

/// The Neon API v2 client.
pub struct NeonClient {
    http: ApiClient,
    poll_interval: Duration,
    /// When to send the first poll of a wait, learned from earlier waits.
    first_poll: FirstPoll,
}

/// How long after a mutation its operations are first polled, learned
/// from the waits so far: a poll sent before the operations can have
/// finished only spends rate-limit budget (one call in every two, for
/// operations that take 1 s polled every 0.75 s). It starts at the poll
/// interval. A wait that needed more than one poll moves it up to the time
/// the operations were seen finished; a wait that needed only one moves it
/// down by 5%, so that it follows the operations' duration down again.
/// Between `poll_interval / 4` and 30 s.
#[derive(Debug)]
struct FirstPoll {
    micros: AtomicU64,
    floor: Duration,
}

impl FirstPoll {
    const CEILING: Duration = Duration::from_secs(30);

    fn new(poll_interval: Duration) -> FirstPoll {
        FirstPoll {
            micros: AtomicU64::new(poll_interval.as_micros().try_into().unwrap_or(u64::MAX)),
            floor: poll_interval / 4,
        }
    }

    fn get(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    /// Learns from a wait whose operations were seen finished `took` after
    /// it began, at its `polls`-th poll.
    fn learn(&self, took: Duration, polls: u32) {
        let next = if polls <= 1 {
            self.get().mul_f64(0.95)
        } else {
            took
        };
        let next = next.clamp(self.floor, Self::CEILING);
        self.micros.store(
            next.as_micros().try_into().unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

impl NeonClient {
    /// A client for the API at `base_url` (`https://console.neon.tech/api/v2`
    /// in production, the fake cloud's address in tests).
    pub fn new(
        base_url: &str,
        api_key: Secret,
        options: NeonOptions,
    ) -> Result<NeonClient, CloudError> {
        Ok(NeonClient {
            http: ApiClient::new(Api::Neon, base_url, &api_key, options.http)?,
            poll_interval: options.poll_interval,
            first_poll: FirstPoll::new(options.poll_interval),
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

    /// The branch, or `None` when Neon says it does not exist.
    pub async fn get_branch(
        &self,
        project: &str,
        branch: &str,
    ) -> Result<Option<Branch>, CloudError> {
        let request = ApiRequest::get(&["projects", project, "branches", branch]);
        match self.http.send(request).await {
            Ok(response) => {
                let body: BranchBody = response.json()?;
                let mut branch = body.branch;
                branch.annotations = annotation_values(body.annotation.as_ref());
                Ok(Some(branch))
            }
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every branch of the project, with its annotation, across pages.
    pub async fn list_branches(&self, project: &str) -> Result<Vec<Branch>, CloudError> {
        let mut all = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut request =
                ApiRequest::get(&["projects", project, "branches"]).query("limit", BRANCH_PAGE);
            if let Some(c) = &cursor {
                request = request.query("cursor", c.clone());
            }
            let page: BranchPage = self.http.send(request).await?.json()?;
            let empty = page.branches.is_empty();
            for mut branch in page.branches {
                branch.annotations = annotation_values(page.annotations.get(&branch.id));
                all.push(branch);
            }
            let next = page
                .pagination
                .and_then(|p| p.next)
                .filter(|n| !n.is_empty());
            // As in `find_branch_by_name`: an empty page or a cursor that
            // does not move ends the walk.
            match next {
                Some(n) if !empty && cursor.as_deref() != Some(n.as_str()) => cursor = Some(n),
                _ => return Ok(all),
            }
        }
    }

    /// The branch named exactly `name`. Neon's `search` also matches
    /// substrings and ids, so the exact match is made here, across pages.
    pub async fn find_branch_by_name(
        &self,
        project: &str,
        name: &str,
    ) -> Result<Option<Branch>, CloudError> {
        let mut cursor: Option<String> = None;
        loop {
            let mut request = ApiRequest::get(&["projects", project, "branches"])
                .query("search", name)
                .query("limit", BRANCH_PAGE);
            if let Some(c) = &cursor {
                request = request.query("cursor", c.clone());
            }
            let mut page: BranchPage = self.http.send(request).await?.json()?;
            if let Some(index) = page.branches.iter().position(|b| b.name == name) {
                let mut branch = page.branches.swap_remove(index);
                branch.annotations = annotation_values(page.annotations.get(&branch.id));
                return Ok(Some(branch));
            }
            let next = page
                .pagination
                .and_then(|p| p.next)
                .filter(|n| !n.is_empty());
            // An empty page or a cursor that does not move ends the walk,
            // whatever the server says about a next page.
            match next {
                Some(n) if !page.branches.is_empty() && cursor.as_deref() != Some(n.as_str()) => {
                    cursor = Some(n);
                }
                _ => return Ok(None),
            }
        }
    }

    /// Creates branch `name` from `parent_id` (data kept) with one
    /// read-write endpoint, or adopts it when an earlier attempt already
    /// made it. An adopted branch comes back with no operations: whatever
    /// is still running on it shows up as 423s, which the policy waits out.
    /// A branch of that name with another parent is never adopted.
    pub async fn create_branch(
        &self,
        project: &str,
        parent_id: &str,
        name: &str,
        annotations: &BTreeMap<String, String>,
    ) -> Result<Created<NewBranch>, CloudError> {
        let body = json!({
            "branch": { "parent_id": parent_id, "name": name },
            "endpoints": [ { "type": "read_write" } ],
            "annotation_value": annotations,
        });
        let post = || async {
            let request = ApiRequest::post(&["projects", project, "branches"]).json(&body);
            let created: CreatedBranchBody = self.http.send(request).await?.json()?;
            let mut branch = created.branch;
            branch.annotations = annotations.clone();
            Ok(NewBranch {
                branch,
                operations: created.operations,
                endpoints: created.endpoints,
                roles: created.roles,
                databases: created.databases,
            })
        };
        let lookup = || async {
            let Some(branch) = self.find_branch_by_name(project, name).await? else {
                return Ok(None);
            };
            if branch.parent_id.as_deref() != Some(parent_id) {
                return Err(CloudError::Conflict {
                    api: Api::Neon,
                    what: format!(
                        "project {project} already has a branch named {name:?} ({}) whose parent is {}, not {parent_id}",
                        branch.id,
                        branch.parent_id.as_deref().unwrap_or("(none)"),
                    ),
                });
            }
            Ok(Some(NewBranch {
                branch,
                operations: Vec::new(),
                endpoints: Vec::new(),
                roles: Vec::new(),
                databases: Vec::new(),
            }))
        };
        let conflict = |e: &CloudError| e.status() == Some(409);
        self.http
            .create_with_recovery(post, lookup, conflict, Duration::ZERO)
            .await
    }

    pub async fn list_roles(&self, project: &str, branch: &str) -> Result<Vec<Role>, CloudError> {
        let request = ApiRequest::get(&["projects", project, "branches", branch, "roles"]);
        let body: RolesBody = self.http.send(request).await?.json()?;
        Ok(body.roles)
    }

    pub async fn list_databases(
        &self,
        project: &str,
        branch: &str,
    ) -> Result<Vec<Database>, CloudError> {
        let request = ApiRequest::get(&["projects", project, "branches", branch, "databases"]);
        let body: DatabasesBody = self.http.send(request).await?.json()?;
        Ok(body.databases)
    }

    /// Gives `role` a new password on this branch only. The new password
    /// comes back in the response, decoded straight into a [`Secret`]; it
    /// becomes valid when the returned operations finish. A repeated reset
    /// is harmless, so it is retried like a GET.
    pub async fn reset_password(
        &self,
        project: &str,
        branch: &str,
        role: &str,
    ) -> Result<PasswordReset, CloudError> {
        let request = ApiRequest::post(&[
            "projects",
            project,
            "branches",
            branch,
            "roles",
            role,
            "reset_password",
        ])
        .repeatable();
        let body: ResetBody = self.http.send(request).await?.json()?;
        Ok(PasswordReset {
            operations: body.operations,
            password: body.role.and_then(|r| r.password).filter(|p| !p.is_empty()),
        })
    }

    /// The `postgresql://` URI for `role` on `database` of `branch`, with the
    /// stored password; `pooled` gives the `-pooler` host.
    pub async fn connection_uri(
        &self,
        project: &str,
        branch: &str,
        database: &str,
        role: &str,
        pooled: bool,
    ) -> Result<Secret, CloudError> {
        let request = ApiRequest::get(&["projects", project, "connection_uri"])
            .query("branch_id", branch)
            .query("database_name", database)
            .query("role_name", role)
            .query("pooled", pooled.to_string());
        let body: UriBody = self.http.send(request).await?.json()?;
        Ok(body.uri)
    }

    pub async fn list_branch_endpoints(
        &self,
        project: &str,
        branch: &str,
    ) -> Result<Vec<Endpoint>, CloudError> {
        let request = ApiRequest::get(&["projects", project, "branches", branch, "endpoints"]);
        let body: EndpointsBody = self.http.send(request).await?.json()?;
        Ok(body.endpoints)
    }

    /// Deletes a compute endpoint; an endpoint already gone gives no operations.
    pub async fn delete_endpoint(
        &self,
        project: &str,
        endpoint: &str,
    ) -> Result<Vec<Operation>, CloudError> {
        let request = ApiRequest::delete(&["projects", project, "endpoints", endpoint]);
        self.delete(request).await
    }

    /// Deletes a branch; Neon answers 204 for a branch already gone, and a
    /// 404 is taken the same way. Neon refuses branches that have children.
    pub async fn delete_branch(
        &self,
        project: &str,
        branch: &str,
    ) -> Result<Vec<Operation>, CloudError> {
        let request = ApiRequest::delete(&["projects", project, "branches", branch]);
        self.delete(request).await
    }

    async fn delete(&self, request: ApiRequest) -> Result<Vec<Operation>, CloudError> {
        match self.http.send(request).await {
            Ok(response) if response.status() == reqwest::StatusCode::NO_CONTENT => Ok(Vec::new()),
            Ok(response) => Ok(response.json::<OperationsBody>()?.operations),
            Err(e) if e.is_not_found() => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    pub async fn get_operation(&self, project: &str, id: &str) -> Result<Operation, CloudError> {
        let request = ApiRequest::get(&["projects", project, "operations", id]);
        let body: OperationBody = self.http.send(request).await?.json()?;
        Ok(body.operation)
    }

    /// Polls `operations` until every one is `finished` or `skipped`.
    /// `failed` is waited on (Neon retries it); `error` or `cancelled` ends
    /// the wait with [`CloudError::OperationFailed`]; passing `deadline`
    /// ends it with [`CloudError::DeadlinePassed`]. The first poll goes out
    /// after the learned [`FirstPoll`] delay, later ones every poll interval.
    pub async fn wait_operations(
        &self,
        project: &str,
        operations: &[Operation],
        deadline: Instant,
    ) -> Result<(), CloudError> {
        let mut pending: Vec<Operation> = operations
            .iter()
            .filter(|op| !op.status.is_success())
            .cloned()
            .collect();
        let began = Instant::now();
        let mut polls = 0u32;
        loop {
            if let Some(op) = pending.iter().find(|op| op.status.is_fatal()) {
                return Err(operation_failed(project, op));
            }
            if pending.is_empty() {
                if polls > 0 {
                    self.first_poll.learn(began.elapsed(), polls);
                }
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CloudError::DeadlinePassed {
                    what: describe_pending(project, &pending),
                });
            }
            let pause = if polls == 0 {
                self.first_poll.get()
            } else {
                self.poll_interval
            };
            tokio::time::sleep(pause.min(deadline - now)).await;
            polls += 1;
            pending = self.poll(project, pending).await?;
        }
    }

    /// The operations of `pending` that are not done yet, as they stand
    /// now. Several are read with one listing of the project's recent
    /// operations (`listProjectOperations`) rather than one GET each; any
    /// the listing does not show (its order is not documented) is read on
    /// its own.
    async fn poll(
        &self,
        project: &str,
        pending: Vec<Operation>,
    ) -> Result<Vec<Operation>, CloudError> {
        let mut listed: BTreeMap<String, Operation> = BTreeMap::new();
        if pending.len() > 1 {
            let request = ApiRequest::get(&["projects", project, "operations"])
                .query("limit", OPERATION_PAGE);
            let body: OperationsBody = self.http.send(request).await?.json()?;
            listed = body
                .operations
                .into_iter()
                .map(|op| (op.id.clone(), op))
                .collect();
        }
        let mut still = Vec::with_capacity(pending.len());
        for op in pending {
            let fresh = match listed.remove(&op.id) {
                Some(fresh) => fresh,
                None => self.get_operation(project, &op.id).await?,
            };
            if !fresh.status.is_success() {
                still.push(fresh);
            }
        }
        Ok(still)
    }

    /// Creates a project (seeding and rehearsals only). Not idempotent:
    /// Neon does not make project names unique, so an ambiguous failure is
    /// returned as is for the caller to check by listing.
    pub async fn create_project(&self, name: &str) -> Result<CreatedProject, CloudError> {
        let request = ApiRequest::new(Method::POST, &["projects"])
            .json(&json!({ "project": { "name": name } }));
        let body: CreatedProjectBody = self.http.send(request).await?.json()?;
        Ok(CreatedProject {
            project: body.project,
            branch: body.branch,
            roles: body.roles,
            databases: body.databases,
            endpoints: body.endpoints,
            operations: body.operations,
        })
    }
}

/// The string pairs of an annotation object's `value`, if it has any.
fn annotation_values(annotation: Option<&Value>) -> BTreeMap<String, String> {
    annotation
        .and_then(|a| a.get("value"))
        .and_then(Value::as_object)
        .map(|value| {
            value
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// The connection URI Neon documents for a role on a branch's compute,
/// `postgresql://role:password@host/database?sslmode=require` (the shape
/// `getConnectionURI` returns), built from parts rekey already holds so
/// that no call is spent on it. User name and password are percent-encoded.
pub fn build_connection_uri(role: &str, password: &Secret, host: &str, database: &str) -> Secret {
    if let Ok(mut uri) = url::Url::parse(&format!("postgresql://{host}/")) {
        if uri.set_username(role).is_ok() && uri.set_password(Some(password.expose())).is_ok() {
            uri.set_path(database);
            uri.set_query(Some("sslmode=require"));
            return Secret::new(String::from(uri));
        }
    }
    // Only for a host that is not one (never a Neon endpoint's).
    Secret::new(format!(
        "postgresql://{role}:{}@{host}/{database}?sslmode=require",
        password.expose()
    ))
}

fn operation_failed(project: &str, op: &Operation) -> CloudError {
    CloudError::OperationFailed {
        project: project.to_string(),
        operation_id: op.id.clone(),
        action: op.action.clone(),
        status: op.status.as_str().to_string(),
        error: op.error.clone(),
    }
}

fn describe_pending(project: &str, pending: &[Operation]) -> String {
    let ops: Vec<String> = pending
        .iter()
        .map(|op| format!("{} {} {}", op.action, op.id, op.status.as_str()))
        .collect();
    format!(
        "waiting for {} Neon operation(s) in project {project} ({})",
        pending.len(),
        ops.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_operation_statuses_decode_and_are_waited_on() {
        let op: Operation =
            serde_json::from_str(r#"{"id":"u","action":"x","status":"paused"}"#).unwrap();
        assert_eq!(op.status, OperationStatus::Unknown);
        assert!(!op.status.is_success() && !op.status.is_fatal());
    }

    #[test]
    fn failed_is_not_terminal_but_error_and_cancelled_are() {
        assert!(!OperationStatus::Failed.is_success() && !OperationStatus::Failed.is_fatal());
        assert!(OperationStatus::Error.is_fatal());
        assert!(OperationStatus::Cancelled.is_fatal());
        assert!(OperationStatus::Skipped.is_success());
    }

    #[test]
    fn the_first_poll_follows_how_long_operations_take() {
        let first = FirstPoll::new(Duration::from_millis(750));
        assert_eq!(first.get(), Duration::from_millis(750));
        // Operations of 1 s polled at 0.75 s: finished at the second poll.
        first.learn(Duration::from_millis(1500), 2);
        assert_eq!(first.get(), Duration::from_millis(1500));
        // Each wait done at its first poll pulls it 5% closer.
        first.learn(Duration::from_millis(1500), 1);
        assert_eq!(first.get(), Duration::from_millis(1425));
        for _ in 0..200 {
            first.learn(Duration::ZERO, 1);
        }
        assert_eq!(
            first.get(),
            Duration::from_micros(187_500),
            "floor: a quarter interval"
        );
        first.learn(Duration::from_secs(600), 3);
        assert_eq!(first.get(), FirstPoll::CEILING);
    }

    #[test]
    fn a_built_connection_uri_has_the_documented_shape_and_escapes_credentials() {
        let uri = build_connection_uri(
            "neondb_owner",
            &Secret::new("npg_abc"),
            "ep-x-1.aws.neon.tech",
            "neondb",
        );
        assert_eq!(
            uri.expose(),
            "postgresql://neondb_owner:npg_abc@ep-x-1.aws.neon.tech/neondb?sslmode=require"
        );
        let uri = build_connection_uri("a@b", &Secret::new("p/w:d"), "h.example", "db");
        assert_eq!(
            uri.expose(),
            "postgresql://a%40b:p%2Fw%3Ad@h.example/db?sslmode=require"
        );
    }

    #[test]
    fn annotation_values_are_read_from_the_value_object() {
        let a = json!({"object": {"type": "console/branch", "id": "br-1"}, "value": {"run": "7"}});
        let values = annotation_values(Some(&a));
        assert_eq!(values.get("run").map(String::as_str), Some("7"));
        assert!(annotation_values(None).is_empty());
    }
}
