use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use mesh_common::{MAX_EXCLUDED_CIDRS, MAX_EXCLUDED_PORTS};
use serde::{Deserialize, Serialize};

use super::{
    identity::IdentitySettings,
    policy::{AuthorizationPolicy, MtlsMode, PeerAuthentication},
    route::HttpRoute,
    service::Service,
};

/// The whole configuration of one node's agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawConfig")]
pub struct Config {
    /// This node's name; also names the pin directory `<bpffsRoot>/<node>/`.
    pub node: String,
    /// Where the eBPF programs attach. `None`: the cgroup2 mount root.
    pub cgroup_root: Option<PathBuf>,
    pub bpffs_root: PathBuf,
    /// The `/proc/sys/net` the agent writes each pod's delivery sysctls through, from inside
    /// the pod's netns (the files there belong to the writer's netns). A container's own
    /// `/proc/sys` is read-only, so the DaemonSet mounts the host's at `/host/proc/sys/net`.
    pub proc_sys_net: PathBuf,
    pub admin_address: SocketAddr,
    pub metrics_address: SocketAddr,
    pub readiness_address: SocketAddr,
    pub proxy: ProxySettings,
    pub redirect: RedirectSettings,
    /// Certificates for the mesh tunnel; `None` leaves mTLS off (said at start).
    pub identity: Option<IdentitySettings>,
    pub workloads: Vec<Workload>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub services: Vec<Service>,
    pub http_routes: Vec<HttpRoute>,
    /// Where request spans go; `None`: none are exported (trace context is still passed on).
    pub tracing: Option<TracingSettings>,
    /// Present: workloads, services, policies and routes come from the Kubernetes API, and
    /// the file holds only this node's settings.
    pub kubernetes: Option<KubernetesSettings>,
}

/// How the agent reaches the Kubernetes API and the node's CNI plugin.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubernetesSettings {
    /// A kubeconfig file; absent: the pod's service account (in cluster), else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// Where the agent listens for `sluice-cni`; absent: no CNI plugin is used.
    pub cni_socket: Option<PathBuf>,
}

/// A span per sampled request, sent to an OTLP/HTTP collector.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TracingSettings {
    /// `http://host:port` of the collector (its OTLP/HTTP receiver, usually port 4318).
    pub otlp_endpoint: String,
    /// The share of new traces recorded (0 to 1); a caller's sampled flag is kept as is.
    #[serde(default = "defaults::sampling_rate")]
    pub sampling_rate: f64,
}

/// How pods are steered into the proxy, node-wide (a workload may override it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RedirectSettings {
    #[serde(default)]
    pub mode: ModeSetting,
}

/// `auto` picks eBPF when this node can run it, else nftables, else iptables.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModeSetting {
    #[default]
    Auto,
    Ebpf,
    Nftables,
    Iptables,
}

impl ModeSetting {
    /// The mode asked for, or `None` for `auto`.
    pub fn forced(self) -> Option<RedirectMode> {
        match self {
            ModeSetting::Auto => None,
            ModeSetting::Ebpf => Some(RedirectMode::Ebpf),
            ModeSetting::Nftables => Some(RedirectMode::Nftables),
            ModeSetting::Iptables => Some(RedirectMode::Iptables),
        }
    }
}

/// A way of steering traffic into the proxy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    Ebpf,
    Nftables,
    Iptables,
}

impl RedirectMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectMode::Ebpf => "ebpf",
            RedirectMode::Nftables => "nftables",
            RedirectMode::Iptables => "iptables",
        }
    }
}

impl fmt::Display for RedirectMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProxySettings {
    /// How long an upstream connect may take before the app's connection is reset.
    #[serde(with = "humantime_serde", default = "defaults::connect_timeout")]
    pub connect_timeout: Duration,
    /// A connection with no bytes either way for this long is closed.
    #[serde(with = "humantime_serde", default = "defaults::idle_timeout")]
    pub idle_timeout: Duration,
    /// How long a client connecting to a service port without `appProtocol` may stay
    /// silent before its connection is taken as opaque TCP.
    #[serde(
        with = "humantime_serde",
        default = "defaults::protocol_detection_timeout"
    )]
    pub protocol_detection_timeout: Duration,
    /// An HTTP/1 client must send a request's whole header within this time.
    #[serde(with = "humantime_serde", default = "defaults::header_read_timeout")]
    pub header_read_timeout: Duration,
    /// Largest request header accepted (431 beyond it for HTTP/1).
    #[serde(default = "defaults::max_header_bytes")]
    pub max_header_bytes: usize,
    /// One line per HTTP request on stdout, with Envoy's default fields.
    #[serde(default)]
    pub access_log: AccessLogFormat,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AccessLogFormat {
    #[default]
    Off,
    Text,
    Json,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            connect_timeout: defaults::connect_timeout(),
            idle_timeout: defaults::idle_timeout(),
            protocol_detection_timeout: defaults::protocol_detection_timeout(),
            header_read_timeout: defaults::header_read_timeout(),
            max_header_bytes: defaults::max_header_bytes(),
            access_log: AccessLogFormat::default(),
        }
    }
}

/// A workload (pod) the agent knows about. Enrolled ones are captured; the others only give
/// names to destinations in metrics.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", try_from = "RawWorkload")]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// Labels that policies' selectors match.
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<IpAddr>,
    /// The node the pod runs on; `None`: this node. An enrolled pod on another node is not
    /// captured here but is in the mesh: connections to it go through the tunnel.
    pub node: Option<String>,
    /// Path of the pod's network namespace (e.g. `/run/netns/x` or `/proc/<pid>/ns/net`).
    pub netns: Option<PathBuf>,
    /// Absolute path of the pod's cgroup v2 directory.
    pub cgroup: Option<PathBuf>,
    pub enrolled: bool,
    /// Overrides the node's redirect mode for this pod.
    pub redirect_mode: Option<RedirectMode>,
    /// Destination ports never captured for this pod.
    pub exclude_ports: Vec<u16>,
    /// Destination CIDRs never captured for this pod.
    pub exclude_cidrs: Vec<IpNet>,
    /// The pod's own ports never captured inbound (health probes, admin ports).
    pub exclude_inbound_ports: Vec<u16>,
    /// Ports the kubelet probes: the node's own plaintext connections to them are let
    /// through even under `STRICT` and authorization policies, as Istio lets its probes.
    pub probe_ports: Vec<u16>,
}

/// Identifies a workload across config versions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WorkloadKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl Workload {
    pub fn key(&self) -> WorkloadKey {
        WorkloadKey {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// Enrolled and running on this node: its traffic is captured here.
    pub fn captured_here(&self) -> bool {
        self.enrolled && self.node.is_none()
    }

    pub fn ipv6(&self) -> Option<std::net::Ipv6Addr> {
        self.ips.iter().find_map(|ip| match ip {
            IpAddr::V6(v6) => Some(*v6),
            IpAddr::V4(_) => None,
        })
    }
}

mod defaults {
    use std::{net::SocketAddr, path::PathBuf, time::Duration};

    pub fn connect_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub fn idle_timeout() -> Duration {
        Duration::from_secs(3600)
    }
    pub fn protocol_detection_timeout() -> Duration {
        Duration::from_secs(1)
    }
    pub fn header_read_timeout() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_header_bytes() -> usize {
        64 * 1024
    }
    pub fn sampling_rate() -> f64 {
        1.0
    }
    pub fn bpffs_root() -> PathBuf {
        PathBuf::from("/sys/fs/bpf/sluice")
    }
    pub fn proc_sys_net() -> PathBuf {
        PathBuf::from("/proc/sys/net")
    }
    pub fn admin() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 15000))
    }
    pub fn metrics() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 15020))
    }
    pub fn readiness() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 15021))
    }
    pub fn service_account() -> String {
        "default".into()
    }
    pub fn yes() -> bool {
        true
    }
}

/// The file's shape, before cross-field checks.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    node: String,
    cgroup_root: Option<PathBuf>,
    #[serde(default = "defaults::bpffs_root")]
    bpffs_root: PathBuf,
    #[serde(default = "defaults::proc_sys_net")]
    proc_sys_net: PathBuf,
    #[serde(default = "defaults::admin")]
    admin_address: SocketAddr,
    #[serde(default = "defaults::metrics")]
    metrics_address: SocketAddr,
    #[serde(default = "defaults::readiness")]
    readiness_address: SocketAddr,
    #[serde(default)]
    proxy: ProxySettings,
    #[serde(default)]
    redirect: RedirectSettings,
    identity: Option<IdentitySettings>,
    #[serde(default)]
    workloads: Vec<Workload>,
    #[serde(default)]
    authorization_policies: Vec<AuthorizationPolicy>,
    #[serde(default)]
    peer_authentications: Vec<PeerAuthentication>,
    #[serde(default)]
    services: Vec<Service>,
    #[serde(default)]
    http_routes: Vec<HttpRoute>,
    tracing: Option<TracingSettings>,
    kubernetes: Option<KubernetesSettings>,
}

impl TryFrom<RawConfig> for Config {
    type Error = String;

    fn try_from(raw: RawConfig) -> Result<Self, String> {
        if raw.node.is_empty() || raw.node.contains('/') || raw.node.starts_with('.') {
            return Err(format!(
                "node: {:?} must be a non-empty name without '/' (it names a pin directory)",
                raw.node
            ));
        }
        if let Some(root) = &raw.cgroup_root
            && !root.is_dir()
        {
            return Err(format!("cgroupRoot: {} is not a directory", root.display()));
        }
        let mut seen = HashSet::new();
        for w in &raw.workloads {
            if !seen.insert(w.key()) {
                return Err(format!("workloads: {} is listed twice", w.key()));
            }
        }
        let mut cgroups = HashSet::new();
        for w in raw.workloads.iter().filter(|w| w.enrolled) {
            if let Some(cg) = &w.cgroup
                && !cgroups.insert(cg)
            {
                return Err(format!(
                    "workloads: {} shares cgroup {} with another enrolled workload",
                    w.key(),
                    cg.display()
                ));
            }
        }
        check_policies(&raw)?;
        check_services(&raw)?;
        check_proxy(&raw)?;
        let mut workloads = raw.workloads;
        for w in &mut workloads {
            if w.node.as_ref() == Some(&raw.node) {
                if w.enrolled && (w.netns.is_none() || w.cgroup.is_none()) {
                    return Err(format!(
                        "workloads: {} is enrolled on this node and needs netns and cgroup",
                        w.key()
                    ));
                }
                w.node = None;
            }
        }
        Ok(Config {
            node: raw.node,
            cgroup_root: raw.cgroup_root,
            bpffs_root: raw.bpffs_root,
            proc_sys_net: raw.proc_sys_net,
            admin_address: raw.admin_address,
            metrics_address: raw.metrics_address,
            readiness_address: raw.readiness_address,
            proxy: raw.proxy,
            redirect: raw.redirect,
            identity: raw.identity,
            workloads,
            authorization_policies: raw.authorization_policies,
            peer_authentications: raw.peer_authentications,
            services: raw.services,
            http_routes: raw.http_routes,
            tracing: raw.tracing,
            kubernetes: raw.kubernetes,
        })
    }
}

/// Names unique per namespace, ports that are ports, and `STRICT` only where there are
/// certificates to be strict with.
fn check_policies(raw: &RawConfig) -> Result<(), String> {
    let mut names = HashSet::new();
    for p in &raw.authorization_policies {
        let who = format!("authorizationPolicies: {}/{}", p.namespace, p.name);
        if !names.insert((&p.namespace, &p.name)) {
            return Err(format!("{who} is listed twice"));
        }
        let ports = p.rules.iter().flat_map(|r| &r.to).flat_map(|t| {
            let op = &t.operation;
            op.ports.iter().chain(&op.not_ports).flatten()
        });
        for port in ports {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(format!("{who}: port {port:?} is not a port number"));
            }
        }
    }
    let mut names = HashSet::new();
    for p in &raw.peer_authentications {
        let who = format!("peerAuthentications: {}/{}", p.namespace, p.name);
        if !names.insert((&p.namespace, &p.name)) {
            return Err(format!("{who} is listed twice"));
        }
        if p.mtls.mode == MtlsMode::Strict && raw.identity.is_none() {
            return Err(format!(
                "{who}: STRICT needs the identity section (without it mTLS is off)"
            ));
        }
    }
    Ok(())
}

/// Limits the proxy can honour, and a collector it can reach.
fn check_proxy(raw: &RawConfig) -> Result<(), String> {
    if raw.proxy.max_header_bytes < 8192 {
        return Err("proxy: maxHeaderBytes must be at least 8192".into());
    }
    if let Some(t) = &raw.tracing {
        if !(0.0..=1.0).contains(&t.sampling_rate) {
            return Err("tracing: samplingRate must be within 0 and 1".into());
        }
        let uri: Result<hyper::Uri, _> = t.otlp_endpoint.parse();
        if !uri.is_ok_and(|u| u.scheme_str() == Some("http") && u.host().is_some()) {
            return Err(format!(
                "tracing: otlpEndpoint {:?} must be http://host:port",
                t.otlp_endpoint
            ));
        }
    }
    Ok(())
}

/// Each service valid and named once, each virtual address and port owned by one service,
/// and every route's parents and backends services that exist.
fn check_services(raw: &RawConfig) -> Result<(), String> {
    let mut names = HashSet::new();
    let mut frontends = HashSet::new();
    for s in &raw.services {
        s.validate()?;
        if !names.insert((s.namespace.as_str(), s.name.as_str())) {
            return Err(format!(
                "services: {}/{} is listed twice",
                s.namespace, s.name
            ));
        }
        for vip in &s.vips {
            for p in &s.ports {
                if !frontends.insert((*vip, p.port)) {
                    return Err(format!(
                        "services: {}/{}: {} is another service's too",
                        s.namespace,
                        s.name,
                        SocketAddr::new(*vip, p.port)
                    ));
                }
            }
        }
    }
    let mut routes = HashSet::new();
    for r in &raw.http_routes {
        r.validate()?;
        let who = format!("httpRoutes: {}/{}", r.namespace, r.name);
        if !routes.insert((&r.namespace, &r.name)) {
            return Err(format!("{who} is listed twice"));
        }
        r.check_refs(&raw.services)
            .map_err(|e| format!("{who}: {e}"))?;
    }
    Ok(())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawWorkload {
    name: String,
    #[serde(default = "default_namespace")]
    namespace: String,
    #[serde(default = "defaults::service_account")]
    service_account: String,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    ips: Vec<IpAddr>,
    node: Option<String>,
    netns: Option<PathBuf>,
    cgroup: Option<PathBuf>,
    #[serde(default = "defaults::yes")]
    enrolled: bool,
    redirect_mode: Option<RedirectMode>,
    #[serde(default)]
    exclude_ports: Vec<u16>,
    #[serde(default)]
    exclude_cidrs: Vec<IpNet>,
    #[serde(default)]
    exclude_inbound_ports: Vec<u16>,
    #[serde(default)]
    probe_ports: Vec<u16>,
}

fn default_namespace() -> String {
    "default".into()
}

impl TryFrom<RawWorkload> for Workload {
    type Error = String;

    fn try_from(raw: RawWorkload) -> Result<Self, String> {
        let who = format!("workload {}/{}", raw.namespace, raw.name);
        if raw.name.is_empty() {
            return Err("name: must not be empty".into());
        }
        if raw.enrolled && raw.node.is_none() {
            let netns = raw
                .netns
                .as_ref()
                .ok_or_else(|| format!("netns: {who} is enrolled and needs its netns path"))?;
            if let Err(error) = std::fs::metadata(netns) {
                return Err(match error.kind() {
                    std::io::ErrorKind::NotFound => {
                        format!("netns: {who}: {} does not exist", netns.display())
                    }
                    // /proc/<pid>/ns/net of a process holding capabilities the agent does
                    // not: say so, not that it is missing.
                    std::io::ErrorKind::PermissionDenied => format!(
                        "netns: {who}: {}: {error} (opening another process's netns needs ptrace \
                         access: CAP_SYS_PTRACE)",
                        netns.display()
                    ),
                    _ => format!("netns: {who}: {}: {error}", netns.display()),
                });
            }
            let cgroup = raw
                .cgroup
                .as_ref()
                .ok_or_else(|| format!("cgroup: {who} is enrolled and needs its cgroup path"))?;
            if !cgroup.is_absolute() || !cgroup.is_dir() {
                return Err(format!(
                    "cgroup: {who}: {} is not an existing absolute directory",
                    cgroup.display()
                ));
            }
        }
        for (field, ports) in [
            ("excludePorts", &raw.exclude_ports),
            ("excludeInboundPorts", &raw.exclude_inbound_ports),
        ] {
            if ports.len() > MAX_EXCLUDED_PORTS {
                return Err(format!(
                    "{field}: {who} lists {} ports; at most {MAX_EXCLUDED_PORTS}",
                    ports.len()
                ));
            }
        }
        for v6 in [false, true] {
            let n = raw
                .exclude_cidrs
                .iter()
                .filter(|c| c.addr().is_ipv6() == v6)
                .count();
            if n > MAX_EXCLUDED_CIDRS {
                return Err(format!(
                    "excludeCidrs: {who} lists {n} IPv{} CIDRs; at most {MAX_EXCLUDED_CIDRS}",
                    if v6 { 6 } else { 4 }
                ));
            }
        }
        Ok(Workload {
            name: raw.name,
            namespace: raw.namespace,
            service_account: raw.service_account,
            labels: raw.labels,
            ips: raw.ips,
            node: raw.node,
            netns: raw.netns,
            cgroup: raw.cgroup,
            enrolled: raw.enrolled,
            redirect_mode: raw.redirect_mode,
            exclude_ports: raw.exclude_ports,
            exclude_cidrs: raw.exclude_cidrs,
            exclude_inbound_ports: raw.exclude_inbound_ports,
            probe_ports: raw.probe_ports,
        })
    }
}
