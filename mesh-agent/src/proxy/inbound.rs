//! Inbound plaintext: a connection to the app in pod P, steered to P's inbound listener, is
//! delivered to the app from the client's own address (see [`super::delivery`]) if P's
//! peer authentication takes plaintext and P's policy allows a caller without identity.
use std::{io, net::SocketAddr, sync::Arc};

use mesh_common::INBOUND_LISTENER_PORT;
use tokio::net::TcpStream;
use tracing::debug;

use hyper_util::rt::TokioIo;

use super::{Ends, ProxyContext, delivery, http, l4, orig_dst::original_dst, pod::Pod, tcp_labels};
use crate::authz::live::OwnedConnection;

pub async fn handle(client: TcpStream, peer: SocketAddr, pod: Arc<Pod>, ctx: Arc<ProxyContext>) {
    let Some(dst) = super::destination_or_reset(&client, &pod, destination) else {
        return;
    };
    // Registered before the checks, so a policy change between the two still sees it.
    let live = ctx.live.register(OwnedConnection {
        destination: pod.workload.key(),
        destination_port: dst.port(),
        source_ip: peer.ip(),
        source_principal: None,
        source_namespace: None,
    });
    if ctx.is_node_probe(peer.ip(), &pod.workload, dst.port()) {
        debug!(%dst, %peer, "the node's probe; let through");
    } else if ctx.strict(&pod.workload) {
        debug!(%dst, "plaintext to a STRICT workload; refusing");
        ctx.metrics.authz_denied("plaintext_strict");
        l4::reset(&client);
        return;
    } else if !ctx.authorize(&live.connection().connection(&pod.workload)) {
        l4::reset(&client);
        return;
    }
    let workloads = ctx.workloads();
    let labels = tcp_labels(&Ends {
        reporter: "destination",
        source: workloads.by_ip(peer.ip()).map(AsRef::as_ref),
        source_principal: None,
        destination: Some(&pod.workload),
        destination_principal: ctx.principal_of(&pod.workload),
        mutual_tls: false,
    });
    let counters = ctx.metrics.connection_opened(&labels);
    let settings = ctx.settings();
    let delivered = delivery::connect(
        &pod.netns,
        peer,
        dst,
        settings.connect_timeout,
        pod.exemption.clone(),
    )
    .await;
    let (app, _exempted) = match delivered {
        Ok((app, exempted)) => (Ok(app), Some(exempted)),
        Err(e) => (Err(e), None),
    };
    let http = ctx
        .services()
        .http_target(&pod.workload.key(), dst.port())
        .cloned();
    match (http, app) {
        (Some(target), Ok(app)) => {
            let caller = http::inbound::Caller {
                workload: workloads.by_ip(peer.ip()).cloned(),
                principal: None,
            };
            // Responses go out as several writes (frames, or headers then body): no Nagle.
            if let Err(error) = client.set_nodelay(true) {
                debug!(%error, "cannot set TCP_NODELAY on the client's connection");
            }
            let client = TokioIo::new(client);
            let revoked = live.revoked();
            http::inbound::serve(
                client,
                app,
                pod.clone(),
                target,
                caller,
                ctx.clone(),
                revoked,
            )
            .await;
            counters.closed();
            ctx.connection_finished();
        }
        (_, app) => {
            let idle = settings.idle_timeout;
            super::relay_or_reset(&ctx, client, app, dst, &counters, idle, live.revoked()).await;
        }
    }
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
