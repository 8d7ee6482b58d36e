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

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::http::{parse_body, NeonError, Now, Query};
use crate::ids::Ids;
use crate::Shared;

pub(crate) use model::{Neon, Project, TenantBranch, DEFAULT_REGION};
pub(crate) use render::connection_uri as render_connection_uri;

type Answer = Result<Response, NeonError>;

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

async fn create_project(State(shared): State<Arc<Shared>>, body: Bytes) -> Answer {
    let body: requests::CreateProject = parse_body(&body).map_err(NeonError::bad_request)?;
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
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
    ok(json!({"project": render::project(project)}))
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
    let endpoints: Vec<Value> = made
        .endpoint_ids
        .iter()
        .filter_map(|id| project.endpoints.get(id))
        .map(|e| render::endpoint(project, e, now))
        .collect();
    let roles: Vec<Value> = branch
        .roles
        .values()
        .map(|r| render::role(&branch.id, r, with_passwords.then(|| r.password(now.at))))
        .collect();
    let databases: Vec<Value> = branch
        .databases
        .values()
        .map(|d| render::database(&branch.id, d))
        .collect();
    let mut answer = json!({
        "branch": render::branch(&project.id, branch, now),
        "endpoints": endpoints,
        "operations": render::operations(project, &made.operations, now),
        "roles": roles,
        "databases": databases,
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
    body: Bytes,
) -> Answer {
    let body: requests::CreateBranch = parse_body(&body).map_err(NeonError::bad_request)?;
    change_project(&shared, &project_id, |c| {
        let made = c.project.create_branch(c.ids, &c.now, c.op, body)?;
        created(created_branch(c.project, &made, &c.now, false)?)
    })
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
        let limit = match query.get("limit") {
            None => None,
            Some(raw) => match raw.parse::<usize>() {
                Ok(n @ 1..=10_000) => Some(n),
                _ => return Err(NeonError::bad_request("limit must be between 1 and 10000")),
            },
        };
        Ok(BranchListing {
            search: query.get("search").map(str::to_lowercase),
            sort_by,
            sort_order,
            limit,
            cursor: query.get("cursor").filter(|c| !c.is_empty()),
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
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    let listing = BranchListing::parse(&query)?;
    let now = Now::new();
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
    let branches = listing.matching(project);
    let start = match listing.cursor {
        None => 0,
        Some(cursor) => match branches.iter().position(|b| b.id == cursor) {
            Some(i) => i + 1,
            None => return Err(NeonError::bad_request("invalid cursor")),
        },
    };
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
        .map(|b| render::branch(&project.id, b, &now))
        .collect();
    ok(json!({"branches": rendered, "annotations": annotations, "pagination": pagination}))
}

async fn count_branches(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    let listing = BranchListing::parse(&query)?;
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
    ok(json!({"count": listing.matching(project).len()}))
}

async fn get_branch(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Answer {
    let now = Now::new();
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
    let branch = project.branch(&branch_id)?;
    // AnnotationResponse requires `annotation`, annotated or not.
    ok(json!({
        "branch": render::branch(&project.id, branch, &now),
        "annotation": render::annotation(branch),
    }))
}

async fn delete_branch(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Answer {
    change_project(&shared, &project_id, |c| {
        let Some((branch, operations)) =
            c.project.delete_branch(c.ids, &c.now, c.op, &branch_id)?
        else {
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        let branch = render::branch(&c.project.id, &branch, &c.now);
        ok(c.answer("branch", branch, &operations))
    })
}

async fn list_roles(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Answer {
    let world = shared.world();
    let branch = world.neon.project(&project_id)?.branch(&branch_id)?;
    let roles: Vec<Value> = branch
        .roles
        .values()
        .map(|r| render::role(&branch.id, r, None))
        .collect();
    ok(json!({"roles": roles}))
}

async fn create_role(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    let body: requests::CreateRole = parse_body(&body).map_err(NeonError::bad_request)?;
    let spec = body
        .role
        .ok_or_else(|| NeonError::bad_request("role with a name is required"))?;
    change_project(&shared, &project_id, |c| {
        let (password, operations) = c
            .project
            .create_role(c.ids, &c.now, c.op, &branch_id, &spec.name)?;
        let role = c.project.branch(&branch_id)?.role(&spec.name, &branch_id)?;
        let role = render::role(&branch_id, role, Some(&password));
        created(c.answer("role", role, &operations))
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
        let role = c.project.branch(&branch_id)?.role(&role_name, &branch_id)?;
        let role = render::role(&branch_id, role, Some(&password));
        ok(c.answer("role", role, &operations))
    })
}

/// The password the role answers to now: until a reset's operations
/// finish, that is still the old one.
async fn reveal_password(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id, role_name)): Path<(String, String, String)>,
) -> Answer {
    let now = Now::new();
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
    let role = project.branch(&branch_id)?.role(&role_name, &branch_id)?;
    if !project.store_passwords {
        return Err(passwords_not_stored());
    }
    ok(json!({"password": role.password(now.at)}))
}

fn passwords_not_stored() -> NeonError {
    NeonError::new(
        StatusCode::PRECONDITION_FAILED,
        "passwords are not stored for this project",
    )
}

async fn list_databases(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Answer {
    let world = shared.world();
    let branch = world.neon.project(&project_id)?.branch(&branch_id)?;
    let databases: Vec<Value> = branch
        .databases
        .values()
        .map(|d| render::database(&branch.id, d))
        .collect();
    ok(json!({"databases": databases}))
}

async fn list_branch_endpoints(
    State(shared): State<Arc<Shared>>,
    Path((project_id, branch_id)): Path<(String, String)>,
) -> Answer {
    let now = Now::new();
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
    project.branch(&branch_id)?;
    let endpoints: Vec<Value> = project
        .branch_endpoints(&branch_id)
        .map(|e| render::endpoint(project, e, &now))
        .collect();
    ok(json!({"endpoints": endpoints}))
}

async fn list_endpoints(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
) -> Answer {
    let now = Now::new();
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
    let endpoints: Vec<Value> = project
        .endpoints
        .values()
        .map(|e| render::endpoint(project, e, &now))
        .collect();
    ok(json!({"endpoints": endpoints}))
}

async fn create_endpoint(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    body: Bytes,
) -> Answer {
    let body: requests::CreateEndpoint = parse_body(&body).map_err(NeonError::bad_request)?;
    let spec = body
        .endpoint
        .ok_or_else(|| NeonError::bad_request("endpoint with branch_id and type is required"))?;
    change_project(&shared, &project_id, |c| {
        let (endpoint_id, operations) = c.project.create_endpoint(c.ids, &c.now, c.op, spec)?;
        let endpoint = render::endpoint(c.project, c.project.endpoint(&endpoint_id)?, &c.now);
        created(c.answer("endpoint", endpoint, &operations))
    })
}

async fn get_endpoint(
    State(shared): State<Arc<Shared>>,
    Path((project_id, endpoint_id)): Path<(String, String)>,
) -> Answer {
    let now = Now::new();
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
    let endpoint = project.endpoint(&endpoint_id)?;
    ok(json!({"endpoint": render::endpoint(project, endpoint, &now)}))
}

async fn update_endpoint(
    State(shared): State<Arc<Shared>>,
    Path((project_id, endpoint_id)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    let body: requests::UpdateEndpoint = parse_body(&body).map_err(NeonError::bad_request)?;
    change_project(&shared, &project_id, |c| {
        let operations =
            c.project
                .update_endpoint(c.ids, &c.now, c.op, &endpoint_id, body.endpoint)?;
        let endpoint = render::endpoint(c.project, c.project.endpoint(&endpoint_id)?, &c.now);
        ok(c.answer("endpoint", endpoint, &operations))
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
            return Ok(StatusCode::NO_CONTENT.into_response());
        };
        let endpoint = render::endpoint(c.project, &endpoint, &c.now);
        ok(c.answer("endpoint", endpoint, &operations))
    })
}

async fn get_operation(
    State(shared): State<Arc<Shared>>,
    Path((project_id, operation_id)): Path<(String, String)>,
) -> Answer {
    let now = Now::new();
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
    let operation = project.operation(&operation_id)?;
    ok(json!({"operation": render::operation(&project.id, operation, &now)}))
}

/// Newest first; `cursor` is the id of the last operation of the previous
/// page.
async fn list_operations(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    let limit = match query.get("limit") {
        None => 10,
        Some(raw) => match raw.parse::<usize>() {
            Ok(n @ 1..=1000) => n,
            _ => return Err(NeonError::bad_request("limit must be between 1 and 1000")),
        },
    };
    let now = Now::new();
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
    let newest_first: Vec<&model::Operation> = project.operations.iter().rev().collect();
    let start = match query.get("cursor").filter(|c| !c.is_empty()) {
        None => 0,
        Some(cursor) => match newest_first.iter().position(|op| op.id == cursor) {
            Some(i) => i + 1,
            None => return Err(NeonError::bad_request("invalid cursor")),
        },
    };
    let page: Vec<&model::Operation> = newest_first.into_iter().skip(start).take(limit).collect();
    let mut pagination = json!({});
    if let (Some(last), Some(object)) = (page.last(), pagination.as_object_mut()) {
        object.insert("cursor".into(), json!(last.id));
    }
    let rendered: Vec<Value> = page
        .iter()
        .map(|op| render::operation(&project.id, op, &now))
        .collect();
    ok(json!({"operations": rendered, "pagination": pagination}))
}

/// `postgresql://role:password@host/db?sslmode=require` for a branch's
/// read-write endpoint (or the one named), with the password the role
/// answers to now.
async fn connection_uri(
    State(shared): State<Arc<Shared>>,
    Path(project_id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Answer {
    let query = Query::parse(raw.as_deref());
    let database_name = query
        .get("database_name")
        .ok_or_else(|| NeonError::bad_request("database_name is required"))?;
    let role_name = query
        .get("role_name")
        .ok_or_else(|| NeonError::bad_request("role_name is required"))?;
    let now = Now::new();
    let world = shared.world();
    let project = world.neon.project(&project_id)?;
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
    if !project.store_passwords {
        return Err(passwords_not_stored());
    }
    let host = if query.flag("pooled") {
        endpoint.pooler_host()
    } else {
        endpoint.host.clone()
    };
    ok(
        json!({"uri": render::connection_uri(role_name, role.password(now.at), &host, database_name)}),
    )
}
