//! The request bodies of the Neon API v2 calls the fake serves, as serde
//! types. Unknown fields are ignored, as the real API tolerates them;
//! fields the fake does not model are simply not listed.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::neon::model::EndpointType;

/// `POST /projects` body, all optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CreateProject {
    #[serde(default)]
    pub(crate) project: ProjectSpec,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct ProjectSpec {
    pub(crate) name: Option<String>,
    pub(crate) region_id: Option<String>,
    pub(crate) pg_version: Option<u32>,
    pub(crate) store_passwords: Option<bool>,
    #[serde(default)]
    pub(crate) branch: DefaultBranchSpec,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct DefaultBranchSpec {
    pub(crate) name: Option<String>,
    pub(crate) role_name: Option<String>,
    pub(crate) database_name: Option<String>,
}

/// `POST /projects/{p}/branches` body, all optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CreateBranch {
    #[serde(default)]
    pub(crate) branch: BranchSpec,
    #[serde(default)]
    pub(crate) endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub(crate) annotation_value: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct BranchSpec {
    pub(crate) parent_id: Option<String>,
    pub(crate) name: Option<String>,
    pub(crate) protected: Option<bool>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct EndpointSpec {
    #[serde(rename = "type")]
    pub(crate) kind: EndpointType,
}

/// `POST …/roles` body.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CreateRole {
    pub(crate) role: Option<RoleSpec>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct RoleSpec {
    pub(crate) name: String,
}

/// `POST /projects/{p}/endpoints` body.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct CreateEndpoint {
    pub(crate) endpoint: Option<NewEndpointSpec>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct NewEndpointSpec {
    pub(crate) branch_id: String,
    #[serde(rename = "type")]
    pub(crate) kind: EndpointType,
}

/// `PATCH /projects/{p}/endpoints/{e}` body.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct UpdateEndpoint {
    #[serde(default)]
    pub(crate) endpoint: EndpointPatch,
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct EndpointPatch {
    pub(crate) disabled: Option<bool>,
}
