//! Which nftables rules istio-nftables programs, in the order it adds them.
//!
//! Same capture logic as the iptables planner, in one `inet` ruleset: IPv4 matches are
//! always present, IPv6 ones only with IPv6 on. A few details differ from the iptables
//! flavour upstream (e.g. the nat jump to DNS capture is not per family), and are kept.

use super::dns;
use super::nft_tx::{MANGLE, NAT, NftPlan};
use super::settings::{InboundPorts, OwnerGroups, Settings};

const INBOUND: &str = "istio-inbound";
const OUTPUT: &str = "istio-output";
const REDIRECT: &str = "istio-redirect";
const IN_REDIRECT: &str = "istio-in-redirect";
const DIVERT: &str = "istio-divert";
const TPROXY: &str = "istio-tproxy";
const DROP: &str = "istio-drop";

/// Mark the proxy puts on its own outbound-to-local-app packets in TPROXY mode.
const OUTBOUND_MARK: &str = "1338";
const LOOPBACK_V6: &str = "::1/128";

pub(super) fn plan(s: &Settings) -> NftPlan {
    let mut p = NftPlan::new(s.ipv6);

    for nic in &s.exclude_interfaces {
        p.add(NAT, "prerouting", &format!("iifname {nic} counter return"));
        p.add(NAT, "output", &format!("oifname {nic} counter return"));
    }
    if s.tproxy {
        for nic in &s.exclude_interfaces {
            p.add(
                MANGLE,
                "prerouting",
                &format!("iifname {nic} counter return"),
            );
            p.add(MANGLE, "output", &format!("oifname {nic} counter return"));
        }
    }
    for nic in &s.virt_interfaces {
        p.insert(
            NAT,
            "prerouting",
            0,
            &format!("iifname {nic} counter return"),
        );
    }
    if s.drop_invalid {
        let invalid = format!("meta l4proto tcp ct state invalid counter jump {DROP}");
        p.add(MANGLE, "prerouting", &invalid);
        p.add(MANGLE, DROP, "counter drop");
    }

    let tunnel = s.inbound_tunnel_port;
    p.add(
        NAT,
        INBOUND,
        &format!("meta l4proto tcp tcp dport {tunnel} counter return"),
    );
    let to_proxy = format!("meta l4proto tcp counter redirect to :{}", s.proxy_port);
    p.add(NAT, REDIRECT, &to_proxy);
    let to_inbound = format!(
        "meta l4proto tcp counter redirect to :{}",
        s.inbound_capture_port
    );
    p.add(NAT, IN_REDIRECT, &to_inbound);

    inbound(&mut p, s);

    p.add(NAT, "output", &format!("counter jump {OUTPUT}"));
    // Port exclusions go first: they must win over the loopback redirect below.
    for port in &s.outbound_ports_exclude {
        p.add(NAT, OUTPUT, &format!("tcp dport {port} counter return"));
        p.add(NAT, OUTPUT, &format!("udp dport {port} counter return"));
    }
    p.add(
        NAT,
        OUTPUT,
        "oifname lo ip saddr 127.0.0.6/32 counter return",
    );
    p.add_v6(NAT, OUTPUT, "oifname lo ip6 saddr ::6/128 counter return");

    // An explicit loopback destination in the include list means app-to-app traffic
    // over lo is captured too, so the "return on lo" rules are left out.
    let keep_lo = !(s.include_v4.has_loopback || s.include_v6.has_loopback);
    for uid in &s.proxy_uids {
        proxy_owner(&mut p, s, ("skuid", uid), s.redirect_dns, keep_lo);
    }
    for gid in &s.proxy_gids {
        // Upstream only skips port 53 on the UID rule; the GID rule keeps the plain form.
        proxy_owner(&mut p, s, ("skgid", gid), false, keep_lo);
    }

    match &s.owner_groups {
        OwnerGroups::AllExcept(groups) => {
            for g in groups {
                p.add(NAT, OUTPUT, &format!("skgid {g} counter return"));
            }
        }
        OwnerGroups::Only(groups) => {
            let none_of: String = groups.iter().map(|g| format!("skgid != {g} ")).collect();
            p.add(NAT, OUTPUT, &format!("{none_of}counter return"));
        }
    }

    if s.redirect_dns {
        dns::nft(&mut p, s);
    }

    p.add(
        NAT,
        OUTPUT,
        &format!("ip daddr {} counter return", s.host_loopback),
    );
    p.add_v6(
        NAT,
        OUTPUT,
        &format!("ip6 daddr {LOOPBACK_V6} counter return"),
    );
    for cidr in &s.exclude_v4.cidrs {
        p.add(NAT, OUTPUT, &format!("ip daddr {cidr} counter return"));
    }
    for cidr in &s.exclude_v6.cidrs {
        p.add_v6(NAT, OUTPUT, &format!("ip6 daddr {cidr} counter return"));
    }
    for port in &s.outbound_ports_include {
        p.add(
            NAT,
            OUTPUT,
            &format!("tcp dport {port} counter jump {REDIRECT}"),
        );
    }
    outbound_include(&mut p, s);

    if s.tproxy {
        tproxy_marks(&mut p, s);
    }
    p
}

/// Rules for one proxy UID or GID: `(key, id)` is `("skuid", uid)` or `("skgid", gid)`.
fn proxy_owner(
    p: &mut NftPlan,
    s: &Settings,
    (key, id): (&str, &str),
    skip_dns: bool,
    keep_lo: bool,
) {
    let tunnel = s.inbound_tunnel_port;
    // The proxy calling a local service VIP goes back through inbound capture; with DNS
    // capture, port 53 stays with the agent instead.
    let ports = if skip_dns {
        format!("{{ 53, {tunnel} }}")
    } else {
        tunnel.to_owned()
    };
    let to_app = |daddr: &str| {
        format!(
            "oifname lo meta l4proto tcp {daddr} tcp dport != {ports} {key} {id} counter jump {IN_REDIRECT}"
        )
    };
    p.add(
        NAT,
        OUTPUT,
        &to_app(&format!("ip daddr != {}", s.host_loopback)),
    );
    p.add_v6(NAT, OUTPUT, &to_app(&format!("ip6 daddr != {LOOPBACK_V6}")));
    if keep_lo {
        // App to itself over lo: leave it alone (except DNS, when captured).
        let not_dns = if s.redirect_dns {
            "meta l4proto tcp tcp dport != 53 "
        } else {
            ""
        };
        p.add(
            NAT,
            OUTPUT,
            &format!("oifname lo {not_dns}{key} != {id} counter return"),
        );
    }
    // Everything else the proxy sends, TCP or UDP, must not loop back into it.
    p.add(NAT, OUTPUT, &format!("{key} {id} counter return"));
}

fn inbound(p: &mut NftPlan, s: &Settings) {
    if s.inbound_ports == InboundPorts::None {
        return;
    }
    let (table, capture) = if s.tproxy {
        (MANGLE, TPROXY)
    } else {
        (NAT, IN_REDIRECT)
    };
    if s.tproxy {
        let mark = s.tproxy_mark;
        p.add(MANGLE, DIVERT, &format!("counter meta mark set {mark}"));
        p.add(MANGLE, DIVERT, "counter accept");
        let port = s.inbound_capture_port;
        let tproxy = |dst: &str, family: &str| {
            format!(
                "meta l4proto tcp {dst} tproxy {family} to :{port} meta mark set {mark} counter accept"
            )
        };
        let v4 = tproxy(&format!("ip daddr != {}", s.host_loopback), "ip");
        p.add(MANGLE, TPROXY, &v4);
        p.add_v6(
            MANGLE,
            TPROXY,
            &tproxy(&format!("ip6 daddr != {LOOPBACK_V6}"), "ip6"),
        );
    }
    p.add(
        table,
        "prerouting",
        &format!("meta l4proto tcp counter jump {INBOUND}"),
    );
    // TPROXY: established connections only need the mark to reach the local socket.
    let established = "meta l4proto tcp ct state related,established";
    match &s.inbound_ports {
        InboundPorts::None => {}
        InboundPorts::All { except } => {
            for port in except {
                let rule = format!("meta l4proto tcp tcp dport {port} counter return");
                p.add(table, INBOUND, &rule);
            }
            if s.tproxy {
                p.add(
                    table,
                    INBOUND,
                    &format!("{established} counter jump {DIVERT}"),
                );
            }
            p.add(
                table,
                INBOUND,
                &format!("meta l4proto tcp counter jump {capture}"),
            );
        }
        InboundPorts::Only(ports) => {
            for port in ports {
                if s.tproxy {
                    let rule = format!("{established} tcp dport {port} counter jump {DIVERT}");
                    p.add(table, INBOUND, &rule);
                }
                let rule = format!("meta l4proto tcp tcp dport {port} counter jump {capture}");
                p.add(table, INBOUND, &rule);
            }
        }
    }
}

/// Captured destinations; virtual interfaces get the same on prerouting so their
/// traffic counts as outbound.
fn outbound_include(p: &mut NftPlan, s: &Settings) {
    let (v4, v6) = (&s.include_v4, &s.include_v6);
    if v4.wildcard || v6.wildcard {
        p.add(NAT, OUTPUT, &format!("counter jump {REDIRECT}"));
        for nic in &s.virt_interfaces {
            let rule = format!("iifname {nic} counter jump {REDIRECT}");
            p.insert(NAT, "prerouting", 0, &rule);
        }
        return;
    }
    for cidr in &v4.cidrs {
        for nic in &s.virt_interfaces {
            let rule = format!("iifname {nic} ip daddr {cidr} counter jump {REDIRECT}");
            p.insert(NAT, "prerouting", 0, &rule);
        }
        p.add(
            NAT,
            OUTPUT,
            &format!("ip daddr {cidr} counter jump {REDIRECT}"),
        );
    }
    for cidr in &v6.cidrs {
        for nic in &s.virt_interfaces {
            let rule = format!("iifname {nic} ip6 daddr {cidr} counter jump {REDIRECT}");
            p.insert_v6(NAT, "prerouting", 0, &rule);
        }
        p.add_v6(
            NAT,
            OUTPUT,
            &format!("ip6 daddr {cidr} counter jump {REDIRECT}"),
        );
    }
}

/// TPROXY bookkeeping: keep marks on the connection and keep the proxy's own traffic to
/// the app (and app-to-app traffic) out of inbound capture.
fn tproxy_marks(p: &mut NftPlan, s: &Settings) {
    let mark = s.tproxy_mark;
    let save = format!("meta l4proto tcp mark {mark} counter ct mark set mark");
    p.add(MANGLE, "prerouting", &save);
    let marked = format!("oifname lo meta l4proto tcp mark {mark} counter return");
    p.add(MANGLE, "output", &marked);
    let uids = s.proxy_uids.iter().map(|id| format!("skuid {id}"));
    let gids = s.proxy_gids.iter().map(|id| format!("skgid {id}"));
    for owner in uids.chain(gids) {
        let set = format!("{owner} counter meta mark set {OUTBOUND_MARK}");
        let v4 = format!(
            "oifname lo meta l4proto tcp ip daddr != {} {set}",
            s.host_loopback
        );
        p.add(MANGLE, "output", &v4);
        let v6 = format!("oifname lo meta l4proto tcp ip6 daddr != {LOOPBACK_V6} {set}");
        p.add_v6(MANGLE, "output", &v6);
    }
    let restore = format!("meta l4proto tcp ct mark {mark} counter meta mark set ct mark");
    p.add(MANGLE, "output", &restore);
    let marked = format!("meta l4proto tcp mark {mark} counter return");
    p.insert(MANGLE, INBOUND, 0, &marked);
    let passthrough = "iifname lo meta l4proto tcp ip saddr 127.0.0.6/32 counter return";
    p.insert(MANGLE, INBOUND, 1, passthrough);
    let passthrough6 = "iifname lo meta l4proto tcp ip6 saddr ::6/128 counter return";
    p.insert_v6(MANGLE, INBOUND, 1, passthrough6);
    let not_outbound =
        format!("iifname lo meta l4proto tcp mark != {OUTBOUND_MARK} counter return");
    p.insert(MANGLE, INBOUND, 2, &not_outbound);
}
