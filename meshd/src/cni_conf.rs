//! The CNI configuration list that tells the container runtime to use `meshd-cni`.
//!
//! meshd writes it (atomically, only when its content changes) once the node's mesh has
//! converged, and removes it when the mesh has failed to converge for a grace period
//! ([`action`]) and when meshd stops: the kubelet reports a node without a CNI configuration
//! as not ready, so no pod is scheduled onto a node whose mesh is down.

use std::path::Path;
use std::time::{Duration, Instant};

use keyexchange::NodeRecord;

/// File name of meshd's conflist (sorted first among typical CNI configurations).
pub const CONFLIST: &str = "10-meshd.conflist";

/// Errors writing the configuration.
#[derive(Debug, thiserror::Error)]
pub enum CniConfError {
    /// Creating the directory or writing the file failed (the cause is the source: print
    /// with `{:#}`).
    #[error("writing {path}")]
    Write {
        /// The file or directory.
        path: std::path::PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

/// Context on a failed reconcile step that concerns peers (their tunnel, routes, redirects,
/// host routes), not this node's own device, pod CIDR or datapath attachment: such a failure
/// does not stop this node from serving its pods, so the CNI configuration stays
/// ([`serves_pods`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerStepFailed;

impl std::fmt::Display for PeerStepFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("programming peers")
    }
}

/// Whether this node can serve pods after a pass: it converged, or it failed only for a
/// peer's sake (the error carries [`PeerStepFailed`]). Its own failures (devices, pod CIDR,
/// datapath attachment, observing the node) count against it.
pub fn serves_pods(pass: &anyhow::Result<()>) -> bool {
    match pass {
        Ok(()) => true,
        Err(err) => err.downcast_ref::<PeerStepFailed>().is_some(),
    }
}

/// The conflist for this node: `meshd-cni` with the node's pod CIDRs, IPAM store, MTU, the
/// bpffs directory of the tc datapath and whether pods get the `from_pod` redirect.
pub fn conflist(
    me: &NodeRecord,
    ipam_dir: &Path,
    mtu: u32,
    bpf_pin_dir: &Path,
    redirect: bool,
) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.1.0",
        "name": "meshd",
        "plugins": [{
            "type": "meshd-cni",
            "podCIDRs": me.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "ipamDir": ipam_dir,
            "mtu": mtu,
            "bpfPinDir": bpf_pin_dir,
            "redirect": redirect,
        }],
    })
}

/// Write the conflist into `dir` unless it already holds exactly this content.
pub fn write(dir: &Path, conf: &serde_json::Value) -> Result<(), CniConfError> {
    let path = dir.join(CONFLIST);
    let body = serde_json::to_string_pretty(conf).unwrap_or_default() + "\n";
    if std::fs::read_to_string(&path).is_ok_and(|old| old == body) {
        return Ok(());
    }
    let err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| CniConfError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(err(dir))?;
    crate::statefile::write_atomic(&path, body.as_bytes(), 0o644).map_err(err(&path))?;
    tracing::info!(path = %path.display(), "CNI configuration installed: the node accepts pods");
    Ok(())
}

/// Remove the conflist (the node stops accepting pods); a missing file is fine. Returns
/// whether a file was removed.
pub fn remove(dir: &Path) -> bool {
    let path = dir.join(CONFLIST);
    match std::fs::remove_file(&path) {
        Ok(()) => {
            tracing::info!(path = %path.display(), "CNI configuration removed");
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "removing the CNI configuration failed");
            false
        }
    }
}

/// `node-subnet` IPAM: the conflist's pod CIDRs are the settled blocks `usable`, one address
/// of each family taken from the first with room (`nodeSubnetBlocks`).
pub fn use_blocks(conf: &mut serde_json::Value, usable: &[ipnet::IpNet]) {
    if let Some(plugin) = conf["plugins"].get_mut(0) {
        plugin["podCIDRs"] = usable.iter().map(ToString::to_string).collect();
        plugin["nodeSubnetBlocks"] = true.into();
    }
}

/// What a reconcile pass does with the conflist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The mesh converged: install (or keep) the configuration.
    Install,
    /// Failing, but for less than the grace period: leave the file as it is (a pass that
    /// fails once and succeeds on retry must not make the node flap).
    Keep,
    /// Failing for the grace period or longer: the node takes no new pods until it
    /// converges again.
    Remove,
}

/// The conflist action after a pass: `converged`, or failing since `failing_since`.
pub fn action(
    converged: bool,
    failing_since: Option<Instant>,
    now: Instant,
    grace: Duration,
) -> Action {
    match (converged, failing_since) {
        (true, _) => Action::Install,
        (false, Some(since)) if now.saturating_duration_since(since) >= grace => Action::Remove,
        (false, _) => Action::Keep,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keyexchange::PrivateKey;

    #[test]
    fn only_failures_of_this_node_itself_stop_it_serving_pods() {
        use anyhow::Context as _;
        assert!(serves_pods(&Ok(())));
        let own: anyhow::Result<()> = Err(anyhow::anyhow!("device meshd0 is gone"));
        assert!(!serves_pods(&own));
        let peer: anyhow::Result<()> = Err(std::io::Error::other("No space left on device"))
            .context("adding cluster CIDR 10.115.254.0/24")
            .context(PeerStepFailed);
        assert!(serves_pods(&peer));
        // Context added after the marker keeps it visible.
        let wrapped = peer.context("reconcile");
        assert!(serves_pods(&wrapped));
        // A failing pass for a peer's sake never removes the configuration.
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        let since = (!serves_pods(&wrapped)).then_some(t0);
        assert_eq!(
            action(serves_pods(&wrapped), since, t0 + grace * 3, grace),
            Action::Install
        );
    }

    #[test]
    fn removed_only_after_failing_for_the_grace_period_and_back_on_convergence() {
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        assert_eq!(action(true, None, t0, grace), Action::Install);
        assert_eq!(
            action(false, Some(t0), t0, grace),
            Action::Keep,
            "first failure"
        );
        let later = t0 + Duration::from_secs(9);
        assert_eq!(action(false, Some(t0), later, grace), Action::Keep);
        let later = t0 + grace;
        assert_eq!(action(false, Some(t0), later, grace), Action::Remove);
        assert_eq!(
            action(false, Some(t0), later + grace, grace),
            Action::Remove,
            "stays removed"
        );
        assert_eq!(action(true, Some(t0), later, grace), Action::Install);
        assert_eq!(action(false, Some(t0), t0, Duration::ZERO), Action::Remove);
    }

    fn me() -> NodeRecord {
        NodeRecord {
            name: "n1".into(),
            public_key: PrivateKey::generate().public_key(),
            listen_port: 51820,
            endpoints: vec!["198.18.0.11".parse().unwrap()],
            pod_cidrs: vec![
                "10.244.1.0/24".parse().unwrap(),
                "fd00:244:0:1::/64".parse().unwrap(),
            ],
            rotation: Default::default(),
        }
    }

    #[test]
    fn node_subnet_blocks_replace_the_pod_cidrs_and_parse_back_in_the_plugin() {
        let mut conf = conflist(
            &me(),
            Path::new("/var/lib/meshd/ipam"),
            1420,
            Path::new("/sys/fs/bpf/meshd"),
            true,
        );
        let usable: Vec<ipnet::IpNet> = vec![
            "192.168.10.16/28".parse().unwrap(),
            "192.168.10.48/28".parse().unwrap(),
            "fd00:10::10/124".parse().unwrap(),
        ];
        use_blocks(&mut conf, &usable);
        // The runtime hands the plugin its entry with the list's version and name.
        let mut plugin = conf["plugins"][0].clone();
        plugin["cniVersion"] = conf["cniVersion"].clone();
        plugin["name"] = conf["name"].clone();
        let plugin = plugin.to_string();
        let parsed =
            meshd_cni::NetConf::parse(plugin.as_bytes(), meshd_cni::Command::Status).unwrap();
        assert!(parsed.node_subnet_blocks);
        assert_eq!(parsed.cidrs().unwrap(), usable);
    }

    #[test]
    fn writes_parses_back_skips_identical_rewrites_and_removes() {
        let dir = tempfile::tempdir().unwrap();
        let conf_dir = dir.path().join("net.d");
        let conf = conflist(
            &me(),
            Path::new("/var/lib/meshd/ipam"),
            1420,
            Path::new("/sys/fs/bpf/meshd"),
            true,
        );
        write(&conf_dir, &conf).unwrap();
        let path = conf_dir.join(CONFLIST);
        let back: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back["plugins"][0]["type"], "meshd-cni");
        assert_eq!(back["plugins"][0]["podCIDRs"][1], "fd00:244:0:1::/64");
        assert_eq!(back["plugins"][0]["mtu"], 1420);
        assert_eq!(back["plugins"][0]["bpfPinDir"], "/sys/fs/bpf/meshd");
        assert_eq!(back["plugins"][0]["redirect"], true);
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        write(&conf_dir, &conf).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            mtime,
            "identical content is not rewritten"
        );
        assert_eq!(
            std::fs::read_dir(&conf_dir).unwrap().count(),
            1,
            "no temp file left"
        );
        remove(&conf_dir);
        assert!(!path.exists());
        remove(&conf_dir);
    }
}
