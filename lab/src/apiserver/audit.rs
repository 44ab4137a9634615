//! The mock API server's request log: for every resource request, what the real API server's
//! authorizer would be asked (its `RequestInfo`: verb, API group, resource, subresource,
//! namespace, name) and which client address asked. Tests compare it with the RBAC rules in
//! `deploy/` (the integration crate's `rbac` module): every request must be granted and every grant used.
//!
//! The attributes follow kube-apiserver's `RequestInfoFactory`
//! (<https://kubernetes.io/docs/reference/access-authn-authz/authorization/#determine-the-request-verb>):
//! `GET` of an object is `get`, of a collection `list` (`watch` with `?watch=1`), `POST` is
//! `create`, `PUT` `update`, `PATCH` `patch`, `DELETE` of an object `delete` (of a collection
//! `deletecollection`). A list or watch whose field selector is `metadata.name=NAME` carries
//! that name, which is what lets RBAC's `resourceNames` authorise it. Non-resource requests
//! (`/version`, `/api`) are not logged: every authenticated client may make them.

use std::collections::HashMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// One resource request, as the authorizer sees it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ApiRequest {
    /// The client's address (in the lab: the node whose meshd asked).
    pub client: IpAddr,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete` or `deletecollection`.
    pub verb: String,
    /// The API group (`""` for the core group).
    pub api_group: String,
    /// The resource (plural), e.g. `nodes`.
    pub resource: String,
    /// The subresource, e.g. `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
    /// The namespace of a namespaced request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The object's name (from the path, or a list/watch's `metadata.name` field selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl ApiRequest {
    /// The request attributes of `method` on `path` with `query`, or `None` for a
    /// non-resource request.
    pub fn parse(
        client: IpAddr,
        method: &str,
        path: &str,
        query: &HashMap<String, String>,
    ) -> Option<Self> {
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        // /api/v1/... (core) or /apis/GROUP/VERSION/...
        let (api_group, rest) = match parts.as_slice() {
            ["api", _version, rest @ ..] => ("", rest),
            ["apis", group, _version, rest @ ..] => (*group, rest),
            _ => return None,
        };
        let (namespace, rest) = match rest {
            ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
            _ => (None, rest),
        };
        let (resource, name, subresource) = match rest {
            [resource] => (*resource, None, None),
            [resource, name] => (*resource, Some(name.to_string()), None),
            [resource, name, sub] => (*resource, Some(name.to_string()), Some(sub.to_string())),
            _ => return None,
        };
        let watch = matches!(query.get("watch").map(String::as_str), Some("1" | "true"));
        let verb = match (method, name.is_some()) {
            ("GET", true) => "get",
            ("GET", false) if watch => "watch",
            ("GET", false) => "list",
            ("POST", _) => "create",
            ("PUT", _) => "update",
            ("PATCH", _) => "patch",
            ("DELETE", true) => "delete",
            ("DELETE", false) => "deletecollection",
            _ => return None,
        };
        // kube-apiserver takes a list's or watch's name from a `metadata.name=` field selector.
        let name = name.or_else(|| {
            let selector = query.get("fieldSelector")?;
            selector.split(',').find_map(|term| {
                let (field, value) = term.split_once("==").or_else(|| term.split_once('='))?;
                (field.trim() == "metadata.name").then(|| value.trim().to_string())
            })
        });
        Some(Self {
            client,
            verb: verb.to_string(),
            api_group: api_group.to_string(),
            resource: resource.to_string(),
            subresource,
            namespace,
            name,
        })
    }

    /// `resource` or `resource/subresource`, as RBAC rules name it.
    pub fn rbac_resource(&self) -> String {
        match &self.subresource {
            Some(sub) => format!("{}/{sub}", self.resource),
            None => self.resource.clone(),
        }
    }
}

/// The log: kept in memory and, optionally, appended to a file as JSON lines.
#[derive(Debug, Default)]
pub struct AuditLog {
    entries: Vec<ApiRequest>,
    file: Option<std::fs::File>,
}

impl AuditLog {
    /// A log that also appends every entry to `path` (one JSON object a line).
    pub fn to_file(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            entries: Vec::new(),
            file: Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        })
    }

    /// Records `request`.
    pub fn record(&mut self, request: ApiRequest) {
        if let Some(file) = &mut self.file {
            let mut line = serde_json::to_string(&request).unwrap_or_default();
            line.push('\n');
            if let Err(e) = file.write_all(line.as_bytes()) {
                tracing::warn!(error = %e, "test API server: writing the audit log failed");
            }
        }
        self.entries.push(request);
    }

    /// Every request so far.
    pub fn entries(&self) -> &[ApiRequest] {
        &self.entries
    }
}

/// Reads a log written by [`AuditLog::to_file`].
pub fn read_file(path: &Path) -> std::io::Result<Vec<ApiRequest>> {
    std::fs::read_to_string(path)?
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l)
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(method: &str, path: &str, query: &[(&str, &str)]) -> Option<ApiRequest> {
        let q = query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ApiRequest::parse(IpAddr::from([127, 0, 0, 1]), method, path, &q)
    }

    fn attrs(r: &ApiRequest) -> (&str, &str, String, Option<&str>, Option<&str>) {
        (
            r.verb.as_str(),
            r.api_group.as_str(),
            r.rbac_resource(),
            r.namespace.as_deref(),
            r.name.as_deref(),
        )
    }

    #[test]
    fn request_attributes_follow_the_apiservers_request_info() {
        let cases = [
            (
                parse("GET", "/api/v1/nodes/n1", &[]),
                ("get", "", "nodes".to_string(), None, Some("n1")),
            ),
            (
                parse("GET", "/api/v1/nodes", &[("watch", "true")]),
                ("watch", "", "nodes".to_string(), None, None),
            ),
            (
                parse("GET", "/api/v1/nodes", &[]),
                ("list", "", "nodes".to_string(), None, None),
            ),
            (
                parse("PATCH", "/api/v1/nodes/n1/status", &[]),
                ("patch", "", "nodes/status".to_string(), None, Some("n1")),
            ),
            (
                parse(
                    "GET",
                    "/api/v1/namespaces/meshd-system/configmaps",
                    &[("fieldSelector", "metadata.name=meshd-config")],
                ),
                (
                    "list",
                    "",
                    "configmaps".to_string(),
                    Some("meshd-system"),
                    Some("meshd-config"),
                ),
            ),
            (
                parse(
                    "POST",
                    "/apis/events.k8s.io/v1/namespaces/meshd-system/events",
                    &[],
                ),
                (
                    "create",
                    "events.k8s.io",
                    "events".to_string(),
                    Some("meshd-system"),
                    None,
                ),
            ),
            (
                parse("DELETE", "/api/v1/namespaces/x/configmaps", &[]),
                (
                    "deletecollection",
                    "",
                    "configmaps".to_string(),
                    Some("x"),
                    None,
                ),
            ),
        ];
        for (got, want) in cases {
            assert_eq!(attrs(&got.unwrap()), want);
        }
        // A namespace itself is a cluster-scoped object named by the path.
        let ns = parse("GET", "/api/v1/namespaces/default", &[]).unwrap();
        assert_eq!(
            attrs(&ns),
            ("get", "", "namespaces".to_string(), None, Some("default"))
        );
        assert!(parse("GET", "/version", &[]).is_none());
        assert!(parse("GET", "/api", &[]).is_none());
        // `metadata.name!=x` names nothing.
        let r = parse(
            "GET",
            "/api/v1/nodes",
            &[("fieldSelector", "metadata.name!=x")],
        )
        .unwrap();
        assert_eq!(r.name, None);
    }
}
