//! Outbound: a connection the app in pod P made, accepted on P's outbound listener, goes to
//! its original destination from inside P's netns.
use std::sync::Arc;

use tokio::net::TcpStream;
use tracing::debug;

use super::{ProxyContext, l4, orig_dst::original_dst, pod::Pod, tcp_labels, upstream};

pub async fn handle(app: TcpStream, pod: Arc<Pod>, ctx: Arc<ProxyContext>) {
    let dst = match original_dst(&app) {
        Ok(dst) => dst,
        Err(err) => {
            // Not a captured connection: someone dialled the listener directly.
            debug!(%err, "no original destination; refusing");
            l4::reset(&app);
            return;
        }
    };
    if pod.is_proxy_port(dst) {
        debug!(%dst, "connection to the proxy's own listener; refusing");
        l4::reset(&app);
        return;
    }
    let workloads = ctx.workloads();
    let labels = tcp_labels(
        "source",
        Some(&pod.workload),
        workloads.by_ip(dst.ip()).map(AsRef::as_ref),
    );
    let counters = ctx.metrics.connection_opened(&labels);
    let settings = ctx.settings();
    let upstream = upstream::connect(&pod.netns, dst, settings.connect_timeout).await;
    super::relay_or_reset(&ctx, app, upstream, dst, &counters, settings.idle_timeout).await;
}
