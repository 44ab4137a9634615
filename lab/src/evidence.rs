//! The lab's side of `meshctl audit`: the node views (what each node published in the registry
//! and what its meshd reports) and `--evidence`, which sends canary datagrams from a pod on
//! every node to a pod on every other node while capturing the underlay switch, then proves
//! from the capture that each pair's canary crossed only as WireGuard.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::plan::{underlay_ns, CLUSTER_V4, CLUSTER_V6};
use crate::state::{load_state, Paths};
use crate::status::{status, LabStatus};
use meshd::audit::{self, NodeView, Policy, Report};
use meshd::registry::kube::annotations::PUBLIC_KEY_ANNOTATION;
use meshd::registry::kube::client::client as kube_client;

/// The keys the lab's registry holds, by node.
fn published_keys(lab: &str, st: &LabStatus) -> anyhow::Result<BTreeMap<String, String>> {
    let state = load_state(lab)?.with_context(|| format!("lab {lab} is not up"))?;
    let mut out = BTreeMap::new();
    if state.registry == "kubernetes" {
        // Node annotations on the lab's API server, read from inside the underlay namespace.
        use k8s_openapi::api::core::v1::Node;
        use kube::api::{Api, ListParams};
        let paths = Paths::new(lab);
        let kubeconfig = paths.kubeconfig();
        let ul = underlay_ns(lab);
        let nodes = std::thread::spawn(move || -> anyhow::Result<Vec<Node>> {
            let ns = std::fs::File::open(format!("/run/netns/{ul}"))?;
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = kube_client(Some(&kubeconfig)).await?;
                let api: Api<Node> = Api::all(client);
                Ok(api.list(&ListParams::default()).await?.items)
            })
        })
        .join()
        .map_err(|_| anyhow::anyhow!("reading Nodes panicked"))??;
        for n in nodes {
            let key = n
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(PUBLIC_KEY_ANNOTATION))
                .cloned();
            if let (Some(name), Some(key)) = (n.metadata.name, key) {
                out.insert(name, key);
            }
        }
    } else {
        for n in &st.nodes {
            let path = Path::new(&st.registry_dir).join(format!("{}.json", n.name));
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(rec) = keyexchange::NodeRecord::from_json(&n.name, &text) {
                    out.insert(n.name.clone(), rec.public_key.to_string());
                }
            }
        }
    }
    Ok(out)
}

/// Audit the lab; with `evidence`, prove encryption per pair with canary traffic.
pub fn audit_lab(lab: &str, policy: &Policy, evidence: bool) -> anyhow::Result<Report> {
    let st = status(lab)?;
    let keys = published_keys(lab, &st)?;
    let views: Vec<NodeView> = st
        .nodes
        .iter()
        .map(|n| NodeView {
            name: n.name.clone(),
            published_key: keys.get(&n.name).cloned(),
            endpoints: n
                .underlay_addresses
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect(),
            pod_cidrs: n.pod_cidrs.clone(),
            status_error: n.status.is_none().then(|| {
                format!(
                    "meshd on {} is not answering (running: {})",
                    n.name, n.running
                )
            }),
            status: n.status.clone(),
        })
        .collect();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let mut report = audit::audit(&views, policy, now);
    if evidence {
        prove(&st, &mut report)?;
    }
    Ok(report)
}

fn tcpdump_count(pcap: &Path, filter: &str) -> anyhow::Result<usize> {
    let out = Command::new("tcpdump")
        .args(["-nr"])
        .arg(pcap)
        .arg(filter)
        .stderr(Stdio::null())
        .output()
        .context("running tcpdump -r")?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count())
}

/// Send `count` canary datagrams from inside `netns` to `to`.
fn send_canary(netns: &str, to: SocketAddr, canary: &str, count: u32) -> anyhow::Result<()> {
    let path = format!("/run/netns/{netns}");
    let canary = canary.to_string();
    std::thread::spawn(move || -> anyhow::Result<()> {
        let ns = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)?;
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse()?
        } else {
            "[::]:0".parse()?
        };
        let sock = UdpSocket::bind(bind)?;
        for _ in 0..count {
            sock.send_to(canary.as_bytes(), to)?;
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("canary sender panicked"))?
}

fn prove(st: &LabStatus, report: &mut Report) -> anyhow::Result<()> {
    // Removed when `prove` returns, whichever way it returns.
    let dir = capture_dir()?;
    let pcap = dir.path().join("evidence.pcap");
    let mut dump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &st.capture.namespace,
            "tcpdump",
            "-U",
            "-ni",
        ])
        .arg(&st.capture.interface)
        .arg("-w")
        .arg(&pcap)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting tcpdump on the underlay")?;
    // Wait until tcpdump listens (its stderr says so; it exits on failure).
    let err = dump.stderr.take().context("tcpdump stderr")?;
    let mut seen = String::new();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(err));
    loop {
        match lines.next() {
            Some(Ok(line)) if line.contains("listening on") => break,
            Some(Ok(line)) => {
                seen.push_str(&line);
                seen.push('\n');
            }
            _ => {
                let _ = dump.kill();
                bail!("tcpdump did not start: {seen}");
            }
        }
    }
    // Keep draining stderr so tcpdump never blocks on it.
    std::thread::spawn(move || lines.for_each(drop));
    let nonce: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut pairs = Vec::new();
    for a in &st.nodes {
        let Some(from) = st.pods.iter().find(|p| p.node == a.name) else {
            continue;
        };
        for b in st.nodes.iter().filter(|b| b.name != a.name) {
            let Some(to) = st.pods.iter().find(|p| p.node == b.name) else {
                continue;
            };
            let canary = format!("MESHD-AUDIT-CANARY-{nonce:x}-{}-{}", a.name, b.name);
            for dst in [&to.ipv4, &to.ipv6] {
                let ip: IpAddr = dst.parse().with_context(|| format!("pod address {dst}"))?;
                send_canary(&from.namespace, SocketAddr::new(ip, 9), &canary, 10)?;
            }
            pairs.push((a, b, canary));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let _ = Command::new("kill")
        .args(["-INT", &dump.id().to_string()])
        .status();
    let _ = dump.wait();
    let bytes = std::fs::read(&pcap).with_context(|| format!("reading {}", pcap.display()))?;
    let plaintext = tcpdump_count(&pcap, &format!("net {CLUSTER_V4} or net {CLUSTER_V6}"))?;
    for (a, b, canary) in pairs {
        let leaked = bytes.windows(canary.len()).any(|w| w == canary.as_bytes());
        let (a4, b4) = (&a.underlay_addresses[0], &b.underlay_addresses[0]);
        let wg = tcpdump_count(
            &pcap,
            &format!(
                "udp port {} and src host {a4} and dst host {b4}",
                st.listen_port
            ),
        )?;
        let ok = !leaked && plaintext == 0 && wg > 0;
        audit::evidence(
            report,
            &format!("{}->{}", a.name, b.name),
            ok,
            format!(
                "canary in clear: {}; packets with a pod address on the wire: {plaintext}; WireGuard packets {a4}->{b4}: {wg}",
                if leaked { "YES" } else { "no" }
            ),
        );
    }
    Ok(())
}

/// A private scratch directory for the capture, readable by tcpdump's unprivileged user.
fn capture_dir() -> anyhow::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::Builder::new()
        .prefix("meshd-audit-")
        .tempdir()
        .context("creating the capture directory")?;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
        .context("opening the capture directory to tcpdump")?;
    Ok(dir)
}
