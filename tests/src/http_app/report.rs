//! The one-line JSON reports `sluice-httpapp` prints, and the `/echo` body its server
//! answers.
use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What `serve` answers on `/echo`: the request as the server saw it.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct EchoInfo {
    pub id: String,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// The request URI's authority (HTTP/2's `:authority`; HTTP/1.1 has `host` in `headers`).
    pub authority: Option<String>,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Lower-case names; a repeated header's values joined by `, `.
    pub headers: BTreeMap<String, String>,
    pub body_bytes: u64,
    /// The TCP peer the server accepted.
    pub peer: String,
}

/// One request of a `load` run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct RequestResult {
    /// The response status; `None` when the request failed (see `error`).
    pub status: Option<u16>,
    pub error: Option<String>,
    /// The `x-served-by` response header.
    pub served_by: Option<String>,
    /// The `x-attempt` response header (`/fail-then`).
    pub attempt: Option<u32>,
    /// From the moment the request started (a connect included when one was needed) to the
    /// end of the response body.
    pub latency_us: u64,
    /// The response body as text, with `--bodies`.
    pub body: Option<String>,
    /// Which connection the client sent it on, counted from 0 in the order they were
    /// opened; `None` when none could be opened.
    pub connection: Option<u64>,
}

impl RequestResult {
    /// The `/echo` body (needs [`LoadOpts::bodies`]).
    pub fn echo(&self) -> Result<EchoInfo> {
        let body = self
            .body
            .as_deref()
            .context("no body recorded (use --bodies)")?;
        serde_json::from_str(body).with_context(|| format!("parsing echo body {body:?}"))
    }
}

/// A `load` run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct LoadReport {
    pub requests: Vec<RequestResult>,
    pub by_status: BTreeMap<u16, u64>,
    pub by_served_by: BTreeMap<String, u64>,
    /// Requests that got no response.
    pub errors: u64,
    /// Connections the client opened (reconnects included).
    pub connections: u64,
    /// Latency percentiles of the requests that got a response (0 when none did).
    pub p50_us: u64,
    pub p99_us: u64,
}

/// A `grpc-call` run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct GrpcReport {
    /// Every call ended with status 0.
    pub ok: bool,
    /// Calls by final gRPC status code (0 = OK).
    pub grpc_statuses: BTreeMap<i32, u64>,
    /// Reply messages (unary replies or stream items).
    pub messages_received: u64,
    /// Unary replies by the server's `served_by`.
    pub by_served_by: BTreeMap<String, u64>,
    /// The connect error, or the first failing call's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A `banner-dial` run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct BannerReport {
    /// A whole banner line arrived.
    pub ok: bool,
    /// The first line, without its line end.
    pub banner: Option<String>,
    /// From `connect()` returning to the first byte received.
    pub first_byte_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A `tls-dial` run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct TlsReport {
    /// The handshake succeeded and every byte came back unchanged.
    pub ok: bool,
    pub bytes_echoed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A `raw` run.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct RawReport {
    /// The reply's first line (without its line end); `None` when nothing came back.
    pub status_line: Option<String>,
    /// The whole reply as text (at most 64 KiB).
    pub reply: String,
    /// From connect to the reply's end (close or timeout).
    pub elapsed_ms: u64,
    /// The peer closed (FIN or reset) rather than the read timing out.
    pub closed_by_peer: bool,
    /// It was a reset.
    pub reset: bool,
    pub bytes_sent: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}
