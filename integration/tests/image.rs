//! meshd's container image, built here by `scripts/build-image.sh` (Debian minbase by
//! mmdebstrap, an OCI layout by umoci), proven the way a node would use it: the layout is
//! verified (every digest) and unpacked layer by layer (whiteouts honoured) as a runtime
//! does, the image is the one deploy/ runs (its tag, its paths, its init container's command),
//! every binary starts from the image's root with the image's libraries only, and a lab whose
//! nodes run meshd, meshctl, meshd-cni and meshd-wg from that root (chroot, read-only, with
//! the DaemonSet's host mounts) forms a mesh that carries pod traffic.
//!
//! Needs root, the lab's tools, mmdebstrap and umoci (`scripts/install-deps.sh`), and the
//! workspace's binaries (`cargo build --workspace --bins`). The Debian root is cached under
//! /var/cache/meshd (about a minute the first time).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use integration::lab::{self, ping, pod_addrs, Lab};
use integration::oci::{write_layout, Layout};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The image deploy/ runs: `images:` of deploy/base/kustomization.yaml, (name, tag).
fn deploy_image() -> (String, String) {
    let text = std::fs::read_to_string(repo().join("deploy/base/kustomization.yaml")).unwrap();
    let doc: serde_json::Value = serde_norway::from_str(&text).unwrap();
    let image = doc["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "meshd")
        .expect("deploy/base/kustomization.yaml sets no image for meshd");
    (
        image["newName"].as_str().unwrap().to_string(),
        image["newTag"].as_str().unwrap().to_string(),
    )
}

/// Run a command; its stdout, or a panic with its stderr.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The image's PATH (its config's `Env`), also where the host finds `chroot`.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// `chroot ROOT args…` (the image's own binaries and libraries, nothing of the host).
fn in_root(root: &Path, args: &[&str]) -> String {
    run(Command::new("chroot")
        .arg(root)
        .args(args)
        .env_clear()
        .env("PATH", IMAGE_PATH))
}

/// A layer as a tar made by `tar` from `dir`.
fn tar_of(dir: &Path, out: &Path) -> PathBuf {
    run(Command::new("tar")
        .arg("-cf")
        .arg(out)
        .arg("-C")
        .arg(dir)
        .arg("."));
    out.to_path_buf()
}

#[test]
fn layers_unpack_in_order_with_whiteouts_and_a_corrupt_blob_is_refused() {
    testkit::require_tools(&["tar", "gzip"]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    // Lower layer: etc/motd, etc/keep, doc/{a,b}.
    for (path, text) in [
        ("l1/etc/motd", "hello"),
        ("l1/etc/keep", "kept"),
        ("l1/doc/a", "a"),
        ("l1/doc/b", "b"),
    ] {
        std::fs::create_dir_all(w.join(path).parent().unwrap()).unwrap();
        std::fs::write(w.join(path), text).unwrap();
    }
    // Upper layer: removes etc/motd, makes doc opaque (only doc/c remains), adds bin/x.
    std::fs::create_dir_all(w.join("l2/etc")).unwrap();
    std::fs::write(w.join("l2/etc/.wh.motd"), "").unwrap();
    std::fs::create_dir_all(w.join("l2/doc")).unwrap();
    std::fs::write(w.join("l2/doc/.wh..wh..opq"), "").unwrap();
    std::fs::write(w.join("l2/doc/c"), "c").unwrap();
    std::fs::create_dir_all(w.join("l2/bin")).unwrap();
    std::fs::write(w.join("l2/bin/x"), "x").unwrap();
    let layers = [
        tar_of(&w.join("l1"), &w.join("l1.tar")),
        tar_of(&w.join("l2"), &w.join("l2.tar")),
    ];
    write_layout(&w.join("oci"), "v1", &layers).unwrap();

    let layout = Layout::open(&w.join("oci")).unwrap();
    let manifest = layout.manifest("v1").unwrap();
    assert!(
        layout.manifest("v2").is_err(),
        "an absent tag must not resolve"
    );
    layout.unpack(&manifest, &w.join("root")).unwrap();
    let root = w.join("root");
    assert!(
        !root.join("etc/motd").exists(),
        "the whiteout removed etc/motd"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/keep")).unwrap(),
        "kept"
    );
    assert!(!root.join("doc/a").exists() && !root.join("doc/b").exists());
    assert_eq!(std::fs::read_to_string(root.join("doc/c")).unwrap(), "c");
    assert_eq!(std::fs::read_to_string(root.join("bin/x")).unwrap(), "x");
    assert!(
        !root.join("etc/.wh.motd").exists() && !root.join("doc/.wh..wh..opq").exists(),
        "whiteout markers are not files of the image"
    );

    // One flipped byte in the upper layer: its digest no longer matches and nothing unpacks.
    let blob = layout.blob_path(&manifest.layers[1].digest).unwrap();
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = layout.unpack(&manifest, &w.join("root2")).unwrap_err();
    assert!(format!("{err:#}").contains("hashes to"), "{err:#}");
}

#[test]
fn the_image_is_the_daemonsets_and_a_lab_runs_meshd_from_its_root() {
    testkit::require_root();
    testkit::require_tools(lab::TOOLS);
    testkit::require_tools(&["mmdebstrap", "umoci", "chroot", "tar", "gzip", "strip"]);
    let bin_dir = lab::bin_dir();
    let work = tempfile::tempdir().unwrap();
    let oci = work.path().join("meshd-oci");

    // Built from this workspace's binaries (release builds: `build-image.sh --release`).
    run(Command::new(repo().join("scripts/build-image.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&oci));

    // The tag deploy/ runs, every digest verified, the layers unpacked as a runtime does.
    let (name, tag) = deploy_image();
    assert_eq!(
        name, "meshd",
        "deploy/ runs an image this script does not build"
    );
    let layout = Layout::open(&oci).unwrap();
    let manifest = layout.manifest(&tag).unwrap();
    assert_eq!(manifest.layers.len(), 2, "Debian base + the binaries");
    let root = work.path().join("root");
    let config = layout.unpack(&manifest, &root).unwrap();
    assert_eq!(config.os, "linux");
    assert_eq!(config.architecture, "amd64");
    assert_eq!(config.config.entrypoint, ["/usr/local/bin/meshd"]);
    assert_eq!(config.config.user, "0");
    assert!(
        config
            .config
            .env
            .iter()
            .any(|e| e.starts_with("PATH=") && e.contains("/usr/local/bin")),
        "{:?}",
        config.config.env
    );

    // Every binary starts from the image's root with the image's libraries.
    for bin in ["meshd", "meshctl", "meshd-wg"] {
        let version = in_root(&root, &[&format!("/usr/local/bin/{bin}"), "--version"]);
        assert!(version.starts_with(bin), "{bin} --version: {version}");
    }
    let cni = run(Command::new("chroot")
        .arg(&root)
        .arg("/usr/local/bin/meshd-cni")
        .env_clear()
        .env("PATH", IMAGE_PATH)
        .env("CNI_COMMAND", "VERSION"));
    assert!(
        cni.contains("supportedVersions"),
        "meshd-cni VERSION: {cni}"
    );
    for bin in ["meshd", "meshctl", "meshd-cni", "meshd-wg"] {
        let libs = in_root(&root, &["ldd", &format!("/usr/local/bin/{bin}")]);
        assert!(!libs.contains("not found"), "{bin} lacks a library: {libs}");
    }
    // The operators' tools the image carries.
    assert!(in_root(&root, &["wg", "--version"]).starts_with("wireguard-tools"));
    assert!(in_root(&root, &["ip", "-V"]).contains("iproute2"));
    in_root(&root, &["modinfo", "--version"]);
    assert!(root.join("etc/ssl/certs/ca-certificates.crt").is_file());

    // The install-cni init container's command, as deploy/base/daemonset.yaml has it, run in
    // the image with its /host/opt/cni/bin.
    let daemonset = std::fs::read_to_string(repo().join("deploy/base/daemonset.yaml")).unwrap();
    let ds: serde_json::Value = serde_norway::from_str(&daemonset).unwrap();
    let init = &ds["spec"]["template"]["spec"]["initContainers"][0];
    assert_eq!(init["name"], "install-cni");
    let command: Vec<&str> = init["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    std::fs::create_dir_all(root.join("host/opt/cni/bin")).unwrap();
    in_root(&root, &command);
    assert_eq!(
        std::fs::read(root.join("host/opt/cni/bin/meshd-cni")).unwrap(),
        std::fs::read(root.join("usr/local/bin/meshd-cni")).unwrap()
    );
    std::fs::remove_dir_all(root.join("host")).unwrap();
    let main = &ds["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(main["command"][0], "/usr/local/bin/meshd");
    assert!(root.join("usr/local/bin/meshd").is_file());

    // A lab whose nodes run everything from the image.
    let lab = Lab::up_in_root(2, 1, &root, &[]).unwrap();
    let st = lab.status_json().unwrap();
    assert_eq!(
        st["node_root"].as_str().map(PathBuf::from),
        Some(root.canonicalize().unwrap())
    );
    let image_bins: Vec<(u64, u64)> = ["meshd", "meshd-wg"]
        .iter()
        .map(|b| {
            let m = std::fs::metadata(root.join("usr/local/bin").join(b)).unwrap();
            (m.dev(), m.ino())
        })
        .collect();
    for node in st["nodes"].as_array().unwrap() {
        let name = node["name"].as_str().unwrap();
        assert_eq!(node["running"], true, "{name}: meshd not running");
        assert_eq!(node["status"]["converged"], true, "{name}: {node:#}");
        assert_eq!(
            node["peers"].as_array().unwrap().len(),
            1,
            "{name}: {node:#}"
        );
        // Every process of the node is one of the image's binaries (meshd and the user-space
        // datapath it starts), none of the workspace's.
        let ns = node["namespace"].as_str().unwrap();
        let pids = run(Command::new("ip").args(["netns", "pids", ns]));
        let mut seen = Vec::new();
        for pid in pids.split_whitespace() {
            let Ok(exe) = std::fs::metadata(format!("/proc/{pid}/exe")) else {
                continue;
            };
            let found = image_bins.iter().position(|b| *b == (exe.dev(), exe.ino()));
            assert!(
                found.is_some(),
                "{name}: pid {pid} does not run an image binary"
            );
            seen.extend(found);
        }
        assert!(seen.contains(&0), "{name}: no meshd from the image");
        assert!(
            seen.contains(&1),
            "{name}: no meshd-wg from the image (user-space datapath)"
        );

        // `meshctl status` and `wg` run from the image inside the node.
        let status: serde_json::Value = serde_json::from_str(
            &lab.exec(name, &["meshctl", "status", "-o", "json"])
                .unwrap(),
        )
        .unwrap();
        assert_eq!(status["converged"], true, "{name}: {status:#}");
        assert_eq!(
            status["peers"].as_array().unwrap().len(),
            1,
            "{name}: {status:#}"
        );
        let wg = lab.exec(name, &["wg", "show", "meshd0", "peers"]).unwrap();
        assert_eq!(wg.lines().count(), 1, "wg show on {name}: {wg}");
        // readOnlyRootFilesystem: the node's root is the image, mounted read-only.
        assert!(
            lab.exec(name, &["touch", "/written-by-the-test"]).is_err(),
            "{name}: the image root is writable"
        );
    }
    assert!(!root.join("written-by-the-test").exists());

    // Pods (made by the image's meshd-cni) reach each other across the mesh.
    let status = lab.status().unwrap();
    let from = status.pods_on("n1").next().unwrap().clone();
    let to = status.pods_on("n2").next().unwrap().clone();
    let (v4, v6) = pod_addrs(&to).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !ping(&from, &v4.to_string(), 1) && std::time::Instant::now() < deadline {}
    assert!(ping(&from, &v4.to_string(), 3), "n1 -> n2 over IPv4");
    assert!(ping(&from, &v6.to_string(), 3), "n1 -> n2 over IPv6");
    let back = status.pods_on("n2").next().unwrap().clone();
    let (b4, _) = pod_addrs(&from).unwrap();
    assert!(ping(&back, &b4.to_string(), 3), "n2 -> n1 over IPv4");
}
