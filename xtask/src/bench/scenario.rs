//! The scenarios, the metrics each reports, and how one run of a scenario against one
//! running contender is measured.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::contender::{Bins, Running};
use super::procstat;
use super::tool::{ECHO, HOLD, ONESHOT};
use super::topo::{self, Proc, SERVER_IP, Topology};

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

pub struct Scenario {
    pub name: &'static str,
    pub what: &'static str,
    /// Why this scenario cannot run yet; it is listed in the report with this reason.
    pub skip: Option<&'static str>,
    /// Measures the proxy itself (not run for `direct`).
    pub proxy_only: bool,
    pub metrics: &'static [Metric],
}

const NO_L7: &str = "Sluice has no L7/mTLS yet";

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "l4-throughput-1",
        what: "iperf3, one TCP stream",
        skip: None,
        proxy_only: false,
        metrics: &[
            m("l4-throughput-1", "Gbit/s", true),
            m("l4-throughput-1-proxy-cpu", "proxy CPU s/GB", false),
        ],
    },
    Scenario {
        name: "l4-throughput-8",
        what: "iperf3, eight TCP streams",
        skip: None,
        proxy_only: false,
        metrics: &[
            m("l4-throughput-8", "Gbit/s", true),
            m("l4-throughput-8-proxy-cpu", "proxy CPU s/GB", false),
        ],
    },
    Scenario {
        name: "l4-rr-latency",
        what: "64-byte request/response ping-pong on one connection; round-trip time",
        skip: None,
        proxy_only: false,
        metrics: &[
            m("l4-rr-latency-p50", "µs", false),
            m("l4-rr-latency-p99", "µs", false),
            m("l4-rr-latency-p99.9", "µs", false),
            m("l4-rr-latency-proxy-cpu", "proxy CPU ms/1000 RT", false),
        ],
    },
    Scenario {
        name: "l4-connect-rate",
        what: "new connections, each one 64-byte exchange, 16 client threads",
        skip: None,
        proxy_only: false,
        metrics: &[
            m("l4-connect-rate", "conn/s", true),
            m(
                "l4-connect-rate-proxy-cpu",
                "proxy CPU ms/1000 conns",
                false,
            ),
        ],
    },
    Scenario {
        name: "http1-fixed-rate",
        what: "HTTP/1.1 at a fixed rate, latency",
        skip: Some(NO_L7),
        proxy_only: false,
        metrics: &[],
    },
    Scenario {
        name: "http1-max-rps",
        what: "HTTP/1.1 requests per second",
        skip: Some(NO_L7),
        proxy_only: false,
        metrics: &[],
    },
    Scenario {
        name: "http2-max-rps",
        what: "HTTP/2 requests per second",
        skip: Some(NO_L7),
        proxy_only: false,
        metrics: &[],
    },
    Scenario {
        name: "mtls-handshakes",
        what: "mTLS handshakes per second",
        skip: Some(NO_L7),
        proxy_only: false,
        metrics: &[],
    },
    Scenario {
        name: "memory",
        what: "proxy RSS: idle, with idle connections open and after they close, at a burst's \
               peak, after the burst",
        skip: None,
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
            }
        } else {
            Durations {
                throughput_secs: 10,
                rr_secs: 10.0,
                connect_secs: 8.0,
                idle_conns: 10_000,
                burst_conns: 1000,
                recovery_secs: 60,
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
    Ok(vec![iperf, tool])
}

/// One run of `scenario` against `running`: the metric values, in `scenario.metrics` order.
pub fn run(ctx: &Ctx, scenario: &Scenario, running: &Running) -> Result<Vec<f64>> {
    let cpu = || -> Result<f64> {
        match running.proxy_pid() {
            Some(pid) => procstat::cpu_seconds(pid, ctx.ticks),
            None => Ok(f64::NAN),
        }
    };
    let cpu0 = cpu()?;
    let values = match scenario.name {
        "l4-throughput-1" => throughput(ctx, 1)?,
        "l4-throughput-8" => throughput(ctx, 8)?,
        "l4-rr-latency" => rr(ctx)?,
        "l4-connect-rate" => connect(ctx)?,
        "memory" => {
            let pid = running
                .proxy_pid()
                .context("the memory scenario needs a proxy")?;
            return memory(ctx, pid);
        }
        other => bail!("scenario {other} has no runner"),
    };
    let cpu_used = cpu()? - cpu0;
    // The last value is the work done, turned into the proxy's CPU per unit of it.
    let (mut values, work) = values;
    values.push(cpu_used / work);
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

/// Idle RSS, RSS with `idle_conns` open, KiB per connection, RSS once they are closed,
/// burst peak, RSS after the burst (once back within 20% of idle, or at the deadline) and
/// how long that took. The burst comes after the idle connections, so what they left
/// behind counts against it too.
fn memory(ctx: &Ctx, pid: u32) -> Result<Vec<f64>> {
    let d = ctx.durations;
    let idle_conns = idle_conns(d.idle_conns, ctx.topo.nofile);
    std::thread::sleep(Duration::from_secs(1));
    let idle = procstat::rss_mib(pid)?;
    let idle_fds = procstat::fd_count(pid)?;

    let mut holder = spawn_tool(
        ctx,
        "idle-client",
        &[
            "idle".into(),
            format!("{SERVER_IP}:{}", TOOL_PORT + HOLD),
            "--conns".into(),
            idle_conns.to_string(),
        ],
    )?;
    let stdout = holder
        .child()
        .stdout
        .take()
        .context("idle client has no stdout")?;
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if !line.starts_with("READY") {
        let status = holder.wait_timeout(Duration::from_secs(5))?;
        bail!(
            "the idle client did not open {idle_conns} connections ({status:?}): {}",
            holder.log_tail(10)
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let with_conns = procstat::rss_mib(pid)?;
    drop(holder.child().stdin.take());
    ensure!(
        holder.wait_timeout(Duration::from_secs(30))?.is_some(),
        "the idle client did not exit"
    );
    drop(holder);
    // The proxy closes its side a moment later; the burst must not start while it still
    // holds twice as many descriptors as connections, or it runs out of them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while procstat::fd_count(pid)? > idle_fds + 100 {
        ensure!(
            Instant::now() < deadline,
            "the proxy still holds {} descriptors 30 s after the idle connections closed",
            procstat::fd_count(pid)?
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(1));
    let after_conns = procstat::rss_mib(pid)?;

    let mut burst = spawn_tool(
        ctx,
        "burst-client",
        &[
            "burst".into(),
            format!("{SERVER_IP}:{}", TOOL_PORT + ECHO),
            "--conns".into(),
            d.burst_conns.to_string(),
            "--bytes".into(),
            (64 << 10).to_string(),
        ],
    )?;
    let mut peak = procstat::rss_mib(pid)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        peak = peak.max(procstat::rss_mib(pid)?);
        if let Some(status) = burst.child().try_wait()? {
            break status;
        }
        ensure!(Instant::now() < deadline, "the burst did not end in 120 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    ensure!(status.success(), "the burst client failed ({status})");

    let start = Instant::now();
    let (after, took) = loop {
        let rss = procstat::rss_mib(pid)?;
        let took = start.elapsed();
        if rss <= idle * 1.2 || took >= Duration::from_secs(d.recovery_secs) {
            break (rss, took.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let per_conn_kib = (with_conns - idle) * 1024.0 / idle_conns as f64;
    Ok(vec![
        idle,
        with_conns,
        per_conn_kib,
        after_conns,
        peak,
        after,
        took,
    ])
}

/// As many idle connections as asked, within the open-file limit: a proxy holds two
/// descriptors per connection, plus some of its own.
pub fn idle_conns(wanted: usize, nofile: u64) -> usize {
    let fit = (nofile.saturating_sub(1000) / 2) as usize;
    wanted.min(fit)
}

/// Starts the load tool in the client pod with piped stdin/stdout.
fn spawn_tool(ctx: &Ctx, name: &str, args: &[String]) -> Result<Proc> {
    let mut c = topo::command(
        &ctx.topo.client(),
        &ctx.bins.tool,
        &ctx.bins.tool_args(args),
    );
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let child = c.spawn().with_context(|| format!("starting {name}"))?;
    Ok(Proc::from_child(ctx.topo, name, child))
}
