//! `mesh-agent iptables apply|cleanup --netns <pod>` on harness pods, for every backend it
//! drives (`nft::*`, `iptables::*`, `iptables_legacy::*`), judged by the rule listing and
//! by traffic. (`mesh-agent check` is tested in `precheck.rs`.)
//!
//! No agent runs here: the listener REDIRECT sends connections to is a plain
//! `sluice-testapp serve` on 127.0.0.1:15001 (and [::1]:15001) inside the client pod, so
//! the server id in a reply says whether a connection was steered, and the server's
//! `SO_ORIGINAL_DST` (from conntrack) says where it was going.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;
use tests::netfilter::{Backend, cli, in_pod, listing, ours};
use tests::scenario::addr;
use tests::{ConnResult, DialOpts, Node, Pod, Server};

/// The proxy's mark: sockets carrying it are never steered.
const PROXY_MARK: u32 = 0x539;

macro_rules! in_every_backend {
    ($($name:ident),+ $(,)?) => {
        tests::tests_for!(nft, tests::netfilter::Backend::Nft, [$($name),+]);
        tests::tests_for!(iptables, tests::netfilter::Backend::Iptables, [$($name),+]);
        tests::tests_for!(
            iptables_legacy,
            tests::netfilter::Backend::IptablesLegacy,
            [$($name),+]
        );
    };
}

in_every_backend!(
    apply_twice_changes_nothing,
    tampering_is_repaired,
    others_rules_are_untouched,
    traffic_follows_the_rules,
    cleanup_removes_both_families,
);

/// A node with client pod `a`, server pod `b` and pod `c` (whose addresses are excluded by
/// CIDR), and the rule flags every test here applies.
struct Bed {
    _node: Node,
    a: Pod,
    b: Pod,
    c: Pod,
    backend: Backend,
}

impl Bed {
    fn new(backend: Backend) -> Bed {
        let node = Node::new().unwrap();
        let [a, b, c] = node
            .add_pods(["client-a", "server-b", "excluded-c"])
            .unwrap();
        Bed {
            _node: node,
            a,
            b,
            c,
            backend,
        }
    }

    /// `--exclude-port 9090`, `c`'s addresses as CIDRs, `--ipv6`.
    fn flags(&self) -> Vec<String> {
        [
            "--exclude-port".to_string(),
            "9090".into(),
            "--exclude-cidr".into(),
            format!("{}/32", self.c.ip()),
            "--exclude-cidr".into(),
            format!("{}/128", self.c.ip6()),
            "--ipv6".into(),
        ]
        .into()
    }

    /// Runs `apply` or `cleanup` in pod `a` and asserts it printed `<backend>: <verdict>...`
    /// (a cleanup that found nothing in any backend prints the bare verdict).
    fn run(&self, action: &str, verdict: &str) {
        let out = cli(&self.a, action, self.backend, &self.flags()).unwrap();
        let want = if verdict == "nothing to remove" {
            verdict.to_owned()
        } else {
            format!("{}: {verdict}", self.backend.printed())
        };
        assert!(
            out.starts_with(&want),
            "{action}: got {out:?}, want {want:?}…"
        );
    }

    fn listing(&self) -> String {
        listing(&self.a).unwrap()
    }

    /// Exactly this backend's rules are in pod `a`, or none.
    fn expect_ours(&self, present: bool) {
        let want = match present {
            true => vec![self.backend.found()],
            false => Vec::new(),
        };
        assert_eq!(ours(&self.a).unwrap(), want, "{}", self.listing());
    }
}

/// Applying an equivalent ruleset again writes nothing: the tool says `unchanged` and the
/// listing is byte-identical.
fn apply_twice_changes_nothing(backend: Backend) {
    let bed = Bed::new(backend);
    let empty = bed.listing();
    bed.run("apply", "applied");
    let first = bed.listing();
    assert_ne!(first, empty, "apply changed nothing");
    bed.expect_ours(true);
    bed.run("apply", "unchanged");
    assert_eq!(bed.listing(), first, "a second apply changed the rules");
}

/// One way of damaging our rules, as an operator or another tool might.
enum Tamper {
    /// Run this backend's tool (`ip6tables` when `ipv6`) with these arguments.
    Edit(bool, &'static [&'static str]),
    /// Delete the rule of `table inet sluice` whose text is this (by its handle).
    DeleteNftRule(&'static str),
}

fn tampers(backend: Backend) -> Vec<(&'static str, Tamper)> {
    use Tamper::*;
    match backend {
        Backend::Nft => vec![
            (
                "rule added to our chain",
                Edit(
                    false,
                    &[
                        "insert", "rule", "inet", "sluice", "output", "tcp", "dport", "4444",
                        "return",
                    ],
                ),
            ),
            (
                "duplicate redirect",
                Edit(
                    false,
                    &[
                        "add", "rule", "inet", "sluice", "output", "meta", "l4proto", "tcp",
                        "redirect", "to", ":15001",
                    ],
                ),
            ),
            (
                "chain added to our table",
                Edit(false, &["add", "chain", "inet", "sluice", "extra"]),
            ),
            (
                "loopback rule deleted",
                DeleteNftRule("ip daddr 127.0.0.0/8 return"),
            ),
            (
                "table deleted",
                Edit(false, &["delete", "table", "inet", "sluice"]),
            ),
        ],
        _ => vec![
            (
                "rule added to our chain",
                Edit(
                    false,
                    &[
                        "-t",
                        "nat",
                        "-I",
                        "SLUICE_OUTPUT",
                        "1",
                        "-p",
                        "tcp",
                        "--dport",
                        "4444",
                        "-j",
                        "RETURN",
                    ],
                ),
            ),
            (
                "duplicate jump",
                Edit(
                    false,
                    &[
                        "-t",
                        "nat",
                        "-A",
                        "OUTPUT",
                        "-p",
                        "tcp",
                        "-j",
                        "SLUICE_OUTPUT",
                    ],
                ),
            ),
            (
                "loopback rule deleted",
                Edit(
                    false,
                    &[
                        "-t",
                        "nat",
                        "-D",
                        "SLUICE_OUTPUT",
                        "-d",
                        "127.0.0.0/8",
                        "-j",
                        "RETURN",
                    ],
                ),
            ),
            (
                "jump deleted",
                Edit(
                    false,
                    &[
                        "-t",
                        "nat",
                        "-D",
                        "OUTPUT",
                        "-p",
                        "tcp",
                        "-j",
                        "SLUICE_OUTPUT",
                    ],
                ),
            ),
            (
                "IPv6 chain flushed",
                Edit(true, &["-t", "nat", "-F", "SLUICE_OUTPUT"]),
            ),
        ],
    }
}

/// The handle `nft -a` shows for the rule `text` of our output chain.
fn nft_handle(pod: &Pod, text: &str) -> String {
    let out = in_pod(
        pod,
        "nft",
        &["-a", "list", "chain", "inet", "sluice", "output"],
    )
    .unwrap();
    out.lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix(text)?
                .trim()
                .strip_prefix("# handle ")
        })
        .unwrap_or_else(|| panic!("no rule {text:?} in {out}"))
        .to_string()
}

/// Each kind of drift in our rules is repaired by the next apply (`applied`), back to the
/// very listing the first apply produced; the repaired rules steer as before.
fn tampering_is_repaired(backend: Backend) {
    let bed = Bed::new(backend);
    bed.run("apply", "applied");
    let first = bed.listing();
    for (what, tamper) in tampers(backend) {
        match tamper {
            Tamper::Edit(ipv6, args) => {
                backend.edit(&bed.a, ipv6, args).unwrap();
            }
            Tamper::DeleteNftRule(text) => {
                let handle = nft_handle(&bed.a, text);
                let args = [
                    "delete", "rule", "inet", "sluice", "output", "handle", &handle,
                ];
                backend.edit(&bed.a, false, &args).unwrap();
            }
        }
        assert_ne!(bed.listing(), first, "{what}: the tamper changed nothing");
        bed.run("apply", "applied");
        assert_eq!(bed.listing(), first, "{what}: not repaired");
    }
    let servers = Servers::start(&bed);
    servers.expect_steered(&bed, addr(bed.b.ip(), 8080), "intercept-v4");
    servers.expect_direct(&bed, loopback(), DialOpts::default(), "a-loopback");
}

/// Others' rules (added first, in nftables and in iptables-nft; in legacy iptables too
/// when that is the backend) survive apply and cleanup: after cleanup the listing is
/// byte-identical to before apply, and a second cleanup finds nothing.
fn others_rules_are_untouched(backend: Backend) {
    let bed = Bed::new(backend);
    for cmd in [
        "add table inet other",
        "add chain inet other out { type nat hook output priority 10 ; }",
        "add rule inet other out tcp dport 5555 return",
    ] {
        in_pod(&bed.a, "nft", &[cmd]).unwrap();
    }
    let mut iptables = vec![Backend::Iptables];
    if backend == Backend::IptablesLegacy {
        iptables.push(backend);
    }
    for tool in iptables {
        for ipv6 in [false, true] {
            for args in [
                &["-t", "nat", "-N", "OTHER"][..],
                &[
                    "-t", "nat", "-A", "OTHER", "-p", "tcp", "--dport", "5555", "-j", "RETURN",
                ],
                &["-t", "nat", "-A", "OUTPUT", "-p", "tcp", "-j", "OTHER"],
                // Ours jumps from PREROUTING too (inbound): someone else's rule there
                // must survive. (With none, iptables-nft would leave the empty built-in
                // chain it creates for our jump: no rule, but a different nft listing.)
                &["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-j", "OTHER"],
            ] {
                tool.edit(&bed.a, ipv6, args).unwrap();
            }
        }
    }
    let before = bed.listing();
    bed.run("apply", "applied");
    bed.expect_ours(true);
    let applied = bed.listing();
    for line in before
        .lines()
        .filter(|l| l.contains("OTHER") || l.contains("5555"))
    {
        assert!(applied.contains(line), "apply lost {line:?}:\n{applied}");
    }
    bed.run("cleanup", "removed");
    bed.expect_ours(false);
    assert_eq!(
        bed.listing(),
        before,
        "cleanup did not restore the rules as they were"
    );
    bed.run("cleanup", "nothing to remove");
    assert_eq!(bed.listing(), before);
}

/// `cleanup` removes our rules of both families whatever its flags: IPv6 rules left
/// behind would send the pod's IPv6 connections to a listener that is gone.
fn cleanup_removes_both_families(backend: Backend) {
    let bed = Bed::new(backend);
    bed.run("apply", "applied");
    let out = cli(&bed.a, "cleanup", backend, &[]).unwrap();
    assert_eq!(out, format!("{}: removed", backend.printed()));
    bed.expect_ours(false);
}

fn loopback() -> SocketAddr {
    addr(Ipv4Addr::LOCALHOST, 7070)
}

/// The servers of [`traffic_follows_the_rules`]: in `a`, stand-ins for the proxy's
/// listeners and a loopback service; in `b`, the real destinations; in `c`, an excluded one.
struct Servers {
    intercept: [Server; 2],
    _rest: Vec<Server>,
}

impl Servers {
    fn start(bed: &Bed) -> Servers {
        let serve = |pod: &Pod, port, id, bind: Option<&str>| match bind {
            Some(bind) => pod.serve_args(port, id, &["--bind", bind]).unwrap(),
            None => pod.serve(port, id).unwrap(),
        };
        let (a, b, c) = (&bed.a, &bed.b, &bed.c);
        Servers {
            intercept: [
                serve(a, 15001, "intercept-v4", Some("127.0.0.1:15001")),
                serve(a, 15001, "intercept-v6", Some("[::1]:15001")),
            ],
            _rest: vec![
                serve(a, 7070, "a-loopback", Some("127.0.0.1:7070")),
                serve(b, 8080, "server-b", None),
                serve(b, 9090, "server-b-excluded", None),
                serve(b, 8086, "server-b6", Some("[::]:8086")),
                serve(c, 8080, "server-c", None),
                serve(c, 8086, "server-c6", Some("[::]:8086")),
            ],
        }
    }

    fn dial(bed: &Bed, target: SocketAddr, opts: DialOpts, id: &str) -> ConnResult {
        let r = bed.a.dial(target, &opts).unwrap().results.remove(0);
        assert!(r.is_ok(), "{target}: {r:?}");
        assert_eq!(
            r.server_id.as_deref(),
            Some(id),
            "{target} reached another server: {r:?}"
        );
        assert_eq!(r.peer, Some(target.to_string()), "getpeername: {r:?}");
        r
    }

    /// `target` reached the in-pod stand-in listener `id`, which read `target` back as the
    /// original destination.
    fn expect_steered(&self, bed: &Bed, target: SocketAddr, id: &str) {
        Servers::dial(bed, target, DialOpts::default(), id);
        let server = self.intercept.iter().find(|s| s.id == id).unwrap();
        let orig = format!(" orig={target}");
        let seen = |l: &str| l.starts_with("CONN ") && l.ends_with(&orig);
        if let Err(e) = server.proc.wait_line(Duration::from_secs(2), seen) {
            panic!("{id} never saw original destination {target}: {e:#}");
        }
    }

    /// `target` reached its own server `id` directly, from the pod's address.
    fn expect_direct(&self, bed: &Bed, target: SocketAddr, opts: DialOpts, id: &str) {
        let r = Servers::dial(bed, target, opts, id);
        let saw: SocketAddr = r.server_saw.as_deref().unwrap().parse().unwrap();
        let from = match target {
            t if t.ip().is_loopback() => t.ip(),
            SocketAddr::V4(_) => bed.a.ip().into(),
            SocketAddr::V6(_) => bed.a.ip6().into(),
        };
        assert_eq!(saw.ip(), from, "{target}: {r:?}");
    }
}

/// With the rules applied, pod `a`'s TCP connections reach the listener on 15001 (both
/// families) with the original destination intact, except excluded ports, excluded CIDRs,
/// sockets marked as the proxy's, and loopback; after cleanup everything goes direct.
fn traffic_follows_the_rules(backend: Backend) {
    let bed = Bed::new(backend);
    let servers = Servers::start(&bed);
    let (b, c) = (&bed.b, &bed.c);
    let direct = DialOpts::default;
    bed.run("apply", "applied");
    servers.expect_steered(&bed, addr(b.ip(), 8080), "intercept-v4");
    servers.expect_steered(&bed, addr(b.ip6(), 8086), "intercept-v6");
    servers.expect_direct(&bed, addr(b.ip(), 9090), direct(), "server-b-excluded");
    servers.expect_direct(&bed, addr(c.ip(), 8080), direct(), "server-c");
    servers.expect_direct(&bed, addr(c.ip6(), 8086), direct(), "server-c6");
    let marked = DialOpts::default().mark(PROXY_MARK);
    servers.expect_direct(&bed, addr(b.ip(), 8080), marked.clone(), "server-b");
    servers.expect_direct(&bed, addr(b.ip6(), 8086), marked, "server-b6");
    servers.expect_direct(&bed, loopback(), direct(), "a-loopback");

    bed.run("cleanup", "removed");
    bed.expect_ours(false);
    servers.expect_direct(&bed, addr(b.ip(), 8080), direct(), "server-b");
    servers.expect_direct(&bed, addr(b.ip6(), 8086), direct(), "server-b6");
}
