//! Outbound capture scenarios against the real agent (DESIGN.md §2 "Outbound", §3).
//!
//! Each test builds its own node, pods and agent (unique names), so they run in parallel.
//! The agent binary comes from `SLUICE_AGENT_BIN` or `target/debug/mesh-agent`; if it is
//! missing every test here fails loudly.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tests::bpf;
use tests::pod::finish_dial;
use tests::{
    Agent, AgentConfig, ConnResult, DialOpts, Node, Pod, Server, Workload, delta, poll_until,
};

const MIB: u64 = 1024 * 1024;
const OPENED: &str = "istio_tcp_connections_opened_total";

fn addr(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn server_saw_ip(r: &ConnResult) -> IpAddr {
    let saw = r
        .server_saw
        .as_deref()
        .unwrap_or_else(|| panic!("server did not report a peer: {r:?}"));
    saw.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("bad peer {saw}: {e}"))
        .ip()
}

/// Asserts one connection through the mesh worked as if direct: payload intact both ways,
/// `getpeername` is what was dialled, and the server saw the client pod's address.
fn assert_transparent(r: &ConnResult, from: IpAddr, to: SocketAddr) {
    assert!(r.is_ok(), "connection {to} failed: {r:?}");
    assert_eq!(
        r.peer.as_deref(),
        Some(to.to_string().as_str()),
        "getpeername: {r:?}"
    );
    assert_eq!(
        server_saw_ip(r),
        from,
        "the server saw another client address: {r:?}"
    );
}

/// The shape most scenarios share: enrolled `client-a`, and `server-b` (known to the agent,
/// not enrolled) serving on 8080.
fn client_and_server(node: &Node) -> (Pod, Pod, Server, AgentConfig) {
    let a = node.add_pod("client-a").unwrap();
    let b = node.add_pod("server-b").unwrap();
    let server = b.serve(8080, "server-b").unwrap();
    let cfg = AgentConfig::new(node)
        .with(Workload::enrolled(&a))
        .with(Workload::known(&b));
    (a, b, server, cfg)
}

fn opened_from(agent: &Agent, source: &str) -> f64 {
    agent
        .metrics()
        .unwrap()
        .sum(OPENED, &[("source_workload", source)])
}

fn counters(agent: &Agent) -> BTreeMap<String, u64> {
    agent.counters().unwrap()
}

/// Scenario 1: an enrolled pod's connection goes through the agent and stays transparent.
#[test]
fn enrolled_pod_is_captured_end_to_end() {
    let node = Node::new().unwrap();
    let (a, b, server, cfg) = client_and_server(&node);
    let agent = Agent::start(&node, cfg).unwrap();

    let before = counters(&agent);
    let opened_before = opened_from(&agent, "client-a");
    let target = addr(b.ip(), 8080);
    let r = a.dial_one(target, MIB).unwrap();
    assert_transparent(&r, a.ip().into(), target);
    assert_eq!((r.sent, r.received), (MIB, MIB));

    let after = counters(&agent);
    assert_eq!(
        delta(&before, &after, "captured").unwrap(),
        1,
        "before {before:?} after {after:?}"
    );
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert!(
        accepted[0].peer.starts_with(&format!("{}:", a.ip())),
        "{accepted:?}"
    );
    poll_until(
        Duration::from_secs(5),
        "opened metric for client-a rises",
        || Ok((opened_from(&agent, "client-a") > opened_before).then_some(())),
    )
    .unwrap();
}

/// Scenario 1, metrics side: Istio's TCP metrics carry both workloads and the byte counts.
#[test]
fn tcp_metrics_name_workloads_and_count_bytes() {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node);
    let agent = Agent::start(&node, cfg).unwrap();

    let r = a.dial_one(addr(b.ip(), 8080), MIB).unwrap();
    assert!(r.is_ok(), "{r:?}");
    let labels = [
        ("reporter", "source"),
        ("source_workload", "client-a"),
        ("source_workload_namespace", "default"),
        ("destination_workload", "server-b"),
    ];
    poll_until(
        Duration::from_secs(5),
        "tcp metrics for client-a -> server-b",
        || {
            let m = agent.metrics()?;
            let got = [
                m.sum(OPENED, &labels),
                m.sum("istio_tcp_connections_closed_total", &labels),
                m.sum("istio_tcp_sent_bytes_total", &labels),
                m.sum("istio_tcp_received_bytes_total", &labels),
            ];
            let ok = got[0] >= 1.0 && got[1] >= 1.0 && got[2] >= MIB as f64 && got[3] >= MIB as f64;
            if !ok {
                anyhow::bail!(
                    "opened/closed/sent/received = {got:?}; istio samples: {:?}",
                    m.samples
                        .iter()
                        .filter(|s| s.name.starts_with("istio_tcp"))
                        .collect::<Vec<_>>()
                );
            }
            Ok(Some(()))
        },
    )
    .unwrap();
}

/// Scenario 1 over IPv6: connect6 captures too.
#[test]
fn enrolled_pod_ipv6_is_captured() {
    let node = Node::new().unwrap();
    let a = node.add_pod("client-a").unwrap();
    let b = node.add_pod("server-b").unwrap();
    let _server = b.serve_args(8080, "server-b", &["--ipv6"]).unwrap();
    let cfg = AgentConfig::new(&node)
        .with(Workload::enrolled(&a))
        .with(Workload::known(&b));
    let agent = Agent::start(&node, cfg).unwrap();

    let before = counters(&agent);
    let target = addr(b.ip6(), 8080);
    let r = a.dial_one(target, 64 * 1024).unwrap();
    assert_transparent(&r, a.ip6().into(), target);
    assert_eq!(delta(&before, &counters(&agent), "captured").unwrap(), 1);
}

/// Scenario 2: non-enrolled pods, loopback inside an enrolled pod and excluded ports pass
/// untouched, and each is counted under its own skip reason.
#[test]
fn uncaptured_traffic_is_left_alone() {
    let node = Node::new().unwrap();
    let a = node.add_pod("client-a").unwrap();
    let b = node.add_pod("server-b").unwrap();
    let c = node.add_pod("known-c").unwrap();
    let d = node.add_pod("unlisted-d").unwrap();
    let _s1 = b.serve(8080, "server-b").unwrap();
    let _s2 = b.serve(9090, "server-b-excluded").unwrap();
    let _lo = a
        .serve_args(7070, "a-loopback", &["--bind", "127.0.0.1:7070"])
        .unwrap();
    let cfg = AgentConfig::new(&node)
        .with(Workload::enrolled(&a).exclude_ports(&[9090]))
        .with(Workload::known(&b))
        .with(Workload::known(&c));
    let agent = Agent::start(&node, cfg).unwrap();

    let check = |what: &str, from: &Pod, target: SocketAddr, from_ip: IpAddr, counter: &str| {
        let before = counters(&agent);
        let r = from.dial_one(target, 4096).unwrap();
        assert_transparent(&r, from_ip, target);
        let after = counters(&agent);
        assert!(
            delta(&before, &after, counter).unwrap() >= 1,
            "{what}: {counter} did not rise: {before:?} -> {after:?}"
        );
        assert_eq!(
            delta(&before, &after, "captured").unwrap(),
            0,
            "{what} was captured: {before:?} -> {after:?}"
        );
    };
    check(
        "known, not enrolled pod",
        &c,
        addr(b.ip(), 8080),
        c.ip().into(),
        "skip_not_enrolled",
    );
    check(
        "unlisted pod",
        &d,
        addr(b.ip(), 8080),
        d.ip().into(),
        "skip_not_enrolled",
    );
    let lo = addr(std::net::Ipv4Addr::LOCALHOST, 7070);
    check("loopback in enrolled pod", &a, lo, lo.ip(), "skip_loopback");
    check(
        "excluded port",
        &a,
        addr(b.ip(), 9090),
        a.ip().into(),
        "skip_excluded_port",
    );
}

/// Scenario 3: 200 simultaneous connections from two enrolled pods to two destinations each
/// reach the right server with the right source (pods' loopback tuples must not mix).
#[test]
fn concurrent_connections_reach_their_destinations() {
    let node = Node::new().unwrap();
    let a1 = node.add_pod("client-a1").unwrap();
    let a2 = node.add_pod("client-a2").unwrap();
    let b = node.add_pod("server-b").unwrap();
    let c = node.add_pod("server-c").unwrap();
    let sb = b.serve(8080, "server-b").unwrap();
    let sc = c.serve(8080, "server-c").unwrap();
    let cfg = AgentConfig::new(&node)
        .with(Workload::enrolled(&a1))
        .with(Workload::enrolled(&a2))
        .with(Workload::known(&b))
        .with(Workload::known(&c));
    let agent = Agent::start(&node, cfg).unwrap();

    let before = counters(&agent);
    let opts = DialOpts {
        bytes: 16 * 1024,
        count: 50,
        barrier: true,
        timeout_ms: 10_000,
        ..Default::default()
    };
    let plan = [
        (&a1, &b, "server-b"),
        (&a1, &c, "server-c"),
        (&a2, &b, "server-b"),
        (&a2, &c, "server-c"),
    ];
    // Spawned all at once from this thread; each process opens its 50 before sending.
    let procs: Vec<_> = plan
        .iter()
        .map(|(from, to, _)| from.spawn_dial(addr(to.ip(), 8080), &opts).unwrap())
        .collect();
    for (proc, (from, to, id)) in procs.into_iter().zip(plan) {
        let target = addr(to.ip(), 8080);
        let report = finish_dial(proc, &opts).unwrap();
        assert_eq!(report.results.len(), 50);
        for r in &report.results {
            assert_transparent(r, from.ip().into(), target);
            assert_eq!(
                r.server_id.as_deref(),
                Some(id),
                "{} -> {target} reached the wrong server: {r:?}",
                from.name()
            );
        }
    }
    assert_eq!(sb.accepted().len(), 100);
    assert_eq!(sc.accepted().len(), 100);
    assert_eq!(delta(&before, &counters(&agent), "captured").unwrap(), 200);
}

/// Scenario 4a: the agent's own upstream connects are not captured again (no loop): the
/// server sees exactly as many connections as were dialled, and `captured` rose by as many.
#[test]
fn agent_upstream_is_not_recaptured() {
    let node = Node::new().unwrap();
    let (a, b, server, cfg) = client_and_server(&node);
    let agent = Agent::start(&node, cfg).unwrap();

    let before = counters(&agent);
    let opts = DialOpts {
        bytes: 1000,
        count: 20,
        concurrency: 4,
        ..Default::default()
    };
    let report = a.dial(addr(b.ip(), 8080), &opts).unwrap();
    assert!(report.results.iter().all(ConnResult::is_ok), "{report:?}");
    std::thread::sleep(Duration::from_millis(300));
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 20, "{accepted:?}");
    assert!(
        accepted
            .iter()
            .all(|c| c.peer.starts_with(&format!("{}:", a.ip()))),
        "{accepted:?}"
    );
    assert_eq!(delta(&before, &counters(&agent), "captured").unwrap(), 20);
}

/// Scenario 4b: a pod dialling the proxy's own listener (pod IP:15001 or the in-pod
/// loopback listener) is refused or closed promptly, never looped or left hanging, and the
/// agent keeps working.
#[test]
fn dialling_the_proxy_port_is_refused_not_looped() {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node);
    let agent = Agent::start(&node, cfg).unwrap();

    let listeners: Vec<SocketAddr> = a
        .listeners()
        .unwrap()
        .into_iter()
        .filter(|l| l.port() == 15001)
        .collect();
    assert!(
        !listeners.is_empty(),
        "no proxy listener on :15001 in the enrolled pod's netns"
    );
    let mut targets = vec![addr(a.ip(), 15001)];
    targets.extend(listeners.iter().filter(|l| !l.ip().is_unspecified()));
    let opened_before = opened_from(&agent, "client-a");
    for target in targets {
        let opts = DialOpts {
            bytes: 100,
            timeout_ms: 3000,
            ..Default::default()
        };
        let start = Instant::now();
        let r = a.dial(target, &opts).unwrap().results.remove(0);
        assert!(
            ["refused", "reset", "eof", "broken_pipe"].contains(&r.result.as_str()),
            "dialling the proxy's own port {target} should be refused or closed: {r:?}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "{target} took {:?}",
            start.elapsed()
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let opened = opened_from(&agent, "client-a") - opened_before;
    assert!(
        opened <= 2.0,
        "{opened} connections opened for two dials: a loop?"
    );
    assert_eq!(
        agent
            .get(tests::agent::READINESS, "/healthz/ready")
            .unwrap()
            .status,
        200
    );
    let target = addr(b.ip(), 8080);
    assert_transparent(&a.dial_one(target, 1000).unwrap(), a.ip().into(), target);
}

/// Scenario 5: when the upstream refuses, the app sees a reset, not a clean EOF (which it
/// could take for an empty but successful reply).
#[test]
fn upstream_refusal_is_a_reset() {
    let node = Node::new().unwrap();
    let a = node.add_pod("client-a").unwrap();
    let b = node.add_pod("server-b").unwrap();
    let cfg = AgentConfig::new(&node)
        .with(Workload::enrolled(&a))
        .with(Workload::known(&b));
    let agent = Agent::start(&node, cfg).unwrap();

    let before = counters(&agent);
    let r = a.dial_one(addr(b.ip(), 8089), 100).unwrap();
    assert_eq!(
        delta(&before, &counters(&agent), "captured").unwrap(),
        1,
        "not captured: {r:?}"
    );
    assert_eq!(r.result, "reset", "expected ECONNRESET, got {r:?}");
}

/// Scenario 6a: removing a pod from the config stops capture for it within 5 s, and adding
/// it back resumes it.
#[test]
fn config_reload_stops_and_resumes_capture() {
    let node = Node::new().unwrap();
    let (a, b, _server, full) = client_and_server(&node);
    let mut agent = Agent::start(&node, full.clone()).unwrap();
    let target = addr(b.ip(), 8080);

    // Is one dial captured? Every dial must also work, captured or not.
    let captured_dial = |agent: &Agent| -> anyhow::Result<bool> {
        let before = agent.counters()?;
        let r = a.dial_one(target, 1000)?;
        assert_transparent(&r, a.ip().into(), target);
        Ok(delta(&before, &agent.counters()?, "captured")? > 0)
    };
    assert!(
        captured_dial(&agent).unwrap(),
        "enrolled pod not captured at start"
    );

    agent.reload(full.clone().without("client-a")).unwrap();
    let t = Instant::now();
    poll_until(
        Duration::from_secs(5),
        "capture stops after removing client-a",
        || Ok((!captured_dial(&agent)?).then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
    eprintln!("capture stopped {:?} after the rewrite", t.elapsed());
    assert!(
        !captured_dial(&agent).unwrap(),
        "capture came back without a config change"
    );

    agent.reload(full).unwrap();
    poll_until(
        Duration::from_secs(5),
        "capture resumes after re-adding client-a",
        || Ok(captured_dial(&agent)?.then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
}

/// Scenario 6b: `mesh-agent cleanup` after a crash leaves no pins and no programs attached
/// anywhere in the test's cgroup subtree, and pods then connect directly.
#[test]
fn cleanup_leaves_no_pins_or_programs() {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node);
    let pin_dir = cfg.pin_dir();
    let mut agent = Agent::start(&node, cfg).unwrap();

    let attached = bpf::attached_under(node.test_cgroup()).unwrap();
    assert!(
        !attached.is_empty(),
        "no programs attached under {} while running",
        node.test_cgroup().display()
    );
    let pins = bpf::pins_under(&pin_dir);
    assert!(
        !pins.is_empty(),
        "nothing pinned under {} while running",
        pin_dir.display()
    );

    agent.stop().unwrap();
    assert_eq!(
        bpf::pins_under(&pin_dir),
        Vec::<std::path::PathBuf>::new(),
        "pins left after cleanup"
    );
    let left = bpf::attached_under(node.test_cgroup()).unwrap();
    assert!(
        left.is_empty(),
        "programs still attached after cleanup: {left:?}"
    );
    let target = addr(b.ip(), 8080);
    assert_transparent(&a.dial_one(target, 1000).unwrap(), a.ip().into(), target);
}

/// A process in a child cgroup of an enrolled pod (the pod/container layout) is captured.
#[test]
fn container_cgroup_of_enrolled_pod_is_captured() {
    let node = Node::new().unwrap();
    let a = node.add_pod("client-a").unwrap();
    let b = node.add_pod("server-b").unwrap();
    let _server = b.serve(8080, "server-b").unwrap();
    let container = a.container("app").unwrap();
    let cfg = AgentConfig::new(&node)
        .with(Workload::enrolled(&a))
        .with(Workload::known(&b));
    let agent = Agent::start(&node, cfg).unwrap();

    let before = counters(&agent);
    let target = addr(b.ip(), 8080);
    let report = a
        .dial_in(&container, target, &DialOpts::bytes(MIB))
        .unwrap();
    assert_transparent(&report.results[0], a.ip().into(), target);
    assert_eq!(delta(&before, &counters(&agent), "captured").unwrap(), 1);
}

/// Original-destination entries are deleted when connections close, including connects
/// the upstream refused (DESIGN §3: nothing relies on LRU eviction).
#[test]
fn orig_dst_entries_are_deleted_on_close() {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node);
    let agent = Agent::start(&node, cfg).unwrap();

    let before = counters(&agent);
    let ok = DialOpts {
        bytes: 1000,
        count: 10,
        concurrency: 5,
        ..Default::default()
    };
    let report = a.dial(addr(b.ip(), 8080), &ok).unwrap();
    assert!(report.results.iter().all(ConnResult::is_ok), "{report:?}");
    let refused = DialOpts {
        bytes: 10,
        count: 5,
        concurrency: 5,
        ..Default::default()
    };
    let report = a.dial(addr(b.ip(), 8089), &refused).unwrap();
    assert!(
        report.results.iter().all(|r| r.result != "ok"),
        "{report:?}"
    );
    assert_eq!(delta(&before, &counters(&agent), "captured").unwrap(), 15);
    poll_until(
        Duration::from_secs(5),
        "original-destination entries drain to 0",
        || {
            let n = agent.orig_dst_entries()?;
            Ok((n == 0).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}; /debug/ebpf: {}", agent.debug_ebpf().unwrap()));
}

/// A bad config file is rejected and the old config stays in force (DESIGN §5): the agent
/// stays ready and keeps capturing the pod it had enrolled.
#[test]
fn bad_config_keeps_the_old_one() {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node);
    let agent = Agent::start(&node, cfg).unwrap();

    agent
        .write_raw_config("node: [unclosed\nworkloads: 7\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        agent
            .get(tests::agent::READINESS, "/healthz/ready")
            .unwrap()
            .status,
        200
    );
    let before = counters(&agent);
    let target = addr(b.ip(), 8080);
    assert_transparent(&a.dial_one(target, 1000).unwrap(), a.ip().into(), target);
    assert_eq!(
        delta(&before, &counters(&agent), "captured").unwrap(),
        1,
        "capture lost after a bad config; log:\n{}",
        agent.log_tail(20)
    );
}
