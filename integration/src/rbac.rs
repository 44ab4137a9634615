//! A small RBAC authorizer for tests: which requests a service account's roles grant, and
//! which of their grants no request used.
//!
//! It follows Kubernetes' RBAC rule matching
//! (<https://kubernetes.io/docs/reference/access-authn-authz/rbac/>): a request is allowed when
//! a rule of a role bound to the service account lists its API group, its resource (as
//! `resource/subresource` for a subresource), its verb, and, when the rule has
//! `resourceNames`, its object's name; a Role's rules apply only in the Role's namespace.
//! `*` matches anything. Aggregated ClusterRoles and non-resource URLs are not modelled
//! (meshd's roles use neither).

use std::collections::BTreeSet;

use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use serde::Deserialize;

use crate::apiserver::audit::ApiRequest;

/// Errors reading RBAC manifests.
#[derive(Debug, thiserror::Error)]
pub enum RbacError {
    /// A YAML document did not parse.
    #[error("parsing the RBAC manifests")]
    Yaml(#[from] serde_norway::Error),
    /// An object did not parse into its `k8s-openapi` type.
    #[error("parsing a {kind}")]
    Object {
        /// Its kind.
        kind: String,
        /// Why.
        source: serde_json::Error,
    },
}

/// One grant: a verb on a resource (in a namespace, of a name) that a rule gives.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Grant {
    /// The Role's namespace (`None`: a ClusterRole's, every namespace and cluster scope).
    pub namespace: Option<String>,
    /// API group.
    pub api_group: String,
    /// `resource` or `resource/subresource`.
    pub resource: String,
    /// Verb.
    pub verb: String,
    /// Object name (`None`: the rule has no `resourceNames`).
    pub name: Option<String>,
}

impl std::fmt::Display for Grant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let group = if self.api_group.is_empty() {
            "core"
        } else {
            &self.api_group
        };
        write!(f, "{} {group}/{}", self.verb, self.resource)?;
        if let Some(name) = &self.name {
            write!(f, " {name:?}")?;
        }
        if let Some(ns) = &self.namespace {
            write!(f, " in {ns}")?;
        }
        Ok(())
    }
}

/// The rules bound to one service account.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// `(namespace, rule)`: `None` for a ClusterRole bound by a ClusterRoleBinding.
    rules: Vec<(Option<String>, PolicyRule)>,
}

impl Grants {
    /// The grants of service account `namespace/name` in a multi-document YAML of RBAC objects
    /// (other kinds are ignored).
    pub fn from_yaml(text: &str, namespace: &str, name: &str) -> Result<Self, RbacError> {
        let mut cluster_roles = Vec::new();
        let mut roles = Vec::new();
        let mut cluster_bindings = Vec::new();
        let mut bindings = Vec::new();
        for doc in serde_norway::Deserializer::from_str(text) {
            let value = serde_json::Value::deserialize(doc)?;
            let kind = value["kind"].as_str().unwrap_or_default().to_string();
            match kind.as_str() {
                "ClusterRole" => cluster_roles.push(typed(&kind, value)?),
                "Role" => roles.push(typed(&kind, value)?),
                "ClusterRoleBinding" => cluster_bindings.push(typed(&kind, value)?),
                "RoleBinding" => bindings.push(typed(&kind, value)?),
                _ => {}
            }
        }
        Ok(Self::bound(
            &cluster_roles,
            &roles,
            &cluster_bindings,
            &bindings,
            namespace,
            name,
        ))
    }

    /// The rules that `cluster_bindings` and `bindings` give service account
    /// `namespace/name`.
    pub fn bound(
        cluster_roles: &[ClusterRole],
        roles: &[Role],
        cluster_bindings: &[ClusterRoleBinding],
        bindings: &[RoleBinding],
        namespace: &str,
        name: &str,
    ) -> Self {
        let is_subject = |subjects: &Option<Vec<k8s_openapi::api::rbac::v1::Subject>>| {
            subjects.iter().flatten().any(|s| {
                s.kind == "ServiceAccount"
                    && s.name == name
                    && s.namespace.as_deref() == Some(namespace)
            })
        };
        let cluster_role = |n: &str| {
            cluster_roles
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(n))
        };
        let mut rules = Vec::new();
        for b in cluster_bindings.iter().filter(|b| is_subject(&b.subjects)) {
            if b.role_ref.kind == "ClusterRole" {
                if let Some(c) = cluster_role(&b.role_ref.name) {
                    rules.extend(c.rules.iter().flatten().map(|r| (None, r.clone())));
                }
            }
        }
        for b in bindings.iter().filter(|b| is_subject(&b.subjects)) {
            let ns = b.metadata.namespace.clone();
            let bound: Vec<PolicyRule> = match b.role_ref.kind.as_str() {
                // A RoleBinding to a ClusterRole grants its rules in the binding's namespace.
                "ClusterRole" => cluster_role(&b.role_ref.name)
                    .map(|c| c.rules.clone().unwrap_or_default())
                    .unwrap_or_default(),
                _ => roles
                    .iter()
                    .find(|r| {
                        r.metadata.name.as_deref() == Some(b.role_ref.name.as_str())
                            && r.metadata.namespace == ns
                    })
                    .map(|r| r.rules.clone().unwrap_or_default())
                    .unwrap_or_default(),
            };
            rules.extend(bound.into_iter().map(|r| (ns.clone(), r)));
        }
        Self { rules }
    }

    /// Whether some rule allows `request`.
    pub fn allows(&self, request: &ApiRequest) -> bool {
        self.rules
            .iter()
            .any(|(ns, rule)| rule_allows(ns.as_deref(), rule, request))
    }

    /// Every grant, one per verb, resource and name of each rule.
    pub fn grants(&self) -> BTreeSet<Grant> {
        let mut out = BTreeSet::new();
        for (ns, rule) in &self.rules {
            let names: Vec<Option<String>> = match rule.resource_names.as_deref() {
                None | Some([]) => vec![None],
                Some(names) => names.iter().cloned().map(Some).collect(),
            };
            for group in rule.api_groups.iter().flatten() {
                for resource in rule.resources.iter().flatten() {
                    for verb in &rule.verbs {
                        for name in &names {
                            out.insert(Grant {
                                namespace: ns.clone(),
                                api_group: group.clone(),
                                resource: resource.clone(),
                                verb: verb.clone(),
                                name: name.clone(),
                            });
                        }
                    }
                }
            }
        }
        out
    }

    /// Grants that none of `requests` needed.
    pub fn unused<'a>(
        &self,
        requests: impl IntoIterator<Item = &'a ApiRequest> + Clone,
    ) -> Vec<Grant> {
        self.grants()
            .into_iter()
            .filter(|g| !requests.clone().into_iter().any(|r| grant_covers(g, r)))
            .collect()
    }
}

fn typed<T: serde::de::DeserializeOwned>(
    kind: &str,
    value: serde_json::Value,
) -> Result<T, RbacError> {
    serde_json::from_value(value).map_err(|source| RbacError::Object {
        kind: kind.to_string(),
        source,
    })
}

fn matches(list: &[String], value: &str) -> bool {
    list.iter().any(|v| v == "*" || v == value)
}

fn rule_allows(namespace: Option<&str>, rule: &PolicyRule, r: &ApiRequest) -> bool {
    if namespace.is_some() && r.namespace.as_deref() != namespace {
        return false;
    }
    let names = rule.resource_names.as_deref().unwrap_or_default();
    matches(rule.api_groups.as_deref().unwrap_or_default(), &r.api_group)
        && matches(
            rule.resources.as_deref().unwrap_or_default(),
            &r.rbac_resource(),
        )
        && matches(&rule.verbs, &r.verb)
        && (names.is_empty()
            || r.name
                .as_deref()
                .is_some_and(|n| names.iter().any(|x| x == n)))
}

fn grant_covers(g: &Grant, r: &ApiRequest) -> bool {
    (g.namespace.is_none() || g.namespace == r.namespace)
        && (g.api_group == "*" || g.api_group == r.api_group)
        && (g.resource == "*" || g.resource == r.rbac_resource())
        && (g.verb == "*" || g.verb == r.verb)
        && (g.name.is_none() || g.name == r.name)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const YAML: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: r}
rules:
  - {apiGroups: [\"\"], resources: [nodes], verbs: [get, patch]}
  - {apiGroups: [\"\"], resources: [nodes/status], verbs: [patch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: r}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: r}
subjects: [{kind: ServiceAccount, name: sa, namespace: ns}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: r, namespace: ns}
rules:
  - {apiGroups: [\"\"], resources: [configmaps], resourceNames: [cm], verbs: [list]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: r, namespace: ns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: r}
subjects: [{kind: ServiceAccount, name: sa, namespace: ns}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {name: unbound, namespace: ns}
rules:
  - {apiGroups: [\"\"], resources: [secrets], verbs: [get]}
";

    fn req(
        verb: &str,
        resource: &str,
        sub: Option<&str>,
        ns: Option<&str>,
        name: Option<&str>,
    ) -> ApiRequest {
        ApiRequest {
            client: std::net::IpAddr::from([127, 0, 0, 1]),
            verb: verb.into(),
            api_group: String::new(),
            resource: resource.into(),
            subresource: sub.map(Into::into),
            namespace: ns.map(Into::into),
            name: name.map(Into::into),
        }
    }

    #[test]
    fn rules_match_verb_resource_namespace_and_name() {
        let g = Grants::from_yaml(YAML, "ns", "sa").unwrap();
        assert!(g.allows(&req("get", "nodes", None, None, Some("n1"))));
        assert!(!g.allows(&req("list", "nodes", None, None, None)));
        assert!(g.allows(&req("patch", "nodes", Some("status"), None, Some("n1"))));
        assert!(!g.allows(&req("update", "nodes", Some("status"), None, Some("n1"))));
        assert!(g.allows(&req("list", "configmaps", None, Some("ns"), Some("cm"))));
        // Another name, no name, another namespace: not granted.
        assert!(!g.allows(&req("list", "configmaps", None, Some("ns"), Some("other"))));
        assert!(!g.allows(&req("list", "configmaps", None, Some("ns"), None)));
        assert!(!g.allows(&req(
            "list",
            "configmaps",
            None,
            Some("kube-system"),
            Some("cm")
        )));
        // A role bound to no one grants nothing; another account has nothing.
        assert!(!g.allows(&req("get", "secrets", None, Some("ns"), Some("s"))));
        let other = Grants::from_yaml(YAML, "ns", "someone-else").unwrap();
        assert!(!other.allows(&req("get", "nodes", None, None, Some("n1"))));
    }

    #[test]
    fn unused_grants_are_named() {
        let g = Grants::from_yaml(YAML, "ns", "sa").unwrap();
        assert_eq!(g.grants().len(), 4);
        let used = [
            req("get", "nodes", None, None, Some("n1")),
            req("list", "configmaps", None, Some("ns"), Some("cm")),
        ];
        let unused: Vec<String> = g.unused(&used).iter().map(ToString::to_string).collect();
        assert_eq!(unused, vec!["patch core/nodes", "patch core/nodes/status"]);
    }
}
