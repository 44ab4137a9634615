//! What the Kubernetes registry tests share, whichever API server they run against (the mock in
//! kube.rs, the real kube-apiserver in kube_real.rs and kube_real_watchers.rs through
//! `kube_real/harness.rs`): the test nodes n1..=nN and their addressing, meshd's registry for a
//! node, a node's record as meshd publishes it, and waiting for registry events.

use std::time::Duration;

use keyexchange::{NodeRecord, PublicKey};
use kube::Client;
use meshd::registry::{KubeRegistry, RegistryEvent};
use tokio::sync::mpsc::Receiver;

/// Node n`i` as the tests create it: dual-stack InternalIPs and pod CIDRs, both numbered by `i`.
pub struct TestNode {
    /// `n<i>`.
    pub name: String,
    /// `198.18.0.<10+i>` and `fd00:198::<10+i>`.
    pub internal_ips: [String; 2],
    /// `10.244.<i>.0/24` and `fd00:244:0:<i>::/64`.
    pub pod_cidrs: [String; 2],
}

impl TestNode {
    /// Node n`i`.
    pub fn numbered(i: u8) -> TestNode {
        TestNode {
            name: format!("n{i}"),
            internal_ips: [
                format!("198.18.0.{}", 10 + i),
                format!("fd00:198::{}", 10 + i),
            ],
            pod_cidrs: [format!("10.244.{i}.0/24"), format!("fd00:244:0:{i}::/64")],
        }
    }

    /// The InternalIPs, as the API servers' `create_node` takes them.
    pub fn ips(&self) -> [&str; 2] {
        [&self.internal_ips[0], &self.internal_ips[1]]
    }

    /// The pod CIDRs, as the API servers' `create_node` takes them.
    pub fn cidrs(&self) -> [&str; 2] {
        [&self.pod_cidrs[0], &self.pod_cidrs[1]]
    }
}

/// meshd's registry for `node` through `client`, with a watch backoff short enough for tests.
pub fn registry(client: &Client, node: &str) -> KubeRegistry {
    KubeRegistry::new(client.clone(), node)
        .with_watch_backoff(Duration::from_millis(50), Duration::from_millis(500))
}

/// n`i`'s record with the key `[i; 32]`, endpoints and CIDRs from its Node.
pub async fn record(client: &Client, i: u8) -> NodeRecord {
    let name = format!("n{i}");
    let addressing = registry(client, &name).node_addressing().await.unwrap();
    NodeRecord {
        name,
        public_key: PublicKey::from_bytes([i; 32]),
        listen_port: 51820,
        endpoints: addressing.endpoints,
        pod_cidrs: addressing.pod_cidrs,
        rotation: Default::default(),
    }
}

/// The next registry event, within `wait`.
pub async fn next_event(rx: &mut Receiver<RegistryEvent>, wait: Duration) -> RegistryEvent {
    tokio::time::timeout(wait, rx.recv())
        .await
        .expect("timed out waiting for a registry event")
        .expect("registry watch closed")
}

/// Events up to and including the next `Synced`, each within `wait`.
pub async fn events_until_synced(
    rx: &mut Receiver<RegistryEvent>,
    wait: Duration,
) -> Vec<RegistryEvent> {
    let mut events = Vec::new();
    loop {
        let e = next_event(rx, wait).await;
        let done = matches!(e, RegistryEvent::Synced);
        events.push(e);
        if done {
            return events;
        }
    }
}
