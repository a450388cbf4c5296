//! The agent's YAML config as tests write it: the node's settings, workloads, identity and
//! policies, in the agent's own field names (camelCase).
use super::ADMIN;
use crate::identity::Identity;
use crate::mode::Mode;
use crate::node::Node;
use crate::pod::Pod;
use anyhow::{Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The agent's YAML config (camelCase keys), as the agent's interface defines it.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    pub node: String,
    pub cgroup_root: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpffs_root: Option<PathBuf>,
    /// `None`: the agent's default, `/proc/sys/net`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proc_sys_net: Option<PathBuf>,
    pub admin_address: String,
    pub metrics_address: String,
    pub readiness_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// `None`: the agent's default (`auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectConfig>,
    /// Certificates for the mesh tunnel; `None`: mTLS off on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    /// Absent in Kubernetes mode, where the agent discovers workloads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub workloads: Vec<Workload>,
    /// Istio-shaped `AuthorizationPolicy` objects (`name`, `namespace`, `selector`,
    /// `action`, `rules`), written inline with `serde_json::json!`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<serde_json::Value>,
    /// Istio-shaped `PeerAuthentication` objects (`name`, `namespace`, `selector`, `mtls`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<serde_json::Value>,
    /// Services (`name`, `namespace`, `vips`, `ports`, `selector`, `addresses`,
    /// `trafficPolicy`), written inline with `serde_json::json!`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<serde_json::Value>,
    /// Gateway API `HTTPRoute`-shaped routes (`name`, `namespace`, `parentRefs`, `rules`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub http_routes: Vec<serde_json::Value>,
    /// `otlpEndpoint` and `samplingRate`: request spans to a collector.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tracing: Option<serde_json::Value>,
    /// The `kubernetes:` section: workloads, services, policies and routes come from the
    /// API server (the tests' `kube_api::ApiServer`) instead of this file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<serde_json::Value>,
}

#[derive(Serialize, Clone, Debug)]
pub struct RedirectConfig {
    pub mode: Mode,
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    pub connect_timeout: String,
    pub idle_timeout: String,
    /// Extra `proxy:` keys (e.g. `accessLog`, `headerReadTimeout`).
    #[serde(flatten)]
    pub extra: BTreeMap<String, serde_json::Value>,
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// What policies' `selector.matchLabels` match.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<String>,
    /// The node the pod runs on; `None`: this node. Enrolled on another node means in the
    /// mesh but captured there: connections to it go through the tunnel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    pub enrolled: bool,
    /// Overrides the node's redirect mode for this pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_mode: Option<Mode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_cidrs: Vec<String>,
    /// Ports never captured inbound (the tunnel port never is either).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_inbound_ports: Vec<u16>,
}

impl Workload {
    /// An enrolled (captured) pod, named after the pod, namespace `default`.
    pub fn enrolled(pod: &Pod) -> Workload {
        Workload {
            name: pod.name().to_string(),
            namespace: "default".into(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
            ips: vec![pod.ip().to_string(), pod.ip6().to_string()],
            node: None,
            netns: Some(pod.netns_path()),
            cgroup: Some(pod.cgroup().to_path_buf()),
            enrolled: true,
            redirect_mode: None,
            exclude_ports: Vec::new(),
            exclude_cidrs: Vec::new(),
            exclude_inbound_ports: Vec::new(),
        }
    }

    /// A known but not captured pod (gives destinations a workload name).
    pub fn known(pod: &Pod) -> Workload {
        Workload {
            enrolled: false,
            netns: None,
            cgroup: None,
            ..Workload::enrolled(pod)
        }
    }

    /// An enrolled pod of another node (`node`: that node's name, e.g. [`Node::name`]): in
    /// the mesh, captured there, reached from here through the tunnel.
    pub fn remote(pod: &Pod, node: &str) -> Workload {
        Workload::enrolled(pod).on_node(node)
    }

    /// Places this workload on another node: `node` set, no netns or cgroup here.
    pub fn on_node(mut self, node: &str) -> Workload {
        self.node = Some(node.to_string());
        self.netns = None;
        self.cgroup = None;
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Workload {
        self.namespace = namespace.to_string();
        self
    }

    pub fn service_account(mut self, service_account: &str) -> Workload {
        self.service_account = service_account.to_string();
        self
    }

    /// Adds labels (`selector.matchLabels` of policies match them).
    pub fn labels(mut self, labels: &[(&str, &str)]) -> Workload {
        self.labels
            .extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// How policies name this workload: `cluster.local/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> String {
        crate::identity::principal(&self.namespace, &self.service_account)
    }

    /// Its SPIFFE ID, as certificates and metrics carry it.
    pub fn spiffe_id(&self) -> String {
        crate::identity::spiffe_id(&self.namespace, &self.service_account)
    }

    /// Whether this node captures it: enrolled, and not placed on another node.
    pub fn captured_on(&self, node: &str) -> bool {
        self.enrolled && self.node.as_deref().is_none_or(|n| n == node)
    }

    pub fn exclude_ports(mut self, ports: &[u16]) -> Workload {
        self.exclude_ports = ports.to_vec();
        self
    }

    pub fn exclude_cidrs(mut self, cidrs: &[String]) -> Workload {
        self.exclude_cidrs = cidrs.to_vec();
        self
    }

    pub fn exclude_inbound_ports(mut self, ports: &[u16]) -> Workload {
        self.exclude_inbound_ports = ports.to_vec();
        self
    }

    /// Steers this pod with `mode` whatever the node's mode is.
    pub fn redirect_mode(mut self, mode: Mode) -> Workload {
        self.redirect_mode = Some(mode);
        self
    }
}

impl AgentConfig {
    /// Defaults for `node`: its name, its cgroup subtree, standard ports, no workloads.
    pub fn new(node: &Node) -> AgentConfig {
        AgentConfig {
            node: node.name().to_string(),
            cgroup_root: node.cgroup_root(),
            bpffs_root: None,
            proc_sys_net: None,
            admin_address: ADMIN.into(),
            metrics_address: "0.0.0.0:15020".into(),
            readiness_address: "0.0.0.0:15021".into(),
            proxy: Some(ProxyConfig {
                connect_timeout: "5s".into(),
                idle_timeout: "1h".into(),
                extra: BTreeMap::new(),
            }),
            redirect: None,
            identity: None,
            workloads: Vec::new(),
            authorization_policies: Vec::new(),
            peer_authentications: Vec::new(),
            services: Vec::new(),
            http_routes: Vec::new(),
            tracing: None,
            kubernetes: None,
        }
    }

    /// Kubernetes mode: the agent reads the API server `kubeconfig` points at, and listens
    /// for the CNI plugin on `cni_socket` when given.
    pub fn kubernetes(
        mut self,
        kubeconfig: &std::path::Path,
        cni_socket: Option<&std::path::Path>,
    ) -> AgentConfig {
        let mut section = serde_json::json!({ "kubeconfig": kubeconfig });
        if let Some(socket) = cni_socket {
            section["cniSocket"] = serde_json::json!(socket);
        }
        self.kubernetes = Some(section);
        self
    }

    /// Exports request spans to the OTLP/HTTP collector at `endpoint` (`http://host:port`).
    pub fn tracing(mut self, endpoint: &str, sampling_rate: f64) -> AgentConfig {
        self.tracing = Some(serde_json::json!({
            "otlpEndpoint": endpoint,
            "samplingRate": sampling_rate,
        }));
        self
    }

    /// Adds a service (see [`AgentConfig::services`]).
    pub fn service(mut self, service: serde_json::Value) -> AgentConfig {
        self.services.push(service);
        self
    }

    /// Adds an `HTTPRoute`-shaped route.
    pub fn http_route(mut self, route: serde_json::Value) -> AgentConfig {
        self.http_routes.push(route);
        self
    }

    /// Sets one `proxy:` key (camelCase), e.g. `("accessLog", json!("json"))`.
    pub fn proxy_setting(mut self, key: &str, value: serde_json::Value) -> AgentConfig {
        if let Some(proxy) = self.proxy.as_mut() {
            proxy.extra.insert(key.into(), value);
        }
        self
    }

    /// Turns mTLS on: the `identity:` section (e.g. [`crate::identity::TestCa::identity`]).
    pub fn identity(mut self, identity: Identity) -> AgentConfig {
        self.identity = Some(identity);
        self
    }

    /// Adds an Istio-shaped `AuthorizationPolicy` (see [`AgentConfig::authorization_policies`]).
    pub fn authorization_policy(mut self, policy: serde_json::Value) -> AgentConfig {
        self.authorization_policies.push(policy);
        self
    }

    /// Adds an Istio-shaped `PeerAuthentication`.
    pub fn peer_authentication(mut self, policy: serde_json::Value) -> AgentConfig {
        self.peer_authentications.push(policy);
        self
    }

    /// Drops every authorization policy and peer authentication.
    pub fn without_policies(mut self) -> AgentConfig {
        self.authorization_policies.clear();
        self.peer_authentications.clear();
        self
    }

    /// The workload called `name` (the first, if several share it).
    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name == name)
    }

    /// Forces the node's redirect mode (instead of `auto`).
    pub fn mode(mut self, mode: Mode) -> AgentConfig {
        self.redirect = Some(RedirectConfig { mode });
        self
    }

    pub fn with(mut self, w: Workload) -> AgentConfig {
        self.workloads.push(w);
        self
    }

    /// Drops the workload called `name`.
    pub fn without(mut self, name: &str) -> AgentConfig {
        self.workloads.retain(|w| w.name != name);
        self
    }

    /// The mode steering pod `name`: its override or the node's; `None` when it is not
    /// enrolled on this node. The node mode must be explicit (see [`AgentConfig::mode`]).
    pub fn mode_of(&self, name: &str) -> Result<Option<Mode>> {
        let here = |w: &&Workload| w.name == name && w.captured_on(&self.node);
        let Some(w) = self.workloads.iter().find(here) else {
            return Ok(None);
        };
        let node = self.redirect.as_ref().map(|r| r.mode);
        w.redirect_mode
            .or(node)
            .map(Some)
            .context("the node's redirect mode is auto; set one with AgentConfig::mode")
    }

    /// Whether the workload named `name` has an IPv6 address in this config (the agent
    /// writes IPv6 rules only for such pods).
    pub fn has_ipv6(&self, name: &str) -> bool {
        self.workloads
            .iter()
            .filter(|w| w.name == name)
            .any(|w| w.ips.iter().any(|ip| ip.contains(':')))
    }

    /// Where this node's pins live: `<bpffsRoot>/<node>`.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs_root
            .clone()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/sluice"))
            .join(&self.node)
    }
}
