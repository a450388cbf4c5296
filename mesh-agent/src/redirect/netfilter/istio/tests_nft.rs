//! End-to-end tests of the nft backend: flags in, transaction text out.
//!
//! Each test checks the rules one flag is responsible for (and where they land), not
//! whole transactions.

use super::args::test_support::parse;
use super::{IstioBackend, IstioRenderError, render};

fn out(flags: &str) -> String {
    match render(&parse(flags), IstioBackend::Nft) {
        Ok(text) => text,
        Err(e) => panic!("{flags:?}: {e}"),
    }
}

fn pos(text: &str, line: &str) -> usize {
    match text.lines().position(|l| l == line) {
        Some(i) => i,
        None => panic!("missing {line:?} in\n{text}"),
    }
}

const NAT_OUT: &str = "add rule inet istio-proxy-nat istio-output";
const MANGLE: &str = "add rule inet istio-proxy-mangle";

#[test]
fn defaults_fill_only_the_nat_table() {
    let text = out("");
    let head: Vec<&str> = text.lines().take(3).collect();
    assert_eq!(
        head,
        [
            "add table inet istio-proxy-nat",
            "flush table inet istio-proxy-nat",
            "add chain inet istio-proxy-nat output { type nat hook output priority -100 ; }",
        ]
    );
    assert!(!text.contains("prerouting") && !text.contains("mangle") && !text.contains("raw"));
    let hook = pos(
        &text,
        "add rule inet istio-proxy-nat output counter jump istio-output",
    );
    let uid = format!(
        "{NAT_OUT} oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != 15008 skuid 1337 counter jump istio-in-redirect"
    );
    assert!(hook < pos(&text, &uid));
    assert_eq!(
        text.lines().last(),
        Some(&*format!("{NAT_OUT} ip daddr 127.0.0.1/32 counter return"))
    );
    assert!(!text.contains("ip6"), "IPv6 rules only with --enable-ipv6");
}

#[test]
fn ports_are_used_verbatim() {
    let text = out("-p 7001 -z 7006 -e 7008");
    pos(
        &text,
        "add rule inet istio-proxy-nat istio-redirect meta l4proto tcp counter redirect to :7001",
    );
    pos(
        &text,
        "add rule inet istio-proxy-nat istio-in-redirect meta l4proto tcp counter redirect to :7006",
    );
    pos(
        &text,
        "add rule inet istio-proxy-nat istio-inbound meta l4proto tcp tcp dport 7008 counter return",
    );
}

#[test]
fn ipv6_adds_ip6_twins_in_the_same_ruleset() {
    let text = out("--enable-ipv6 -i 10.0.0.0/8,fd00::/8 -x fd01::/16");
    assert_eq!(text.matches("add table").count(), 1);
    let v4 = pos(
        &text,
        &format!("{NAT_OUT} oifname lo ip saddr 127.0.0.6/32 counter return"),
    );
    assert_eq!(
        text.lines().nth(v4 + 1),
        Some(&*format!(
            "{NAT_OUT} oifname lo ip6 saddr ::6/128 counter return"
        ))
    );
    pos(
        &text,
        &format!("{NAT_OUT} ip6 daddr fd01::/16 counter return"),
    );
    let inc4 = pos(
        &text,
        &format!("{NAT_OUT} ip daddr 10.0.0.0/8 counter jump istio-redirect"),
    );
    assert!(
        inc4 < pos(
            &text,
            &format!("{NAT_OUT} ip6 daddr fd00::/8 counter jump istio-redirect")
        )
    );
}

#[test]
fn inbound_nat_and_tproxy() {
    let text = out("-b * -d 22");
    pos(
        &text,
        "add rule inet istio-proxy-nat prerouting meta l4proto tcp counter jump istio-inbound",
    );
    let ret = pos(
        &text,
        "add rule inet istio-proxy-nat istio-inbound meta l4proto tcp tcp dport 22 counter return",
    );
    assert!(
        ret < pos(
            &text,
            "add rule inet istio-proxy-nat istio-inbound meta l4proto tcp counter jump istio-in-redirect"
        )
    );

    let text = out("-m TPROXY -b 80 -t 7");
    pos(
        &text,
        "add chain inet istio-proxy-mangle output { type route hook output priority -150 ; }",
    );
    pos(
        &text,
        &format!("{MANGLE} istio-divert counter meta mark set 7"),
    );
    pos(
        &text,
        &format!(
            "{MANGLE} istio-tproxy meta l4proto tcp ip daddr != 127.0.0.1/32 tproxy ip to :15006 meta mark set 7 counter accept"
        ),
    );
    pos(
        &text,
        &format!(
            "{MANGLE} istio-inbound meta l4proto tcp ct state related,established tcp dport 80 counter jump istio-divert"
        ),
    );
    pos(
        &text,
        &format!("{MANGLE} output meta l4proto tcp ct mark 7 counter meta mark set ct mark"),
    );
    // The chain already has rules, so these are real inserts.
    pos(
        &text,
        "insert rule inet istio-proxy-mangle istio-inbound index 0 meta l4proto tcp mark 7 counter return",
    );
    pos(
        &text,
        "insert rule inet istio-proxy-mangle istio-inbound index 2 iifname lo meta l4proto tcp mark != 1338 counter return",
    );
}

#[test]
fn tproxy_without_inbound_ports_appends_to_empty_chain() {
    let text = out("-m TPROXY");
    pos(
        &text,
        &format!("{MANGLE} istio-inbound meta l4proto tcp mark 1337 counter return"),
    );
    assert!(!text.contains("insert rule"));
}

#[test]
fn interfaces_excluded_and_virtual() {
    let text = out("-c eth9 -k veth1,veth2 -i 10.0.0.0/8");
    pos(
        &text,
        "add rule inet istio-proxy-nat prerouting iifname eth9 counter return",
    );
    pos(
        &text,
        "add rule inet istio-proxy-nat output oifname eth9 counter return",
    );
    pos(
        &text,
        "insert rule inet istio-proxy-nat prerouting index 0 iifname veth2 counter return",
    );
    pos(
        &text,
        "insert rule inet istio-proxy-nat prerouting index 0 iifname veth1 ip daddr 10.0.0.0/8 counter jump istio-redirect",
    );
}

#[test]
fn outbound_ports_and_owner_groups() {
    let text = out("-q 9000 -o 5432 --outbound-owner-groups java,202");
    pos(&text, &format!("{NAT_OUT} udp dport 5432 counter return"));
    pos(
        &text,
        &format!("{NAT_OUT} tcp dport 9000 counter jump istio-redirect"),
    );
    pos(
        &text,
        &format!("{NAT_OUT} skgid != java skgid != 202 counter return"),
    );
    let text = out("--outbound-owner-groups-exclude 888");
    pos(&text, &format!("{NAT_OUT} skgid 888 counter return"));
}

#[test]
fn drop_invalid_and_loopback_include() {
    let text = out("--drop-invalid");
    pos(
        &text,
        &format!("{MANGLE} prerouting meta l4proto tcp ct state invalid counter jump istio-drop"),
    );
    pos(&text, &format!("{MANGLE} istio-drop counter drop"));
    let text = out("-i 127.1.2.3/32");
    assert!(
        !text.contains("skuid !="),
        "loopback include: app-to-app traffic stays captured"
    );
}

#[test]
fn dns_rules_and_zones() {
    let text = out("--redirect-dns --dns-servers-v4 10.96.0.10 --dns-servers-v6 fd00::a -u 3 -g 4");
    let uid = format!(
        "{NAT_OUT} oifname lo meta l4proto tcp ip daddr != 127.0.0.1/32 tcp dport != {{ 53, 15008 }} skuid 3 counter jump istio-in-redirect"
    );
    pos(&text, &uid);
    pos(&text, &format!("{NAT_OUT} counter jump istio-output-dns"));
    pos(
        &text,
        "add rule inet istio-proxy-nat istio-output-dns ip daddr 10.96.0.10/32 udp dport 53 counter redirect to :15053",
    );
    pos(
        &text,
        "add rule inet istio-proxy-raw istio-output-dns udp sport 15053 meta skgid 4 counter ct zone set 2",
    );
    pos(
        &text,
        "add rule inet istio-proxy-raw istio-inbound udp sport 53 ip saddr 10.96.0.10/32 counter ct zone set 1",
    );
    assert!(
        !text.contains("fd00::a"),
        "IPv6 resolvers need --enable-ipv6"
    );

    let text = out("--redirect-dns --capture-all-dns");
    pos(
        &text,
        "add rule inet istio-proxy-nat istio-output-dns meta l4proto tcp tcp dport 53 counter redirect to :15053",
    );
    pos(
        &text,
        "add rule inet istio-proxy-nat istio-output-dns udp dport 53 counter redirect to :15053",
    );
    pos(
        &text,
        "add rule inet istio-proxy-raw istio-output-dns udp dport 53 counter ct zone set 2",
    );
}

#[test]
fn cleanup_deletes_tables() {
    let text = out("--cleanup-only -m TPROXY -b *");
    assert_eq!(text.lines().count(), 6);
    pos(&text, "delete table inet istio-proxy-raw");
}

#[test]
fn invalid_input_is_an_error() {
    let err = |flags: &str| render(&parse(flags), IstioBackend::Nft).err();
    assert_eq!(err("-x *"), Some(IstioRenderError::WildcardExcludeCidr));
    assert!(err("-c bad/name").is_some());
    assert!(err("--dns-servers-v6 10.0.0.1").is_some());
}
