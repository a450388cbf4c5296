//! The Kubernetes test bed: a node whose agent reads the fake API server
//! ([`crate::kube_api::ApiServer`], listening inside the node's netns), and pods laid out as
//! the kubelet lays them out (a cgroup named after the pod's UID under `kubepods`, a process
//! in it) with Pod objects in the shape `kubectl get -o yaml` prints.
use crate::agent::AgentConfig;
use crate::kube_api::ApiServer;
use crate::mode::Mode;
use crate::node::Node;
use crate::pod::Pod;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The label that enrolls a pod or a namespace.
pub const MESH_LABEL: &str = "sluice.dev/mesh";

/// A node, its API server, and the processes that keep its pods' cgroups populated.
pub struct KubeBed {
    pub node: Node,
    pub api: ApiServer,
    pub kubeconfig: PathBuf,
    keepers: Mutex<Vec<Child>>,
}

/// A pod on the bed's node with the UID its object carries.
#[derive(Clone)]
pub struct KubePod {
    pub pod: Pod,
    pub uid: String,
    pub namespace: String,
}

impl KubeBed {
    /// A node, the API server in its netns with Sluice's CRDs installed, and a kubeconfig
    /// for it in the node's work directory.
    pub fn new() -> Result<KubeBed> {
        let node = Node::new()?;
        let api = ApiServer::start_in(&node.netns_path())?;
        api.install("sluice.dev", "v1alpha1")?;
        let kubeconfig = node.workdir().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig)?;
        Ok(KubeBed {
            node,
            api,
            kubeconfig,
            keepers: Mutex::new(Vec::new()),
        })
    }

    /// The agent's config: this node's settings only, `mode` forced, workloads from the API.
    pub fn config(&self, mode: Mode) -> AgentConfig {
        AgentConfig::new(&self.node)
            .mode(mode)
            .kubernetes(&self.kubeconfig, None)
    }

    /// A namespace object with these labels (created or replaced).
    pub fn namespace(&self, name: &str, labels: &[(&str, &str)]) -> Result<()> {
        let object = json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name, "labels": labels_json(labels) },
            "spec": { "finalizers": ["kubernetes"] },
            "status": { "phase": "Active" },
        });
        self.api.apply(&object.to_string()).map(drop)
    }

    /// A pod on this node: netns and a kubelet-shaped cgroup (systemd or cgroupfs driver),
    /// with a process in it so the agent can find the netns. Its object is not applied yet.
    pub fn pod(&self, name: &str, namespace: &str, systemd: bool) -> Result<KubePod> {
        let pod = self.pod_without_process(name, namespace, systemd)?;
        self.keep_populated(&pod.pod)?;
        Ok(pod)
    }

    /// [`KubeBed::pod`] before its sandbox has a process: the cgroup is there, empty.
    pub fn pod_without_process(
        &self,
        name: &str,
        namespace: &str,
        systemd: bool,
    ) -> Result<KubePod> {
        let uid = next_uid();
        let pod = self.node.add_kubelet_pod(name, &uid, systemd)?;
        Ok(KubePod {
            pod,
            uid,
            namespace: namespace.into(),
        })
    }

    /// A long-running process in the pod's cgroup and netns, as its pause container is.
    pub fn keep_populated(&self, pod: &Pod) -> Result<()> {
        let child = pod
            .command("sleep")?
            .arg("100000")
            .stdin(Stdio::null())
            .spawn()
            .context("starting a process in the pod")?;
        self.keepers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(child);
        Ok(())
    }

    /// Creates or replaces `pod`'s object on this node with these labels.
    pub fn apply_pod(&self, pod: &KubePod, labels: &[(&str, &str)]) -> Result<()> {
        let object = pod.object(self.node.name(), labels)?;
        self.api.apply(&object.to_string()).map(drop)
    }

    /// [`KubeBed::apply_pod`] as the object is while its sandbox is being set up: scheduled
    /// here, `Pending`, no address yet (the CNI plugin is about to give it one).
    pub fn apply_pending_pod(&self, pod: &KubePod, labels: &[(&str, &str)]) -> Result<()> {
        let mut object = pod.object(self.node.name(), labels)?;
        object["status"] = json!({ "phase": "Pending", "qosClass": "BestEffort" });
        self.api.apply(&object.to_string()).map(drop)
    }

    pub fn delete_pod(&self, pod: &KubePod) -> Result<()> {
        self.api
            .delete("Pod", &pod.namespace, pod.pod.name())
            .map(drop)
    }
}

impl Drop for KubeBed {
    fn drop(&mut self) {
        for child in self.keepers.get_mut().unwrap_or_else(|p| p.into_inner()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl KubePod {
    /// The pod's object: the `pod-web.yaml` fixture (a real `kubectl get -o yaml`) with
    /// this pod's name, namespace, UID, labels, node and addresses.
    pub fn object(&self, node: &str, labels: &[(&str, &str)]) -> Result<Value> {
        // Compiled in: the kernel VMs run this suite without the source tree.
        let text = include_str!("../fixtures/kube/pod-web.yaml");
        let mut object: Value = serde_yaml_ng::from_str(text).context("pod fixture")?;
        let name = self.pod.name();
        object["metadata"]["name"] = json!(name);
        object["metadata"]["generateName"] = Value::Null;
        object["metadata"]["ownerReferences"] = Value::Null;
        object["metadata"]["namespace"] = json!(self.namespace);
        object["metadata"]["uid"] = json!(self.uid);
        object["metadata"]["labels"] = labels_json(labels);
        object["spec"]["nodeName"] = json!(node);
        object["spec"]["serviceAccountName"] = json!("default");
        object["spec"]["serviceAccount"] = json!("default");
        let (ip, ip6) = (self.pod.ip().to_string(), self.pod.ip6().to_string());
        object["status"]["podIP"] = json!(ip);
        object["status"]["podIPs"] = json!([{ "ip": ip }, { "ip": ip6 }]);
        Ok(object)
    }
}

fn labels_json(labels: &[(&str, &str)]) -> Value {
    Value::Object(
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect(),
    )
}

/// A UID unique in this process and among parallel test processes.
fn next_uid() -> String {
    static N: AtomicU64 = AtomicU64::new(1);
    format!(
        "{:08x}-5a1c-4e00-8000-{:012x}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
