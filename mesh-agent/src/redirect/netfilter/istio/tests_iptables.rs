//! End-to-end tests of the iptables backend: flags in, payload text out.
//!
//! Each test checks the rules one flag is responsible for (and where they land), not
//! whole payloads.

use super::args::test_support::parse;
use super::{IstioBackend, IstioRenderError, render};

fn out(flags: &str) -> String {
    match render(&parse(flags), IstioBackend::Iptables) {
        Ok(text) => text,
        Err(e) => panic!("{flags:?}: {e}"),
    }
}

/// The lines of one table in the IPv4 (`nth` = 0) or IPv6 (`nth` = 1) payload.
fn table(text: &str, nth: usize, name: &str) -> Vec<String> {
    let header = format!("* {name}");
    let mut seen = 0;
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        if l == header {
            if seen == nth {
                return lines
                    .take_while(|l| *l != "COMMIT")
                    .map(str::to_owned)
                    .collect();
            }
            seen += 1;
        }
    }
    Vec::new()
}

fn pos(lines: &[String], line: &str) -> usize {
    match lines.iter().position(|l| l == line) {
        Some(i) => i,
        None => panic!("missing {line:?} in\n{}", lines.join("\n")),
    }
}

#[test]
fn defaults_capture_outbound_only_in_ipv4_nat() {
    let text = out("");
    assert_eq!(text.matches("COMMIT").count(), 1, "one table, IPv4 only");
    let nat = table(&text, 0, "nat");
    assert_eq!(
        nat[..4],
        [
            "-N ISTIO_INBOUND",
            "-N ISTIO_REDIRECT",
            "-N ISTIO_IN_REDIRECT",
            "-N ISTIO_OUTPUT"
        ]
    );
    let jump = pos(&nat, "-A OUTPUT -j ISTIO_OUTPUT");
    let passthrough = pos(&nat, "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN");
    let loopback = pos(&nat, "-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN");
    assert!(jump < passthrough && passthrough < loopback);
    assert_eq!(
        nat.last().map(String::as_str),
        Some("-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN")
    );
    pos(
        &nat,
        "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
    );
    pos(
        &nat,
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
    );
    pos(&nat, "-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN");
}

#[test]
fn ports_and_proxy_ids_are_used_verbatim() {
    let nat = table(&out("-p 7001 -z 7006 -e 7008 -u 11 -g 22"), 0, "nat");
    pos(&nat, "-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 7001");
    pos(
        &nat,
        "-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 7006",
    );
    let uid = "-A ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 7008 -m owner --uid-owner 11 -j ISTIO_IN_REDIRECT";
    let gid = "-A ISTIO_OUTPUT -m owner --gid-owner 22 -j RETURN";
    assert!(pos(&nat, uid) < pos(&nat, gid));
    pos(
        &nat,
        "-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 22 -j RETURN",
    );
}

#[test]
fn ipv6_payload_follows_with_ipv6_addresses() {
    let text = out("--enable-ipv6 -i 10.0.0.0/8,fd00::/8 -x 10.1.0.0/16,fd01::/16");
    let (v4, v6) = (table(&text, 0, "nat"), table(&text, 1, "nat"));
    pos(&v4, "-A ISTIO_OUTPUT -d 10.1.0.0/16 -j RETURN");
    pos(&v4, "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT");
    pos(&v6, "-A ISTIO_OUTPUT -o lo -s ::6/128 -j RETURN");
    pos(&v6, "-A ISTIO_OUTPUT -d ::1/128 -j RETURN");
    pos(&v6, "-A ISTIO_OUTPUT -d fd01::/16 -j RETURN");
    pos(&v6, "-A ISTIO_OUTPUT -d fd00::/8 -j ISTIO_REDIRECT");
    assert!(
        !v6.iter().any(|l| l.contains("10.")),
        "no IPv4 in the IPv6 payload"
    );
    assert!(
        !v4.iter().any(|l| l.contains("fd0")),
        "no IPv6 in the IPv4 payload"
    );
}

#[test]
fn inbound_redirect_modes() {
    let nat = table(&out("-b 80,81 -d 22"), 0, "nat");
    pos(&nat, "-A PREROUTING -p tcp -j ISTIO_INBOUND");
    pos(
        &nat,
        "-A ISTIO_INBOUND -p tcp --dport 80 -j ISTIO_IN_REDIRECT",
    );
    assert!(
        !nat.iter().any(|l| l.contains("--dport 22")),
        "-d only applies to \"*\""
    );

    let nat = table(&out("-b * -d 22,23"), 0, "nat");
    let ret = pos(&nat, "-A ISTIO_INBOUND -p tcp --dport 23 -j RETURN");
    assert!(ret < pos(&nat, "-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT"));
}

#[test]
fn inbound_tproxy_uses_mangle_and_marks() {
    let text = out("-m TPROXY -b 80 -t 0x10 --enable-ipv6");
    let mangle = table(&text, 0, "mangle");
    assert_eq!(
        mangle[..3],
        ["-N ISTIO_DIVERT", "-N ISTIO_TPROXY", "-N ISTIO_INBOUND"]
    );
    pos(&mangle, "-A ISTIO_DIVERT -j MARK --set-mark 0x10");
    pos(
        &mangle,
        "-A ISTIO_TPROXY ! -d 127.0.0.1/32 -p tcp -j TPROXY --tproxy-mark 0x10/0xffffffff --on-port 15006",
    );
    pos(
        &mangle,
        "-A ISTIO_INBOUND -p tcp --dport 80 -m conntrack --ctstate RELATED,ESTABLISHED -j ISTIO_DIVERT",
    );
    pos(
        &mangle,
        "-A ISTIO_INBOUND -p tcp --dport 80 -j ISTIO_TPROXY",
    );
    pos(
        &mangle,
        "-A OUTPUT ! -d 127.0.0.1/32 -p tcp -o lo -m owner --uid-owner 1337 -j MARK --set-mark 1338",
    );
    pos(
        &mangle,
        "-I ISTIO_INBOUND 2 -p tcp -s 127.0.0.6/32 -i lo -j RETURN",
    );
    assert_eq!(
        mangle.last().map(String::as_str),
        Some("-I ISTIO_INBOUND 3 -p tcp -i lo -m mark ! --mark 1338 -j RETURN")
    );
    let mangle6 = table(&text, 1, "mangle");
    pos(
        &mangle6,
        "-I ISTIO_INBOUND 2 -p tcp -s ::6/128 -i lo -j RETURN",
    );
    pos(
        &mangle6,
        "-A ISTIO_TPROXY ! -d ::1/128 -p tcp -j TPROXY --tproxy-mark 0x10/0xffffffff --on-port 15006",
    );
    assert!(
        !table(&text, 0, "nat")
            .iter()
            .any(|l| l.contains("PREROUTING"))
    );
}

#[test]
fn interfaces_excluded_and_virtual() {
    let nat = table(&out("-c eth9 -k veth1,veth2 -i 10.0.0.0/8"), 0, "nat");
    assert_eq!(
        nat[4..6],
        [
            "-A PREROUTING -i eth9 -j RETURN",
            "-A OUTPUT -o eth9 -j RETURN"
        ]
    );
    pos(&nat, "-I PREROUTING 1 -i veth2 -j RETURN");
    pos(
        &nat,
        "-I PREROUTING 1 -i veth1 -d 10.0.0.0/8 -j ISTIO_REDIRECT",
    );
    let nat = table(&out("-k veth1 -i *"), 0, "nat");
    let all = pos(&nat, "-A ISTIO_OUTPUT -j ISTIO_REDIRECT");
    assert!(all < pos(&nat, "-I PREROUTING 1 -i veth1 -j ISTIO_REDIRECT"));
    let mangle = table(&out("-c eth9 -m TPROXY"), 0, "mangle");
    let pre = pos(&mangle, "-A PREROUTING -i eth9 -j RETURN");
    assert_eq!(mangle[pre + 1], "-A OUTPUT -o eth9 -j RETURN");
}

#[test]
fn outbound_ports_include_and_exclude() {
    let nat = table(&out("-q 9000 -o 5432"), 0, "nat");
    let tcp = pos(&nat, "-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN");
    assert_eq!(
        nat[tcp + 1],
        "-A ISTIO_OUTPUT -p udp --dport 5432 -j RETURN"
    );
    assert!(tcp < pos(&nat, "-A ISTIO_OUTPUT -o lo -s 127.0.0.6/32 -j RETURN"));
    pos(
        &nat,
        "-A ISTIO_OUTPUT -p tcp --dport 9000 -j ISTIO_REDIRECT",
    );
}

#[test]
fn loopback_include_keeps_local_traffic_captured() {
    let nat = table(
        &out("-i 127.1.2.3/32 --host-ipv4-loopback-cidr 127.0.0.1/8"),
        0,
        "nat",
    );
    assert!(!nat.iter().any(|l| l.contains("! --uid-owner")));
    pos(&nat, "-A ISTIO_OUTPUT -d 127.0.0.1/8 -j RETURN");
    pos(&nat, "-A ISTIO_OUTPUT -d 127.1.2.3/32 -j ISTIO_REDIRECT");
}

#[test]
fn owner_group_filters() {
    let nat = table(&out("--outbound-owner-groups java,202"), 0, "nat");
    pos(
        &nat,
        "-A ISTIO_OUTPUT -m owner ! --gid-owner java -m owner ! --gid-owner 202 -j RETURN",
    );
    let nat = table(&out("--outbound-owner-groups-exclude 888,ftp"), 0, "nat");
    pos(&nat, "-A ISTIO_OUTPUT -m owner --gid-owner 888 -j RETURN");
    pos(&nat, "-A ISTIO_OUTPUT -m owner --gid-owner ftp -j RETURN");
}

#[test]
fn drop_invalid_adds_mangle_drop_chain() {
    let mangle = table(&out("--drop-invalid"), 0, "mangle");
    assert_eq!(
        mangle,
        [
            "-N ISTIO_DROP",
            "-A PREROUTING -m conntrack --ctstate INVALID -j ISTIO_DROP",
            "-A ISTIO_DROP -j DROP"
        ]
    );
}

#[test]
fn dns_per_resolver_and_per_family() {
    let text = out("--redirect-dns --dns-servers-v4 10.96.0.10 --enable-ipv6");
    let (nat4, nat6) = (table(&text, 0, "nat"), table(&text, 1, "nat"));
    pos(&nat4, "-A ISTIO_OUTPUT -j ISTIO_OUTPUT_DNS");
    pos(
        &nat4,
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -d 10.96.0.10/32 -j REDIRECT --to-port 15053",
    );
    pos(
        &nat4,
        "-A ISTIO_OUTPUT -o lo -p tcp ! --dport 53 -m owner ! --uid-owner 1337 -j RETURN",
    );
    assert!(
        !nat6.iter().any(|l| l.contains("ISTIO_OUTPUT_DNS")),
        "no IPv6 resolvers"
    );
    let raw4 = table(&text, 0, "raw");
    pos(&raw4, "-A PREROUTING -j ISTIO_INBOUND");
    pos(
        &raw4,
        "-A ISTIO_INBOUND -p udp --sport 53 -s 10.96.0.10/32 -j CT --zone 1",
    );
    let raw6 = table(&text, 1, "raw");
    assert_eq!(raw6[0], "-N ISTIO_OUTPUT_DNS");
    assert!(!raw6.iter().any(|l| l.contains("PREROUTING")));
}

#[test]
fn dns_capture_all_and_disabled_without_resolvers() {
    let text = out("--redirect-dns --capture-all-dns");
    let nat = table(&text, 0, "nat");
    pos(
        &nat,
        "-A ISTIO_OUTPUT_DNS -p tcp --dport 53 -j REDIRECT --to-ports 15053",
    );
    pos(
        &table(&text, 0, "raw"),
        "-A ISTIO_OUTPUT_DNS -p udp --dport 53 -j CT --zone 2",
    );
    assert_eq!(
        out("--redirect-dns"),
        out(""),
        "no resolvers: DNS capture is off"
    );
    assert_eq!(
        out("--capture-all-dns"),
        out(""),
        "capture-all needs --redirect-dns"
    );
}

#[test]
fn cleanup_lists_undo_commands_for_each_family() {
    let text = out("--cleanup-only --enable-ipv6 -k veth1");
    let lines: Vec<&str> = text.lines().collect();
    let at = |l: &str| match lines.iter().position(|x| *x == l) {
        Some(i) => i,
        None => panic!("missing {l:?} in\n{text}"),
    };
    // Newest first: the jumps into ISTIO_IN_REDIRECT, the OUTPUT hook, the PREROUTING
    // insert; plain rules inside ISTIO_* chains are left to the flush.
    let gid_jump = "iptables -t nat -D ISTIO_OUTPUT -o lo ! -d 127.0.0.1/32 -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT";
    assert_eq!(at(gid_jump), 0);
    let hook = at("iptables -t nat -D OUTPUT -j ISTIO_OUTPUT");
    let virt = at("iptables -t nat -D PREROUTING -i veth1 -j RETURN");
    let flush = at("iptables -t nat -F ISTIO_OUTPUT");
    assert!(hook < virt && virt < flush);
    assert_eq!(lines[flush + 1], "iptables -t nat -X ISTIO_OUTPUT");
    assert!(!text.contains("-D ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN"));
    assert!(at("ip6tables -t nat -X ISTIO_INBOUND") > at("iptables -t nat -X ISTIO_INBOUND"));
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("iptables -t ") || l.starts_with("ip6tables -t "))
    );
}

#[test]
fn invalid_input_is_an_error() {
    let err = |flags: &str| render(&parse(flags), IstioBackend::Iptables).err();
    assert_eq!(err("-x *"), Some(IstioRenderError::WildcardExcludeCidr));
    assert!(err("-i 10.0.0.0/99").is_some());
    assert!(err("-q 0").is_some());
    assert!(err("-t mark").is_some());
    let msg = err("-p 99999").map(|e| e.to_string()).unwrap_or_default();
    assert!(msg.contains("-p") && msg.contains("99999"), "{msg}");
}
