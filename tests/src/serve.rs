//! The accept loop of the test bed's in-process HTTP servers (the fake API server, the OTLP
//! receiver): HTTP/1.1 and HTTP/2 on one listener until told to stop.

use std::convert::Infallible;
use std::future::Future;
use std::net::TcpListener;

use hyper::body::{Body, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::sync::oneshot;

/// Serves `listener` with `handle` until `stop` fires or its sender goes. Returning leaves
/// the connection tasks to the runtime, whose drop ends them, as a server going away does;
/// `what` names the server in the one error it can print.
pub async fn until_stopped<H, F, B>(
    what: &str,
    listener: TcpListener,
    handle: H,
    mut stop: oneshot::Receiver<()>,
) where
    H: Fn(Request<Incoming>) -> F + Clone + Send + 'static,
    F: Future<Output = Result<Response<B>, Infallible>> + Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return eprintln!("sluice-tests: {what}: {e}"),
    };
    loop {
        let conn = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => conn,
                Err(_) => continue,
            },
        };
        let service = hyper::service::service_fn(handle.clone());
        tokio::spawn(async move {
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(conn), service)
                .await;
        });
    }
}
