//! Inbound capture scenarios against the real agent, each run in every redirect mode
//! (`ebpf::*`, `nftables::*`, `iptables::*`) with the same assertions (DESIGN.md §2
//! "Inbound"): any TCP connection to an enrolled pod's addresses, except the tunnel port and
//! the pod's excluded inbound ports, goes through the agent's in-pod listener (15006), and the
//! agent delivers it to the app from the client's own address.
//!
//! "Captured inbound" is judged the same way in every mode (see `tests::capture`):
//! `istio_tcp_connections_opened_total{reporter="destination"}` for the server workload rose
//! by exactly the number of connections. In eBPF mode the programs' counters must agree
//! (`inbound_captured`, and `inbound_skip_delivery` for the agent's delivery, let through);
//! in netfilter modes the pod holds the inbound rules while enrolled (and iptables' redirect
//! counter agrees) and none once released. That the app saw the client's address from a
//! port other than the client's own says the connection was relayed, not direct.
//!
//! Each test builds its own node, pods and agent (unique names), so they run in parallel.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tests::capture::TcpCounts;
use tests::echo::{EchoClient, EchoServer};
use tests::inbound::{
    TUNNEL_PORT, expect_delivery_routing, expect_ebpf_steering, expect_no_ebpf_steering,
};
use tests::netfilter::{expect_rules, inbound_redirects};
use tests::scenario::{
    MIB, addr, client_port, outside_client_and_enrolled_server, server_saw, server_saw_ip,
};
use tests::{
    Agent, AgentConfig, ConnResult, DialOpts, Flows, Mode, Node, Pod, Snapshot, Workload,
    poll_until,
};

tests::in_every_mode!(
    outside_client_is_captured_inbound,
    outside_client_is_captured_inbound_ipv6,
    enrolled_client_to_enrolled_server_counts_both_sides,
    excluded_inbound_ports_reach_the_app_directly,
    closed_port_is_reset_promptly,
    release_stops_inbound_and_keeps_established_connections,
    delivery_is_not_recaptured_under_500_concurrent_connections,
    delivery_survives_syn_cookies_and_a_full_accept_queue,
);

/// Starts the agent and checks the steering of every pod: exactly its mode's rules, outbound
/// and inbound (`expect_rules`), and for each enrolled pod the delivery routing and, in
/// eBPF mode, its `sk_lookup` link, pin and `/debug/ebpf` entry.
fn start<'n>(node: &'n Node, cfg: AgentConfig) -> Agent<'n> {
    let agent = Agent::start(node, cfg.clone()).unwrap();
    expect_rules(node, &cfg).unwrap();
    for w in cfg.workloads.iter().filter(|w| w.enrolled) {
        let pod = pod_named(node, &w.name);
        expect_delivery_routing(&pod).unwrap();
        if cfg.mode_of(&w.name).unwrap() == Some(Mode::Ebpf) {
            expect_ebpf_steering(&agent, &pod, &w.exclude_inbound_ports).unwrap();
        }
    }
    agent
}

fn pod_named(node: &Node, name: &str) -> Pod {
    node.pods()
        .into_iter()
        .find(|p| p.name() == name)
        .unwrap_or_else(|| panic!("no pod {name}"))
}

fn snapshot(agent: &Agent) -> Snapshot {
    Snapshot::take(agent).unwrap()
}

/// Asserts one connection was delivered to the app by the proxy as the contract says: the
/// payload intact both ways, the client's `getpeername` is what it dialled, the app saw the
/// client's address, and from another port than the client's own (the proxy's delivery).
fn assert_delivered(r: &ConnResult, from: IpAddr, to: SocketAddr) {
    assert!(r.is_ok(), "connection {to} failed: {r:?}");
    assert_eq!(
        r.peer.as_deref(),
        Some(to.to_string().as_str()),
        "getpeername: {r:?}"
    );
    assert_eq!(server_saw_ip(r), from, "the app saw another client: {r:?}");
    assert_ne!(
        server_saw(r).port(),
        client_port(r),
        "the app saw the client's own port: not delivered by the proxy: {r:?}"
    );
}

/// `client-a` and `server-b` serving on 8080 with `serve_args`; `prepare` runs on
/// server-b's pod before its app starts.
fn client_and_server(
    node: &Node,
    serve_args: &[&str],
    prepare: impl FnOnce(&Pod),
) -> (Pod, Pod, tests::proc::Server) {
    let a = node.add_pod("client-a").unwrap();
    let b = node.add_pod("server-b").unwrap();
    prepare(&b);
    let server = b.serve_args(8080, "server-b", serve_args).unwrap();
    (a, b, server)
}

fn enrolled_server(node: &Node, mode: Mode, server: &Pod) -> AgentConfig {
    AgentConfig::new(node)
        .mode(mode)
        .with(Workload::enrolled(server))
}

/// `n` connections from `a` to `target` at once, each delivered as [`assert_delivered`]
/// says.
fn burst_delivered(a: &Pod, target: SocketAddr, n: usize, bytes: u64) {
    let opts = DialOpts {
        bytes,
        count: n,
        barrier: true,
        timeout_ms: 20_000,
        ..DialOpts::default()
    };
    let report = a.dial(target, &opts).unwrap();
    assert_eq!(report.results.len(), n);
    let failed: Vec<&ConnResult> = report.results.iter().filter(|r| !r.is_ok()).collect();
    assert!(
        failed.is_empty(),
        "{} of {n} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    for r in &report.results {
        assert_delivered(r, a.ip().into(), target);
    }
}

/// One connection from `a` (outside the mesh) to `b`:8080 is delivered and counted as
/// exactly one inbound capture of `server-b`.
fn assert_one_delivered(agent: &Agent, a: &Pod, b: &Pod) {
    let before = snapshot(agent);
    let target = addr(b.ip(), 8080);
    assert_delivered(&a.dial_one(target, 4096).unwrap(), a.ip().into(), target);
    before
        .expect_flows(agent, Flows::from_outside(&[("server-b", 1)]))
        .unwrap();
}

/// Asserts one connection reached the app directly: intact, and the app saw the client's
/// own address and port.
fn assert_direct(r: &ConnResult, from: IpAddr) {
    assert!(r.is_ok(), "connection failed: {r:?}");
    assert_eq!(server_saw_ip(r), from, "the app saw another client: {r:?}");
    assert_eq!(
        server_saw(r).port(),
        client_port(r),
        "the app saw another port than the client's: relayed: {r:?}"
    );
}

/// The iptables mode's `SLUICE_INBOUND` redirect counter of `pod` for one family; `None` in
/// the other modes (nftables' rule has no counter, eBPF has no rule).
fn redirects(pod: &Pod, mode: Mode, ipv6: bool) -> Option<u64> {
    (mode == Mode::Iptables).then(|| inbound_redirects(pod, ipv6).unwrap())
}

/// Waits until the agent's TCP counters for `labels` reach `want` (opened, closed, and
/// at least the bytes), then asserts the connection counts are exact and returns them all.
fn tcp_counts(agent: &Agent, labels: &[(&str, &str)], want: TcpCounts) -> TcpCounts {
    let got = poll_until(Duration::from_secs(5), "tcp metrics", || {
        let got = TcpCounts::of(&agent.metrics()?, labels);
        let reached = got.opened >= want.opened
            && got.closed >= want.closed
            && got.sent >= want.sent
            && got.received >= want.received;
        Ok(reached.then_some(got))
    })
    .unwrap_or_else(|e| {
        let m = agent.metrics().unwrap();
        panic!(
            "{e:#}: want {want:?} for {labels:?}; istio samples: {:?}",
            m.samples
                .iter()
                .filter(|s| s.name.starts_with("istio_tcp"))
                .collect::<Vec<_>>()
        )
    });
    assert_eq!(
        (got.opened, got.closed),
        (want.opened, want.closed),
        "{labels:?}: {got:?}"
    );
    got
}

/// Scenario 1: a client outside the mesh reaches an enrolled server through the agent.
fn outside_client_is_captured_inbound(mode: Mode) {
    outside_client_is_captured(mode, false);
}

/// Scenario 1 over IPv6.
fn outside_client_is_captured_inbound_ipv6(mode: Mode) {
    outside_client_is_captured(mode, true);
}

/// Three 1 MiB connections from `client-a` (not enrolled, not even known) to enrolled
/// `server-b`: each delivered intact from the client's address, counted inbound exactly
/// three times under the destination reporter with the source unknown.
fn outside_client_is_captured(mode: Mode, ipv6: bool) {
    let node = Node::new().unwrap();
    let (a, b, server, cfg) = outside_client_and_enrolled_server(&node, mode);
    let server6 = ipv6.then(|| b.serve_args(8086, "server-b6", &["--ipv6"]).unwrap());
    let agent = start(&node, cfg);
    let (from, target): (IpAddr, SocketAddr) = match ipv6 {
        false => (a.ip().into(), addr(b.ip(), 8080)),
        true => (a.ip6().into(), addr(b.ip6(), 8086)),
    };

    let redirected = redirects(&b, mode, ipv6);
    let before = snapshot(&agent);
    let report = a.dial(target, &DialOpts::bytes(MIB).times(3, 1)).unwrap();
    assert_eq!(report.results.len(), 3);
    for r in &report.results {
        assert_delivered(r, from, target);
        assert_eq!((r.sent, r.received), (MIB, MIB), "{r:?}");
    }
    before
        .expect_flows(&agent, Flows::from_outside(&[("server-b", 3)]))
        .unwrap();
    if let Some(before) = redirected {
        let now = redirects(&b, mode, ipv6).unwrap();
        assert_eq!(
            now - before,
            3,
            "SLUICE_INBOUND redirected {before} -> {now}"
        );
    }
    let accepted = server6.as_ref().unwrap_or(&server).accepted();
    assert_eq!(accepted.len(), 3, "{accepted:?}");
    let labels = [
        ("reporter", "destination"),
        ("destination_workload", "server-b"),
        ("destination_workload_namespace", "default"),
        ("source_workload", "unknown"),
        ("source_workload_namespace", "unknown"),
    ];
    let mib = MIB as f64;
    let want = TcpCounts {
        opened: 3.0,
        closed: 3.0,
        sent: 3.0 * mib,
        received: 3.0 * mib,
    };
    tcp_counts(&agent, &labels, want);
}

/// Scenario 2: an enrolled client calling an enrolled server on the same node is counted
/// once leaving the client (reporter source) and once arriving at the server (reporter
/// destination, both workloads named), and the server still sees the client's pod address.
/// The payload is lopsided so the destination's byte counters show their direction: sent
/// is the response, received the request.
fn enrolled_client_to_enrolled_server_counts_both_sides(mode: Mode) {
    let node = Node::new().unwrap();
    let [a, b] = node.add_pods(["client-a", "server-b"]).unwrap();
    let _server = b.serve(8080, "server-b").unwrap();
    let cfg = AgentConfig::new(&node)
        .mode(mode)
        .with(Workload::enrolled(&a))
        .with(Workload::enrolled(&b));
    let agent = start(&node, cfg);

    let (request, response) = (256 * 1024, 64 * 1024);
    let target = addr(b.ip(), 8080);
    let before = snapshot(&agent);
    let opts = DialOpts {
        recv_bytes: Some(response),
        ..DialOpts::bytes(request)
    };
    let r = a.dial(target, &opts).unwrap().results.remove(0);
    assert_delivered(&r, a.ip().into(), target);
    before
        .expect_flows(
            &agent,
            Flows {
                outbound: &[("client-a", 1)],
                inbound: &[("server-b", 1)],
                unenrolled_connects: 0,
            },
        )
        .unwrap();

    let pair = [
        ("source_workload", "client-a"),
        ("source_workload_namespace", "default"),
        ("destination_workload", "server-b"),
        ("destination_workload_namespace", "default"),
    ];
    let one = TcpCounts {
        opened: 1.0,
        closed: 1.0,
        sent: response as f64,
        received: request as f64,
    };
    let with = |reporter| {
        let mut labels = vec![("reporter", reporter)];
        labels.extend(pair);
        labels
    };
    // The request and response lines of the test protocol ride along: < 256 bytes each.
    let dst = tcp_counts(&agent, &with("destination"), one);
    assert!(
        dst.received < (request + 256) as f64 && dst.sent < (response + 256) as f64,
        "destination bytes: received (request) {}, sent (response) {}: want {request} and \
         {response} plus a protocol line",
        dst.received,
        dst.sent
    );
    // The source side's byte direction is being aligned with Istio's; judge the total only.
    let src = tcp_counts(
        &agent,
        &with("source"),
        TcpCounts {
            sent: 0.0,
            received: 0.0,
            ..one
        },
    );
    let total = src.sent + src.received;
    assert!(
        total >= (request + response) as f64 && total < (request + response + 512) as f64,
        "source bytes: {src:?}"
    );
}

/// Scenario 3a: the pod's excluded inbound ports and the tunnel port reach the app
/// directly: not counted inbound, the app sees the client's own port, and in eBPF mode
/// `inbound_skip_excluded_port` explains each. `/config_dump` shows the exclusion.
fn excluded_inbound_ports_reach_the_app_directly(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = outside_client_and_enrolled_server(&node, mode);
    let _excluded = b.serve(9090, "server-b-9090").unwrap();
    let _tunnel = b.serve(TUNNEL_PORT, "server-b-tunnel").unwrap();
    let cfg = cfg
        .without("server-b")
        .with(Workload::enrolled(&b).exclude_inbound_ports(&[9090]));
    let agent = start(&node, cfg);

    let dump = agent.config_dump().unwrap();
    let pod = captured_pod(&dump, "server-b");
    assert_eq!(
        pod.pointer("/capture/excludeInboundPorts"),
        Some(&serde_json::json!([9090])),
        "{pod}"
    );
    let listeners = pod
        .pointer("/capture/inboundListeners")
        .and_then(|l| l.as_array());
    assert!(
        listeners.is_some_and(|l| l
            .iter()
            .any(|a| a.as_str().is_some_and(|a| a.ends_with(":15006")))),
        "no inbound listener on :15006 in {pod}"
    );

    for (port, skip) in [
        (9090, "inbound_skip_excluded_port"),
        (TUNNEL_PORT, "inbound_skip_proxy_port"),
    ] {
        let before = snapshot(&agent);
        let r = a.dial_one(addr(b.ip(), port), 4096).unwrap();
        assert_direct(&r, a.ip().into());
        before
            .expect_not_captured(&agent, skip)
            .unwrap_or_else(|e| panic!("port {port}: {e:#}"));
    }
    // The rest of the pod's ports are still captured.
    assert_one_delivered(&agent, &a, &b);
}

/// The `/config_dump` entry of captured pod `name` (its `capture` holds the spec).
fn captured_pod(dump: &serde_json::Value, name: &str) -> serde_json::Value {
    dump["capturedPods"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p.pointer("/workload/name") == Some(&serde_json::json!(name)))
        .cloned()
        .unwrap_or_else(|| panic!("no captured pod {name} in /config_dump: {dump}"))
}

/// Scenario 3b: a port of an enrolled pod where nothing listens gives the client a prompt
/// reset or refusal (the proxy may have accepted first), never a hang; the agent keeps
/// serving.
fn closed_port_is_reset_promptly(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = outside_client_and_enrolled_server(&node, mode);
    let agent = start(&node, cfg);

    for target in [addr(b.ip(), 8089), addr(b.ip6(), 8089)] {
        let opts = DialOpts {
            bytes: 100,
            timeout_ms: 5000,
            ..DialOpts::default()
        };
        let start = Instant::now();
        let r = a.dial(target, &opts).unwrap().results.remove(0);
        let took = start.elapsed();
        assert!(
            ["reset", "refused"].contains(&r.result.as_str()),
            "{target}: want reset or refused, got {r:?}"
        );
        assert!(
            took < Duration::from_secs(3),
            "{target} took {took:?}: {r:?}"
        );
    }
    assert_one_delivered(&agent, &a, &b);
}

/// Scenario 4: a pod that leaves the mesh (removed from the config) keeps no inbound
/// steering (netfilter: only the retired ruleset; eBPF: no link, pin or debug entry), keeps
/// its delivery routing, and a connection delivered before the release still carries
/// bytes both ways; new connections then reach the app directly.
fn release_stops_inbound_and_keeps_established_connections(mode: Mode) {
    let node = Node::new().unwrap();
    let (a, b, _server, full) = outside_client_and_enrolled_server(&node, mode);
    let mut agent = start(&node, full.clone());
    let echo_addr = addr(b.ip(), 9090);
    let echo = EchoServer::start(&b, echo_addr).unwrap();

    let before = snapshot(&agent);
    let mut conn = EchoClient::connect(&a, echo_addr).unwrap();
    assert_eq!(conn.echo(b"before").unwrap(), b"before");
    // The client is a thread of this test, outside the node's cgroups: eBPF sees no connect.
    before
        .expect_flows(
            &agent,
            Flows {
                inbound: &[("server-b", 1)],
                ..Flows::default()
            },
        )
        .unwrap();
    let peers = echo.peers();
    assert!(
        peers.len() == 1 && peers[0].ip() == a.ip(),
        "the echo server saw {peers:?}, want one connection from {}",
        a.ip()
    );

    let without = full.clone().without("server-b");
    agent.reload(without.clone()).unwrap();
    poll_until(
        Duration::from_secs(5),
        "server-b's inbound steering is gone",
        || {
            expect_rules(&node, &without)?;
            if mode == Mode::Ebpf {
                expect_no_ebpf_steering(&agent, &b)?;
            }
            Ok(Some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
    expect_delivery_routing(&b).unwrap();
    for word in [&b"after"[..], &[b'x'; 60][..]] {
        let got = conn
            .echo(word)
            .unwrap_or_else(|e| panic!("connection broken by the release: {e}"));
        assert_eq!(got, word);
    }

    let before = snapshot(&agent);
    assert_direct(
        &a.dial_one(addr(b.ip(), 8080), 1000).unwrap(),
        a.ip().into(),
    );
    before
        .expect_not_captured(&agent, "skip_not_enrolled")
        .unwrap();
}

/// Scenario 5: the agent's own delivery is never captured again, also with 500
/// connections open at once: every one reaches the app once, from the client's address,
/// and each is counted exactly once (eBPF: `inbound_captured` once per connection, and
/// `inbound_skip_delivery` at least once: it counts each SYN of a delivery).
fn delivery_is_not_recaptured_under_500_concurrent_connections(mode: Mode) {
    const N: usize = 500;
    let node = Node::new().unwrap();
    // An accept queue for the whole burst, as a server expecting it would have: on a slow
    // kernel VM the default 128 overflows, and SYNs the app drops can outlast the
    // delivery's connect timeout. Overflow itself is the next test's subject.
    let (a, b, server) = client_and_server(&node, &["--backlog", "1024"], |_| {});
    let agent = start(&node, enrolled_server(&node, mode, &b));

    let target = addr(b.ip(), 8080);
    let redirected = redirects(&b, mode, false);
    let before = snapshot(&agent);
    burst_delivered(&a, target, N, 4096);
    before
        .expect_flows(&agent, Flows::from_outside(&[("server-b", N as u64)]))
        .unwrap();
    if let Some(before) = redirected {
        let now = redirects(&b, mode, false).unwrap();
        assert_eq!(
            now - before,
            N as u64,
            "SLUICE_INBOUND redirected {before} -> {now}"
        );
    }
    let accepted = server.accepted();
    assert_eq!(
        accepted.len(),
        N,
        "the app accepted {} connections",
        accepted.len()
    );
    if mode == Mode::Ebpf {
        poll_until(
            Duration::from_secs(10),
            "every delivery's DELIVERIES entry is gone once its connection closed",
            || Ok((agent.debug_ebpf()?["liveDeliveries"] == 0).then_some(())),
        )
        .unwrap();
    }
}

/// The app's accept queue overflows while the kernel answers every SYN with a cookie
/// (`tcp_syncookies=2`): a delivered connection the app's side dropped has no socket there
/// yet, so each of its packets meets the pod's steering again until the app accepts. They
/// must reach the app, not the proxy's listener (which would take them as a new client).
///
/// The payload fits one segment: with a cookie, only the first segment's sequence number
/// proves the connection, and a later one would be reset by the kernel with or without the
/// mesh. The eBPF counters are not judged: with cookies the client's own ACK meets
/// `sk_lookup` too, so `inbound_captured` counts more than connections.
///
/// A SYN that meets the full queue is dropped and resent 1, 3 and 7 s later; a slow kernel
/// VM may still be draining the queue at 3 s, so the delivery's connect timeout is set to
/// span the 7 s resend: what is judged is that the proxy's retries reach the app, not how
/// fast the app drains its queue.
fn delivery_survives_syn_cookies_and_a_full_accept_queue(mode: Mode) {
    const N: usize = 10;
    let node = Node::new().unwrap();
    let pause = ["--backlog", "1", "--accept-after-ms", "2000"];
    let (a, b, server) = client_and_server(&node, &pause, |b| {
        tests::netns::run_in(&b.netns_path(), || {
            Ok(std::fs::write("/proc/sys/net/ipv4/tcp_syncookies", "2")?)
        })
        .unwrap();
    });
    let mut cfg = enrolled_server(&node, mode, &b);
    let proxy = cfg
        .proxy
        .as_mut()
        .expect("AgentConfig::new has a proxy section");
    proxy.connect_timeout = "15s".into();
    let agent = start(&node, cfg);

    let target = addr(b.ip(), 8080);
    let before = snapshot(&agent);
    burst_delivered(&a, target, N, 200);
    let proxied = before.inbound_since(&snapshot(&agent), "server-b");
    assert_eq!(proxied, N as f64, "connections the proxy took for server-b");
    assert_eq!(server.accepted().len(), N, "the app accepted another count");
}

/// eBPF: `enrolled: false` drops the pod's `sk_lookup` link, pin and debug entry, and
/// enrolling it again brings them back with capture.
#[test]
fn ebpf_unenrolling_drops_the_inbound_link_and_pin() {
    let node = Node::new().unwrap();
    let (a, b, _server, full) = outside_client_and_enrolled_server(&node, Mode::Ebpf);
    let mut agent = start(&node, full.clone());
    let known = full.clone().without("server-b").with(Workload::known(&b));
    let target = addr(b.ip(), 8080);

    agent.reload(known).unwrap();
    poll_until(
        Duration::from_secs(5),
        "server-b's sk_lookup link is gone",
        || Ok(expect_no_ebpf_steering(&agent, &b).ok()),
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
    let before = snapshot(&agent);
    assert_direct(&a.dial_one(target, 1000).unwrap(), a.ip().into());
    before
        .expect_not_captured(&agent, "skip_not_enrolled")
        .unwrap();

    agent.reload(full).unwrap();
    poll_until(
        Duration::from_secs(5),
        "server-b's sk_lookup link is back",
        || Ok(expect_ebpf_steering(&agent, &b, &[]).ok()),
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
    assert_one_delivered(&agent, &a, &b);
}
