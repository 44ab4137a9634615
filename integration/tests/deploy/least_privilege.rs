//! What every rendering of `deploy/` must say ([`check`]): one namespace and service account;
//! RBAC that grants exactly the calls meshd makes; a valid shipped settings ConfigMap; a
//! DaemonSet whose containers hold no more privilege than they need; the cluster's address
//! plan reaching meshd's flags; and the node-identity admission policies rendered with Deny.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, PodSpec};
use k8s_openapi::api::rbac::v1::PolicyRule;
use meshd::settings::{Encryption, Settings, KEYS};

use super::render::Rendered;

/// Rules as comparable `(apiGroups, resources, resourceNames, verbs)` tuples.
pub type Rule = (Vec<String>, Vec<String>, Vec<String>, BTreeSet<String>);

pub fn rules(rules: &[PolicyRule]) -> BTreeSet<Rule> {
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

pub fn rule(groups: &[&str], resources: &[&str], names: &[&str], verbs: &[&str]) -> Rule {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    (
        s(groups),
        s(resources),
        s(names),
        verbs.iter().map(|x| x.to_string()).collect(),
    )
}

pub fn check(r: &Rendered, encryption: Encryption) {
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
pub fn host_paths(pod: &PodSpec) -> BTreeMap<String, String> {
    pod.volumes
        .iter()
        .flatten()
        .filter_map(|v| Some((v.name.clone(), v.host_path.as_ref()?.path.clone())))
        .collect()
}

pub fn mounts_host_path(c: &Container, host_paths: &BTreeMap<String, String>, path: &str) -> bool {
    c.volume_mounts
        .iter()
        .flatten()
        .any(|m| host_paths.get(&m.name).map(String::as_str) == Some(path))
}

/// Not privileged, drops ALL, adds at most `allowed`.
pub fn assert_no_privilege(c: &Container, allowed: &[&str]) {
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

/// The value of `--NAME=VALUE` (or `--NAME VALUE`) in `args`, the last one winning.
pub fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
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

/// The cluster's address plan reaches meshd: `--cluster-cidr` and `--service-cidr` from the
/// generated `meshd-address-plan` ConfigMap, valid CIDR lists; and no `--pod-cidr-pool`, so
/// only `spec.podCIDRs` counts (a Node's self-declared `meshd.io/pod-cidrs` is ignored).
pub fn check_address_plan(r: &Rendered, meshd: &Container, args: &[String]) {
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
pub fn check_node_identity(r: &Rendered) {
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
