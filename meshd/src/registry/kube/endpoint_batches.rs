//! The endpoint batches on the API server: each node's meshd publishes its own pods' identity
//! ([`crate::policy::endpoint_batch`]) as one ConfigMap, `meshd-endpoints-<node>` in meshd's
//! namespace, labelled [`BATCH_LABEL`], content under the data key [`DATA_KEY`]; every node
//! lists and watches those ConfigMaps by that label ([`watch_batches`]) instead of every Pod.
//!
//! RBAC cannot limit `create` to a name, so `deploy/components/node-identity`'s admission
//! policy lets meshd's service account write only the ConfigMap named for the node of its
//! token. Whatever a batch says, its addresses are held to its node's pod CIDRs
//! (`spec.podCIDRs`, from the Node watch: [`PodCidrCache`]) before any reaches the compiler.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use ipnet::IpNet;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::json;
use tokio::sync::mpsc;

use super::WatchBackoff;
use crate::policy::pod_identity::BatchEvent;

/// Prefix of a batch's ConfigMap name; the rest is the node's name.
pub const NAME_PREFIX: &str = "meshd-endpoints-";
/// The label every batch carries (its value: the node), and the watch selects.
pub const BATCH_LABEL: &str = "meshd.io/endpoint-batch";
/// The data key holding the batch.
pub const DATA_KEY: &str = "endpoints";
/// Capacity of the channel [`watch_batches`] returns.
const CHANNEL_CAPACITY: usize = 1024;

/// Every node's pod CIDRs as the Node watch last saw them (`spec.podCIDRs`, set by the node
/// IPAM controller and immutable), shared between the registry's Node watch and the batches'
/// vetting.
#[derive(Clone, Debug, Default)]
pub struct PodCidrCache(Arc<RwLock<HashMap<String, Vec<IpNet>>>>);

impl PodCidrCache {
    /// Node `node`'s pod CIDRs are `cidrs` (`None`: the node is gone or its record refused).
    pub fn set(&self, node: &str, cidrs: Option<Vec<IpNet>>) {
        let mut map = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match cidrs {
            Some(cidrs) => map.insert(node.to_owned(), cidrs),
            None => map.remove(node),
        };
    }

    /// Node `node`'s pod CIDRs, if known.
    pub fn get(&self, node: &str) -> Option<Vec<IpNet>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(node)
            .cloned()
    }
}

/// The name of node `node`'s batch ConfigMap.
pub fn config_map_name(node: &str) -> String {
    format!("{NAME_PREFIX}{node}")
}

/// Writes node `node`'s batch into its ConfigMap in `namespace`: a merge patch of the data and
/// the label, or, when the ConfigMap does not exist yet, its creation. With `node_uid` (the
/// `Node`'s `metadata.uid`) the ConfigMap is owned by the `Node`: the garbage collector deletes
/// it with the `Node`, so a node that leaves takes its pods with it.
pub async fn write_batch(
    client: Client,
    namespace: &str,
    node: &str,
    node_uid: Option<&str>,
    content: String,
) -> Result<(), kube::Error> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let name = config_map_name(node);
    let mut object = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "labels": {BATCH_LABEL: node}},
        "data": {DATA_KEY: content},
    });
    if let Some(uid) = node_uid {
        object["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "v1", "kind": "Node", "name": node, "uid": uid}]);
    }
    let params = PatchParams::default();
    match api.patch(&name, &params, &Patch::Merge(&object)).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => {
            let config_map: ConfigMap =
                serde_json::from_value(object).map_err(kube::Error::SerdeError)?;
            api.create(&PostParams::default(), &config_map)
                .await
                .map(drop)
        }
        Err(error) => Err(error),
    }
}

/// Lists and watches every batch ConfigMap in `namespace` (by [`BATCH_LABEL`]), re-establishing
/// a failed watch with backoff from `first` doubling up to `max`. Stops when the receiver is
/// dropped. Must be called in a Tokio runtime.
pub fn watch_batches(
    client: Client,
    namespace: &str,
    (first, max): (Duration, Duration),
) -> mpsc::Receiver<BatchEvent> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let stream = watcher::watcher(api, watcher::Config::default().labels(BATCH_LABEL))
        .backoff(WatchBackoff::new(first, max));
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let item = tokio::select! {
                () = tx.closed() => break,
                item = stream.next() => item,
            };
            let event = match item {
                Some(Ok(event)) => translate(event),
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching the endpoint batches failed; retrying with backoff (the known pods stay in force)");
                    continue;
                }
                None => {
                    tracing::error!("endpoint batch watch stream ended");
                    break;
                }
            };
            if let Some(event) = event {
                if tx.send(event).await.is_err() {
                    break;
                }
            }
        }
    });
    rx
}

/// One watcher event as a [`BatchEvent`] (`None`: a ConfigMap not named as a batch).
pub fn translate(event: Event<ConfigMap>) -> Option<BatchEvent> {
    match event {
        Event::Init => Some(BatchEvent::ListStart),
        Event::InitDone => Some(BatchEvent::ListDone),
        Event::InitApply(cm) | Event::Apply(cm) => {
            let node = node_of(&cm)?;
            Some(match cm.data.as_ref().and_then(|data| data.get(DATA_KEY)) {
                Some(content) => BatchEvent::Upsert {
                    node,
                    content: content.clone().into_bytes(),
                },
                None => BatchEvent::Unreadable {
                    error: format!(
                        "ConfigMap {} has no data key {DATA_KEY:?}",
                        config_map_name(&node)
                    ),
                    node,
                },
            })
        }
        Event::Delete(cm) => node_of(&cm).map(BatchEvent::Remove),
    }
}

fn node_of(cm: &ConfigMap) -> Option<String> {
    let name = cm.metadata.name.as_deref()?;
    let node = name.strip_prefix(NAME_PREFIX).filter(|n| !n.is_empty());
    if node.is_none() {
        tracing::debug!(
            name,
            "a ConfigMap with the batch label but not a batch's name; ignored"
        );
    }
    node.map(str::to_owned)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn cm(name: &str, data: Option<&str>) -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "meshd-system", "labels": {BATCH_LABEL: "x"}},
            "data": data.map(|d| json!({DATA_KEY: d})),
        }))
        .unwrap()
    }

    #[test]
    fn config_maps_become_batch_events_named_for_their_node() {
        assert_eq!(translate(Event::Init), Some(BatchEvent::ListStart));
        assert_eq!(
            translate(Event::Apply(cm("meshd-endpoints-n2", Some("{}")))),
            Some(BatchEvent::Upsert {
                node: "n2".into(),
                content: b"{}".to_vec()
            })
        );
        assert!(matches!(
            translate(Event::Apply(cm("meshd-endpoints-n2", None))),
            Some(BatchEvent::Unreadable { node, .. }) if node == "n2"
        ));
        assert_eq!(translate(Event::Apply(cm("other", Some("{}")))), None);
        assert_eq!(
            translate(Event::Delete(cm("meshd-endpoints-n3", None))),
            Some(BatchEvent::Remove("n3".into()))
        );
    }

    #[test]
    fn the_cache_forgets_a_gone_node() {
        let cache = PodCidrCache::default();
        cache.set("n2", Some(vec!["10.244.2.0/24".parse().unwrap()]));
        assert_eq!(cache.get("n2").unwrap().len(), 1);
        cache.set("n2", None);
        assert_eq!(cache.get("n2"), None);
    }
}
