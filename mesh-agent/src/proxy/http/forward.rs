//! One request: route it, apply the service's limits, send it to an endpoint (again, within
//! the retry policy and budget, when that fails), and answer the client.
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{
    Request, Response, StatusCode, Uri, Version,
    body::{Body, Incoming},
    header::{self, HeaderValue},
    http::request::Parts,
};
use tracing::debug;

use super::{
    backends::{BackendSet, EndpointState},
    client::UpstreamBody,
    headers,
    observe::{self, Counted, Exchange, Observed},
    retry,
    route::{self, Selected},
};
use crate::{
    config::route::HttpRouteRetry,
    metrics::http::RequestLabels,
    proxy::{ProxyContext, pod::Pod},
    state::RouteRule,
};

/// Bodies up to this size are kept so the request can be sent again.
const MAX_BUFFERED_BODY: u64 = 64 * 1024;
/// Retry backoff when the route gives none, and the cap on its growth.
const DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// The client side of a connection the proxy serves HTTP on.
pub struct Downstream {
    pub pod: Arc<Pod>,
    /// The service address the app dialled.
    pub dst: SocketAddr,
    pub version: Version,
}

pub async fn handle(
    req: Request<Incoming>,
    down: Arc<Downstream>,
    ctx: Arc<ProxyContext>,
) -> Result<Response<Observed>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let mut rng = fastrand::Rng::new();
    let mut exchange = exchange(&mut parts, &down, &ctx, &mut rng);
    let body = Counted {
        inner: body,
        count: exchange.request_bytes.clone(),
    };
    let Some(frontend) = ctx.services().frontend(down.dst).cloned() else {
        return Ok(observe::local(
            &ctx.http.sink,
            exchange,
            StatusCode::SERVICE_UNAVAILABLE,
            "NR",
        ));
    };
    let (service, port, rule) = match route::select(&frontend, &parts, &mut rng) {
        Selected::Service => (&frontend.service, frontend.port.port, None),
        Selected::Rule(rule, backend) => {
            debug!(route = %rule.route, backend = %backend.service.key, "routed");
            (&backend.service, backend.port, Some(rule))
        }
        Selected::NoRoute => {
            return Ok(observe::local(
                &ctx.http.sink,
                exchange,
                StatusCode::NOT_FOUND,
                "NR",
            ));
        }
    };
    let set = ctx.http.backends.get(service, port, down.dst.is_ipv6());
    let labels = &mut exchange.labels;
    labels.destination_service.clone_from(&set.host);
    labels
        .destination_service_name
        .clone_from(&set.service.key.name);
    labels
        .destination_service_namespace
        .clone_from(&set.service.key.namespace);
    if !set.admit(Instant::now()) {
        ctx.metrics.http.rate_limited(&set.host);
        return Ok(observe::local(
            &ctx.http.sink,
            exchange,
            StatusCode::TOO_MANY_REQUESTS,
            "RL",
        ));
    }
    match set.pending_permit() {
        Ok(permit) => exchange.permit = permit,
        Err(pending) => {
            debug!(service = %set.host, pending, "pending-request cap reached");
            ctx.metrics.http.pending_overflow(&set.host);
            return Ok(observe::local(
                &ctx.http.sink,
                exchange,
                StatusCode::SERVICE_UNAVAILABLE,
                "UO",
            ));
        }
    }
    let retry = rule.and_then(|r| r.retry.as_ref());
    let body = RequestBody::new(body, retry.is_some()).await;
    let upstream_h2 = upstream_is_h2(&frontend.port, down.version);
    let attempts = Attempts {
        ctx: &ctx,
        down: &down,
        set: &set,
        rule,
        retry,
        parts,
        body,
        http2: upstream_h2,
    };
    let request_timeout = rule.and_then(|r| r.request_timeout);
    let outcome = match request_timeout {
        Some(limit) => tokio::time::timeout(limit, attempts.run(&mut rng))
            .await
            .unwrap_or(Err(Failure::Timeout)),
        None => attempts.run(&mut rng).await,
    };
    Ok(match outcome {
        Ok((response, endpoint, sent)) => {
            exchange.upstream_service_time = Some(sent.elapsed());
            describe_endpoint(&mut exchange, &ctx, &endpoint);
            observe::respond(&ctx.http.sink, exchange, response, down.version)
        }
        Err(failure) => {
            let (status, flags) = failure.status();
            observe::local(&ctx.http.sink, exchange, status, flags)
        }
    })
}

/// HTTP/2 upstream when the port says so (`http2`, `grpc`), HTTP/1.1 when it says `http`,
/// else what the client speaks.
fn upstream_is_h2(port: &crate::config::service::ServicePort, client: Version) -> bool {
    use crate::config::service::AppProtocol;
    match port.app_protocol {
        Some(AppProtocol::Http2 | AppProtocol::Grpc) => true,
        Some(AppProtocol::Http) => false,
        _ => client == Version::HTTP_2,
    }
}

enum Failure {
    NoHealthyEndpoint,
    Connect,
    Reset,
    Timeout,
}

impl Failure {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            Failure::NoHealthyEndpoint => (StatusCode::SERVICE_UNAVAILABLE, "UH"),
            Failure::Connect => (StatusCode::SERVICE_UNAVAILABLE, "UF"),
            Failure::Reset => (StatusCode::SERVICE_UNAVAILABLE, "UC"),
            Failure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "UT"),
        }
    }
}

/// A request body kept whole (it can be sent again) or passed through as it streams.
enum RequestBody {
    Buffered(Bytes),
    Streaming(Option<Counted<Incoming>>),
}

impl RequestBody {
    /// Keeps the body when retries are possible and it is known to be small.
    async fn new(body: Counted<Incoming>, retryable: bool) -> Self {
        let small = body
            .size_hint()
            .exact()
            .is_some_and(|n| n <= MAX_BUFFERED_BODY);
        if !(retryable && small) {
            return RequestBody::Streaming(Some(body));
        }
        match body.collect().await {
            Ok(collected) => RequestBody::Buffered(collected.to_bytes()),
            Err(_) => RequestBody::Buffered(Bytes::new()),
        }
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered(_))
    }

    /// The body for the next attempt; `None` once a streamed body has been sent.
    fn take(&mut self) -> Option<UpstreamBody> {
        match self {
            RequestBody::Buffered(bytes) => Some(
                Full::new(bytes.clone())
                    .map_err(|never| match never {})
                    .boxed(),
            ),
            RequestBody::Streaming(body) => Some(body.take()?.map_err(Into::into).boxed()),
        }
    }
}

struct Attempts<'a> {
    ctx: &'a Arc<ProxyContext>,
    down: &'a Downstream,
    set: &'a BackendSet,
    rule: Option<&'a RouteRule>,
    retry: Option<&'a HttpRouteRetry>,
    parts: Parts,
    body: RequestBody,
    http2: bool,
}

type Answered = (Response<Incoming>, Arc<EndpointState>, Instant);

impl Attempts<'_> {
    async fn run(mut self, rng: &mut fastrand::Rng) -> Result<Answered, Failure> {
        let upstream = (self.ctx.http.clients).get(&self.down.pod, self.ctx, self.http2);
        let attempt_timeout = self.rule.and_then(|r| r.attempt_timeout);
        self.set.budget.deposit(Instant::now());
        let mut attempt = 1;
        loop {
            let endpoint =
                (self.set.pick(rng, Instant::now())).ok_or(Failure::NoHealthyEndpoint)?;
            let body = self.body.take().ok_or(Failure::Reset)?;
            let req = self.upstream_request(body);
            let sent = Instant::now();
            let in_flight = endpoint.load.start(sent);
            let call = upstream.send(endpoint.addr, req);
            let result = match attempt_timeout {
                Some(limit) => tokio::time::timeout(limit, call).await.map_err(|_| ()),
                None => Ok(call.await),
            };
            let now = Instant::now();
            let (failure, retryable) = match result {
                Ok(Ok(response)) => {
                    in_flight.finish(now);
                    let status = response.status();
                    self.record(&endpoint, !status.is_server_error(), now);
                    let listed = self
                        .retry
                        .is_some_and(|r| r.codes.contains(&status.as_u16()));
                    if !(listed && self.may_retry(attempt, now)) {
                        return Ok((response, endpoint, sent));
                    }
                    debug!(%status, attempt, endpoint = %endpoint.addr, "retrying");
                    attempt += 1;
                    self.backoff(attempt, rng).await;
                    continue;
                }
                Ok(Err(error)) => {
                    drop(in_flight);
                    self.record(&endpoint, false, now);
                    debug!(%error, endpoint = %endpoint.addr, "upstream request failed");
                    if error.is_connect() {
                        (Failure::Connect, true)
                    } else {
                        (Failure::Reset, false)
                    }
                }
                Err(()) => {
                    drop(in_flight);
                    self.record(&endpoint, false, now);
                    (
                        Failure::Timeout,
                        retry::idempotent(self.parts.method.as_str()),
                    )
                }
            };
            if !(retryable && self.retry.is_some() && self.may_retry(attempt, now)) {
                return Err(failure);
            }
            attempt += 1;
            self.backoff(attempt, rng).await;
        }
    }

    fn record(&self, endpoint: &EndpointState, success: bool, now: Instant) {
        if let Some(times) = endpoint.record(success, now) {
            let (endpoint, service) = (endpoint.addr, &self.set.host);
            tracing::info!(%endpoint, %service, times, "endpoint ejected");
            self.ctx.metrics.http.ejected(&self.set.host);
        }
    }

    /// Another attempt is allowed by the route, the body and the budget.
    fn may_retry(&self, attempt: u32, now: Instant) -> bool {
        let allowed = self.retry.map_or(0, |r| r.attempts.unwrap_or(1));
        if attempt > allowed || !self.body.replayable() {
            return false;
        }
        if !self.set.budget.try_withdraw(now) {
            self.ctx.metrics.http.budget_exhausted(&self.set.host);
            return false;
        }
        self.ctx.metrics.http.retried(&self.set.host);
        true
    }

    async fn backoff(&self, attempt: u32, rng: &mut fastrand::Rng) {
        let base = self
            .retry
            .and_then(|r| r.backoff)
            .unwrap_or(DEFAULT_BACKOFF);
        tokio::time::sleep(retry::backoff(
            attempt - 1,
            base,
            MAX_BACKOFF.max(base),
            rng,
        ))
        .await;
    }

    /// The request as it goes upstream: HTTP/1.1 with the client's `Host`, HTTP/2 with the
    /// client's authority as `:authority` and no `Host` (RFC 9113 §8.3.1).
    fn upstream_request(&mut self, body: UpstreamBody) -> Request<UpstreamBody> {
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        // A body that cannot be sent again means this is the only attempt: no copy needed.
        *req.headers_mut() = if self.body.replayable() {
            self.parts.headers.clone()
        } else {
            std::mem::take(&mut self.parts.headers)
        };
        let path = (self.parts.uri.path_and_query()).map_or("/", |p| p.as_str());
        if self.http2 {
            *req.version_mut() = Version::HTTP_2;
            let host = req.headers_mut().remove(header::HOST);
            let authority = (host.as_ref().and_then(|h| h.to_str().ok()))
                .map(str::to_owned)
                .or_else(|| self.parts.uri.authority().map(|a| a.to_string()))
                .unwrap_or_else(|| self.down.dst.to_string());
            let uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path);
            *req.uri_mut() = uri.build().unwrap_or_default();
        } else {
            *req.version_mut() = Version::HTTP_11;
            *req.uri_mut() = path.parse().unwrap_or_default();
        }
        req
    }
}

/// The exchange record for a request, and the request made ready to go upstream: a `Host`
/// for HTTP/1 upstreams, no hop-by-hop headers, a request id and trace context.
fn exchange(
    parts: &mut Parts,
    down: &Downstream,
    ctx: &ProxyContext,
    rng: &mut fastrand::Rng,
) -> Exchange {
    if !parts.headers.contains_key(header::HOST) {
        let authority =
            (parts.uri.authority()).map_or_else(|| down.dst.to_string(), |a| a.to_string());
        if let Ok(value) = HeaderValue::from_str(&authority) {
            parts.headers.insert(header::HOST, value);
        }
    }
    headers::strip_hop_by_hop(&mut parts.headers);
    let sampling = ctx.http.sink.spans.sampling_rate();
    let (_, trace) = headers::tag(&mut parts.headers, rng, sampling);
    let w = &down.pod.workload;
    let labels = RequestLabels {
        reporter: "source",
        source_workload: w.name.clone(),
        source_workload_namespace: w.namespace.clone(),
        source_principal: ctx.principal_of(w).unwrap_or_else(|| "unknown".into()),
        destination_service: down.dst.to_string(),
        ..RequestLabels::unknown()
    };
    let mut exchange = Exchange::begin(parts, down.version, labels);
    exchange.trace = Some(trace);
    exchange
}

/// Names the endpoint that answered in the record.
fn describe_endpoint(exchange: &mut Exchange, ctx: &ProxyContext, endpoint: &EndpointState) {
    exchange.upstream_host = Some(endpoint.addr.to_string());
    let Some(w) = &endpoint.workload else {
        return;
    };
    let labels = &mut exchange.labels;
    labels.destination_workload.clone_from(&w.name);
    labels
        .destination_workload_namespace
        .clone_from(&w.namespace);
    if w.enrolled
        && let Some(principal) = ctx.principal_of(w)
    {
        labels.destination_principal = principal;
        labels.connection_security_policy = "mutual_tls";
    }
}
