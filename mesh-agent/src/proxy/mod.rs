//! The node proxy. [`pod`] holds each captured pod's listeners inside its netns. Every
//! request path is accept → decide → dial → relay: [`outbound`] dials the original
//! destination from the pod's netns ([`upstream`]), [`inbound`] delivers to the app from
//! the client's address ([`delivery`]), and [`l4`] relays bytes between the two sockets.
pub mod delivery;
pub mod inbound;
pub mod l4;
pub mod orig_dst;
pub mod outbound;
pub mod pod;
pub mod upstream;

use std::{
    io,
    net::SocketAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::net::TcpStream;
use tracing::debug;

use self::pod::Pod;
use crate::{
    config::{Config, ProxySettings, Workload},
    metrics::{ConnectionCounters, Metrics, TcpLabels},
    state::WorkloadIndex,
};

/// What every connection handler reads: settings and names that follow config reloads.
#[derive(Debug)]
pub struct ProxyContext {
    pub metrics: Arc<Metrics>,
    settings: RwLock<ProxySettings>,
    workloads: RwLock<Arc<WorkloadIndex>>,
    /// Connections finished since start: tells the memory trimmer that memory may be free.
    finished: AtomicU64,
}

impl ProxyContext {
    pub fn new(metrics: Arc<Metrics>, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            settings: RwLock::new(config.proxy.clone()),
            workloads: RwLock::new(Arc::new(WorkloadIndex::new(config))),
            finished: AtomicU64::new(0),
        })
    }

    pub fn update(&self, config: &Config) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = config.proxy.clone();
        *self.workloads.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(WorkloadIndex::new(config));
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

    pub fn workloads(&self) -> Arc<WorkloadIndex> {
        self.workloads
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Istio's TCP labels for a connection between two workloads (`None`: not a known one).
fn tcp_labels(
    reporter: &'static str,
    source: Option<&Workload>,
    destination: Option<&Workload>,
) -> TcpLabels {
    let name = |w: Option<&Workload>| w.map_or_else(|| "unknown".into(), |w| w.name.clone());
    let namespace =
        |w: Option<&Workload>| w.map_or_else(|| "unknown".into(), |w| w.namespace.clone());
    TcpLabels {
        reporter,
        source_workload: name(source),
        source_workload_namespace: namespace(source),
        // Only the client's own proxy knows who it is: plaintext proves nothing to the
        // server's side.
        source_principal: match (reporter, source) {
            ("source", Some(w)) => w.principal(),
            _ => "unknown".into(),
        },
        destination_workload: name(destination),
        destination_workload_namespace: namespace(destination),
        request_protocol: "tcp",
        connection_security_policy: "none",
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
) {
    match dialled {
        Ok(dialled) => {
            debug!(%dst, "relaying");
            let request = &counters.received_bytes;
            let response = &counters.sent_bytes;
            match l4::relay(accepted, dialled, idle, request, response).await {
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
