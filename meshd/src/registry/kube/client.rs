//! Kubernetes client set-up: a kubeconfig file when one is given, else the usual inference
//! (`$KUBECONFIG`, `~/.kube/config`, then the in-cluster service account a DaemonSet gets), and
//! the API server's address as the configuration names it.

use std::net::IpAddr;
use std::path::Path;

use kube::Client;

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
    Client::try_from(config(kubeconfig).await?).map_err(KubeClientError::Build)
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
    Ok(config)
}
