//! Tests against a real kube-apiserver (v1.20.2 and etcd, `meshd_lab::kube_apiserver`), with
//! meshd authenticated as its own service account and bound by exactly the RBAC that
//! `kubectl kustomize deploy/` renders, so the real authorizer judges every request meshd
//! makes. The API server's audit log records each one with its answer.
//!
//! [`require`] fails the test when the binary is not built (`scripts/kube-apiserver.sh
//! build`, run by `scripts/install-deps.sh`), on CI and on a developer's machine alike.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::Deserialize as _;

pub use meshd_lab::kube_apiserver::{
    audit, available, binary_dir, service_account_user, KubeApiServer, KubeApiServerError,
    ServerConfig, StaticToken, VERSION,
};

/// meshd's namespace in `deploy/`.
pub const MESHD_NAMESPACE: &str = "meshd-system";

/// meshd's service account in `deploy/`.
pub const MESHD_SERVICE_ACCOUNT: &str = "meshd";

/// The RBAC kinds (and what they need to exist) taken from the rendered manifests.
const RBAC_KINDS: [&str; 6] = [
    "Namespace",
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// Fails the test (panics, naming the fix) unless everything a real API server needs is here.
pub fn require() {
    testkit::require_tools(&["etcd", "openssl", "kubectl"]);
    if let Err(e) = meshd_lab::kube_apiserver::binary() {
        panic!("{e}");
    }
}

/// The repository's `deploy/` directory.
pub fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// `kubectl kustomize DIR` as JSON values, one per object.
pub fn render(dir: &Path) -> Vec<serde_json::Value> {
    let out = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running kubectl kustomize: {e}"));
    assert!(
        out.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    serde_norway::Deserializer::from_str(&text)
        .map(|doc| {
            serde_json::Value::deserialize(doc)
                .unwrap_or_else(|e| panic!("kubectl kustomize output does not parse: {e}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The Namespace, ServiceAccount and RBAC objects of `kubectl kustomize deploy/`.
pub fn deploy_rbac() -> Vec<serde_json::Value> {
    render(&deploy_dir())
        .into_iter()
        .filter(|o| RBAC_KINDS.contains(&o["kind"].as_str().unwrap_or_default()))
        .collect()
}

/// A real API server with `deploy/`'s RBAC applied, a kubeconfig for the admin and one for
/// meshd's service account.
pub struct TestCluster {
    /// The server (dropped last: it kills etcd and kube-apiserver and removes its directory).
    pub server: KubeApiServer,
    /// meshd's token.
    pub meshd: StaticToken,
    _dir: tempfile::TempDir,
}

impl TestCluster {
    /// Starts a server on loopback with `extra` service-account identities besides meshd's,
    /// and applies `deploy/`'s Namespace, ServiceAccount and RBAC as the admin.
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// [`TestCluster::start`], with `adjust` changing the server's configuration first.
    pub fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        require();
        let dir = tempfile::Builder::new()
            .prefix("meshd-kube-")
            .tempdir()
            .unwrap_or_else(|e| panic!("creating a temporary directory: {e}"));
        let meshd = StaticToken::service_account(MESHD_NAMESPACE, MESHD_SERVICE_ACCOUNT);
        let mut config = ServerConfig::loopback(dir.path().join("server"));
        config.tokens.push(meshd.clone());
        adjust(&mut config);
        let server = KubeApiServer::start(config).unwrap_or_else(|e| {
            panic!(
                "starting kube-apiserver: {e}: {:?}",
                std::error::Error::source(&e)
            )
        });
        server
            .write_kubeconfig(&dir.path().join("meshd.kubeconfig"), &meshd.token)
            .unwrap_or_else(|e| panic!("{e}"));
        let cluster = Self {
            server,
            meshd,
            _dir: dir,
        };
        cluster.apply(&deploy_rbac());
        cluster.wait_can_i("list", "nodes", None);
        cluster
    }

    /// The admin's kubeconfig (`system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.server.admin_kubeconfig()
    }

    /// meshd's kubeconfig (its service account's token).
    pub fn meshd_kubeconfig(&self) -> PathBuf {
        self._dir.path().join("meshd.kubeconfig")
    }

    /// Runs `kubectl ARGS` as the admin, `stdin` fed in.
    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write as _;
        let mut child = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("running kubectl: {e}"));
        let mut input = child.stdin.take();
        if let (Some(text), Some(pipe)) = (stdin, input.as_mut()) {
            pipe.write_all(text.as_bytes())
                .unwrap_or_else(|e| panic!("writing to kubectl: {e}"));
        }
        drop(input);
        child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for kubectl: {e}"))
    }

    /// `kubectl apply -f -` of `objects` as the admin; panics when it fails.
    pub fn apply(&self, objects: &[serde_json::Value]) {
        let list = serde_json::json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let out = self.kubectl(&["apply", "-f", "-"], Some(&list.to_string()));
        assert!(
            out.status.success(),
            "kubectl apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Waits until the authorizer (its informers follow RBAC changes asynchronously) lets meshd
    /// `verb` `resource`.
    pub fn wait_can_i(&self, verb: &str, resource: &str, namespace: Option<&str>) {
        let user = service_account_user(MESHD_NAMESPACE, MESHD_SERVICE_ACCOUNT);
        let mut args = vec!["auth", "can-i", verb, resource, "--as", &user];
        if let Some(ns) = namespace {
            args.extend(["-n", ns]);
        }
        for _ in 0..100 {
            if self.kubectl(&args, None).status.success() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("meshd's service account never got {verb} {resource}");
    }

    /// Every resource request meshd's service account made so far, with its answer.
    pub fn meshd_requests(&self) -> Vec<audit::AuditedRequest> {
        let user = service_account_user(MESHD_NAMESPACE, MESHD_SERVICE_ACCOUNT);
        audit::read_file(&self.server.audit_log())
            .unwrap_or_else(|e| panic!("{e}: {:?}", std::error::Error::source(&e)))
            .into_iter()
            .filter(|r| r.user == user)
            .collect()
    }

    /// meshd's requests the authorizer refused (403), as `verb resource (uri)`.
    pub fn meshd_forbidden(&self) -> BTreeSet<String> {
        self.meshd_requests()
            .into_iter()
            .filter(|r| r.code == 403)
            .map(|r| {
                format!(
                    "{} {} ({})",
                    r.request.verb,
                    r.request.rbac_resource(),
                    r.uri
                )
            })
            .collect()
    }
}

/// `deploy/`'s RBAC with one rule removed, bound to service account `account` instead of
/// meshd's (roles renamed after it), for each rule in turn: `(rule description, objects)`.
/// Together with SubjectAccessReviews this shows that every rule is needed without a run of
/// meshd per rule.
pub fn rbac_without_each_rule(
    rbac: &[serde_json::Value],
    account: impl Fn(usize) -> String,
) -> Vec<(String, Vec<serde_json::Value>)> {
    let roles: Vec<(usize, usize)> = rbac
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o["kind"].as_str(), Some("ClusterRole" | "Role")))
        .flat_map(|(i, o)| {
            let n = o["rules"].as_array().map_or(0, Vec::len);
            (0..n).map(move |r| (i, r))
        })
        .collect();
    roles
        .into_iter()
        .enumerate()
        .map(|(k, (object, rule))| {
            let sa = account(k);
            let suffix = format!("-{sa}");
            let mut described = String::new();
            let objects = rbac
                .iter()
                .enumerate()
                .filter_map(|(i, o)| {
                    let mut o = o.clone();
                    match o["kind"].as_str().unwrap_or_default() {
                        "ClusterRole" | "Role" => {
                            rename(&mut o["metadata"]["name"], &suffix);
                            if i == object {
                                if let Some(rules) = o["rules"].as_array_mut() {
                                    let removed = rules.remove(rule);
                                    described = format!(
                                        "{} {}: {}",
                                        o["kind"].as_str().unwrap_or_default(),
                                        o["metadata"]["name"].as_str().unwrap_or_default(),
                                        removed
                                    );
                                }
                            }
                        }
                        "ClusterRoleBinding" | "RoleBinding" => {
                            rename(&mut o["metadata"]["name"], &suffix);
                            rename(&mut o["roleRef"]["name"], &suffix);
                            for s in o["subjects"].as_array_mut().into_iter().flatten() {
                                s["name"] = serde_json::json!(sa);
                            }
                        }
                        "ServiceAccount" => o["metadata"]["name"] = serde_json::json!(sa),
                        _ => return None,
                    }
                    Some(o)
                })
                .collect();
            (described, objects)
        })
        .collect()
}

fn rename(name: &mut serde_json::Value, suffix: &str) {
    *name = serde_json::json!(format!("{}{suffix}", name.as_str().unwrap_or_default()));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn each_variant_lacks_one_rule_and_binds_its_own_account() {
        let rbac = vec![
            json!({"kind": "ServiceAccount", "metadata": {"name": "meshd", "namespace": "ns"}}),
            json!({"kind": "ClusterRole", "metadata": {"name": "r"},
                   "rules": [{"verbs": ["get"]}, {"verbs": ["list"]}]}),
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": "r"},
                   "roleRef": {"kind": "ClusterRole", "name": "r"},
                   "subjects": [{"kind": "ServiceAccount", "name": "meshd", "namespace": "ns"}]}),
            json!({"kind": "Role", "metadata": {"name": "q", "namespace": "ns"},
                   "rules": [{"verbs": ["create"]}]}),
        ];
        let variants = rbac_without_each_rule(&rbac, |k| format!("minus-{k}"));
        assert_eq!(variants.len(), 3);
        let (what, objects) = &variants[1];
        assert!(
            what.contains("ClusterRole r-minus-1") && what.contains("list"),
            "{what}"
        );
        assert_eq!(objects[0]["metadata"]["name"], json!("minus-1"));
        assert_eq!(objects[1]["rules"], json!([{"verbs": ["get"]}]));
        assert_eq!(objects[2]["roleRef"]["name"], json!("r-minus-1"));
        assert_eq!(objects[2]["subjects"][0]["name"], json!("minus-1"));
        assert_eq!(objects[3]["rules"], json!([{"verbs": ["create"]}]));
        assert_eq!(variants[2].1[3]["rules"], json!([]));
    }
}
