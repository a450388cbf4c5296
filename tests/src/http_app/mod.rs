//! `sluice-httpapp` from the test's side: starting its servers in a pod, running its clients
//! there and parsing their one-line JSON reports (the types in [`report`], which the app prints).
//!
//! The servers come back as [`Server`] (killed on drop); what they printed is read with
//! [`requests`] (`serve`: one `REQ` line per request), [`rpcs`] (`grpc-serve`), [`snis`]
//! (`tls-serve`) and [`banner_peers`] (`banner`).

use crate::pod::Pod;
use crate::proc::{Proc, Server};
use anyhow::{Context, Result, bail};
use serde::de::DeserializeOwned;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod report;

pub use report::*;

/// Options for `sluice-httpapp load`.
#[derive(Clone, Debug)]
pub struct LoadOpts {
    pub http2: bool,
    pub requests: usize,
    pub concurrency: usize,
    pub method: String,
    pub path: String,
    /// Sent with every request; a `host` header replaces the address as Host / `:authority`.
    pub headers: Vec<(String, String)>,
    pub body_bytes: u64,
    /// Stream the body in a few chunks with no content-length.
    pub chunked: bool,
    /// Requests per second over the whole run.
    pub rate: Option<f64>,
    pub timeout_ms: u64,
    /// Record each response body.
    pub bodies: bool,
}

impl Default for LoadOpts {
    fn default() -> Self {
        LoadOpts {
            http2: false,
            requests: 1,
            concurrency: 1,
            method: "GET".into(),
            path: "/echo".into(),
            headers: Vec::new(),
            body_bytes: 0,
            chunked: false,
            rate: None,
            timeout_ms: 5000,
            bodies: false,
        }
    }
}

impl LoadOpts {
    /// One GET of `path`.
    pub fn get(path: &str) -> Self {
        LoadOpts {
            path: path.into(),
            ..Default::default()
        }
    }

    pub fn http2(mut self) -> Self {
        self.http2 = true;
        self
    }

    /// `requests` requests, `concurrency` at a time.
    pub fn times(mut self, requests: usize, concurrency: usize) -> Self {
        self.requests = requests;
        self.concurrency = concurrency;
        self
    }

    pub fn method(mut self, method: &str) -> Self {
        self.method = method.into();
        self
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn body(mut self, bytes: u64) -> Self {
        self.body_bytes = bytes;
        self
    }

    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    pub fn rate(mut self, per_second: f64) -> Self {
        self.rate = Some(per_second);
        self
    }

    pub fn timeout_ms(mut self, ms: u64) -> Self {
        self.timeout_ms = ms;
        self
    }

    pub fn bodies(mut self) -> Self {
        self.bodies = true;
        self
    }

    fn args(&self, addr: SocketAddr) -> Vec<String> {
        let mut a = vec![
            "load".into(),
            addr.to_string(),
            "--requests".into(),
            self.requests.to_string(),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "--method".into(),
            self.method.clone(),
            "--path".into(),
            self.path.clone(),
            "--body-bytes".into(),
            self.body_bytes.to_string(),
            "--timeout-ms".into(),
            self.timeout_ms.to_string(),
        ];
        for (k, v) in &self.headers {
            a.extend(["--header".into(), format!("{k}: {v}")]);
        }
        if let Some(r) = self.rate {
            a.extend(["--rate".into(), format!("{r}/s")]);
        }
        for (on, flag) in [
            (self.http2, "--http2"),
            (self.chunked, "--chunked"),
            (self.bodies, "--bodies"),
        ] {
            if on {
                a.push(flag.into());
            }
        }
        a
    }

    /// How long the whole run may take: every round timing out, plus the rate's spacing.
    fn budget(&self) -> Duration {
        let rounds = self.requests.div_ceil(self.concurrency.max(1)).max(1) as u64;
        let paced = self
            .rate
            .map(|r| Duration::from_secs_f64(self.requests as f64 / r.max(0.001)))
            .unwrap_or_default();
        Duration::from_millis(self.timeout_ms.saturating_mul(rounds)) + paced + SLACK
    }
}

/// What a `grpc-call` does.
#[derive(Clone, Copy, Debug)]
pub enum GrpcCall {
    /// `n` unary `Say` calls; a non-zero `fail_code` asks the server to fail each with it.
    Unary { n: u32, fail_code: i32 },
    /// One server-streaming `Count` call of `n` items.
    Stream { n: u32 },
}

/// What `raw` sends and how.
#[derive(Clone, Debug)]
pub struct RawOpts {
    /// Sent as given, after `\r`, `\n`, `\t`, `\\` and `\xHH` escapes are interpreted.
    pub send: String,
    /// One byte every this many ms instead of all at once.
    pub trickle_ms: Option<u64>,
    /// How long to wait for the reply once writing ended.
    pub read_timeout_ms: u64,
}

impl RawOpts {
    pub fn new(send: &str) -> Self {
        RawOpts {
            send: send.into(),
            trickle_ms: None,
            read_timeout_ms: 5000,
        }
    }
}

/// Added to every client's budget: process start and a slow machine.
const SLACK: Duration = Duration::from_secs(10);

/// The `sluice-httpapp` binary: `SLUICE_HTTPAPP_BIN`, else next to `sluice-testapp` (both
/// are built by `cargo build -p tests`).
pub fn httpapp_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICE_HTTPAPP_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for d in [Some(dir.as_path()), dir.parent()].into_iter().flatten() {
        let candidate = d.join("sluice-httpapp");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "sluice-httpapp not found near {}; build it (cargo build -p tests) or set SLUICE_HTTPAPP_BIN",
        exe.display()
    )
}

/// Starts a server subcommand in the pod and waits for its `READY`.
fn start(pod: &Pod, port: u16, id: &str, args: &[&str], extra: &[&str]) -> Result<Server> {
    let mut cmd = pod.command(httpapp_bin()?)?;
    cmd.args(args)
        .args(["--port", &port.to_string()])
        .args(extra);
    let label = format!("{} {id} in {}", args.first().unwrap_or(&""), pod.name());
    let proc = Proc::spawn(&label, cmd)?;
    proc.wait_line(Duration::from_secs(10), |l| l.starts_with("READY "))?;
    Ok(Server {
        proc,
        id: id.into(),
        port,
    })
}

/// `serve`: HTTP/1.1 and h2c on `port`; `extra` e.g. `--ipv6`, `--delay-ms 300`.
pub fn serve_http(pod: &Pod, port: u16, id: &str, extra: &[&str]) -> Result<Server> {
    start(pod, port, id, &["serve", "--id", id], extra)
}

/// `grpc-serve`: the `sluice.test.Echo` service on `port`.
pub fn serve_grpc(pod: &Pod, port: u16, id: &str, extra: &[&str]) -> Result<Server> {
    start(pod, port, id, &["grpc-serve", "--id", id], extra)
}

/// `banner`: writes `text` and `\r\n` to each connection first, then echoes.
pub fn serve_banner(pod: &Pod, port: u16, text: &str, extra: &[&str]) -> Result<Server> {
    start(pod, port, text, &["banner", "--text", text], extra)
}

/// `tls-serve`: a TLS 1.3 echo with a self-signed certificate for `id`.
pub fn serve_tls(pod: &Pod, port: u16, id: &str, extra: &[&str]) -> Result<Server> {
    start(pod, port, id, &["tls-serve", "--id", id], extra)
}

/// Starts a client subcommand in the pod without waiting; see [`finish`].
pub fn spawn_client(pod: &Pod, args: &[String]) -> Result<Proc> {
    let mut cmd = pod.command(httpapp_bin()?)?;
    cmd.args(args);
    Proc::spawn(&format!("{} in {}", args.join(" "), pod.name()), cmd)
}

/// Waits up to `budget` for a client and parses its JSON report.
pub fn finish<T: DeserializeOwned>(mut proc: Proc, budget: Duration) -> Result<T> {
    let status = proc.wait(budget)?;
    let lines = proc.lines();
    let Some(line) = lines.iter().find(|l| l.starts_with('{')) else {
        bail!(
            "client ({status}) printed no report; stdout {lines:?}; stderr {}",
            proc.stderr()
        );
    };
    serde_json::from_str(line).with_context(|| format!("parsing report {line}"))
}

/// Starts `load` without waiting (for traffic that must run while the test changes
/// something); [`finish_load`] collects it.
pub fn spawn_http_load(pod: &Pod, addr: SocketAddr, opts: &LoadOpts) -> Result<Proc> {
    spawn_client(pod, &opts.args(addr))
}

pub fn finish_load(proc: Proc, opts: &LoadOpts) -> Result<LoadReport> {
    finish(proc, opts.budget())
}

/// Runs `load` against `addr` from the pod.
pub fn http_load(pod: &Pod, addr: SocketAddr, opts: &LoadOpts) -> Result<LoadReport> {
    finish_load(spawn_http_load(pod, addr, opts)?, opts)
}

/// Runs `grpc-call` against `addr` from the pod (5 s per call).
pub fn grpc_call(pod: &Pod, addr: SocketAddr, call: GrpcCall) -> Result<GrpcReport> {
    let mut args = vec!["grpc-call".to_string(), addr.to_string()];
    let calls = match call {
        GrpcCall::Unary { n, fail_code } => {
            args.extend(["--unary".into(), n.to_string()]);
            args.extend(["--fail-code".into(), fail_code.to_string()]);
            n
        }
        GrpcCall::Stream { n } => {
            args.extend(["--stream".into(), n.to_string()]);
            1
        }
    };
    let budget = Duration::from_secs(5) * (calls + 1) + SLACK;
    finish(spawn_client(pod, &args)?, budget)
}

/// Runs `banner-dial` against `addr` from the pod.
pub fn banner_dial(pod: &Pod, addr: SocketAddr, timeout_ms: u64) -> Result<BannerReport> {
    let args = [
        "banner-dial".into(),
        addr.to_string(),
        "--timeout-ms".into(),
        timeout_ms.to_string(),
    ];
    finish(
        spawn_client(pod, &args)?,
        Duration::from_millis(timeout_ms * 2) + SLACK,
    )
}

/// Runs `tls-dial` against `addr` from the pod: `bytes` echoed over TLS with SNI `sni`.
pub fn tls_dial(pod: &Pod, addr: SocketAddr, sni: &str, bytes: u64) -> Result<TlsReport> {
    let args = [
        "tls-dial".into(),
        addr.to_string(),
        "--sni".into(),
        sni.into(),
        "--bytes".into(),
        bytes.to_string(),
    ];
    finish(spawn_client(pod, &args)?, Duration::from_secs(10) + SLACK)
}

/// Runs `raw` against `addr` from the pod.
pub fn raw_send(pod: &Pod, addr: SocketAddr, opts: &RawOpts) -> Result<RawReport> {
    let mut args = vec![
        "raw".into(),
        addr.to_string(),
        "--send".into(),
        opts.send.clone(),
        "--read-timeout-ms".into(),
        opts.read_timeout_ms.to_string(),
    ];
    let mut budget = Duration::from_millis(opts.read_timeout_ms) + SLACK;
    if let Some(ms) = opts.trickle_ms {
        args.extend(["--trickle-ms".into(), ms.to_string()]);
        budget += Duration::from_millis(ms * opts.send.len() as u64);
    }
    finish(spawn_client(pod, &args)?, budget)
}

/// One request as `serve` logged it.
#[derive(Debug, Clone, PartialEq)]
pub struct ServedRequest {
    pub method: String,
    pub path: String,
    /// The `x-test-key` header.
    pub key: Option<String>,
}

/// Every request a `serve` process logged so far, in arrival order.
pub fn requests(server: &Server) -> Vec<ServedRequest> {
    server
        .proc
        .lines()
        .iter()
        .filter_map(|l| {
            let mut f = l.strip_prefix("REQ ")?.splitn(3, ' ');
            let (method, path, key) = (f.next()?, f.next()?, f.next()?.strip_prefix("key=")?);
            Some(ServedRequest {
                method: method.into(),
                path: path.into(),
                key: (key != "-").then(|| key.into()),
            })
        })
        .collect()
}

/// How many requests for `path` reached a `serve` process.
pub fn count_requests(server: &Server, path: &str) -> usize {
    requests(server).iter().filter(|r| r.path == path).count()
}

/// The methods (`Say`, `Count`) of every call a `grpc-serve` process answered.
pub fn rpcs(server: &Server) -> Vec<String> {
    prefixed(server, "RPC ")
}

/// The SNI of every handshake a `tls-serve` process completed (`None`: the client sent none).
pub fn snis(server: &Server) -> Vec<Option<String>> {
    prefixed(server, "SNI ")
        .into_iter()
        .map(|s| (s != "-").then_some(s))
        .collect()
}

/// The peer of every connection a `banner` process accepted.
pub fn banner_peers(server: &Server) -> Vec<String> {
    prefixed(server, "CONN peer=")
}

fn prefixed(server: &Server, prefix: &str) -> Vec<String> {
    server
        .proc
        .lines()
        .iter()
        .filter_map(|l| l.strip_prefix(prefix).map(String::from))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_args_round_trip_the_options() {
        let opts = LoadOpts::get("/fail-then/2/503")
            .http2()
            .times(10, 3)
            .header("x-test-key", "a b")
            .rate(50.0)
            .bodies();
        let a = opts.args("10.96.0.1:80".parse().unwrap());
        let joined = a.join(" ");
        assert!(joined.starts_with("load 10.96.0.1:80 --requests 10 --concurrency 3"));
        assert!(a.windows(2).any(|w| w == ["--header", "x-test-key: a b"]));
        assert!(joined.contains("--rate 50/s") && joined.ends_with("--http2 --bodies"));
        assert_eq!(opts.budget(), Duration::from_millis(5000 * 4 + 200) + SLACK);
    }
}
