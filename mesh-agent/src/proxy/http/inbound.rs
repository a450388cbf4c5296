//! The server side of L7: on a pod port that a service declares as HTTP, the destination's
//! proxy serves the connection it accepted (plaintext or a tunnel stream) itself and passes
//! each request to the app over the one connection it delivered, so every request is also
//! counted where it lands (`reporter="destination"`), as Istio's server-side proxy does.
use std::{convert::Infallible, future::Future, sync::Arc};

use http_body_util::BodyExt;
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::Incoming,
    client::conn::{http1, http2},
    header::{self, HeaderValue},
    rt::{Read, Write},
    service::service_fn,
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpStream, sync::Mutex};
use tracing::debug;

use super::{
    client::UpstreamBody,
    headers,
    observe::{self, Counted, Exchange, Observed},
};
use crate::{
    config::{Workload, service::AppProtocol},
    metrics::http::RequestLabels,
    proxy::{ProxyContext, pod::Pod},
    state::HttpTarget,
};

/// Who called, as the destination's proxy knows it.
pub struct Caller {
    pub workload: Option<Arc<Workload>>,
    /// The caller's SPIFFE ID, when it came through the tunnel.
    pub principal: Option<String>,
}

/// Serves `client` until it closes or `stop` completes (a policy revoked the connection).
pub async fn serve<C>(
    client: C,
    app: TcpStream,
    pod: Arc<Pod>,
    target: HttpTarget,
    caller: Caller,
    ctx: Arc<ProxyContext>,
    stop: impl Future<Output = ()>,
) where
    C: Read + Write + Unpin + Send + 'static,
{
    let http2 = matches!(target.app_protocol, AppProtocol::Http2 | AppProtocol::Grpc);
    let sender = match AppSender::connect(app, http2).await {
        Ok(sender) => sender,
        Err(error) => return debug!(%error, "no HTTP connection to the app"),
    };
    let settings = ctx.settings();
    let server = Arc::new(Server {
        sender,
        labels: labels(&pod, &target, &caller, &ctx),
        ctx,
    });
    let service = service_fn(move |req| {
        let server = server.clone();
        async move { Ok::<_, Infallible>(server.handle(req).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        .max_buf_size(settings.max_header_bytes);
    builder.http2().timer(TokioTimer::new());
    let connection = builder.serve_connection(client, service);
    tokio::select! {
        served = connection => if let Err(error) = served {
            debug!(%error, "inbound HTTP connection ended");
        },
        () = stop => debug!("inbound HTTP connection revoked"),
    }
}

fn labels(pod: &Pod, target: &HttpTarget, caller: &Caller, ctx: &ProxyContext) -> RequestLabels {
    let service = &target.service;
    let mutual_tls = caller.principal.is_some();
    RequestLabels {
        reporter: "destination",
        source_workload: (caller.workload.as_ref())
            .map_or_else(|| "unknown".into(), |w| w.name.clone()),
        source_workload_namespace: (caller.workload.as_ref())
            .map_or_else(|| "unknown".into(), |w| w.namespace.clone()),
        source_principal: caller.principal.clone().unwrap_or_else(|| "unknown".into()),
        destination_workload: pod.workload.name.clone(),
        destination_workload_namespace: pod.workload.namespace.clone(),
        destination_principal: (ctx.principal_of(&pod.workload).filter(|_| mutual_tls))
            .unwrap_or_else(|| "unknown".into()),
        destination_service: service.host(),
        destination_service_name: service.key.name.clone(),
        destination_service_namespace: service.key.namespace.clone(),
        connection_security_policy: if mutual_tls { "mutual_tls" } else { "none" },
        ..RequestLabels::unknown()
    }
}

struct Server {
    sender: AppSender,
    labels: RequestLabels,
    ctx: Arc<ProxyContext>,
}

impl Server {
    async fn handle(&self, req: Request<Incoming>) -> Response<Observed> {
        let version = req.version();
        let (mut parts, body) = req.into_parts();
        headers::strip_hop_by_hop(&mut parts.headers);
        let exchange = Exchange::begin(&parts, version, self.labels.clone());
        let sink = &self.ctx.http.sink;
        let body = Counted {
            inner: body,
            count: exchange.request_bytes.clone(),
        };
        let mut req = Request::from_parts(parts, body.map_err(Into::into).boxed());
        self.sender.prepare(&mut req);
        match self.sender.send(req).await {
            Ok(response) => observe::respond(sink, exchange, response, version),
            Err(error) => {
                debug!(%error, "the app's HTTP connection failed");
                observe::local(sink, exchange, StatusCode::SERVICE_UNAVAILABLE, "UC")
            }
        }
    }
}

/// The one HTTP connection to the app: HTTP/1.1 takes one request at a time (an HTTP/2
/// client's concurrent requests wait their turn), HTTP/2 multiplexes.
enum AppSender {
    Http1(Mutex<http1::SendRequest<UpstreamBody>>),
    Http2(http2::SendRequest<UpstreamBody>),
}

impl AppSender {
    async fn connect(app: TcpStream, http2: bool) -> hyper::Result<Self> {
        let io = TokioIo::new(app);
        if http2 {
            let (sender, connection) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .handshake(io)
                .await?;
            tokio::spawn(connection);
            Ok(AppSender::Http2(sender))
        } else {
            let (sender, connection) = http1::handshake(io).await?;
            tokio::spawn(connection);
            Ok(AppSender::Http1(Mutex::new(sender)))
        }
    }

    /// HTTP/1 needs a `Host` and an origin-form target; HTTP/2 an absolute URI (whose
    /// authority becomes `:authority`) and no `Host`.
    fn prepare(&self, req: &mut Request<UpstreamBody>) {
        let authority = (req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok()))
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()));
        let path = (req.uri().path_and_query()).map_or_else(|| "/".to_owned(), |p| p.to_string());
        match self {
            AppSender::Http1(_) => {
                *req.version_mut() = Version::HTTP_11;
                if let Some(value) = authority
                    .as_deref()
                    .and_then(|a| HeaderValue::from_str(a).ok())
                {
                    req.headers_mut().insert(header::HOST, value);
                }
                *req.uri_mut() = path.parse().unwrap_or_default();
            }
            AppSender::Http2(_) => {
                // `:authority` only: a `Host` beside it is an error to HTTP/2 servers.
                req.headers_mut().remove(header::HOST);
                *req.version_mut() = Version::HTTP_2;
                let uri = Uri::builder()
                    .scheme("http")
                    .authority(authority.unwrap_or_else(|| "localhost".into()))
                    .path_and_query(path)
                    .build();
                if let Ok(uri) = uri {
                    *req.uri_mut() = uri;
                }
            }
        }
    }

    async fn send(&self, req: Request<UpstreamBody>) -> hyper::Result<Response<Incoming>> {
        match self {
            AppSender::Http1(sender) => {
                let mut sender = sender.lock().await;
                sender.ready().await?;
                sender.send_request(req).await
            }
            AppSender::Http2(sender) => sender.clone().send_request(req).await,
        }
    }
}
