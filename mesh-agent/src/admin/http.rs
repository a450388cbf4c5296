//! A minimal HTTP/1.1 server for the node endpoints: synchronous handlers over in-memory
//! state, so no framework is needed.
use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Method, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tracing::{debug, info};

pub struct Response {
    status: StatusCode,
    content_type: &'static str,
    body: String,
}

impl Response {
    pub fn text(status: StatusCode, body: impl Into<String>) -> Self {
        Self {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }

    pub fn json(value: &serde_json::Value) -> Self {
        let body = serde_json::to_string_pretty(value)
            .unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"));
        Self {
            status: StatusCode::OK,
            content_type: "application/json",
            body: body + "\n",
        }
    }

    pub fn not_found() -> Self {
        Self::text(StatusCode::NOT_FOUND, "not found\n")
    }

    pub fn with_type(mut self, content_type: &'static str) -> Self {
        self.content_type = content_type;
        self
    }
}

/// Binds `addr` now (so a taken port fails start-up) and serves `handler` in the background.
pub async fn serve<F>(addr: SocketAddr, handler: F) -> std::io::Result<()>
where
    F: Fn(&Method, &str, Option<&str>) -> Response + Send + Sync + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("binding {addr}: {e}")))?;
    info!(%addr, "serving");
    let handler = Arc::new(handler);
    tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(err) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    debug!(%err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handler = handler.clone();
                    async move {
                        let r = handler(req.method(), req.uri().path(), req.uri().query());
                        let response = hyper::Response::builder()
                            .status(r.status)
                            .header("content-type", r.content_type)
                            .body(Full::new(Bytes::from(r.body)))
                            .unwrap_or_else(|_| hyper::Response::new(Full::new(Bytes::new())));
                        Ok::<_, Infallible>(response)
                    }
                });
                if let Err(err) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(%err, "admin connection error");
                }
            });
        }
    });
    Ok(())
}
