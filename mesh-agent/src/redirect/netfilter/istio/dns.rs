//! DNS capture for both backends: TCP and UDP port 53 to the agent's DNS proxy, either
//! for the known resolvers or (capture-all) for every destination, plus conntrack zones
//! that keep the app<->agent and agent<->resolver legs of a UDP exchange apart.
//!
//! Only planned when DNS capture is effectively on (see `Settings::redirect_dns`).

use super::nft_tx::{NAT, NftPlan, RAW};
use super::rules::IptPlan;
use super::settings::Settings;

/// The agent's DNS proxy.
const DNS_PROXY_PORT: &str = "15053";

const IPT_OUTPUT: &str = "ISTIO_OUTPUT";
const IPT_OUTPUT_DNS: &str = "ISTIO_OUTPUT_DNS";
const IPT_INBOUND: &str = "ISTIO_INBOUND";
const NFT_OUTPUT: &str = "istio-output";
const NFT_OUTPUT_DNS: &str = "istio-output-dns";
const NFT_INBOUND: &str = "istio-inbound";

/// iptables flavour: per-family jumps and rules.
pub(super) fn iptables(p: &mut IptPlan, s: &Settings) {
    let all = s.capture_all_dns;
    p.append("raw", "OUTPUT", &format!("-j {IPT_OUTPUT_DNS}"));
    if all || !s.dns_v4.is_empty() {
        p.append_v4("nat", IPT_OUTPUT, &format!("-j {IPT_OUTPUT_DNS}"));
    }
    if all || !s.dns_v6.is_empty() {
        p.append_v6("nat", IPT_OUTPUT, &format!("-j {IPT_OUTPUT_DNS}"));
    }
    // Upstream spells it "--to-ports" for TCP and "--to-port" for UDP.
    for (proto, to) in [("tcp", "--to-ports"), ("udp", "--to-port")] {
        let redirect = format!("-j REDIRECT {to} {DNS_PROXY_PORT}");
        if all {
            p.append(
                "nat",
                IPT_OUTPUT_DNS,
                &format!("-p {proto} --dport 53 {redirect}"),
            );
            continue;
        }
        for server in &s.dns_v4 {
            let rule = format!("-p {proto} --dport 53 -d {server}/32 {redirect}");
            p.append_v4("nat", IPT_OUTPUT_DNS, &rule);
        }
        for server in &s.dns_v6 {
            let rule = format!("-p {proto} --dport 53 -d {server}/128 {redirect}");
            p.append_v6("nat", IPT_OUTPUT_DNS, &rule);
        }
    }

    let uids = s.proxy_uids.iter().map(|id| format!("--uid-owner {id}"));
    let gids = s.proxy_gids.iter().map(|id| format!("--gid-owner {id}"));
    for owner in uids.chain(gids) {
        // The agent's queries upstream: zone 1; its answers to apps: zone 2.
        let query = format!("-p udp --dport 53 -m owner {owner} -j CT --zone 1");
        p.append("raw", IPT_OUTPUT_DNS, &query);
        let answer = format!("-p udp --sport {DNS_PROXY_PORT} -m owner {owner} -j CT --zone 2");
        p.append("raw", IPT_OUTPUT_DNS, &answer);
    }
    if all {
        p.append("raw", "PREROUTING", &format!("-j {IPT_INBOUND}"));
        p.append("raw", IPT_OUTPUT_DNS, "-p udp --dport 53 -j CT --zone 2");
        p.append("raw", IPT_INBOUND, "-p udp --sport 53 -j CT --zone 1");
        return;
    }
    if !s.dns_v4.is_empty() {
        p.append_v4("raw", "PREROUTING", &format!("-j {IPT_INBOUND}"));
    }
    for server in &s.dns_v4 {
        let app = format!("-p udp --dport 53 -d {server}/32 -j CT --zone 2");
        p.append_v4("raw", IPT_OUTPUT_DNS, &app);
        let resolver = format!("-p udp --sport 53 -s {server}/32 -j CT --zone 1");
        p.append_v4("raw", IPT_INBOUND, &resolver);
    }
    if !s.dns_v6.is_empty() {
        p.append_v6("raw", "PREROUTING", &format!("-j {IPT_INBOUND}"));
    }
    for server in &s.dns_v6 {
        let app = format!("-p udp --dport 53 -d {server}/128 -j CT --zone 2");
        p.append_v6("raw", IPT_OUTPUT_DNS, &app);
        let resolver = format!("-p udp --sport 53 -s {server}/128 -j CT --zone 1");
        p.append_v6("raw", IPT_INBOUND, &resolver);
    }
}

/// nft flavour: one `inet` ruleset, so the jumps are shared and only IPv6 resolvers
/// depend on IPv6 being on.
pub(super) fn nft(p: &mut NftPlan, s: &Settings) {
    let all = s.capture_all_dns;
    let (v4, v6) = (&s.dns_v4, &s.dns_v6);
    let to_agent = format!("counter redirect to :{DNS_PROXY_PORT}");
    p.add(RAW, "output", &format!("counter jump {NFT_OUTPUT_DNS}"));
    if all || !v4.is_empty() || !v6.is_empty() {
        p.add(NAT, NFT_OUTPUT, &format!("counter jump {NFT_OUTPUT_DNS}"));
    }
    for proto in ["tcp", "udp"] {
        if all {
            let l4 = if proto == "tcp" {
                "meta l4proto tcp "
            } else {
                ""
            };
            p.add(
                NAT,
                NFT_OUTPUT_DNS,
                &format!("{l4}{proto} dport 53 {to_agent}"),
            );
            continue;
        }
        for server in v4 {
            let rule = format!("ip daddr {server}/32 {proto} dport 53 {to_agent}");
            p.add(NAT, NFT_OUTPUT_DNS, &rule);
        }
        for server in v6 {
            let rule = format!("ip6 daddr {server}/128 {proto} dport 53 {to_agent}");
            p.add_v6(NAT, NFT_OUTPUT_DNS, &rule);
        }
    }

    let uids = s.proxy_uids.iter().map(|id| format!("skuid {id}"));
    let gids = s.proxy_gids.iter().map(|id| format!("skgid {id}"));
    for owner in uids.chain(gids) {
        // The agent's queries upstream: zone 1; its answers to apps: zone 2.
        let query = format!("udp dport 53 meta {owner} counter ct zone set 1");
        p.add(RAW, NFT_OUTPUT_DNS, &query);
        let answer = format!("udp sport {DNS_PROXY_PORT} meta {owner} counter ct zone set 2");
        p.add(RAW, NFT_OUTPUT_DNS, &answer);
    }
    if all {
        p.add(RAW, "prerouting", &format!("counter jump {NFT_INBOUND}"));
        p.add(RAW, NFT_OUTPUT_DNS, "udp dport 53 counter ct zone set 2");
        p.add(RAW, NFT_INBOUND, "udp sport 53 counter ct zone set 1");
        return;
    }
    if !v4.is_empty() || !v6.is_empty() {
        p.add(RAW, "prerouting", &format!("counter jump {NFT_INBOUND}"));
    }
    for server in v4 {
        let app = format!("udp dport 53 ip daddr {server}/32 counter ct zone set 2");
        p.add(RAW, NFT_OUTPUT_DNS, &app);
        let resolver = format!("udp sport 53 ip saddr {server}/32 counter ct zone set 1");
        p.add(RAW, NFT_INBOUND, &resolver);
    }
    for server in v6 {
        let app = format!("udp dport 53 ip6 daddr {server}/128 counter ct zone set 2");
        p.add_v6(RAW, NFT_OUTPUT_DNS, &app);
        let resolver = format!("udp sport 53 ip6 saddr {server}/128 counter ct zone set 1");
        p.add_v6(RAW, NFT_INBOUND, &resolver);
    }
}
