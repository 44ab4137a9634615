//! Nodes that run meshd from a container image's root filesystem instead of the workspace's
//! binaries: `lab up` with [`NODE_ROOT_ENV`] set to an unpacked image (`scripts/build-image.sh`
//! writes it), remembered in `lab.json` so every later command starts the same binaries.
//!
//! Each node then runs its programs as the DaemonSet's containers do: `chroot ROOT
//! /usr/local/bin/NAME` inside the node's namespaces, where ROOT is mounted read-only
//! (`readOnlyRootFilesystem`) with the host paths a pod of the DaemonSet gets bind-mounted
//! in: `/proc`, `/sys` (with the node's bpffs at `/sys/fs/bpf`), `/dev` (`/dev/net/tun`),
//! `/run` (the node's `/run/meshd` and `/run/wireguard`, and the lab's directories, which the
//! lab passes to meshd as `--state-dir`, `--cni-conf-dir`, `--registry-dir`, `--kubeconfig`).
//! `meshd-cni` is the image's too, run on the host as the kubelet runs the copy the
//! `install-cni` init container puts into `/opt/cni/bin`. Deciding paths and commands is pure;
//! the mounts are made by [`crate::layout`] with the node's other mounts.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The environment variable `lab up` reads: an unpacked image's root directory.
pub const NODE_ROOT_ENV: &str = "MESHD_LAB_NODE_ROOT";

/// Where the image holds the binaries (deploy/base/daemonset.yaml runs them from there).
pub const IMAGE_BIN_DIR: &str = "/usr/local/bin";

/// The binaries a node runs from the image.
pub(crate) const NODE_BINARIES: [&str; 4] = ["meshd", "meshctl", "meshd-cni", "meshd-wg"];

/// [`NODE_ROOT_ENV`] as `lab up` found it: `None` when unset or empty, else an absolute
/// directory holding every node binary under [`IMAGE_BIN_DIR`].
pub(crate) fn from_env() -> anyhow::Result<Option<PathBuf>> {
    let Some(value) = std::env::var_os(NODE_ROOT_ENV).filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    let root = PathBuf::from(value);
    if !root.is_absolute() {
        bail!(
            "{NODE_ROOT_ENV}={}: give the image's root directory as an absolute path",
            root.display()
        );
    }
    for name in NODE_BINARIES {
        let path = image_binary(&root, name);
        if !path.is_file() {
            bail!(
                "{NODE_ROOT_ENV}={}: {} missing (is this an unpacked meshd image?)",
                root.display(),
                path.display()
            );
        }
    }
    let root = root
        .canonicalize()
        .with_context(|| format!("resolving {NODE_ROOT_ENV}={}", root.display()))?;
    Ok(Some(root))
}

/// A binary of the image as the host sees it (`ROOT/usr/local/bin/NAME`).
pub(crate) fn image_binary(root: &Path, name: &str) -> PathBuf {
    root.join(IMAGE_BIN_DIR.trim_start_matches('/')).join(name)
}

/// The program and leading arguments that run node binary `name` inside the node (after
/// `nsenter` has entered its namespaces): the image's binary under `chroot`, or without a
/// node root the workspace's binary next to meshctl.
pub(crate) fn node_command(root: Option<&Path>, name: &str) -> anyhow::Result<Vec<OsString>> {
    Ok(match root {
        Some(root) => chroot_command(root, name),
        None => vec![crate::host::binary(name)?.into_os_string()],
    })
}

/// `chroot ROOT /usr/local/bin/NAME`.
pub(crate) fn chroot_command(root: &Path, name: &str) -> Vec<OsString> {
    vec![
        "chroot".into(),
        root.as_os_str().to_owned(),
        Path::new(IMAGE_BIN_DIR).join(name).into_os_string(),
    ]
}

/// The shell commands, run inside a node's mount namespace after its own mounts, that make
/// `root` the node's container root: read-only, with the host paths the DaemonSet mounts.
pub(crate) fn mount_script(root: &Path) -> String {
    let r = shell_quote(&root.to_string_lossy());
    let mut steps = vec![
        // Its own read-only mount, as a container's root with readOnlyRootFilesystem.
        format!("mount --bind {r} {r}"),
        format!("mount -o remount,bind,ro {r}"),
    ];
    for dir in ["proc", "sys", "dev", "run"] {
        steps.push(format!("mount --rbind /{dir} {r}/{dir}"));
    }
    steps.join(" && ")
}

/// `s` single-quoted for `sh -c`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chroot_command_runs_the_image_binary_in_the_image_root() {
        assert_eq!(
            chroot_command(Path::new("/img"), "meshd"),
            vec![
                OsString::from("chroot"),
                "/img".into(),
                "/usr/local/bin/meshd".into()
            ]
        );
        assert_eq!(
            image_binary(Path::new("/img"), "meshd-cni"),
            PathBuf::from("/img/usr/local/bin/meshd-cni")
        );
    }

    #[test]
    fn mount_script_makes_the_root_read_only_and_binds_the_host_paths_quoted() {
        let script = mount_script(Path::new("/tmp/it's root"));
        let q = r"'/tmp/it'\''s root'";
        assert!(script.starts_with(&format!(
            "mount --bind {q} {q} && mount -o remount,bind,ro {q}"
        )));
        for dir in ["proc", "sys", "dev", "run"] {
            assert!(
                script.contains(&format!("mount --rbind /{dir} {q}/{dir}")),
                "{script}"
            );
        }
    }
}
