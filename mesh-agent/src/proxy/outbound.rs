//! Outbound: a connection the app in pod P made, accepted on P's outbound listener, goes to
//! its original destination from inside P's netns.
use std::sync::Arc;

use tokio::net::TcpStream;

use super::{ProxyContext, orig_dst::original_dst, pod::Pod, tcp_labels, upstream};

pub async fn handle(app: TcpStream, pod: Arc<Pod>, ctx: Arc<ProxyContext>) {
    let Some(dst) = super::destination_or_reset(&app, &pod, original_dst) else {
        return;
    };
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
