//! This node's endpoints: which known pods are local, and the endpoint id (host veth ifindex)
//! of each.
//!
//! A pod is a local endpoint when its `spec.nodeName` is this node and one of its addresses is
//! owned in the node's IPAM store; its endpoint is the store entry's owner's host veth
//! (`meshd_cni::host_veth_name(container_id, ifname)`), whose ifindex is the id. The Pod object
//! and the store entry arrive independently (the CNI ADD writes the store before the veth
//! exists, the kubelet reports the address after ADD returns): the mapping is re-evaluated
//! whenever either changes, and while a local pod's address is in the store but its veth has
//! no ifindex yet it is [`LocalEndpoints::waiting`] and the loop checks again shortly.
//!
//! [`watch_store`] follows the store directory with inotify (address files appear by
//! `link(2)` on ADD and disappear on DEL or GC) and says when to re-read it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use inotify::{EventMask, Inotify, WatchMask};
use meshd_cni::host_veth_name;
use meshd_cni::ipam::{Entry, Ipam, IpamError};
use meshd_policy::model::PodKey;
use meshd_policy::{Change, EndpointId, World};
use tokio::sync::mpsc;

/// Why the IPAM store cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Opening or reading the store failed.
    #[error("reading the IPAM store")]
    Read(#[from] IpamError),
    /// Setting up the inotify watch failed.
    #[error("watching the IPAM store {path}")]
    Watch {
        /// The store directory.
        path: PathBuf,
        /// Underlying I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The store's owned addresses and their owners' host veths.
pub type StoreVeths = BTreeMap<IpAddr, String>;

/// The owned addresses of `entries` and their owners' host veths.
pub fn store_veths(entries: &[Entry]) -> StoreVeths {
    entries
        .iter()
        .filter_map(|e| {
            e.owner
                .as_ref()
                .map(|o| (e.address, host_veth_name(&o.container_id, &o.ifname)))
        })
        .collect()
}

/// Reads the store in `dir` (creating it if absent, as the CNI plugin would).
pub fn read_store(dir: &Path) -> Result<StoreVeths, StoreError> {
    Ok(store_veths(&Ipam::open(dir, &[])?.list()?))
}

/// The ifindex of interface `name`, if it exists.
pub fn ifindex_of(name: &str) -> Option<u32> {
    nix::net::if_::if_nametoindex(name).ok()
}

/// The local endpoints as last computed, and what they derive from. See the module doc.
#[derive(Debug)]
pub struct LocalEndpoints {
    node: String,
    /// Known pods whose `spec.nodeName` is this node.
    local: BTreeSet<PodKey>,
    store: StoreVeths,
    attached: BTreeMap<PodKey, EndpointId>,
    waiting: bool,
}

impl LocalEndpoints {
    /// No pods yet, on node `node`.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            local: BTreeSet::new(),
            store: StoreVeths::new(),
            attached: BTreeMap::new(),
            waiting: false,
        }
    }

    /// Follows a change the compiler applied; true when it can change the endpoints.
    pub fn note(&mut self, change: &Change) -> bool {
        match change {
            Change::UpsertPod(pod) if pod.node == self.node => {
                self.local.insert(pod.key.clone());
                true
            }
            Change::UpsertPod(pod) => self.local.remove(&pod.key),
            Change::RemovePod(key) => self.local.remove(key),
            _ => false,
        }
    }

    /// The store's content changed.
    pub fn set_store(&mut self, store: StoreVeths) {
        self.store = store;
    }

    /// The endpoints attached now.
    pub fn attached(&self) -> &BTreeMap<PodKey, EndpointId> {
        &self.attached
    }

    /// Whether a local pod's address is in the store but its veth has no ifindex yet.
    pub fn waiting(&self) -> bool {
        self.waiting
    }

    /// The endpoints `world`'s local pods should have now, as attach and detach changes
    /// against the last result. `ifindex` looks up an interface.
    pub fn changes(&mut self, world: &World, ifindex: &dyn Fn(&str) -> Option<u32>) -> Vec<Change> {
        let mut desired: BTreeMap<PodKey, EndpointId> = BTreeMap::new();
        let mut taken: BTreeMap<EndpointId, PodKey> = BTreeMap::new();
        self.waiting = false;
        for key in &self.local {
            let Some(pod) = world.pods.get(key) else {
                continue;
            };
            let Some(veth) = pod.addresses.iter().find_map(|a| self.store.get(a)) else {
                continue;
            };
            let Some(index) = ifindex(veth) else {
                self.waiting = true;
                continue;
            };
            let id = EndpointId(index);
            if let Some(other) = taken.get(&id) {
                // Two pods claim one interface (an address reused before the old Pod object
                // was deleted): the first keeps it, the second waits for the world to settle.
                tracing::warn!(pod = %key, other = %other, veth, "two pods map to one host veth; keeping the first");
                continue;
            }
            taken.insert(id, key.clone());
            desired.insert(key.clone(), id);
        }
        let mut changes: Vec<Change> = self
            .attached
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .map(|k| Change::DetachEndpoint(k.clone()))
            .collect();
        changes.extend(
            desired
                .iter()
                .filter(|(k, id)| self.attached.get(*k) != Some(id))
                .map(|(k, id)| Change::AttachEndpoint {
                    pod: k.clone(),
                    endpoint: *id,
                }),
        );
        self.attached = desired;
        changes
    }
}

/// Follows the store in `dir` (created if absent): a `()` after every change to it, coalesced
/// (the receiver re-reads the whole store). Stops when the receiver is dropped.
pub fn watch_store(dir: &Path) -> Result<mpsc::Receiver<()>, StoreError> {
    Ipam::open(dir, &[])?;
    let watch_err = |source| StoreError::Watch {
        path: dir.to_path_buf(),
        source,
    };
    let inotify = Inotify::init().map_err(watch_err)?;
    inotify
        .watches()
        .add(
            dir,
            WatchMask::CREATE
                | WatchMask::DELETE
                | WatchMask::MOVED_TO
                | WatchMask::MOVED_FROM
                | WatchMask::CLOSE_WRITE,
        )
        .map_err(watch_err)?;
    let mut stream = inotify
        .into_event_stream(vec![0u8; 16 * 1024])
        .map_err(watch_err)?;
    let (tx, rx) = mpsc::channel(1);
    let path = dir.to_path_buf();
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                () = tx.closed() => break,
                event = stream.next() => event,
            };
            match event {
                Some(Ok(event)) => {
                    let relevant = event.mask.contains(EventMask::Q_OVERFLOW)
                        || event
                            .name
                            .as_deref()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| !n.starts_with('.'));
                    if relevant {
                        // Full: a re-read is already due, which will see this change too.
                        let _ = tx.try_send(());
                    }
                }
                Some(Err(error)) => {
                    tracing::error!(dir = %path.display(), %error, "reading inotify events of the IPAM store failed; local endpoints now follow only Pod changes");
                    break;
                }
                None => break,
            }
        }
    });
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use meshd_cni::ipam::Owner;
    use meshd_policy::model::Pod;

    use super::*;

    fn pod(name: &str, node: &str, address: &str) -> Pod {
        Pod {
            key: PodKey::new("x", name),
            labels: Default::default(),
            addresses: vec![address.parse().expect("literal")],
            node: node.into(),
            named_ports: BTreeMap::new(),
        }
    }

    fn entry(address: &str, container: &str) -> Entry {
        Entry {
            address: address.parse().expect("literal"),
            owner: Some(Owner {
                container_id: container.into(),
                ifname: "eth0".into(),
            }),
        }
    }

    #[test]
    fn a_local_pod_with_an_owned_address_is_its_veths_endpoint() {
        let mut world = World::default();
        let mut local = LocalEndpoints::new("n1");
        let pods = [
            pod("a", "n1", "10.0.1.2"),
            pod("b", "n1", "10.0.1.3"),
            pod("c", "n2", "10.0.2.2"),
        ];
        for p in &pods {
            local.note(&Change::UpsertPod(p.clone()));
            world.pods.insert(p.key.clone(), p.clone().into());
        }
        let veth_a = host_veth_name("ca", "eth0");
        let veth_b = host_veth_name("cb", "eth0");
        let store = store_veths(&[
            entry("10.0.1.2", "ca"),
            entry("10.0.1.3", "cb"),
            Entry {
                address: "10.0.1.9".parse().expect("literal"),
                owner: None,
            },
        ]);
        local.set_store(store);
        // b's veth does not exist yet.
        let only_a = |name: &str| (name == veth_a).then_some(7);
        assert_eq!(
            local.changes(&world, &only_a),
            vec![Change::AttachEndpoint {
                pod: PodKey::new("x", "a"),
                endpoint: EndpointId(7)
            }]
        );
        assert!(local.waiting());
        let both = |name: &str| {
            if name == veth_a {
                Some(7)
            } else if name == veth_b {
                Some(8)
            } else {
                None
            }
        };
        assert_eq!(
            local.changes(&world, &both),
            vec![Change::AttachEndpoint {
                pod: PodKey::new("x", "b"),
                endpoint: EndpointId(8)
            }]
        );
        assert!(!local.waiting());
        // a's address released (CNI DEL): detached; b moves to another node: detached.
        local.set_store(store_veths(&[entry("10.0.1.3", "cb")]));
        let mut b = pods[1].clone();
        b.node = "n2".into();
        assert!(local.note(&Change::UpsertPod(b.clone())));
        world.pods.insert(b.key.clone(), b.into());
        assert_eq!(
            local.changes(&world, &both),
            vec![
                Change::DetachEndpoint(PodKey::new("x", "a")),
                Change::DetachEndpoint(PodKey::new("x", "b")),
            ]
        );
        assert!(local.attached().is_empty());
    }

    #[tokio::test]
    async fn the_store_watch_fires_on_add_and_del() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("ipam");
        let mut rx = watch_store(&store).expect("watch");
        let ipam = Ipam::open(&store, &["10.9.0.0/24".parse().expect("literal")]).expect("open");
        let addrs = ipam.allocate("c1", "eth0").expect("allocate");
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("an event after ADD");
        assert_eq!(
            read_store(&store)
                .expect("read")
                .keys()
                .copied()
                .collect::<Vec<_>>(),
            addrs
        );
        // Drain what the ADD caused, then a DEL.
        while tokio::time::timeout(std::time::Duration::from_millis(100), rx.recv())
            .await
            .is_ok()
        {}
        ipam.release("c1", Some("eth0")).expect("release");
        tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv())
            .await
            .expect("an event after DEL");
        assert!(read_store(&store).expect("read").is_empty());
    }
}
