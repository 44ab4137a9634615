//! The objects NetworkPolicy depends on, from the API server: a list and watch of every
//! Namespace and NetworkPolicy in the cluster and of this node's own Pods (field selector
//! `spec.nodeName=<node>`) ([`watch_policy_objects`]), converted on arrival by
//! [`meshd_policy::k8s`] into the compiler's model and reported as [`ObjectEvent`]s.
//!
//! Other nodes' pods are not watched: a policy on a local pod can name any pod of the cluster
//! as a peer, and what it needs of them (namespace, name, labels, addresses, named ports)
//! comes from each node's endpoint batch ([`super::endpoint_batches`],
//! [`crate::policy::pod_identity`]), one object per node instead of one watch event per pod
//! to every node. The API object is dropped once converted.
//!
//! kube's watcher lists (in pages), then watches from the list's resourceVersion with
//! bookmarks, and lists again on its own when the watch cannot be resumed (`410 Gone`); each
//! (re)list is reported between `ListStart` and `ListDone`, so the consumer removes what
//! vanished while the watch was down. Errors (API server unreachable, `403` without the RBAC)
//! are retried with backoff; the last known objects stay in force meanwhile.
//!
//! Needs `list` and `watch` on `pods` (limited by the field selector to the node's own, which
//! RBAC cannot express) and `namespaces` (core) and on `networkpolicies`
//! (`networking.k8s.io`), cluster-wide; nothing else.

use std::fmt::Debug;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::Api;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource, ResourceExt};
use meshd_policy::k8s;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc;

use super::WatchBackoff;
use crate::policy::objects::{Kind, Object, ObjectEvent, ObjectRef};

/// Capacity of the event channel (shared by the three watches).
const CHANNEL_CAPACITY: usize = 4096;

/// Watches every Namespace and NetworkPolicy and node `node`'s own Pods with `client`,
/// re-establishing failed watches with backoff from `first` doubling up to `max`. The watches
/// stop when the receiver is dropped. Must be called in a Tokio runtime.
pub fn watch_policy_objects(
    client: Client,
    node: &str,
    (first, max): (Duration, Duration),
) -> mpsc::Receiver<ObjectEvent> {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let everything = watcher::Config::default();
    spawn_kind(
        Api::<Namespace>::all(client.clone()),
        everything.clone(),
        Kind::Namespace,
        namespace_event,
        tx.clone(),
        (first, max),
    );
    spawn_kind(
        Api::<Pod>::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        Kind::Pod,
        pod_event,
        tx.clone(),
        (first, max),
    );
    spawn_kind(
        Api::<NetworkPolicy>::all(client),
        everything,
        Kind::NetworkPolicy,
        policy_event,
        tx,
        (first, max),
    );
    rx
}

/// Runs the watch of one kind, converting each object with `convert`.
fn spawn_kind<K>(
    api: Api<K>,
    config: watcher::Config,
    kind: Kind,
    convert: fn(&K) -> ObjectEvent,
    tx: mpsc::Sender<ObjectEvent>,
    (first, max): (Duration, Duration),
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let stream = watcher::watcher(api, config).backoff(WatchBackoff::new(first, max));
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let item = tokio::select! {
                () = tx.closed() => break,
                item = stream.next() => item,
            };
            let event = match item {
                Some(Ok(event)) => translate(kind, convert, event),
                Some(Err(error)) => {
                    tracing::warn!(%kind, %error, "watching failed; retrying with backoff (the known objects stay in force)");
                    continue;
                }
                None => {
                    tracing::error!(%kind, "watch stream ended");
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
}

/// One watcher event as an [`ObjectEvent`] (`None`: an object without a name).
pub fn translate<K: Resource>(
    kind: Kind,
    convert: fn(&K) -> ObjectEvent,
    event: Event<K>,
) -> Option<ObjectEvent> {
    match event {
        Event::Init => {
            tracing::debug!(%kind, "listing");
            Some(ObjectEvent::ListStart(kind))
        }
        Event::InitDone => Some(ObjectEvent::ListDone(kind)),
        Event::InitApply(object) | Event::Apply(object) => {
            reference(kind, &object)?;
            Some(convert(&object))
        }
        Event::Delete(object) => reference(kind, &object).map(ObjectEvent::Remove),
    }
}

fn reference<K: Resource>(kind: Kind, object: &K) -> Option<ObjectRef> {
    let name = object.meta().name.clone()?;
    Some(match kind {
        Kind::Namespace => ObjectRef::namespace(name),
        kind => ObjectRef::namespaced(kind, object.namespace().unwrap_or_default(), name),
    })
}

fn refused(kind: Kind, reference: Option<ObjectRef>, error: String) -> ObjectEvent {
    let object = reference.unwrap_or_else(|| ObjectRef::namespace(String::new()));
    tracing::warn!(%kind, %object, %error, "refusing an object");
    ObjectEvent::Malformed { object, error }
}

/// A Namespace as an event.
pub fn namespace_event(ns: &Namespace) -> ObjectEvent {
    match k8s::namespace_from_k8s(ns) {
        Ok(ns) => ObjectEvent::Upsert(Object::Namespace(ns)),
        Err(e) => refused(
            Kind::Namespace,
            reference(Kind::Namespace, ns),
            e.to_string(),
        ),
    }
}

/// A Pod as an event: a host-network pod is no object of policy (a removal).
pub fn pod_event(pod: &Pod) -> ObjectEvent {
    match k8s::pod_from_k8s(pod) {
        Ok(Some(pod)) => ObjectEvent::Upsert(Object::Pod(pod)),
        Ok(None) => match reference(Kind::Pod, pod) {
            Some(r) => ObjectEvent::Remove(r),
            None => refused(Kind::Pod, None, "Pod without metadata.name".into()),
        },
        Err(e) => refused(Kind::Pod, reference(Kind::Pod, pod), e.to_string()),
    }
}

/// A NetworkPolicy as an event.
pub fn policy_event(policy: &NetworkPolicy) -> ObjectEvent {
    match k8s::policy_from_k8s(policy) {
        Ok(p) => ObjectEvent::Upsert(Object::Policy(p)),
        Err(e) => refused(
            Kind::NetworkPolicy,
            reference(Kind::NetworkPolicy, policy),
            e.to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pod(host_network: bool, ip: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "a", "namespace": "x", "labels": {"pod": "a"}},
            "spec": {"nodeName": "n1", "hostNetwork": host_network, "containers": []},
            "status": {"podIPs": [{"ip": ip}]}
        }))
        .unwrap()
    }

    #[test]
    fn watcher_events_become_object_events() {
        let a = ObjectRef::namespaced(Kind::Pod, "x", "a");
        assert_eq!(
            translate(Kind::Pod, pod_event, Event::Init),
            Some(ObjectEvent::ListStart(Kind::Pod))
        );
        match translate(
            Kind::Pod,
            pod_event,
            Event::InitApply(pod(false, "10.0.0.2")),
        ) {
            Some(ObjectEvent::Upsert(Object::Pod(p))) => {
                assert_eq!(p.node, "n1");
                assert_eq!(
                    p.addresses,
                    vec!["10.0.0.2".parse::<std::net::IpAddr>().unwrap()]
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            translate(Kind::Pod, pod_event, Event::Apply(pod(true, "192.0.2.1"))),
            Some(ObjectEvent::Remove(a.clone()))
        );
        match translate(Kind::Pod, pod_event, Event::Apply(pod(false, "not-an-ip"))) {
            Some(ObjectEvent::Malformed { object, error }) => {
                assert_eq!(object, a);
                assert!(
                    error.contains("Pod x/a") && error.contains("status.podIPs[0].ip"),
                    "{error}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            translate(Kind::Pod, pod_event, Event::Delete(pod(false, "10.0.0.2"))),
            Some(ObjectEvent::Remove(a))
        );
        assert_eq!(
            translate(Kind::Pod, pod_event, Event::InitDone),
            Some(ObjectEvent::ListDone(Kind::Pod))
        );
        let ns: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": "x"}})).unwrap();
        match translate(Kind::Namespace, namespace_event, Event::Apply(ns)) {
            Some(ObjectEvent::Upsert(Object::Namespace(ns))) => {
                assert_eq!(ns.labels["kubernetes.io/metadata.name"], "x");
            }
            other => panic!("{other:?}"),
        }
    }
}
