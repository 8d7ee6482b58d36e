//! The Neon side of the fake's state, and Neon's rules over it: projects,
//! their branches (with roles, passwords, databases and annotations),
//! compute endpoints, and the asynchronous operations every mutation
//! schedules.
//!
//! Time is evaluated lazily: an operation stores when it starts and
//! finishes, and its status, a branch's `current_state`, an endpoint's
//! `current_state` and which password a role answers to are all derived
//! from the instant a request looks at them. Nothing runs in the background.
//!
//! Request bodies live in `requests`, rendering to the API's JSON shapes in
//! `render`, HTTP in `mod.rs`.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tokio::time::Instant;

use crate::http::{NeonError, Now};
use crate::ids::Ids;
use crate::neon::requests::{CreateBranch, EndpointPatch, NewEndpointSpec, ProjectSpec};

/// Region for projects that do not name one.
pub(crate) const DEFAULT_REGION: &str = "aws-us-east-2";

/// Every Neon project the fake holds, by id.
#[derive(Default)]
pub(crate) struct Neon {
    pub(crate) projects: BTreeMap<String, Project>,
}

pub(crate) struct Project {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) region_id: String,
    pub(crate) pg_version: u32,
    pub(crate) store_passwords: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) default_branch: String,
    pub(crate) branches: BTreeMap<String, Branch>,
    pub(crate) endpoints: BTreeMap<String, Endpoint>,
    /// Oldest first.
    pub(crate) operations: Vec<Operation>,
    /// Until this instant the project has an operation not yet finished.
    busy_until: Instant,
    next_database_id: u64,
    /// Orders branches created within the same clock tick.
    next_seq: u64,
}

pub(crate) struct Branch {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) parent_id: Option<String>,
    pub(crate) default: bool,
    pub(crate) protected: bool,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
    pub(crate) created_seq: u64,
    pub(crate) updated_seq: u64,
    /// `init` until then, `ready` after.
    pub(crate) ready_at: Instant,
    pub(crate) roles: BTreeMap<String, Role>,
    pub(crate) databases: BTreeMap<String, Database>,
    pub(crate) annotation: BTreeMap<String, String>,
}

pub(crate) struct Role {
    pub(crate) name: String,
    password: String,
    /// A reset's new password, and when its operations finish.
    pending: Option<(String, Instant)>,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

pub(crate) struct Database {
    pub(crate) id: u64,
    pub(crate) name: String,
    pub(crate) owner_name: String,
    pub(crate) created_at: DateTime<Utc>,
}

pub(crate) struct Endpoint {
    pub(crate) id: String,
    pub(crate) branch_id: String,
    pub(crate) kind: EndpointType,
    pub(crate) host: String,
    pub(crate) disabled: bool,
    /// `init` until then, `active` after (`idle` when disabled).
    pub(crate) active_at: Instant,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) updated_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum EndpointType {
    ReadWrite,
    ReadOnly,
}

impl EndpointType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EndpointType::ReadWrite => "read_write",
            EndpointType::ReadOnly => "read_only",
        }
    }
}

pub(crate) struct Operation {
    pub(crate) id: String,
    pub(crate) branch_id: Option<String>,
    pub(crate) endpoint_id: Option<String>,
    pub(crate) action: &'static str,
    pub(crate) created_at: DateTime<Utc>,
    pub(crate) scheduled_at: Instant,
    pub(crate) starts_at: Instant,
    pub(crate) finishes_at: Instant,
}

impl Operation {
    pub(crate) fn status(&self, now: Instant) -> &'static str {
        if now >= self.finishes_at {
            "finished"
        } else if now >= self.starts_at {
            "running"
        } else {
            "scheduling"
        }
    }
}

impl Role {
    fn new(name: &str, password: String, now: &Now) -> Role {
        Role {
            name: name.to_owned(),
            password,
            pending: None,
            created_at: now.wall,
            updated_at: now.wall,
        }
    }

    /// The password the role answers to at `now`: a reset's new password
    /// only once the reset's operations have finished.
    pub(crate) fn password(&self, now: Instant) -> &str {
        match &self.pending {
            Some((new, effective_at)) if now >= *effective_at => new,
            _ => &self.password,
        }
    }

    /// The reset password not yet in effect, if any.
    pub(crate) fn pending_password(&self, now: Instant) -> Option<&str> {
        match &self.pending {
            Some((new, effective_at)) if now < *effective_at => Some(new),
            _ => None,
        }
    }

    fn settle(&mut self, now: Instant) {
        if let Some((new, effective_at)) = self.pending.take() {
            if now >= effective_at {
                self.password = new;
            } else {
                self.pending = Some((new, effective_at));
            }
        }
    }
}

impl Branch {
    pub(crate) fn current_state(&self, now: Instant) -> &'static str {
        if now >= self.ready_at {
            "ready"
        } else {
            "init"
        }
    }
}

impl Endpoint {
    pub(crate) fn current_state(&self, now: Instant) -> &'static str {
        if now < self.active_at {
            "init"
        } else if self.disabled {
            "idle"
        } else {
            "active"
        }
    }

    /// The host with `-pooler` after the endpoint id, as `pooled=true` asks.
    pub(crate) fn pooler_host(&self) -> String {
        self.host
            .replacen(&self.id, &format!("{}-pooler", self.id), 1)
    }
}

/// What a mutation asks the control plane to do, one operation each.
struct Step {
    action: &'static str,
    branch_id: Option<String>,
    endpoint_id: Option<String>,
}

fn step(action: &'static str, branch_id: &str, endpoint_id: Option<&str>) -> Step {
    Step {
        action,
        branch_id: Some(branch_id.to_owned()),
        endpoint_id: endpoint_id.map(str::to_owned),
    }
}

/// What a create-branch call made, for the response.
pub(crate) struct CreatedBranch {
    pub(crate) branch_id: String,
    pub(crate) endpoint_ids: Vec<String>,
    pub(crate) operations: Vec<usize>,
    /// Whether the response may carry `connection_uris` (the parent had
    /// exactly one role and one database).
    pub(crate) offer_uris: bool,
}

/// A tenant as `POST /_fake/tenants` registers it: one branch with one
/// role, one database and one read-write endpoint, under exact ids.
pub(crate) struct TenantBranch<'a> {
    pub(crate) project_id: &'a str,
    pub(crate) branch_id: &'a str,
    pub(crate) role: &'a str,
    pub(crate) database: &'a str,
    pub(crate) password: &'a str,
    /// The endpoint's exact id, or `None` to generate one.
    pub(crate) endpoint_id: Option<&'a str>,
    pub(crate) region_id: &'a str,
}

impl Neon {
    pub(crate) fn project(&self, id: &str) -> Result<&Project, NeonError> {
        self.projects
            .get(id)
            .ok_or_else(|| NeonError::not_found("project not found"))
    }

    pub(crate) fn project_mut(&mut self, id: &str) -> Result<&mut Project, NeonError> {
        self.projects
            .get_mut(id)
            .ok_or_else(|| NeonError::not_found("project not found"))
    }

    /// `POST /projects`: a project with a default branch, its owner role
    /// (fresh password), database and read-write endpoint.
    pub(crate) fn create_project(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        op_duration: Duration,
        spec: ProjectSpec,
    ) -> Result<(String, CreatedBranch), NeonError> {
        let id = ids.project();
        let region_id = spec.region_id.unwrap_or_else(|| DEFAULT_REGION.to_owned());
        let branch_name = spec.branch.name.unwrap_or_else(|| "main".to_owned());
        let role = spec
            .branch
            .role_name
            .unwrap_or_else(|| "neondb_owner".to_owned());
        let database = spec
            .branch
            .database_name
            .unwrap_or_else(|| "neondb".to_owned());
        check_name(&branch_name)?;
        let branch_id = ids.branch();
        let password = ids.password();
        let endpoint_id = ids.endpoint();
        let mut project = Project::new(&id, spec.name.as_deref(), &region_id, &branch_id, now);
        project.pg_version = spec.pg_version.unwrap_or(17);
        project.store_passwords = spec.store_passwords.unwrap_or(true);
        let done = now.at + op_duration;
        let mut branch = project.new_branch(&branch_id, &branch_name, None, now, done);
        branch.default = true;
        branch
            .roles
            .insert(role.clone(), Role::new(&role, password, now));
        let db = project.new_database(&database, &role, now);
        branch.databases.insert(database, db);
        project.branches.insert(branch_id.clone(), branch);
        project.add_endpoint(&endpoint_id, &branch_id, EndpointType::ReadWrite, now, done);
        let operations = project.schedule(
            ids,
            now,
            op_duration,
            vec![
                step("create_timeline", &branch_id, None),
                step("start_compute", &branch_id, Some(&endpoint_id)),
            ],
        );
        self.projects.insert(id.clone(), project);
        let created = CreatedBranch {
            branch_id,
            endpoint_ids: vec![endpoint_id],
            operations,
            offer_uris: true,
        };
        Ok((id, created))
    }

    /// `POST /_fake/tenants`, one tenant: the first branch of a project
    /// becomes its default branch; later ones are children of the default.
    /// Nothing is scheduled: the tenant exists, settled, at once. The
    /// caller has checked that the ids are free; returns the endpoint id.
    pub(crate) fn register(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        tenant: &TenantBranch<'_>,
    ) -> String {
        ids.claim(tenant.branch_id);
        ids.claim(tenant.project_id);
        let project = self
            .projects
            .entry(tenant.project_id.to_owned())
            .or_insert_with(|| {
                Project::new(
                    tenant.project_id,
                    None,
                    tenant.region_id,
                    tenant.branch_id,
                    now,
                )
            });
        let is_first = project.branches.is_empty();
        let parent = (!is_first).then(|| project.default_branch.clone());
        let name = if is_first { "main" } else { tenant.branch_id };
        let mut branch = project.new_branch(tenant.branch_id, name, parent, now, now.at);
        branch.default = is_first;
        branch.roles.insert(
            tenant.role.to_owned(),
            Role::new(tenant.role, tenant.password.to_owned(), now),
        );
        let db = project.new_database(tenant.database, tenant.role, now);
        branch.databases.insert(tenant.database.to_owned(), db);
        project.branches.insert(tenant.branch_id.to_owned(), branch);
        let endpoint_id = match tenant.endpoint_id {
            Some(id) => {
                ids.claim(id);
                id.to_owned()
            }
            None => ids.endpoint(),
        };
        project.add_endpoint(
            &endpoint_id,
            tenant.branch_id,
            EndpointType::ReadWrite,
            now,
            now.at,
        );
        endpoint_id
    }
}

impl Project {
    fn new(
        id: &str,
        name: Option<&str>,
        region_id: &str,
        default_branch: &str,
        now: &Now,
    ) -> Project {
        Project {
            id: id.to_owned(),
            name: name.unwrap_or(id).to_owned(),
            region_id: region_id.to_owned(),
            pg_version: 17,
            store_passwords: true,
            created_at: now.wall,
            default_branch: default_branch.to_owned(),
            branches: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            operations: Vec::new(),
            busy_until: now.at,
            next_database_id: 1,
            next_seq: 0,
        }
    }

    fn new_branch(
        &mut self,
        id: &str,
        name: &str,
        parent_id: Option<String>,
        now: &Now,
        ready_at: Instant,
    ) -> Branch {
        self.next_seq += 1;
        Branch {
            id: id.to_owned(),
            name: name.to_owned(),
            parent_id,
            default: false,
            protected: false,
            created_at: now.wall,
            updated_at: now.wall,
            created_seq: self.next_seq,
            updated_seq: self.next_seq,
            ready_at,
            roles: BTreeMap::new(),
            databases: BTreeMap::new(),
            annotation: BTreeMap::new(),
        }
    }

    fn new_database(&mut self, name: &str, owner: &str, now: &Now) -> Database {
        let id = self.next_database_id;
        self.next_database_id += 1;
        Database {
            id,
            name: name.to_owned(),
            owner_name: owner.to_owned(),
            created_at: now.wall,
        }
    }

    fn add_endpoint(
        &mut self,
        id: &str,
        branch_id: &str,
        kind: EndpointType,
        now: &Now,
        active_at: Instant,
    ) {
        let region = self
            .region_id
            .strip_prefix("aws-")
            .unwrap_or(&self.region_id);
        let endpoint = Endpoint {
            id: id.to_owned(),
            branch_id: branch_id.to_owned(),
            kind,
            host: format!("{id}.{region}.aws.neon.tech"),
            disabled: false,
            active_at,
            created_at: now.wall,
            updated_at: now.wall,
        };
        self.endpoints.insert(id.to_owned(), endpoint);
    }

    /// Schedule one operation per step, back to back, the whole batch
    /// finishing `duration` from now; the project is busy until then.
    fn schedule(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        duration: Duration,
        steps: Vec<Step>,
    ) -> Vec<usize> {
        let slot = duration / u32::try_from(steps.len().max(1)).unwrap_or(u32::MAX);
        let mut indices = Vec::with_capacity(steps.len());
        let mut starts_at = now.at;
        for step in steps {
            let finishes_at = starts_at + slot;
            indices.push(self.operations.len());
            self.operations.push(Operation {
                id: ids.uuid(),
                branch_id: step.branch_id,
                endpoint_id: step.endpoint_id,
                action: step.action,
                created_at: now.wall,
                scheduled_at: now.at,
                starts_at,
                finishes_at,
            });
            starts_at = finishes_at;
        }
        self.busy_until = self.busy_until.max(starts_at);
        indices
    }

    /// Neon refuses new mutations while any operation is in flight.
    pub(crate) fn check_unlocked(&self, now: &Now) -> Result<(), NeonError> {
        if now.at < self.busy_until {
            Err(NeonError::locked())
        } else {
            Ok(())
        }
    }

    pub(crate) fn is_busy(&self, now: Instant) -> bool {
        now < self.busy_until
    }

    pub(crate) fn branch(&self, id: &str) -> Result<&Branch, NeonError> {
        self.branches
            .get(id)
            .ok_or_else(|| NeonError::not_found("branch not found"))
    }

    fn branch_mut(&mut self, id: &str) -> Result<&mut Branch, NeonError> {
        self.branches
            .get_mut(id)
            .ok_or_else(|| NeonError::not_found("branch not found"))
    }

    /// The branch's read-write endpoint, if it has one.
    pub(crate) fn read_write_endpoint(&self, branch_id: &str) -> Option<&Endpoint> {
        self.endpoints
            .values()
            .find(|e| e.branch_id == branch_id && e.kind == EndpointType::ReadWrite)
    }

    pub(crate) fn branch_endpoints<'a>(
        &'a self,
        branch_id: &'a str,
    ) -> impl Iterator<Item = &'a Endpoint> + 'a {
        self.endpoints
            .values()
            .filter(move |e| e.branch_id == branch_id)
    }

    fn has_children(&self, branch_id: &str) -> bool {
        self.branches
            .values()
            .any(|b| b.parent_id.as_deref() == Some(branch_id))
    }

    /// `POST /projects/{p}/branches`: a child of `parent_id` (or the default
    /// branch) with the parent's roles, passwords (fresh ones when the parent
    /// is protected) and databases, and the endpoints asked for.
    pub(crate) fn create_branch(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        op_duration: Duration,
        body: CreateBranch,
    ) -> Result<CreatedBranch, NeonError> {
        if let Some(name) = &body.branch.name {
            check_name(name)?;
        }
        check_annotation(&body.annotation_value)?;
        let read_write = body
            .endpoints
            .iter()
            .filter(|e| e.kind == EndpointType::ReadWrite)
            .count();
        if read_write > 1 {
            return Err(NeonError::conflict(
                "a branch can have only one read_write endpoint",
            ));
        }
        let parent_id = body
            .branch
            .parent_id
            .unwrap_or_else(|| self.default_branch.clone());
        let parent = self.branch(&parent_id)?;
        self.check_unlocked(now)?;
        if let Some(name) = &body.branch.name {
            if self.branches.values().any(|b| &b.name == name) {
                return Err(NeonError::conflict(format!(
                    "branch already exists; branch_name:{name:?}"
                )));
            }
        }
        let parent_protected = parent.protected;
        let offer_uris = parent.roles.len() == 1 && parent.databases.len() == 1;
        let inherited_roles: Vec<(String, String)> = parent
            .roles
            .values()
            .map(|r| (r.name.clone(), r.password(now.at).to_owned()))
            .collect();
        let inherited_databases: Vec<(String, String)> = parent
            .databases
            .values()
            .map(|d| (d.name.clone(), d.owner_name.clone()))
            .collect();

        let id = ids.branch();
        let name = body.branch.name.unwrap_or_else(|| id.clone());
        let done = now.at + op_duration;
        let mut branch = self.new_branch(&id, &name, Some(parent_id), now, done);
        branch.protected = body.branch.protected.unwrap_or(false);
        branch.annotation = body.annotation_value;
        for (role, password) in inherited_roles {
            let password = if parent_protected {
                ids.password()
            } else {
                password
            };
            branch
                .roles
                .insert(role.clone(), Role::new(&role, password, now));
        }
        for (database, owner) in inherited_databases {
            let db = self.new_database(&database, &owner, now);
            branch.databases.insert(database, db);
        }
        self.branches.insert(id.clone(), branch);

        let mut steps = vec![step("create_branch", &id, None)];
        let mut endpoint_ids = Vec::new();
        for spec in &body.endpoints {
            let endpoint_id = ids.endpoint();
            self.add_endpoint(&endpoint_id, &id, spec.kind, now, done);
            steps.push(step("start_compute", &id, Some(&endpoint_id)));
            endpoint_ids.push(endpoint_id);
        }
        let operations = self.schedule(ids, now, op_duration, steps);
        Ok(CreatedBranch {
            branch_id: id,
            offer_uris: offer_uris && read_write == 1,
            endpoint_ids,
            operations,
        })
    }

    /// `DELETE /projects/{p}/branches/{b}`: `None` when there is no such
    /// branch (the API answers 204), else the operations scheduled. The
    /// default branch, protected branches and branches with children are
    /// refused with 422.
    pub(crate) fn delete_branch(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        op_duration: Duration,
        branch_id: &str,
    ) -> Result<Option<(Branch, Vec<usize>)>, NeonError> {
        let Some(branch) = self.branches.get(branch_id) else {
            return Ok(None);
        };
        let refusal = if branch.default {
            Some("the default branch cannot be deleted")
        } else if branch.protected {
            Some("a protected branch cannot be deleted")
        } else if self.has_children(branch_id) {
            Some("the branch has child branches; delete them first")
        } else {
            None
        };
        if let Some(reason) = refusal {
            return Err(NeonError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("cannot delete branch {branch_id}: {reason}"),
            ));
        }
        self.check_unlocked(now)?;
        let endpoints: Vec<String> = self
            .branch_endpoints(branch_id)
            .map(|e| e.id.clone())
            .collect();
        let mut steps: Vec<Step> = endpoints
            .iter()
            .map(|e| step("suspend_compute", branch_id, Some(e)))
            .collect();
        steps.push(step("delete_timeline", branch_id, None));
        for endpoint in &endpoints {
            self.endpoints.remove(endpoint);
        }
        let Some(branch) = self.branches.remove(branch_id) else {
            return Ok(None);
        };
        let operations = self.schedule(ids, now, op_duration, steps);
        Ok(Some((branch, operations)))
    }

    /// `POST …/roles/{r}/reset_password`: the new password, in effect (and
    /// the old one out) once the returned operations finish.
    pub(crate) fn reset_password(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        op_duration: Duration,
        branch_id: &str,
        role_name: &str,
    ) -> Result<(String, Vec<usize>), NeonError> {
        self.branch(branch_id)?.role(role_name, branch_id)?;
        self.check_unlocked(now)?;
        let endpoint = self.read_write_endpoint(branch_id).map(|e| e.id.clone());
        let password = ids.password();
        self.next_seq += 1;
        let seq = self.next_seq;
        let branch = self.branch_mut(branch_id)?;
        branch.updated_seq = seq;
        branch.updated_at = now.wall;
        let role = branch.role_mut(role_name, branch_id)?;
        // Fold in an earlier reset that has finished, then stage this one
        // (in effect at once when operations take no time).
        role.settle(now.at);
        role.pending = Some((password.clone(), now.at + op_duration));
        role.updated_at = now.wall;
        role.settle(now.at);
        let mut steps = vec![step("apply_config", branch_id, endpoint.as_deref())];
        if let Some(endpoint) = endpoint.as_deref() {
            steps.push(step("suspend_compute", branch_id, Some(endpoint)));
        }
        let operations = self.schedule(ids, now, op_duration, steps);
        Ok((password, operations))
    }

    /// `POST …/branches/{b}/roles`: a new role with a generated password.
    pub(crate) fn create_role(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        op_duration: Duration,
        branch_id: &str,
        name: &str,
    ) -> Result<(String, Vec<usize>), NeonError> {
        if name.is_empty() || name.len() > 63 {
            return Err(NeonError::bad_request("role name must be 1 to 63 bytes"));
        }
        if self.branch(branch_id)?.roles.contains_key(name) {
            return Err(NeonError::conflict(format!(
                "role already exists; role_name:{name:?}"
            )));
        }
        self.check_unlocked(now)?;
        let endpoint = self.read_write_endpoint(branch_id).map(|e| e.id.clone());
        let password = ids.password();
        let branch = self.branch_mut(branch_id)?;
        branch
            .roles
            .insert(name.to_owned(), Role::new(name, password.clone(), now));
        let operations = self.schedule(
            ids,
            now,
            op_duration,
            vec![step("apply_config", branch_id, endpoint.as_deref())],
        );
        Ok((password, operations))
    }

    /// `POST /projects/{p}/endpoints`.
    pub(crate) fn create_endpoint(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        op_duration: Duration,
        spec: NewEndpointSpec,
    ) -> Result<(String, Vec<usize>), NeonError> {
        self.branch(&spec.branch_id)?;
        if spec.kind == EndpointType::ReadWrite
            && self.read_write_endpoint(&spec.branch_id).is_some()
        {
            return Err(NeonError::conflict(format!(
                "branch {} already has a read_write endpoint",
                spec.branch_id
            )));
        }
        self.check_unlocked(now)?;
        let id = ids.endpoint();
        self.add_endpoint(&id, &spec.branch_id, spec.kind, now, now.at + op_duration);
        let operations = self.schedule(
            ids,
            now,
            op_duration,
            vec![step("start_compute", &spec.branch_id, Some(&id))],
        );
        Ok((id, operations))
    }

    /// `DELETE /projects/{p}/endpoints/{e}`: the endpoint as it was, and
    /// the operations that suspend it; `None` when it is not there.
    pub(crate) fn delete_endpoint(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        op_duration: Duration,
        endpoint_id: &str,
    ) -> Result<Option<(Endpoint, Vec<usize>)>, NeonError> {
        // deleteProjectEndpoint: 204 "if the endpoint doesn't exist or has
        // already been deleted", so absence is not an error.
        let Some(branch_id) = self.endpoints.get(endpoint_id).map(|e| e.branch_id.clone()) else {
            return Ok(None);
        };
        self.check_unlocked(now)?;
        let operations = self.schedule(
            ids,
            now,
            op_duration,
            vec![step("suspend_compute", &branch_id, Some(endpoint_id))],
        );
        let endpoint = self
            .endpoints
            .remove(endpoint_id)
            .ok_or_else(|| NeonError::not_found("endpoint not found"))?;
        Ok(Some((endpoint, operations)))
    }

    /// `PATCH /projects/{p}/endpoints/{e}`: only `disabled` is modelled.
    pub(crate) fn update_endpoint(
        &mut self,
        ids: &mut Ids,
        now: &Now,
        op_duration: Duration,
        endpoint_id: &str,
        patch: EndpointPatch,
    ) -> Result<Vec<usize>, NeonError> {
        let branch_id = self.endpoint(endpoint_id)?.branch_id.clone();
        self.check_unlocked(now)?;
        if let Some(endpoint) = self.endpoints.get_mut(endpoint_id) {
            if let Some(disabled) = patch.disabled {
                endpoint.disabled = disabled;
            }
            endpoint.updated_at = now.wall;
        }
        Ok(self.schedule(
            ids,
            now,
            op_duration,
            vec![step("apply_config", &branch_id, Some(endpoint_id))],
        ))
    }

    pub(crate) fn endpoint(&self, id: &str) -> Result<&Endpoint, NeonError> {
        self.endpoints
            .get(id)
            .ok_or_else(|| NeonError::not_found("endpoint not found"))
    }

    pub(crate) fn operation(&self, id: &str) -> Result<&Operation, NeonError> {
        self.operations
            .iter()
            .find(|op| op.id == id)
            .ok_or_else(|| NeonError::not_found("operation not found"))
    }
}

impl Branch {
    pub(crate) fn role(&self, name: &str, branch_id: &str) -> Result<&Role, NeonError> {
        self.roles
            .get(name)
            .ok_or_else(|| role_not_found(name, branch_id))
    }

    fn role_mut(&mut self, name: &str, branch_id: &str) -> Result<&mut Role, NeonError> {
        self.roles
            .get_mut(name)
            .ok_or_else(|| role_not_found(name, branch_id))
    }
}

fn role_not_found(name: &str, branch_id: &str) -> NeonError {
    NeonError::not_found(format!(
        "role not found for branch; role_name:{name:?}, branch_id:{branch_id:?}"
    ))
}

fn check_name(name: &str) -> Result<(), NeonError> {
    if name.is_empty() || name.len() > 256 {
        Err(NeonError::bad_request(
            "branch name must be 1 to 256 characters",
        ))
    } else {
        Ok(())
    }
}

fn check_annotation(annotation: &BTreeMap<String, String>) -> Result<(), NeonError> {
    if annotation.len() > 50 {
        Err(NeonError::bad_request(
            "annotation_value may hold at most 50 pairs",
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn project_with_main(op: Duration) -> (Neon, Ids, String, String, Now) {
        let mut neon = Neon::default();
        let mut ids = Ids::new(0);
        let now = Now::new();
        let (project_id, created) = neon
            .create_project(&mut ids, &now, op, ProjectSpec::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        (neon, ids, project_id, created.branch_id, now)
    }

    #[test]
    fn operations_move_from_scheduling_through_running_to_finished() {
        let (neon, _, project_id, _, now) = project_with_main(Duration::from_secs(10));
        let project = &neon.projects[&project_id];
        let [first, second] = &project.operations[..] else {
            panic!("expected two operations");
        };
        assert_eq!(first.status(now.at), "running");
        assert_eq!(second.status(now.at), "scheduling");
        assert_eq!(second.status(now.at + Duration::from_secs(6)), "running");
        assert_eq!(first.status(now.at + Duration::from_secs(6)), "finished");
        assert!(project.is_busy(now.at + Duration::from_secs(9)));
        assert!(!project.is_busy(now.at + Duration::from_secs(10)));
    }

    #[test]
    fn a_protected_parent_gives_its_child_fresh_passwords() {
        let (mut neon, mut ids, project_id, main, now) = project_with_main(Duration::ZERO);
        let project = neon
            .projects
            .get_mut(&project_id)
            .unwrap_or_else(|| panic!("project"));
        if let Some(branch) = project.branches.get_mut(&main) {
            branch.protected = true;
        }
        let created = project
            .create_branch(&mut ids, &now, Duration::ZERO, CreateBranch::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        let parent = &project.branches[&main].roles["neondb_owner"];
        let child = &project.branches[&created.branch_id].roles["neondb_owner"];
        assert_ne!(parent.password(now.at), child.password(now.at));
    }

    #[test]
    fn the_old_password_holds_until_the_reset_finishes() {
        let (mut neon, mut ids, project_id, main, now) = project_with_main(Duration::ZERO);
        let project = neon
            .projects
            .get_mut(&project_id)
            .unwrap_or_else(|| panic!("project"));
        let old = project.branches[&main].roles["neondb_owner"]
            .password(now.at)
            .to_owned();
        let (new, _) = project
            .reset_password(
                &mut ids,
                &now,
                Duration::from_secs(5),
                &main,
                "neondb_owner",
            )
            .unwrap_or_else(|e| panic!("{e:?}"));
        let role = &project.branches[&main].roles["neondb_owner"];
        assert_eq!(role.password(now.at), old);
        assert_eq!(role.pending_password(now.at), Some(new.as_str()));
        assert_eq!(role.password(now.at + Duration::from_secs(5)), new);
    }
}
