//! The scenarios, the metrics each reports, and how one run of a scenario against one
//! running contender is measured.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::contender::{Bins, Running};
use super::http::{self, HttpPort};
use super::tool::{ECHO, ONESHOT};
use super::topo::{self, Proc, SERVER_IP, Topology};
use super::{memory, nginx, procstat};

pub const IPERF_PORT: u16 = 5201;
pub const TOOL_PORT: u16 = 7000;

/// What a metric measures; the report has one entry per metric.
pub struct Metric {
    pub name: &'static str,
    pub unit: &'static str,
    pub higher_is_better: bool,
}

const fn m(name: &'static str, unit: &'static str, higher_is_better: bool) -> Metric {
    Metric {
        name,
        unit,
        higher_is_better,
    }
}

/// Which pods are in the mesh, and so which proxies a connection from the client pod to
/// the server pod passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Path {
    /// Only the client pod: its outbound proxy.
    Outbound,
    /// Only the server pod: its inbound proxy, for a caller outside the mesh.
    Inbound,
    /// Both pods: the client's outbound proxy, then the server's inbound proxy.
    Mesh,
    /// As `Mesh`, with mutual TLS between the two proxies: Sluice's HBONE tunnel, Envoy's
    /// sidecars with Istio's mTLS.
    Mtls,
    /// As `Outbound`, to a service's VIP that the client pod's proxy serves as HTTP (`http`).
    Http,
}

impl Path {
    /// The pods whose traffic is captured (topology roles), client first.
    pub fn captured(self) -> &'static [&'static str] {
        match self {
            Path::Outbound | Path::Http => &["client"],
            Path::Inbound => &["server"],
            Path::Mesh | Path::Mtls => &["client", "server"],
        }
    }

    /// Whether the proxies talk to each other in mutual TLS.
    pub fn mtls(self) -> bool {
        self == Path::Mtls
    }
}

/// What a scenario does to the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// iperf3 with this many streams: Gbit/s.
    Throughput(u32),
    /// Ping-pong on one connection: round-trip percentiles.
    RoundTrips,
    /// One exchange per new connection: connections per second.
    Connects,
    /// The proxy's memory, idle, with idle connections, through a burst.
    Memory,
    /// h2load on this port of the service, as many requests as it gets answered: req/s.
    HttpMaxRps(HttpPort),
    /// HTTP/1.1 requests at a fixed rate: latency percentiles.
    HttpFixedRate,
}

pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    pub path: Path,
    pub load: Load,
    /// Measures the proxy itself (not run for `direct`).
    pub proxy_only: bool,
    pub metrics: &'static [Metric],
}

/// One L4 scenario per load and path, the metric names made from the scenario's: the same
/// loads run on the outbound, inbound and mesh paths, and their metrics line up by suffix.
macro_rules! throughput {
    ($prefix:literal, $streams:literal, $path:expr, $what:literal) => {
        Scenario {
            name: concat!($prefix, "-throughput-", $streams),
            what: $what,
            path: $path,
            load: Load::Throughput($streams),
            proxy_only: false,
            metrics: &[
                m(concat!($prefix, "-throughput-", $streams), "Gbit/s", true),
                m(
                    concat!($prefix, "-throughput-", $streams, "-proxy-cpu"),
                    "proxy CPU s/GB",
                    false,
                ),
            ],
        }
    };
}

macro_rules! rr_latency {
    ($prefix:literal, $path:expr, $what:literal) => {
        Scenario {
            name: concat!($prefix, "-rr-latency"),
            what: $what,
            path: $path,
            load: Load::RoundTrips,
            proxy_only: false,
            metrics: &[
                m(concat!($prefix, "-rr-latency-p50"), "µs", false),
                m(concat!($prefix, "-rr-latency-p99"), "µs", false),
                m(concat!($prefix, "-rr-latency-p99.9"), "µs", false),
                m(
                    concat!($prefix, "-rr-latency-proxy-cpu"),
                    "proxy CPU ms/1000 RT",
                    false,
                ),
            ],
        }
    };
}

macro_rules! connect_rate {
    ($prefix:literal, $path:expr, $what:literal) => {
        Scenario {
            name: concat!($prefix, "-connect-rate"),
            what: $what,
            path: $path,
            load: Load::Connects,
            proxy_only: false,
            metrics: &[
                m(concat!($prefix, "-connect-rate"), "conn/s", true),
                m(
                    concat!($prefix, "-connect-rate-proxy-cpu"),
                    "proxy CPU ms/1000 conns",
                    false,
                ),
            ],
        }
    };
}

/// The HTTP scenarios' metrics of the proxy's CPU.
const CPU_PER_1000_REQ: &str = "proxy CPU ms/1000 req";

pub const SCENARIOS: &[Scenario] = &[
    throughput!("l4", 1, Path::Outbound, "iperf3, one TCP stream"),
    throughput!("l4", 8, Path::Outbound, "iperf3, eight TCP streams"),
    rr_latency!(
        "l4",
        Path::Outbound,
        "64-byte request/response ping-pong on one connection; round-trip time"
    ),
    connect_rate!(
        "l4",
        Path::Outbound,
        "new connections, each one 64-byte exchange, 16 client threads"
    ),
    throughput!(
        "inbound",
        1,
        Path::Inbound,
        "as l4-throughput-1, from a client outside the mesh through the server's inbound proxy"
    ),
    rr_latency!(
        "inbound",
        Path::Inbound,
        "as l4-rr-latency, from a client outside the mesh through the server's inbound proxy"
    ),
    connect_rate!(
        "inbound",
        Path::Inbound,
        "as l4-connect-rate, from a client outside the mesh through the server's inbound proxy"
    ),
    throughput!(
        "mesh",
        1,
        Path::Mesh,
        "as l4-throughput-1, both pods in the mesh: client's outbound, then server's inbound proxy"
    ),
    rr_latency!(
        "mesh",
        Path::Mesh,
        "as l4-rr-latency, both pods in the mesh: client's outbound, then server's inbound proxy"
    ),
    connect_rate!(
        "mesh",
        Path::Mesh,
        "as l4-connect-rate, both pods in the mesh: client's outbound, then server's inbound proxy"
    ),
    Scenario {
        name: "http1-fixed-rate",
        what: "HTTP/1.1 GETs to a service at 1000 req/s over 16 keep-alive connections \
               (xtask's http-rate client), latency of each; the client pod in the mesh, its \
               proxy serving the service's VIP at L7 (direct: the server pod itself); late: \
               requests sent more than a period (16 ms) after their time",
        path: Path::Http,
        load: Load::HttpFixedRate,
        proxy_only: false,
        metrics: &[
            m("http1-fixed-rate-p50", "µs", false),
            m("http1-fixed-rate-p99", "µs", false),
            m("http1-fixed-rate-late", "% sent late", false),
            m("http1-fixed-rate-proxy-cpu", CPU_PER_1000_REQ, false),
        ],
    },
    Scenario {
        name: "http1-max-rps",
        what: "HTTP/1.1 requests per second to the same service: h2load --h1, 32 keep-alive \
               connections",
        path: Path::Http,
        load: Load::HttpMaxRps(http::HTTP1),
        proxy_only: false,
        metrics: &[
            m("http1-max-rps", "req/s", true),
            m("http1-max-rps-proxy-cpu", CPU_PER_1000_REQ, false),
        ],
    },
    Scenario {
        name: "http2-max-rps",
        what: "HTTP/2 requests per second to the same service: h2load, prior knowledge, 4 \
               connections × 32 concurrent streams; the proxy speaks HTTP/2 upstream too",
        path: Path::Http,
        load: Load::HttpMaxRps(http::HTTP2),
        proxy_only: false,
        metrics: &[
            m("http2-max-rps", "req/s", true),
            m("http2-max-rps-proxy-cpu", CPU_PER_1000_REQ, false),
        ],
    },
    throughput!(
        "mtls",
        1,
        Path::Mtls,
        "as mesh-throughput-1, with mutual TLS between the two proxies"
    ),
    rr_latency!(
        "mtls",
        Path::Mtls,
        "as mesh-rr-latency, with mutual TLS between the two proxies"
    ),
    Scenario {
        name: "mtls-connect-rate",
        what: "as mesh-connect-rate, with mutual TLS between the two proxies; per core: \
               connections per second of proxy CPU; handshakes: the client side's TLS \
               handshakes per 1000 connections",
        path: Path::Mtls,
        load: Load::Connects,
        proxy_only: false,
        metrics: &[
            m("mtls-connect-rate", "conn/s", true),
            m(
                "mtls-connect-rate-proxy-cpu",
                "proxy CPU ms/1000 conns",
                false,
            ),
            // The two below are computed from the two above and the handshake counter: see
            // `run`.
            m("mtls-connect-rate-per-core", "conn/s per proxy CPU", true),
            m(
                "mtls-connect-rate-handshakes",
                "TLS handshakes/1000 conns",
                false,
            ),
        ],
    },
    Scenario {
        name: "memory",
        what: "proxy RSS: idle, with idle connections open and after they close, at a burst's \
               peak, after the burst",
        path: Path::Outbound,
        load: Load::Memory,
        proxy_only: true,
        metrics: &[
            m("memory-idle", "MiB", false),
            m("memory-idle-conns", "MiB", false),
            m("memory-per-idle-conn", "KiB", false),
            m("memory-after-idle-conns", "MiB", false),
            m("memory-burst-peak", "MiB", false),
            m("memory-after-burst", "MiB", false),
            m("memory-recovery", "s", false),
        ],
    },
];

pub fn find(name: &str) -> Result<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == name).with_context(|| {
        let all: Vec<&str> = SCENARIOS.iter().map(|s| s.name).collect();
        format!("unknown scenario {name:?}; known: {}", all.join(", "))
    })
}

/// Lengths of one run; `--quick` shortens them.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    pub throughput_secs: u32,
    pub rr_secs: f64,
    pub connect_secs: f64,
    pub idle_conns: usize,
    pub burst_conns: usize,
    /// How long memory may take to come back after the burst.
    pub recovery_secs: u64,
    /// Each HTTP scenario's run.
    pub http_secs: u32,
}

impl Durations {
    pub fn new(quick: bool) -> Durations {
        if quick {
            Durations {
                throughput_secs: 3,
                rr_secs: 3.0,
                connect_secs: 3.0,
                idle_conns: 10_000,
                burst_conns: 1000,
                recovery_secs: 20,
                http_secs: 3,
            }
        } else {
            Durations {
                throughput_secs: 10,
                rr_secs: 10.0,
                connect_secs: 8.0,
                idle_conns: 10_000,
                burst_conns: 1000,
                recovery_secs: 60,
                http_secs: 10,
            }
        }
    }
}

pub struct Ctx<'a> {
    pub topo: &'a Topology,
    pub bins: &'a Bins,
    pub durations: Durations,
    pub ticks: f64,
}

/// The servers every scenario talks to, in the server pod for the whole run.
pub fn start_servers(topo: &Topology, bins: &Bins) -> Result<Vec<Proc>> {
    let iperf = Proc::spawn(
        topo,
        "iperf3-server",
        &topo.server(),
        "iperf3",
        &["-s".into(), "-p".into(), IPERF_PORT.to_string()],
    )?;
    let mut tool = Proc::spawn(
        topo,
        "tool-server",
        &topo.server(),
        &bins.tool,
        &bins.tool_args(&["serve".into(), "--port".into(), TOOL_PORT.to_string()]),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !tool.log_tail(5).contains("READY") {
        tool.check_alive()?;
        ensure!(Instant::now() < deadline, "the tool server did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
    let nginx = nginx::start(topo, bins)?;
    Ok(vec![iperf, tool, nginx])
}

/// One run of `scenario` against `running`: the metric values, in `scenario.metrics` order.
pub fn run(ctx: &Ctx, scenario: &Scenario, running: &Running) -> Result<Vec<f64>> {
    // Every proxy on the path counts: both sidecars of the mesh path, one agent otherwise.
    let cpu = || -> Result<f64> {
        let pids = running.proxy_pids();
        if pids.is_empty() {
            return Ok(f64::NAN);
        }
        pids.into_iter()
            .map(|pid| procstat::cpu_seconds(pid, ctx.ticks))
            .sum()
    };
    // The mTLS connect rate also counts the client side's TLS handshakes, outside the
    // measured CPU time.
    let counts_handshakes = scenario.path.mtls() && scenario.load == Load::Connects;
    let handshakes0 = if counts_handshakes {
        running.tls_handshakes()?
    } else {
        None
    };
    let cpu0 = cpu()?;
    let values = match scenario.load {
        Load::Throughput(streams) => throughput(ctx, streams)?,
        Load::RoundTrips => rr(ctx)?,
        Load::Connects => connect(ctx)?,
        Load::Memory => {
            let [pid] = running.proxy_pids()[..] else {
                bail!("the memory scenario measures exactly one proxy");
            };
            return memory::memory(ctx, pid);
        }
        Load::HttpMaxRps(port) => http::max_rps(ctx, running.contender, port)?,
        Load::HttpFixedRate => http::fixed_rate(ctx, running.contender)?,
    };
    let cpu_used = cpu()? - cpu0;
    // The last value is the work done, turned into the proxy's CPU per unit of it.
    let (mut values, work) = values;
    values.push(cpu_used / work);
    if counts_handshakes {
        // `work` is millions of connections.
        let conns = work * 1e6;
        values.push(conns / cpu_used);
        let handshakes = match (handshakes0, running.tls_handshakes()?) {
            (Some(before), Some(after)) => after.saturating_sub(before) as f64,
            _ => f64::NAN,
        };
        values.push(handshakes / (conns / 1000.0));
    }
    Ok(values)
}

/// Gbit/s and GB moved.
fn throughput(ctx: &Ctx, streams: u32) -> Result<(Vec<f64>, f64)> {
    let args: Vec<String> = [
        "-c",
        SERVER_IP,
        "-p",
        &IPERF_PORT.to_string(),
        "-t",
        &ctx.durations.throughput_secs.to_string(),
        "-P",
        &streams.to_string(),
        "-J",
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    let out = topo::output(&ctx.topo.client(), "iperf3", &args)?;
    let json: Value = serde_json::from_str(&out).with_context(|| format!("iperf3 -J: {out}"))?;
    let sum = json
        .pointer("/end/sum_received")
        .with_context(|| format!("no end.sum_received in iperf3's report: {out}"))?;
    let bps = sum["bits_per_second"]
        .as_f64()
        .context("no bits_per_second")?;
    let bytes = sum["bytes"].as_f64().context("no bytes")?;
    Ok((vec![bps / 1e9], bytes / 1e9))
}

/// p50, p99, p99.9 (µs) and thousands of round trips.
fn rr(ctx: &Ctx) -> Result<(Vec<f64>, f64)> {
    let out = ctx.bins.tool_output(
        &ctx.topo.client(),
        &[
            "rr".into(),
            format!("{SERVER_IP}:{}", TOOL_PORT + ECHO),
            "--secs".into(),
            ctx.durations.rr_secs.to_string(),
        ],
    )?;
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("rr: {out}"))?;
    let get = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("rr report lacks {k}: {out}"))
    };
    Ok((
        vec![get("p50_us")?, get("p99_us")?, get("p999_us")?],
        get("total")? / 1000.0 / 1000.0,
    ))
}

/// conn/s and thousands of connections (CPU is then ms per 1000).
fn connect(ctx: &Ctx) -> Result<(Vec<f64>, f64)> {
    let out = ctx.bins.tool_output(
        &ctx.topo.client(),
        &[
            "connect".into(),
            format!("{SERVER_IP}:{}", TOOL_PORT + ONESHOT),
            "--threads".into(),
            "16".into(),
            "--secs".into(),
            ctx.durations.connect_secs.to_string(),
        ],
    )?;
    let v: Value = serde_json::from_str(out.trim()).with_context(|| format!("connect: {out}"))?;
    let conns = v["conns"].as_f64().context("no conns")?;
    let errors = v["errors"].as_f64().unwrap_or(0.0);
    ensure!(
        errors <= conns * 0.01,
        "{errors} of {} connections failed",
        conns + errors
    );
    Ok((
        vec![v["per_sec"].as_f64().context("no per_sec")?],
        conns / 1000.0 / 1000.0,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_are_named_after_their_scenario_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for s in SCENARIOS {
            for metric in s.metrics {
                assert!(metric.name.starts_with(s.name), "{}", metric.name);
                assert!(seen.insert(metric.name), "{} twice", metric.name);
            }
        }
    }

    #[test]
    fn each_path_runs_the_same_loads() {
        let inbound = find("inbound-rr-latency").unwrap();
        assert_eq!(inbound.path, Path::Inbound);
        assert_eq!(inbound.load, Load::RoundTrips);
        assert_eq!(inbound.metrics[0].name, "inbound-rr-latency-p50");
        let mesh = find("mesh-throughput-1").unwrap();
        assert_eq!(mesh.path.captured(), ["client", "server"]);
        assert_eq!(mesh.load, Load::Throughput(1));
        assert!(
            find("mtls-handshakes").is_err(),
            "replaced by the mtls-* scenarios"
        );
    }

    #[test]
    fn http_scenarios_call_the_service_through_the_client_pods_proxy() {
        let fixed = find("http1-fixed-rate").unwrap();
        assert_eq!(fixed.path, Path::Http);
        assert_eq!(fixed.path.captured(), ["client"]);
        assert!(!fixed.path.mtls() && !fixed.proxy_only);
        assert_eq!(fixed.load, Load::HttpFixedRate);
        assert!(fixed.what.contains(&format!(
            "{} req/s over {} keep-alive",
            http::FIXED_RATE,
            http::FIXED_CONNS
        )));
        let h1 = find("http1-max-rps").unwrap();
        assert_eq!(h1.load, Load::HttpMaxRps(http::HTTP1));
        assert!(h1.what.contains(&format!("{} keep-alive", http::H1_CONNS)));
        let h2 = find("http2-max-rps").unwrap();
        assert_eq!(h2.load, Load::HttpMaxRps(http::HTTP2));
        assert!(h2.what.contains(&format!(
            "{} connections × {} concurrent streams",
            http::H2_CONNS,
            http::H2_STREAMS
        )));
        // `run` appends the proxy's CPU per unit of work last.
        for s in [fixed, h1, h2] {
            let last = s.metrics.last().unwrap();
            assert_eq!(last.name, format!("{}-proxy-cpu", s.name));
            assert_eq!(last.unit, CPU_PER_1000_REQ);
        }
    }

    #[test]
    fn mtls_scenarios_run_the_mesh_loads_in_mtls() {
        for (mtls, mesh) in [
            ("mtls-throughput-1", "mesh-throughput-1"),
            ("mtls-rr-latency", "mesh-rr-latency"),
            ("mtls-connect-rate", "mesh-connect-rate"),
        ] {
            let (mtls, mesh) = (find(mtls).unwrap(), find(mesh).unwrap());
            assert_eq!(mtls.path, Path::Mtls);
            assert!(mtls.path.mtls() && !mesh.path.mtls());
            assert_eq!(mtls.path.captured(), mesh.path.captured());
            assert_eq!(mtls.load, mesh.load);
            assert!(!mtls.proxy_only);
            // The mesh metrics, renamed, in the same order (the values are zipped with them).
            for (a, b) in mtls.metrics.iter().zip(mesh.metrics) {
                assert_eq!(a.name.replacen("mtls", "mesh", 1), b.name);
                assert_eq!((a.unit, a.higher_is_better), (b.unit, b.higher_is_better));
            }
        }
        // `run` appends these two to the connect rate's values, in this order.
        let names: Vec<&str> = find("mtls-connect-rate")
            .unwrap()
            .metrics
            .iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            names[2..],
            ["mtls-connect-rate-per-core", "mtls-connect-rate-handshakes"]
        );
    }
}
