//! The API servers' real addresses: a watcher of the `default/kubernetes` EndpointSlice
//! ([`watch_api_server_endpoints`]) and the pure extraction of its addresses
//! ([`endpoint_slice_addresses`]). Host encryption never sends traffic to those addresses
//! through the tunnel, so a node can always learn a changed key.
//!
//! Needs `list` and `watch` on `endpointslices` (`discovery.k8s.io`) in `default`.
//!
//! `discovery.k8s.io/v1` is served from Kubernetes 1.21; older API servers (1.17 to 1.20) serve
//! only `v1beta1`, whose fields meshd reads (`addressType`, `endpoints[].addresses`) are the
//! same. The watcher asks the server's discovery which one it serves and reads that one
//! ([`served_version`], [`as_v1`]); RBAC names the group, not the version, so the same rules
//! cover both.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use tokio::sync::watch;

use super::WatchBackoff;

/// Namespace of the `kubernetes` Service, whose endpoints are the API servers.
pub const API_SERVER_SERVICE_NAMESPACE: &str = "default";
/// Name of that Service and of the EndpointSlice kube-apiserver's endpoint reconciler keeps
/// for it.
pub const API_SERVER_SERVICE_NAME: &str = "kubernetes";
/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// EndpointSlice versions meshd can read, newest first.
pub const ENDPOINT_SLICE_VERSIONS: [&str; 2] = ["v1", "v1beta1"];

/// The newest of [`ENDPOINT_SLICE_VERSIONS`] whose discovery document lists `endpointslices`;
/// `v1` when none does (or discovery fails: the watch then reports its own errors).
pub async fn served_version(client: &Client) -> &'static str {
    for version in ENDPOINT_SLICE_VERSIONS {
        if let Ok(list) = client
            .list_api_group_resources(&format!("discovery.k8s.io/{version}"))
            .await
        {
            if list.resources.iter().any(|r| r.name == "endpointslices") {
                return version;
            }
        }
    }
    ENDPOINT_SLICE_VERSIONS[0]
}

/// An EndpointSlice of any served version, read as `discovery.k8s.io/v1` (the fields meshd
/// reads are the same in `v1beta1`; fields only `v1beta1` has are dropped).
pub fn as_v1(object: DynamicObject) -> Result<EndpointSlice, serde_json::Error> {
    let mut value = serde_json::to_value(object)?;
    value["apiVersion"] = serde_json::json!("discovery.k8s.io/v1");
    value["kind"] = serde_json::json!("EndpointSlice");
    serde_json::from_value(value)
}

/// Every address of every endpoint in `slices` (ready or not: an API server that is starting
/// or shutting down must not be cut off either). FQDN slices carry no address.
pub fn endpoint_slice_addresses<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
) -> BTreeSet<IpAddr> {
    slices
        .into_iter()
        .filter(|s| s.address_type == "IPv4" || s.address_type == "IPv6")
        .flat_map(|s| s.endpoints.iter().flatten())
        .flat_map(|e| e.addresses.iter())
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .collect()
}

/// Follows the API servers' real addresses: the endpoints of the `default/kubernetes` Service
/// (its EndpointSlice, `discovery.k8s.io/v1`, named `kubernetes` and labelled
/// `kubernetes.io/service-name=kubernetes`, as kube-apiserver maintains it). In a pod the
/// client reaches the API server through that Service's ClusterIP (`KUBERNETES_SERVICE_HOST`),
/// which no node owns; these are the node addresses the traffic really goes to.
///
/// The channel holds `None` until the first list completed, then the addresses; it changes
/// only when they do. A list that finds no address keeps the last ones (excluding an address
/// that is gone is harmless; forgetting one that is not is what must never happen). Watch
/// errors (e.g. `403` without the RBAC for it) are logged and retried with backoff. The task
/// stops when every receiver is dropped. Needs `list` and `watch` on `endpointslices` in
/// `default` (the field selector lets RBAC limit them to `resourceNames: [kubernetes]`).
pub fn watch_api_server_endpoints(client: Client) -> watch::Receiver<Option<BTreeSet<IpAddr>>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let version = served_version(&client).await;
        if version != ENDPOINT_SLICE_VERSIONS[0] {
            tracing::info!(
                version,
                "the API server does not serve discovery.k8s.io/v1 EndpointSlices; reading {version}"
            );
        }
        let resource = ApiResource::from_gvk_with_plural(
            &GroupVersionKind::gvk("discovery.k8s.io", version, "EndpointSlice"),
            "endpointslices",
        );
        let api: Api<DynamicObject> =
            Api::namespaced_with(client, API_SERVER_SERVICE_NAMESPACE, &resource);
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={API_SERVER_SERVICE_NAME}"))
            .labels(&format!("{SERVICE_NAME_LABEL}={API_SERVER_SERVICE_NAME}"));
        let stream = watcher::watcher(api, config)
            .backoff(WatchBackoff::new(
                Duration::from_millis(800),
                Duration::from_secs(30),
            ))
            .filter_map(|event| async move {
                match event {
                    Ok(event) => convert(event).map(Ok),
                    Err(e) => Some(Err(e)),
                }
            });
        let mut stream = std::pin::pin!(stream);
        let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
        let mut listing: Option<BTreeMap<String, EndpointSlice>> = None;
        loop {
            let event = tokio::select! {
                () = tx.closed() => break,
                event = stream.next() => event,
            };
            let settled = match event {
                Some(Ok(Event::Init)) => {
                    listing = Some(BTreeMap::new());
                    false
                }
                Some(Ok(Event::InitApply(slice))) => {
                    listing
                        .get_or_insert_with(BTreeMap::new)
                        .insert(slice.metadata.name.clone().unwrap_or_default(), slice);
                    false
                }
                Some(Ok(Event::InitDone)) => {
                    slices = listing.take().unwrap_or_default();
                    true
                }
                Some(Ok(Event::Apply(slice))) => {
                    slices.insert(slice.metadata.name.clone().unwrap_or_default(), slice);
                    true
                }
                Some(Ok(Event::Delete(slice))) => {
                    slices.remove(&slice.metadata.name.clone().unwrap_or_default());
                    true
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "watching the API server's EndpointSlice failed; retrying with backoff");
                    false
                }
                None => break,
            };
            if !settled {
                continue;
            }
            let addresses = endpoint_slice_addresses(slices.values());
            tx.send_if_modified(|current| match current {
                Some(known) if *known == addresses || addresses.is_empty() => false,
                _ => {
                    tracing::info!(?addresses, "the API server's endpoints");
                    *current = Some(addresses);
                    true
                }
            });
        }
    });
    rx
}

/// A watch event of a slice of any version as one of a `v1` slice; a slice that does not
/// convert is logged and skipped.
fn convert(event: Event<DynamicObject>) -> Option<Event<EndpointSlice>> {
    let slice = |object: DynamicObject| match as_v1(object) {
        Ok(slice) => Some(slice),
        Err(e) => {
            tracing::warn!(error = %e, "an EndpointSlice that does not parse; skipped");
            None
        }
    };
    Some(match event {
        Event::Init => Event::Init,
        Event::InitDone => Event::InitDone,
        Event::InitApply(o) => Event::InitApply(slice(o)?),
        Event::Apply(o) => Event::Apply(slice(o)?),
        Event::Delete(o) => Event::Delete(slice(o)?),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn api_server_addresses_are_every_endpoint_of_ip_slices() {
        use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
        let slice = |ty: &str, endpoints: &[(&[&str], Option<bool>)]| EndpointSlice {
            address_type: ty.into(),
            endpoints: Some(
                endpoints
                    .iter()
                    .map(|(addresses, ready)| Endpoint {
                        addresses: addresses.iter().map(|a| a.to_string()).collect(),
                        conditions: Some(EndpointConditions {
                            ready: *ready,
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        };
        let got = endpoint_slice_addresses(&[
            slice(
                "IPv4",
                &[
                    (&["192.0.2.10"], Some(true)),
                    (&["192.0.2.11"], Some(false)),
                ],
            ),
            slice("IPv6", &[(&["2001:db8::10"], None)]),
            slice("FQDN", &[(&["api.example.com"], Some(true))]),
        ]);
        let want: BTreeSet<IpAddr> = ["192.0.2.10", "192.0.2.11", "2001:db8::10"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        assert!(endpoint_slice_addresses(&[]).is_empty());
    }

    #[test]
    fn a_v1beta1_slice_reads_as_v1() {
        let object: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "kubernetes", "namespace": "default"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": ["198.18.0.11"], "conditions": {"ready": true},
                           "topology": {"kubernetes.io/hostname": "n1"}}],
            "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}],
        }))
        .unwrap();
        let slice = as_v1(object).unwrap();
        assert_eq!(slice.metadata.name.as_deref(), Some("kubernetes"));
        assert_eq!(
            endpoint_slice_addresses([&slice]),
            BTreeSet::from(["198.18.0.11".parse::<IpAddr>().unwrap()])
        );
        // Not a slice at all: an error, not a panic.
        let junk: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1", "kind": "EndpointSlice",
            "metadata": {"name": "x"}, "addressType": 7,
        }))
        .unwrap();
        assert!(as_v1(junk).is_err());
    }
}
