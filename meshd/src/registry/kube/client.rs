//! Kubernetes client set-up: a kubeconfig file when one is given, else the usual inference
//! (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster service account a DaemonSet gets), and
//! the API server's address as the configuration names it.
//!
//! Every request is bounded: [`RESPONSE_TIMEOUT`] for the answer's head (an API server that
//! accepts and never answers fails the request instead of hanging its caller; a watch's head
//! comes at once, its events then stream), and [`READ_TIMEOUT`] without a byte on a
//! connection (longer than a watch's own idle limit, so quiet watches are not cut).

use std::net::IpAddr;
use std::path::Path;

use std::time::Duration;

use kube::Client;

/// How long a request may wait for the head of its answer.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// How long a connection may go without a byte: above the watcher's idle limit (290 s and
/// its margin), so it only ever cuts a dead connection.
pub const READ_TIMEOUT: Duration = Duration::from_secs(330);

/// How long connecting may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors building a Kubernetes client.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    /// Reading or parsing the kubeconfig file failed.
    #[error("reading kubeconfig {path}")]
    ReadKubeconfig {
        /// The kubeconfig file.
        path: std::path::PathBuf,
        /// What went wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Inferring the configuration (`KUBECONFIG`, `~/.kube/config`, in-cluster) failed.
    #[error("no usable Kubernetes configuration (tried KUBECONFIG, ~/.kube/config and the in-cluster service account)")]
    Infer(#[source] kube::config::InferConfigError),
    /// The configuration was read but a client could not be built from it.
    #[error("building the Kubernetes client")]
    Build(#[source] kube::Error),
}

/// Builds a Kubernetes client the way kube-rs users expect.
///
/// With `kubeconfig`, that file's current context is used (out of cluster). Without it the
/// configuration is inferred: `$KUBECONFIG`, then `~/.kube/config`, then the in-cluster service
/// account (`KUBERNETES_SERVICE_HOST` and the mounted token), which is what a DaemonSet gets.
pub async fn client(kubeconfig: Option<&Path>) -> Result<Client, KubeClientError> {
    let builder = kube::client::ClientBuilder::try_from(config(kubeconfig).await?)
        .map_err(KubeClientError::Build)?;
    Ok(builder
        .with_layer(&tower::timeout::TimeoutLayer::new(RESPONSE_TIMEOUT))
        .build())
}

/// The API server's addresses as this node reaches them: the server URL's host, resolved.
/// Host encryption never sends traffic to them through the tunnel.
pub async fn api_server_addresses(
    kubeconfig: Option<&Path>,
) -> Result<Vec<IpAddr>, KubeClientError> {
    let config = config(kubeconfig).await?;
    let url = &config.cluster_url;
    let Some(host) = url.host() else {
        return Ok(Vec::new());
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let port = url.port_u16().unwrap_or(443);
    Ok(tokio::net::lookup_host((host, port))
        .await
        .map(|addrs| addrs.map(|a| a.ip()).collect())
        .unwrap_or_default())
}

async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, KubeClientError> {
    let config = match kubeconfig {
        Some(path) => {
            let read_err = |source| KubeClientError::ReadKubeconfig {
                path: path.to_path_buf(),
                source,
            };
            let file = kube::config::Kubeconfig::read_from(path).map_err(read_err)?;
            kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(read_err)?
        }
        None => kube::Config::infer()
            .await
            .map_err(KubeClientError::Infer)?,
    };
    Ok(bounded(config))
}

/// The configuration with the time bounds of this module.
fn bounded(mut config: kube::Config) -> kube::Config {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    // Count from each request, not from when its pooled connection went idle.
    config.reset_reader_on_write = true;
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An API server that accepts TCP and never answers fails a request in bounded time
    /// instead of hanging its caller (publish in the daemon's loop).
    #[tokio::test]
    async fn a_silent_api_server_fails_requests_in_bounded_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let dir = tempfile::tempdir().expect("tempdir");
        let kubeconfig = dir.path().join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
                 clusters: [{{name: k, cluster: {{server: \"http://{addr}\"}}}}]\n\
                 users: [{{name: u, user: {{token: t}}}}]\n\
                 contexts: [{{name: c, context: {{cluster: k, user: u}}}}]\n"
            ),
        )
        .expect("write kubeconfig");
        let client = client(Some(&kubeconfig)).await.expect("client");
        let nodes: kube::Api<k8s_openapi::api::core::v1::Node> = kube::Api::all(client);
        let started = std::time::Instant::now();
        let patch =
            kube::api::Patch::Merge(serde_json::json!({"metadata": {"annotations": {"a": "b"}}}));
        let result = tokio::time::timeout(
            RESPONSE_TIMEOUT + Duration::from_secs(10),
            nodes.patch("n1", &kube::api::PatchParams::default(), &patch),
        )
        .await
        .expect("the request ends on its own");
        assert!(result.is_err(), "a silent server cannot succeed");
        assert!(started.elapsed() >= RESPONSE_TIMEOUT - Duration::from_secs(1));
        held.abort();
    }
}
