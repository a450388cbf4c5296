//! Configuration from the Kubernetes API: this node's pods (enrolled by the
//! `sluice.dev/mesh` label), the mesh's pods on other nodes, Services and EndpointSlices,
//! and Sluice's policy and route resources, merged into the node's file.
//!
//! The file keeps this node's own settings (redirect mode, identity, proxy, addresses) and
//! a `kubernetes:` section; the lists it would otherwise hold come from the API server. A
//! pod enrolled on this node is published once its cgroup and netns are found on the node
//! (`sys::kubepods`, or the netns the CNI plugin handed over); until then `/config_dump`
//! lists it as waiting, with the reason, and the source looks again every second.
mod assemble;
pub mod crd;
mod discover;
mod pods;
mod reflectors;
mod services;
mod status;

pub use status::SourceStatus;

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use kube::{
    Client,
    config::{KubeConfigOptions, Kubeconfig},
    runtime::watcher,
};
use serde_json::{Map, Value};
use tokio::sync::{Notify, watch};
use tracing::{error, info, warn};

use self::{
    assemble::{DISCOVERED_KEYS, Discovered},
    discover::{Placements, Stores},
    reflectors::Watching,
};
use super::{Config, ConfigError, ConfigSource, WorkloadKey, file::OnRejection};

/// How long changes are gathered before the configuration is rebuilt: a rollout changes
/// pods, slices and services within moments of each other.
const SETTLE: Duration = Duration::from_millis(100);
/// How often pods waiting for their cgroup or netns, and the file, are looked at again.
const RECHECK: Duration = Duration::from_secs(1);

/// What the CNI plugin said of a pod it set up: its netns (a stable path, unlike
/// `/proc/<pid>/ns/net`) and addresses (before the pod's status has them).
#[derive(Clone, Debug, PartialEq)]
pub struct CniPod {
    /// Tells the pod from a later one of the same name, when the runtime passes it.
    pub uid: Option<String>,
    pub netns: PathBuf,
    pub ips: Vec<IpAddr>,
}

/// Between the agent's CNI endpoint and this source: the pods the plugin handed over, and
/// the label rule's verdict on each pod of this node as the source last saw it.
#[derive(Clone, Default)]
pub struct CniPods {
    state: Arc<Mutex<CniState>>,
    changed: Arc<Notify>,
}

#[derive(Default)]
struct CniState {
    handed: HashMap<WorkloadKey, CniPod>,
    enrolled: HashMap<WorkloadKey, bool>,
}

impl CniPods {
    pub fn insert(&self, key: WorkloadKey, pod: CniPod) {
        self.lock().handed.insert(key, pod);
        self.changed.notify_one();
    }

    pub fn remove(&self, key: &WorkloadKey) {
        if self.lock().handed.remove(key).is_some() {
            self.changed.notify_one();
        }
    }

    /// Whether the pod is to be enrolled; `None` until the API server has shown it.
    pub fn verdict(&self, key: &WorkloadKey) -> Option<bool> {
        self.lock().enrolled.get(key).copied()
    }

    fn handed(&self, key: &WorkloadKey, uid: &str) -> Option<CniPod> {
        let state = self.lock();
        let pod = state.handed.get(key)?;
        pod.uid
            .as_deref()
            .is_none_or(|u| u == uid)
            .then(|| pod.clone())
    }

    fn set_verdicts(&self, enrolled: HashMap<WorkloadKey, bool>) {
        self.lock().enrolled = enrolled;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, CniState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

pub struct KubeSource {
    path: PathBuf,
    node: Option<String>,
    on_rejection: OnRejection,
    status: SourceStatus,
    cni: CniPods,
}

impl KubeSource {
    /// `node` names this node when the file does not (a DaemonSet passes `spec.nodeName`).
    pub fn new(path: impl Into<PathBuf>, node: Option<String>) -> Self {
        Self {
            path: path.into(),
            node,
            on_rejection: Box::new(|_| {}),
            status: SourceStatus::default(),
            cni: CniPods::default(),
        }
    }

    pub fn on_rejection(mut self, hook: impl Fn(&ConfigError) + Send + Sync + 'static) -> Self {
        self.on_rejection = Box::new(hook);
        self
    }

    pub fn status(&self) -> SourceStatus {
        self.status.clone()
    }

    pub fn cni_pods(&self) -> CniPods {
        self.cni.clone()
    }

    /// The node's file as a settings map: valid YAML, none of the discovered lists, and
    /// the node's name.
    fn read_base(&self) -> Result<(String, Map<String, Value>), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            path: self.path.clone(),
            message,
        };
        let text = std::fs::read_to_string(&self.path).map_err(|error| ConfigError::Read {
            path: self.path.clone(),
            error,
        })?;
        let value: Value = serde_yaml_ng::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let Value::Object(mut base) = value else {
            return Err(invalid("the file is not a mapping".into()));
        };
        if let Some(key) = DISCOVERED_KEYS.iter().find(|k| base.contains_key(**k)) {
            return Err(invalid(format!(
                "{key}: with a kubernetes section these come from the API server; remove it"
            )));
        }
        match (base.get("node").and_then(Value::as_str), &self.node) {
            (Some(file), Some(flag)) if file != flag => {
                return Err(invalid(format!(
                    "node: the file says {file:?} but --node (NODE_NAME) says {flag:?}"
                )));
            }
            (None, Some(flag)) => {
                base.insert("node".into(), Value::String(flag.clone()));
            }
            (None, None) => {
                return Err(invalid(
                    "node: not set; set it in the file or pass --node (NODE_NAME)".into(),
                ));
            }
            _ => {}
        }
        Ok((text, base))
    }
}

impl ConfigSource for KubeSource {
    async fn subscribe(self) -> Result<watch::Receiver<Arc<Config>>, ConfigError> {
        let (text, base) = self.read_base()?;
        let settings = assemble::assemble(&base, Discovered::default(), &mut Vec::new()).map_err(
            |message| ConfigError::Invalid {
                path: self.path.clone(),
                message,
            },
        )?;
        let kube = (settings.kubernetes.clone())
            .ok_or_else(|| ConfigError::Kubernetes("the file has no kubernetes section".into()))?;
        let client = client(kube.kubeconfig.as_ref()).await?;
        let changed = Arc::new(Notify::new());
        let stores = watch_all(&client, &settings.node, &changed, &self.status).await?;
        info!("waiting for the first list of every watched resource");
        stores.ready().await?;
        let cgroup_root = match &settings.cgroup_root {
            Some(root) => root.clone(),
            None => crate::sys::mounts::cgroup2_mount()
                .map_err(|e| ConfigError::Kubernetes(format!("finding the cgroup2 mount: {e}")))?,
        };
        let mut running = Running {
            node: settings.node.clone(),
            source: self,
            stores,
            placements: Placements::new(cgroup_root),
            text,
            base,
        };
        let initial = running.build().map_err(ConfigError::Kubernetes)?;
        let (tx, rx) = watch::channel(Arc::new(initial));
        tokio::spawn(running.run(tx, changed));
        Ok(rx)
    }
}

/// The source once its watches are up.
struct Running {
    source: KubeSource,
    node: String,
    stores: Stores,
    placements: Placements,
    /// The file's text and settings last read.
    text: String,
    base: Map<String, Value>,
}

impl Running {
    /// Rebuilds after every change, and every [`RECHECK`] for pods waiting for their
    /// cgroup or netns and for changes to the file.
    async fn run(mut self, tx: watch::Sender<Arc<Config>>, changed: Arc<Notify>) {
        let cni_changed = self.source.cni.changed.clone();
        let mut recheck = tokio::time::interval(RECHECK);
        loop {
            tokio::select! {
                _ = changed.notified() => {}
                _ = cni_changed.notified() => {}
                _ = recheck.tick() => {}
            }
            if tx.is_closed() {
                return;
            }
            tokio::time::sleep(SETTLE).await;
            self.reread_file();
            match self.build() {
                Ok(config) if config != **tx.borrow() => {
                    tx.send_replace(Arc::new(config));
                }
                Ok(_) => {}
                Err(message) => {
                    error!(%message, "the discovered configuration is invalid; keeping the current one");
                    (self.source.on_rejection)(&ConfigError::Kubernetes(message));
                }
            }
        }
    }

    fn reread_file(&mut self) {
        match self.source.read_base() {
            Ok((text, base)) if text != self.text => {
                info!(path = %self.source.path.display(), "config file changed; applying");
                (self.text, self.base) = (text, base);
            }
            Ok(_) => {}
            Err(err) => {
                if !self.text.is_empty() {
                    error!("{err}; keeping the file's last good settings");
                    (self.source.on_rejection)(&err);
                }
                // Reported once; a good version resets this.
                self.text.clear();
            }
        }
    }

    fn build(&mut self) -> Result<Config, String> {
        let (discovered, mut rejected, waiting) =
            (self.stores).discover(&self.node, &mut self.placements, &self.source.cni);
        let config = assemble::assemble(&self.base, discovered, &mut rejected);
        for r in self.source.status.report(rejected, waiting) {
            warn!(resource = r.resource, name = %r.name, reason = %r.reason, "left out of the configuration");
            let message = format!("{} {}: {}", r.resource, r.name, r.reason);
            (self.source.on_rejection)(&ConfigError::Kubernetes(message));
        }
        config
    }
}

/// A client from the given kubeconfig, else the in-cluster service account, else the
/// usual kubeconfig locations.
async fn client(kubeconfig: Option<&PathBuf>) -> Result<Client, ConfigError> {
    let err =
        |what: &str, e: &dyn std::fmt::Display| ConfigError::Kubernetes(format!("{what}: {e}"));
    let config = match kubeconfig {
        Some(path) => {
            let file = Kubeconfig::read_from(path)
                .map_err(|e| err(&format!("reading {}", path.display()), &e))?;
            kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| err(&format!("using {}", path.display()), &e))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| err("finding the API server (in cluster or a kubeconfig)", &e))?,
    };
    Client::try_from(config).map_err(|e| err("making the API client", &e))
}

/// Starts every reflector. Sluice's CRDs must be installed; the Gateway API's `HTTPRoute`
/// is read in place of Sluice's own where its CRD is.
async fn watch_all(
    client: &Client,
    node: &str,
    changed: &Arc<Notify>,
    status: &SourceStatus,
) -> Result<Stores, ConfigError> {
    let installed = |group_version: String| {
        let client = client.clone();
        async move {
            client
                .list_api_group_resources(&group_version)
                .await
                .is_ok()
        }
    };
    let sluice = format!("{}/{}", crd::GROUP, crd::VERSION);
    if !installed(sluice.clone()).await {
        return Err(ConfigError::Kubernetes(format!(
            "{sluice} is not served: install Sluice's CRDs (`mesh-agent crds | kubectl apply -f -`)"
        )));
    }
    let routes = if installed("gateway.networking.k8s.io/v1".into()).await {
        info!("reading HTTPRoutes from the Gateway API (gateway.networking.k8s.io/v1)");
        crd::gateway_http_routes()
    } else {
        info!("the Gateway API is not installed; reading HTTPRoutes from sluice.dev/v1alpha1");
        crd::sluice_http_routes()
    };
    let watching = Watching::new(client, changed, status);
    let all = watcher::Config::default();
    Ok(Stores {
        pods_here: watching.typed(
            "pods (this node)",
            all.clone().fields(&format!("spec.nodeName={node}")),
        ),
        pods_elsewhere: watching.typed(
            "pods (other nodes)",
            all.clone().fields(&format!("spec.nodeName!={node}")),
        ),
        namespaces: watching.typed("namespaces", all.clone()),
        services: watching.typed("services", all.clone()),
        endpoint_slices: watching.typed("endpointslices", all.clone()),
        authorization_policies: watching
            .dynamic("authorizationpolicies", crd::authorization_policies()),
        peer_authentications: watching.dynamic("peerauthentications", crd::peer_authentications()),
        http_routes: watching.dynamic("httproutes", routes),
    })
}
