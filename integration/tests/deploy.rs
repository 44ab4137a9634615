//! The manifests in `deploy/` render offline with `kubectl kustomize`, parse into the
//! `k8s-openapi` types, and say what meshd needs and nothing more.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "deploy/least_privilege.rs"]
mod least_privilege;
#[path = "deploy/node_identity.rs"]
mod node_identity;
#[path = "deploy/render.rs"]
mod render;

use std::collections::BTreeSet;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::Container;
use least_privilege::{assert_no_privilege, check, flag, host_paths, mounts_host_path};
use meshd::settings::Encryption;
use render::{deploy_dir, render};

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
