//! The tunnel's server side, on each enrolled pod's `15008` listener: TLS with the pod's
//! identity, a peer whose identity the config places at the peer's address, then one
//! HTTP/2 `CONNECT` stream per connection, each under the pod's policy and delivered to
//! the app from the peer pod's address.
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Empty;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, server::conn::http2, service::service_fn,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use super::{CONNECTION_WINDOW, MAX_FRAME, SERVER_MAX_STREAMS, STREAM_WINDOW, relay};
use crate::{
    authz::live::OwnedConnection,
    identity::{self, HandshakeFailure, SpiffeId},
    proxy::{Ends, ProxyContext, delivery, http, l4, pod::Pod, tcp_labels},
};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

pub async fn handle(tcp: TcpStream, peer: SocketAddr, pod: Arc<Pod>, ctx: Arc<ProxyContext>) {
    let Some(mesh) = ctx.mesh.as_ref() else {
        l4::reset(&tcp);
        return;
    };
    let refuse = |reason: &'static str| ctx.metrics.handshake_failed("server", reason);
    let timeout = ctx.settings().connect_timeout;
    if first_byte(&tcp, timeout).await != Some(TLS_HANDSHAKE) {
        debug!("not TLS on the tunnel port; refusing");
        refuse("plaintext");
        l4::reset(&tcp);
        return;
    }
    let w = &pod.workload;
    let local = mesh.identities.id_for(&w.namespace, &w.service_account);
    let tls_config = match mesh.identities.server_config(&local) {
        Ok(config) => config,
        Err(error) => {
            warn!(%error, "no certificate to accept the tunnel with");
            refuse("other");
            l4::reset(&tcp);
            return;
        }
    };
    let tls = match tokio::time::timeout(timeout, TlsAcceptor::from(tls_config).accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(error)) => {
            let reason = HandshakeFailure::from_io_error(&error).as_str();
            info!(%error, reason, "tunnel handshake refused");
            refuse(reason);
            return;
        }
        Err(_) => {
            refuse("other");
            return;
        }
    };
    let Some(peer_id) = identity::peer_id(tls.get_ref().1) else {
        refuse("no_certificate");
        return;
    };
    // The certificate proves who is calling; the config says who may call from there.
    let expected = ctx
        .workloads()
        .by_ip(peer.ip())
        .map(|w| mesh.identities.id_for(&w.namespace, &w.service_account));
    if expected.as_ref() != Some(&peer_id) {
        let expected = expected.map_or_else(|| "no workload".into(), |id| id.to_string());
        warn!(%peer_id, %expected, "tunnel peer's identity does not match its address");
        refuse("wrong_identity");
        return;
    }
    let session = Arc::new(Session {
        pod,
        ctx: ctx.clone(),
        peer,
        peer_id,
        local,
    });
    let service = service_fn(move |request| {
        let session = session.clone();
        async move { Ok::<_, Infallible>(session.stream(request).await) }
    });
    let served = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .max_concurrent_streams(SERVER_MAX_STREAMS)
        .serve_connection(TokioIo::new(tls), service)
        .await;
    if let Err(error) = served {
        debug!(%error, "tunnel ended");
    }
}

/// The first byte the peer sends, or `None` if it sends nothing in time or closes.
async fn first_byte(tcp: &TcpStream, timeout: Duration) -> Option<u8> {
    let mut byte = [0u8; 1];
    match tokio::time::timeout(timeout, tcp.peek(&mut byte)).await {
        Ok(Ok(1)) => Some(byte[0]),
        _ => None,
    }
}

/// One accepted tunnel: who is at both ends.
struct Session {
    pod: Arc<Pod>,
    ctx: Arc<ProxyContext>,
    peer: SocketAddr,
    peer_id: SpiffeId,
    local: SpiffeId,
}

impl Session {
    /// One `CONNECT`: checked, delivered, and only then answered `200`, so the client's app
    /// sees a refusal as a reset rather than a connection that dies at once.
    async fn stream(&self, mut request: Request<Incoming>) -> Response<Empty<Bytes>> {
        if request.method() != Method::CONNECT {
            return status(StatusCode::METHOD_NOT_ALLOWED);
        }
        let target = request
            .uri()
            .authority()
            .and_then(|a| a.as_str().parse::<SocketAddr>().ok());
        let Some(target) = target else {
            return status(StatusCode::BAD_REQUEST);
        };
        let (pod, ctx) = (&self.pod, &self.ctx);
        if !pod.workload.ips.contains(&target.ip()) || pod.is_proxy_port(target) {
            debug!(%target, "stream for another destination than this pod's app");
            return status(StatusCode::MISDIRECTED_REQUEST);
        }
        // Registered before the check, so a policy change between the two still sees it.
        let live = ctx.live.register(OwnedConnection {
            destination: pod.workload.key(),
            destination_port: target.port(),
            source_ip: self.peer.ip(),
            source_principal: Some(self.peer_id.principal()),
            source_namespace: Some(self.peer_id.namespace().to_string()),
        });
        if !ctx.authorize(&live.connection().connection(&pod.workload)) {
            return status(StatusCode::FORBIDDEN);
        }
        let workloads = ctx.workloads();
        let labels = tcp_labels(&Ends {
            reporter: "destination",
            source: workloads.by_ip(self.peer.ip()).map(AsRef::as_ref),
            source_principal: Some(self.peer_id.to_string()),
            destination: Some(&pod.workload),
            destination_principal: Some(self.local.to_string()),
            mutual_tls: true,
        });
        let counters = ctx.metrics.connection_opened(&labels);
        let settings = ctx.settings();
        let delivered = delivery::connect(
            &pod.netns,
            self.peer,
            target,
            settings.connect_timeout,
            pod.exemption.clone(),
        )
        .await;
        let (app, exempted) = match delivered {
            Ok(delivered) => delivered,
            Err(error) => {
                debug!(%target, %error, "delivery failed; refusing the stream");
                counters.closed();
                ctx.connection_finished();
                return status(StatusCode::SERVICE_UNAVAILABLE);
            }
        };
        let upgrade = hyper::upgrade::on(&mut request);
        let ctx = ctx.clone();
        let http = ctx
            .services()
            .http_target(&pod.workload.key(), target.port())
            .cloned();
        let caller = http::inbound::Caller {
            workload: workloads.by_ip(self.peer.ip()).cloned(),
            principal: Some(self.peer_id.to_string()),
        };
        let pod = pod.clone();
        tokio::spawn(async move {
            match (upgrade.await, http) {
                (Ok(stream), Some(http)) => {
                    let revoked = live.revoked();
                    http::inbound::serve(stream, app, pod, http, caller, ctx.clone(), revoked)
                        .await;
                }
                (Ok(stream), None) => {
                    let (request, response) = (&counters.received_bytes, &counters.sent_bytes);
                    let end = relay::relay(
                        app,
                        TokioIo::new(stream),
                        settings.idle_timeout,
                        response,
                        request,
                        live.revoked(),
                    )
                    .await;
                    debug!(%target, ?end, "tunnelled connection done");
                }
                (Err(error), _) => {
                    debug!(%target, %error, "stream never opened");
                    l4::reset(&app);
                }
            }
            drop(exempted);
            counters.closed();
            ctx.connection_finished();
        });
        status(StatusCode::OK)
    }
}

fn status(code: StatusCode) -> Response<Empty<Bytes>> {
    let mut response = Response::new(Empty::new());
    *response.status_mut() = code;
    response
}
