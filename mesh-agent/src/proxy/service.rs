//! A connection from a pod to a service's virtual address. Its port's `appProtocol`, or
//! else what the client sends first ([`super::detect`]), decides: HTTP is served by the
//! L7 proxy ([`super::http`]), request by request; anything else is TCP to one endpoint
//! picked for the connection.
use std::{net::SocketAddr, sync::Arc, time::Instant};

use hyper::Version;
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tracing::debug;

use super::{
    Ends, ProxyContext,
    detect::{self, Dial, Opaque, Protocol, Upstream, UpstreamStream},
    http::{self, backends::EndpointState, forward::Downstream},
    l4,
    pod::Pod,
    tcp_labels,
    tunnel::relay,
    upstream,
};
use crate::{config::service::AppProtocol, state::Frontend};

pub async fn handle(
    app: TcpStream,
    pod: Arc<Pod>,
    ctx: Arc<ProxyContext>,
    frontend: Arc<Frontend>,
    dst: SocketAddr,
) {
    let set = (ctx.http.backends).get(&frontend.service, frontend.port.port, dst.is_ipv6());
    let (protocol, eager) = match frontend.port.app_protocol {
        Some(AppProtocol::Tcp) => (Protocol::Opaque(Opaque::Unrecognized), None),
        // Declared HTTP: only the version is the client's choice (an HTTP/1.1 client may
        // call an `http2` port); anything else is left to the HTTP/1 parser to refuse.
        Some(AppProtocol::Http | AppProtocol::Http2 | AppProtocol::Grpc) => {
            let window = ctx.settings().protocol_detection_timeout;
            match detect::client_speaks(&app, window).await {
                Protocol::Http2 => (Protocol::Http2, None),
                _ => (Protocol::Http1, None),
            }
        }
        None => {
            let Some(endpoint) = set.pick(&mut fastrand::Rng::new(), Instant::now()) else {
                debug!(service = %set.host, "no endpoint for a TCP connection; resetting");
                return l4::reset(&app);
            };
            let started = Instant::now();
            let window = ctx.settings().protocol_detection_timeout;
            let dial = dial(pod.clone(), ctx.clone(), endpoint.addr);
            let (protocol, upstream) = detect::detect_beside_dial(&app, window, dial).await;
            let http = &ctx.metrics.http;
            http.detected(protocol.label());
            http.detection_seconds
                .observe(started.elapsed().as_secs_f64());
            if let Protocol::Tls { sni: Some(sni) } = &protocol {
                debug!(%sni, service = %set.host, "TLS passed through");
            }
            (protocol, Some((endpoint, upstream)))
        }
    };
    let version = match protocol {
        Protocol::Http1 => Version::HTTP_11,
        Protocol::Http2 => Version::HTTP_2,
        Protocol::Tls { .. } | Protocol::Opaque(_) => {
            let (endpoint, upstream) = match eager {
                Some(eager) => eager,
                None => {
                    let Some(endpoint) = set.pick(&mut fastrand::Rng::new(), Instant::now()) else {
                        return l4::reset(&app);
                    };
                    let upstream =
                        Upstream::Dialling(dial(pod.clone(), ctx.clone(), endpoint.addr));
                    (endpoint, upstream)
                }
            };
            return tcp(app, &pod, &ctx, &endpoint, upstream).await;
        }
    };
    // Detection dialled for nothing: HTTP picks an endpoint per request.
    drop(eager);
    http::serve(app, Downstream { pod, dst, version }, ctx).await;
}

fn dial(pod: Arc<Pod>, ctx: Arc<ProxyContext>, addr: SocketAddr) -> Dial {
    Box::pin(async move {
        Ok(match upstream::open(&pod, &ctx, addr).await? {
            upstream::Connection::Tcp(tcp) => Box::new(tcp) as Box<dyn UpstreamStream>,
            upstream::Connection::Tunnel(stream) => Box::new(stream.io),
        })
    })
}

/// Relays the connection to the endpoint picked for it, the server's first bytes first.
async fn tcp(
    mut app: TcpStream,
    pod: &Pod,
    ctx: &ProxyContext,
    endpoint: &EndpointState,
    upstream: Upstream,
) {
    let destination = endpoint.workload.as_deref();
    let mutual_tls = ctx.mesh.is_some() && destination.is_some_and(|w| w.enrolled);
    let labels = tcp_labels(&Ends {
        reporter: "source",
        source: Some(&pod.workload),
        source_principal: ctx.principal_of(&pod.workload).filter(|_| mutual_tls),
        destination,
        destination_principal: destination
            .and_then(|w| ctx.principal_of(w))
            .filter(|_| mutual_tls),
        mutual_tls,
    });
    let counters = ctx.metrics.connection_opened(&labels);
    match upstream.connection().await {
        Ok((stream, first)) => {
            let _ = endpoint.record(true, Instant::now());
            let sent = app.write_all(&first).await;
            counters.sent_bytes.inc_by(first.len() as u64);
            if sent.is_ok() {
                let (request, response) = (&counters.received_bytes, &counters.sent_bytes);
                let idle = ctx.settings().idle_timeout;
                let never = std::future::pending();
                let end = relay::relay(app, stream, idle, request, response, never).await;
                debug!(endpoint = %endpoint.addr, ?end, "service connection done");
            }
        }
        Err(error) => {
            let _ = endpoint.record(false, Instant::now());
            debug!(endpoint = %endpoint.addr, %error, "dial failed; resetting the app's connection");
            l4::reset(&app);
        }
    }
    counters.closed();
    ctx.connection_finished();
}
