//! The HTTP policy and the Neon and Fly clients, driven over real HTTP on
//! loopback against small scripted axum servers: retries and their bounds,
//! `Retry-After`, 423s, the rate limiter, recovery of ambiguous creates by
//! lookup, auth headers, and that no secret reaches an error. Each server
//! answers from a closure given the request and how many times that method
//! and path were seen before, and records every request it got.
//!
//! The stateful fake cloud has its own tests; these only pin the policy.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Router;
use serde_json::{json, Value};
use tokio::time::Instant;

use rekey::cloud::fly::{
    CreateMachine, FlyClient, FlyOptions, Machine, MachineConfig, Removal, StopOptions, WaitState,
    ITEM_TAG,
};
use rekey::cloud::neon::{NeonClient, NeonOptions, Operation, OperationStatus};
use rekey::cloud::{CloudError, Created, HttpOptions, Secret};
use rekey_testkit::fake_cloud::{FakeCloud, FakeConfig};

const NEON_KEY: &str = "napi_TOPSECRETKEY123";

/// One request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    query: String,
    auth: Option<String>,
    /// `fly-machine-lease-nonce`, when sent.
    nonce: Option<String>,
    body: String,
    at: Instant,
}

impl Seen {
    fn is(&self, method: &str, path: &str) -> bool {
        self.method == method && self.path == path
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// What the server answers.
#[derive(Clone)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: String,
    delay: Duration,
}

impl Reply {
    fn json(status: u16, body: Value) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: body.to_string(),
            delay: Duration::ZERO,
        }
    }

    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: String::new(),
            delay: Duration::ZERO,
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }

    fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }
}

type Script = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

#[derive(Clone)]
struct ServerState {
    script: Arc<Script>,
    log: Arc<Mutex<Vec<Seen>>>,
}

struct Server {
    base: String,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    fn requests(&self) -> Vec<Seen> {
        self.log.lock().unwrap().clone()
    }

    fn count(&self, method: &str, path: &str) -> usize {
        self.requests()
            .iter()
            .filter(|s| s.is(method, path))
            .count()
    }
}

async fn handle(
    State(state): State<ServerState>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: String,
) -> Response {
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        auth: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        nonce: headers
            .get("fly-machine-lease-nonce")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body,
        at: Instant::now(),
    };
    let reply = {
        let mut log = state.log.lock().unwrap();
        let before = log
            .iter()
            .filter(|s| s.is(&seen.method, &seen.path))
            .count();
        log.push(seen.clone());
        (state.script)(&seen, before)
    };
    tokio::time::sleep(reply.delay).await;
    let mut response = Response::builder().status(StatusCode::from_u16(reply.status).unwrap());
    if !reply.body.is_empty() {
        response = response.header("content-type", "application/json");
    }
    for (name, value) in reply.headers {
        response = response.header(name, value);
    }
    response.body(Body::from(reply.body)).unwrap()
}

/// Starts a scripted server on 127.0.0.1 with an API prefix like the real
/// ones (`/api/v2`, `/v1`), so path joining is exercised too.
async fn serve(
    prefix: &str,
    script: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static,
) -> Server {
    let log = Arc::new(Mutex::new(Vec::new()));
    let state = ServerState {
        script: Arc::new(script),
        log: Arc::clone(&log),
    };
    let app = Router::new().fallback(handle).with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    Server {
        base: format!("http://{addr}{prefix}"),
        log,
    }
}

/// A scripted server ([`serve`]) that gives every request the same answer.
async fn serve_always(prefix: &str, reply: Reply) -> Server {
    serve(prefix, move |_, _| reply.clone()).await
}

/// A scripted server for an ambiguous create: a POST makes the resource
/// and is answered with `lost`, an answer that does not tell the client it
/// worked; every other request gets `listing(made)`, `made` being whether
/// a POST came first. That flag is returned with the server.
async fn serve_ambiguous_create(
    prefix: &str,
    lost: Reply,
    listing: impl Fn(bool) -> Reply + Send + Sync + 'static,
) -> (Server, Arc<Mutex<bool>>) {
    let made = Arc::new(Mutex::new(false));
    let seen_made = Arc::clone(&made);
    let server = serve(prefix, move |seen, _| {
        if seen.method == "POST" {
            *seen_made.lock().unwrap() = true;
            return lost.clone();
        }
        listing(*seen_made.lock().unwrap())
    })
    .await;
    (server, made)
}

/// An address on loopback where nothing listens.
async fn closed_port() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

fn fast_http() -> HttpOptions {
    HttpOptions {
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(5),
        max_attempts: 4,
        deadline: Duration::from_secs(10),
        min_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(50),
        rate_per_second: 1000.0,
        burst: 1000,
    }
}

fn neon_at(base: &str, http: HttpOptions) -> NeonClient {
    let options = NeonOptions {
        http,
        poll_interval: Duration::from_millis(20),
    };
    NeonClient::new(base, Secret::new(NEON_KEY), options).unwrap()
}

fn neon(server: &Server) -> NeonClient {
    neon_at(&server.base, fast_http())
}

fn fly_with(server: &Server, token: &str) -> FlyClient {
    let options = FlyOptions {
        http: fast_http(),
        lookup_settle: Duration::from_millis(10),
    };
    FlyClient::new(&server.base, Secret::new(token), options).unwrap()
}

fn fly(server: &Server) -> FlyClient {
    fly_with(server, "fo1_plaintoken")
}

fn branch_json(id: &str, name: &str, parent: &str) -> Value {
    json!({"id": id, "project_id": "p1", "name": name, "parent_id": parent,
           "current_state": "ready", "default": false, "protected": false})
}

fn op_json(id: &str, action: &str, status: &str) -> Value {
    json!({"id": id, "project_id": "p1", "action": action, "status": status, "failures_count": 0})
}

fn machine_json(id: &str, tag: &str, state: &str) -> Value {
    json!({"id": id, "name": id, "state": state, "region": "ord", "instance_id": "01HX",
           "host_status": "ok",
           "config": {"image": "registry.fly.io/t:1", "metadata": {ITEM_TAG: tag},
                      "env": {"DATABASE_URL": "postgresql://u:pw@h/db"}}})
}

/// A machine to create in region `ord` with `config`, started at once.
fn machine_spec(config: Value) -> CreateMachine {
    CreateMachine {
        name: None,
        region: Some("ord".to_string()),
        config: MachineConfig::new(config),
        skip_launch: false,
    }
}

fn spec(tag: &str) -> CreateMachine {
    machine_spec(json!({
        "image": "registry.fly.io/t:1",
        "env": {"DATABASE_URL": "postgresql://u:newpw@h/db"},
        "metadata": {ITEM_TAG: tag},
    }))
}

// ---------------------------------------------------------------- retries

#[tokio::test]
async fn a_429_is_retried_no_sooner_than_its_retry_after() {
    let server = serve("/api/v2", |_, n| match n {
        0 => Reply::json(429, json!({"code": "", "message": "rate limited"}))
            .header("retry-after", "1"),
        _ => Reply::json(200, json!({"branch": branch_json("br-a", "a", "br-main")})),
    })
    .await;
    let client = neon(&server);
    let started = Instant::now();
    let branch = client.get_branch("p1", "br-a").await.unwrap();
    assert_eq!(branch.map(|b| b.id).as_deref(), Some("br-a"));
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[1].at - requests[0].at >= Duration::from_secs(1));
    assert!(started.elapsed() >= Duration::from_secs(1));
    let counters = client.counters();
    assert_eq!(
        (counters.requests, counters.retries, counters.rate_limited),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn a_503_with_an_http_date_retry_after_is_honoured() {
    let server = serve("/api/v2", |_, n| match n {
        0 => {
            let when = chrono::Utc::now() + chrono::Duration::seconds(2);
            let date = when.format("%a, %d %b %Y %H:%M:%S GMT").to_string();
            Reply::empty(503).header("retry-after", date)
        }
        _ => Reply::json(
            200,
            json!({"roles": [{"name": "neondb_owner", "branch_id": "br-a"}]}),
        ),
    })
    .await;
    let client = neon(&server);
    let started = Instant::now();
    let roles = client.list_roles("p1", "br-a").await.unwrap();
    assert_eq!(roles[0].name, "neondb_owner");
    // The date has one-second resolution, so at least one whole second remains.
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert_eq!(client.counters().server_errors, 1);
}

#[tokio::test]
async fn neon_423_locked_is_waited_out_and_retried() {
    let server = serve("/api/v2", |_, n| match n {
        0 | 1 => Reply::json(
            423,
            json!({"code": "", "message": "project already has running operations, scheduling of new ones is prohibited"}),
        ),
        _ => Reply::json(200, json!({"role": {"name": "r", "password": "NEWPASSWORD"},
                                       "operations": [op_json("op-1", "apply_config", "running")]})),
    })
    .await;
    let client = neon(&server);
    let reset = client.reset_password("p1", "br-a", "r").await.unwrap();
    assert_eq!(reset.operations.len(), 1);
    let password = reset.password.expect("the reset's password");
    assert_eq!(password.expose(), "NEWPASSWORD");
    assert_eq!(
        server.count(
            "POST",
            "/api/v2/projects/p1/branches/br-a/roles/r/reset_password"
        ),
        3
    );
    assert_eq!(client.counters().locked, 2);
}

#[tokio::test]
async fn locked_answers_do_not_use_up_the_attempt_budget() {
    let server = serve("/api/v2", |_, n| {
        if n < 5 {
            Reply::json(423, json!({"code": "", "message": "locked"}))
        } else {
            Reply::json(200, json!({"endpoints": []}))
        }
    })
    .await;
    let client = neon_at(
        &server.base,
        HttpOptions {
            max_attempts: 2,
            ..fast_http()
        },
    );
    client.list_branch_endpoints("p1", "br-a").await.unwrap();
    assert_eq!(server.requests().len(), 6);
}

#[tokio::test]
async fn a_5xx_on_a_get_is_retried() {
    let server = serve("/v1", |_, n| match n {
        0 => Reply::json(500, json!({"error": "internal"})),
        1 => Reply::json(502, json!({"error": "bad gateway"})),
        _ => Reply::json(200, machine_json("m1", "t", "started")),
    })
    .await;
    let client = fly(&server);
    let machine = client.get_machine("app", "m1").await.unwrap().unwrap();
    assert_eq!(machine.id, "m1");
    assert_eq!(server.requests().len(), 3);
    assert_eq!(client.counters().server_errors, 2);
}

#[tokio::test]
async fn a_408_on_a_get_is_retried() {
    let server = serve("/v1", |_, n| match n {
        0 => Reply::json(408, json!({"error": "request timed out"})),
        _ => Reply::json(200, json!([])),
    })
    .await;
    let machines = fly(&server).list_machines("app", &[], false).await.unwrap();
    assert!(machines.is_empty());
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test]
async fn a_get_that_keeps_failing_gives_up_after_max_attempts() {
    let server = serve_always("/api/v2", Reply::json(500, json!({"message": "boom"}))).await;
    let client = neon(&server);
    let err = client.get_branch("p1", "br-a").await.unwrap_err();
    assert!(
        matches!(err, CloudError::GaveUp { attempts: 4, .. }),
        "{err}"
    );
    assert_eq!(err.status(), Some(500));
    assert_eq!(server.requests().len(), 4);
    assert_eq!(client.counters().retries, 3);
}

#[tokio::test]
async fn a_retry_after_beyond_the_deadline_gives_up_without_waiting() {
    let server = serve_always(
        "/api/v2",
        Reply::json(429, json!({"message": "slow down"})).header("retry-after", "3600"),
    )
    .await;
    let client = neon_at(
        &server.base,
        HttpOptions {
            deadline: Duration::from_secs(5),
            ..fast_http()
        },
    );
    let started = Instant::now();
    let err = client.get_branch("p1", "br-a").await.unwrap_err();
    assert!(matches!(err, CloudError::GaveUp { .. }), "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(3600)));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.requests().len(), 1);
}

// ------------------------------------------------------- no retry on 4xx

#[tokio::test]
async fn a_400_is_returned_at_once_without_retry() {
    let server = serve_always(
        "/api/v2",
        Reply::json(
            400,
            json!({"code": "", "message": "invalid branch name", "request_id": "req-9"}),
        ),
    )
    .await;
    let err = neon(&server)
        .list_databases("p1", "br-a")
        .await
        .unwrap_err();
    match &err {
        CloudError::Status {
            status,
            message,
            request_id,
            path,
            method,
            ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(message, "invalid branch name");
            assert_eq!(request_id.as_deref(), Some("req-9"));
            assert_eq!(path, "/projects/p1/branches/br-a/databases");
            assert_eq!(method, "GET");
        }
        other => panic!("expected a status error, got {other}"),
    }
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_missing_branch_is_none_not_an_error() {
    let server = serve_always(
        "/api/v2",
        Reply::json(404, json!({"code": "", "message": "branch not found"})),
    )
    .await;
    assert_eq!(
        neon(&server).get_branch("p1", "br-gone").await.unwrap(),
        None
    );
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn deleting_what_is_already_gone_succeeds() {
    let server = serve("/", |seen, _| {
        if seen.path.contains("/branches/") {
            Reply::empty(204)
        } else {
            Reply::json(
                404,
                json!({"message": "not found", "error": "machine not found"}),
            )
        }
    })
    .await;
    let neon = neon(&server);
    assert!(neon
        .delete_branch("p1", "br-gone")
        .await
        .unwrap()
        .is_empty());
    assert!(neon
        .delete_endpoint("p1", "ep-gone")
        .await
        .unwrap()
        .is_empty());
    let removal = fly(&server)
        .destroy_machine("app", "m-gone", true)
        .await
        .unwrap();
    assert_eq!(removal, Removal::AlreadyGone);
    let destroy = server
        .requests()
        .into_iter()
        .find(|s| s.method == "DELETE" && s.path.contains("machines"))
        .unwrap();
    assert_eq!(destroy.query, "force=true");
}

// ------------------------------------------------------------ POST safety

#[tokio::test]
async fn a_post_answered_with_5xx_is_not_reposted_by_the_policy() {
    let server = serve_always("/api/v2", Reply::json(500, json!({"message": "internal"}))).await;
    let err = neon(&server).create_project("seed").await.unwrap_err();
    assert!(err.is_ambiguous(), "{err}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn requests_that_never_connected_are_retried_even_for_posts() {
    let base = format!("http://{}/api/v2", closed_port().await);
    let client = neon_at(&base, fast_http());
    let err = client.create_project("seed").await.unwrap_err();
    assert!(
        matches!(&err, CloudError::GaveUp { last, .. } if matches!(**last, CloudError::Network { connect: true, .. })),
        "{err}"
    );
    assert!(!err.is_ambiguous());
    let counters = client.counters();
    assert_eq!((counters.requests, counters.network_errors), (4, 4));
}

#[tokio::test]
async fn an_ambiguous_branch_create_is_recovered_by_lookup_not_a_second_post() {
    // The branch is made, then the answer is lost to a 503.
    let (server, created) = serve_ambiguous_create(
        "/api/v2",
        Reply::json(503, json!({"message": "service unavailable"})),
        |made| {
            let mut branches = vec![branch_json("br-decoy", "tenant-a-run7-old", "br-main")];
            if made {
                branches.push(branch_json("br-new", "tenant-a-run7", "br-main"));
            }
            Reply::json(
                200,
                json!({"branches": branches, "annotations": {}, "pagination": {}}),
            )
        },
    )
    .await;
    let client = neon(&server);
    let annotations = BTreeMap::from([("rekey_run".to_string(), "7".to_string())]);
    let outcome = client
        .create_branch("p1", "br-main", "tenant-a-run7", &annotations)
        .await
        .unwrap();
    assert!(outcome.was_adopted());
    let made = outcome.into_inner();
    assert_eq!(made.branch.id, "br-new");
    assert!(made.operations.is_empty() && made.databases.is_empty() && made.endpoints.is_empty());
    assert_eq!(server.count("POST", "/api/v2/projects/p1/branches"), 1);
    assert!(*created.lock().unwrap());
}

#[tokio::test]
async fn an_ambiguous_create_with_nothing_found_posts_again() {
    let server = serve("/api/v2", |seen, n| match (seen.method.as_str(), n) {
        ("POST", 0) => Reply::json(500, json!({"message": "internal"})),
        ("POST", _) => Reply::json(
            201,
            json!({
                "branch": branch_json("br-new", "tenant-a-run7", "br-main"),
                "endpoints": [{"id": "ep-1", "type": "read_write"}],
                "operations": [op_json("op-1", "create_branch", "running")],
            }),
        ),
        _ => Reply::json(200, json!({"branches": [], "pagination": {}})),
    })
    .await;
    let outcome = neon(&server)
        .create_branch("p1", "br-main", "tenant-a-run7", &BTreeMap::new())
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Created::New(made) if made.branch.id == "br-new" && made.operations.len() == 1)
    );
    assert_eq!(server.count("POST", "/api/v2/projects/p1/branches"), 2);
}

#[tokio::test]
async fn create_branch_asks_for_one_read_write_endpoint_and_sends_annotations() {
    let server = serve_always(
        "/api/v2",
        Reply::json(
            201,
            json!({"branch": branch_json("br-new", "n", "br-main"), "operations": []}),
        ),
    )
    .await;
    let annotations = BTreeMap::from([("rekey_run".to_string(), "7".to_string())]);
    neon(&server)
        .create_branch("p1", "br-main", "n", &annotations)
        .await
        .unwrap();
    let body = server.requests()[0].json();
    assert_eq!(body["branch"], json!({"parent_id": "br-main", "name": "n"}));
    assert_eq!(body["endpoints"], json!([{"type": "read_write"}]));
    assert_eq!(body["annotation_value"], json!({"rekey_run": "7"}));
}

#[tokio::test]
async fn a_409_on_branch_create_adopts_the_existing_branch_with_the_same_parent() {
    let server = serve("/api/v2", |seen, _| match seen.method.as_str() {
        "POST" => Reply::json(
            409,
            json!({"code": "", "message": "branch already exists; branch_name:\"n\""}),
        ),
        _ => Reply::json(
            200,
            json!({"branches": [branch_json("br-old-try", "n", "br-main")], "pagination": {}}),
        ),
    })
    .await;
    let outcome = neon(&server)
        .create_branch("p1", "br-main", "n", &BTreeMap::new())
        .await
        .unwrap();
    assert!(matches!(&outcome, Created::Adopted(made) if made.branch.id == "br-old-try"));
}

#[tokio::test]
async fn a_same_named_branch_with_another_parent_is_never_adopted() {
    let server = serve("/api/v2", |seen, _| match seen.method.as_str() {
        "POST" => Reply::json(409, json!({"message": "branch already exists"})),
        _ => Reply::json(
            200,
            json!({"branches": [branch_json("br-x", "n", "br-other")]}),
        ),
    })
    .await;
    let err = neon(&server)
        .create_branch("p1", "br-main", "n", &BTreeMap::new())
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::Conflict { .. }), "{err}");
}

#[tokio::test]
async fn find_branch_by_name_follows_pagination_and_matches_exactly() {
    let server = serve("/api/v2", |seen, _| {
        if seen.query.contains("cursor=c1") {
            Reply::json(200, json!({
                "branches": [branch_json("br-2", "tenant-a", "br-main")],
                "annotations": {"br-2": {"value": {"rekey_run": "7"}}},
                "pagination": {"next": "c1"},
            }))
        } else {
            Reply::json(200, json!({
                "branches": [branch_json("br-1", "tenant-a-2", "br-main"), branch_json("br-3", "xtenant-a", "br-main")],
                "pagination": {"next": "c1"},
            }))
        }
    })
    .await;
    let found = neon(&server)
        .find_branch_by_name("p1", "tenant-a")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.id, "br-2");
    assert_eq!(
        found.annotations.get("rekey_run").map(String::as_str),
        Some("7")
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests[0].query.contains("search=tenant-a"));
}

// ------------------------------------------------------------ Neon ops

#[tokio::test]
async fn wait_operations_keeps_waiting_through_failed_until_finished() {
    let server = serve("/api/v2", |seen, n| {
        let id = seen.path.rsplit('/').next().unwrap_or("");
        let status = match (id, n) {
            ("op-1", 0) => "running",
            ("op-1", 1) | ("op-1", 2) => "failed",
            _ => "finished",
        };
        Reply::json(
            200,
            json!({"operation": op_json(id, "create_branch", status)}),
        )
    })
    .await;
    let ops: Vec<Operation> = vec![
        serde_json::from_value(op_json("op-1", "create_branch", "scheduling")).unwrap(),
        serde_json::from_value(op_json("op-2", "start_compute", "running")).unwrap(),
        serde_json::from_value(op_json("op-3", "check_availability", "skipped")).unwrap(),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    neon(&server)
        .wait_operations("p1", &ops, deadline)
        .await
        .unwrap();
    assert_eq!(
        server.count("GET", "/api/v2/projects/p1/operations/op-1"),
        4
    );
    assert_eq!(
        server.count("GET", "/api/v2/projects/p1/operations/op-2"),
        1
    );
    assert_eq!(
        server.count("GET", "/api/v2/projects/p1/operations/op-3"),
        0
    );
}

/// Several pending operations are read with one listing of the project's
/// operations per round, not one GET each; one the listing leaves out is
/// read on its own; a single pending operation is read with a GET.
#[tokio::test]
async fn several_pending_operations_are_polled_with_one_listing() {
    let server = serve("/api/v2", |seen, n| {
        if seen.path.ends_with("/operations") {
            let (a, b) = if n == 0 { ("running", "running") } else { ("finished", "running") };
            return Reply::json(
                200,
                json!({"operations": [op_json("op-2", "start_compute", b), op_json("op-1", "create_branch", a)],
                       "pagination": {"cursor": "op-1"}}),
            );
        }
        let id = seen.path.rsplit('/').next().unwrap_or("");
        Reply::json(200, json!({"operation": op_json(id, "x", "finished")}))
    })
    .await;
    let ops: Vec<Operation> = vec![
        serde_json::from_value(op_json("op-1", "create_branch", "running")).unwrap(),
        serde_json::from_value(op_json("op-2", "start_compute", "running")).unwrap(),
        serde_json::from_value(op_json("op-9", "apply_config", "running")).unwrap(),
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    neon(&server)
        .wait_operations("p1", &ops, deadline)
        .await
        .unwrap();
    // Round 1 lists (op-9 is not shown: read on its own, finished); round
    // 2 lists again (op-2 still running); round 3 has op-2 alone: a GET.
    assert_eq!(server.count("GET", "/api/v2/projects/p1/operations"), 2);
    assert_eq!(
        server.count("GET", "/api/v2/projects/p1/operations/op-9"),
        1
    );
    assert_eq!(
        server.count("GET", "/api/v2/projects/p1/operations/op-1"),
        0
    );
    assert_eq!(
        server.count("GET", "/api/v2/projects/p1/operations/op-2"),
        1
    );
}

#[tokio::test]
async fn wait_operations_stops_on_error_or_cancelled() {
    let server = serve_always(
        "/api/v2",
        Reply::json(
            200,
            json!({"operation": {"id": "op-1", "action": "start_compute", "status": "error",
                                 "error": "compute failed to start"}}),
        ),
    )
    .await;
    let ops: Vec<Operation> =
        vec![serde_json::from_value(op_json("op-1", "start_compute", "running")).unwrap()];
    let err = neon(&server)
        .wait_operations("p1", &ops, Instant::now() + Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, CloudError::OperationFailed { status, .. } if status == "error"),
        "{err}"
    );
}

#[tokio::test]
async fn wait_operations_ends_at_the_deadline() {
    let server = serve_always(
        "/api/v2",
        Reply::json(
            200,
            json!({"operation": op_json("op-1", "create_branch", "running")}),
        ),
    )
    .await;
    let ops: Vec<Operation> =
        vec![serde_json::from_value(op_json("op-1", "create_branch", "running")).unwrap()];
    assert_eq!(ops[0].status, OperationStatus::Running);
    let err = neon(&server)
        .wait_operations("p1", &ops, Instant::now() + Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::DeadlinePassed { .. }), "{err}");
}

#[tokio::test]
async fn connection_uri_comes_back_as_a_secret_and_asks_for_the_branch() {
    let server = serve_always(
        "/api/v2",
        Reply::json(200, json!({"uri": "postgresql://neondb_owner:s3cr3tpw@ep-1.aws.neon.tech/neondb?sslmode=require"})),
    )
    .await;
    let uri = neon(&server)
        .connection_uri("p1", "br-new", "neondb", "neondb_owner", true)
        .await
        .unwrap();
    assert!(uri.expose().contains("s3cr3tpw"));
    assert!(!format!("{uri:?}").contains("s3cr3tpw"));
    let query = &server.requests()[0].query;
    for part in [
        "branch_id=br-new",
        "database_name=neondb",
        "role_name=neondb_owner",
        "pooled=true",
    ] {
        assert!(query.contains(part), "{query}");
    }
}

// ------------------------------------------------------------ redaction

#[tokio::test]
async fn errors_never_show_the_token_a_uri_password_or_query_values() {
    let server = serve_always(
        "/api/v2",
        Reply::json(
            400,
            json!({"message": "cannot parse postgresql://owner:hunter2@ep-1/db"}),
        ),
    )
    .await;
    let client = neon(&server);
    let status_error = client
        .connection_uri("p1", "br-a", "db-QUERYVALUE", "neondb_owner", false)
        .await
        .unwrap_err();
    let base = format!("http://{}/api/v2", closed_port().await);
    let network_error = neon_at(
        &base,
        HttpOptions {
            max_attempts: 1,
            ..fast_http()
        },
    )
    .connection_uri("p1", "br-a", "db-QUERYVALUE", "neondb_owner", false)
    .await
    .unwrap_err();
    for err in [status_error, network_error] {
        for shown in [err.to_string(), format!("{err:?}")] {
            for secret in [NEON_KEY, "hunter2", "QUERYVALUE", "database_name"] {
                assert!(!shown.contains(secret), "{secret} leaked into: {shown}");
            }
            assert!(shown.contains("/projects/p1/connection_uri"), "{shown}");
        }
    }
}

#[tokio::test]
async fn a_decode_error_does_not_quote_the_body() {
    let server = serve_always(
        "/api/v2",
        Reply::json(200, json!({"uri": ["postgresql://u:hunter2@h/db"]})),
    )
    .await;
    let err = neon(&server)
        .connection_uri("p1", "b", "d", "r", false)
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::Decode { .. }), "{err}");
    assert!(!err.to_string().contains("hunter2") && !format!("{err:?}").contains("hunter2"));
}

// ------------------------------------------------------------ auth

#[tokio::test]
async fn auth_headers_are_bearer_for_neon_and_verbatim_for_flyv1_tokens() {
    let server = serve_always("/", Reply::json(200, json!([]))).await;
    fly_with(&server, "FlyV1 fm2_lJPE,fm2_abc")
        .list_machines("app", &[], false)
        .await
        .unwrap();
    fly_with(&server, "fo1_plain")
        .list_machines("app", &[], false)
        .await
        .unwrap();
    let _ = neon(&server).list_roles("p1", "b").await;
    let auths: Vec<Option<String>> = server.requests().into_iter().map(|s| s.auth).collect();
    assert_eq!(
        auths,
        vec![
            Some("FlyV1 fm2_lJPE,fm2_abc".to_string()),
            Some("Bearer fo1_plain".to_string()),
            Some(format!("Bearer {NEON_KEY}")),
        ]
    );
}

// ------------------------------------------------------------ rate limit

#[tokio::test]
async fn the_rate_limiter_spaces_requests_to_the_configured_rate() {
    let server = serve_always("/api/v2", Reply::json(200, json!({"roles": []}))).await;
    let client = neon_at(
        &server.base,
        HttpOptions {
            rate_per_second: 10.0,
            burst: 1,
            ..fast_http()
        },
    );
    let calls = (0..6).map(|_| client.list_roles("p1", "b"));
    for result in futures::future::join_all(calls).await {
        result.unwrap();
    }
    let times: Vec<Instant> = server.requests().iter().map(|s| s.at).collect();
    assert_eq!(times.len(), 6);
    let span = *times.iter().max().unwrap() - *times.iter().min().unwrap();
    // Six requests at 10/s with no burst need five 100 ms intervals; a few
    // ms of slack absorb when each arrival is stamped.
    assert!(span >= Duration::from_millis(480), "span {span:?}");
}

// ------------------------------------------------------------ Fly machines

#[tokio::test]
async fn fly_create_adopts_a_machine_already_tagged_without_posting() {
    let server = serve("/v1", |seen, _| match seen.method.as_str() {
        "GET" => Reply::json(
            200,
            json!([machine_json("m-old-try", "run7-org1", "started")]),
        ),
        _ => Reply::json(500, json!({"error": "must not be called"})),
    })
    .await;
    let outcome = fly(&server)
        .create_machine("app", &spec("run7-org1"), true)
        .await
        .unwrap();
    assert!(matches!(&outcome, Created::Adopted(m) if m.id == "m-old-try"));
    assert_eq!(server.count("POST", "/v1/apps/app/machines"), 0);
    assert!(server.requests()[0]
        .query
        .contains("metadata.rekey_item=run7-org1"));
}

#[tokio::test]
async fn fly_create_after_a_timeout_finds_the_machine_by_its_tag() {
    // Created, but the answer comes after the client stopped waiting.
    let (server, _) = serve_ambiguous_create(
        "/v1",
        Reply::json(200, machine_json("m-new", "run7-org1", "created"))
            .after(Duration::from_secs(2)),
        |made| {
            let machines = if made {
                vec![machine_json("m-new", "run7-org1", "starting")]
            } else {
                vec![]
            };
            Reply::json(200, Value::Array(machines))
        },
    )
    .await;
    let options = FlyOptions {
        http: HttpOptions {
            request_timeout: Duration::from_millis(300),
            ..fast_http()
        },
        lookup_settle: Duration::from_millis(10),
    };
    let client = FlyClient::new(&server.base, Secret::new("t"), options).unwrap();
    let outcome = client
        .create_machine("app", &spec("run7-org1"), true)
        .await
        .unwrap();
    assert!(matches!(&outcome, Created::Adopted(m) if m.id == "m-new"));
    assert_eq!(server.count("POST", "/v1/apps/app/machines"), 1);
    let posted = server
        .requests()
        .into_iter()
        .find(|s| s.method == "POST")
        .unwrap()
        .json();
    assert_eq!(posted["config"]["metadata"][ITEM_TAG], "run7-org1");
    assert_eq!(posted["region"], "ord");
}

#[tokio::test]
async fn fly_create_refused_with_any_status_is_settled_by_the_tag_lookup_not_the_code() {
    // What Machines_create answers for a taken name is not documented, so
    // the client must not read anything into the status: the listing by
    // tag decides. The first listing lags (it is eventually consistent) and
    // misses the machine an earlier attempt made; the POST is refused with a
    // status no document ties to "exists"; the second listing finds it.
    let server = serve("/v1", |seen, before| match seen.method.as_str() {
        "GET" if before == 0 => Reply::json(200, json!([])),
        "GET" => Reply::json(
            200,
            json!([machine_json("m-earlier", "run7-org1", "started")]),
        ),
        _ => Reply::json(400, json!({"error": "invalid name: already in use"})),
    })
    .await;
    let outcome = fly(&server)
        .create_machine("app", &spec("run7-org1"), true)
        .await
        .unwrap();
    assert!(
        matches!(&outcome, Created::Adopted(m) if m.id == "m-earlier"),
        "{outcome:?}"
    );
    assert_eq!(server.count("POST", "/v1/apps/app/machines"), 1);
}

#[tokio::test]
async fn fly_create_refused_with_nothing_tagged_is_the_refusal() {
    let server = serve("/v1", |seen, _| match seen.method.as_str() {
        "GET" => Reply::json(200, json!([])),
        _ => Reply::json(409, json!({"error": "name taken by another machine"})),
    })
    .await;
    let err = fly(&server)
        .create_machine("app", &spec("run7-org1"), true)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert_eq!(server.count("POST", "/v1/apps/app/machines"), 1);
    assert_eq!(
        server.count("GET", "/v1/apps/app/machines"),
        2,
        "looked up before and after"
    );
}

#[tokio::test]
async fn fly_create_refuses_when_two_live_machines_carry_the_tag() {
    let server = serve_always(
        "/v1",
        Reply::json(
            200,
            json!([
                machine_json("m1", "t", "started"),
                machine_json("m2", "t", "started")
            ]),
        ),
    )
    .await;
    let err = fly(&server)
        .create_machine("app", &spec("t"), true)
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::Conflict { .. }), "{err}");
}

#[tokio::test]
async fn fly_list_filters_by_metadata_even_when_the_server_does_not() {
    let server = serve_always(
        "/v1",
        Reply::json(
            200,
            json!([
                machine_json("m1", "mine", "started"),
                machine_json("m2", "other", "started")
            ]),
        ),
    )
    .await;
    let found = fly(&server)
        .list_machines("app", &[(ITEM_TAG, "mine")], true)
        .await
        .unwrap();
    assert_eq!(
        found.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        vec!["m1"]
    );
    assert!(server.requests()[0].query.contains("include_deleted=true"));
}

#[tokio::test]
async fn fly_wait_calls_again_after_408_until_the_state_is_reached() {
    let server = serve("/v1", |_, n| match n {
        0 => Reply::json(404, json!({"error": "machine not found"})),
        1 | 2 => Reply::json(408, json!({"error": "deadline_exceeded"})),
        _ => Reply::json(200, json!({"ok": true})),
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    fly(&server)
        .wait_for_state("app", "m1", WaitState::Started, Some("01HX"), deadline)
        .await
        .unwrap();
    let requests = server.requests();
    assert_eq!(requests.len(), 4);
    let query = &requests[0].query;
    assert!(
        query.contains("state=started") && query.contains("instance_id=01HX"),
        "{query}"
    );
    let timeout: u64 = query
        .split('&')
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!((1..=60).contains(&timeout), "{query}");
}

#[tokio::test]
async fn fly_wait_for_destroyed_treats_404_as_done() {
    let server = serve_always(
        "/v1",
        Reply::json(404, json!({"error": "machine not found"})),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    fly(&server)
        .wait_for_state("app", "m1", WaitState::Destroyed, None, deadline)
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn fly_wait_gives_up_on_400() {
    let server = serve_always(
        "/v1",
        Reply::json(400, json!({"error": "machine failed to reach desired state, and restart policy was set to no restart"})),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = fly(&server)
        .wait_for_state("app", "m1", WaitState::Started, None, deadline)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(400));
    assert!(err.to_string().contains("failed to reach desired state"));
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn fly_create_app_adopts_an_app_that_already_exists() {
    let server = serve("/v1", |seen, _| match seen.method.as_str() {
        "POST" => Reply::json(
            422,
            json!({"error": "Name has already been taken", "status": "name_taken"}),
        ),
        _ => Reply::json(200, json!({"id": "a1", "name": "tenant-app"})),
    })
    .await;
    let outcome = fly(&server)
        .create_app("tenant-app", "personal")
        .await
        .unwrap();
    assert!(outcome.was_adopted());
    assert_eq!(
        server.requests()[0].json(),
        json!({"app_name": "tenant-app", "org_slug": "personal"})
    );
}

// ---------------------------------------------------------------- Fly leases, graceful stop, health

/// A machine whose config has two health checks, with their statuses.
fn checked_machine_json(state: &str, alive: &str, health: &str) -> Value {
    json!({"id": "m1", "state": state, "instance_id": "01HX", "host_status": "ok",
           "config": {"image": "i", "checks": {"alive": {"type": "tcp", "port": 8080},
                                               "health": {"type": "http", "port": 8080, "path": "/h"}}},
           "checks": [
               {"name": "alive", "status": alive, "output": "tenant app says hunter2"},
               {"name": "health", "status": health, "output": "tenant app says hunter2"}]})
}

#[tokio::test]
async fn fly_lease_is_read_from_the_docs_wrapper_and_its_nonce_goes_with_every_change() {
    // The prose docs answer 201 `{"status": "success", "data": Lease}`; the
    // OpenAPI answers the bare Lease (the fake test below covers that).
    let server = serve("/v1", |seen, _| match (seen.method.as_str(), seen.path.as_str()) {
        ("POST", "/v1/apps/app/machines/m1/lease") => Reply::json(
            201,
            json!({"status": "success", "data": {"nonce": "nonce-1", "expires_at": 1_900_000_000,
                   "owner": "ops@example.com", "description": "rekey r7", "version": "01HX"}}),
        ),
        _ => Reply::json(200, json!({"ok": true})),
    })
    .await;
    let client = fly(&server);
    let lease = client
        .acquire_lease("app", "m1", Duration::from_secs(30), "rekey r7")
        .await
        .unwrap();
    assert_eq!(lease.expires_at, 1_900_000_000);
    assert_eq!(lease.owner, "ops@example.com");
    assert!(
        !format!("{lease:?}").contains("nonce-1"),
        "Debug hides the nonce"
    );
    let first = &server.requests()[0];
    assert_eq!(first.json(), json!({"ttl": 30, "description": "rekey r7"}));
    assert_eq!(first.nonce, None, "taking a lease sends no nonce");

    client
        .renew_lease("app", "m1", &lease, Duration::from_secs(60))
        .await
        .unwrap();
    client
        .stop_machine_with("app", "m1", &StopOptions::default(), Some(&lease))
        .await
        .unwrap();
    client
        .destroy_machine_with("app", "m1", true, Some(&lease))
        .await
        .unwrap();
    assert_eq!(
        client.release_lease("app", "m1", &lease).await.unwrap(),
        Removal::Removed
    );
    let requests = server.requests();
    assert_eq!(requests.len(), 5);
    for seen in &requests[1..] {
        assert_eq!(
            seen.nonce.as_deref(),
            Some("nonce-1"),
            "{} {}",
            seen.method,
            seen.path
        );
    }
    assert_eq!(requests[1].json()["ttl"], 60);
    assert!(requests[4].is("DELETE", "/v1/apps/app/machines/m1/lease"));
}

#[tokio::test]
async fn fly_lease_release_after_it_lapsed_is_already_gone() {
    let server = serve("/v1", |seen, _| match seen.method.as_str() {
        "POST" => Reply::json(200, json!({"nonce": "n", "expires_at": 1})),
        _ => Reply::json(404, json!({"error": "no lease is held on this machine"})),
    })
    .await;
    let client = fly(&server);
    let lease = client
        .acquire_lease("app", "m1", Duration::from_secs(1), "")
        .await
        .unwrap();
    assert_eq!(
        client.release_lease("app", "m1", &lease).await.unwrap(),
        Removal::AlreadyGone
    );
}

#[tokio::test]
async fn fly_lease_held_by_someone_else_is_refused_without_retrying() {
    let server = serve_always(
        "/v1",
        Reply::json(
            409,
            json!({"error": "machine m1 is leased by someone else"}),
        ),
    )
    .await;
    let err = fly(&server)
        .acquire_lease("app", "m1", Duration::from_secs(30), "rekey")
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn fly_stop_then_destroy_stops_waits_for_stopped_then_destroys_without_force() {
    let server = serve("/v1", |seen, _| {
        match (seen.method.as_str(), seen.path.as_str()) {
            ("GET", "/v1/apps/app/machines/m1") => {
                Reply::json(200, machine_json("m1", "t", "started"))
            }
            _ => Reply::json(200, json!({"ok": true})),
        }
    })
    .await;
    let stop = StopOptions {
        signal: Some("SIGTERM".to_string()),
        timeout: Some(Duration::from_secs(30)),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let removal = fly(&server)
        .stop_then_destroy("app", "m1", &stop, None, deadline)
        .await
        .unwrap();
    assert_eq!(removal, Removal::Removed);
    let requests = server.requests();
    let calls: Vec<(String, String)> = requests
        .iter()
        .map(|s| (s.method.clone(), s.path.clone()))
        .collect();
    let expected = [
        ("GET", "/v1/apps/app/machines/m1"),
        ("POST", "/v1/apps/app/machines/m1/stop"),
        ("GET", "/v1/apps/app/machines/m1/wait"),
        ("DELETE", "/v1/apps/app/machines/m1"),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(calls, expected);
    assert_eq!(
        requests[1].json(),
        json!({"signal": "SIGTERM", "timeout": "30s"})
    );
    let wait = &requests[2].query;
    assert!(
        wait.contains("state=stopped") && wait.contains("instance_id=01HX"),
        "{wait}"
    );
    assert_eq!(requests[3].query, "force=false");
}

#[tokio::test]
async fn fly_stop_then_destroy_of_a_machine_already_gone_changes_nothing() {
    let server = serve_always(
        "/v1",
        Reply::json(404, json!({"error": "machine not found"})),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let removal = fly(&server)
        .stop_then_destroy("app", "m1", &StopOptions::default(), None, deadline)
        .await
        .unwrap();
    assert_eq!(removal, Removal::AlreadyGone);
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn fly_wait_healthy_waits_until_every_configured_check_passes() {
    let server = serve("/v1", |_, before| match before {
        0 => Reply::json(
            200,
            checked_machine_json("starting", "critical", "critical"),
        ),
        1 => Reply::json(200, checked_machine_json("started", "passing", "warning")),
        _ => Reply::json(200, checked_machine_json("started", "passing", "passing")),
    })
    .await;
    let machine = fly(&server)
        .wait_healthy("app", "m1", Duration::from_secs(10))
        .await
        .unwrap();
    assert!(machine.checks.iter().all(|c| c.status == "passing"));
    assert_eq!(server.requests().len(), 3);
}

#[tokio::test]
async fn fly_wait_healthy_gives_up_at_its_timeout_naming_checks_but_not_their_output() {
    let server = serve_always(
        "/v1",
        Reply::json(200, checked_machine_json("started", "passing", "critical")),
    )
    .await;
    let err = fly(&server)
        .wait_healthy("app", "m1", Duration::from_millis(200))
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::DeadlinePassed { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("health: critical"), "{text}");
    assert!(
        !text.contains("hunter2"),
        "check output is the tenant's text: {text}"
    );
}

#[tokio::test]
async fn fly_wait_healthy_without_configured_checks_needs_only_started() {
    let server = serve_always("/v1", Reply::json(200, machine_json("m1", "t", "started"))).await;
    fly(&server)
        .wait_healthy("app", "m1", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn fly_wait_healthy_stops_at_once_for_a_machine_that_stopped() {
    let server = serve_always(
        "/v1",
        Reply::json(200, checked_machine_json("stopped", "critical", "critical")),
    )
    .await;
    let err = fly(&server)
        .wait_healthy("app", "m1", Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::NotHealthy { .. }), "{err}");
    assert_eq!(server.requests().len(), 1);
}

// ---------------------------------------------------------------- against the fake cloud

fn fly_at_fake(fake: &FakeCloud) -> FlyClient {
    let options = FlyOptions {
        http: fast_http(),
        lookup_settle: Duration::from_millis(10),
    };
    FlyClient::new(&fake.fly_url(), Secret::new("fo1_t"), options).unwrap()
}

fn spec_with_checks(tag: &str) -> CreateMachine {
    machine_spec(json!({
        "image": "registry.fly.io/t:1",
        "metadata": {ITEM_TAG: tag},
        "checks": {"health": {"type": "http", "port": 8080, "path": "/health"}},
    }))
}

/// The fake cloud started with `config`, a client of its Fly API, and a
/// machine with a health check that the client created in a new app
/// `tenant-1`.
async fn fake_with_a_checked_machine(config: FakeConfig) -> (FakeCloud, FlyClient, Machine) {
    let fake = FakeCloud::start(config).await.unwrap();
    let client = fly_at_fake(&fake);
    client.create_app("tenant-1", "personal").await.unwrap();
    let machine = client
        .create_machine("tenant-1", &spec_with_checks("r1-org1"), true)
        .await
        .unwrap()
        .into_inner();
    (fake, client, machine)
}

#[tokio::test]
async fn fly_client_leases_stops_and_destroys_a_machine_of_the_fake_only_with_the_nonce() {
    let (fake, client, machine) = fake_with_a_checked_machine(FakeConfig {
        boot_duration: Duration::from_millis(100),
        ..FakeConfig::default()
    })
    .await;
    let healthy = client
        .wait_healthy("tenant-1", &machine.id, Duration::from_secs(20))
        .await
        .unwrap();
    assert_eq!(healthy.checks[0].status, "passing");

    let lease = client
        .acquire_lease("tenant-1", &machine.id, Duration::from_secs(60), "rekey r1")
        .await
        .unwrap();
    let lease = client
        .renew_lease("tenant-1", &machine.id, &lease, Duration::from_secs(120))
        .await
        .unwrap();
    let refused = client
        .destroy_machine("tenant-1", &machine.id, true)
        .await
        .unwrap_err();
    assert_eq!(refused.status(), Some(409), "{refused}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let removal = client
        .stop_then_destroy(
            "tenant-1",
            &machine.id,
            &StopOptions::default(),
            Some(&lease),
            deadline,
        )
        .await
        .unwrap();
    assert_eq!(removal, Removal::Removed);
    assert_eq!(fake.state()["fly"]["apps"][0]["live_machines"], 0);
    client
        .release_lease("tenant-1", &machine.id, &lease)
        .await
        .unwrap();
}

#[tokio::test]
async fn fly_client_wait_healthy_times_out_when_the_fakes_checks_fail() {
    let (_fake, client, machine) = fake_with_a_checked_machine(FakeConfig {
        fly_failing_checks: true,
        ..FakeConfig::default()
    })
    .await;
    let err = client
        .wait_healthy("tenant-1", &machine.id, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, CloudError::DeadlinePassed { .. }), "{err}");
    assert!(err.to_string().contains("health: critical"), "{err}");
}
