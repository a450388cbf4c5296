//! Two nodes joined by a link, so pods on one reach pods on the other as on a cluster network.
//!
//! [`link`] makes a veth pair between the two node netns, `lk<S>` on each side (`S`: the
//! other node's subnet number, so a node can hold links to several others), with a small
//! subnet of its own (`10.78.L.1/24` and `.2`, `fd78:0:0:L::1/64` and `::2`, `L` counted per
//! process), turns on IPv4 and IPv6 forwarding in both node netns and routes each node's pod
//! subnets to the other through it. Pods already have default routes via their node's `br0`
//! (`crate::node`), so nothing changes inside them: a packet from a pod on node 1 to a pod on
//! node 2 leaves through node 1's bridge, crosses the link and enters node 2's bridge with
//! its addresses untouched (no NAT: each side sees the other pod's own address).
//!
//! Everything a link makes lives inside the two node netns, so it goes with them: dropping the
//! [`NodeLink`] deletes the pair (and the routes through it), dropping either node deletes its
//! end and with it the pair, also during a panic; the stale sweep (`crate::sweep`) deletes
//! the node netns of a process that died, and the link with them. [`NodeLink::capture`]
//! watches the link (`crate::link_capture`).

use crate::link_capture::LinkCapture;
use crate::node::Node;
use anyhow::{Context, Result};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A veth pair between two nodes; borrowing them makes it go before they do.
pub struct NodeLink<'n> {
    a: &'n Node,
    b: &'n Node,
    /// The interface in `a`'s netns (its peer in `b`'s is [`NodeLink::b_ifname`]).
    a_if: String,
    b_if: String,
    index: u8,
}

/// Joins `a` and `b`: see the module doc.
pub fn link<'n>(a: &'n Node, b: &'n Node) -> Result<NodeLink<'n>> {
    anyhow::ensure!(
        a.subnet() != b.subnet(),
        "nodes {} and {} share subnet {}",
        a.name(),
        b.name(),
        a.subnet()
    );
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let link = NodeLink {
        a,
        b,
        a_if: format!("lk{}", b.subnet()),
        b_if: format!("lk{}", a.subnet()),
        index: (NEXT.fetch_add(1, Ordering::Relaxed) % 250) as u8,
    };
    // From here on, Drop deletes the pair if a step fails.
    a.netns.ip(&[
        "link",
        "add",
        &link.a_if,
        "type",
        "veth",
        "peer",
        "name",
        &link.b_if,
        "netns",
        b.netns.name(),
    ])?;
    link.set_up(a, &link.a_if, 1, b, 2)?;
    link.set_up(b, &link.b_if, 2, a, 1)?;
    Ok(link)
}

impl NodeLink<'_> {
    /// `node`'s side: address `.host`, up, forwarding on, `peer`'s pod subnets via `.via`.
    fn set_up(&self, node: &Node, ifname: &str, host: u8, peer: &Node, via: u8) -> Result<()> {
        let ns = &node.netns;
        let v4 = format!("{}/24", self.addr(host));
        let v6 = format!("{}/64", self.addr6(host));
        ns.ip(&["addr", "add", &v4, "dev", ifname])?;
        ns.ip(&["addr", "add", &v6, "dev", ifname, "nodad"])?;
        ns.ip(&["link", "set", ifname, "up"])?;
        crate::netns::run_in(&node.netns_path(), || {
            for knob in [
                "/proc/sys/net/ipv4/ip_forward",
                "/proc/sys/net/ipv6/conf/all/forwarding",
            ] {
                std::fs::write(knob, "1").with_context(|| format!("writing 1 to {knob}"))?;
            }
            Ok(())
        })?;
        let (gw, gw6) = (self.addr(via).to_string(), self.addr6(via).to_string());
        ns.ip(&["route", "add", &peer.pod_subnet(), "via", &gw])?;
        ns.ip(&["-6", "route", "add", &peer.pod_subnet6(), "via", &gw6])?;
        Ok(())
    }

    /// The link's IPv4 address `.host` (1 on the first node's side, 2 on the second's).
    fn addr(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 78, self.index, host)
    }

    fn addr6(&self, host: u8) -> Ipv6Addr {
        Ipv6Addr::new(
            0xfd78,
            0,
            0,
            u16::from(self.index),
            0,
            0,
            0,
            u16::from(host),
        )
    }

    /// The two nodes, in the order [`link`] was given them.
    pub fn nodes(&self) -> (&Node, &Node) {
        (self.a, self.b)
    }

    /// The link's interface in the first node's netns.
    pub fn a_ifname(&self) -> &str {
        &self.a_if
    }

    /// The link's interface in the second node's netns.
    pub fn b_ifname(&self) -> &str {
        &self.b_if
    }

    /// Starts recording what crosses the link, at the first node's end (both directions).
    pub fn capture(&self) -> Result<LinkCapture> {
        LinkCapture::start(&self.a.netns_path(), &self.a_if)
    }
}

impl Drop for NodeLink<'_> {
    fn drop(&mut self) {
        // Deleting one end deletes both; a node already gone took it along.
        let exists = self.a.netns.ip(&["link", "show", &self.a_if]).is_ok();
        if exists && let Err(e) = self.a.netns.ip(&["link", "del", &self.a_if]) {
            eprintln!(
                "sluice-tests: deleting link {} of {}: {e:#}",
                self.a_if,
                self.a.name()
            );
        }
    }
}
