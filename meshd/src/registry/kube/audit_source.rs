//! The cluster source of `meshctl audit`: every Node from the Kubernetes API (the published
//! record as meshd's annotations, InternalIPs and pod CIDRs) and every node's meshd status from
//! its `/status` endpoint (`--health-listen`, which must be reachable: loopback by default),
//! read at its InternalIP within a time and size bound.

use std::time::Duration;

use super::annotations::{node_state_from, NodeState, PodCidrSource};
use anyhow::Context as _;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, ListParams};

use crate::audit::NodeView;
use crate::control::StatusReport;

/// How long one node's status may take, from connecting to the last byte of its answer.
const STATUS_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest status answer read (a status of thousands of peers is well under this).
const MAX_STATUS_BYTES: usize = 4 << 20;

/// One node's `/status`, read within [`STATUS_TIMEOUT`] and [`MAX_STATUS_BYTES`]: a node that
/// never answers, trickles or streams without end is an error of that node alone.
async fn fetch_status(url: &str) -> Result<StatusReport, String> {
    tokio::time::timeout(STATUS_TIMEOUT, read_status_bounded_in_size(url))
        .await
        .map_err(|_| format!("{url}: no complete answer within {STATUS_TIMEOUT:?}"))?
}

async fn read_status_bounded_in_size(url: &str) -> Result<StatusReport, String> {
    let client: Client<_, Empty<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let resp = client.get(uri).await.map_err(|e| format!("{url}: {e}"))?;
    let code = resp.status();
    if !code.is_success() {
        return Err(format!("{url}: HTTP {code}"));
    }
    let body = http_body_util::Limited::new(resp.into_body(), MAX_STATUS_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                format!("{url}: answer larger than {MAX_STATUS_BYTES} bytes, not read further")
            } else {
                format!("{url}: {e}")
            }
        })?
        .to_bytes();
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
        // The audit reports what each node publishes, its own pod CIDR claim included.
        let record = match node_state_from(node, PodCidrSource::SpecOrClaim) {
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
                    Err(e) => {
                        tracing::warn!(node = %name, error = %e, "audit: no usable status");
                        (None, Some(e))
                    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A fake node at a local port: `answer` gets each accepted connection.
    async fn fake_node<F, Fut>(answer: F) -> String
    where
        F: Fn(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(answer(stream));
            }
        });
        format!("http://{addr}/status")
    }

    async fn read_request(stream: &mut tokio::net::TcpStream) {
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
    }

    #[tokio::test]
    async fn a_node_that_never_answers_times_out() {
        let url = fake_node(|mut s| async move {
            read_request(&mut s).await;
            tokio::time::sleep(Duration::from_secs(3600)).await;
        })
        .await;
        let started = std::time::Instant::now();
        let err = fetch_status(&url).await.expect_err("no answer");
        assert!(err.contains("no complete answer within"), "{err}");
        assert!(err.contains(&url), "{err}");
        assert!(started.elapsed() < STATUS_TIMEOUT + Duration::from_secs(2));
    }

    #[tokio::test]
    async fn a_node_that_streams_for_ever_is_cut_at_the_limit() {
        let url = fake_node(|mut s| async move {
            read_request(&mut s).await;
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\r\n")
                .await;
            let chunk = vec![b' '; 64 * 1024];
            while s.write_all(&chunk).await.is_ok() {}
        })
        .await;
        let err = fetch_status(&url).await.expect_err("endless answer");
        assert!(err.contains("answer larger than"), "{err}");
    }

    #[tokio::test]
    async fn a_node_that_trickles_times_out() {
        let url = fake_node(|mut s| async move {
            read_request(&mut s).await;
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\n").await;
            while s.write_all(b" ").await.is_ok() {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
        .await;
        let err = fetch_status(&url).await.expect_err("trickled answer");
        assert!(err.contains("no complete answer within"), "{err}");
    }
}
