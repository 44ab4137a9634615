//! kube-apiserver's audit log (`--audit-log-path`, JSON lines at the `Metadata` level): who
//! made which request and what the server answered. Each request becomes the same
//! [`ApiRequest`] the mock server logs, so one RBAC check serves both, plus the user and the
//! answer's status code (403: the authorizer refused it).
//!
//! A long-running request (a watch) is logged at `ResponseStarted` and at `ResponseComplete`
//! under one `auditID`: it is counted once.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use serde::Deserialize;

use crate::apiserver::audit::ApiRequest;

/// Errors reading the audit log.
#[derive(Debug, thiserror::Error)]
pub enum AuditLogError {
    /// The file could not be read.
    #[error("reading the audit log {path}")]
    Read {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A line was not an audit event.
    #[error("audit log line {line} is not an audit event: {text}")]
    Parse {
        /// 1-based line number.
        line: usize,
        /// Its start.
        text: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// One request the API server answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditedRequest {
    /// The authenticated user (`system:serviceaccount:NS:NAME` for a service account).
    pub user: String,
    /// What the authorizer was asked.
    pub request: ApiRequest,
    /// The answer's HTTP status code (0 when the event carries none).
    pub code: u16,
    /// The request URI (path and query), for messages.
    pub uri: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Event {
    #[serde(rename = "auditID")]
    audit_id: String,
    stage: String,
    verb: String,
    #[serde(rename = "requestURI")]
    request_uri: String,
    user: User,
    #[serde(default, rename = "sourceIPs")]
    source_ips: Vec<String>,
    object_ref: Option<ObjectRef>,
    response_status: Option<ResponseStatus>,
}

#[derive(Deserialize)]
struct User {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ObjectRef {
    #[serde(default)]
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    #[serde(default)]
    api_group: String,
    subresource: Option<String>,
}

#[derive(Deserialize)]
struct ResponseStatus {
    #[serde(default)]
    code: u16,
}

/// The resource requests in audit log `text`, one per request (non-resource requests such as
/// `/readyz` and `/version` are left out: every authenticated client may make them).
pub fn parse(text: &str) -> Result<Vec<AuditedRequest>, AuditLogError> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let e: Event = serde_json::from_str(line).map_err(|source| AuditLogError::Parse {
            line: i + 1,
            text: line.chars().take(300).collect(),
            source,
        })?;
        // A watch's ResponseComplete repeats its ResponseStarted; a panic has no response.
        if e.stage == "RequestReceived" || !seen.insert(e.audit_id.clone()) {
            continue;
        }
        let Some(obj) = e.object_ref else { continue };
        if obj.resource.is_empty() {
            continue;
        }
        let client = e
            .source_ips
            .first()
            .and_then(|a| a.parse().ok())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        out.push(AuditedRequest {
            user: e.user.username,
            request: ApiRequest {
                client,
                verb: e.verb,
                api_group: obj.api_group,
                resource: obj.resource,
                subresource: obj.subresource,
                namespace: obj.namespace,
                name: obj.name,
            },
            code: e.response_status.map(|s| s.code).unwrap_or(0),
            uri: e.request_uri,
        });
    }
    Ok(out)
}

/// [`parse`] of the file at `path`.
pub fn read_file(path: &Path) -> Result<Vec<AuditedRequest>, AuditLogError> {
    let text = std::fs::read_to_string(path).map_err(|source| AuditLogError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const LOG: &str = r#"{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a1","stage":"ResponseStarted","requestURI":"/api/v1/nodes?watch=1","verb":"watch","user":{"username":"system:serviceaccount:meshd-system:meshd","groups":["system:serviceaccounts"]},"sourceIPs":["127.0.0.1"],"objectRef":{"resource":"nodes","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200}}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a1","stage":"ResponseComplete","requestURI":"/api/v1/nodes?watch=1","verb":"watch","user":{"username":"system:serviceaccount:meshd-system:meshd"},"sourceIPs":["127.0.0.1"],"objectRef":{"resource":"nodes","apiVersion":"v1"},"responseStatus":{"metadata":{},"code":200}}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a2","stage":"ResponseComplete","requestURI":"/readyz","verb":"get","user":{"username":"admin"},"sourceIPs":["127.0.0.1"],"responseStatus":{"metadata":{},"code":200}}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a3","stage":"ResponseComplete","requestURI":"/api/v1/namespaces/meshd-system/configmaps?fieldSelector=metadata.name%3Dmeshd-config","verb":"list","user":{"username":"system:serviceaccount:meshd-system:meshd"},"sourceIPs":["10.0.0.2"],"objectRef":{"resource":"configmaps","namespace":"meshd-system","name":"meshd-config","apiVersion":"v1"},"responseStatus":{"metadata":{},"status":"Failure","reason":"Forbidden","code":403}}
{"kind":"Event","apiVersion":"audit.k8s.io/v1","level":"Metadata","auditID":"a4","stage":"ResponseComplete","requestURI":"/api/v1/nodes/n1/status","verb":"patch","user":{"username":"u"},"sourceIPs":["127.0.0.1"],"objectRef":{"resource":"nodes","name":"n1","apiVersion":"v1","subresource":"status"},"responseStatus":{"metadata":{},"code":200}}
"#;

    #[test]
    fn one_request_per_audit_id_resource_requests_only() {
        let r = parse(LOG).unwrap();
        assert_eq!(r.len(), 3, "{r:?}");
        assert_eq!(r[0].request.verb, "watch");
        assert_eq!(r[0].request.resource, "nodes");
        assert_eq!(r[0].code, 200);
        assert_eq!(r[1].code, 403);
        assert_eq!(r[1].request.name.as_deref(), Some("meshd-config"));
        assert_eq!(r[1].request.namespace.as_deref(), Some("meshd-system"));
        assert_eq!(r[1].request.client, IpAddr::from([10, 0, 0, 2]));
        assert_eq!(r[2].request.rbac_resource(), "nodes/status");
    }

    #[test]
    fn a_line_that_is_not_an_event_is_named() {
        let err = parse("{\"kind\":\"Event\"}\n").unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }
}
