//! `load ADDR [--http2] [--requests N] [--concurrency C] [--method M] [--path P]
//! [--header 'k: v']... [--body-bytes B] [--chunked] [--rate R/s] [--timeout-ms T] [--bodies]`
//!
//! An HTTP client on hyper's connection API rather than a pooled client, so the test knows
//! exactly which connections exist: HTTP/1.1 runs C workers on one keep-alive connection
//! each (a new one when the last closed), `--http2` multiplexes C streams over one
//! prior-knowledge connection. It connects to ADDR through the ordinary socket API, so a
//! service address the proxy captures works as a real app's would. Host (`:authority` on
//! HTTP/2) is ADDR unless a `host` header is given.

use crate::args::{Args, Fail, chain, report};
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Body, Frame};
use hyper::client::conn::{http1, http2};
use hyper::header::{HOST, HeaderMap, HeaderName, HeaderValue, TRANSFER_ENCODING};
use hyper::{Method, Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tests::http_app::{LoadReport, RequestResult};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

type ReqBody = BoxBody<Bytes, Infallible>;

/// `--chunked` bodies come in this many pieces, this far apart.
const CHUNKS: usize = 4;
const CHUNK_PAUSE: Duration = Duration::from_millis(20);

/// The run, as parsed.
struct Plan {
    addr: SocketAddr,
    http2: bool,
    requests: usize,
    concurrency: usize,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body_bytes: usize,
    chunked: bool,
    interval: Option<Duration>,
    timeout: Duration,
    bodies: bool,
    /// Connections opened so far; also numbers them.
    opened: AtomicU64,
}

pub async fn run(raw: &[String]) -> Result<(), Fail> {
    let args = Args::parse(
        raw,
        &[
            "--requests",
            "--concurrency",
            "--method",
            "--path",
            "--header",
            "--body-bytes",
            "--rate",
            "--timeout-ms",
        ],
        &["--http2", "--chunked", "--bodies"],
    )?;
    let plan = Arc::new(Plan::new(&args)?);
    let next = Arc::new(AtomicUsize::new(0));
    let start = tokio::time::Instant::now();
    let h2 = Arc::new(Mutex::new(None));
    let workers: Vec<_> = (0..plan.concurrency.clamp(1, plan.requests.max(1)))
        .map(|_| {
            let (plan, next, h2) = (plan.clone(), next.clone(), h2.clone());
            tokio::spawn(async move {
                let mut conn = if plan.http2 {
                    Conn::H2(h2)
                } else {
                    Conn::H1(None)
                };
                let mut done = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= plan.requests {
                        return done;
                    }
                    if let Some(every) = plan.interval {
                        tokio::time::sleep_until(start + every * i as u32).await;
                    }
                    done.push((i, plan.one(&mut conn).await));
                }
            })
        })
        .collect();
    let mut results = vec![RequestResult::default(); plan.requests];
    for w in workers {
        let done = w
            .await
            .map_err(|e| Fail::Run(format!("worker failed: {e}")))?;
        for (i, r) in done {
            results[i] = r;
        }
    }
    report(&summarize(results, plan.opened.load(Ordering::Relaxed)))
}

/// A connection with its number.
type Numbered<S> = (u64, S);

/// A worker's way to the server: its own HTTP/1.1 connection, or the shared HTTP/2 one.
enum Conn {
    H1(Option<Numbered<http1::SendRequest<ReqBody>>>),
    H2(Arc<Mutex<Option<Numbered<http2::SendRequest<ReqBody>>>>>),
}

impl Plan {
    fn new(args: &Args) -> Result<Plan, Fail> {
        let addr = args.addr()?;
        let usage = |what: &str, v: &str| Fail::Usage(format!("bad {what}: {v}"));
        let mut headers = HeaderMap::new();
        for h in args.all("--header") {
            let (k, v) = h.split_once(':').ok_or_else(|| usage("--header", h))?;
            let name =
                HeaderName::from_bytes(k.trim().as_bytes()).map_err(|_| usage("header", k))?;
            let value = HeaderValue::from_str(v.trim()).map_err(|_| usage("header", v))?;
            headers.append(name, value);
        }
        let http2 = args.flag("--http2");
        let authority = match headers.get(HOST) {
            Some(h) => String::from_utf8_lossy(h.as_bytes()).into_owned(),
            None => addr.to_string(),
        };
        let path = args.opt("--path").unwrap_or("/");
        // HTTP/2 carries the authority in the URI; HTTP/1.1 in Host with an origin-form URI.
        let uri = if http2 {
            headers.remove(HOST);
            format!("http://{authority}{path}")
        } else {
            // hyper leaves out a body of unknown length on a GET unless told it is chunked.
            if args.flag("--chunked") && !headers.contains_key(TRANSFER_ENCODING) {
                headers.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
            }
            if !headers.contains_key(HOST) {
                let host =
                    HeaderValue::from_str(&authority).map_err(|_| usage("host", &authority))?;
                headers.insert(HOST, host);
            }
            path.to_string()
        };
        let method = args.opt("--method").unwrap_or("GET");
        let rate = args.opt("--rate").map(|r| r.trim_end_matches("/s"));
        let interval = match rate.map(|r| r.parse::<f64>()) {
            None => None,
            Some(Ok(r)) if r > 0.0 => Some(Duration::from_secs_f64(1.0 / r)),
            Some(_) => return Err(usage("--rate", rate.unwrap_or_default())),
        };
        Ok(Plan {
            addr,
            http2,
            requests: args.num("--requests", 1)?,
            concurrency: args.num("--concurrency", 1)?,
            method: Method::from_bytes(method.as_bytes()).map_err(|_| usage("method", method))?,
            uri: uri.parse().map_err(|_| usage("path", path))?,
            headers,
            body_bytes: args.num("--body-bytes", 0)?,
            chunked: args.flag("--chunked"),
            interval,
            timeout: Duration::from_millis(args.num("--timeout-ms", 5000)?),
            bodies: args.flag("--bodies"),
            opened: AtomicU64::new(0),
        })
    }

    /// One request, its connect included when the connection must be (re)made.
    async fn one(&self, conn: &mut Conn) -> RequestResult {
        let start = Instant::now();
        let mut r = RequestResult::default();
        let outcome = tokio::time::timeout(self.timeout, self.exchange(conn, &mut r)).await;
        let failure = match outcome {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(format!("timeout after {:?}", self.timeout)),
        };
        if let Some(e) = failure {
            r.error = Some(e);
            // The connection's state is unknown now: an HTTP/1.1 one is not reused.
            if let Conn::H1(c) = conn {
                *c = None;
            }
        }
        r.latency_us = start.elapsed().as_micros() as u64;
        r
    }

    async fn exchange(&self, conn: &mut Conn, r: &mut RequestResult) -> Result<(), String> {
        let mut req = Request::new(self.body());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        let resp = match conn {
            Conn::H1(slot) => {
                let ready = match slot {
                    Some((_, s)) => s.ready().await.is_ok(),
                    None => false,
                };
                if !ready {
                    *slot = Some(self.connect_h1().await?);
                }
                let (n, sender) = slot.as_mut().ok_or("no connection")?;
                r.connection = Some(*n);
                sender.send_request(req).await
            }
            Conn::H2(shared) => {
                let (n, mut sender) = {
                    let mut slot = shared.lock().await;
                    match slot.as_ref() {
                        Some((_, s)) if !s.is_closed() => {}
                        _ => *slot = Some(self.connect_h2().await?),
                    }
                    slot.clone().ok_or("no connection")?
                };
                r.connection = Some(n);
                sender.ready().await.map_err(|e| chain(&e))?;
                sender.send_request(req).await
            }
        }
        .map_err(|e| chain(&e))?;
        r.status = Some(resp.status().as_u16());
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        r.served_by = header("x-served-by");
        r.attempt = header("x-attempt").and_then(|a| a.parse().ok());
        let body = resp.into_body().collect().await.map_err(|e| {
            r.status = None;
            format!("reading the body: {}", chain(&e))
        })?;
        if self.bodies {
            r.body = Some(String::from_utf8_lossy(&body.to_bytes()).into_owned());
        }
        Ok(())
    }

    async fn tcp(&self) -> Result<Numbered<TokioIo<TcpStream>>, String> {
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok((
            self.opened.fetch_add(1, Ordering::Relaxed),
            TokioIo::new(tcp),
        ))
    }

    async fn connect_h1(&self) -> Result<Numbered<http1::SendRequest<ReqBody>>, String> {
        let (n, io) = self.tcp().await?;
        let (sender, conn) = http1::handshake(io).await.map_err(|e| chain(&e))?;
        tokio::spawn(conn);
        Ok((n, sender))
    }

    async fn connect_h2(&self) -> Result<Numbered<http2::SendRequest<ReqBody>>, String> {
        let (n, io) = self.tcp().await?;
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
            .await
            .map_err(|e| chain(&e))?;
        tokio::spawn(conn);
        Ok((n, sender))
    }

    fn body(&self) -> ReqBody {
        match (self.chunked, self.body_bytes) {
            (true, n) => Chunked {
                left: n,
                chunk: n.div_ceil(CHUNKS).max(1),
                pause: None,
            }
            .boxed(),
            (false, 0) => Empty::new().boxed(),
            (false, n) => Full::new(Bytes::from(vec![b'x'; n])).boxed(),
        }
    }
}

/// A body of unknown length (so HTTP/1.1 sends it chunked and HTTP/2 without
/// content-length) that arrives in pieces with pauses between them.
struct Chunked {
    left: usize,
    chunk: usize,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        let this = self.get_mut();
        if this.left == 0 {
            return Poll::Ready(None);
        }
        if let Some(pause) = this.pause.as_mut()
            && pause.as_mut().poll(cx).is_pending()
        {
            return Poll::Pending;
        }
        let n = this.chunk.min(this.left);
        this.left -= n;
        this.pause = Some(Box::pin(tokio::time::sleep(CHUNK_PAUSE)));
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![b'x'; n])))))
    }
}

fn summarize(requests: Vec<RequestResult>, connections: u64) -> LoadReport {
    let mut report = LoadReport {
        connections,
        ..Default::default()
    };
    let mut latencies = Vec::new();
    for r in &requests {
        match r.status {
            Some(s) => {
                *report.by_status.entry(s).or_default() += 1;
                latencies.push(r.latency_us);
            }
            None => report.errors += 1,
        }
        if let Some(id) = &r.served_by {
            *report.by_served_by.entry(id.clone()).or_default() += 1;
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| {
        let rank = (p * latencies.len() as f64).ceil() as usize;
        latencies.get(rank.saturating_sub(1)).copied().unwrap_or(0)
    };
    report.p50_us = pct(0.50);
    report.p99_us = pct(0.99);
    report.requests = requests;
    report
}
