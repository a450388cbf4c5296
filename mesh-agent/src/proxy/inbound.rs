//! Inbound: a connection to the app in pod P, steered to P's inbound listener, is delivered
//! to the app from the client's own address (see [`super::delivery`]).
use std::{io, net::SocketAddr, sync::Arc};

use mesh_common::INBOUND_LISTENER_PORT;
use tokio::net::TcpStream;

use super::{ProxyContext, delivery, orig_dst::original_dst, pod::Pod, tcp_labels};

pub async fn handle(client: TcpStream, peer: SocketAddr, pod: Arc<Pod>, ctx: Arc<ProxyContext>) {
    let Some(dst) = super::destination_or_reset(&client, &pod, destination) else {
        return;
    };
    let workloads = ctx.workloads();
    let labels = tcp_labels(
        "destination",
        workloads.by_ip(peer.ip()).map(AsRef::as_ref),
        Some(&pod.workload),
    );
    let counters = ctx.metrics.connection_opened(&labels);
    let settings = ctx.settings();
    let delivered = delivery::connect(
        &pod.netns,
        peer,
        dst,
        settings.connect_timeout,
        pod.exemption.as_ref(),
    )
    .await;
    let (app, _exempted) = match delivered {
        Ok((app, exempted)) => (Ok(app), Some(exempted)),
        Err(e) => (Err(e), None),
    };
    super::relay_or_reset(&ctx, client, app, dst, &counters, settings.idle_timeout).await;
}

/// Steering without NAT (sk_lookup) leaves the original destination as the accepted
/// socket's local address; a REDIRECT rewrote it to the listener's port, and conntrack
/// knows the original.
fn destination(stream: &TcpStream) -> io::Result<SocketAddr> {
    let local = stream.local_addr()?;
    if local.port() == INBOUND_LISTENER_PORT {
        original_dst(stream)
    } else {
        Ok(local)
    }
}
