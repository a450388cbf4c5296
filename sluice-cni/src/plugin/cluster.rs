//! The label rule from the API server, for when the agent is away: the plugin reads the pod
//! and its namespace with the kubeconfig its config names, and applies
//! [`enrollment::decide`](crate::enrollment::decide) as the agent would.
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Api, Client, Config};

use crate::enrollment::{self, Decision};
use crate::protocol::PodRef;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("cannot use the kubeconfig {}", path.display())]
    Kubeconfig {
        path: PathBuf,
        #[source]
        source: KubeconfigError,
    },
    #[error("cannot build an API client")]
    Client(#[source] kube::Error),
    #[error("cannot get {what}")]
    Get {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("the API server did not answer within {0:?}")]
    Timeout(Duration),
}

/// The decision for `pod`, all within `timeout`. A blocking call: the plugin runs one
/// operation and exits, so a runtime for this one call is all it needs.
pub fn decide(
    pod: &PodRef,
    kubeconfig: &Path,
    timeout: Duration,
) -> Result<Decision, ClusterError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ClusterError::Runtime)?;
    rt.block_on(async {
        tokio::time::timeout(timeout, fetch_and_decide(pod, kubeconfig, timeout))
            .await
            .map_err(|_| ClusterError::Timeout(timeout))?
    })
}

async fn fetch_and_decide(
    pod: &PodRef,
    kubeconfig: &Path,
    timeout: Duration,
) -> Result<Decision, ClusterError> {
    // More than one rustls provider may be compiled into the workspace; choose ours before
    // kube builds its TLS config. Failing means one is already installed, which is fine.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let kubeconfig_err = |source| ClusterError::Kubeconfig {
        path: kubeconfig.to_path_buf(),
        source,
    };
    let file = Kubeconfig::read_from(kubeconfig).map_err(kubeconfig_err)?;
    let mut config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
        .await
        .map_err(kubeconfig_err)?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    let client = Client::try_from(config).map_err(ClusterError::Client)?;

    let found = Api::<Pod>::namespaced(client.clone(), &pod.namespace)
        .get(&pod.name)
        .await
        .map_err(|source| ClusterError::Get {
            what: format!("pod {pod}"),
            source,
        })?;
    if let (Some(want), Some(got)) = (&pod.uid, &found.metadata.uid)
        && want != got
    {
        tracing::warn!(
            "pod {pod}: the API server has uid {got}, the runtime said {want}; deciding by the pod it has"
        );
    }
    let namespace = Api::<Namespace>::all(client)
        .get(&pod.namespace)
        .await
        .map_err(|source| ClusterError::Get {
            what: format!("namespace {}", pod.namespace),
            source,
        })?;
    let host_network = (found.spec.as_ref())
        .and_then(|spec| spec.host_network)
        .unwrap_or(false);
    Ok(enrollment::decide(
        &found.metadata.labels.unwrap_or_default(),
        &namespace.metadata.labels.unwrap_or_default(),
        host_network,
    ))
}
