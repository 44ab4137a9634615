//! `deploy/` rendered with `kubectl kustomize` (`integration::kube_apiserver::render`) into
//! `k8s-openapi` types: every object of one rendering by kind, and a typed view of one object.

use std::path::Path;

pub use integration::kube_apiserver::deploy_dir;
use integration::kube_apiserver::render as kustomize;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

/// Every object of one rendering, typed.
#[derive(Default)]
pub struct Rendered {
    pub namespaces: Vec<Namespace>,
    pub service_accounts: Vec<ServiceAccount>,
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    pub config_maps: Vec<ConfigMap>,
    pub daemon_sets: Vec<DaemonSet>,
    /// ValidatingAdmissionPolicies and their bindings, untyped.
    pub admission_policies: Vec<serde_json::Value>,
    pub admission_policy_bindings: Vec<serde_json::Value>,
}

/// `kubectl kustomize DIR`, parsed. Without kubectl the test fails (`scripts/install-deps.sh`
/// installs it).
pub fn render(dir: &Path) -> Rendered {
    testkit::require_tool("kubectl");
    let mut rendered = Rendered::default();
    for value in kustomize(dir) {
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        macro_rules! push {
            ($field:ident) => {
                rendered.$field.push(typed(&kind, &value))
            };
        }
        match kind.as_str() {
            "Namespace" => push!(namespaces),
            "ServiceAccount" => push!(service_accounts),
            "ClusterRole" => push!(cluster_roles),
            "ClusterRoleBinding" => push!(cluster_role_bindings),
            "Role" => push!(roles),
            "RoleBinding" => push!(role_bindings),
            "ConfigMap" => push!(config_maps),
            "DaemonSet" => push!(daemon_sets),
            "ValidatingAdmissionPolicy" => rendered.admission_policies.push(value),
            "ValidatingAdmissionPolicyBinding" => rendered.admission_policy_bindings.push(value),
            other => panic!("unexpected kind {other:?} in {}", dir.display()),
        }
    }
    rendered
}

/// `value` as a `k8s-openapi` type; panics naming the kind when it does not parse.
pub fn typed<T: serde::de::DeserializeOwned>(kind: &str, value: &serde_json::Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{kind} does not parse: {e}\n{value:#}"))
}
