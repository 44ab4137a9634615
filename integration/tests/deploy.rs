//! The manifests in `deploy/` render offline with `kubectl kustomize`, parse into the
//! `k8s-openapi` types, and say what meshd needs and nothing more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Namespace, PodSpec, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use meshd::settings::{Encryption, Settings, KEYS};
use serde::Deserialize;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

/// Every object of one rendering, typed.
#[derive(Default)]
struct Rendered {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    config_maps: Vec<ConfigMap>,
    daemon_sets: Vec<DaemonSet>,
    /// ValidatingAdmissionPolicies and their bindings, untyped.
    admission_policies: Vec<serde_json::Value>,
    admission_policy_bindings: Vec<serde_json::Value>,
}

/// `kubectl kustomize DIR`, parsed. Without kubectl the test fails (`scripts/install-deps.sh`
/// installs it).
fn render(dir: &Path) -> Rendered {
    testkit::require_tool("kubectl");
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(dir)
        .output()
        .unwrap_or_else(|e| panic!("running kubectl: {e}"));
    assert!(
        output.status.success(),
        "kubectl kustomize {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).unwrap();
    let mut rendered = Rendered::default();
    for doc in serde_norway::Deserializer::from_str(&text) {
        let value = serde_json::Value::deserialize(doc).unwrap();
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
fn typed<T: serde::de::DeserializeOwned>(kind: &str, value: &serde_json::Value) -> T {
    serde_json::from_value(value.clone())
        .unwrap_or_else(|e| panic!("{kind} does not parse: {e}\n{value:#}"))
}

/// Rules as comparable `(apiGroups, resources, resourceNames, verbs)` tuples.
type Rule = (Vec<String>, Vec<String>, Vec<String>, BTreeSet<String>);

fn rules(rules: &[PolicyRule]) -> BTreeSet<Rule> {
    rules
        .iter()
        .map(|r| {
            (
                r.api_groups.clone().unwrap_or_default(),
                r.resources.clone().unwrap_or_default(),
                r.resource_names.clone().unwrap_or_default(),
                r.verbs.iter().cloned().collect(),
            )
        })
        .collect()
}

fn rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> Rule {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    (
        s(groups),
        s(resources),
        s(names),
        verbs.iter().map(|x| x.to_string()).collect(),
    )
}

fn check(r: &Rendered, encryption: Encryption) {
    // Namespace and service account.
    assert_eq!(r.namespaces.len(), 1);
    assert_eq!(
        r.namespaces[0].metadata.name.as_deref(),
        Some("meshd-system")
    );
    assert_eq!(r.service_accounts.len(), 1);
    let sa = &r.service_accounts[0].metadata;
    assert_eq!(
        (sa.name.as_deref(), sa.namespace.as_deref()),
        (Some("meshd"), Some("meshd-system"))
    );

    // RBAC: exactly the calls meshd makes (KubeRegistry: get/list/watch/patch nodes; the Node
    // condition: patch nodes/status; the policy objects: list/watch pods, namespaces and
    // networkpolicies (pods: the node's own, by field selector); settings watcher and endpoint
    // batches: list/watch ConfigMaps in meshd's namespace, create/patch the own batch; a fresh
    // Recorder per Event: create events.k8s.io Events, never patch). kubernetes_lab.rs checks
    // these rules against the requests meshd makes to the test API server in a lab run.
    assert_eq!(r.cluster_roles.len(), 1);
    assert_eq!(
        rules(r.cluster_roles[0].rules.as_deref().unwrap_or_default()),
        BTreeSet::from([
            rule(&[""], &["nodes"], &[], &["get", "list", "watch", "patch"]),
            rule(&[""], &["nodes/status"], &[], &["patch"]),
            // NetworkPolicy: every Pod, Namespace and NetworkPolicy, read only.
            rule(&[""], &["pods", "namespaces"], &[], &["list", "watch"]),
            rule(
                &["networking.k8s.io"],
                &["networkpolicies"],
                &[],
                &["list", "watch"]
            ),
        ])
    );
    let roles: BTreeMap<(Option<String>, Option<String>), BTreeSet<Rule>> = r
        .roles
        .iter()
        .map(|role| {
            (
                (role.metadata.namespace.clone(), role.metadata.name.clone()),
                rules(role.rules.as_deref().unwrap_or_default()),
            )
        })
        .collect();
    let named = |ns: &str, name: &str| (Some(ns.to_string()), Some(name.to_string()));
    assert_eq!(
        roles,
        BTreeMap::from([
            (
                named("meshd-system", "meshd"),
                BTreeSet::from([
                    // The settings (by name) and every node's endpoint batch (by label:
                    // not limited by resourceNames), and the node's own batch written (the
                    // node-identity admission policy holds it to its own name).
                    rule(
                        &[""],
                        &["configmaps"],
                        &[],
                        &["list", "watch", "create", "patch"]
                    ),
                    rule(&["events.k8s.io"], &["events"], &[], &["create"]),
                ])
            ),
            // RecordRefused Events regarding Nodes (cluster-scoped: their Events live in
            // `default`): create, and patch to count a repeat after the deduplication window.
            (
                named("default", "meshd-node-events"),
                BTreeSet::from([rule(&[""], &["events"], &[], &["create", "patch"])])
            ),
            // The `kubernetes` Service's EndpointSlice: the API servers' addresses, which host
            // encryption never tunnels.
            (
                named("default", "meshd-api-server-endpoints"),
                BTreeSet::from([rule(
                    &["discovery.k8s.io"],
                    &["endpointslices"],
                    &["kubernetes"],
                    &["list", "watch"]
                )])
            ),
        ])
    );
    let every_verb: Vec<&String> = r
        .cluster_roles
        .iter()
        .flat_map(|c| c.rules.iter().flatten())
        .chain(r.roles.iter().flat_map(|c| c.rules.iter().flatten()))
        .flat_map(|rule| rule.verbs.iter().chain(rule.resources.iter().flatten()))
        .collect();
    assert!(
        !every_verb.iter().any(|v| v.contains('*')),
        "no wildcards: {every_verb:?}"
    );
    let role_names: BTreeSet<&str> = r
        .cluster_roles
        .iter()
        .filter_map(|c| c.metadata.name.as_deref())
        .chain(r.roles.iter().filter_map(|c| c.metadata.name.as_deref()))
        .collect();
    for (role_ref, subjects) in r
        .cluster_role_bindings
        .iter()
        .map(|b| (&b.role_ref, &b.subjects))
        .chain(r.role_bindings.iter().map(|b| (&b.role_ref, &b.subjects)))
    {
        assert!(
            role_names.contains(role_ref.name.as_str()),
            "{}",
            role_ref.name
        );
        let subjects = subjects.as_deref().unwrap_or_default();
        assert_eq!(subjects.len(), 1);
        assert_eq!(
            (
                subjects[0].kind.as_str(),
                subjects[0].name.as_str(),
                subjects[0].namespace.as_deref()
            ),
            ("ServiceAccount", "meshd", Some("meshd-system"))
        );
    }
    assert_eq!(
        (r.cluster_role_bindings.len(), r.role_bindings.len()),
        (1, 3)
    );
    for b in &r.role_bindings {
        let role = r
            .roles
            .iter()
            .find(|role| role.metadata.name.as_deref() == Some(b.role_ref.name.as_str()))
            .expect("a RoleBinding's Role is rendered");
        assert_eq!(
            role.metadata.namespace, b.metadata.namespace,
            "a RoleBinding binds the Role of its own namespace"
        );
    }

    // The ConfigMap: every key documented and valid, the overlay's encryption mode.
    assert_eq!(r.config_maps.len(), 2);
    let cm = r
        .config_maps
        .iter()
        .find(|c| c.metadata.name.as_deref() == Some("meshd-config"))
        .expect("the meshd-config ConfigMap");
    let data: BTreeMap<String, String> = cm.data.clone().unwrap_or_default();
    assert_eq!(
        data.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        KEYS.into_iter().collect()
    );
    let settings = Settings::from_data(&data).expect("the shipped ConfigMap is valid");
    assert_eq!(settings.encryption, encryption);

    // The DaemonSet.
    assert_eq!(r.daemon_sets.len(), 1);
    let ds = &r.daemon_sets[0];
    assert_eq!(ds.metadata.namespace.as_deref(), Some("meshd-system"));
    let spec = &ds.spec;
    let rolling = spec
        .update_strategy
        .as_ref()
        .unwrap()
        .rolling_update
        .as_ref()
        .unwrap();
    let max_unavailable = serde_json::to_value(rolling.max_unavailable.as_ref().unwrap()).unwrap();
    assert!(
        max_unavailable == serde_json::json!(1) || max_unavailable == serde_json::json!("10%"),
        "maxUnavailable {max_unavailable}"
    );
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.dns_policy.as_deref(), Some("ClusterFirstWithHostNet"));
    assert_eq!(
        pod.priority_class_name.as_deref(),
        Some("system-node-critical")
    );
    assert_eq!(pod.service_account_name.as_deref(), Some("meshd"));
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "must tolerate every taint"
    );

    let host_paths = host_paths(pod);
    for path in [
        "/var/lib/meshd",
        "/sys/fs/bpf",
        "/opt/cni/bin",
        "/etc/cni/net.d",
        "/run/meshd",
        "/run/wireguard",
        "/lib/modules",
        "/proc/sys/net",
    ] {
        assert!(
            host_paths.values().any(|p| p == path),
            "hostPath {path} missing"
        );
    }

    let init = pod.init_containers.as_deref().unwrap_or_default();
    assert_eq!(init.len(), 1);
    let install = &init[0];
    assert!(install
        .command
        .iter()
        .flatten()
        .any(|c| c.contains("meshd-cni")));
    assert!(mounts_host_path(install, &host_paths, "/opt/cni/bin"));
    assert_no_privilege(install, &[]);

    let meshd = pod
        .containers
        .iter()
        .find(|c| c.name == "meshd")
        .expect("meshd container");
    assert_no_privilege(meshd, &["NET_ADMIN", "BPF"]);
    let args = meshd.args.as_deref().unwrap_or_default();
    for want in [
        "--registry=kubernetes",
        "--node-name=$(NODE_NAME)",
        "--proc-sys-net=/host/proc/sys/net",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "missing arg {want}: {args:?}"
        );
    }
    let node_name = meshd
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "NODE_NAME")
        .and_then(|e| e.value_from.as_ref()?.field_ref.as_ref())
        .map(|f| f.field_path.as_str());
    assert_eq!(node_name, Some("spec.nodeName"));
    let health_port = meshd
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("health"))
        .map(|p| p.container_port);
    assert_eq!(health_port, Some(9109));
    // Only the probes on the node's addresses; /metrics and /status stay on loopback.
    assert!(
        args.iter().any(|a| a == "--probe-listen=0.0.0.0:9109"),
        "no probe listener: {args:?}"
    );
    assert!(
        !args.iter().any(|a| a.starts_with("--health-listen")),
        "/metrics and /status exposed: {args:?}"
    );
    for (probe, path) in [
        (&meshd.liveness_probe, "/healthz"),
        (&meshd.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        let port = serde_json::to_value(&get.port).unwrap();
        assert!(
            port == serde_json::json!(9109) || port == serde_json::json!("health"),
            "{port}"
        );
    }
    for path in [
        "/var/lib/meshd",
        "/sys/fs/bpf",
        "/etc/cni/net.d",
        "/run/meshd",
        "/run/wireguard",
        "/proc/sys/net",
    ] {
        assert!(
            mounts_host_path(meshd, &host_paths, path),
            "meshd does not mount {path}"
        );
    }
    check_address_plan(r, meshd, args);
    check_node_identity(r);

    for c in pod.containers.iter().chain(init) {
        let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
        assert!(
            requests.is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")),
            "{} has no resource requests",
            c.name
        );
    }
}

/// The pod's hostPath volumes: volume name → host path.
fn host_paths(pod: &PodSpec) -> BTreeMap<String, String> {
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
        .collect()
}

fn mounts_host_path(c: &Container, host_paths: &BTreeMap<String, String>, path: &str) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| host_paths.get(&m.name).map(String::as_str) == Some(path))
}

/// Not privileged, drops ALL, adds at most `allowed`.
fn assert_no_privilege(c: &Container, allowed: &[&str]) {
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(
        sc.privileged,
        Some(true),
        "{} must not be privileged",
        c.name
    );
    assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(
        caps.drop.as_deref(),
        Some(&["ALL".to_string()][..]),
        "{}",
        c.name
    );
    let added: BTreeSet<&str> = caps.add.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        added,
        allowed.iter().copied().collect(),
        "{} capabilities",
        c.name
    );
}

#[test]
fn overlays_render_and_hold_least_privilege() {
    for (overlay, encryption) in [
        ("encrypted", Encryption::Enabled),
        ("permissive", Encryption::Permissive),
        ("disabled", Encryption::Disabled),
    ] {
        let rendered = render(&deploy_dir().join("overlays").join(overlay));
        check(&rendered, encryption);
    }
}

/// The value of `--NAME=VALUE` (or `--NAME VALUE`) in `args`, the last one winning.
fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let long = format!("--{name}");
    let mut found = None;
    for (i, a) in args.iter().enumerate() {
        if let Some(v) = a.strip_prefix(&format!("{long}=")) {
            found = Some(v);
        } else if *a == long {
            found = args.get(i + 1).map(String::as_str);
        }
    }
    found
}

#[test]
fn userspace_overlay_runs_both_devices_in_containers_of_their_own() {
    let rendered = render(&deploy_dir().join("overlays").join("userspace"));
    check(&rendered, Encryption::Enabled);
    let pod = rendered.daemon_sets[0].spec.template.spec.clone().unwrap();
    let meshd = pod.containers.iter().find(|c| c.name == "meshd").unwrap();
    let args = meshd.args.clone().unwrap_or_default();
    // meshd never spawns a device of its own: it waits for these containers' and adopts them.
    assert_eq!(
        args.iter()
            .filter(|a| a.starts_with("--wireguard-mode"))
            .count(),
        1,
        "{args:?}"
    );
    assert_eq!(flag(&args, "wireguard-mode"), Some("external"), "{args:?}");
    // The devices meshd uses: the first key slot's and the second's (its default name is the
    // first's plus `b`).
    let first = flag(&args, "interface").unwrap_or("meshd0").to_string();
    let second = flag(&args, "second-interface")
        .map(str::to_string)
        .unwrap_or_else(|| format!("{first}b"));
    let host_paths = host_paths(&pod);
    for device in [&first, &second] {
        let runners: Vec<&Container> = pod
            .containers
            .iter()
            .filter(|c| {
                let command: Vec<String> = c
                    .command
                    .iter()
                    .flatten()
                    .chain(c.args.iter().flatten())
                    .cloned()
                    .collect();
                command
                    .first()
                    .is_some_and(|p| p.ends_with("/meshd-wg") || p == "meshd-wg")
                    && flag(&command, "interface") == Some(device.as_str())
            })
            .collect();
        assert_eq!(runners.len(), 1, "one container runs meshd-wg for {device}");
        let c = runners[0];
        assert_ne!(
            c.name, "meshd",
            "{device} must not live in meshd's container"
        );
        // It creates the TUN and serves its UAPI socket where meshd (and the host's `wg`)
        // finds it.
        assert_no_privilege(c, &["NET_ADMIN"]);
        assert!(
            mounts_host_path(c, &host_paths, "/run/wireguard"),
            "{}",
            c.name
        );
        assert!(
            mounts_host_path(c, &host_paths, "/dev/net/tun"),
            "{}",
            c.name
        );
    }
}

#[test]
fn deploy_dir_renders_the_encrypted_default() {
    let rendered = render(&deploy_dir());
    check(&rendered, Encryption::Enabled);
}

/// The words of a bash array assignment `NAME=(a b c)` in a script.
fn bash_array(text: &str, name: &str) -> Vec<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}=(")))
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no {name}=(…) in the script"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The image deploy/ runs is the one scripts/build-image.sh builds: every container of every
/// rendering runs `meshd:<the base's newTag>` (the tag the script gives the image), and every
/// binary the manifests run from /usr/local/bin is one the script installs there. (The binaries
/// are the workspace's own build, so the image has the eBPF toolchain of
/// ebpf-redirect/install-toolchain.sh by construction; integration/tests/image.rs builds the
/// image and runs a lab from it.)
#[test]
fn every_rendering_runs_the_image_build_image_sh_builds() {
    let root = deploy_dir().join("..");
    let script = std::fs::read_to_string(root.join("scripts/build-image.sh")).unwrap();
    let installed = bash_array(&script, "binaries");
    assert!(
        script.contains("\"$work/layer/usr/local/bin/$b\""),
        "the script no longer installs into /usr/local/bin"
    );
    let kustomization: serde_json::Value = serde_norway::from_str(
        &std::fs::read_to_string(deploy_dir().join("base/kustomization.yaml")).unwrap(),
    )
    .unwrap();
    let image = kustomization["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "meshd")
        .unwrap();
    let want = format!(
        "{}:{}",
        image["newName"].as_str().unwrap(),
        image["newTag"].as_str().unwrap()
    );
    assert_eq!(want, "meshd:0.1.0", "the workspace version");

    let mut run: BTreeSet<String> = BTreeSet::from(["meshctl".to_string()]);
    let mut dirs = vec![deploy_dir()];
    for entry in std::fs::read_dir(deploy_dir().join("overlays")).unwrap() {
        dirs.push(entry.unwrap().path());
    }
    for dir in &dirs {
        let rendered = render(dir);
        let pod = rendered.daemon_sets[0].spec.template.spec.clone().unwrap();
        for c in pod
            .containers
            .iter()
            .chain(pod.init_containers.iter().flatten())
        {
            assert_eq!(
                c.image.as_deref(),
                Some(want.as_str()),
                "{}: container {}",
                dir.display(),
                c.name
            );
            for word in c
                .command
                .iter()
                .flatten()
                .flat_map(|w| w.split_whitespace())
            {
                if let Some(bin) = word.strip_prefix("/usr/local/bin/") {
                    run.insert(bin.to_string());
                }
            }
        }
    }
    assert!(
        run.contains("meshd-wg") && run.contains("meshd-cni") && run.contains("meshd"),
        "{run:?}"
    );
    for bin in &run {
        assert!(
            installed.contains(bin),
            "the manifests run /usr/local/bin/{bin}, which build-image.sh does not install ({installed:?})"
        );
    }
}

/// The rendered documents without the node-identity ValidatingAdmissionPolicy and its binding,
/// which a v1.20 server does not know (the kind is GA from 1.30; its CEL is tested against
/// fixtures in `node_identity_policy_*`), and the kinds left out.
fn without_admission_policies(rendered: &str) -> (String, Vec<String>) {
    let mut sent = Vec::new();
    let mut left_out = Vec::new();
    for doc in rendered.split("\n---\n") {
        let kind = doc
            .lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .unwrap_or_default()
            .trim()
            .to_string();
        if kind.starts_with("ValidatingAdmissionPolicy") {
            left_out.push(kind);
        } else {
            sent.push(doc);
        }
    }
    (sent.join("\n---\n"), left_out)
}

/// Every overlay (and `deploy/` itself) passes `kubectl apply --dry-run=server -k` against a
/// real kube-apiserver (v1.20.2, `integration::kube_apiserver`): its validation, defaulting
/// and admission, not only kustomize's rendering. The server refuses what is invalid (an
/// object with an invalid name is checked too, so the dry run is known to validate).
#[test]
fn overlays_pass_a_server_side_dry_run_on_a_real_api_server() {
    use integration::kube_apiserver::TestCluster;
    // The namespace (and meshd's RBAC) exist, as they do after the first apply.
    let cluster = TestCluster::start();
    let mut dirs = vec![deploy_dir()];
    let mut overlays: Vec<PathBuf> = std::fs::read_dir(deploy_dir().join("overlays"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("kustomization.yaml").exists())
        .collect();
    overlays.sort();
    assert!(overlays.len() >= 4, "{overlays:?}");
    dirs.extend(overlays);
    for dir in &dirs {
        let dir_arg = dir.to_string_lossy();
        let rendered = cluster.kubectl(&["kustomize", &dir_arg], None);
        assert!(rendered.status.success(), "kubectl kustomize {dir_arg}");
        let (sent, left_out) =
            without_admission_policies(&String::from_utf8_lossy(&rendered.stdout));
        let out = cluster.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&sent));
        assert!(
            out.status.success(),
            "kubectl apply --dry-run=server -k {} (less {left_out:?}) failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            said.contains("daemonset.apps/meshd") && said.contains("(server dry run)"),
            "{said}"
        );
    }
    let bad = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "Not_A_Name", "namespace": "meshd-system"}});
    let out = cluster.kubectl(
        &["apply", "--dry-run=server", "-f", "-"],
        Some(&bad.to_string()),
    );
    assert!(!out.status.success(), "an invalid name passed the dry run");
}

/// The cluster's address plan reaches meshd: `--cluster-cidr` and `--service-cidr` from the
/// generated `meshd-address-plan` ConfigMap, valid CIDR lists; and no `--pod-cidr-pool`, so
/// only `spec.podCIDRs` counts (a Node's self-declared `meshd.io/pod-cidrs` is ignored).
fn check_address_plan(r: &Rendered, meshd: &Container, args: &[String]) {
    let plan = r
        .config_maps
        .iter()
        .find(|c| {
            c.metadata
                .name
                .as_deref()
                .is_some_and(|n| n.starts_with("meshd-address-plan"))
        })
        .expect("the meshd-address-plan ConfigMap");
    let data = plan.data.clone().unwrap_or_default();
    for (flag_name, env, key) in [
        ("cluster-cidr", "CLUSTER_CIDR", "cluster-cidr"),
        ("service-cidr", "SERVICE_CIDR", "service-cidr"),
    ] {
        assert_eq!(
            flag(args, flag_name),
            Some(format!("$({env})").as_str()),
            "{args:?}"
        );
        let source = meshd
            .env
            .iter()
            .flatten()
            .find(|e| e.name == env)
            .and_then(|e| e.value_from.as_ref()?.config_map_key_ref.as_ref())
            .unwrap_or_else(|| panic!("{env} comes from a ConfigMap"));
        assert_eq!(source.name, plan.metadata.name.clone().unwrap());
        assert_eq!(source.key, key);
        let value = data.get(key).unwrap_or_else(|| panic!("{key} is set"));
        let cidrs: Vec<ipnet::IpNet> = value
            .split(',')
            .map(|c| c.parse().unwrap_or_else(|e| panic!("{key}={value}: {e}")))
            .collect();
        assert!(!cidrs.is_empty());
    }
    assert!(
        flag(args, "pod-cidr-pool").is_none(),
        "cluster-pool IPAM would trust self-declared pod CIDRs: {args:?}"
    );
}

/// The node-identity ValidatingAdmissionPolicy and its Deny binding are rendered.
fn check_node_identity(r: &Rendered) {
    // The Node's and the endpoint batch's, each bound with Deny.
    assert_eq!(r.admission_policies.len(), 2);
    assert_eq!(r.admission_policy_bindings.len(), 2);
    for (policy, binding) in r
        .admission_policies
        .iter()
        .zip(&r.admission_policy_bindings)
    {
        assert_eq!(
            policy["apiVersion"].as_str(),
            Some("admissionregistration.k8s.io/v1")
        );
        assert_eq!(policy["spec"]["failurePolicy"].as_str(), Some("Fail"));
        assert_eq!(binding["spec"]["policyName"], policy["metadata"]["name"]);
        assert_eq!(
            binding["spec"]["validationActions"],
            serde_json::json!(["Deny"])
        );
    }
}

/// The node-identity policy's CEL, read from `deploy/components/node-identity/policy.yaml`
/// (never a copy) and evaluated with `cel-interpreter` the way the API server does: the match
/// conditions, then the variables (as `variables.NAME`), then every validation; an expression
/// that fails to evaluate refuses (`failurePolicy: Fail`).
mod node_identity {
    use cel_interpreter::{Context, Program, Value as CelValue};
    use serde::Deserialize;
    use serde_json::{json, Value};
    use std::collections::HashMap;
    use std::sync::Arc;

    pub struct Policy {
        match_conditions: Vec<(String, Program)>,
        variables: Vec<(String, Program)>,
        validations: Vec<(String, Program)>,
    }

    #[derive(Debug, PartialEq, Eq)]
    pub enum Verdict {
        /// The policy does not apply (another user).
        NotMatched,
        Allowed,
        /// Refused, with the failing validation's message.
        Denied(String),
    }

    fn compile(expr: &str) -> Program {
        Program::compile(expr).unwrap_or_else(|e| panic!("CEL does not parse: {expr}\n{e:?}"))
    }

    /// The Node's policy.
    pub fn load() -> Policy {
        load_named("meshd-node-identity")
    }

    /// The policy named `name` in `policy.yaml`.
    pub fn load_named(name: &str) -> Policy {
        let path = super::deploy_dir().join("components/node-identity/policy.yaml");
        let text = std::fs::read_to_string(&path).unwrap();
        let policy = serde_norway::Deserializer::from_str(&text)
            .map(|doc| Value::deserialize(doc).unwrap())
            .find(|v| v["kind"] == "ValidatingAdmissionPolicy" && v["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("ValidatingAdmissionPolicy {name} in policy.yaml"));
        let spec = &policy["spec"];
        let named = |list: &Value| -> Vec<(String, Program)> {
            list.as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    (
                        v["name"].as_str().unwrap().to_string(),
                        compile(v["expression"].as_str().unwrap()),
                    )
                })
                .collect()
        };
        Policy {
            match_conditions: named(&spec["matchConditions"]),
            variables: named(&spec["variables"]),
            validations: spec["validations"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| {
                    (
                        v["message"].as_str().unwrap().to_string(),
                        compile(v["expression"].as_str().unwrap()),
                    )
                })
                .collect(),
        }
    }

    impl Policy {
        pub fn evaluate(&self, request: &Value, object: &Value, old: &Value) -> Verdict {
            let mut ctx = Context::default();
            ctx.add_variable("request", request.clone()).unwrap();
            ctx.add_variable("object", object.clone()).unwrap();
            ctx.add_variable("oldObject", old.clone()).unwrap();
            for (name, program) in &self.match_conditions {
                match program.execute(&ctx) {
                    Ok(CelValue::Bool(true)) => {}
                    Ok(CelValue::Bool(false)) => return Verdict::NotMatched,
                    other => return Verdict::Denied(format!("match condition {name}: {other:?}")),
                }
            }
            let mut variables: HashMap<cel_interpreter::objects::Key, CelValue> = HashMap::new();
            for (name, program) in &self.variables {
                let mut scope = Context::default();
                scope.add_variable("request", request.clone()).unwrap();
                scope.add_variable("object", object.clone()).unwrap();
                scope.add_variable("oldObject", old.clone()).unwrap();
                scope.add_variable_from_value(
                    "variables",
                    CelValue::Map(cel_interpreter::objects::Map {
                        map: Arc::new(variables.clone()),
                    }),
                );
                let value = program
                    .execute(&scope)
                    .unwrap_or_else(|e| CelValue::String(Arc::new(format!("error: {e:?}"))));
                variables.insert(name.clone().into(), value);
            }
            ctx.add_variable_from_value(
                "variables",
                CelValue::Map(cel_interpreter::objects::Map {
                    map: Arc::new(variables),
                }),
            );
            for (message, program) in &self.validations {
                match program.execute(&ctx) {
                    Ok(CelValue::Bool(true)) => {}
                    Ok(CelValue::Bool(false)) => return Verdict::Denied(message.clone()),
                    other => return Verdict::Denied(format!("{message} (evaluation: {other:?})")),
                }
            }
            Verdict::Allowed
        }
    }

    pub const MESHD: &str = "system:serviceaccount:meshd-system:meshd";

    /// A request by `user` (with `node-name` claims `claims`, or no extra at all) for `name`.
    pub fn request(user: &str, claims: Option<&[&str]>, op: &str, name: &str, sub: &str) -> Value {
        let mut user_info = json!({"username": user, "groups": ["system:serviceaccounts"]});
        if let Some(claims) = claims {
            user_info["extra"] = json!({"authentication.kubernetes.io/node-name": claims});
        }
        json!({
            "operation": op,
            "name": name,
            "subResource": sub,
            "userInfo": user_info,
        })
    }

    /// A Node as the API server holds it: labels, annotations (meshd's and the kubelet's),
    /// spec, addresses and conditions.
    pub fn node(name: &str) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "labels": {"kubernetes.io/hostname": name},
                "annotations": {
                    "node.alpha.kubernetes.io/ttl": "0",
                    "meshd.io/public-key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAE=",
                    "meshd.io/listen-port": "51820",
                    "meshd.io/second-key": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAI=",
                },
            },
            "spec": {"podCIDR": "10.244.1.0/24", "podCIDRs": ["10.244.1.0/24"]},
            "status": {
                "addresses": [{"type": "InternalIP", "address": "192.168.1.1"}],
                "conditions": [
                    {"type": "Ready", "status": "True", "reason": "KubeletReady"},
                    {"type": "MeshdEncrypted", "status": "False", "reason": "NotConverged"},
                ],
            },
        })
    }
}

fn own_annotations_changed(node: &serde_json::Value) -> serde_json::Value {
    let mut new = node.clone();
    let a = &mut new["metadata"]["annotations"];
    a["meshd.io/public-key"] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAM=".into();
    a["meshd.io/rotation"] = r#"{"serial":1,"draining":0}"#.into();
    a.as_object_mut().unwrap().remove("meshd.io/second-key");
    new
}

#[test]
fn node_identity_policy_lets_meshd_change_only_its_own_nodes_meshd_annotations() {
    use node_identity::{node, request, Verdict, MESHD};
    let policy = node_identity::load();
    let own = request(MESHD, Some(&["n1"]), "UPDATE", "n1", "");
    let old = node("n1");

    // Own Node: meshd.io/ keys set, changed and removed.
    let new = own_annotations_changed(&old);
    assert_eq!(policy.evaluate(&own, &new, &old), Verdict::Allowed);
    // Own Node, first publish on a Node without any annotation.
    let mut bare = old.clone();
    bare["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("annotations");
    let mut first = bare.clone();
    first["metadata"]["annotations"] = serde_json::json!({"meshd.io/public-key": "x"});
    assert_eq!(policy.evaluate(&own, &first, &bare), Verdict::Allowed);

    let denied = |verdict: Verdict, what: &str| match verdict {
        Verdict::Denied(message) => assert!(message.contains(what), "{message}"),
        other => panic!("expected a refusal naming {what:?}, got {other:?}"),
    };
    // Another Node: the claim names n1, the request n2.
    let other = request(MESHD, Some(&["n1"]), "UPDATE", "n2", "");
    let n2 = node("n2");
    denied(
        policy.evaluate(&other, &own_annotations_changed(&n2), &n2),
        "node-name",
    );
    // No claim at all (a token without it, pre-1.30), an empty one, or two.
    for claims in [None, Some(&[][..]), Some(&["n1", "n2"][..])] {
        let unbound = request(MESHD, claims, "UPDATE", "n1", "");
        denied(policy.evaluate(&unbound, &new, &old), "node-name");
    }
    let mut other_extra = request(MESHD, None, "UPDATE", "n1", "");
    other_extra["userInfo"]["extra"] =
        serde_json::json!({"authentication.kubernetes.io/pod-name": ["meshd-x"]});
    denied(policy.evaluate(&other_extra, &new, &old), "node-name");

    // Own Node's labels (meshd.io/exclude too), spec, other annotations, owners.
    let mut labels = new.clone();
    labels["metadata"]["labels"]["meshd.io/exclude"] = "true".into();
    denied(policy.evaluate(&own, &labels, &old), "labels");
    let mut unlabelled = new.clone();
    unlabelled["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("labels");
    denied(policy.evaluate(&own, &unlabelled, &old), "labels");
    let mut spec = new.clone();
    spec["spec"]["podCIDRs"] = serde_json::json!(["0.0.0.0/0"]);
    denied(policy.evaluate(&own, &spec, &old), "spec");
    let mut taint = new.clone();
    taint["spec"]["taints"] = serde_json::json!([{"key": "k", "effect": "NoSchedule"}]);
    denied(policy.evaluate(&own, &taint, &old), "spec");
    let mut changed = new.clone();
    changed["metadata"]["annotations"]["node.alpha.kubernetes.io/ttl"] = "30".into();
    denied(policy.evaluate(&own, &changed, &old), "annotations");
    let mut added = new.clone();
    added["metadata"]["annotations"]["example.com/x"] = "y".into();
    denied(policy.evaluate(&own, &added, &old), "annotations");
    let mut removed = new.clone();
    removed["metadata"]["annotations"]
        .as_object_mut()
        .unwrap()
        .remove("node.alpha.kubernetes.io/ttl");
    denied(policy.evaluate(&own, &removed, &old), "annotations");
    let mut owned = new.clone();
    owned["metadata"]["finalizers"] = serde_json::json!(["example.com/keep"]);
    denied(policy.evaluate(&own, &owned, &old), "finalizers");

    // Never create or delete, even its own.
    let create = request(MESHD, Some(&["n1"]), "CREATE", "n1", "");
    denied(
        policy.evaluate(&create, &old, &serde_json::Value::Null),
        "create or delete",
    );
    let delete = request(MESHD, Some(&["n1"]), "DELETE", "n1", "");
    denied(
        policy.evaluate(&delete, &serde_json::Value::Null, &old),
        "create or delete",
    );

    // Every other user is untouched, whatever it changes.
    for user in [
        "system:node:n1",
        "kubernetes-admin",
        "system:serviceaccount:kube-system:x",
    ] {
        let req = request(user, Some(&["n9"]), "UPDATE", "n2", "");
        assert_eq!(
            policy.evaluate(&req, &spec, &n2),
            Verdict::NotMatched,
            "{user}"
        );
    }
}

#[test]
fn node_identity_policy_limits_status_writes_to_the_own_meshd_condition() {
    use node_identity::{node, request, Verdict, MESHD};
    let policy = node_identity::load();
    let old = node("n1");
    let own = request(MESHD, Some(&["n1"]), "UPDATE", "n1", "status");
    let mut encrypted = old.clone();
    encrypted["status"]["conditions"][1] =
        serde_json::json!({"type": "MeshdEncrypted", "status": "True", "reason": "Encrypted"});
    assert_eq!(policy.evaluate(&own, &encrypted, &old), Verdict::Allowed);
    let mut first = old.clone();
    first["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .truncate(1);
    assert_eq!(policy.evaluate(&own, &old, &first), Verdict::Allowed);

    let denied = |verdict: Verdict| match verdict {
        Verdict::Denied(_) => {}
        other => panic!("expected a refusal, got {other:?}"),
    };
    let mut ready = encrypted.clone();
    ready["status"]["conditions"][0]["status"] = "False".into();
    denied(policy.evaluate(&own, &ready, &old));
    let mut gone = old.clone();
    gone["status"]["conditions"]
        .as_array_mut()
        .unwrap()
        .remove(0);
    denied(policy.evaluate(&own, &gone, &old));
    let mut moved = encrypted.clone();
    moved["status"]["addresses"][0]["address"] = "192.168.1.2".into();
    denied(policy.evaluate(&own, &moved, &old));
    let other = request(MESHD, Some(&["n1"]), "UPDATE", "n2", "status");
    denied(policy.evaluate(&other, &node("n2"), &node("n2")));
}

#[test]
fn endpoint_batch_policy_lets_meshd_write_only_its_own_nodes_batch() {
    use node_identity::{request, Verdict, MESHD};
    let policy = node_identity::load_named("meshd-endpoint-batch-identity");
    let batch = |name: &str, label: Option<&str>| {
        let mut cm = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "meshd-system"},
            "data": {"endpoints": "{}"}});
        if let Some(label) = label {
            cm["metadata"]["labels"] = serde_json::json!({"meshd.io/endpoint-batch": label});
        }
        cm
    };
    let own = batch("meshd-endpoints-n1", Some("n1"));
    let null = serde_json::Value::Null;
    // Own batch: created, then patched.
    let create = request(MESHD, Some(&["n1"]), "CREATE", "meshd-endpoints-n1", "");
    assert_eq!(policy.evaluate(&create, &own, &null), Verdict::Allowed);
    let update = request(MESHD, Some(&["n1"]), "UPDATE", "meshd-endpoints-n1", "");
    assert_eq!(policy.evaluate(&update, &own, &own), Verdict::Allowed);

    let denied = |verdict: Verdict, what: &str| match verdict {
        Verdict::Denied(message) => assert!(message.contains(what), "{message}"),
        other => panic!("expected a refusal naming {what:?}, got {other:?}"),
    };
    // Another node's batch, created or rewritten.
    let other = batch("meshd-endpoints-n2", Some("n2"));
    for op in ["CREATE", "UPDATE"] {
        let r = request(MESHD, Some(&["n1"]), op, "meshd-endpoints-n2", "");
        denied(
            policy.evaluate(&r, &other, &other),
            "own node's endpoint batch",
        );
    }
    // Its own name but labelled for another node, or not labelled.
    denied(
        policy.evaluate(&create, &batch("meshd-endpoints-n1", Some("n2")), &null),
        "label meshd.io/endpoint-batch",
    );
    denied(
        policy.evaluate(&create, &batch("meshd-endpoints-n1", None), &null),
        "label meshd.io/endpoint-batch",
    );
    // Any other ConfigMap (the settings among them), and any delete.
    let settings = request(MESHD, Some(&["n1"]), "UPDATE", "meshd-config", "");
    denied(
        policy.evaluate(&settings, &batch("meshd-config", None), &null),
        "own node's endpoint batch",
    );
    let delete = request(MESHD, Some(&["n1"]), "DELETE", "meshd-endpoints-n1", "");
    denied(policy.evaluate(&delete, &null, &own), "never deletes");
    // No claim, an empty one, or two.
    for claims in [None, Some(&[][..]), Some(&["n1", "n2"][..])] {
        let unbound = request(MESHD, claims, "CREATE", "meshd-endpoints-n1", "");
        denied(policy.evaluate(&unbound, &own, &null), "node-name claim");
    }
    // Other users are not this policy's business.
    let admin = request("kubernetes-admin", None, "DELETE", "meshd-endpoints-n1", "");
    assert_eq!(policy.evaluate(&admin, &null, &own), Verdict::NotMatched);
}
