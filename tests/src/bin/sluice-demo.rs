//! `sluice-demo`: one node, two enrolled clients and an enrolled server, the real agent, some
//! traffic (each connection captured on its way out of the client pod and on its way into the
//! server pod) and a short report of what the mesh saw. Cleans up everything; exits non-zero on any
//! failure. Run as root: `SLUICE_AGENT_BIN=target/debug/mesh-agent target/debug/sluice-demo`.

use anyhow::{Context, Result, ensure};
use std::net::SocketAddr;
use tests::identity::TestCa;
use tests::{Agent, AgentConfig, DialOpts, DialReport, Node, Workload, bpf};

fn main() {
    match run() {
        Ok(()) => println!("\nsluice-demo: OK (everything cleaned up)"),
        Err(e) => {
            eprintln!("\nsluice-demo: FAILED: {e:#}");
            std::process::exit(1);
        }
    }
}

fn summarize(from: &str, report: &DialReport) -> Result<()> {
    for (i, r) in report.results.iter().enumerate() {
        println!(
            "  {from} -> {} #{i}: {} | sent {} B, got {} B, payload {} | app's getpeername {} | server {} saw client {}",
            r.target,
            r.result,
            r.sent,
            r.received,
            if r.sent_ok && r.recv_ok {
                "intact"
            } else {
                "CORRUPT"
            },
            r.peer.as_deref().unwrap_or("-"),
            r.server_id.as_deref().unwrap_or("-"),
            r.server_saw.as_deref().unwrap_or("-"),
        );
        ensure!(r.is_ok(), "{from} -> {}: {r:?}", r.target);
        ensure!(
            r.peer.as_deref() == Some(r.target.as_str()),
            "getpeername is not the dialled address: {r:?}"
        );
    }
    Ok(())
}

fn run() -> Result<()> {
    let node = Node::new()?;
    let a = node.add_pod("client-a")?;
    let c = node.add_pod("client-c")?;
    let s = node.add_pod("server")?;
    let outside = node.add_pod("outside")?;
    let server = s.serve(8080, "server")?;
    // A CA of the demo's own, so the enrolled pods talk mutual TLS through the tunnel.
    let ca = TestCa::new()?;
    let cfg = AgentConfig::new(&node)
        .identity(ca.identity())
        .with(Workload::enrolled(&a))
        .with(Workload::enrolled(&c))
        .with(Workload::enrolled(&s));
    let pin_dir = cfg.pin_dir();
    println!(
        "node {}: agent cgroupRoot {}",
        node.name(),
        node.cgroup_root().display()
    );
    for p in [&a, &c, &s, &outside] {
        println!(
            "  pod {:<9} {:<12} netns {}",
            p.name(),
            p.ip(),
            p.netns_name()
        );
    }
    // Debug logging makes the agent log each relayed connection with its original destination.
    let mut agent = Agent::start_with_env(&node, cfg, &[("RUST_LOG", "info,mesh_agent=debug")])?;
    println!("agent ready (pid {})", agent.pid().unwrap_or(0));

    let target = SocketAddr::new(s.ip().into(), 8080);
    println!("\ntraffic:");
    summarize("client-a", &a.dial(target, &DialOpts::bytes(1 << 20))?)?;
    let many = DialOpts {
        bytes: 64 * 1024,
        count: 5,
        concurrency: 5,
        ..Default::default()
    };
    summarize("client-c", &c.dial(target, &many)?)?;
    summarize(
        "outside (not in the mesh)",
        &outside.dial(target, &DialOpts::bytes(4096))?,
    )?;
    let seen: Vec<String> = server.accepted().into_iter().map(|c| c.peer).collect();
    println!("  server accepted {} connections from {seen:?}", seen.len());
    ensure!(seen.len() == 7, "server should have accepted 7 connections");
    // Delivered by the proxy, yet from the clients' own addresses.
    let clients = [
        a.ip().to_string(),
        c.ip().to_string(),
        outside.ip().to_string(),
    ];
    ensure!(
        seen.iter()
            .all(|peer| clients.iter().any(|ip| peer.starts_with(&format!("{ip}:")))),
        "the server saw an address that is not a client pod's: {seen:?}"
    );

    let dbg = agent.debug_ebpf()?;
    println!("\n/debug/ebpf:");
    println!(
        "  counters: {}",
        dbg.get("counters").context("no counters")?
    );
    for (k, v) in dbg.as_object().into_iter().flatten() {
        if k != "counters" {
            let v = v.to_string();
            println!("  {k}: {}", v.get(..400).unwrap_or(&v));
        }
    }
    let captured = agent.counter("captured")?;
    ensure!(captured >= 6, "captured = {captured}, expected at least 6");
    // Mesh traffic arrives on the tunnel port, which sk_lookup leaves alone; the outside
    // client's plaintext connection is the one captured inbound.
    let inbound = agent.counter("inbound_captured")?;
    ensure!(
        inbound >= 1,
        "inbound_captured = {inbound}, expected at least 1"
    );

    println!("\nagent log, connections done (dst = the original destination):");
    let log = agent.log();
    let done: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("connection done"))
        .collect();
    for line in &done {
        println!("  {line}");
    }
    ensure!(
        done.len() == 13,
        "agent logged {} finished connections, expected 13 (6 out, 6 in through the tunnel, 1 in plaintext)",
        done.len()
    );

    println!("\nmetrics:");
    let m = agent.metrics()?;
    for s in m.samples.iter().filter(|s| {
        s.name == "istio_tcp_connections_opened_total"
            || s.name.starts_with("sluice_hbone")
            || s.name.starts_with("sluice_ebpf")
    }) {
        let labels: Vec<String> = s
            .labels
            .iter()
            .filter(|(k, _)| {
                [
                    "source_workload",
                    "destination_workload",
                    "reporter",
                    "connection_security_policy",
                    "tunnel",
                ]
                .contains(&k.as_str())
            })
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("  {} {{{}}} {}", s.name, labels.join(","), s.value);
    }
    let opened = m.sum(
        "istio_tcp_connections_opened_total",
        &[("source_workload", "client-a")],
    );
    ensure!(
        opened >= 1.0,
        "no istio_tcp_connections_opened_total for client-a"
    );
    let inbound_opened = m.sum(
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("destination_workload", "server"),
        ],
    );
    ensure!(
        inbound_opened >= 7.0,
        "istio_tcp_connections_opened_total{{reporter=\"destination\"}} for server is {inbound_opened}"
    );
    let mutual = m.sum(
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
        ],
    );
    ensure!(
        mutual == 6.0,
        "{mutual} connections arrived over mutual TLS, expected 6"
    );

    agent.stop()?;
    let pins = bpf::pins_under(&pin_dir);
    ensure!(pins.is_empty(), "pins left after cleanup: {pins:?}");
    let progs = bpf::attached_under(node.test_cgroup())?;
    ensure!(
        progs.is_empty(),
        "programs left attached after cleanup: {progs:?}"
    );
    println!(
        "\ncleanup: no pins under {}, no programs attached",
        pin_dir.display()
    );
    Ok(())
}
