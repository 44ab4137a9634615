//! The per-node endpoint batch, pure: what one node publishes about its own pods so that every
//! other node's policy can name them as peers, its encoding, its decoding and its vetting.
//!
//! A node's meshd watches only its own node's Pods and publishes one batch (a ConfigMap
//! `meshd-endpoints-<node>` on Kubernetes, `objects/endpoints/<node>.json` in the directory
//! registry) holding, for each local pod, exactly what a remote compiler reads: namespace,
//! name, labels, addresses and named ports. Pods of one workload share their label set, so the
//! labels are written once per batch in a table (`labels`) and each pod names its entry.
//!
//! ```json
//! {"v":1,"node":"n2","labels":[{"app":"web"}],
//!  "pods":[{"ns":"x","name":"web-1","l":0,"ips":["10.244.2.5"],"ports":{"http":[6,80]}}]}
//! ```
//!
//! A batch comes from another node and is untrusted. [`decode`] refuses the whole batch only
//! when it cannot be read as one (not JSON, another format version, another node's name, too
//! large); a pod entry that is wrong is refused alone. [`vet`] then holds every address to the
//! publishing node's pod CIDRs (from its node record): an address outside is refused alone and
//! never reaches the compiler, so a node can never claim an address of another node's pods.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use keyexchange::record::is_dns1123_subdomain;
use meshd_policy::intern::Interner;
use meshd_policy::model::{Labels, Name, NamedPort, Pod, PodKey, Protocol, SharedLabels};
use serde::{Deserialize, Serialize};

/// The format version this meshd writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Largest batch read: a ConfigMap's limit (1 MiB).
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Most pods one batch may carry (kubelet's default limit is 110; large nodes run a few hundred).
pub const MAX_PODS: usize = 2048;
/// Most addresses one pod may carry (one per family in practice).
pub const MAX_ADDRESSES: usize = 4;
/// Most labels (and named ports) one pod may carry.
pub const MAX_LABELS: usize = 128;

/// Why a whole batch is refused (its last good version, if any, stays in force).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    /// Larger than [`MAX_BATCH_BYTES`].
    #[error("the endpoint batch is {size} bytes, more than the {MAX_BATCH_BYTES} allowed")]
    TooLarge {
        /// Its size.
        size: usize,
    },
    /// Not a batch at all.
    #[error("the endpoint batch is not valid JSON of the batch format: {reason}")]
    Syntax {
        /// The parser's message.
        reason: String,
    },
    /// Written in a format version this meshd does not read.
    #[error("the endpoint batch has format version {found}, this meshd reads {FORMAT_VERSION}")]
    Version {
        /// The version it says.
        found: u32,
    },
    /// Names another node than the one whose place it is in.
    #[error("the endpoint batch of node {expected:?} says it is node {found:?}'s")]
    WrongNode {
        /// The node whose object or file it is.
        expected: String,
        /// The node it names.
        found: String,
    },
    /// More than [`MAX_PODS`] pods.
    #[error("the endpoint batch carries {count} pods, more than the {MAX_PODS} allowed")]
    TooManyPods {
        /// How many.
        count: usize,
    },
    /// A label key holding `=`, which no label key may (label sets keep `key=value`).
    #[error("the endpoint batch's label key {key:?} holds '=', which a label key may not")]
    LabelKey {
        /// The key.
        key: String,
    },
}

#[derive(Serialize, Deserialize)]
struct WireBatch<L> {
    v: u32,
    node: String,
    #[serde(default)]
    labels: Vec<L>,
    #[serde(default)]
    pods: Vec<WirePod>,
}

#[derive(Serialize, Deserialize)]
struct WirePod {
    ns: String,
    name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<usize>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    ips: Vec<String>,
    /// Named port → (IP protocol number, port).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    ports: BTreeMap<String, (u8, u16)>,
}

/// The batch of node `node` holding `pods` (sorted by key, so equal sets encode equally).
pub fn encode<'a>(node: &str, pods: impl IntoIterator<Item = &'a Pod>) -> String {
    let mut pods: Vec<&Pod> = pods.into_iter().collect();
    pods.sort_by(|a, b| a.key.cmp(&b.key));
    let mut table: Vec<Labels> = Vec::new();
    let mut index: BTreeMap<&SharedLabels, usize> = BTreeMap::new();
    let mut wire_pods = Vec::with_capacity(pods.len());
    for pod in pods {
        let l = (!pod.labels.is_empty()).then(|| {
            *index.entry(&pod.labels).or_insert_with(|| {
                table.push(pod.labels.to_labels());
                table.len() - 1
            })
        });
        wire_pods.push(WirePod {
            ns: pod.key.namespace.to_string(),
            name: pod.key.name.to_string(),
            l,
            ips: pod.addresses.iter().map(ToString::to_string).collect(),
            ports: pod
                .named_ports
                .iter()
                .map(|(name, p)| (name.clone(), (p.protocol.number(), p.number)))
                .collect(),
        });
    }
    let wire = WireBatch {
        v: FORMAT_VERSION,
        node: node.to_owned(),
        labels: table,
        pods: wire_pods,
    };
    serde_json::to_string(&wire).unwrap_or_default()
}

/// A decoded batch: the pods that could be read, and why each other entry was refused.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decoded {
    /// The pods, each with `node` set to the publishing node.
    pub pods: Vec<Pod>,
    /// One line per refused entry or address, naming the pod and what was wrong.
    pub refused: Vec<String>,
}

/// Decodes node `node`'s batch. Whole-batch errors are [`BatchError`]s; a bad pod entry is
/// refused alone (listed in [`Decoded::refused`]), as is a second entry for the same pod.
/// The pods of the batch share their namespace and node names and their label sets.
pub fn decode(content: &[u8], node: &str) -> Result<Decoded, BatchError> {
    decode_interned(content, node, &mut Interner::default())
}

/// [`decode`], sharing names and label sets with everything else `interner` handed out (the
/// pods of every batch a node reads, so that a namespace or a workload's labels are held
/// once).
pub fn decode_interned(
    content: &[u8],
    node: &str,
    interner: &mut Interner,
) -> Result<Decoded, BatchError> {
    if content.len() > MAX_BATCH_BYTES {
        return Err(BatchError::TooLarge {
            size: content.len(),
        });
    }
    let wire: WireBatch<Labels> =
        serde_json::from_slice(content).map_err(|e| BatchError::Syntax {
            reason: e.to_string(),
        })?;
    if wire.v != FORMAT_VERSION {
        return Err(BatchError::Version { found: wire.v });
    }
    if wire.node != node {
        return Err(BatchError::WrongNode {
            expected: node.to_owned(),
            found: wire.node,
        });
    }
    if wire.pods.len() > MAX_PODS {
        return Err(BatchError::TooManyPods {
            count: wire.pods.len(),
        });
    }
    if let Some(key) = wire
        .labels
        .iter()
        .flat_map(|labels| labels.keys())
        .find(|key| key.contains('='))
    {
        return Err(BatchError::LabelKey { key: key.clone() });
    }
    let mut out = Decoded::default();
    let mut seen = BTreeSet::new();
    let table: Vec<SharedLabels> = wire
        .labels
        .into_iter()
        // Equal sets of other batches are made one by the ipcache's identities: the interner
        // shares the names only.
        .map(|labels| interner.labels_of_names(&labels))
        .collect();
    let node_name = interner.name(node);
    for (i, entry) in wire.pods.into_iter().enumerate() {
        match pod_of(entry, &table, &node_name, interner) {
            Ok(pod) if !seen.insert(pod.key.clone()) => out
                .refused
                .push(format!("pods[{i}]: pod {} is listed twice", pod.key)),
            Ok(pod) => out.pods.push(pod),
            Err(error) => out.refused.push(format!("pods[{i}]: {error}")),
        }
    }
    Ok(out)
}

fn pod_of(
    entry: WirePod,
    table: &[SharedLabels],
    node: &Name,
    interner: &mut Interner,
) -> Result<Pod, String> {
    if entry.ns.len() > 63 || !is_dns1123_subdomain(&entry.ns) || entry.ns.contains('.') {
        return Err(format!("namespace {:?} is not a DNS-1123 label", entry.ns));
    }
    if !is_dns1123_subdomain(&entry.name) {
        return Err(format!(
            "pod name {:?} is not a DNS-1123 subdomain",
            entry.name
        ));
    }
    let key = PodKey::new(interner.name(&entry.ns), entry.name);
    let labels = match entry.l {
        None => SharedLabels::default(),
        Some(l) => table
            .get(l)
            .cloned()
            .ok_or_else(|| format!("pod {key}: label set {l} is not in the batch's table"))?,
    };
    if labels.len() > MAX_LABELS || entry.ports.len() > MAX_LABELS {
        return Err(format!(
            "pod {key}: more than {MAX_LABELS} labels or named ports"
        ));
    }
    if entry.ips.len() > MAX_ADDRESSES {
        return Err(format!(
            "pod {key}: {} addresses, more than {MAX_ADDRESSES}",
            entry.ips.len()
        ));
    }
    let mut addresses = Vec::with_capacity(entry.ips.len());
    for ip in &entry.ips {
        let address: IpAddr = ip
            .parse()
            .map_err(|_| format!("pod {key}: {ip:?} is not an IP address"))?;
        if !addresses.contains(&address) {
            addresses.push(address);
        }
    }
    let mut named_ports = BTreeMap::new();
    for (name, (protocol, number)) in entry.ports {
        let protocol = Protocol::from_number(protocol).ok_or_else(|| {
            format!("pod {key}: port {name:?} has protocol {protocol}, not TCP, UDP or SCTP")
        })?;
        if number == 0 || name.is_empty() || name.len() > 15 {
            return Err(format!(
                "pod {key}: named port {name:?} ({number}) is invalid"
            ));
        }
        named_ports.insert(name, NamedPort { protocol, number });
    }
    Ok(Pod {
        key,
        labels,
        addresses,
        node: node.clone(),
        named_ports,
    })
}

/// Holds every address of `decoded` to the publishing node's `pod_cidrs`: an address outside
/// them is dropped and reported (the pod keeps its other addresses). Nothing else is judged.
pub fn vet(mut decoded: Decoded, node: &str, pod_cidrs: &[IpNet]) -> Decoded {
    for pod in &mut decoded.pods {
        pod.addresses.retain(|address| {
            let inside = pod_cidrs.iter().any(|cidr| cidr.contains(address));
            if !inside {
                decoded.refused.push(format!(
                    "pod {}: address {address} is outside node {node:?}'s pod CIDRs",
                    pod.key
                ));
            }
            inside
        });
    }
    decoded
}

#[cfg(test)]
mod tests;
