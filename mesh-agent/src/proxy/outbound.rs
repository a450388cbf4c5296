//! Outbound: a connection the app in pod P made, accepted on P's outbound listener, goes to
//! its original destination from inside P's netns: through the mesh tunnel when the
//! destination is an enrolled pod and the mesh has identities, else as plain TCP.
use std::{net::SocketAddr, sync::Arc};

use tokio::net::TcpStream;
use tracing::debug;

use super::{
    Ends, Mesh, ProxyContext, l4, orig_dst::original_dst, pod::Pod, service, tcp_labels,
    tunnel::relay, upstream,
};
use crate::config::Workload;

pub async fn handle(app: TcpStream, pod: Arc<Pod>, ctx: Arc<ProxyContext>) {
    let Some(dst) = super::destination_or_reset(&app, &pod, original_dst) else {
        return;
    };
    if let Some(frontend) = ctx.services().frontend(dst).cloned() {
        // Boxed, as the tunnel branch below: most connections are not to services.
        return Box::pin(service::handle(app, pod, ctx, frontend, dst)).await;
    }
    let workloads = ctx.workloads();
    let destination = workloads.by_ip(dst.ip()).map(AsRef::as_ref);
    if let (Some(mesh), Some(peer)) = (&ctx.mesh, destination.filter(|w| w.enrolled)) {
        // Boxed: the tunnel's TLS and HTTP/2 setup would otherwise size every outbound
        // task's future, plain ones included (6 KiB more per idle connection).
        return Box::pin(through_tunnel(app, &pod, &ctx, mesh, peer, dst)).await;
    }
    let labels = tcp_labels(&Ends {
        reporter: "source",
        source: Some(&pod.workload),
        source_principal: None,
        destination,
        destination_principal: None,
        mutual_tls: false,
    });
    let counters = ctx.metrics.connection_opened(&labels);
    let settings = ctx.settings();
    let upstream = upstream::connect(&pod.netns, dst, settings.connect_timeout).await;
    let idle = settings.idle_timeout;
    let never = std::future::pending();
    super::relay_or_reset(&ctx, app, upstream, dst, &counters, idle, never).await;
}

/// An HTTP/2 stream to `peer`'s proxy, in a pooled or new tunnel; the app is reset when
/// the tunnel cannot be had or the peer refuses the stream, never sent around it.
async fn through_tunnel(
    app: TcpStream,
    pod: &Pod,
    ctx: &ProxyContext,
    mesh: &Mesh,
    peer: &Workload,
    dst: SocketAddr,
) {
    let w = &pod.workload;
    let source = mesh.identities.id_for(&w.namespace, &w.service_account);
    let destination = mesh
        .identities
        .id_for(&peer.namespace, &peer.service_account);
    let labels = tcp_labels(&Ends {
        reporter: "source",
        source: Some(w),
        source_principal: Some(source.to_string()),
        destination: Some(peer),
        destination_principal: Some(destination.to_string()),
        mutual_tls: true,
    });
    let counters = ctx.metrics.connection_opened(&labels);
    let settings = ctx.settings();
    let stream = upstream::open_tunnel(pod, mesh, peer, dst, settings.connect_timeout).await;
    match stream {
        Ok(stream) => {
            let (request, response) = (&counters.received_bytes, &counters.sent_bytes);
            let never = std::future::pending();
            let idle = settings.idle_timeout;
            let end = relay::relay(app, stream.io, idle, request, response, never).await;
            debug!(%dst, ?end, "tunnelled connection done");
        }
        Err(error) => {
            debug!(%dst, %error, "no tunnel; resetting the app's connection");
            l4::reset(&app);
        }
    }
    counters.closed();
    ctx.connection_finished();
}
