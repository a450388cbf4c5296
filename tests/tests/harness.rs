//! Self-tests of the test bed, no agent involved: pods reach each other directly, also across
//! linked nodes, the link capture sees what crosses, processes land in the right netns and
//! cgroup, and teardown leaves nothing behind, even on panic.

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tests::echo::{EchoServer, PodEchoClient};
use tests::link_capture::{TLS_APPLICATION_DATA, TLS_HANDSHAKE};
use tests::wire::pattern_bytes;
use tests::{DialOpts, Node, cgroup, cluster};

const MIB: u64 = 1024 * 1024;

#[test]
fn pods_reach_each_other_directly_v4_and_v6() {
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let b = node.add_pod("b").unwrap();
    let server = b.serve(8080, "b").unwrap();
    let server6 = b.serve_args(8081, "b6", &["--ipv6"]).unwrap();

    let target = SocketAddr::new(b.ip().into(), 8080);
    let r = a.dial_one(target, MIB).unwrap();
    assert!(r.is_ok(), "{r:?}");
    assert_eq!((r.sent, r.received), (MIB, MIB));
    assert_eq!(r.peer.as_deref(), Some(target.to_string().as_str()));
    assert_eq!(r.server_id.as_deref(), Some("b"));
    let saw: SocketAddr = r.server_saw.as_deref().unwrap().parse().unwrap();
    assert_eq!(saw.ip(), std::net::IpAddr::from(a.ip()));
    assert_eq!(r.local.as_deref(), Some(saw.to_string().as_str()));
    assert_eq!(server.accepted().len(), 1);

    let target6 = SocketAddr::new(b.ip6().into(), 8081);
    let r = a.dial_one(target6, 4096).unwrap();
    assert!(r.is_ok(), "{r:?}");
    let saw: SocketAddr = r.server_saw.as_deref().unwrap().parse().unwrap();
    assert_eq!(saw.ip(), std::net::IpAddr::from(a.ip6()));
    assert_eq!(server6.accepted().len(), 1);
}

#[test]
fn dial_reports_refused_and_concurrency() {
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let b = node.add_pod("b").unwrap();
    let r = a.dial_one(SocketAddr::new(b.ip().into(), 9), 10).unwrap();
    assert_eq!(r.result, "refused", "{r:?}");

    let server = b.serve(8080, "b").unwrap();
    let opts = DialOpts {
        bytes: 1000,
        count: 50,
        barrier: true,
        ..Default::default()
    };
    let report = a.dial(SocketAddr::new(b.ip().into(), 8080), &opts).unwrap();
    assert_eq!(report.results.len(), 50);
    assert!(report.results.iter().all(|r| r.is_ok()), "{report:?}");
    assert_eq!(server.accepted().len(), 50);
}

/// A connection held by a process in the pod echoes words until it is closed, and a
/// refused connect is reported as such.
#[test]
fn a_pod_holds_an_echo_connection() {
    let node = Node::new().unwrap();
    let [a, b] = node.add_pods(["a", "b"]).unwrap();
    let target = SocketAddr::new(b.ip().into(), 9090);
    let server = EchoServer::start(&b, target).unwrap();
    let mut conn = PodEchoClient::connect(&a, target).unwrap();
    conn.echo("one").unwrap();
    conn.echo("two").unwrap();
    assert_eq!(conn.closed(), None);
    let peers = server.peers();
    assert!(
        peers.len() == 1 && peers[0].ip() == IpAddr::from(a.ip()),
        "{peers:?}"
    );
    let refused = PodEchoClient::connect(&a, SocketAddr::new(b.ip().into(), 9091));
    let err = format!("{:#}", refused.err().expect("connect to a closed port"));
    assert!(err.contains("CLOSED refused"), "{err}");
}

#[test]
fn processes_land_in_pod_netns_and_cgroup() {
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let cg2 = cgroup::cgroup2_mount().unwrap();
    let container = a.container("app").unwrap();
    for dir in [a.cgroup().to_path_buf(), container.clone()] {
        let mut cmd = a.command_in(&dir, "sleep").unwrap();
        cmd.arg("30");
        let p = tests::Proc::spawn("sleep", cmd).unwrap();
        let rel = dir.strip_prefix(&cg2).unwrap();
        assert_eq!(
            cgroup::cgroup_of(p.pid()).unwrap(),
            format!("/{}", rel.display())
        );
        let ns = std::fs::metadata(format!("/proc/{}/ns/net", p.pid())).unwrap();
        let pod_ns = std::fs::metadata(a.netns_path()).unwrap();
        assert_eq!(ns.ino(), pod_ns.ino(), "process is not in the pod netns");
    }
    // A container cgroup outside the pod is refused.
    assert!(a.command_in(&node.cgroup_root(), "true").is_err());
}

/// What a node made, to check it is gone afterwards.
struct Footprint {
    paths: Vec<PathBuf>,
    pids: Vec<u32>,
}

fn build(fp: &mut Footprint) -> Node {
    let node = Node::new().unwrap();
    let a = node.add_pod("a").unwrap();
    let b = node.add_pod("b").unwrap();
    fp.paths
        .extend([node.netns_path(), a.netns_path(), b.netns_path()]);
    fp.paths.extend([
        node.test_cgroup().to_path_buf(),
        a.cgroup().to_path_buf(),
        node.workdir().to_path_buf(),
    ]);
    // A process nobody guards: the node's teardown must still kill it.
    let mut cmd = b.command_in(&b.container("c").unwrap(), "sleep").unwrap();
    cmd.arg("300").stdout(std::process::Stdio::null());
    let child = cmd.spawn().unwrap();
    fp.pids.push(child.id());
    std::mem::forget(child);
    node
}

fn assert_gone(fp: &Footprint) {
    for p in &fp.paths {
        assert!(!p.exists(), "{} still exists", p.display());
    }
    for pid in &fp.pids {
        // Killed but unreaped children are zombies: accept those, not live processes.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next()
            .unwrap_or("");
        assert!(
            stat.is_empty() || state == "Z",
            "pid {pid} still running: {stat}"
        );
    }
}

#[test]
fn teardown_removes_everything() {
    let mut fp = Footprint {
        paths: Vec::new(),
        pids: Vec::new(),
    };
    let node = build(&mut fp);
    for p in &fp.paths {
        assert!(p.exists(), "{} missing while the node lives", p.display());
    }
    drop(node);
    assert_gone(&fp);
}

#[test]
fn teardown_runs_on_panic() {
    let fp = std::sync::Mutex::new(Footprint {
        paths: Vec::new(),
        pids: Vec::new(),
    });
    let res = std::panic::catch_unwind(|| {
        let mut guard = fp.lock().unwrap();
        let _node = build(&mut guard);
        drop(guard);
        panic!("deliberate");
    });
    assert!(res.is_err());
    assert_gone(&fp.lock().unwrap_or_else(|e| e.into_inner()));
}

/// Pieces of the test payload (both directions carry the pattern from byte 0).
fn needles() -> [Vec<u8>; 3] {
    [
        pattern_bytes(256, 32),
        pattern_bytes(10_000, 32),
        pattern_bytes(40_000, 32),
    ]
}

/// Pods on two linked nodes reach each other over IPv4 and IPv6 with their own addresses (no
/// NAT on the way), and the link capture sees the plaintext payload both ways and no TLS:
/// the mesh suite's "never in the clear" rests on this capture being able to see it.
#[test]
fn linked_nodes_carry_pod_traffic_and_the_capture_sees_it() {
    let (n1, n2) = (Node::new().unwrap(), Node::new().unwrap());
    let link = cluster::link(&n1, &n2).unwrap();
    let a = n1.add_pod("a").unwrap();
    let b = n2.add_pod("b").unwrap();
    let server = b.serve(8080, "b").unwrap();
    let server6 = b.serve_args(8081, "b6", &["--ipv6"]).unwrap();
    let capture = link.capture().unwrap();
    let before = capture.seen().unwrap();
    assert!(
        needles().iter().all(|n| !before.contains(n)) && before.flows().is_empty(),
        "the capture saw traffic before any was sent:\n{}",
        before.summary()
    );

    let opts = DialOpts {
        recv_bytes: Some(64 * 1024),
        ..DialOpts::bytes(64 * 1024)
    };
    let v4 = (IpAddr::from(a.ip()), SocketAddr::new(b.ip().into(), 8080));
    let v6 = (IpAddr::from(a.ip6()), SocketAddr::new(b.ip6().into(), 8081));
    for (from, target) in [v4, v6] {
        let r = a.dial(target, &opts).unwrap().results.remove(0);
        assert!(r.is_ok(), "{target}: {r:?}");
        assert_eq!(r.peer.as_deref(), Some(target.to_string().as_str()));
        let saw: SocketAddr = r.server_saw.as_deref().unwrap().parse().unwrap();
        assert_eq!(
            saw.ip(),
            from,
            "{target}: the server saw another client: {r:?}"
        );
    }
    assert_eq!((server.accepted().len(), server6.accepted().len()), (1, 1));

    let seen = capture.seen().unwrap();
    for needle in needles() {
        assert!(
            seen.contains(&needle),
            "payload bytes {needle:02x?} not seen on the link:\n{}",
            seen.summary()
        );
    }
    assert!(seen.contains(b"RESP id=b "), "{}", seen.summary());
    assert_eq!(
        (seen.flows_to_port(8080), seen.flows_to_port(8081)),
        (1, 1),
        "{}",
        seen.summary()
    );
    assert_eq!(
        (
            seen.tls_records(TLS_HANDSHAKE),
            seen.tls_records(TLS_APPLICATION_DATA)
        ),
        (0, 0),
        "plaintext taken for TLS:\n{}",
        seen.summary()
    );
}

/// Whether interface `ifname` exists in the netns at `netns`.
fn has_link(netns: &Path, ifname: &str) -> bool {
    let name = netns.file_name().unwrap().to_str().unwrap();
    tests::cmd::ip(&["-n", name, "link", "show", ifname]).is_ok()
}

/// Dropping a link deletes both ends; a panic takes the nodes and with them their link.
#[test]
fn links_go_with_their_drop_or_their_nodes() {
    let (n1, n2) = (Node::new().unwrap(), Node::new().unwrap());
    let link = cluster::link(&n1, &n2).unwrap();
    let ends = [
        (n1.netns_path(), link.a_ifname().to_string()),
        (n2.netns_path(), link.b_ifname().to_string()),
    ];
    assert!(ends.iter().all(|(ns, i)| has_link(ns, i)), "{ends:?}");
    drop(link);
    assert!(ends.iter().all(|(ns, i)| !has_link(ns, i)), "{ends:?}");

    let made = std::sync::Mutex::new(Vec::new());
    let res = std::panic::catch_unwind(|| {
        let (n1, n2) = (Node::new().unwrap(), Node::new().unwrap());
        let _link = cluster::link(&n1, &n2).unwrap();
        made.lock()
            .unwrap()
            .extend([n1.netns_path(), n2.netns_path()]);
        panic!("deliberate");
    });
    assert!(res.is_err());
    let made = made.into_inner().unwrap_or_else(|e| e.into_inner());
    assert_eq!(made.len(), 2);
    for ns in made {
        assert!(!ns.exists(), "{} still exists", ns.display());
    }
}
