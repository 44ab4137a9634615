//! The cluster source of `meshctl audit`: every Node from the Kubernetes API (the published
//! record as meshd's annotations, InternalIPs and pod CIDRs) and every node's meshd status from
//! its `/status` endpoint (`--health-listen`, port 9108 in deploy/), read at its InternalIP.

use std::time::Duration;

use super::annotations::{node_state, NodeState};
use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use crate::audit::NodeView;
use crate::control::StatusReport;

/// How long one node's status may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

async fn fetch_status(url: &str) -> Result<StatusReport, String> {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let resp = tokio::time::timeout(STATUS_TIMEOUT, client.get(uri))
        .await
        .map_err(|_| format!("{url}: no answer within {STATUS_TIMEOUT:?}"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let code = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{url}: {e}"))?
        .to_bytes();
    if !code.is_success() {
        return Err(format!("{url}: HTTP {code}"));
    }
    serde_json::from_slice(&body).map_err(|e| format!("{url}: not a status report: {e}"))
}

/// The views of every Node of the cluster that `kubeconfig` (or the usual defaults) reaches.
pub async fn cluster_views(
    kubeconfig: Option<&std::path::Path>,
    status_port: u16,
) -> anyhow::Result<Vec<NodeView>> {
    let client = super::client::client(kubeconfig)
        .await
        .context("connecting to the Kubernetes API")?;
    let nodes = Api::<Node>::all(client)
        .list(&ListParams::default())
        .await
        .context("listing Nodes")?
        .items;
    let mut views = Vec::new();
    for node in &nodes {
        let name = node.metadata.name.clone().unwrap_or_default();
        let record = match node_state(node) {
            NodeState::Peer(r) => r,
            // Not in the mesh (no meshd annotations, or opted out): nothing to audit.
            NodeState::Absent => continue,
            NodeState::Malformed(e) => {
                views.push(NodeView {
                    name,
                    published_key: None,
                    endpoints: Vec::new(),
                    pod_cidrs: Vec::new(),
                    status: None,
                    status_error: Some(format!("its meshd annotations are malformed: {e}")),
                });
                continue;
            }
        };
        let (status, status_error) = match record.endpoints.first() {
            Some(ip) => {
                let url = format!(
                    "http://{}/status",
                    std::net::SocketAddr::new(*ip, status_port)
                );
                match fetch_status(&url).await {
                    Ok(s) => (Some(s), None),
                    Err(e) => (None, Some(e)),
                }
            }
            None => (None, Some("no InternalIP".into())),
        };
        views.push(NodeView {
            name,
            published_key: Some(record.public_key.to_string()),
            endpoints: record.endpoints.clone(),
            pod_cidrs: record.pod_cidrs.iter().map(ToString::to_string).collect(),
            status,
            status_error,
        });
    }
    Ok(views)
}
