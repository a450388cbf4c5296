//! The native ruleset: one model of what the eBPF programs do, rendered for either backend.
//!
//! Outbound TCP that is not the proxy's own (the proxy marks its upstream and delivery
//! sockets) and not to loopback, an excluded port or an excluded CIDR is redirected to the
//! pod's outbound listener; with inbound capture on, inbound TCP except the tunnel port and
//! excluded ports goes to the inbound listener. Chain and table names are Sluice's own, so other rules are
//! never touched.
use std::fmt::Write as _;

use ipnet::IpNet;

/// Our chains in the `nat` table (iptables) ...
pub const OUTPUT_CHAIN: &str = "SLUICE_OUTPUT";
pub const INBOUND_CHAIN: &str = "SLUICE_INBOUND";
/// ... and our table (nftables, family `inet`: both IP versions in one).
pub const NFT_TABLE: &str = "sluice";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

/// What one pod's rules must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleSet {
    pub outbound_port: u16,
    pub inbound_port: u16,
    pub tunnel_port: u16,
    pub proxy_mark: u32,
    /// The mark of the proxy's inbound deliveries: made locally, so the output chain would
    /// otherwise capture them as the app's own connects.
    pub delivery_mark: u32,
    pub exclude_ports: Vec<u16>,
    pub exclude_cidrs: Vec<IpNet>,
    /// Inbound capture (only once the proxy serves the inbound listener).
    pub inbound: bool,
    pub inbound_exclude_ports: Vec<u16>,
    /// The pod left the mesh: capture nothing new, but keep connections already redirected
    /// working. Their address translation lives in conntrack, and the kernel turns conntrack
    /// (and NAT) off in a netns, dropping those translations, once no rule there uses it;
    /// so a retired ruleset keeps one rule that does and redirects nothing.
    pub retired: bool,
}

impl RuleSet {
    /// `iptables-restore --noflush` payload for one family. Declaring our chains flushes them,
    /// so the payload replaces their contents atomically; `jumps` says whether to also insert
    /// the jumps from the built-in chains (only when they are missing).
    pub fn iptables_payload(&self, family: Family, jumps: bool) -> String {
        let mut out = String::from("*nat\n");
        for chain in self.iptables_chains() {
            let _ = writeln!(out, ":{chain} - [0:0]");
        }
        for rule in self.iptables_rules(family) {
            let _ = writeln!(out, "{rule}");
        }
        if jumps {
            for (chain, spec) in self.jump_specs() {
                let _ = writeln!(out, "-I {chain} 1 {spec}");
            }
        }
        out.push_str("COMMIT\n");
        out
    }

    /// The chains of ours this ruleset has (any other chain of ours must go).
    pub fn iptables_chains(&self) -> Vec<&'static str> {
        let mut chains = vec![OUTPUT_CHAIN];
        if self.inbound && !self.retired {
            chains.push(INBOUND_CHAIN);
        }
        chains
    }

    /// Our chains' rules, as `iptables-save` prints them.
    pub fn iptables_rules(&self, family: Family) -> Vec<String> {
        let out_rule = |spec: &str| format!("-A {OUTPUT_CHAIN} {spec}");
        if self.retired {
            return vec![out_rule("-m conntrack --ctstate INVALID -j RETURN")];
        }
        let mut rules = vec![
            out_rule(&format!("-m mark --mark {:#x} -j RETURN", self.proxy_mark)),
            out_rule(&format!(
                "-m mark --mark {:#x} -j RETURN",
                self.delivery_mark
            )),
            out_rule(match family {
                Family::V4 => "-d 127.0.0.0/8 -j RETURN",
                Family::V6 => "-d ::1/128 -j RETURN",
            }),
        ];
        for port in &self.exclude_ports {
            rules.push(out_rule(&format!("-p tcp -m tcp --dport {port} -j RETURN")));
        }
        for cidr in self.cidrs(family) {
            rules.push(out_rule(&format!("-d {cidr} -j RETURN")));
        }
        rules.push(out_rule(&format!(
            "-p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        )));
        if self.inbound {
            let in_rule = |spec: &str| format!("-A {INBOUND_CHAIN} {spec}");
            for port in std::iter::once(&self.tunnel_port).chain(&self.inbound_exclude_ports) {
                rules.push(in_rule(&format!("-p tcp -m tcp --dport {port} -j RETURN")));
            }
            rules.push(in_rule(&format!(
                "-p tcp -j REDIRECT --to-ports {}",
                self.inbound_port
            )));
        }
        rules
    }

    /// The jumps into our chains, as `iptables-save` prints them.
    pub fn iptables_jumps(&self) -> Vec<String> {
        self.jump_specs()
            .into_iter()
            .map(|(chain, spec)| format!("-A {chain} {spec}"))
            .collect()
    }

    /// (built-in chain, rule) for each jump into our chains.
    fn jump_specs(&self) -> Vec<(&'static str, String)> {
        let mut jumps = vec![("OUTPUT", format!("-p tcp -j {OUTPUT_CHAIN}"))];
        if self.inbound && !self.retired {
            jumps.push(("PREROUTING", format!("-p tcp -j {INBOUND_CHAIN}")));
        }
        jumps
    }

    /// One `nft -f` transaction that replaces our table atomically (creating it first makes
    /// the delete valid when it does not exist yet).
    pub fn nft_transaction(&self) -> String {
        let mut out = format!("table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n");
        out.push_str(&self.nft_table());
        out
    }

    fn nft_table(&self) -> String {
        let mut out = format!("table inet {NFT_TABLE} {{\n");
        out.push_str("\tchain output {\n\t\ttype nat hook output priority -100; policy accept;\n");
        if self.retired {
            out.push_str("\t\tct state invalid return\n\t}\n}\n");
            return out;
        }
        out.push_str("\t\tmeta l4proto != tcp return\n");
        for mark in [self.proxy_mark, self.delivery_mark] {
            let _ = writeln!(out, "\t\tmeta mark {mark:#x} return");
        }
        out.push_str("\t\tip daddr 127.0.0.0/8 return\n\t\tip6 daddr ::1 return\n");
        if !self.exclude_ports.is_empty() {
            let _ = writeln!(out, "\t\ttcp dport {} return", nft_set(&self.exclude_ports));
        }
        for (family, keyword) in [(Family::V4, "ip"), (Family::V6, "ip6")] {
            let cidrs: Vec<IpNet> = self.cidrs(family).collect();
            if !cidrs.is_empty() {
                let _ = writeln!(out, "\t\t{keyword} daddr {} return", nft_set(&cidrs));
            }
        }
        let _ = writeln!(
            out,
            "\t\tmeta l4proto tcp redirect to :{}\n\t}}",
            self.outbound_port
        );
        if self.inbound {
            out.push_str(
                "\tchain prerouting {\n\t\ttype nat hook prerouting priority -100; policy accept;\n",
            );
            out.push_str("\t\tmeta l4proto != tcp return\n");
            let ports: Vec<u16> = std::iter::once(self.tunnel_port)
                .chain(self.inbound_exclude_ports.iter().copied())
                .collect();
            let _ = writeln!(out, "\t\ttcp dport {} return", nft_set(&ports));
            let _ = writeln!(
                out,
                "\t\tmeta l4proto tcp redirect to :{}\n\t}}",
                self.inbound_port
            );
        }
        out.push_str("}\n");
        out
    }

    fn cidrs(&self, family: Family) -> impl Iterator<Item = IpNet> + '_ {
        self.exclude_cidrs
            .iter()
            .filter(move |c| {
                matches!(
                    (family, c),
                    (Family::V4, IpNet::V4(_)) | (Family::V6, IpNet::V6(_))
                )
            })
            .map(IpNet::trunc)
    }
}

fn nft_set<T: std::fmt::Display>(items: &[T]) -> String {
    let items: Vec<String> = items.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> RuleSet {
        RuleSet {
            outbound_port: 15001,
            inbound_port: 15006,
            tunnel_port: 15008,
            proxy_mark: 0x539,
            delivery_mark: 0x111,
            exclude_ports: vec![22, 8443],
            exclude_cidrs: vec![
                "10.96.0.0/12".parse().unwrap(),
                "fd00::1/8".parse().unwrap(),
            ],
            inbound: false,
            inbound_exclude_ports: vec![],
            retired: false,
        }
    }

    #[test]
    fn retired_rules_redirect_nothing_but_keep_conntrack_in_use() {
        let mut r = rules();
        r.inbound = true;
        r.retired = true;
        assert_eq!(
            r.iptables_payload(Family::V4, true),
            "*nat\n:SLUICE_OUTPUT - [0:0]\n\
             -A SLUICE_OUTPUT -m conntrack --ctstate INVALID -j RETURN\n\
             -I OUTPUT 1 -p tcp -j SLUICE_OUTPUT\n\
             COMMIT\n"
        );
        let tx = r.nft_transaction();
        assert!(tx.contains("ct state invalid return"), "{tx}");
        assert!(!tx.contains("redirect"), "{tx}");
        assert!(!tx.contains("prerouting"), "{tx}");
    }

    #[test]
    fn iptables_v4_outbound() {
        assert_eq!(
            rules().iptables_payload(Family::V4, true),
            "*nat\n:SLUICE_OUTPUT - [0:0]\n\
             -A SLUICE_OUTPUT -m mark --mark 0x539 -j RETURN\n\
             -A SLUICE_OUTPUT -m mark --mark 0x111 -j RETURN\n\
             -A SLUICE_OUTPUT -d 127.0.0.0/8 -j RETURN\n\
             -A SLUICE_OUTPUT -p tcp -m tcp --dport 22 -j RETURN\n\
             -A SLUICE_OUTPUT -p tcp -m tcp --dport 8443 -j RETURN\n\
             -A SLUICE_OUTPUT -d 10.96.0.0/12 -j RETURN\n\
             -A SLUICE_OUTPUT -p tcp -j REDIRECT --to-ports 15001\n\
             -I OUTPUT 1 -p tcp -j SLUICE_OUTPUT\n\
             COMMIT\n"
        );
    }

    #[test]
    fn iptables_v6_uses_v6_loopback_and_cidrs_only() {
        let payload = rules().iptables_payload(Family::V6, false);
        assert!(payload.contains("-d ::1/128 -j RETURN"), "{payload}");
        assert!(payload.contains("-d fd00::/8 -j RETURN"), "{payload}");
        assert!(!payload.contains("10.96.0.0"), "{payload}");
        assert!(
            !payload.contains("-I OUTPUT"),
            "no jumps asked for: {payload}"
        );
    }

    #[test]
    fn inbound_chain_skips_tunnel_and_excluded_ports() {
        let mut r = rules();
        r.inbound = true;
        r.inbound_exclude_ports = vec![15021];
        let payload = r.iptables_payload(Family::V4, true);
        assert!(payload.contains(":SLUICE_INBOUND - [0:0]"), "{payload}");
        assert!(payload.contains("-A SLUICE_INBOUND -p tcp -m tcp --dport 15008 -j RETURN"));
        assert!(payload.contains("-A SLUICE_INBOUND -p tcp -m tcp --dport 15021 -j RETURN"));
        assert!(payload.contains("-A SLUICE_INBOUND -p tcp -j REDIRECT --to-ports 15006"));
        assert!(payload.contains("-I PREROUTING 1 -p tcp -j SLUICE_INBOUND"));
        let tx = r.nft_transaction();
        assert!(
            tx.contains("type nat hook prerouting priority -100;"),
            "{tx}"
        );
        assert!(
            tx.contains("\t\ttcp dport { 15008, 15021 } return\n"),
            "{tx}"
        );
        assert!(
            tx.contains("\t\tmeta l4proto tcp redirect to :15006\n"),
            "{tx}"
        );
    }

    #[test]
    fn nft_transaction_replaces_the_table() {
        let tx = rules().nft_transaction();
        assert!(
            tx.starts_with("table inet sluice\ndelete table inet sluice\ntable inet sluice {\n")
        );
        assert!(tx.contains("\t\tmeta mark 0x539 return\n"), "{tx}");
        assert!(tx.contains("\t\tmeta mark 0x111 return\n"), "{tx}");
        assert!(tx.contains("\t\ttcp dport { 22, 8443 } return\n"), "{tx}");
        assert!(
            tx.contains("\t\tip daddr { 10.96.0.0/12 } return\n"),
            "{tx}"
        );
        assert!(tx.contains("\t\tip6 daddr { fd00::/8 } return\n"), "{tx}");
        assert!(
            tx.contains("\t\tmeta l4proto tcp redirect to :15001\n"),
            "{tx}"
        );
        assert!(!tx.contains("prerouting"), "{tx}");
    }
}
