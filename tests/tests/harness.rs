//! Self-tests of the test bed, no agent involved: pods reach each other directly, processes
//! land in the right netns and cgroup, and teardown leaves nothing behind, even on panic.

use std::net::SocketAddr;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use tests::{DialOpts, Node, cgroup};

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
