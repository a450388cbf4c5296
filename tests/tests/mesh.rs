//! The mesh tunnel (HBONE: mutual TLS, HTTP/2 CONNECT to the destination pod's :15008) between
//! enrolled pods, each scenario in every redirect mode (`ebpf::*`, `nftables::*`,
//! `iptables::*`, both nodes in that mode), against real agents on two nodes joined by a link
//! (`tests::cluster`): docs/hbone.md is the contract.
//!
//! "Went through the tunnel" is judged where it cannot be faked: on the link between the
//! nodes (`tests::link_capture`), the payload and the app's port never appear, connections go
//! to 15008 and carry TLS application-data records; the agents' metrics say the same from
//! both ends (`connection_security_policy="mutual_tls"` with both SPIFFE IDs, under
//! `reporter="source"` on the client's node and `reporter="destination"` on the server's).
//! "Refused" means the client saw a reset or refusal and nothing reached the server's app:
//! a connection that was let in after it (a barrier) must be the only new one the app
//! accepted, since the app accepts in order.
//!
//! Cast: `client-a` (namespace `front`, service account `client-a`) on node 1, `server-b`
//! (`back`/`server-b`, label `app: server-b`) serving on 8080 on node 2, and `outside` on
//! node 2, in no config. Each test builds its own nodes, CA and agents, so they run in
//! parallel.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tests::agent::ADMIN;
use tests::echo::{EchoServer, PodEchoClient};
use tests::link_capture::{LinkCapture, TLS_APPLICATION_DATA, TLS_HANDSHAKE};
use tests::mesh::{
    Counter, HANDSHAKE_FAILURES, MUTUAL_TLS, PLAINTEXT, STREAMS, TUNNELS_OPENED, certificates,
    denied, handshake_failures, is_refused, opened,
};
use tests::netfilter::expect_rules;
use tests::pod::finish_dial;
use tests::scenario::{addr, assert_transparent};
use tests::wire::pattern_bytes;
use tests::{
    Agent, AgentConfig, ConnResult, DialOpts, Mode, Node, NodeLink, Pod, Server, TestCa, Workload,
    cluster, poll_until,
};

tests::in_every_mode!(
    cross_node_connection_is_mutual_tls,
    same_node_connection_goes_through_the_tunnel,
    outside_client_permissive_then_strict,
    policy_deny_allow_and_revoke,
    forged_identities_are_refused,
    concurrent_connections_share_bounded_tunnels_across_rotation,
    destination_agent_restart_is_never_plaintext,
);

const NS_A: &str = "front";
const NS_B: &str = "back";
const PORT: u16 = 8080;
const TUNNEL_PORT: u16 = tests::inbound::TUNNEL_PORT;
const KIB: u64 = 1024;

/// The two-node shape most scenarios share (see the module doc). Fields drop in order:
/// the server before the nodes that own its pod, the CA last.
struct Bed {
    server: Server,
    a: Pod,
    b: Pod,
    outside: Pod,
    n1: Node,
    n2: Node,
    ca: TestCa,
    mode: Mode,
}

impl Bed {
    fn new(mode: Mode) -> Bed {
        let (n1, n2) = (Node::new().unwrap(), Node::new().unwrap());
        let a = n1.add_pod("client-a").unwrap();
        let [b, outside] = n2.add_pods(["server-b", "outside"]).unwrap();
        Bed {
            // An accept queue for the 500-connection burst: on a slow kernel VM the default
            // 128 overflows and dropped SYNs can outlast the delivery's connect timeout.
            server: b
                .serve_args(PORT, "server-b", &["--backlog", "1024"])
                .unwrap(),
            a,
            b,
            outside,
            n1,
            n2,
            ca: TestCa::new().unwrap(),
            mode,
        }
    }

    fn link(&self) -> NodeLink<'_> {
        cluster::link(&self.n1, &self.n2).unwrap()
    }

    fn a_workload(&self) -> Workload {
        client_a(&self.a)
    }

    fn b_workload(&self) -> Workload {
        Workload::enrolled(&self.b)
            .namespace(NS_B)
            .service_account("server-b")
            .labels(&[("app", "server-b")])
    }

    /// A node of this bed in its mode, issuing from its CA.
    fn base(&self, node: &Node) -> AgentConfig {
        AgentConfig::new(node)
            .mode(self.mode)
            .identity(self.ca.identity())
    }

    /// Node 1: `client-a` captured here, `server-b` in the mesh on node 2.
    fn config1(&self) -> AgentConfig {
        self.base(&self.n1)
            .with(self.a_workload())
            .with(self.b_workload().on_node(self.n2.name()))
    }

    /// Node 2: `server-b` captured here, `client-a` in the mesh on node 1.
    fn config2(&self) -> AgentConfig {
        self.base(&self.n2)
            .with(self.b_workload())
            .with(self.a_workload().on_node(self.n1.name()))
    }

    fn target(&self) -> SocketAddr {
        addr(self.b.ip(), PORT)
    }

    /// Both agents, each with its bed config.
    fn start(&self) -> (Agent<'_>, Agent<'_>) {
        (
            start(&self.n1, self.config1()),
            start(&self.n2, self.config2()),
        )
    }

    /// Node 1's reporter=source and node 2's reporter=destination counts of mutual-TLS
    /// connections from `client-a` to `server-b`.
    fn mtls_counters(&self) -> (Counter, Counter) {
        let (a, b) = (self.a_workload(), self.b_workload());
        (
            opened("source", &a, &b, MUTUAL_TLS),
            opened("destination", &a, &b, MUTUAL_TLS),
        )
    }

    /// One connection from `client-a` to `server-b`:8080 works as if direct and is counted
    /// as mutual TLS by both agents exactly once.
    fn expect_meshed_call(&self, agent1: &Agent, agent2: &Agent) {
        let (src, dst) = self.mtls_counters();
        let (src0, dst0) = (src.read(agent1).unwrap(), dst.read(agent2).unwrap());
        let r = self.a.dial_one(self.target(), 4 * KIB).unwrap();
        assert_transparent(&r, self.a.ip().into(), self.target());
        src.expect_rise(agent1, src0, 1.0).unwrap();
        dst.expect_rise(agent2, dst0, 1.0).unwrap();
    }

    /// The barrier: a plaintext connection from `outside` (on node 2, in no config) reaches
    /// `server-b`'s app, and it is the only connection the app accepted since it had
    /// accepted `before`.
    fn expect_only_outside_reached_app(&self, before: usize) {
        let r = self.outside.dial_one(self.target(), 4 * KIB).unwrap();
        assert_transparent(&r, self.outside.ip().into(), self.target());
        expect_only_new_peer(&self.server, before, self.outside.ip().into());
    }
}

/// `client-a` of namespace `front`, service account `client-a`.
fn client_a(pod: &Pod) -> Workload {
    Workload::enrolled(pod)
        .namespace(NS_A)
        .service_account("client-a")
}

/// Starts an agent and checks that each pod of its node holds exactly its mode's steering
/// (pods of other nodes and pods in no config hold none).
fn start<'n>(node: &'n Node, cfg: AgentConfig) -> Agent<'n> {
    let agent = Agent::start(node, cfg.clone()).unwrap();
    expect_rules(node, &cfg).unwrap();
    agent
}

/// Asserts that `server`'s app accepted exactly one connection after the first `before`,
/// and from `peer`: waits for it (the app logs it as it accepts), so anything accepted
/// before it is in the log too.
fn expect_only_new_peer(server: &Server, before: usize, peer: IpAddr) {
    let accepted = poll_until(Duration::from_secs(5), "the app logs its accept", || {
        let all = server.accepted();
        Ok((all.len() > before).then_some(all))
    })
    .unwrap();
    let new = &accepted[before..];
    let from: Vec<IpAddr> = new
        .iter()
        .filter_map(|c| c.peer.parse::<SocketAddr>().ok().map(|p| p.ip()))
        .collect();
    assert_eq!(
        from,
        [peer],
        "the app accepted {new:?} since {before}: want only the connection from {peer}"
    );
}

fn assert_refused(r: &ConnResult, what: &str) {
    assert!(
        is_refused(r),
        "{what}: want the client reset or refused, got {r:?}"
    );
}

/// Pieces of the test payload (the pattern from byte 0, both ways) and the protocol's
/// plaintext lines, named: none may cross the link in the clear.
fn plaintext_needles() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("payload bytes 256..288", pattern_bytes(256, 32)),
        ("payload bytes 10000..10032", pattern_bytes(10_000, 32)),
        ("payload bytes 40000..40032", pattern_bytes(40_000, 32)),
        ("the request line", b"REQ ".to_vec()),
        ("the response line", b"RESP id=server-b".to_vec()),
    ]
}

/// Asserts that the link carried none of the payload in the clear and no connection to
/// `app_ports`: what crossed went to the tunnel port.
fn expect_nothing_in_the_clear(capture: &LinkCapture, app_ports: &[u16]) {
    let seen = capture.seen().unwrap();
    for (what, needle) in plaintext_needles() {
        assert!(
            !seen.contains(&needle),
            "{what} crossed the link in the clear; flows:\n{}",
            seen.summary()
        );
    }
    for port in app_ports {
        assert_eq!(
            seen.flows_to_port(*port),
            0,
            "connections to the app's port {port} crossed the link; flows:\n{}",
            seen.summary()
        );
    }
}

/// Scenario 1: `client-a` (node 1) → `server-b`:8080 (node 2), IPv4 and IPv6: bytes intact
/// both ways, the app sees `client-a`'s own address; on the link only TLS to 15008, never the
/// payload or port 8080; both agents count mutual TLS with both SPIFFE IDs.
fn cross_node_connection_is_mutual_tls(mode: Mode) {
    let bed = Bed::new(mode);
    let server6 = bed.b.serve_args(8086, "server-b6", &["--ipv6"]).unwrap();
    let link = bed.link();
    let capture = link.capture().unwrap();
    let (agent1, agent2) = bed.start();
    let (src, dst) = bed.mtls_counters();
    let (src0, dst0) = (src.read(&agent1).unwrap(), dst.read(&agent2).unwrap());

    let opts = DialOpts {
        recv_bytes: Some(64 * KIB),
        ..DialOpts::bytes(64 * KIB)
    };
    let v4 = (IpAddr::from(bed.a.ip()), bed.target());
    let v6 = (IpAddr::from(bed.a.ip6()), addr(bed.b.ip6(), 8086));
    for (from, target) in [v4, v6] {
        let r = bed.a.dial(target, &opts).unwrap().results.remove(0);
        assert_transparent(&r, from, target);
        assert_eq!((r.sent, r.received), (64 * KIB, 64 * KIB), "{r:?}");
    }
    assert_eq!(
        (bed.server.accepted().len(), server6.accepted().len()),
        (1, 1)
    );

    expect_nothing_in_the_clear(&capture, &[PORT, 8086]);
    let seen = capture.seen().unwrap();
    assert!(
        seen.flows_to_port(TUNNEL_PORT) >= 1
            && seen.tls_records(TLS_HANDSHAKE) >= 2
            && seen.tls_records(TLS_APPLICATION_DATA) >= 2,
        "want TLS connections to {TUNNEL_PORT} on the link; flows:\n{}",
        seen.summary()
    );
    src.expect_rise(&agent1, src0, 2.0).unwrap();
    dst.expect_rise(&agent2, dst0, 2.0).unwrap();
    for (agent, w) in [(&agent1, bed.a_workload()), (&agent2, bed.b_workload())] {
        let certs = certificates(agent).unwrap();
        assert!(
            certs.contains_key(&w.spiffe_id()),
            "{}'s agent shows no certificate for {}: {certs:?}",
            w.name,
            w.spiffe_id()
        );
    }
}

/// Scenario 2: `client-a` → `server-c` on the same node also takes the tunnel: mutual TLS
/// under both reporters, and a tunnel was opened.
fn same_node_connection_goes_through_the_tunnel(mode: Mode) {
    let node = Node::new().unwrap();
    let ca = TestCa::new().unwrap();
    let [a, c] = node.add_pods(["client-a", "server-c"]).unwrap();
    let _server = c.serve(PORT, "server-c").unwrap();
    let (aw, cw) = (
        client_a(&a),
        Workload::enrolled(&c)
            .namespace(NS_B)
            .service_account("server-c"),
    );
    let cfg = AgentConfig::new(&node)
        .mode(mode)
        .identity(ca.identity())
        .with(aw.clone())
        .with(cw.clone());
    let agent = start(&node, cfg);
    let tunnels = Counter::new(TUNNELS_OPENED);
    let src = opened("source", &aw, &cw, MUTUAL_TLS);
    let dst = opened("destination", &aw, &cw, MUTUAL_TLS);
    let (t0, src0, dst0) = (
        tunnels.read(&agent).unwrap(),
        src.read(&agent).unwrap(),
        dst.read(&agent).unwrap(),
    );

    let target = addr(c.ip(), PORT);
    let r = a.dial_one(target, 64 * KIB).unwrap();
    assert_transparent(&r, a.ip().into(), target);
    src.expect_rise(&agent, src0, 1.0).unwrap();
    dst.expect_rise(&agent, dst0, 1.0).unwrap();
    tunnels.expect_rise_at_least(&agent, t0, 1.0).unwrap();
}

/// `PeerAuthentication` `default` of `server-b`'s namespace in `mode`.
fn peer_authentication(mode: &str) -> serde_json::Value {
    serde_json::json!({"name": "default", "namespace": NS_B, "mtls": {"mode": mode}})
}

/// Scenario 3: a pod outside the mesh reaches `server-b` in plaintext under PERMISSIVE
/// (counted with `connection_security_policy="none"`); once STRICT is in force it is refused
/// before the app and counted as `plaintext_strict`, while `client-a` still gets through.
fn outside_client_permissive_then_strict(mode: Mode) {
    let bed = Bed::new(mode);
    let _link = bed.link();
    let agent1 = start(&bed.n1, bed.config1());
    let mut agent2 = start(
        &bed.n2,
        bed.config2()
            .peer_authentication(peer_authentication("PERMISSIVE")),
    );
    let plain = Counter::new(tests::capture::OPENED)
        .with("reporter", "destination")
        .with("destination_workload", "server-b")
        .with("source_principal", "unknown")
        .with("connection_security_policy", PLAINTEXT);
    let p0 = plain.read(&agent2).unwrap();
    let r = bed.outside.dial_one(bed.target(), 4 * KIB).unwrap();
    assert_transparent(&r, bed.outside.ip().into(), bed.target());
    plain.expect_rise(&agent2, p0, 1.0).unwrap();

    agent2
        .reload_applied(
            bed.config2()
                .peer_authentication(peer_authentication("STRICT")),
        )
        .unwrap();
    let strict = denied("plaintext_strict");
    let (d0, before) = (strict.read(&agent2).unwrap(), bed.server.accepted().len());
    let r = bed.outside.dial_one(bed.target(), 4 * KIB).unwrap();
    assert_refused(&r, "plaintext under STRICT");
    strict.expect_rise(&agent2, d0, 1.0).unwrap();

    // Plaintext straight at the tunnel port: refused before any TLS, and counted.
    let plaintext = handshake_failures("server", "plaintext");
    let h0 = plaintext.read(&agent2).unwrap();
    let tunnel = SocketAddr::new(bed.b.ip().into(), TUNNEL_PORT);
    let r = bed.outside.dial_one(tunnel, 4 * KIB).unwrap();
    assert_refused(&r, "plaintext on the tunnel port");
    plaintext.expect_rise(&agent2, h0, 1.0).unwrap();

    // The meshed call is the barrier: the only connection the app saw since.
    bed.expect_meshed_call(&agent1, &agent2);
    expect_only_new_peer(&bed.server, before, bed.a.ip().into());
}

/// An `AuthorizationPolicy` `a-policy` on `server-b` (by label) naming `client-a`'s
/// principal: `DENY` it anything, or `ALLOW` it ports 8080 and 9090.
fn policy_on_b(action: &str, principal: &str) -> serde_json::Value {
    let mut rule = serde_json::json!({"from": [{"source": {"principals": [principal]}}]});
    if action == "ALLOW" {
        rule["to"] = serde_json::json!([{"operation": {"ports": ["8080", "9090"]}}]);
    }
    serde_json::json!({
        "name": "a-policy",
        "namespace": NS_B,
        "selector": {"matchLabels": {"app": "server-b"}},
        "action": action,
        "rules": [rule],
    })
}

/// Scenario 4: DENY of `client-a`'s principal refuses it at node 2 before the app (counted
/// `deny_policy`; a plaintext caller the rule does not name still gets in); a reload to ALLOW
/// lets it in without restarting the agent; a reload back to DENY closes a connection that
/// is open at that moment within a few seconds.
fn policy_deny_allow_and_revoke(mode: Mode) {
    let bed = Bed::new(mode);
    let _link = bed.link();
    let principal = bed.a_workload().principal();
    let deny = bed
        .config2()
        .authorization_policy(policy_on_b("DENY", &principal));
    let allow = bed
        .config2()
        .authorization_policy(policy_on_b("ALLOW", &principal));
    let agent1 = start(&bed.n1, bed.config1());
    let mut agent2 = start(&bed.n2, deny.clone());

    let denials = denied("deny_policy");
    let (d0, before) = (denials.read(&agent2).unwrap(), bed.server.accepted().len());
    let r = bed.a.dial_one(bed.target(), 4 * KIB).unwrap();
    assert_refused(&r, "client-a under DENY");
    denials.expect_rise(&agent2, d0, 1.0).unwrap();
    bed.expect_only_outside_reached_app(before);

    let pid = agent2.pid();
    agent2.reload_applied(allow.clone()).unwrap();
    bed.expect_meshed_call(&agent1, &agent2);
    assert_eq!(agent2.pid(), pid, "the agent restarted");

    let echo_addr = addr(bed.b.ip(), 9090);
    let echo = EchoServer::start(&bed.b, echo_addr).unwrap();
    let mut conn = PodEchoClient::connect(&bed.a, echo_addr).unwrap();
    conn.echo("allowed").unwrap();
    let peers = echo.peers();
    assert!(
        peers.len() == 1 && peers[0].ip() == bed.a.ip(),
        "the echo server saw {peers:?}, want one connection from {}",
        bed.a.ip()
    );

    agent2.reload_applied(deny).unwrap();
    let revoked = Instant::now();
    poll_until(
        Duration::from_secs(5),
        "the connection open under ALLOW is closed once DENY is in force",
        || Ok(conn.echo("still-allowed").is_err().then_some(())),
    )
    .unwrap();
    let how = conn.closed();
    assert!(
        matches!(how.as_deref(), Some("reset" | "eof" | "broken_pipe")),
        "the connection ended as {how:?} {:?} after the revoke: want closed by the mesh",
        revoked.elapsed()
    );
}

/// Scenario 5: (b) with one CA, node 2's config says the pod at `client-a`'s address runs as
/// another service account: refused before the app, `wrong_identity` on node 2 (and with the
/// right config the same call works); (a) node 1 issues from another CA: refused before the
/// app, `unknown_ca` on node 2 (the server) and on node 1 (the client, which in TLS 1.3 judges
/// the server's chain before it sends its own).
fn forged_identities_are_refused(mode: Mode) {
    let bed = Bed::new(mode);
    let _link = bed.link();
    let impostor = bed.config2().without("client-a").with(
        bed.a_workload()
            .service_account("someone-else")
            .on_node(bed.n1.name()),
    );
    let mut agent1 = start(&bed.n1, bed.config1());
    let mut agent2 = start(&bed.n2, impostor);

    let wrong = handshake_failures("server", "wrong_identity");
    let (w0, before) = (wrong.read(&agent2).unwrap(), bed.server.accepted().len());
    let r = bed.a.dial_one(bed.target(), 4 * KIB).unwrap();
    assert_refused(&r, "client-a's certificate against another service account");
    wrong.expect_rise_at_least(&agent2, w0, 1.0).unwrap();
    bed.expect_only_outside_reached_app(before);

    agent2.reload_applied(bed.config2()).unwrap();
    bed.expect_meshed_call(&agent1, &agent2);

    let other = TestCa::new().unwrap();
    agent1
        .restart(bed.config1().identity(other.identity()))
        .unwrap();
    let unknown = handshake_failures("server", "unknown_ca");
    let client_unknown = handshake_failures("client", "unknown_ca");
    let (u0, before) = (unknown.read(&agent2).unwrap(), bed.server.accepted().len());
    let uc0 = client_unknown.read(&agent1).unwrap();
    let r = bed.a.dial_one(bed.target(), 4 * KIB).unwrap();
    assert_refused(&r, "client-a with a certificate from another CA");
    unknown
        .expect_rise_at_least(&agent2, u0, 1.0)
        .unwrap_or_else(|e| {
            // In TLS 1.3 the client judges the server's chain first: say what it counted.
            let client = Counter::new(HANDSHAKE_FAILURES).samples(&agent1.metrics().unwrap());
            panic!("{e:#}\nnode 1 (the client) counted:\n{client}")
        });
    client_unknown
        .expect_rise_at_least(&agent1, uc0, 1.0)
        .unwrap();
    bed.expect_only_outside_reached_app(before);
}

/// Scenario 6: 500 concurrent connections `client-a` → `server-b` all succeed, delivered
/// once each, over at most 10 tunnels, while both agents reissue every certificate
/// (`POST /identity/rotate`; `/config_dump` shows new serials) with half of them open (the
/// dial's barrier holds every connection open until the last one is).
fn concurrent_connections_share_bounded_tunnels_across_rotation(mode: Mode) {
    const N: usize = 500;
    let bed = Bed::new(mode);
    let _link = bed.link();
    let (agent1, agent2) = bed.start();
    let (src, dst) = bed.mtls_counters();
    let tunnels = Counter::new(TUNNELS_OPENED);
    let streams = Counter::new(STREAMS);
    // Captured connections of client-a, whatever their security: how far the dial got.
    let progress = Counter::new(tests::capture::OPENED)
        .with("reporter", "source")
        .with("source_workload", "client-a");
    let read1 = |c: &Counter| c.read(&agent1).unwrap();
    let (t0, s0, src0, p0) = (
        read1(&tunnels),
        read1(&streams),
        read1(&src),
        read1(&progress),
    );
    let dst0 = dst.read(&agent2).unwrap();

    let opts = DialOpts {
        bytes: 4 * KIB,
        count: N,
        barrier: true,
        timeout_ms: 20_000,
        ..DialOpts::default()
    };
    let dial = bed.a.spawn_dial(bed.target(), &opts).unwrap();
    progress
        .expect_rise_at_least(&agent1, p0, (N / 2) as f64)
        .unwrap();
    let issued = [&agent1, &agent2].map(|a| certificates(a).unwrap());
    assert!(
        issued.iter().all(|c| !c.is_empty()),
        "no certificate to rotate with half the connections open: {issued:?}"
    );
    for agent in [&agent1, &agent2] {
        agent.post_ok(ADMIN, "/identity/rotate").unwrap();
    }
    poll_until(
        Duration::from_secs(5),
        "both agents reissue every certificate they held",
        || {
            let now = [&agent1, &agent2].map(|a| certificates(a).unwrap());
            let renewed = issued.iter().zip(&now).all(|(before, now)| {
                before
                    .iter()
                    .all(|(id, serial)| now.get(id).is_some_and(|s| s != serial))
            });
            Ok(renewed.then_some(()))
        },
    )
    .unwrap();
    let report = finish_dial(dial, &opts).unwrap();
    assert_eq!(report.results.len(), N);
    let failed: Vec<&ConnResult> = report.results.iter().filter(|r| !r.is_ok()).collect();
    assert!(
        failed.is_empty(),
        "{} of {N} failed across the rotation: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    for r in &report.results {
        assert_transparent(r, bed.a.ip().into(), bed.target());
    }
    assert_eq!(
        bed.server.accepted().len(),
        N,
        "connections the app accepted"
    );
    src.expect_rise(&agent1, src0, N as f64).unwrap();
    dst.expect_rise(&agent2, dst0, N as f64).unwrap();
    streams.expect_rise_at_least(&agent1, s0, N as f64).unwrap();
    let opened_tunnels = read1(&tunnels) - t0;
    assert!(
        (1.0..=10.0).contains(&opened_tunnels),
        "{N} connections opened {opened_tunnels} tunnels: want 1 to 10; samples:\n{}",
        tunnels.samples(&agent1.metrics().unwrap())
    );
}

/// Scenario 7: with node 2's agent stopped, `client-a` → `server-b` fails (reset or refused,
/// never delivered, never in the clear on the link) and node 1 counts a failed connect to
/// the tunnel; once node 2's agent is back, the call works again, and is the first
/// connection the app accepted since the failed one.
///
/// The call after the restart is the barrier: while the agent is down a plaintext caller
/// cannot be one in every mode, since netfilter modes leave the pod's inbound rules in place
/// (its inbound connections are refused until the agent is back) where eBPF's `sk_lookup`
/// goes with the agent's cleanup.
fn destination_agent_restart_is_never_plaintext(mode: Mode) {
    let bed = Bed::new(mode);
    let link = bed.link();
    let capture = link.capture().unwrap();
    let (agent1, mut agent2) = bed.start();
    bed.expect_meshed_call(&agent1, &agent2);

    agent2.stop().unwrap();
    let connect = handshake_failures("client", "connect");
    let (c0, before) = (connect.read(&agent1).unwrap(), bed.server.accepted().len());
    let r = bed.a.dial_one(bed.target(), 4 * KIB).unwrap();
    assert_refused(&r, "client-a while server-b's agent is down");
    connect.expect_rise_at_least(&agent1, c0, 1.0).unwrap();

    agent2.restart(bed.config2()).unwrap();
    expect_rules(&bed.n2, &bed.config2()).unwrap();
    bed.expect_meshed_call(&agent1, &agent2);
    expect_only_new_peer(&bed.server, before, bed.a.ip().into());
    expect_nothing_in_the_clear(&capture, &[PORT]);
}
