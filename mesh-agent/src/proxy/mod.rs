//! The node proxy. [`pod`] holds each captured pod's listeners inside its netns. Every
//! request path is accept → decide → dial → relay: [`outbound`] dials the original
//! destination from the pod's netns ([`upstream`]) or, for a pod in the mesh, opens a
//! stream in a [`tunnel`]; a connection to a service's virtual address goes to
//! [`service`], which serves HTTP itself ([`http`]) and balances TCP over the service's
//! endpoints; [`inbound`] and the tunnel's server deliver to the app from the client's
//! address ([`delivery`]) once the pod's policy allows it; [`l4`] relays bytes between the
//! two sockets.
pub mod delivery;
pub mod detect;
pub mod http;
pub mod inbound;
pub mod l4;
pub mod orig_dst;
pub mod outbound;
pub mod pod;
pub mod service;
pub mod tunnel;
pub mod upstream;

use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpStream;
use tracing::{debug, info, warn};

use self::{pod::Pod, tunnel::client::Pool};
use crate::{
    authz::{Connection, Decision, Policies, live::LiveConnections},
    config::{Config, ProxySettings, Workload},
    identity::Identities,
    metrics::{ConnectionCounters, Metrics, TcpLabels},
    state::{ServiceIndex, WorkloadIndex},
};

/// The mesh's mTLS: present when the config has an `identity` section.
pub struct Mesh {
    pub identities: Arc<Identities>,
    pub pool: Arc<Pool>,
}

/// What every connection handler reads: settings, names and policies that follow config
/// reloads, and the mesh's identities.
pub struct ProxyContext {
    pub metrics: Arc<Metrics>,
    pub mesh: Option<Mesh>,
    /// Inbound connections under policy, closed when a new policy no longer allows them.
    pub live: LiveConnections,
    /// Services' live endpoint state and the pods' upstream HTTP pools.
    pub http: http::Http,
    settings: RwLock<ProxySettings>,
    workloads: RwLock<Arc<WorkloadIndex>>,
    services: RwLock<Arc<ServiceIndex>>,
    policies: RwLock<Arc<Policies>>,
    /// Connections finished since start: tells the memory trimmer that memory may be free.
    finished: AtomicU64,
    /// The node's own addresses (the agent's netns): the kubelet probes from them.
    node_addresses: RwLock<Vec<IpAddr>>,
}

impl ProxyContext {
    pub fn new(
        metrics: Arc<Metrics>,
        config: &Config,
        identities: Option<Arc<Identities>>,
    ) -> Arc<Self> {
        let mesh = identities.map(|identities| Mesh {
            identities,
            pool: Pool::start(metrics.clone()),
        });
        Arc::new(Self {
            http: http::Http::new(metrics.clone(), config),
            metrics,
            mesh,
            live: LiveConnections::default(),
            settings: RwLock::new(config.proxy.clone()),
            workloads: RwLock::new(Arc::new(WorkloadIndex::new(config))),
            services: RwLock::new(Arc::new(ServiceIndex::new(config))),
            policies: RwLock::new(Arc::new(Policies::new(config))),
            finished: AtomicU64::new(0),
            node_addresses: RwLock::new(node_addresses()),
        })
    }

    /// Takes a new config version: live connections its policies deny are closed.
    pub fn update(&self, config: &Config) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = config.proxy.clone();
        *self.workloads.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(WorkloadIndex::new(config));
        *self.services.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(ServiceIndex::new(config));
        self.http.updated(config);
        *self
            .node_addresses
            .write()
            .unwrap_or_else(|p| p.into_inner()) = node_addresses();
        let policies = Arc::new(Policies::new(config));
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = policies.clone();
        let revoked = self.live.revoke_denied(&policies, config);
        if revoked > 0 {
            info!(revoked, "closing connections the new policy denies");
        }
    }

    /// The destination pod's policy on a connection; a denial is counted and logged.
    pub fn authorize(&self, connection: &Connection) -> bool {
        let policies = self
            .policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        match policies.check(connection) {
            Decision::Allow => true,
            Decision::Deny { reason, policy } => {
                info!(
                    destination = %connection.destination.key(),
                    port = connection.destination_port,
                    source = %connection.source_ip,
                    principal = connection.source_principal.unwrap_or("none"),
                    reason = reason.as_str(),
                    %policy,
                    "connection denied"
                );
                self.metrics.authz_denied(reason.as_str());
                false
            }
        }
    }

    /// Whether `STRICT` peer authentication refuses plaintext to `destination`.
    pub fn strict(&self, destination: &Workload) -> bool {
        let policies = self.policies.read().unwrap_or_else(|p| p.into_inner());
        policies.mtls_mode(destination) == crate::config::policy::MtlsMode::Strict
    }

    /// A plaintext connection from the node itself to one of the pod's probe ports: the
    /// kubelet's probe, let through before peer authentication and policy (as Istio does),
    /// so `STRICT` pods stay healthy.
    pub fn is_node_probe(&self, source: IpAddr, destination: &Workload, port: u16) -> bool {
        destination.probe_ports.contains(&port)
            && (self
                .node_addresses
                .read()
                .unwrap_or_else(|p| p.into_inner()))
            .contains(&source)
    }

    pub fn connection_finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connections_finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }

    pub fn settings(&self) -> ProxySettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn services(&self) -> Arc<ServiceIndex> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn workloads(&self) -> Arc<WorkloadIndex> {
        self.workloads
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The SPIFFE ID a workload runs as, when the mesh has identities.
    fn principal_of(&self, w: &Workload) -> Option<String> {
        let mesh = self.mesh.as_ref()?;
        Some(
            mesh.identities
                .id_for(&w.namespace, &w.service_account)
                .to_string(),
        )
    }
}

/// Who is at each end of a connection, as far as this proxy knows.
struct Ends<'a> {
    reporter: &'static str,
    source: Option<&'a Workload>,
    source_principal: Option<String>,
    destination: Option<&'a Workload>,
    destination_principal: Option<String>,
    mutual_tls: bool,
}

/// Istio's TCP labels for a connection (`None`: not a known workload or identity).
fn tcp_labels(ends: &Ends) -> TcpLabels {
    let name = |w: Option<&Workload>| w.map_or_else(|| "unknown".into(), |w| w.name.clone());
    let namespace =
        |w: Option<&Workload>| w.map_or_else(|| "unknown".into(), |w| w.namespace.clone());
    let principal = |p: &Option<String>| p.clone().unwrap_or_else(|| "unknown".into());
    TcpLabels {
        reporter: ends.reporter,
        source_workload: name(ends.source),
        source_workload_namespace: namespace(ends.source),
        source_principal: principal(&ends.source_principal),
        destination_workload: name(ends.destination),
        destination_workload_namespace: namespace(ends.destination),
        destination_principal: principal(&ends.destination_principal),
        request_protocol: "tcp",
        connection_security_policy: if ends.mutual_tls {
            "mutual_tls"
        } else {
            "none"
        },
    }
}

/// The connection's original destination as `find` reads it, or `None` once the connection
/// is reset: when it has none (someone dialled the listener directly) or it is one of the
/// pod's own proxy ports (relaying there would loop).
fn destination_or_reset(
    accepted: &TcpStream,
    pod: &Pod,
    find: impl FnOnce(&TcpStream) -> io::Result<SocketAddr>,
) -> Option<SocketAddr> {
    match find(accepted) {
        Ok(dst) if pod.is_proxy_port(dst) => {
            debug!(%dst, "connection to the proxy's own listener; refusing");
        }
        Ok(dst) => return Some(dst),
        Err(err) => debug!(%err, "no original destination; refusing"),
    }
    l4::reset(accepted);
    None
}

/// The end every request path shares: relays the accepted connection to the one dialled
/// for it, or resets it when dialling failed (the client sees the failure, as it would
/// without the mesh), then counts the connection closed.
async fn relay_or_reset(
    ctx: &ProxyContext,
    accepted: TcpStream,
    dialled: io::Result<TcpStream>,
    dst: SocketAddr,
    counters: &ConnectionCounters,
    idle: Duration,
    stop: impl Future<Output = ()>,
) {
    match dialled {
        Ok(dialled) => {
            debug!(%dst, "relaying");
            let request = &counters.received_bytes;
            let response = &counters.sent_bytes;
            match l4::relay(accepted, dialled, idle, request, response, stop).await {
                Ok(end) => debug!(%dst, ?end, "connection done"),
                Err(err) => debug!(%dst, %err, "connection failed"),
            }
        }
        Err(err) => {
            debug!(%dst, %err, "dial failed; resetting the accepted connection");
            l4::reset(&accepted);
        }
    }
    counters.closed();
    ctx.connection_finished();
}

/// The agent's netns's addresses (the node's); none, and so no probe recognised, when they
/// cannot be read.
fn node_addresses() -> Vec<IpAddr> {
    crate::sys::addrs::local_addresses().unwrap_or_else(|error| {
        warn!(%error, "cannot list the node's addresses: kubelet probes to STRICT pods will be refused");
        Vec::new()
    })
}
