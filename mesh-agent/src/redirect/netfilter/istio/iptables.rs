//! Which iptables rules istio-iptables programs, in the order it adds them.
//!
//! Order matters twice: it is the order of rules inside each chain, and the order chains
//! are declared and (reversed) cleaned up. Rules are written as iptables arguments; every
//! interpolated value was validated to hold no whitespace.

use super::cidr::Ranges;
use super::dns;
use super::rules::IptPlan;
use super::settings::{InboundPorts, OwnerGroups, Settings};

const OUTPUT: &str = "ISTIO_OUTPUT";
const INBOUND: &str = "ISTIO_INBOUND";
const DIVERT: &str = "ISTIO_DIVERT";
const TPROXY: &str = "ISTIO_TPROXY";
const REDIRECT: &str = "ISTIO_REDIRECT";
const IN_REDIRECT: &str = "ISTIO_IN_REDIRECT";
const DROP: &str = "ISTIO_DROP";

/// Mark the proxy puts on its own outbound-to-local-app packets in TPROXY mode.
const OUTBOUND_MARK: &str = "1338";
/// Source address the proxy binds for inbound passthrough, per family.
const PASSTHROUGH_SRC: (&str, &str) = ("127.0.0.6/32", "::6/128");
const LOOPBACK_V6: &str = "::1/128";

pub(super) fn plan(s: &Settings) -> IptPlan {
    let mut p = IptPlan::new(s.ipv6);
    let lo = (s.host_loopback, LOOPBACK_V6);

    for nic in &s.exclude_interfaces {
        p.append("nat", "PREROUTING", &format!("-i {nic} -j RETURN"));
        p.append("nat", "OUTPUT", &format!("-o {nic} -j RETURN"));
    }
    if s.tproxy {
        for nic in &s.exclude_interfaces {
            p.append("mangle", "PREROUTING", &format!("-i {nic} -j RETURN"));
            p.append("mangle", "OUTPUT", &format!("-o {nic} -j RETURN"));
        }
    }
    for nic in &s.virt_interfaces {
        p.insert("nat", "PREROUTING", 1, &format!("-i {nic} -j RETURN"));
    }
    if s.drop_invalid {
        let invalid = format!("-m conntrack --ctstate INVALID -j {DROP}");
        p.append("mangle", "PREROUTING", &invalid);
        p.append("mangle", DROP, "-j DROP");
    }

    let tunnel = s.inbound_tunnel_port;
    p.append(
        "nat",
        INBOUND,
        &format!("-p tcp --dport {tunnel} -j RETURN"),
    );
    let to_proxy = format!("-p tcp -j REDIRECT --to-ports {}", s.proxy_port);
    p.append("nat", REDIRECT, &to_proxy);
    let to_inbound = format!("-p tcp -j REDIRECT --to-ports {}", s.inbound_capture_port);
    p.append("nat", IN_REDIRECT, &to_inbound);

    inbound(&mut p, s);

    p.append("nat", "OUTPUT", &format!("-j {OUTPUT}"));
    // Port exclusions go first: they must win over the loopback redirect below.
    for port in &s.outbound_ports_exclude {
        p.append("nat", OUTPUT, &format!("-p tcp --dport {port} -j RETURN"));
        p.append("nat", OUTPUT, &format!("-p udp --dport {port} -j RETURN"));
    }
    p.append_each("nat", OUTPUT, PASSTHROUGH_SRC, |src| {
        format!("-o lo -s {src} -j RETURN")
    });

    // With an explicit loopback destination in the include list, local app-to-app
    // traffic is captured too, so the "return on lo" rules are left out.
    let keep_lo = !(s.include_v4.has_loopback || s.include_v6.has_loopback);
    for uid in &s.proxy_uids {
        proxy_owner(
            &mut p,
            s,
            &format!("--uid-owner {uid}"),
            s.redirect_dns,
            keep_lo,
        );
    }
    for gid in &s.proxy_gids {
        // Upstream only skips port 53 on the UID rule; the GID rule keeps the plain form.
        proxy_owner(&mut p, s, &format!("--gid-owner {gid}"), false, keep_lo);
    }

    match &s.owner_groups {
        OwnerGroups::AllExcept(groups) => {
            for g in groups {
                p.append(
                    "nat",
                    OUTPUT,
                    &format!("-m owner --gid-owner {g} -j RETURN"),
                );
            }
        }
        OwnerGroups::Only(groups) => {
            let none_of: String = groups
                .iter()
                .map(|g| format!("-m owner ! --gid-owner {g} "))
                .collect();
            p.append("nat", OUTPUT, &format!("{none_of}-j RETURN"));
        }
    }

    if s.redirect_dns {
        dns::iptables(&mut p, s);
    }

    // Apps and proxy-aware clients talking to localhost are never captured.
    p.append_each("nat", OUTPUT, lo, |dst| format!("-d {dst} -j RETURN"));
    for cidr in &s.exclude_v4.cidrs {
        p.append_v4("nat", OUTPUT, &format!("-d {cidr} -j RETURN"));
    }
    for cidr in &s.exclude_v6.cidrs {
        p.append_v6("nat", OUTPUT, &format!("-d {cidr} -j RETURN"));
    }
    for port in &s.outbound_ports_include {
        p.append(
            "nat",
            OUTPUT,
            &format!("-p tcp --dport {port} -j {REDIRECT}"),
        );
    }
    outbound_include(
        &mut p,
        s,
        &s.include_v4,
        IptPlan::append_v4,
        IptPlan::insert_v4,
    );
    outbound_include(
        &mut p,
        s,
        &s.include_v6,
        IptPlan::append_v6,
        IptPlan::insert_v6,
    );

    if s.tproxy {
        tproxy_marks(&mut p, s);
    }
    p
}

/// Rules for one proxy UID or GID; `owner` is `--uid-owner N` or `--gid-owner N`.
fn proxy_owner(p: &mut IptPlan, s: &Settings, owner: &str, skip_dns: bool, keep_lo: bool) {
    let tunnel = s.inbound_tunnel_port;
    let lo = (s.host_loopback, LOOPBACK_V6);
    // The proxy calling a local service VIP goes back through inbound capture; with DNS
    // capture, port 53 stays with the agent instead.
    let ports = if skip_dns {
        format!("-m multiport ! --dports 53,{tunnel}")
    } else {
        format!("! --dport {tunnel}")
    };
    p.append_each("nat", OUTPUT, lo, |dst| {
        format!("-o lo ! -d {dst} -p tcp {ports} -m owner {owner} -j {IN_REDIRECT}")
    });
    if keep_lo {
        // App to itself over lo: leave it alone (except DNS, when captured).
        let not_dns = if s.redirect_dns {
            "-p tcp ! --dport 53 "
        } else {
            ""
        };
        p.append(
            "nat",
            OUTPUT,
            &format!("-o lo {not_dns}-m owner ! {owner} -j RETURN"),
        );
    }
    // Everything else the proxy sends, TCP or UDP, must not loop back into it.
    p.append("nat", OUTPUT, &format!("-m owner {owner} -j RETURN"));
}

fn inbound(p: &mut IptPlan, s: &Settings) {
    if s.inbound_ports == InboundPorts::None {
        return;
    }
    let (table, capture) = if s.tproxy {
        ("mangle", TPROXY)
    } else {
        ("nat", IN_REDIRECT)
    };
    if s.tproxy {
        p.append(
            "mangle",
            DIVERT,
            &format!("-j MARK --set-mark {}", s.tproxy_mark),
        );
        p.append("mangle", DIVERT, "-j ACCEPT");
        let (mark, port) = (s.tproxy_mark, s.inbound_capture_port);
        p.append_each("mangle", TPROXY, (s.host_loopback, LOOPBACK_V6), |dst| {
            format!("! -d {dst} -p tcp -j TPROXY --tproxy-mark {mark}/0xffffffff --on-port {port}")
        });
    }
    p.append(table, "PREROUTING", &format!("-p tcp -j {INBOUND}"));
    // TPROXY: established connections only need the mark to reach the local socket.
    let established = format!("-m conntrack --ctstate RELATED,ESTABLISHED -j {DIVERT}");
    match &s.inbound_ports {
        InboundPorts::None => {}
        InboundPorts::All { except } => {
            for port in except {
                p.append(table, INBOUND, &format!("-p tcp --dport {port} -j RETURN"));
            }
            if s.tproxy {
                p.append(table, INBOUND, &format!("-p tcp {established}"));
            }
            p.append(table, INBOUND, &format!("-p tcp -j {capture}"));
        }
        InboundPorts::Only(ports) => {
            for port in ports {
                if s.tproxy {
                    p.append(
                        table,
                        INBOUND,
                        &format!("-p tcp --dport {port} {established}"),
                    );
                }
                p.append(
                    table,
                    INBOUND,
                    &format!("-p tcp --dport {port} -j {capture}"),
                );
            }
        }
    }
}

type AppendFn = fn(&mut IptPlan, &'static str, &str, &str);
type InsertFn = fn(&mut IptPlan, &'static str, &str, u32, &str);

/// Destinations captured for one family; virtual interfaces get the same treatment on
/// PREROUTING so their traffic counts as outbound.
fn outbound_include(p: &mut IptPlan, s: &Settings, r: &Ranges, append: AppendFn, insert: InsertFn) {
    if r.wildcard {
        append(p, "nat", OUTPUT, &format!("-j {REDIRECT}"));
        for nic in &s.virt_interfaces {
            insert(
                p,
                "nat",
                "PREROUTING",
                1,
                &format!("-i {nic} -j {REDIRECT}"),
            );
        }
        return;
    }
    for cidr in &r.cidrs {
        for nic in &s.virt_interfaces {
            let rule = format!("-i {nic} -d {cidr} -j {REDIRECT}");
            insert(p, "nat", "PREROUTING", 1, &rule);
        }
        append(p, "nat", OUTPUT, &format!("-d {cidr} -j {REDIRECT}"));
    }
}

/// TPROXY bookkeeping: keep the proxy's marks on the connection and keep the proxy's
/// own traffic to the app (and app-to-app traffic) out of inbound capture.
fn tproxy_marks(p: &mut IptPlan, s: &Settings) {
    let mark = s.tproxy_mark;
    let lo = (s.host_loopback, LOOPBACK_V6);
    let save = format!("-p tcp -m mark --mark {mark} -j CONNMARK --save-mark");
    p.append("mangle", "PREROUTING", &save);
    let marked = format!("-p tcp -o lo -m mark --mark {mark} -j RETURN");
    p.append("mangle", "OUTPUT", &marked);
    let uids = s.proxy_uids.iter().map(|id| format!("--uid-owner {id}"));
    let gids = s.proxy_gids.iter().map(|id| format!("--gid-owner {id}"));
    for owner in uids.chain(gids) {
        p.append_each("mangle", "OUTPUT", lo, |dst| {
            format!("! -d {dst} -p tcp -o lo -m owner {owner} -j MARK --set-mark {OUTBOUND_MARK}")
        });
    }
    let restore = format!("-p tcp -m connmark --mark {mark} -j CONNMARK --restore-mark");
    p.append("mangle", "OUTPUT", &restore);
    p.insert(
        "mangle",
        INBOUND,
        1,
        &format!("-p tcp -m mark --mark {mark} -j RETURN"),
    );
    let (src4, src6) = PASSTHROUGH_SRC;
    p.insert_v4(
        "mangle",
        INBOUND,
        2,
        &format!("-p tcp -s {src4} -i lo -j RETURN"),
    );
    p.insert_v6(
        "mangle",
        INBOUND,
        2,
        &format!("-p tcp -s {src6} -i lo -j RETURN"),
    );
    let not_outbound = format!("-p tcp -i lo -m mark ! --mark {OUTBOUND_MARK} -j RETURN");
    p.insert("mangle", INBOUND, 3, &not_outbound);
}
