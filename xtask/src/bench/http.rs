//! The HTTP scenarios: the client pod calls service `web` at its virtual IP, which no
//! interface owns, so only a proxy answers: Sluice's agent (the client pod enrolled, its L7
//! path) or the client pod's Envoy sidecar (an HTTP listener, as Istio configures outbound
//! HTTP). Both balance over the service's one endpoint, nginx in the server pod
//! (`nginx`). `direct` calls the server pod itself.
//!
//! Load: h2load (nghttp2) for the most requests per second over keep-alive connections,
//! HTTP/1.1 and HTTP/2 with prior knowledge; `xtask bench http-rate` (`fixed_rate`) for the
//! latency at a fixed rate, because h2load's `--rps` sends each client's requests in bursts
//! (see docs/benchmarks.md).

use std::net::SocketAddr;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::contender::Contender;
use super::scenario::Ctx;
use super::topo::{self, SERVER_IP};

/// The service's virtual IP (a Kubernetes ClusterIP), its name and namespace.
pub const VIP: &str = "10.96.0.10";
pub const SERVICE: &str = "web";

/// One port of the service: what the client dials on the VIP, and the server pod's port
/// behind it, which speaks one HTTP version (nginx 1.22 serves h2c only on a port of its
/// own).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpPort {
    pub port: u16,
    pub target: u16,
    pub http2: bool,
}

pub const HTTP1: HttpPort = HttpPort {
    port: 80,
    target: 8080,
    http2: false,
};
pub const HTTP2: HttpPort = HttpPort {
    port: 81,
    target: 8081,
    http2: true,
};
pub const PORTS: [HttpPort; 2] = [HTTP1, HTTP2];

impl HttpPort {
    /// The port's `appProtocol` (Kubernetes), which also names it in Istio's terms.
    pub fn app_protocol(self) -> &'static str {
        if self.http2 { "http2" } else { "http" }
    }

    /// Where the client sends its requests: the server pod itself without a mesh, the
    /// service's VIP through a proxy.
    pub fn addr(self, c: Contender) -> SocketAddr {
        let (ip, port) = match c {
            Contender::Direct => (SERVER_IP, self.target),
            _ => (VIP, self.port),
        };
        SocketAddr::new(ip.parse().expect("a literal address"), port)
    }
}

/// h2load's connections at max rps: HTTP/1.1 (one request at a time on each), HTTP/2
/// (with this many concurrent streams on each).
pub const H1_CONNS: u32 = 32;
pub const H2_CONNS: u32 = 4;
pub const H2_STREAMS: u32 = 32;
/// The fixed rate: Istio's published latency setup, 1000 requests per second over 16
/// connections.
pub const FIXED_RATE: u32 = 1000;
pub const FIXED_CONNS: u32 = 16;
/// Seconds of the fixed-rate run whose latencies are not counted (upstream pools filling).
const FIXED_WARMUP_SECS: f64 = 0.5;

/// req/s, and millions of requests (so the proxy's CPU comes out in ms per 1000).
pub fn max_rps(ctx: &Ctx, c: Contender, port: HttpPort) -> Result<(Vec<f64>, f64)> {
    let secs = ctx.durations.http_secs.to_string();
    let conns = if port.http2 { H2_CONNS } else { H1_CONNS };
    let mut args: Vec<String> = vec!["-c".into(), conns.to_string()];
    if port.http2 {
        args.extend(["-m".into(), H2_STREAMS.to_string()]);
    } else {
        args.push("--h1".into());
    }
    args.extend(["-D".into(), secs, format!("http://{}/", port.addr(c))]);
    let out = topo::output(&ctx.topo.client(), "h2load", &args)?;
    let report = H2load::parse(&out).with_context(|| format!("h2load's report: {out}"))?;
    report
        .check(port.http2)
        .with_context(|| format!("h2load: {out}"))?;
    Ok((vec![report.req_per_sec], report.done as f64 / 1e6))
}

/// p50 and p99 (µs), the share of requests sent late (%), and millions of requests
/// (warm-up included: the CPU covers it).
pub fn fixed_rate(ctx: &Ctx, c: Contender) -> Result<(Vec<f64>, f64)> {
    let out = ctx.bins.tool_output(
        &ctx.topo.client(),
        &[
            "http-rate".into(),
            HTTP1.addr(c).to_string(),
            "--rate".into(),
            FIXED_RATE.to_string(),
            "--conns".into(),
            FIXED_CONNS.to_string(),
            "--secs".into(),
            ctx.durations.http_secs.to_string(),
            "--warmup".into(),
            FIXED_WARMUP_SECS.to_string(),
        ],
    )?;
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("http-rate: {out}"))?;
    let get = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("http-rate's report lacks {k}: {out}"))
    };
    let (total, errors, late) = (get("total")?, get("errors")?, get("late")?);
    ensure!(
        errors <= total * 0.01,
        "{errors} of {total} requests failed: {out}"
    );
    // A request sent more than a period after its time: the client was not scheduled
    // (a busy machine) or its connection still waited for the answer before. A few are
    // reported; most of them means there was no fixed rate to speak of.
    ensure!(
        late <= total * 0.5,
        "{late} of {total} requests left more than a period late: {out}"
    );
    let late_pct = late / total * 100.0;
    Ok((vec![get("p50_us")?, get("p99_us")?, late_pct], total / 1e6))
}

/// What h2load reports at its end.
#[derive(Debug, Default, PartialEq)]
pub struct H2load {
    /// `Application protocol:` `http/1.1` or `h2c`.
    pub protocol: String,
    pub req_per_sec: f64,
    pub done: u64,
    pub failed: u64,
    pub errored: u64,
    pub timeout: u64,
    pub status_2xx: u64,
}

impl H2load {
    /// Reads the lines h2load ends with:
    ///
    /// ```text
    /// Application protocol: h2c
    /// finished in 2.00s, 36678.00 req/s, 2.41MB/s
    /// requests: 73356 total, 73484 started, 73356 done, 73356 succeeded, 0 failed, 0 errored, 0 timeout
    /// status codes: 73356 2xx, 0 3xx, 0 4xx, 0 5xx
    /// ```
    pub fn parse(out: &str) -> Result<H2load> {
        let mut r = H2load::default();
        let (mut finished, mut requests, mut statuses) = (false, false, false);
        for line in out.lines().map(str::trim) {
            if let Some(p) = line.strip_prefix("Application protocol:") {
                r.protocol = p.trim().to_string();
            } else if let Some(rest) = line.strip_prefix("finished in ") {
                let rate = rest
                    .split(", ")
                    .find_map(|f| f.strip_suffix(" req/s"))
                    .with_context(|| format!("no req/s in {line:?}"))?;
                r.req_per_sec = rate
                    .parse()
                    .with_context(|| format!("bad req/s in {line:?}"))?;
                finished = true;
            } else if let Some(rest) = line.strip_prefix("requests:") {
                let n = counts(rest)?;
                let get = |k: &str| {
                    n.iter()
                        .find(|(label, _)| *label == k)
                        .map(|(_, v)| *v)
                        .with_context(|| format!("no {k} in {line:?}"))
                };
                r.done = get("done")?;
                r.failed = get("failed")?;
                r.errored = get("errored")?;
                r.timeout = get("timeout")?;
                requests = true;
            } else if let Some(rest) = line.strip_prefix("status codes:") {
                let n = counts(rest)?;
                r.status_2xx = n
                    .iter()
                    .find(|(label, _)| *label == "2xx")
                    .map(|(_, v)| *v)
                    .with_context(|| format!("no 2xx in {line:?}"))?;
                statuses = true;
            }
        }
        if !(finished && requests && statuses) {
            bail!("h2load's summary is incomplete");
        }
        Ok(r)
    }

    /// Fails unless the run spoke the asked protocol and nearly every request got a 2xx.
    pub fn check(&self, http2: bool) -> Result<()> {
        let want = if http2 { "h2c" } else { "http/1.1" };
        ensure!(
            self.protocol == want,
            "h2load spoke {:?}, not {want}",
            self.protocol
        );
        ensure!(self.done > 0, "no request completed");
        // `failed` counts network errors and timeouts as well as error statuses.
        let bad = self.done.saturating_sub(self.status_2xx).max(self.failed);
        ensure!(
            bad as f64 <= self.done as f64 * 0.01,
            "{bad} of {} requests failed or were not 2xx ({} failed, {} errored, {} timed out)",
            self.done,
            self.failed,
            self.errored,
            self.timeout
        );
        Ok(())
    }
}

/// `" 73356 total, 0 failed"` → `[("total", 73356), ("failed", 0)]`.
fn counts(text: &str) -> Result<Vec<(&str, u64)>> {
    text.split(',')
        .map(|field| {
            let (n, label) = field
                .trim()
                .split_once(' ')
                .with_context(|| format!("no count in {field:?}"))?;
            let n = n
                .parse()
                .with_context(|| format!("bad count in {field:?}"))?;
            Ok((label.trim(), n))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const H2: &str = "starting benchmark...
spawning thread #0: 4 total client(s). Timing-based test with 0s of warm-up time and 2s of main duration for measurements.
Application protocol: h2c
Main benchmark duration is over for thread #0. Stopping all clients.
Stopped all clients for thread #0

finished in 2.00s, 36678.00 req/s, 2.41MB/s
requests: 73356 total, 73484 started, 73356 done, 73356 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 73356 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 4.83MB (5061760) total, 3.36MB (3521088) headers (space savings 51.02%), 214.91KB (220068) data
                     min         max         mean         sd        +/- sd
time for request:       93us     11.83ms      3.28ms      1.47ms    78.11%
req/s           :    9073.11     9322.24     9168.40      107.93    75.00%
";

    #[test]
    fn reads_h2loads_summary() {
        let r = H2load::parse(H2).unwrap();
        assert_eq!(
            r,
            H2load {
                protocol: "h2c".into(),
                req_per_sec: 36678.0,
                done: 73356,
                failed: 0,
                errored: 0,
                timeout: 0,
                status_2xx: 73356,
            }
        );
        r.check(true).unwrap();
        let wrong = r.check(false).unwrap_err().to_string();
        assert!(wrong.contains("not http/1.1"), "{wrong}");
    }

    #[test]
    fn a_run_with_errors_or_without_a_summary_fails() {
        let bad = H2
            .replace(
                "73356 2xx, 0 3xx, 0 4xx, 0 5xx",
                "70000 2xx, 0 3xx, 0 4xx, 3356 5xx",
            )
            .replace(
                "Application protocol: h2c",
                "Application protocol: http/1.1",
            );
        let r = H2load::parse(&bad).unwrap();
        let e = r.check(false).unwrap_err().to_string();
        assert!(e.starts_with("3356 of 73356 requests failed"), "{e}");
        // h2load connects nowhere: it prints no summary at all.
        let cut = H2.split("finished in").next().unwrap();
        assert!(H2load::parse(cut).is_err());
        assert!(H2load::parse(&H2.replace("36678.00 req/s", "fast req/s")).is_err());
    }

    #[test]
    fn direct_calls_the_server_pod_and_proxies_the_vip() {
        assert_eq!(
            HTTP1.addr(Contender::Direct).to_string(),
            format!("{SERVER_IP}:8080")
        );
        assert_eq!(HTTP2.addr(Contender::Envoy).to_string(), "10.96.0.10:81");
        assert_eq!(
            HTTP1.addr(Contender::SluiceEbpf).to_string(),
            "10.96.0.10:80"
        );
        assert_eq!(
            PORTS.map(HttpPort::app_protocol),
            ["http", "http2"],
            "one port per version"
        );
    }
}
