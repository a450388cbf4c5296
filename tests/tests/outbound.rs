//! Outbound capture scenarios against the real agent, each run in every redirect mode
//! (`ebpf::*`, `nftables::*`, `iptables::*`) with the same assertions: the modes must be
//! interchangeable for the pod (DESIGN.md §2 "Outbound", §3). Scenarios that only mean
//! something for eBPF live in `ebpf_only.rs`.
//!
//! "Captured" is judged the same way in every mode (see `tests::capture`): the proxy opened
//! the connection. In eBPF mode the programs' counters must agree; in netfilter modes the
//! pod's netns must hold our rules while enrolled, and none once it is not.
//!
//! Each test builds its own node, pods and agent (unique names), so they run in parallel.
//! The agent binary comes from `SLUICE_AGENT_BIN` or `target/debug/mesh-agent`; if it is
//! missing every test here fails loudly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tests::capture::TcpCounts;
use tests::netfilter::expect_rules;
use tests::pod::finish_dial;
use tests::scenario::{MIB, addr, assert_transparent, client_and_server};
use tests::{
    Agent, AgentConfig, ConnResult, DialOpts, Mode, Node, Pod, Snapshot, Workload, poll_until,
};

tests::in_every_mode!(
    enrolled_pod_is_captured_end_to_end,
    tcp_metrics_name_workloads_and_count_bytes,
    enrolled_pod_ipv6_is_captured,
    uncaptured_traffic_is_left_alone,
    concurrent_connections_reach_their_destinations,
    agent_upstream_is_not_recaptured,
    dialling_the_proxy_port_is_refused_not_looped,
    upstream_refusal_is_a_reset,
    config_reload_stops_and_resumes_capture,
    container_cgroup_of_enrolled_pod_is_captured,
    bad_config_keeps_the_old_one,
    exclusion_change_applies_in_place,
    ip_change_keeps_the_pod_captured,
);

/// Starts the agent and checks each pod's netns holds exactly the rules its mode writes.
fn start<'n>(node: &'n Node, cfg: AgentConfig) -> Agent<'n> {
    let agent = Agent::start(node, cfg.clone()).unwrap();
    expect_rules(node, &cfg).unwrap();
    agent
}

/// The agent is still ready and `a`'s connection to `b`:8080 still works transparently.
fn assert_serving(agent: &Agent, a: &Pod, b: &Pod) {
    let ready = agent
        .get(tests::agent::READINESS, "/healthz/ready")
        .unwrap();
    assert_eq!(ready.status, 200, "{}", ready.body);
    let target = addr(b.ip(), 8080);
    assert_transparent(&a.dial_one(target, 1000).unwrap(), a.ip().into(), target);
}

fn snapshot(agent: &Agent) -> Snapshot {
    Snapshot::take(agent).unwrap()
}

/// Scenario 1: an enrolled pod's connection goes through the agent and stays transparent.
fn enrolled_pod_is_captured_end_to_end(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, server, cfg) = client_and_server(&node, mode);
    let agent = start(&node, cfg);

    let before = snapshot(&agent);
    let target = addr(b.ip(), 8080);
    let r = a.dial_one(target, MIB).unwrap();
    assert_transparent(&r, a.ip().into(), target);
    assert_eq!((r.sent, r.received), (MIB, MIB));
    before.expect_captured(&agent, &[("client-a", 1)]).unwrap();
    let accepted = server.accepted();
    assert_eq!(accepted.len(), 1, "{accepted:?}");
    assert!(
        accepted[0].peer.starts_with(&format!("{}:", a.ip())),
        "{accepted:?}"
    );
}

/// Scenario 1, metrics side: Istio's TCP metrics carry both workloads and the byte counts.
fn tcp_metrics_name_workloads_and_count_bytes(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node, mode);
    let agent = start(&node, cfg);

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
            let got = TcpCounts::of(&m, &labels);
            let mib = MIB as f64;
            let ok =
                got.opened >= 1.0 && got.closed >= 1.0 && got.sent >= mib && got.received >= mib;
            if !ok {
                anyhow::bail!(
                    "{got:?}; istio samples: {:?}",
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

/// Scenario 1 over IPv6: connect6 (or the ip6 rules) capture too.
fn enrolled_pod_ipv6_is_captured(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node, mode);
    let _server6 = b.serve_args(8086, "server-b6", &["--ipv6"]).unwrap();
    let agent = start(&node, cfg);

    let before = snapshot(&agent);
    let target = addr(b.ip6(), 8086);
    let r = a.dial_one(target, 64 * 1024).unwrap();
    assert_transparent(&r, a.ip6().into(), target);
    before.expect_captured(&agent, &[("client-a", 1)]).unwrap();
}

/// Scenario 2: non-enrolled pods, loopback inside an enrolled pod, excluded ports and
/// excluded CIDRs pass untouched (in eBPF mode each under its own skip reason).
fn uncaptured_traffic_is_left_alone(mode: Mode) {
    let node = Node::new().unwrap();
    let [a, b, c, d, e] = node
        .add_pods([
            "client-a",
            "server-b",
            "known-c",
            "unlisted-d",
            "excluded-e",
        ])
        .unwrap();
    let _s1 = b.serve(8080, "server-b").unwrap();
    let _s2 = b.serve(9090, "server-b-excluded").unwrap();
    let _s3 = e.serve(8080, "excluded-e").unwrap();
    let _lo = a
        .serve_args(7070, "a-loopback", &["--bind", "127.0.0.1:7070"])
        .unwrap();
    let cfg = AgentConfig::new(&node)
        .mode(mode)
        .with(
            Workload::enrolled(&a)
                .exclude_ports(&[9090])
                .exclude_cidrs(&[format!("{}/32", e.ip())]),
        )
        .with(Workload::known(&b))
        .with(Workload::known(&c));
    let agent = start(&node, cfg);

    let lo = addr(std::net::Ipv4Addr::LOCALHOST, 7070);
    let cases = [
        (
            "known, not enrolled pod",
            &c,
            addr(b.ip(), 8080),
            "skip_not_enrolled",
        ),
        ("unlisted pod", &d, addr(b.ip(), 8080), "skip_not_enrolled"),
        ("loopback in enrolled pod", &a, lo, "skip_loopback"),
        (
            "excluded port",
            &a,
            addr(b.ip(), 9090),
            "skip_excluded_port",
        ),
        (
            "excluded CIDR",
            &a,
            addr(e.ip(), 8080),
            "skip_excluded_cidr",
        ),
    ];
    for (what, from, target, reason) in cases {
        let from_ip = match target.ip().is_loopback() {
            true => target.ip(),
            false => from.ip().into(),
        };
        let before = snapshot(&agent);
        let r = from.dial_one(target, 4096).unwrap();
        assert_transparent(&r, from_ip, target);
        before
            .expect_not_captured(&agent, reason)
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    }
}

/// Scenario 3: 200 simultaneous connections from two enrolled pods to two destinations each
/// reach the right server with the right source (pods' connections must not mix).
fn concurrent_connections_reach_their_destinations(mode: Mode) {
    let node = Node::new().unwrap();
    let [a1, a2, b, c] = node
        .add_pods(["client-a1", "client-a2", "server-b", "server-c"])
        .unwrap();
    let sb = b.serve(8080, "server-b").unwrap();
    let sc = c.serve(8080, "server-c").unwrap();
    let cfg = AgentConfig::new(&node)
        .mode(mode)
        .with(Workload::enrolled(&a1))
        .with(Workload::enrolled(&a2))
        .with(Workload::known(&b))
        .with(Workload::known(&c));
    let agent = start(&node, cfg);

    let before = snapshot(&agent);
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
    before
        .expect_captured(&agent, &[("client-a1", 100), ("client-a2", 100)])
        .unwrap();
}

/// Scenario 4a: the agent's own upstream connects are not captured again (no loop): the
/// server sees exactly as many connections as were dialled, and as many were captured.
fn agent_upstream_is_not_recaptured(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, server, cfg) = client_and_server(&node, mode);
    let agent = start(&node, cfg);

    let before = snapshot(&agent);
    let opts = DialOpts::bytes(1000).times(20, 4);
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
    before.expect_captured(&agent, &[("client-a", 20)]).unwrap();
}

/// Scenario 4b: a pod dialling the proxy's own listener (pod IP:15001 or the in-pod
/// listeners) is refused or closed promptly, never looped or left hanging, and the agent
/// keeps working.
fn dialling_the_proxy_port_is_refused_not_looped(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node, mode);
    let agent = start(&node, cfg);

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
    let before = snapshot(&agent);
    for target in &targets {
        let opts = DialOpts {
            bytes: 100,
            timeout_ms: 3000,
            ..Default::default()
        };
        let start = Instant::now();
        let r = a.dial(*target, &opts).unwrap().results.remove(0);
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
    let opened = before.opened_since(&snapshot(&agent), "client-a");
    assert!(
        opened <= targets.len() as f64,
        "{opened} connections opened for {} dials: a loop?",
        targets.len()
    );
    assert_serving(&agent, &a, &b);
}

/// Scenario 5: when the upstream refuses, the app sees a reset, not a clean EOF (which it
/// could take for an empty but successful reply).
fn upstream_refusal_is_a_reset(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node, mode);
    let agent = start(&node, cfg);

    let before = snapshot(&agent);
    let r = a.dial_one(addr(b.ip(), 8089), 100).unwrap();
    before
        .expect_captured(&agent, &[("client-a", 1)])
        .unwrap_or_else(|e| panic!("not captured ({e:#}): {r:?}"));
    assert_eq!(r.result, "reset", "expected ECONNRESET, got {r:?}");
}

/// Scenario 6a: removing a pod from the config stops capture for it within 5 s (and, in
/// netfilter modes, removes its rules), and adding it back resumes it.
fn config_reload_stops_and_resumes_capture(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, full) = client_and_server(&node, mode);
    let mut agent = start(&node, full.clone());
    let target = addr(b.ip(), 8080);

    // Is one dial captured? Every dial must also work, captured or not.
    let captured_dial = |agent: &Agent| -> anyhow::Result<bool> {
        let before = Snapshot::take(agent)?;
        let r = a.dial_one(target, 1000)?;
        assert_transparent(&r, a.ip().into(), target);
        Ok(before.opened_since(&Snapshot::take(agent)?, "client-a") > 0.0)
    };
    assert!(
        captured_dial(&agent).unwrap(),
        "enrolled pod not captured at start"
    );

    let without = full.clone().without("client-a");
    agent.reload(without.clone()).unwrap();
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
    expect_rules(&node, &without).unwrap();

    agent.reload(full.clone()).unwrap();
    poll_until(
        Duration::from_secs(5),
        "capture resumes after re-adding client-a",
        || Ok(captured_dial(&agent)?.then_some(())),
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
    expect_rules(&node, &full).unwrap();
}

/// A process in a child cgroup of an enrolled pod (the pod/container layout) is captured.
fn container_cgroup_of_enrolled_pod_is_captured(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node, mode);
    let container = a.container("app").unwrap();
    let agent = start(&node, cfg);

    let before = snapshot(&agent);
    let target = addr(b.ip(), 8080);
    let report = a
        .dial_in(&container, target, &DialOpts::bytes(MIB))
        .unwrap();
    assert_transparent(&report.results[0], a.ip().into(), target);
    before.expect_captured(&agent, &[("client-a", 1)]).unwrap();
}

/// A bad config file is rejected and the old config stays in force (DESIGN §5): the agent
/// stays ready and keeps capturing the pod it had enrolled.
fn bad_config_keeps_the_old_one(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node, mode);
    let agent = start(&node, cfg.clone());

    agent
        .write_raw_config("node: [unclosed\nworkloads: 7\n")
        .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let before = snapshot(&agent);
    assert_serving(&agent, &a, &b);
    before
        .expect_captured(&agent, &[("client-a", 1)])
        .unwrap_or_else(|e| {
            panic!(
                "capture lost after a bad config ({e:#}); log:\n{}",
                agent.log_tail(20)
            )
        });
    expect_rules(&node, &cfg).unwrap();
}

/// Adding an excluded port to an enrolled pod takes effect without losing capture of
/// the rest.
fn exclusion_change_applies_in_place(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node, mode);
    let _other = b.serve(9090, "server-b-9090").unwrap();
    let mut agent = start(&node, cfg.clone());
    let to_9090 = addr(b.ip(), 9090);
    let before = snapshot(&agent);
    assert_transparent(&a.dial_one(to_9090, 1000).unwrap(), a.ip().into(), to_9090);
    before.expect_captured(&agent, &[("client-a", 1)]).unwrap();

    let excluded = Workload::enrolled(&a).exclude_ports(&[9090]);
    let changed = cfg.without("client-a").with(excluded);
    agent.reload(changed.clone()).unwrap();
    poll_until(Duration::from_secs(5), "port 9090 excluded", || {
        let before = Snapshot::take(&agent)?;
        assert_transparent(&a.dial_one(to_9090, 1000)?, a.ip().into(), to_9090);
        Ok(before
            .expect_not_captured(&agent, "skip_excluded_port")
            .ok())
    })
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
    let before = snapshot(&agent);
    assert_serving(&agent, &a, &b);
    before.expect_captured(&agent, &[("client-a", 1)]).unwrap();
    expect_rules(&node, &changed).unwrap();
}

/// A pod whose addresses change (here: it loses its IPv6 address) stays captured over
/// IPv4, and the agent stays healthy.
fn ip_change_keeps_the_pod_captured(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node, mode);
    let mut agent = start(&node, cfg.clone());
    let mut v4_only = Workload::enrolled(&a);
    v4_only.ips = vec![a.ip().to_string()];
    let changed = cfg.without("client-a").with(v4_only);
    agent.reload(changed.clone()).unwrap();
    // The agent re-enrolls the pod under its new addresses.
    poll_until(Duration::from_secs(5), "config reloaded", || {
        let m = agent.metrics()?;
        Ok((m.sum("sluice_config_reloads_total", &[]) >= 1.0).then_some(()))
    })
    .unwrap();
    poll_until(Duration::from_secs(5), "client-a captured again", || {
        let before = Snapshot::take(&agent)?;
        assert_serving(&agent, &a, &b);
        Ok(before.expect_captured(&agent, &[("client-a", 1)]).ok())
    })
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
    expect_rules(&node, &changed).unwrap();
}

/// Per-pod overrides on an eBPF node: each pod is steered by its own mode only (the eBPF
/// programs leave the netfilter pods alone), and all of them reach the same server.
#[test]
fn per_pod_mode_overrides_share_one_node() {
    let node = Node::new().unwrap();
    let b = node.add_pod("server-b").unwrap();
    let _server = b.serve(8080, "server-b").unwrap();
    let mut cfg = AgentConfig::new(&node)
        .mode(Mode::Ebpf)
        .with(Workload::known(&b));
    let mut clients = Vec::new();
    for mode in Mode::ALL {
        let pod = node.add_pod(&format!("client-{mode}")).unwrap();
        cfg = cfg.with(Workload::enrolled(&pod).redirect_mode(mode));
        clients.push((pod, mode));
    }
    let agent = start(&node, cfg);

    let target = addr(b.ip(), 8080);
    for (pod, mode) in &clients {
        let before = snapshot(&agent);
        assert_transparent(
            &pod.dial_one(target, 4096).unwrap(),
            pod.ip().into(),
            target,
        );
        let now = poll_until(Duration::from_secs(5), "proxy counts the capture", || {
            let now = snapshot(&agent);
            Ok((before.opened_since(&now, pod.name()) >= 1.0).then_some(now))
        })
        .unwrap();
        assert_eq!(before.opened_since(&now, pod.name()), 1.0, "{mode}");
        let ebpf_captured = before.ebpf_delta(&now, "captured").unwrap();
        assert_eq!(
            ebpf_captured,
            i64::from(*mode == Mode::Ebpf),
            "{mode} pod: eBPF captured +{ebpf_captured}"
        );
    }
}

/// Releasing a pod stops new captures without cutting the connections it already has: a
/// connection the proxy relayed before the pod left the config still exchanges data after
/// its rules are gone. (Deleting the last nftables nat chain once dropped the NAT of such
/// connections, and the app waited forever for the replies.) Netfilter modes only: the
/// client here is a test thread inside the pod's netns, which only rules can capture.
fn release_keeps_established_connections(mode: Mode) {
    use tests::echo::{EchoClient, EchoServer};

    let node = Node::new().unwrap();
    let (a, b, _server, full) = client_and_server(&node, mode);
    let mut agent = start(&node, full.clone());
    let echo_addr = addr(b.ip(), 9090);
    let _echo = EchoServer::start(&b, echo_addr).unwrap();
    let before = snapshot(&agent);
    let mut conn = EchoClient::connect(&a, echo_addr).unwrap();
    assert_eq!(conn.echo(b"before").unwrap(), b"before");
    assert!(
        before.opened_since(&snapshot(&agent), "client-a") > 0.0,
        "the connection was not captured"
    );

    let without = full.clone().without("client-a");
    agent.reload(without.clone()).unwrap();
    poll_until(Duration::from_secs(5), "client-a's rules are gone", || {
        Ok(expect_rules(&node, &without).is_ok().then_some(()))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
    assert_eq!(
        conn.echo(b"after")
            .unwrap_or_else(|e| panic!("connection broken by the release: {e}")),
        b"after"
    );
}

#[test]
fn nftables_release_keeps_established_connections() {
    release_keeps_established_connections(Mode::Nftables);
}

#[test]
fn iptables_release_keeps_established_connections() {
    release_keeps_established_connections(Mode::Iptables);
}
