//! The node's HTTP endpoints: admin (localhost: config dump, eBPF state, log level),
//! Prometheus metrics, and readiness. Each is a small router over [`http::serve`].
mod collector;
mod http;

pub use collector::RedirectCounters;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use hyper::{Method, StatusCode};
use tokio::sync::watch;

use self::http::Response;
use crate::{
    config::{Config, RedirectMode},
    identity::Identities,
    logging::LogControl,
    metrics::Metrics,
    redirect::router::Router,
};

/// What the endpoints read.
pub struct AdminState {
    pub config: watch::Receiver<Arc<Config>>,
    pub redirect: Arc<Router>,
    /// Why the node runs the mode it runs.
    pub redirect_reason: String,
    pub metrics: Arc<Metrics>,
    pub logs: Arc<LogControl>,
    pub ready: Arc<AtomicBool>,
    /// The captured pods as JSON (owned by the layer that enrolls them).
    pub pods: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Where the configuration comes from and how fresh it is.
    pub source: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Workload certificates; `None` with mTLS off.
    pub identities: Option<Arc<Identities>>,
}

/// Binds all three endpoints (failing at start if a port is taken) and serves them.
pub async fn serve(state: Arc<AdminState>) -> std::io::Result<()> {
    let config = state.config.borrow().clone();
    let s = state.clone();
    http::serve(config.admin_address, move |method, path, query| {
        admin(&s, method, path, query)
    })
    .await?;
    let s = state.clone();
    http::serve(config.metrics_address, move |_, path, _| match path {
        "/metrics" | "/stats/prometheus" => Response::text(StatusCode::OK, s.metrics.render())
            .with_type("text/plain; version=0.0.4; charset=utf-8"),
        _ => Response::not_found(),
    })
    .await?;
    let s = state;
    http::serve(config.readiness_address, move |_, path, _| match path {
        "/healthz/ready" if s.ready.load(Ordering::Relaxed) => {
            Response::text(StatusCode::OK, "ready\n")
        }
        "/healthz/ready" => Response::text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => Response::not_found(),
    })
    .await?;
    Ok(())
}

fn admin(state: &AdminState, method: &Method, path: &str, query: Option<&str>) -> Response {
    match (method, path) {
        (&Method::GET, "/") => Response::text(
            StatusCode::OK,
            "/config_dump     configuration in force and its source, redirect mode and why, captured pods\n\
             /debug/ebpf      eBPF steering: counters, enrollment and connection maps\n\
             /debug/redirect  every redirect mode running here\n\
             /logging         GET: current filter; POST ?level=<filter>: change it\n\
             /identity/rotate POST: reissue every workload certificate now\n",
        ),
        (&Method::GET, "/config_dump") => {
            let config = state.config.borrow().clone();
            Response::json(&serde_json::json!({
                "config": *config,
                "source": (state.source)(),
                "redirect": {
                    "nodeMode": state.redirect.node_mode(),
                    "reason": state.redirect_reason,
                    "running": state.redirect.modes().collect::<Vec<_>>(),
                },
                "capturedPods": (state.pods)(),
                "identity": state.identities.as_ref().map_or_else(
                    || serde_json::json!("off: no identity section, mTLS is not used"),
                    |ids| ids.dump(),
                ),
            }))
        }
        (&Method::POST, "/identity/rotate") => match &state.identities {
            Some(ids) => {
                ids.rotate_now();
                Response::json(&ids.dump())
            }
            None => Response::text(StatusCode::NOT_FOUND, "mTLS is off on this node\n"),
        },
        (&Method::GET, "/debug/ebpf") => match state.redirect.mode_dump(RedirectMode::Ebpf) {
            Some(dump) => Response::json(&dump),
            None => Response::text(
                StatusCode::NOT_FOUND,
                "eBPF steering is not running on this node\n",
            ),
        },
        (&Method::GET, "/debug/redirect") => Response::json(&state.redirect.debug_dump()),
        (&Method::GET, "/logging") => {
            Response::text(StatusCode::OK, format!("{}\n", state.logs.current()))
        }
        (&Method::POST, "/logging") => {
            let level = query
                .into_iter()
                .flat_map(|q| q.split('&'))
                .find_map(|kv| kv.strip_prefix("level="));
            match level {
                None => Response::text(
                    StatusCode::BAD_REQUEST,
                    "usage: POST /logging?level=<filter>\n",
                ),
                Some(level) => match state.logs.set(level) {
                    Ok(()) => Response::text(StatusCode::OK, format!("{level}\n")),
                    Err(err) => Response::text(StatusCode::BAD_REQUEST, format!("{err}\n")),
                },
            }
        }
        _ => Response::not_found(),
    }
}
