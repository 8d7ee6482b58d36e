//! The fake's Neon API v2 routes (under `/api/v2`): projects, branches,
//! roles (list, create, reset and reveal password), databases, endpoints,
//! operations and connection URIs. Each handler parses its request, takes
//! the state lock for the synchronous part only, applies the rule in
//! `model`, and answers with the shapes in `render`.

mod model;
mod render;
mod requests;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::http::{Body, NeonError, Now, Query};
use crate::ids::Ids;
use crate::Shared;

pub(crate) use model::{Neon, Project, TenantBranch, DEFAULT_REGION};
pub(crate) use render::connection_uri as render_connection_uri;

type Answer = Result<Response, NeonError>;

/// A request body of type `T`, refused in Neon's error shape.
type NeonBody<T> = Body<T, NeonError>;

pub(crate) fn routes() -> Router<Arc<Shared>> {
    let project = "/projects/{project_id}";
    let branch = "/projects/{project_id}/branches/{branch_id}";
    let role = "/projects/{project_id}/branches/{branch_id}/roles/{role_name}";
    Router::new()
        .route("/projects", post(create_project))
        .route(project, get(get_project))
        .route(
            &format!("{project}/branches"),
            get(list_branches).post(create_branch),
        )
        .route(&format!("{project}/branches/count"), get(count_branches))
        .route(branch, get(get_branch).delete(delete_branch))
        .route(
            &format!("{branch}/roles"),
            get(list_roles).post(create_role),
        )
        .route(&format!("{role}/reset_password"), post(reset_password))
        .route(&format!("{role}/reveal_password"), get(reveal_password))
        .route(&format!("{branch}/databases"), get(list_databases))
        .route(&format!("{branch}/endpoints"), get(list_branch_endpoints))
        .route(
            &format!("{project}/endpoints"),
            get(list_endpoints).post(create_endpoint),
        )
        .route(
            &format!("{project}/endpoints/{{endpoint_id}}"),
            get(get_endpoint)
                .patch(update_endpoint)
                .delete(delete_endpoint),
        )
        .route(&format!("{project}/operations"), get(list_operations))
        .route(
            &format!("{project}/operations/{{operation_id}}"),
            get(get_operation),
        )
        .route(&format!("{project}/connection_uri"), get(connection_uri))
}

/// Any path under `/api/v2` the fake does not serve.
pub(crate) async fn unknown_route() -> NeonError {
    NeonError::not_found("not found")
}

fn ok(body: Value) -> Answer {
    Ok(Json(body).into_response())
}

fn created(body: Value) -> Answer {
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// A delete of something already gone: Neon answers 204 with no body.
fn nothing_to_delete() -> Answer {
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `value`, or a 400 saying what the request lacks.
fn required<T>(value: Option<T>, message: &str) -> Result<T, NeonError> {
    value.ok_or_else(|| NeonError::bad_request(message))
}

/// Runs `read` on one project under the state lock, with the request's
/// clock: the shared part of every handler that only looks.
fn read_project(
    shared: &Shared,
    project_id: &str,
    read: impl FnOnce(&Project, &Now) -> Answer,
) -> Answer {
    let now = Now::new();
    let world = shared.world();
    read(world.neon.project(project_id)?, &now)
}

/// One change to a project under the state lock: the project, the id
/// source, the request's clock and the configured operation duration.
struct Change<'w> {
    project: &'w mut Project,
    ids: &'w mut Ids,
    now: Now,
    op: Duration,
}

impl Change<'_> {
    /// `{key: value, "operations": [...]}`: the answer of a change that
    /// started operations.
    fn answer(&self, key: &str, value: Value, operations: &[usize]) -> Value {
        json!({
            key: value,
            "operations": render::operations(self.project, operations, &self.now),
        })
    }

    /// The answer of a change that gave a role `password` (create, reset):
    /// the role with that password, and the operations.
    fn role_answer(
        &self,
        branch_id: &str,
        role_name: &str,
        password: &str,
        operations: &[usize],
    ) -> Result<Value, NeonError> {
        let role = self.project.branch(branch_id)?.role(role_name, branch_id)?;
        let role = render::role(branch_id, role, Some(password));
        Ok(self.answer("role", role, operations))
    }

    /// The answer of a change that made or changed an endpoint: the
    /// endpoint as it is now, and the operations.
    fn endpoint_answer(&self, endpoint_id: &str, operations: &[usize]) -> Result<Value, NeonError> {
        let endpoint =
            render::endpoint(self.project, self.project.endpoint(endpoint_id)?, &self.now);
        Ok(self.answer("endpoint", endpoint, operations))
    }
}

/// Runs `change` on one project: the shared part of every handler that
/// changes a project. The config is read before the state lock is taken,
/// so the two locks are never held together.
fn change_project(
    shared: &Shared,
    project_id: &str,
    change: impl FnOnce(Change<'_>) -> Answer,
) -> Answer {
    let op = shared.config().op_duration;
    let now = Now::new();
    let mut world = shared.world();
    let world = &mut *world;
    let project = world.neon.project_mut(project_id)?;
    change(Change {
        project,
        ids: &mut world.ids,
        now,
        op,
    })
}

async fn create_project(
    State(shared): State<Arc<Shared>>,
    Body(body, _): NeonBody<requests::CreateProject>,
) -> Answer {
    let op = shared.config().op_duration;
    let now = Now::new();
    let mut world = shared.world();
    let world = &mut *world;
    let (project_id, made) = world
        .neon
        .create_project(&mut world.ids, &now, op, body.project)?;
    let project = world.neon.project(&project_id)?;
    let mut answer = created_branch(project, &made, &now, true)?;
    if let Some(object) = answer.as_object_mut() {
        object.insert("project".into(), render::project(project));
    }
    created(answer)
}

async fn get_project(State(shared): State<Arc<Shared>>, Path(project_id): Path<String>) -> Answer {
    read_project(&shared, &project_id, |project, _| {
        ok(json!({"project": render::project(project)}))
    })
}

/// The body of a create-project or create-branch answer. `with_passwords`:
/// create project returns role passwords, create branch does not.
fn created_branch(
    project: &Project,
    made: &model::CreatedBranch,
    now: &Now,
    with_passwords: bool,
) -> Result<Value, NeonError> {
    let branch = project.branch(&made.branch_id)?;
    let endpoints = made
        .endpoint_ids
        .iter()
        .filter_map(|id| project.endpoints.get(id));
    let mut answer = json!({
        "branch": render::branch(&project.id, branch, now),
        "endpoints": render::endpoints(project, endpoints, now),
        "operations": render::operations(project, &made.operations, now),
        "roles": render::roles(branch, with_passwords.then_some(now.at)),
        "databases": render::databases(branch),
    });
    if made.offer_uris {
        let role = branch.roles.values().next();
        let database = branch.databases.values().next();
        let endpoint = project.read_write_endpoint(&branch.id);
        if let (Some(role), Some(database), Some(endpoint), Some(object)) =
            (role, database, endpoint, answer.as_object_mut())
        {
            let entry = render::connection_uri_entry(
                &role.name,
                role.password(now.at),
                endpoint,
                &database.name,
            );
            object.insert("connection_uris".into(), json!([entry]));
        }
    }
    Ok(answer)
}

async fn create_branch(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    Body(body, _): NeonBody<requests::CreateBranch>,
) -> Answer {
    change_project(&shared, &project_id, |c| {
        let made = c.project.create_branch(c.ids, &c.now, c.op, body)?;
        created(created_branch(c.project, &made, &c.now, false)?)
    })
}

/// `limit` of a listing: 1 to `max`, or `None` when absent.
fn page_limit(query: &Query, max: usize) -> Result<Option<usize>, NeonError> {
    let Some(raw) = query.get("limit") else {
        return Ok(None);
    };
    match raw.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(Some(n)),
        _ => Err(NeonError::bad_request(format!(
            "limit must be between 1 and {max}"
        ))),
    }
}

/// Where a page of `items` starts: just after the item whose id is
/// `cursor` (the last of the previous page), or at the top without one.
fn page_start<T>(
    items: &[T],
    cursor: Option<&str>,
    id: impl Fn(&T) -> &str,
) -> Result<usize, NeonError> {
    let Some(cursor) = cursor else {
        return Ok(0);
    };
    items
        .iter()
        .position(|item| id(item) == cursor)
        .map(|i| i + 1)
        .ok_or_else(|| NeonError::bad_request("invalid cursor"))
}

/// `cursor` of a listing; an empty one is none.
fn page_cursor(query: &Query) -> Option<&str> {
    query.get("cursor").filter(|c| !c.is_empty())
}

/// `sort_by`, `sort_order`, `limit`, `cursor` and `search` of a branch list.
struct BranchListing<'a> {
    search: Option<String>,
    sort_by: &'a str,
    sort_order: &'a str,
    limit: Option<usize>,
    cursor: Option<&'a str>,
}

impl<'a> BranchListing<'a> {
    fn parse(query: &'a Query) -> Result<BranchListing<'a>, NeonError> {
        let sort_by = query.get("sort_by").unwrap_or("updated_at");
        if !matches!(sort_by, "name" | "created_at" | "updated_at") {
            return Err(NeonError::bad_request(
                "sort_by must be name, created_at or updated_at",
            ));
        }
        let sort_order = query.get("sort_order").unwrap_or("desc");
        if !matches!(sort_order, "asc" | "desc") {
            return Err(NeonError::bad_request("sort_order must be asc or desc"));
        }
        Ok(BranchListing {
            search: query.get("search").map(str::to_lowercase),
            sort_by,
            sort_order,
            limit: page_limit(query, 10_000)?,
            cursor: page_cursor(query),
        })
    }

    /// Matching branches in order (`search` is a case-insensitive substring
    /// of the name or the id).
    fn matching<'p>(&self, project: &'p Project) -> Vec<&'p model::Branch> {
        let mut branches: Vec<&model::Branch> = project
            .branches
            .values()
            .filter(|b| {
                self.search.as_deref().is_none_or(|s| {
                    b.name.to_lowercase().contains(s) || b.id.to_lowercase().contains(s)
                })
            })
            .collect();
        match self.sort_by {
            "name" => {
                branches
                    .sort_by(|a, b| a.name.cmp(&b.name).then(a.created_seq.cmp(&b.created_seq)));
            }
            "created_at" => branches.sort_by_key(|b| b.created_seq),
            _ => branches.sort_by_key(|b| b.updated_seq),
        }
        if self.sort_order == "desc" {
            branches.reverse();
        }
        branches
    }
}

async fn list_branches(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    query: Query,
) -> Answer {
    let listing = BranchListing::parse(&query)?;
    read_project(&shared, &project_id, |project, now| {
        let branches = listing.matching(project);
        let start = page_start(&branches, listing.cursor, |b| &b.id)?;
        let end = listing
            .limit
            .map_or(branches.len(), |limit| (start + limit).min(branches.len()));
        let page = branches.get(start..end).unwrap_or_default();
        let mut annotations = Map::new();
        for b in page.iter().filter(|b| !b.annotation.is_empty()) {
            annotations.insert(b.id.clone(), render::annotation(b));
        }
        let mut pagination = json!({"sort_by": listing.sort_by, "sort_order": listing.sort_order});
        if let (Some(last), true, Some(object)) = (
            page.last(),
            end < branches.len(),
            pagination.as_object_mut(),
        ) {
            object.insert("next".into(), json!(last.id));
        }
        let rendered: Vec<Value> = page
            .iter()
            .map(|b| render::branch(&project.id, b, now))
            .collect();
        ok(json!({"branches": rendered, "annotations": annotations, "pagination": pagination}))
    })
}

async fn count_branches(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    query: Query,
) -> Answer {
    let listing = BranchListing::parse(&query)?;
    read_project(&shared, &project_id, |project, _| {
        ok(json!({"count": listing.matching(project).len()}))
    })
}

async fn get_branch(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Answer {
    read_project(&shared, &project_id, |project, now| {
        let branch = project.branch(&branch_id)?;
        // AnnotationResponse requires `annotation`, annotated or not.
        ok(json!({
            "branch": render::branch(&project.id, branch, now),
            "annotation": render::annotation(branch),
        }))
    })
}

async fn delete_branch(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Answer {
    change_project(&shared, &project_id, |c| {
        let Some((branch, operations)) =
            c.project.delete_branch(c.ids, &c.now, c.op, &branch_id)?
        else {
            return nothing_to_delete();
        };
        let branch = render::branch(&c.project.id, &branch, &c.now);
        ok(c.answer("branch", branch, &operations))
    })
}

async fn list_roles(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Answer {
    read_project(&shared, &project_id, |project, _| {
        ok(json!({"roles": render::roles(project.branch(&branch_id)?, None)}))
    })
}

async fn create_role(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
    Body(body, _): NeonBody<requests::CreateRole>,
) -> Answer {
    let spec = required(body.role, "role with a name is required")?;
    change_project(&shared, &project_id, |c| {
        let (password, operations) = c
            .project
            .create_role(c.ids, &c.now, c.op, &branch_id, &spec.name)?;
        created(c.role_answer(&branch_id, &spec.name, &password, &operations)?)
    })
}

async fn reset_password(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id, role_name)): Path<(String, String, String)>,
) -> Answer {
    change_project(&shared, &project_id, |c| {
        let (password, operations) = c
            .project
            .reset_password(c.ids, &c.now, c.op, &branch_id, &role_name)?;
        ok(c.role_answer(&branch_id, &role_name, &password, &operations)?)
    })
}

/// The password the role answers to now: until a reset's operations
/// finish, that is still the old one.
async fn reveal_password(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id, role_name)): Path<(String, String, String)>,
) -> Answer {
    read_project(&shared, &project_id, |project, now| {
        let role = project.branch(&branch_id)?.role(&role_name, &branch_id)?;
        check_passwords_stored(project)?;
        ok(json!({"password": role.password(now.at)}))
    })
}

/// Passwords can be revealed (or put in a URI) only for a project that
/// stores them; otherwise 412.
fn check_passwords_stored(project: &Project) -> Result<(), NeonError> {
    if project.store_passwords {
        return Ok(());
    }
    Err(NeonError::new(
        StatusCode::PRECONDITION_FAILED,
        "passwords are not stored for this project",
    ))
}

async fn list_databases(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Answer {
    read_project(&shared, &project_id, |project, _| {
        ok(json!({"databases": render::databases(project.branch(&branch_id)?)}))
    })
}

async fn list_branch_endpoints(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Answer {
    read_project(&shared, &project_id, |project, now| {
        project.branch(&branch_id)?;
        let endpoints = project.branch_endpoints(&branch_id);
        ok(json!({"endpoints": render::endpoints(project, endpoints, now)}))
    })
}

async fn list_endpoints(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
) -> Answer {
    read_project(&shared, &project_id, |project, now| {
        let endpoints = project.endpoints.values();
        ok(json!({"endpoints": render::endpoints(project, endpoints, now)}))
    })
}

async fn create_endpoint(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    Body(body, _): NeonBody<requests::CreateEndpoint>,
) -> Answer {
    let spec = required(
        body.endpoint,
        "endpoint with branch_id and type is required",
    )?;
    change_project(&shared, &project_id, |c| {
        let (endpoint_id, operations) = c.project.create_endpoint(c.ids, &c.now, c.op, spec)?;
        created(c.endpoint_answer(&endpoint_id, &operations)?)
    })
}

async fn get_endpoint(
    State(shared): State<Arc<Shared>>,
    Path((project_id, endpoint_id)): Path<(String, String)>,
) -> Answer {
    read_project(&shared, &project_id, |project, now| {
        let endpoint = project.endpoint(&endpoint_id)?;
        ok(json!({"endpoint": render::endpoint(project, endpoint, now)}))
    })
}

async fn update_endpoint(
    State(shared): State<Arc<Shared>>,
    Path((project_id, endpoint_id)): Path<(String, String)>,
    Body(body, _): NeonBody<requests::UpdateEndpoint>,
) -> Answer {
    change_project(&shared, &project_id, |c| {
        let operations =
            c.project
                .update_endpoint(c.ids, &c.now, c.op, &endpoint_id, body.endpoint)?;
        ok(c.endpoint_answer(&endpoint_id, &operations)?)
    })
}

async fn delete_endpoint(
    State(shared): State<Arc<Shared>>,
    Path((project_id, endpoint_id)): Path<(String, String)>,
) -> Answer {
    change_project(&shared, &project_id, |c| {
        let Some((endpoint, operations)) =
            c.project
                .delete_endpoint(c.ids, &c.now, c.op, &endpoint_id)?
        else {
            return nothing_to_delete();
        };
        let endpoint = render::endpoint(c.project, &endpoint, &c.now);
        ok(c.answer("endpoint", endpoint, &operations))
    })
}

async fn get_operation(
    State(shared): State<Arc<Shared>>,
    Path((project_id, operation_id)): Path<(String, String)>,
) -> Answer {
    read_project(&shared, &project_id, |project, now| {
        let operation = project.operation(&operation_id)?;
        ok(json!({"operation": render::operation(&project.id, operation, now)}))
    })
}

/// Newest first; `cursor` is the id of the last operation of the previous
/// page.
async fn list_operations(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    query: Query,
) -> Answer {
    let limit = page_limit(&query, 1000)?.unwrap_or(10);
    read_project(&shared, &project_id, |project, now| {
        let newest_first: Vec<&model::Operation> = project.operations.iter().rev().collect();
        let start = page_start(&newest_first, page_cursor(&query), |op| &op.id)?;
        let page: Vec<&model::Operation> =
            newest_first.into_iter().skip(start).take(limit).collect();
        let mut pagination = json!({});
        if let (Some(last), Some(object)) = (page.last(), pagination.as_object_mut()) {
            object.insert("cursor".into(), json!(last.id));
        }
        let rendered: Vec<Value> = page
            .iter()
            .map(|op| render::operation(&project.id, op, now))
            .collect();
        ok(json!({"operations": rendered, "pagination": pagination}))
    })
}

/// `postgresql://role:password@host/db?sslmode=require` for a branch's
/// read-write endpoint (or the one named), with the password the role
/// answers to now.
async fn connection_uri(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    query: Query,
) -> Answer {
    let database_name = required(query.get("database_name"), "database_name is required")?;
    let role_name = required(query.get("role_name"), "role_name is required")?;
    read_project(&shared, &project_id, |project, now| {
        let branch_id = query.get("branch_id").unwrap_or(&project.default_branch);
        let branch = project.branch(branch_id)?;
        let role = branch.role(role_name, branch_id)?;
        if !branch.databases.contains_key(database_name) {
            return Err(NeonError::not_found(format!(
                "database not found for branch; database_name:{database_name:?}, branch_id:{branch_id:?}"
            )));
        }
        let endpoint = match query.get("endpoint_id") {
            Some(id) => Some(project.endpoint(id)?).filter(|e| e.branch_id == branch.id),
            None => project.read_write_endpoint(branch_id),
        }
        .ok_or_else(|| {
            NeonError::not_found(format!(
                "no read_write endpoint found for branch {branch_id}"
            ))
        })?;
        check_passwords_stored(project)?;
        let host = if query.flag("pooled") {
            endpoint.pooler_host()
        } else {
            endpoint.host.clone()
        };
        let uri = render::connection_uri(role_name, role.password(now.at), &host, database_name);
        ok(json!({ "uri": uri }))
    })
}
