//! The memory scenario: the proxy's RSS idle, with many idle connections open, through a
//! burst and after it.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

use super::procstat;
use super::scenario::{Ctx, TOOL_PORT};
use super::tool::{ECHO, HOLD};
use super::topo::{self, Proc, SERVER_IP};

/// Idle RSS, RSS with `idle_conns` open, KiB per connection, RSS once they are closed,
/// burst peak, RSS after the burst (once back within 20% of idle, or at the deadline) and
/// how long that took. The burst comes after the idle connections, so what they left
/// behind counts against it too.
pub fn memory(ctx: &Ctx, pid: u32) -> Result<Vec<f64>> {
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
