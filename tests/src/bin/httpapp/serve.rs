//! `serve`: one HTTP server for both HTTP/1.1 and HTTP/2 prior knowledge (h2c) on the same
//! port, as an L7 proxy's upstream must expect either. Its paths make the behaviours a
//! proxy reacts to (error codes, failures that stop after a few retries, slow and silent
//! answers), and every response says which server it came from (`x-served-by`).

use crate::args::{Args, Fail, accept, listen};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderName, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::http_app::EchoInfo;

/// What every connection of one server shares.
struct State {
    id: String,
    /// `--delay-ms`: added before every response.
    delay: Duration,
    /// `/fail-then` requests seen so far, by `x-test-key`.
    attempts: Mutex<HashMap<String, u32>>,
}

pub async fn run(raw: &[String]) -> Result<(), Fail> {
    let args = Args::parse(raw, &["--port", "--id", "--delay-ms"], &["--ipv6"])?;
    let state = Arc::new(State {
        id: args.required("--id")?.to_string(),
        delay: Duration::from_millis(args.num("--delay-ms", 0)?),
        attempts: Mutex::default(),
    });
    let listener = listen(&args).await?;
    loop {
        let (stream, peer) = accept(&listener).await;
        let state = state.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(state.answer(req, peer).await) }
            });
            let conn = auto::Builder::new(TokioExecutor::new());
            if let Err(e) = conn.serve_connection(TokioIo::new(stream), svc).await {
                eprintln!("connection from {peer}: {}", crate::args::chain(&*e));
            }
        });
    }
}

impl State {
    async fn answer(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
        let key = req
            .headers()
            .get("x-test-key")
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
        println!(
            "REQ {} {} key={}",
            req.method(),
            req.uri().path(),
            key.as_deref().unwrap_or("-")
        );
        let (parts, body) = req.into_parts();
        // The whole body first, so a keep-alive connection stays usable after any answer.
        let body_bytes = match body.collect().await {
            Ok(b) => b.to_bytes().len() as u64,
            Err(e) => return self.reply(StatusCode::BAD_REQUEST, &[], format!("body: {e}\n")),
        };
        let path = parts.uri.path().to_string();
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        tokio::time::sleep(self.delay).await;
        match segments.as_slice() {
            ["echo"] => {
                let mut headers = BTreeMap::<String, String>::new();
                for (name, value) in &parts.headers {
                    let value = String::from_utf8_lossy(value.as_bytes());
                    headers
                        .entry(name.as_str().to_string())
                        .and_modify(|v| *v = format!("{v}, {value}"))
                        .or_insert_with(|| value.into_owned());
                }
                let info = EchoInfo {
                    id: self.id.clone(),
                    method: parts.method.to_string(),
                    path: path.clone(),
                    query: parts.uri.query().map(String::from),
                    authority: parts.uri.authority().map(|a| a.to_string()),
                    version: format!("{:?}", parts.version),
                    headers,
                    body_bytes,
                    peer: peer.to_string(),
                };
                let json = serde_json::to_string(&info).unwrap_or_default();
                self.reply(StatusCode::OK, &[], json)
            }
            ["status", code] => match status(code) {
                Some(s) => self.reply(s, &[], format!("status {code}\n")),
                None => self.reply(StatusCode::BAD_REQUEST, &[], "bad status\n".into()),
            },
            ["fail-then", n, code] => {
                let (Ok(n), Some(fail)) = (n.parse::<u32>(), status(code)) else {
                    return self.reply(StatusCode::BAD_REQUEST, &[], "bad fail-then\n".into());
                };
                let attempt = {
                    let mut seen = self.attempts.lock().unwrap_or_else(|e| e.into_inner());
                    let k = seen.entry(key.unwrap_or_default()).or_default();
                    *k += 1;
                    *k
                };
                let s = if attempt <= n { fail } else { StatusCode::OK };
                let attempt_header = ("x-attempt", attempt.to_string());
                self.reply(s, &[attempt_header], format!("attempt {attempt}\n"))
            }
            ["delay", ms] => match ms.parse() {
                Ok(ms) => {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    self.reply(StatusCode::OK, &[], format!("delayed {ms} ms\n"))
                }
                Err(_) => self.reply(StatusCode::BAD_REQUEST, &[], "bad delay\n".into()),
            },
            // Dropped with the connection when the client (or the proxy) gives up.
            ["hang"] => std::future::pending().await,
            _ => self.reply(StatusCode::OK, &[], format!("{}\n", self.id)),
        }
    }

    fn reply(
        &self,
        status: StatusCode,
        headers: &[(&'static str, String)],
        body: String,
    ) -> Response<Full<Bytes>> {
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() = status;
        let served_by = std::iter::once(("x-served-by", self.id.clone()));
        for (name, value) in served_by.chain(headers.iter().cloned()) {
            if let Ok(v) = HeaderValue::from_str(&value) {
                resp.headers_mut().insert(HeaderName::from_static(name), v);
            }
        }
        resp
    }
}

/// A final status code from a path segment (1xx are not final answers).
fn status(code: &str) -> Option<StatusCode> {
    code.parse::<u16>()
        .ok()
        .filter(|c| (200..=599).contains(c))
        .and_then(|c| StatusCode::from_u16(c).ok())
}
