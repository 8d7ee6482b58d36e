//! The Neon API v2 JSON shapes of the fake's state: project, branch,
//! annotation, role, database, endpoint, operation and connection URI.
//!
//! Every function reads state at one instant (`Now`) so a response is
//! consistent with itself. Rules and state live in `model`.

use serde_json::{json, Value};
use tokio::time::Instant;

use crate::http::{timestamp, Now};
use crate::neon::model::{Branch, Database, Endpoint, Operation, Project, Role};

pub(crate) fn project(p: &Project) -> Value {
    let region = p.region_id.strip_prefix("aws-").unwrap_or(&p.region_id);
    json!({
        "id": p.id,
        "platform_id": "aws",
        "region_id": p.region_id,
        "name": p.name,
        "provisioner": "k8s-neonvm",
        "pg_version": p.pg_version,
        "proxy_host": format!("{region}.aws.neon.tech"),
        "store_passwords": p.store_passwords,
        "history_retention_seconds": 86400,
        "creation_source": "console",
        "default_endpoint_settings": {"autoscaling_limit_min_cu": 0.25, "autoscaling_limit_max_cu": 0.25, "suspend_timeout_seconds": 0},
        "created_at": timestamp(p.created_at),
        "updated_at": timestamp(p.created_at),
    })
}

pub(crate) fn branch(project_id: &str, b: &Branch, now: &Now) -> Value {
    let mut value = json!({
        "id": b.id,
        "project_id": project_id,
        "name": b.name,
        "current_state": b.current_state(now.at),
        "state_changed_at": timestamp(b.created_at),
        "creation_source": "console",
        "default": b.default,
        "primary": b.default,
        "protected": b.protected,
        "init_source": "parent-data",
        "logical_size": 30_000_000,
        "cpu_used_sec": 0,
        "active_time_seconds": 0,
        "compute_time_seconds": 0,
        "written_data_bytes": 0,
        "data_transfer_bytes": 0,
        "created_at": timestamp(b.created_at),
        "updated_at": timestamp(b.updated_at),
    });
    if let (Some(parent_id), Some(object)) = (&b.parent_id, value.as_object_mut()) {
        object.insert("parent_id".into(), json!(parent_id));
        object.insert("parent_lsn".into(), json!("0/1F1C5A8"));
    }
    if b.current_state(now.at) != "ready" {
        if let Some(object) = value.as_object_mut() {
            object.insert("pending_state".into(), json!("ready"));
        }
    }
    value
}

/// The `annotation` object Neon attaches to a branch.
pub(crate) fn annotation(b: &Branch) -> Value {
    json!({
        "object": {"type": "console/branch", "id": b.id},
        "value": b.annotation,
        "created_at": timestamp(b.created_at),
        "updated_at": timestamp(b.updated_at),
    })
}

/// A role; the password only where the API returns one (create project,
/// reset password).
pub(crate) fn role(branch_id: &str, r: &Role, password: Option<&str>) -> Value {
    let mut value = json!({
        "branch_id": branch_id,
        "name": r.name,
        "protected": false,
        "created_at": timestamp(r.created_at),
        "updated_at": timestamp(r.updated_at),
    });
    if let (Some(password), Some(object)) = (password, value.as_object_mut()) {
        object.insert("password".into(), json!(password));
    }
    value
}

/// A branch's roles, each with the password it answers to at
/// `passwords_at` when that is given (create project), without otherwise.
pub(crate) fn roles(b: &Branch, passwords_at: Option<Instant>) -> Value {
    Value::Array(
        b.roles
            .values()
            .map(|r| role(&b.id, r, passwords_at.map(|at| r.password(at))))
            .collect(),
    )
}

pub(crate) fn database(branch_id: &str, d: &Database) -> Value {
    json!({
        "id": d.id,
        "branch_id": branch_id,
        "name": d.name,
        "owner_name": d.owner_name,
        "created_at": timestamp(d.created_at),
        "updated_at": timestamp(d.created_at),
    })
}

/// A branch's databases.
pub(crate) fn databases(b: &Branch) -> Value {
    Value::Array(b.databases.values().map(|d| database(&b.id, d)).collect())
}

/// `endpoints` of the project, as a JSON array.
pub(crate) fn endpoints<'e>(
    p: &Project,
    endpoints: impl Iterator<Item = &'e Endpoint>,
    now: &Now,
) -> Value {
    Value::Array(endpoints.map(|e| endpoint(p, e, now)).collect())
}

pub(crate) fn endpoint(p: &Project, e: &Endpoint, now: &Now) -> Value {
    let region = p.region_id.strip_prefix("aws-").unwrap_or(&p.region_id);
    let mut value = json!({
        "id": e.id,
        "host": e.host,
        "project_id": p.id,
        "branch_id": e.branch_id,
        "region_id": p.region_id,
        "type": e.kind.as_str(),
        "current_state": e.current_state(now.at),
        "pooler_enabled": false,
        "pooler_mode": "transaction",
        "disabled": e.disabled,
        "passwordless_access": true,
        "autoscaling_limit_min_cu": 0.25,
        "autoscaling_limit_max_cu": 0.25,
        "suspend_timeout_seconds": 0,
        "provisioner": "k8s-neonvm",
        "settings": {},
        "creation_source": "console",
        "proxy_host": format!("{region}.aws.neon.tech"),
        "created_at": timestamp(e.created_at),
        "updated_at": timestamp(e.updated_at),
    });
    if e.current_state(now.at) == "init" {
        if let Some(object) = value.as_object_mut() {
            object.insert("pending_state".into(), json!("active"));
        }
    }
    value
}

pub(crate) fn operation(project_id: &str, op: &Operation, now: &Now) -> Value {
    let status = op.status(now.at);
    let seen = now.at.min(op.finishes_at);
    let elapsed = seen.saturating_duration_since(op.scheduled_at);
    let mut value = json!({
        "id": op.id,
        "project_id": project_id,
        "action": op.action,
        "status": status,
        "failures_count": 0,
        "created_at": timestamp(op.created_at),
        "updated_at": timestamp(now.wall_at(seen)),
        "total_duration_ms": u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
    });
    if let Some(object) = value.as_object_mut() {
        if let Some(branch_id) = &op.branch_id {
            object.insert("branch_id".into(), json!(branch_id));
        }
        if let Some(endpoint_id) = &op.endpoint_id {
            object.insert("endpoint_id".into(), json!(endpoint_id));
        }
    }
    value
}

/// The operations at `indices` of the project, as a JSON array.
pub(crate) fn operations(p: &Project, indices: &[usize], now: &Now) -> Value {
    Value::Array(
        indices
            .iter()
            .filter_map(|&i| p.operations.get(i))
            .map(|op| operation(&p.id, op, now))
            .collect(),
    )
}

/// `postgresql://role:password@host/db?sslmode=require`, with the user
/// name and password percent-encoded where needed.
pub(crate) fn connection_uri(role: &str, password: &str, host: &str, database: &str) -> String {
    let base = format!("postgresql://{host}/");
    match url::Url::parse(&base) {
        Ok(mut uri) => {
            // Setting credentials fails only for URLs without a host, and
            // `base` always has one; fall through to the plain form if not.
            if uri.set_username(role).is_ok() && uri.set_password(Some(password)).is_ok() {
                uri.set_path(database);
                uri.set_query(Some("sslmode=require"));
                return uri.into();
            }
            format!("postgresql://{role}:{password}@{host}/{database}?sslmode=require")
        }
        Err(_) => format!("postgresql://{role}:{password}@{host}/{database}?sslmode=require"),
    }
}

/// The `connection_uris` entry of a create response.
pub(crate) fn connection_uri_entry(
    role: &str,
    password: &str,
    e: &Endpoint,
    database: &str,
) -> Value {
    json!({
        "connection_uri": connection_uri(role, password, &e.host, database),
        "connection_parameters": {
            "database": database,
            "password": password,
            "role": role,
            "host": e.host,
            "pooler_host": e.pooler_host(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_uri_has_the_neon_shape() {
        assert_eq!(
            connection_uri("neondb_owner", "npg_abc", "ep-x-1.us-east-2.aws.neon.tech", "neondb"),
            "postgresql://neondb_owner:npg_abc@ep-x-1.us-east-2.aws.neon.tech/neondb?sslmode=require"
        );
    }

    #[test]
    fn connection_uri_escapes_awkward_credentials() {
        let uri = connection_uri("a@b", "p/w:d", "h.example", "db");
        assert_eq!(
            uri,
            "postgresql://a%40b:p%2Fw%3Ad@h.example/db?sslmode=require"
        );
    }
}
