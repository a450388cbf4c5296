//! Outbound capture: the listeners inside each enrolled pod's netns and the handling of each
//! connection accepted there. Accepting on pod P's listener is itself the proof that the
//! connection came from P: no source IP is trusted.
use std::{
    io,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{Instrument as _, debug, info_span, warn};

use super::{ProxyContext, l4, orig_dst::original_dst, upstream};
use crate::{
    config::Workload,
    metrics::TcpLabels,
    sys::netns::{Netns, NetnsError},
};

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("listening on {addr} in netns {netns}: {error}")]
    Bind {
        addr: SocketAddr,
        netns: String,
        error: io::Error,
    },
}

/// The pod a set of listeners serves.
#[derive(Debug)]
pub struct Pod {
    pub workload: Workload,
    pub netns: Netns,
    pub listeners: Vec<SocketAddr>,
}

/// A pod's open listeners. Closing (or dropping) it stops accepting; connections already
/// accepted run on.
#[derive(Debug)]
pub struct PodListeners {
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for PodListeners {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl PodListeners {
    /// Stops accepting and returns once the listening sockets are closed, so their addresses
    /// can be bound again straight away (a dropped listener closes a little later, when its
    /// task is torn down).
    pub async fn close(mut self) {
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            // Cancelled (or, impossibly, finished): either way the socket is gone.
            let _ = task.await;
        }
    }

    /// Binds every listener inside the pod's netns and starts accepting.
    pub fn open(pod: Arc<Pod>, ctx: Arc<ProxyContext>) -> Result<Self, ListenError> {
        let mut listeners = Vec::new();
        for addr in &pod.listeners {
            let bind_err = |error| ListenError::Bind {
                addr: *addr,
                netns: pod.netns.path().display().to_string(),
                error,
            };
            let socket = pod.netns.run(|| bind(*addr))?.map_err(bind_err)?;
            listeners.push(TcpListener::from_std(socket.into()).map_err(bind_err)?);
        }
        let tasks = listeners
            .into_iter()
            .map(|listener| tokio::spawn(accept_loop(listener, pod.clone(), ctx.clone())))
            .collect();
        Ok(Self { tasks })
    }
}

fn bind(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
        // The pod's IPv6 address may still be in duplicate address detection.
        socket.set_freebind_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket)
}

async fn accept_loop(listener: TcpListener, pod: Arc<Pod>, ctx: Arc<ProxyContext>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let span = info_span!("outbound", pod = %pod.workload.key(), %peer);
                tokio::spawn(handle(stream, pod.clone(), ctx.clone()).instrument(span));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                warn!(pod = %pod.workload.key(), %err, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

async fn handle(app: tokio::net::TcpStream, pod: Arc<Pod>, ctx: Arc<ProxyContext>) {
    let dst = match original_dst(&app) {
        Ok(dst) => dst,
        Err(err) => {
            // Not a captured connection: someone dialled the listener directly.
            debug!(%err, "no original destination; refusing");
            l4::reset(&app);
            return;
        }
    };
    if is_self(&pod, dst) {
        debug!(%dst, "connection to the proxy's own listener; refusing");
        l4::reset(&app);
        return;
    }
    let labels = labels(&pod.workload, dst.ip(), &ctx);
    let counters = ctx.metrics.connection_opened(&labels);
    let settings = ctx.settings();
    match upstream::connect(&pod.netns, dst, settings.connect_timeout).await {
        Ok(upstream) => {
            debug!(%dst, "relaying");
            match l4::relay(
                app,
                upstream,
                settings.idle_timeout,
                &counters.sent_bytes,
                &counters.received_bytes,
            )
            .await
            {
                Ok(end) => debug!(%dst, ?end, "connection done"),
                Err(err) => debug!(%dst, %err, "connection failed"),
            }
        }
        Err(err) => {
            debug!(%dst, %err, "upstream connect failed; resetting the app's connection");
            l4::reset(&app);
        }
    }
    counters.closed();
    ctx.connection_finished();
}

/// A destination that is one of this pod's own listeners would loop back into the proxy.
fn is_self(pod: &Pod, dst: SocketAddr) -> bool {
    pod.listeners.contains(&dst)
        || (dst.port() == mesh_common::OUTBOUND_LISTENER_PORT
            && pod.workload.ips.contains(&dst.ip()))
}

fn labels(source: &Workload, dst: IpAddr, ctx: &ProxyContext) -> TcpLabels {
    let workloads = ctx.workloads();
    let destination = workloads.by_ip(dst);
    TcpLabels {
        reporter: "source",
        source_workload: source.name.clone(),
        source_workload_namespace: source.namespace.clone(),
        source_principal: source.principal(),
        destination_workload: destination.map_or_else(|| "unknown".into(), |w| w.name.clone()),
        destination_workload_namespace: destination
            .map_or_else(|| "unknown".into(), |w| w.namespace.clone()),
        request_protocol: "tcp",
        connection_security_policy: "none",
    }
}
