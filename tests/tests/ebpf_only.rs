//! Outbound scenarios that only mean something in eBPF mode: they inspect BPF maps, pins
//! and attached programs, which the netfilter modes do not have. Their netfilter
//! counterparts (rules present while enrolled, gone when not) are in `outbound.rs`.

use std::time::Duration;
use tests::scenario::{addr, assert_transparent, client_and_server};
use tests::{Agent, ConnResult, DialOpts, Mode, Node, Snapshot, bpf, poll_until};

/// What the agent links to its `cgroupRoot`: every hook, and all of them at the root itself
/// (an agent outside the root would link sock_ops and getsockopt above it).
const HOOKS: [&str; 6] = [
    "cgroup_getsockopt",
    "cgroup_inet4_connect",
    "cgroup_inet4_getpeername",
    "cgroup_inet6_connect",
    "cgroup_inet6_getpeername",
    "cgroup_sock_ops",
];

/// `mesh-agent cleanup` after a crash leaves no pins and no programs attached anywhere in
/// the test's cgroup subtree, and pods then connect directly.
#[test]
fn ebpf_cleanup_leaves_no_pins_or_programs() {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node, Mode::Ebpf);
    let pin_dir = cfg.pin_dir();
    let mut agent = Agent::start(&node, cfg).unwrap();

    let attached = bpf::attached_under(node.test_cgroup()).unwrap();
    let mut hooks: Vec<&str> = attached.iter().map(|l| l.attach_type.as_str()).collect();
    hooks.sort_unstable();
    assert_eq!(hooks, HOOKS, "links under the test cgroup: {attached:#?}");
    assert!(
        attached.iter().all(|l| l.cgroup == node.cgroup_root()),
        "not all at cgroupRoot {}: {attached:#?}",
        node.cgroup_root().display()
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
    // Unpinning drops the last link reference; the kernel detaches from a work queue, so
    // the links may linger for a moment after `cleanup` returns.
    poll_until(
        Duration::from_secs(2),
        "programs detached after cleanup",
        || {
            let left = bpf::attached_under(node.test_cgroup())?;
            if !left.is_empty() {
                anyhow::bail!("still attached: {left:?}");
            }
            Ok(Some(()))
        },
    )
    .unwrap();
    let target = addr(b.ip(), 8080);
    assert_transparent(&a.dial_one(target, 1000).unwrap(), a.ip().into(), target);
}

/// Original-destination entries are deleted when connections close, including connects
/// the upstream refused (DESIGN §3: nothing relies on LRU eviction).
#[test]
fn ebpf_orig_dst_entries_are_deleted_on_close() {
    let node = Node::new().unwrap();
    let (a, b, _server, cfg) = client_and_server(&node, Mode::Ebpf);
    let agent = Agent::start(&node, cfg).unwrap();

    let before = Snapshot::take(&agent).unwrap();
    let ok = DialOpts::bytes(1000).times(10, 5);
    let report = a.dial(addr(b.ip(), 8080), &ok).unwrap();
    assert!(report.results.iter().all(ConnResult::is_ok), "{report:?}");
    let refused = DialOpts::bytes(10).times(5, 5);
    let report = a.dial(addr(b.ip(), 8089), &refused).unwrap();
    assert!(
        report.results.iter().all(|r| r.result != "ok"),
        "{report:?}"
    );
    before.expect_captured(&agent, &[("client-a", 15)]).unwrap();
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

/// `/debug/ebpf` exists exactly when eBPF steering runs: a netfilter-only node answers 404
/// there while `/debug/redirect` describes its mode.
#[test]
fn debug_ebpf_only_when_ebpf_runs() {
    for mode in Mode::ALL {
        let node = Node::new().unwrap();
        let (_a, _b, _server, cfg) = client_and_server(&node, mode);
        let agent = Agent::start(&node, cfg).unwrap();
        let status = agent
            .get(tests::agent::ADMIN, "/debug/ebpf")
            .unwrap()
            .status;
        assert_eq!(
            status == 200,
            mode == Mode::Ebpf,
            "{mode}: /debug/ebpf {status}"
        );
        let redirect = agent.debug_redirect().unwrap();
        assert_eq!(redirect["nodeMode"], mode.as_str(), "{redirect}");
        assert!(
            redirect["modes"].get(mode.as_str()).is_some(),
            "{mode} missing from {redirect}"
        );
    }
}
