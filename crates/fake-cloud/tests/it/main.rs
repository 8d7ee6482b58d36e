//! Integration tests of the fake cloud: each test starts the fake in-process
//! on a loopback port and speaks raw HTTP to it with reqwest, the way the
//! real clients will, without any of the project's client code. Two tests
//! run the `fake-cloud` binary itself (its listening line, SIGTERM, and its
//! refusal of non-loopback addresses).
//!
//! The tests are the fake's specification: each name states one behaviour
//! of Neon or Fly that the fake must reproduce.

#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::time::{Duration, Instant};

use fake_cloud::{FakeCloud, FakeConfig};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A running fake and a client for it.
struct Cloud {
    fake: FakeCloud,
    http: reqwest::Client,
}

/// An answer: status, `Retry-After` if any, and the body as JSON (`Null`
/// when empty).
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    retry_after: Option<String>,
    body: Value,
}

async fn cloud(config: FakeConfig) -> Cloud {
    let fake = FakeCloud::start(config)
        .await
        .unwrap_or_else(|e| panic!("fake cloud did not start: {e}"));
    Cloud {
        fake,
        http: reqwest::Client::new(),
    }
}

async fn fast_cloud() -> Cloud {
    cloud(FakeConfig::default()).await
}

/// A fast fake holding one new project; returns it with the project's id
/// and its default branch's.
async fn cloud_with_project() -> (Cloud, String, String) {
    let cloud = fast_cloud().await;
    let (project, main) = cloud.project().await;
    (cloud, project, main)
}

/// A fast fake with the Fly app `tenant-1`.
async fn cloud_with_app() -> Cloud {
    let cloud = fast_cloud().await;
    cloud.app("tenant-1").await;
    cloud
}

/// A fast fake with the app `tenant-1` and one started `nginx` machine in
/// it; returns it with the machine's id.
async fn cloud_with_machine() -> (Cloud, String) {
    let cloud = cloud_with_app().await;
    let id = cloud.nginx_machine("tenant-1").await;
    (cloud, id)
}

/// The default configuration, but Neon operations take `ms`.
fn operations_taking(ms: u64) -> FakeConfig {
    FakeConfig {
        op_duration: millis(ms),
        ..FakeConfig::default()
    }
}

/// The default configuration, but Fly machines take `ms` to boot or stop.
fn boots_taking(ms: u64) -> FakeConfig {
    FakeConfig {
        boot_duration: millis(ms),
        ..FakeConfig::default()
    }
}

/// The default configuration with this id seed.
fn seeded(seed: u64) -> FakeConfig {
    FakeConfig {
        seed,
        ..FakeConfig::default()
    }
}

/// The default configuration with a token bucket per API of `per_second`
/// and `burst`; `retry_after`: whether its 429s say when to come back.
fn rate_limited(per_second: u32, burst: u32, retry_after: bool) -> FakeConfig {
    FakeConfig {
        rate_limit: Some((per_second, burst)),
        retry_after,
        ..FakeConfig::default()
    }
}

/// The path of a machine of the app `tenant-1`.
fn machine_path(id: &str) -> String {
    format!("/apps/tenant-1/machines/{id}")
}

/// The path of a branch.
fn branch_path(project: &str, branch: &str) -> String {
    format!("/projects/{project}/branches/{branch}")
}

impl Cloud {
    /// One request; `header` is an extra `(name, value)` to send.
    async fn call(
        &self,
        method: Method,
        url: String,
        body: Option<Value>,
        header: Option<(&str, &str)>,
    ) -> Reply {
        let mut request = self.http.request(method, &url);
        if let Some(body) = body {
            request = request.json(&body);
        }
        if let Some((name, value)) = header {
            request = request.header(name, value);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = response.status();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = response
            .bytes()
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{url}: not JSON ({e}): {bytes:?}"))
        };
        Reply {
            status,
            retry_after,
            body,
        }
    }

    /// A Neon call with `Authorization: <auth>`.
    async fn neon_as(&self, auth: &str, method: Method, path: &str) -> Reply {
        let url = format!("{}{path}", self.fake.neon_url());
        self.call(method, url, None, Some(("Authorization", auth)))
            .await
    }

    async fn neon(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let url = format!("{}{path}", self.fake.neon_url());
        self.call(method, url, body, None).await
    }

    async fn fly(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        self.call(method, format!("{}{path}", self.fake.fly_url()), body, None)
            .await
    }

    async fn neon_get(&self, path: &str) -> Reply {
        self.neon(Method::GET, path, None).await
    }

    async fn neon_post(&self, path: &str, body: Value) -> Reply {
        self.neon(Method::POST, path, Some(body)).await
    }

    async fn neon_delete(&self, path: &str) -> Reply {
        self.neon(Method::DELETE, path, None).await
    }

    async fn fly_get(&self, path: &str) -> Reply {
        self.fly(Method::GET, path, None).await
    }

    async fn fly_post(&self, path: &str, body: Option<Value>) -> Reply {
        self.fly(Method::POST, path, body).await
    }

    async fn fly_delete(&self, path: &str) -> Reply {
        self.fly(Method::DELETE, path, None).await
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let url = format!("http://{}/_fake{path}", self.fake.addr());
        self.call(method, url, body, None).await
    }

    /// `POST /_fake/config` with `patch`.
    async fn configure(&self, patch: Value) -> Reply {
        self.admin(Method::POST, "/config", Some(patch)).await
    }

    /// `POST /_fake/tenants` with `body`.
    async fn register(&self, body: Value) -> Reply {
        self.admin(Method::POST, "/tenants", Some(body)).await
    }

    /// A POST of `body` as it is, not necessarily JSON; returns the status.
    async fn post_raw(&self, url: String, body: &'static str) -> StatusCode {
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        response.status()
    }

    /// `POST /projects`; returns (project id, default branch id).
    async fn project(&self) -> (String, String) {
        let reply = self.neon(Method::POST, "/projects", None).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        (
            text(&reply.body["project"]["id"]),
            text(&reply.body["branch"]["id"]),
        )
    }

    /// A child branch with a read-write endpoint; returns its id.
    async fn branch(&self, project: &str, parent: &str, name: &str) -> String {
        let body = json!({
            "branch": {"parent_id": parent, "name": name},
            "endpoints": [{"type": "read_write"}],
        });
        let reply = self.create_branch(project, body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
        text(&reply.body["branch"]["id"])
    }

    /// `POST /projects/{project}/branches` with `body`, as given.
    async fn create_branch(&self, project: &str, body: Value) -> Reply {
        self.neon_post(&format!("/projects/{project}/branches"), body)
            .await
    }

    /// `POST /projects/{project}/branches` of a branch named `name` under
    /// `parent`, without endpoints.
    async fn bare_branch(&self, project: &str, parent: &str, name: &str) -> Reply {
        let body = json!({"branch": {"parent_id": parent, "name": name}});
        self.create_branch(project, body).await
    }

    /// `reset_password` of `role` on a branch.
    async fn reset_password(&self, project: &str, branch: &str, role: &str) -> Reply {
        self.neon(
            Method::POST,
            &format!("/projects/{project}/branches/{branch}/roles/{role}/reset_password"),
            None,
        )
        .await
    }

    /// Poll every operation in `reply.operations` until it is finished.
    async fn finish(&self, project: &str, reply: &Value) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for op in reply["operations"].as_array().cloned().unwrap_or_default() {
            let path = format!("/projects/{project}/operations/{}", text(&op["id"]));
            loop {
                let polled = self.neon_get(&path).await;
                assert_eq!(polled.status, StatusCode::OK, "{:?}", polled.body);
                if polled.body["operation"]["status"] == "finished" {
                    break;
                }
                assert!(Instant::now() < deadline, "operation never finished");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }

    /// `GET …/connection_uri` of `neondb_owner` on `neondb` of a branch;
    /// `more` is added to the query string.
    async fn connection_uri_reply(&self, project: &str, branch: &str, more: &str) -> Reply {
        let path = format!(
            "/projects/{project}/connection_uri?branch_id={branch}&database_name=neondb&role_name=neondb_owner{more}"
        );
        self.neon_get(&path).await
    }

    async fn connection_uri(&self, project: &str, branch: &str) -> String {
        let reply = self.connection_uri_reply(project, branch, "").await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        text(&reply.body["uri"])
    }

    /// `reveal_password` of `neondb_owner` on a branch.
    async fn password(&self, project: &str, branch: &str) -> String {
        let path = format!(
            "{}/roles/neondb_owner/reveal_password",
            branch_path(project, branch)
        );
        let reply = self.neon_get(&path).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        text(&reply.body["password"])
    }

    /// `POST /apps` of `name` in the `personal` org.
    async fn create_app(&self, name: &str) -> Reply {
        let body = json!({"app_name": name, "org_slug": "personal"});
        self.fly_post("/apps", Some(body)).await
    }

    async fn app(&self, name: &str) {
        let reply = self.create_app(name).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    }

    /// Create a machine that runs plain `nginx`; returns its id.
    async fn nginx_machine(&self, app: &str) -> String {
        let created = self
            .machine(app, json!({"config": {"image": "nginx"}}))
            .await;
        text(&created.body["id"])
    }

    /// A machine of `tenant-1` created with `skip_launch`: it stays
    /// `created`. Returns its id.
    async fn unlaunched_machine(&self) -> String {
        let body = json!({"skip_launch": true, "config": {"image": "nginx"}});
        text(&self.machine("tenant-1", body).await.body["id"])
    }

    /// A Fly call carrying `fly-machine-lease-nonce: <nonce>`.
    async fn fly_leased(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        nonce: &str,
    ) -> Reply {
        let url = format!("{}{path}", self.fake.fly_url());
        self.call(method, url, body, Some(("fly-machine-lease-nonce", nonce)))
            .await
    }

    /// Create a machine; returns the reply.
    async fn machine(&self, app: &str, body: Value) -> Reply {
        self.fly_post(&format!("/apps/{app}/machines"), Some(body))
            .await
    }

    /// `GET …/wait?<query>` on a machine of `tenant-1`.
    async fn wait(&self, id: &str, query: &str) -> Reply {
        self.fly_get(&format!("{}/wait?{query}", machine_path(id)))
            .await
    }
}

fn text(value: &Value) -> String {
    value
        .as_str()
        .unwrap_or_else(|| panic!("expected a string, got {value}"))
        .to_owned()
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// `reply` is a Neon error: `status`, `{"code": "", "message": message}`,
/// and the `request_id` Neon adds.
fn assert_neon_error(reply: &Reply, status: StatusCode, message: &str) {
    assert_eq!(reply.status, status);
    assert_eq!(reply.body["code"], "");
    assert_eq!(reply.body["message"], message);
    assert!(reply.body["request_id"].is_string());
}

/// `key` of every element of the JSON array `list`, as text.
fn texts(list: &Value, key: &str) -> Vec<String> {
    list.as_array()
        .map(|items| items.iter().map(|item| text(&item[key])).collect())
        .unwrap_or_default()
}

/// How many elements the JSON array `list` has (`None`: not an array).
fn len(list: &Value) -> Option<usize> {
    list.as_array().map(Vec::len)
}

// ---------------------------------------------------------------- Neon

#[tokio::test]
async fn a_new_project_has_a_main_branch_owner_role_database_and_endpoint() {
    let cloud = fast_cloud().await;
    let reply = cloud.neon(Method::POST, "/projects", None).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let body = &reply.body;
    assert_eq!(body["branch"]["name"], "main");
    assert_eq!(body["branch"]["default"], true);
    assert!(text(&body["branch"]["id"]).starts_with("br-"));
    assert_eq!(body["roles"][0]["name"], "neondb_owner");
    assert!(body["roles"][0]["password"].is_string());
    assert_eq!(body["databases"][0]["name"], "neondb");
    assert_eq!(body["endpoints"][0]["type"], "read_write");
    assert!(text(&body["endpoints"][0]["id"]).starts_with("ep-"));
    let uri = text(&body["connection_uris"][0]["connection_uri"]);
    assert!(uri.starts_with("postgresql://neondb_owner:npg_"), "{uri}");
    assert!(uri.ends_with("/neondb?sslmode=require"), "{uri}");
    let op = text(&body["operations"][0]["id"]);
    assert!(uuid::Uuid::parse_str(&op).is_ok());
}

#[tokio::test]
async fn a_branch_inherits_its_parents_roles_passwords_and_databases() {
    let (cloud, project, main) = cloud_with_project().await;
    let child = cloud.branch(&project, &main, "rekey-1").await;
    let child_path = branch_path(&project, &child);
    let roles = cloud.neon_get(&format!("{child_path}/roles")).await;
    assert_eq!(roles.body["roles"][0]["name"], "neondb_owner");
    let databases = cloud.neon_get(&format!("{child_path}/databases")).await;
    assert_eq!(databases.body["databases"][0]["name"], "neondb");
    assert_eq!(databases.body["databases"][0]["owner_name"], "neondb_owner");
    assert_eq!(
        cloud.password(&project, &main).await,
        cloud.password(&project, &child).await
    );
    let branch = cloud.neon_get(&child_path).await;
    assert_eq!(branch.body["branch"]["parent_id"], json!(main));
}

#[tokio::test]
async fn a_duplicate_branch_name_is_refused_with_409() {
    let (cloud, project, main) = cloud_with_project().await;
    cloud.branch(&project, &main, "rekey-1").await;
    let again = cloud.bare_branch(&project, &main, "rekey-1").await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["code"], "");
    assert!(text(&again.body["message"]).contains("already exists"));
}

#[tokio::test]
async fn a_second_read_write_endpoint_on_a_branch_is_refused_with_409() {
    let (cloud, project, main) = cloud_with_project().await;
    let endpoint = json!({"endpoint": {"branch_id": main, "type": "read_write"}});
    let reply = cloud
        .neon_post(&format!("/projects/{project}/endpoints"), endpoint)
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{:?}", reply.body);
}

#[tokio::test]
async fn deleting_a_branch_with_children_is_refused() {
    let (cloud, project, main) = cloud_with_project().await;
    let parent = cloud.branch(&project, &main, "parent").await;
    let child = cloud.branch(&project, &parent, "child").await;
    let refused = cloud.neon_delete(&branch_path(&project, &parent)).await;
    assert_eq!(refused.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(text(&refused.body["message"]).contains("child"));
    let deleted = cloud.neon_delete(&branch_path(&project, &child)).await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.body["branch"]["id"], json!(child));
    let actions = texts(&deleted.body["operations"], "action");
    assert!(
        actions.contains(&"delete_timeline".to_owned()),
        "{actions:?}"
    );
    let parent_now = cloud.neon_delete(&branch_path(&project, &parent)).await;
    assert_eq!(
        parent_now.status,
        StatusCode::OK,
        "a leaf again, so deletable"
    );
}

#[tokio::test]
async fn deleting_a_leaf_branch_twice_answers_204_the_second_time() {
    let (cloud, project, main) = cloud_with_project().await;
    let leaf = cloud.branch(&project, &main, "leaf").await;
    let path = branch_path(&project, &leaf);
    assert_eq!(cloud.neon_delete(&path).await.status, StatusCode::OK);
    let again = cloud.neon_delete(&path).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
    assert_eq!(again.body, Value::Null);
    assert_eq!(cloud.neon_get(&path).await.status, StatusCode::NOT_FOUND);
    let endpoints = cloud
        .neon_get(&format!("/projects/{project}/endpoints"))
        .await;
    assert_eq!(
        len(&endpoints.body["endpoints"]),
        Some(1),
        "the leaf's endpoint went with it"
    );
}

#[tokio::test]
async fn deleting_an_endpoint_that_is_already_gone_answers_204() {
    // deleteProjectEndpoint: 204 "if the endpoint doesn't exist or has
    // already been deleted".
    let (cloud, project, main) = cloud_with_project().await;
    let leaf = cloud.branch(&project, &main, "leaf").await;
    let listed = cloud
        .neon_get(&format!("{}/endpoints", branch_path(&project, &leaf)))
        .await;
    let endpoint = text(&listed.body["endpoints"][0]["id"]);
    let path = format!("/projects/{project}/endpoints/{endpoint}");
    let first = cloud.neon_delete(&path).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(first.body["endpoint"]["id"], endpoint.as_str());
    assert!(first.body["operations"].is_array());
    cloud.finish(&project, &first.body).await;
    let again = cloud.neon_delete(&path).await;
    assert_eq!(again.status, StatusCode::NO_CONTENT, "{:?}", again.body);
    assert_eq!(again.body, Value::Null);
    let never = format!("/projects/{project}/endpoints/ep-never-was-12345678");
    assert_eq!(
        cloud.neon_delete(&never).await.status,
        StatusCode::NO_CONTENT
    );
}

#[tokio::test]
async fn deleting_the_default_branch_is_refused() {
    let (cloud, project, main) = cloud_with_project().await;
    let reply = cloud.neon_delete(&branch_path(&project, &main)).await;
    assert_eq!(reply.status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[tokio::test]
async fn mutations_get_423_while_an_operation_runs_and_succeed_after_it_finishes() {
    let cloud = cloud(operations_taking(400)).await;
    let (project, main) = cloud.project().await;
    let locked = cloud.bare_branch(&project, &main, "too-early").await;
    assert_eq!(locked.status, StatusCode::LOCKED);
    assert_eq!(
        locked.body["message"],
        "project already has running operations, scheduling of new ones is prohibited"
    );
    let created = cloud
        .neon_get(&format!("/projects/{project}/operations"))
        .await;
    cloud.finish(&project, &created.body).await;
    let after = cloud.bare_branch(&project, &main, "in-time").await;
    assert_eq!(after.status, StatusCode::CREATED, "{:?}", after.body);
    let reads = cloud
        .neon_get(&format!("/projects/{project}/branches"))
        .await;
    assert_eq!(reads.status, StatusCode::OK, "reads are never locked");
}

#[tokio::test]
async fn operations_go_from_running_to_finished() {
    let cloud = cloud(operations_taking(300)).await;
    let reply = cloud.neon(Method::POST, "/projects", None).await;
    let project = text(&reply.body["project"]["id"]);
    let statuses = texts(&reply.body["operations"], "status");
    assert_eq!(statuses, ["running", "scheduling"]);
    cloud.finish(&project, &reply.body).await;
    let listed = cloud
        .neon_get(&format!("/projects/{project}/operations"))
        .await;
    for status in texts(&listed.body["operations"], "status") {
        assert_eq!(status, "finished");
    }
}

#[tokio::test]
async fn a_password_reset_takes_effect_when_its_operations_finish() {
    let cloud = cloud(operations_taking(400)).await;
    let created = cloud.neon(Method::POST, "/projects", None).await;
    let project = text(&created.body["project"]["id"]);
    let main = text(&created.body["branch"]["id"]);
    let old = text(&created.body["roles"][0]["password"]);
    cloud.finish(&project, &created.body).await;

    let reset = cloud.reset_password(&project, &main, "neondb_owner").await;
    assert_eq!(reset.status, StatusCode::OK, "{:?}", reset.body);
    let new = text(&reset.body["role"]["password"]);
    assert_ne!(new, old);
    let before = cloud.connection_uri(&project, &main).await;
    assert!(
        before.contains(&old),
        "old password holds until the ops finish: {before}"
    );
    cloud.finish(&project, &reset.body).await;
    let after = cloud.connection_uri(&project, &main).await;
    assert!(after.contains(&new), "{after}");
    assert!(!after.contains(&old));
}

#[tokio::test]
async fn a_password_reset_leaves_the_parent_and_child_branches_alone() {
    let (cloud, project, main) = cloud_with_project().await;
    let child = cloud.branch(&project, &main, "rekey-1").await;
    let before = cloud.connection_uri(&project, &main).await;
    let reset = cloud.reset_password(&project, &child, "neondb_owner").await;
    assert_eq!(reset.status, StatusCode::OK);
    assert_eq!(cloud.connection_uri(&project, &main).await, before);
    assert_ne!(cloud.connection_uri(&project, &child).await, before);
}

#[tokio::test]
async fn connection_uri_is_404_for_a_branch_without_a_read_write_endpoint() {
    let (cloud, project, main) = cloud_with_project().await;
    let bare = cloud.bare_branch(&project, &main, "no-compute").await;
    let branch = text(&bare.body["branch"]["id"]);
    assert!(bare.body.get("connection_uris").is_none());
    let reply = cloud.connection_uri_reply(&project, &branch, "").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn connection_uri_uses_the_pooler_host_when_pooled() {
    let (cloud, project, main) = cloud_with_project().await;
    let pooled = cloud
        .connection_uri_reply(&project, &main, "&pooled=true")
        .await;
    let uri = text(&pooled.body["uri"]);
    assert!(uri.contains("-pooler."), "{uri}");
}

#[tokio::test]
async fn create_branch_omits_connection_uris_when_the_parent_has_two_roles() {
    let (cloud, project, main) = cloud_with_project().await;
    let roles = format!("{}/roles", branch_path(&project, &main));
    let role = cloud
        .neon_post(&roles, json!({"role": {"name": "app"}}))
        .await;
    assert_eq!(role.status, StatusCode::CREATED, "{:?}", role.body);
    let reply = cloud
        .create_branch(&project, json!({"branch": {"parent_id": main, "name": "two-roles"}, "endpoints": [{"type": "read_write"}]}))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert!(reply.body.get("connection_uris").is_none());
    assert_eq!(len(&reply.body["roles"]), Some(2));
}

#[tokio::test]
async fn branch_search_matches_name_or_id_and_pages_with_a_cursor() {
    let (cloud, project, main) = cloud_with_project().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let name = format!("rekey-run-{i}");
        ids.push(cloud.branch(&project, &main, &name).await);
    }
    let branches = format!("/projects/{project}/branches");
    let search = cloud
        .neon_get(&format!("{branches}?search=REKEY-RUN-3"))
        .await;
    assert_eq!(len(&search.body["branches"]), Some(1));
    let by_id = cloud
        .neon_get(&format!("{branches}?search={}", ids[2]))
        .await;
    assert_eq!(by_id.body["branches"][0]["name"], "rekey-run-2");

    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let path = format!(
            "{branches}?search=rekey-run&sort_by=name&sort_order=asc&limit=2&cursor={cursor}"
        );
        let page = cloud.neon_get(&path).await;
        assert_eq!(page.status, StatusCode::OK, "{:?}", page.body);
        seen.extend(texts(&page.body["branches"], "name"));
        match page.body["pagination"]["next"].as_str() {
            Some(next) => cursor = next.to_owned(),
            None => break,
        }
    }
    assert_eq!(
        seen,
        [
            "rekey-run-0",
            "rekey-run-1",
            "rekey-run-2",
            "rekey-run-3",
            "rekey-run-4"
        ]
    );
}

#[tokio::test]
async fn annotations_are_returned_with_the_branch() {
    let (cloud, project, main) = cloud_with_project().await;
    let reply = cloud
        .create_branch(&project, json!({"branch": {"parent_id": main, "name": "tagged"}, "annotation_value": {"rekey_run": "r1"}}))
        .await;
    let branch = text(&reply.body["branch"]["id"]);
    let got = cloud.neon_get(&branch_path(&project, &branch)).await;
    assert_eq!(got.body["annotation"]["value"]["rekey_run"], "r1");
    let listed = cloud
        .neon_get(&format!("/projects/{project}/branches?search=tagged"))
        .await;
    assert_eq!(
        listed.body["annotations"][&branch]["value"]["rekey_run"],
        "r1"
    );
}

#[tokio::test]
async fn get_branch_always_carries_the_required_annotation_object() {
    // getProjectBranch answers BranchResponse + AnnotationResponse, and
    // AnnotationResponse requires `annotation` (AnnotationData: required
    // `object` and `value`), annotated or not.
    let (cloud, project, main) = cloud_with_project().await;
    let plain = cloud.branch(&project, &main, "plain").await;
    let got = cloud.neon_get(&branch_path(&project, &plain)).await;
    assert_eq!(got.status, StatusCode::OK);
    let annotation = &got.body["annotation"];
    assert_eq!(annotation["value"], json!({}));
    assert_eq!(annotation["object"]["id"], plain.as_str());
    assert_eq!(annotation["object"]["type"], "console/branch");
    let listed = cloud
        .neon_get(&format!("/projects/{project}/branches"))
        .await;
    assert!(
        listed.body["annotations"].is_object(),
        "listProjectBranches requires the annotations map: {:?}",
        listed.body
    );
}

#[tokio::test]
async fn unknown_things_are_404_in_neons_error_shape_with_a_request_id() {
    let cloud = fast_cloud().await;
    let reply = cloud.neon_get("/projects/no-such-project").await;
    assert_neon_error(&reply, StatusCode::NOT_FOUND, "project not found");
    let (project, main) = cloud.project().await;
    let role = cloud.reset_password(&project, &main, "nobody").await;
    assert_eq!(role.status, StatusCode::NOT_FOUND);
    assert!(text(&role.body["message"]).starts_with("role not found for branch"));
}

#[tokio::test]
async fn a_malformed_body_is_400_not_a_crash() {
    let (cloud, project, _) = cloud_with_project().await;
    let url = format!("{}/projects/{project}/branches", cloud.fake.neon_url());
    let status = cloud.post_raw(url, "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------- Fly

#[tokio::test]
async fn a_machine_is_created_then_started_and_wait_says_ok() {
    let cloud = cloud(boots_taking(300)).await;
    cloud.app("tenant-1").await;
    let created = cloud
        .machine(
            "tenant-1",
            json!({"region": "ord", "config": {"image": "registry.fly.io/tenant-1:v1"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    assert_eq!(created.body["state"], "created");
    assert_eq!(created.body["region"], "ord");
    let id = text(&created.body["id"]);
    assert_eq!(id.len(), 14);
    let instance = text(&created.body["instance_id"]);
    let wait = cloud
        .wait(
            &id,
            &format!("state=started&timeout=10&instance_id={instance}"),
        )
        .await;
    assert_eq!(wait.status, StatusCode::OK, "{:?}", wait.body);
    assert_eq!(wait.body, json!({"ok": true}));
    let got = cloud.fly_get(&machine_path(&id)).await;
    assert_eq!(got.body["state"], "started");
}

#[tokio::test]
async fn a_machine_created_with_skip_launch_stays_created_and_wait_times_out_with_408() {
    let cloud = cloud_with_app().await;
    let id = cloud.unlaunched_machine().await;
    let started = Instant::now();
    let wait = cloud.wait(&id, "state=started&timeout=1").await;
    assert_eq!(wait.status, StatusCode::REQUEST_TIMEOUT);
    assert!(started.elapsed() >= millis(900));
    assert!(wait.body["error"].is_string());
}

#[tokio::test]
async fn a_machine_create_without_an_image_is_400() {
    let cloud = cloud_with_app().await;
    let without_image = json!({"config": {"env": {"A": "b"}}});
    let reply = cloud.machine("tenant-1", without_image).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body["error"].is_string());
}

#[tokio::test]
async fn a_duplicate_machine_name_is_refused_with_409() {
    let cloud = cloud_with_app().await;
    let body = json!({"name": "web-rekey", "config": {"image": "nginx"}});
    let first = cloud.machine("tenant-1", body.clone()).await;
    assert_eq!(first.status, StatusCode::OK);
    let again = cloud.machine("tenant-1", body).await;
    assert_eq!(again.status, StatusCode::CONFLICT);
    assert_eq!(again.body["status"], "name_taken");
}

#[tokio::test]
async fn duplicate_machine_names_are_accepted_when_configured() {
    let cloud = cloud(FakeConfig {
        fly_duplicate_names: true,
        ..FakeConfig::default()
    })
    .await;
    cloud.app("tenant-1").await;
    let body = json!({"name": "web-rekey", "config": {"image": "nginx"}});
    for _ in 0..2 {
        let created = cloud.machine("tenant-1", body.clone()).await;
        assert_eq!(created.status, StatusCode::OK);
    }
    let listed = cloud.fly_get("/apps/tenant-1/machines").await;
    assert_eq!(len(&listed.body), Some(2));
}

#[tokio::test]
async fn machines_are_listed_by_metadata_and_region() {
    let cloud = cloud_with_app().await;
    let tagged =
        json!({"region": "ord", "config": {"image": "nginx", "metadata": {"rekey_run": "r1"}}});
    let other =
        json!({"region": "ams", "config": {"image": "nginx", "metadata": {"rekey_run": "r2"}}});
    let id = text(&cloud.machine("tenant-1", tagged).await.body["id"]);
    cloud.machine("tenant-1", other).await;
    let by_tag = cloud
        .fly_get("/apps/tenant-1/machines?metadata.rekey_run=r1")
        .await;
    assert_eq!(texts(&by_tag.body, "id"), [id]);
    let by_region = cloud.fly_get("/apps/tenant-1/machines?region=ams").await;
    assert_eq!(by_region.body[0]["config"]["metadata"]["rekey_run"], "r2");
    let none = cloud
        .fly_get("/apps/tenant-1/machines?metadata.rekey_run=r3")
        .await;
    assert_eq!(none.body, json!([]));
}

#[tokio::test]
async fn destroying_a_running_machine_needs_force() {
    let (cloud, id) = cloud_with_machine().await;
    let path = machine_path(&id);
    let refused = cloud.fly_delete(&path).await;
    assert_eq!(refused.status, StatusCode::PRECONDITION_FAILED);
    assert!(refused.body["error"].is_string());
    let forced = cloud.fly_delete(&format!("{path}?force=true")).await;
    assert_eq!(forced.status, StatusCode::OK);
    assert_eq!(forced.body, json!({"ok": true}));

    let listed = cloud.fly_get("/apps/tenant-1/machines").await;
    assert_eq!(
        listed.body,
        json!([]),
        "destroyed machines leave the default listing"
    );
    let with_deleted = cloud
        .fly_get("/apps/tenant-1/machines?include_deleted=true")
        .await;
    assert_eq!(len(&with_deleted.body), Some(1));
    let got = cloud.fly_get(&path).await;
    assert_eq!(got.body["state"], "destroyed");
    let wait = cloud.wait(&id, "state=destroyed").await;
    assert_eq!(wait.status, StatusCode::OK);
    let hopeless = cloud.wait(&id, "state=started").await;
    assert_eq!(
        hopeless.status,
        StatusCode::BAD_REQUEST,
        "a destroyed machine never starts"
    );
}

#[tokio::test]
async fn kill_true_is_accepted_like_force_true() {
    let (cloud, id) = cloud_with_machine().await;
    let killed = cloud
        .fly_delete(&format!("{}?kill=true", machine_path(&id)))
        .await;
    assert_eq!(killed.status, StatusCode::OK);
}

#[tokio::test]
async fn a_stopped_machine_can_be_destroyed_without_force_and_started_again_before() {
    let cloud = cloud(boots_taking(100)).await;
    cloud.app("tenant-1").await;
    let created = cloud
        .machine("tenant-1", json!({"config": {"image": "nginx"}}))
        .await;
    let id = text(&created.body["id"]);
    let instance = text(&created.body["instance_id"]);
    let path = machine_path(&id);
    let until_stopped = format!("state=stopped&instance_id={instance}&timeout=10");
    let stop = cloud.fly_post(&format!("{path}/stop"), None).await;
    assert_eq!(stop.status, StatusCode::OK);
    let stopped = cloud.wait(&id, &until_stopped).await;
    assert_eq!(stopped.status, StatusCode::OK, "{:?}", stopped.body);
    let start = cloud.fly_post(&format!("{path}/start"), None).await;
    assert_eq!(start.body["previous_state"], "stopped");
    let started = cloud.wait(&id, "state=started&timeout=10").await;
    assert_eq!(started.status, StatusCode::OK);
    cloud.fly_post(&format!("{path}/stop"), None).await;
    cloud.wait(&id, &until_stopped).await;
    assert_eq!(cloud.fly_delete(&path).await.status, StatusCode::OK);
}

#[tokio::test]
async fn waiting_for_stopped_without_instance_id_is_400() {
    let (cloud, id) = cloud_with_machine().await;
    let reply = cloud.wait(&id, "state=stopped").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn wait_on_an_unknown_machine_is_404_unless_waiting_for_destroyed() {
    let cloud = cloud_with_app().await;
    let unknown = cloud.wait("00000000000000", "state=started").await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.body["error"], "machine not found");
    let gone = cloud.wait("00000000000000", "state=destroyed").await;
    assert_eq!(gone.status, StatusCode::OK);
}

#[tokio::test]
async fn stop_takes_an_optional_signal_and_timeout_body() {
    // Machines_stop: optional StopRequest {signal, timeout}.
    let (cloud, id) = cloud_with_machine().await;
    let stop = format!("{}/stop", machine_path(&id));
    let stopped = cloud
        .fly_post(&stop, Some(json!({"signal": "SIGTERM", "timeout": "10s"})))
        .await;
    assert_eq!(stopped.status, StatusCode::OK, "{:?}", stopped.body);
    assert_eq!(stopped.body, json!({"ok": true}));
    let url = format!("{}{stop}", cloud.fake.fly_url());
    let malformed = cloud.post_raw(url, "{\"signal\": 9").await;
    assert_eq!(malformed, StatusCode::BAD_REQUEST);
}

// ---------------------------------------------------------------- Fly leases

/// A started machine with a lease of `ttl` seconds on it; returns (id, nonce).
async fn leased_machine(cloud: &Cloud, ttl: u64) -> (String, String) {
    cloud.app("tenant-1").await;
    let id = cloud.nginx_machine("tenant-1").await;
    let body = json!({"ttl": ttl, "description": "rekey run 7"});
    let lease = cloud
        .fly_post(&format!("{}/lease", machine_path(&id)), Some(body))
        .await;
    assert_eq!(lease.status, StatusCode::OK, "{:?}", lease.body);
    (id, text(&lease.body["nonce"]))
}

#[tokio::test]
async fn a_lease_is_taken_shown_and_released_only_with_its_nonce() {
    let cloud = fast_cloud().await;
    let before = chrono_now();
    let (id, nonce) = leased_machine(&cloud, 30).await;
    let path = format!("{}/lease", machine_path(&id));
    let shown = cloud.fly_get(&path).await;
    assert_eq!(shown.status, StatusCode::OK);
    // The OpenAPI `Lease`: nonce, expires_at (Unix seconds), owner, description.
    assert_eq!(shown.body["nonce"], nonce.as_str());
    assert_eq!(shown.body["description"], "rekey run 7");
    assert!(shown.body["owner"].is_string());
    let expires = shown.body["expires_at"].as_i64().unwrap();
    assert!(
        expires >= before + 29 && expires <= before + 32,
        "{expires} vs {before}"
    );
    let bare = cloud.fly_delete(&path).await;
    assert_eq!(
        bare.status,
        StatusCode::BAD_REQUEST,
        "release needs the nonce"
    );
    let wrong = cloud
        .fly_leased(Method::DELETE, &path, None, "not-the-nonce")
        .await;
    assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
    let released = cloud.fly_leased(Method::DELETE, &path, None, &nonce).await;
    assert_eq!(released.status, StatusCode::OK);
    assert_eq!(cloud.fly_get(&path).await.status, StatusCode::NOT_FOUND);
}

fn chrono_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[tokio::test]
async fn a_leased_machine_refuses_changes_without_the_lease_nonce() {
    let cloud = fast_cloud().await;
    let (id, nonce) = leased_machine(&cloud, 30).await;
    let machine = machine_path(&id);
    let stop = format!("{machine}/stop");
    let refused = cloud.fly_post(&stop, None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{:?}", refused.body);
    assert!(
        !text(&refused.body["error"]).contains(&nonce),
        "never echo a nonce"
    );
    let other = cloud
        .fly_leased(Method::POST, &stop, None, "someone-elses")
        .await;
    assert_eq!(other.status, StatusCode::CONFLICT);
    let force = format!("{machine}?force=true");
    assert_eq!(cloud.fly_delete(&force).await.status, StatusCode::CONFLICT);
    let steal = cloud
        .fly_post(&format!("{machine}/lease"), Some(json!({"ttl": 5})))
        .await;
    assert_eq!(
        steal.status,
        StatusCode::CONFLICT,
        "a second lease is refused"
    );
    assert_eq!(cloud.fly_get(&machine).await.body["state"], "started");
    let stopped = cloud.fly_leased(Method::POST, &stop, None, &nonce).await;
    assert_eq!(stopped.status, StatusCode::OK);
    let destroyed = cloud.fly_leased(Method::DELETE, &force, None, &nonce).await;
    assert_eq!(destroyed.status, StatusCode::OK);
}

#[tokio::test]
async fn a_lease_is_renewed_by_taking_it_again_with_its_nonce() {
    let cloud = fast_cloud().await;
    let (id, nonce) = leased_machine(&cloud, 5).await;
    let path = format!("{}/lease", machine_path(&id));
    let first = cloud.fly_get(&path).await.body["expires_at"]
        .as_i64()
        .unwrap();
    let renewed = cloud
        .fly_leased(Method::POST, &path, Some(json!({"ttl": 120})), &nonce)
        .await;
    assert_eq!(renewed.status, StatusCode::OK, "{:?}", renewed.body);
    assert_eq!(renewed.body["nonce"], nonce.as_str(), "the same lease");
    assert!(renewed.body["expires_at"].as_i64().unwrap() >= first + 100);
}

#[tokio::test]
async fn a_lease_lapses_after_its_ttl() {
    let cloud = fast_cloud().await;
    let (id, _nonce) = leased_machine(&cloud, 1).await;
    tokio::time::sleep(millis(1100)).await;
    let lease = cloud.fly_get(&format!("{}/lease", machine_path(&id))).await;
    assert_eq!(lease.status, StatusCode::NOT_FOUND);
    let stop = format!("{}/stop", machine_path(&id));
    assert_eq!(cloud.fly_post(&stop, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_lease_taken_at_create_returns_its_nonce_on_the_machine() {
    // Machine.nonce: "only ever returned on machine creation if a
    // lease_duration was provided".
    let cloud = cloud_with_app().await;
    let created = cloud
        .machine(
            "tenant-1",
            json!({"lease_ttl": 30, "config": {"image": "nginx"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::OK);
    let nonce = text(&created.body["nonce"]);
    let id = text(&created.body["id"]);
    let got = cloud.fly_get(&machine_path(&id)).await;
    assert!(
        got.body.get("nonce").is_none(),
        "only the create answer has it"
    );
    let force = format!("{}?force=true", machine_path(&id));
    assert_eq!(cloud.fly_delete(&force).await.status, StatusCode::CONFLICT);
    let plain = cloud.nginx_machine("tenant-1").await;
    assert_ne!(plain, id);
    let destroyed = cloud.fly_leased(Method::DELETE, &force, None, &nonce).await;
    assert_eq!(destroyed.status, StatusCode::OK);
}

// ---------------------------------------------------------------- Fly health checks

fn machine_with_checks() -> Value {
    json!({"config": {"image": "nginx", "checks": {
        "alive": {"type": "tcp", "port": 8080, "interval": "5s", "timeout": "2s"},
        "health": {"type": "http", "port": 8080, "path": "/health", "method": "GET"},
    }}})
}

#[tokio::test]
async fn health_checks_are_critical_until_the_machine_is_started_then_passing() {
    let cloud = cloud(boots_taking(300)).await;
    cloud.app("tenant-1").await;
    let created = cloud.machine("tenant-1", machine_with_checks()).await;
    assert_eq!(created.status, StatusCode::OK, "{:?}", created.body);
    let checks = created.body["checks"].as_array().cloned().unwrap();
    assert_eq!(texts(&created.body["checks"], "name"), ["alive", "health"]);
    assert!(
        checks.iter().all(|c| c["status"] == "critical"),
        "{checks:?}"
    );
    let id = text(&created.body["id"]);
    let wait = cloud.wait(&id, "state=started&timeout=10").await;
    assert_eq!(wait.status, StatusCode::OK);
    let got = cloud.fly_get(&machine_path(&id)).await;
    let checks = got.body["checks"].as_array().cloned().unwrap();
    assert_eq!(checks.len(), 2);
    for check in &checks {
        // CheckStatus: name, status, output, updated_at.
        assert_eq!(check["status"], "passing", "{check}");
        assert!(check["output"].is_string() && check["updated_at"].is_string());
    }
    let plain = cloud.nginx_machine("tenant-1").await;
    let got = cloud.fly_get(&machine_path(&plain)).await;
    assert_eq!(
        got.body["checks"],
        json!([]),
        "no config.checks, no statuses"
    );
}

#[tokio::test]
async fn health_checks_stay_critical_when_the_fake_is_told_they_fail() {
    let cloud = fast_cloud().await;
    let set = cloud.configure(json!({"failing_checks": true})).await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(set.body["failing_checks"], true);
    cloud.app("tenant-1").await;
    let id = text(&cloud.machine("tenant-1", machine_with_checks()).await.body["id"]);
    let got = cloud.fly_get(&machine_path(&id)).await;
    assert_eq!(got.body["state"], "started");
    assert_eq!(
        texts(&got.body["checks"], "status"),
        ["critical", "critical"]
    );
    let listed = cloud.fly_get("/apps/tenant-1/machines").await;
    assert_eq!(listed.body[0]["checks"][0]["status"], "critical");
}

#[tokio::test]
async fn config_checks_must_be_an_object_of_named_checks() {
    let cloud = cloud_with_app().await;
    let checks_as_a_list = json!({"config": {"image": "nginx", "checks": ["tcp"]}});
    let reply = cloud.machine("tenant-1", checks_as_a_list).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_taken_app_name_is_422_name_taken() {
    let cloud = cloud_with_app().await;
    let again = cloud.create_app("tenant-1").await;
    assert_eq!(again.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(again.body["status"], "name_taken");
    let missing = cloud.fly_get("/apps/no-such-app").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.body["error"], "app not found");
}

// ---------------------------------------------------------------- auth, limits, injection

#[tokio::test]
async fn calls_without_the_configured_credentials_get_401_in_each_apis_shape() {
    let cloud = cloud(FakeConfig {
        neon_api_key: Some("napi_test".into()),
        fly_api_token: Some("fm2_test".into()),
        ..FakeConfig::default()
    })
    .await;
    let neon = cloud.neon(Method::POST, "/projects", None).await;
    assert_eq!(neon.status, StatusCode::UNAUTHORIZED);
    assert!(neon.body["message"].is_string() && neon.body["code"].is_string());
    let wrong = cloud
        .neon_as("Bearer nope", Method::POST, "/projects")
        .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let right = cloud
        .neon_as("Bearer napi_test", Method::POST, "/projects")
        .await;
    assert_eq!(right.status, StatusCode::CREATED);

    let fly = cloud.fly_get("/apps/x").await;
    assert_eq!(fly.status, StatusCode::UNAUTHORIZED);
    assert!(fly.body["error"].is_string());
    let apps = format!("{}/apps", cloud.fake.fly_url());
    let body = json!({"app_name": "a1", "org_slug": "personal"});
    let flyv1 = cloud
        .call(
            Method::POST,
            apps.clone(),
            Some(body),
            Some(("Authorization", "FlyV1 fm2_test")),
        )
        .await;
    assert_eq!(flyv1.status, StatusCode::CREATED);
    let bearer = cloud
        .call(
            Method::GET,
            format!("{apps}/a1"),
            None,
            Some(("Authorization", "Bearer fm2_test")),
        )
        .await;
    assert_eq!(bearer.status, StatusCode::OK);
}

/// `n` calls made one after another by `call`: their replies, and how
/// long they took together.
async fn calls<F, R>(n: usize, mut call: F) -> (Vec<Reply>, Duration)
where
    F: FnMut() -> R,
    R: Future<Output = Reply>,
{
    let started = Instant::now();
    let mut replies = Vec::with_capacity(n);
    for _ in 0..n {
        replies.push(call().await);
    }
    (replies, started.elapsed())
}

/// The status codes of `replies`, in order.
fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status.as_u16()).collect()
}

/// How many of `statuses` are 429.
fn refused(statuses: &[u16]) -> usize {
    statuses.iter().filter(|&&s| s == 429).count()
}

/// The 429s among `replies`: the `Retry-After` of the last one (`None`
/// when there is none, or it had none), after checking that each 429 has
/// the body `check` wants.
fn last_retry_after(replies: &[Reply], check: impl Fn(&Value)) -> Option<String> {
    let limited: Vec<&Reply> = replies
        .iter()
        .filter(|r| r.status == StatusCode::TOO_MANY_REQUESTS)
        .collect();
    for reply in &limited {
        check(&reply.body);
    }
    limited.last().and_then(|r| r.retry_after.clone())
}

/// Neon's body for a 429.
fn neon_rate_limit_message(body: &Value) {
    assert_eq!(body["message"], "rate limit exceeded");
}

#[tokio::test]
async fn beyond_the_rate_limit_calls_get_429_with_retry_after() {
    let cloud = cloud(rate_limited(1, 3, true)).await;
    let (replies, _) = calls(10, || cloud.neon_get("/projects/p-1")).await;
    let statuses = statuses(&replies);
    assert_eq!(statuses[..3], [404, 404, 404], "the burst passes");
    // One token a second comes back: ten quick calls cannot all pass.
    assert!(refused(&statuses) >= 5, "{statuses:?}");
    let retry_after = last_retry_after(&replies, neon_rate_limit_message);
    assert_eq!(retry_after.as_deref(), Some("1"));
    let fly = cloud.fly_get("/apps/a").await;
    assert_eq!(
        fly.status,
        StatusCode::NOT_FOUND,
        "each API has its own bucket"
    );
}

#[tokio::test]
async fn a_429_carries_no_retry_after_when_switched_off() {
    let cloud = cloud(rate_limited(1, 1, false)).await;
    cloud.fly_get("/apps/a").await;
    let limited = cloud.fly_get("/apps/a").await;
    assert_eq!(limited.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(limited.retry_after, None);
    assert!(limited.body["error"].is_string());
}

// ------------------------------------------------- the vendors' documented rate limits
//
// A token bucket refuses only once it is empty, and it refills at a known
// rate: these tests assert that a burst passes, and bound from below how
// many of the calls beyond it are refused given the time they took, so a
// slow machine weakens them but cannot make them fail.

fn vendor_limited(limits: fake_cloud::VendorLimits) -> FakeConfig {
    FakeConfig {
        vendor_limits: Some(limits),
        retry_after: true,
        ..FakeConfig::default()
    }
}

/// A fake with the vendors' default limits on.
async fn vendor_limited_cloud() -> Cloud {
    cloud(vendor_limited(fake_cloud::VendorLimits::default())).await
}

/// A fake with the vendors' default limits on and the app `tenant-1`.
async fn vendor_limited_app() -> Cloud {
    let cloud = vendor_limited_cloud().await;
    cloud.app("tenant-1").await;
    cloud
}

/// `reply` answers a call that another bucket than the one the test
/// emptied counts (another `whose`'s): it passed.
fn assert_own_bucket(reply: &Reply, whose: &str) {
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "another {whose} has its own bucket"
    );
}

/// At least how many of `beyond` calls past a burst a bucket refilling
/// `per_second` must have refused within `elapsed`.
fn must_refuse(beyond: usize, per_second: f64, elapsed: Duration) -> usize {
    let refilled = (per_second * elapsed.as_secs_f64()).ceil() as usize + 1;
    beyond.saturating_sub(refilled)
}

#[tokio::test]
async fn vendor_limits_are_off_by_default() {
    let (cloud, id) = cloud_with_machine().await;
    let stop = format!("{}/stop", machine_path(&id));
    let (replies, _) = calls(10, || cloud.fly_post(&stop, None)).await;
    assert_eq!(statuses(&replies), [200; 10]);
}

#[tokio::test]
async fn neon_limits_bursts_to_40_requests_a_second_per_route() {
    let cloud = vendor_limited_cloud().await;
    let (project, main) = cloud.project().await;
    let path = branch_path(&project, &main);
    let (replies, elapsed) = calls(120, || cloud.neon_get(&path)).await;
    let statuses = statuses(&replies);
    assert!(
        statuses[..40].iter().all(|&s| s == 200),
        "the burst passes: {statuses:?}"
    );
    let limited = refused(&statuses);
    assert!(
        limited >= must_refuse(80, 40.0, elapsed),
        "{limited} in {elapsed:?}"
    );
    let other = cloud.neon_get(&format!("/projects/{project}")).await;
    assert_own_bucket(&other, "route");
}

#[tokio::test]
async fn neon_limits_requests_per_minute_per_account_across_routes() {
    let cloud = cloud(vendor_limited(fake_cloud::VendorLimits {
        neon_per_minute: 60,
        ..fake_cloud::VendorLimits::default()
    }))
    .await;
    let (project, main) = cloud.project().await;
    let routes = [format!("/projects/{project}"), branch_path(&project, &main)];
    let mut route = routes.iter().cycle();
    let (replies, elapsed) = calls(69, || cloud.neon_get(route.next().unwrap())).await;
    let statuses = statuses(&replies);
    // 1 create + 59 gets spend the minute; no route is past its 40 burst.
    assert!(statuses[..59].iter().all(|&s| s == 200), "{statuses:?}");
    let limited = refused(&statuses);
    assert!(
        limited >= must_refuse(10, 1.0, elapsed),
        "{limited} in {elapsed:?}"
    );
    assert!(last_retry_after(&replies, neon_rate_limit_message).is_some());
}

#[tokio::test]
async fn fly_limits_each_action_to_1_a_second_with_bursts_of_3_per_machine() {
    let cloud = vendor_limited_app().await;
    let first = cloud.nginx_machine("tenant-1").await;
    let second = cloud.nginx_machine("tenant-1").await;
    let stop = |id: &str| format!("{}/stop", machine_path(id));
    let stop_first = stop(&first);
    let (replies, elapsed) = calls(10, || cloud.fly_post(&stop_first, None)).await;
    let statuses = statuses(&replies);
    assert_eq!(statuses[..3], [200, 200, 200], "the burst passes");
    let limited = refused(&statuses);
    assert!(
        limited >= must_refuse(7, 1.0, elapsed),
        "{statuses:?} in {elapsed:?}"
    );
    assert!(limited > 0 || elapsed > Duration::from_secs(5));
    let retry_after = last_retry_after(&replies, |body| assert!(body["error"].is_string()));
    if limited > 0 {
        assert_eq!(retry_after.as_deref(), Some("1"));
    }
    let other = cloud.fly_post(&stop(&second), None).await;
    assert_own_bucket(&other, "machine");
}

#[tokio::test]
async fn fly_limits_creates_to_1_a_second_with_bursts_of_3_per_app() {
    let cloud = vendor_limited_app().await;
    cloud.app("tenant-2").await;
    let body = json!({"config": {"image": "nginx"}});
    let (replies, elapsed) = calls(8, || cloud.machine("tenant-1", body.clone())).await;
    let statuses = statuses(&replies);
    assert_eq!(statuses[..3], [200, 200, 200]);
    assert!(
        refused(&statuses) >= must_refuse(5, 1.0, elapsed),
        "{statuses:?} in {elapsed:?}"
    );
    let other = cloud.machine("tenant-2", body).await;
    assert_own_bucket(&other, "app");
}

#[tokio::test]
async fn fly_limits_get_machine_to_5_a_second_with_bursts_of_10() {
    let cloud = vendor_limited_app().await;
    let path = machine_path(&cloud.nginx_machine("tenant-1").await);
    let (replies, elapsed) = calls(30, || cloud.fly_get(&path)).await;
    let statuses = statuses(&replies);
    assert!(statuses[..10].iter().all(|&s| s == 200), "{statuses:?}");
    assert!(
        refused(&statuses) >= must_refuse(20, 5.0, elapsed),
        "{statuses:?} in {elapsed:?}"
    );
}

#[tokio::test]
async fn vendor_limits_can_be_switched_on_over_http() {
    let cloud = fast_cloud().await;
    let on = cloud.configure(json!({"vendor_limits": true})).await;
    assert_eq!(on.body["vendor_limits"], true);
    cloud.app("tenant-1").await;
    let stop = format!(
        "{}/stop",
        machine_path(&cloud.nginx_machine("tenant-1").await)
    );
    let (replies, elapsed) = calls(6, || cloud.fly_post(&stop, None)).await;
    let statuses = statuses(&replies);
    assert!(
        refused(&statuses) >= must_refuse(3, 1.0, elapsed),
        "{statuses:?}"
    );
    let off = cloud.configure(json!({"vendor_limits": false})).await;
    assert_eq!(off.body["vendor_limits"], false);
    assert_eq!(cloud.fly_post(&stop, None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn injected_errors_come_at_roughly_the_configured_share() {
    let cloud = cloud(FakeConfig {
        error_rate: 0.3,
        seed: 42,
        ..FakeConfig::default()
    })
    .await;
    let total = 400;
    let (replies, _) = calls(total, || cloud.neon_get("/projects/p-1")).await;
    let mut failures = 0;
    for status in statuses(&replies) {
        match status {
            500 | 503 => failures += 1,
            404 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    let share = f64::from(failures) / total as f64;
    assert!((0.2..=0.4).contains(&share), "share of 5xx was {share}");
}

#[tokio::test]
async fn an_error_after_commit_still_applies_the_change() {
    let (cloud, project, main) = cloud_with_project().await;
    cloud.fake.set_config(FakeConfig {
        error_after_commit_rate: 1.0,
        ..FakeConfig::default()
    });
    let reply = cloud.bare_branch(&project, &main, "ambiguous").await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    let reads = cloud
        .neon_get(&format!("/projects/{project}/branches?search=ambiguous"))
        .await;
    assert_eq!(reads.status, StatusCode::OK, "reads are not affected");
    assert_eq!(len(&reads.body["branches"]), Some(1), "the branch exists");
}

#[tokio::test]
async fn latency_is_added_to_every_call() {
    let cloud = cloud(FakeConfig {
        latency: millis(150),
        ..FakeConfig::default()
    })
    .await;
    let started = Instant::now();
    cloud.neon_get("/projects/p-1").await;
    assert!(started.elapsed() >= millis(150));
}

// ---------------------------------------------------------------- /_fake

#[tokio::test]
async fn bulk_registration_creates_ten_thousand_tenants_under_their_exact_ids() {
    let cloud = fast_cloud().await;
    let tenants: Vec<Value> = (0..10_000)
        .map(|i| {
            json!({
                "project_id": format!("tenant-project-{i}"),
                "branch_id": format!("br-tenant-{i}"),
                "role": "app_owner",
                "database": "app",
                "password": format!("old-password-{i}"),
                "app": format!("tenant-app-{i}"),
                "machine_id": format!("{i:014x}"),
                "region": "ord",
                "image": "registry.fly.io/tenant:v1",
                "env": {"DATABASE_URL": format!("postgresql://app_owner:old-password-{i}@host/app")},
            })
        })
        .collect();
    let started = Instant::now();
    let reply = cloud.register(json!({"tenants": tenants})).await;
    let took = started.elapsed();
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body["error"]);
    assert_eq!(reply.body["registered"], 10_000);
    assert!(took < Duration::from_secs(20), "took {took:?}");

    let project = cloud.neon_get("/projects/tenant-project-777").await;
    assert_eq!(project.status, StatusCode::OK);
    let branch = cloud
        .neon_get("/projects/tenant-project-777/branches/br-tenant-777")
        .await;
    assert_eq!(branch.body["branch"]["default"], true);
    let uri = cloud
        .neon_get("/projects/tenant-project-777/connection_uri?branch_id=br-tenant-777&database_name=app&role_name=app_owner")
        .await;
    assert!(text(&uri.body["uri"]).contains(":old-password-777@"));
    let machine = cloud
        .fly_get(&format!("/apps/tenant-app-777/machines/{:014x}", 777))
        .await;
    assert_eq!(machine.body["state"], "started");
    assert_eq!(machine.body["region"], "ord");
    assert!(text(&machine.body["config"]["env"]["DATABASE_URL"]).contains("old-password-777"));
}

#[tokio::test]
async fn bulk_registration_refuses_a_taken_id_and_registers_nothing() {
    let cloud = fast_cloud().await;
    let first = json!({"tenants": [{"project_id": "p-one", "branch_id": "br-one", "app": "a-one", "machine_id": "m1"}]});
    assert_eq!(cloud.register(first).await.status, StatusCode::OK);
    let second = json!({"tenants": [
        {"project_id": "p-two", "branch_id": "br-two"},
        {"project_id": "p-three", "branch_id": "br-one"},
    ]});
    let reply = cloud.register(second).await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    assert!(reply.body["problems"][0]
        .as_str()
        .is_some_and(|p| p.contains("br-one")));
    let absent = cloud.neon_get("/projects/p-two").await;
    assert_eq!(absent.status, StatusCode::NOT_FOUND, "all or nothing");
}

#[tokio::test]
async fn a_registered_tenant_keeps_the_endpoint_its_stored_uri_names() {
    let cloud = fast_cloud().await;
    let body = json!({"tenants": [{
        "project_id": "proj-0000001", "branch_id": "br-seed-0000001",
        "endpoint_id": "ep-cool-0000abcd", "password": "pw",
    }]});
    let reply = cloud.register(body).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let uri = cloud
        .connection_uri("proj-0000001", "br-seed-0000001")
        .await;
    assert_eq!(
        uri,
        "postgresql://neondb_owner:pw@ep-cool-0000abcd.us-east-2.aws.neon.tech/neondb?sslmode=require"
    );
}

#[tokio::test]
async fn tenants_sharing_a_project_get_branches_under_its_default_branch() {
    let cloud = fast_cloud().await;
    let body = json!({"tenants": [
        {"project_id": "shared", "branch_id": "br-a", "password": "pa"},
        {"project_id": "shared", "branch_id": "br-b", "password": "pb"},
    ]});
    assert_eq!(cloud.register(body).await.status, StatusCode::OK);
    let b = cloud.neon_get("/projects/shared/branches/br-b").await;
    assert_eq!(b.body["branch"]["parent_id"], "br-a");
    assert_eq!(b.body["branch"]["default"], false);
}

#[tokio::test]
async fn state_lists_everything_held_and_counts_requests() {
    let (cloud, project, main) = cloud_with_project().await;
    let child = cloud.branch(&project, &main, "rekey-1").await;
    cloud.app("tenant-1").await;
    cloud
        .machine(
            "tenant-1",
            json!({"name": "m", "config": {"image": "nginx", "metadata": {"k": "v"}}}),
        )
        .await;
    cloud.neon_get("/projects/nope").await;

    let state = cloud.admin(Method::GET, "/state", None).await.body;
    assert_eq!(
        state,
        cloud.fake.state(),
        "the handle and the endpoint agree"
    );
    let projects = &state["neon"]["projects"];
    assert_eq!(projects[0]["id"], json!(project));
    let branches = projects[0]["branches"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let child_state = branches
        .iter()
        .find(|b| b["id"] == json!(child))
        .unwrap_or_else(|| panic!("child branch missing from state"));
    assert_eq!(child_state["parent_id"], json!(main));
    assert!(child_state["roles"][0]["password"].is_string());
    assert_eq!(len(&child_state["endpoints"]), Some(1));
    let machine = &state["fly"]["apps"][0]["machines"][0];
    assert_eq!(machine["metadata"]["k"], "v");
    assert_eq!(machine["state"], "started");
    assert_eq!(state["requests"]["by_api"]["neon"]["404"], 1);
    assert_eq!(state["requests"]["by_api"]["neon"]["201"], 2);
}

#[tokio::test]
async fn config_can_be_changed_over_http() {
    let cloud = fast_cloud().await;
    let set = cloud
        .configure(json!({"error_rate": 1.0, "neon_api_key": "secret-key"}))
        .await;
    assert_eq!(set.status, StatusCode::OK);
    assert_eq!(set.body["neon_api_key_set"], true);
    assert!(
        !set.body.to_string().contains("secret-key"),
        "credentials are never echoed"
    );
    let refused = cloud.neon_get("/projects/p").await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    cloud.configure(json!({"neon_api_key": null})).await;
    let failing = cloud.neon_get("/projects/p").await;
    assert!(failing.status.is_server_error());
    let bad = cloud.configure(json!({"error_rate": 2})).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    cloud.configure(json!({"error_rate": 0})).await;
    assert_eq!(
        cloud.neon_get("/projects/p").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_same_seed_gives_the_same_ids() {
    let first = cloud(seeded(9)).await;
    let second = cloud(seeded(9)).await;
    assert_eq!(first.project().await, second.project().await);
}

#[tokio::test]
async fn shutdown_ends_a_pending_wait_promptly() {
    let cloud = cloud_with_app().await;
    let id = cloud.unlaunched_machine().await;
    let url = format!(
        "{}{}/wait?timeout=60",
        cloud.fake.fly_url(),
        machine_path(&id)
    );
    let waiting = tokio::spawn(reqwest::get(url));
    tokio::time::sleep(millis(200)).await;
    let started = Instant::now();
    cloud.fake.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(5));
    let answer = waiting.await.unwrap_or_else(|e| panic!("{e}"));
    if let Ok(response) = answer {
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}

// ---------------------------------------------------------------- the binary

/// A plain HTTP/1.1 GET over std, for tests outside a runtime.
fn raw_get(addr: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .unwrap_or_else(|e| panic!("{e}"));
    answer
}

#[test]
fn the_binary_prints_its_address_and_stops_cleanly_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let mut child = Command::new(env!("CARGO_BIN_EXE_fake-cloud"))
        .args(["--listen", "127.0.0.1:0", "--seed", "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run fake-cloud: {e}"));
    let stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = line
        .trim_end()
        .strip_prefix("listening on http://127.0.0.1:")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
    assert!(addr.parse::<u16>().is_ok(), "{line:?}");
    let state = raw_get(&format!("127.0.0.1:{addr}"), "/_fake/state");
    assert!(state.starts_with("HTTP/1.1 200"), "{state}");
    assert!(state.contains("\"projects\""), "{state}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap_or_else(|e| panic!("{e}")) {
            assert!(status.success(), "exit status {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "fake-cloud did not stop on SIGTERM"
        );
        std::thread::sleep(millis(50));
    }
}

#[test]
fn the_binary_refuses_a_non_loopback_address() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_fake-cloud"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run fake-cloud: {e}"));
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
}
