//! The nftables rule list and its rendering as one `nft -f` transaction, the way
//! istio-nftables builds it with knftables.

use std::collections::HashMap;

/// The three `inet` tables, in the order the transaction touches them.
pub(super) const NAT: &str = "istio-proxy-nat";
pub(super) const MANGLE: &str = "istio-proxy-mangle";
pub(super) const RAW: &str = "istio-proxy-raw";

/// A chain of a table: base chains carry `(type, hook, priority)`.
type ChainDecl = (&'static str, Option<(&'static str, &'static str, i32)>);

/// Every chain a table may hold, in declaration order; only chains that end up with
/// rules are created. Priorities are knftables's numeric values for dstnat, mangle, raw.
fn table_chains(table: &str) -> &'static [ChainDecl] {
    const NAT_CHAINS: &[ChainDecl] = &[
        ("prerouting", Some(("nat", "prerouting", -100))),
        ("output", Some(("nat", "output", -100))),
        ("istio-inbound", None),
        ("istio-redirect", None),
        ("istio-in-redirect", None),
        ("istio-output", None),
        ("istio-output-dns", None),
    ];
    const MANGLE_CHAINS: &[ChainDecl] = &[
        ("prerouting", Some(("filter", "prerouting", -150))),
        ("output", Some(("route", "output", -150))),
        ("istio-divert", None),
        ("istio-tproxy", None),
        ("istio-inbound", None),
        ("istio-drop", None),
    ];
    const RAW_CHAINS: &[ChainDecl] = &[
        ("prerouting", Some(("filter", "prerouting", -300))),
        ("output", Some(("filter", "output", -300))),
        ("istio-inbound", None),
        ("istio-output-dns", None),
    ];
    match table {
        NAT => NAT_CHAINS,
        MANGLE => MANGLE_CHAINS,
        _ => RAW_CHAINS,
    }
}

/// One rule: appended, or inserted before the rule at `index` (0-based) when set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct NftRule {
    pub table: &'static str,
    pub chain: &'static str,
    pub index: Option<usize>,
    pub body: String,
}

/// Rules in the order upstream adds them; IPv6-only rules are kept only with IPv6 on
/// (one `inet` ruleset serves both families).
#[derive(Debug, Default)]
pub(super) struct NftPlan {
    pub ipv6: bool,
    pub rules: Vec<NftRule>,
}

impl NftPlan {
    pub fn new(ipv6: bool) -> Self {
        NftPlan {
            ipv6,
            rules: Vec::new(),
        }
    }

    fn push(&mut self, table: &'static str, chain: &'static str, index: Option<usize>, body: &str) {
        self.rules.push(NftRule {
            table,
            chain,
            index,
            body: body.to_owned(),
        });
    }

    pub fn add(&mut self, table: &'static str, chain: &'static str, body: &str) {
        self.push(table, chain, None, body);
    }

    pub fn add_v6(&mut self, table: &'static str, chain: &'static str, body: &str) {
        if self.ipv6 {
            self.push(table, chain, None, body);
        }
    }

    pub fn insert(&mut self, table: &'static str, chain: &'static str, at: usize, body: &str) {
        self.push(table, chain, Some(at), body);
    }

    pub fn insert_v6(&mut self, table: &'static str, chain: &'static str, at: usize, body: &str) {
        if self.ipv6 {
            self.push(table, chain, Some(at), body);
        }
    }
}

/// The transaction: per table with rules, add + flush the table (so re-applying
/// replaces it atomically), add the chains that have rules, then the rules.
pub(super) fn render(plan: &NftPlan) -> String {
    let mut out = String::new();
    for table in [NAT, MANGLE, RAW] {
        let rules: Vec<&NftRule> = plan.rules.iter().filter(|r| r.table == table).collect();
        let has_rules = |chain: &str| rules.iter().any(|r| r.chain == chain);
        let chains: Vec<&ChainDecl> = table_chains(table)
            .iter()
            .filter(|(name, _)| has_rules(name))
            .collect();
        if chains.is_empty() {
            continue;
        }
        out.push_str(&format!(
            "add table inet {table}\nflush table inet {table}\n"
        ));
        for (name, base) in chains {
            out.push_str(&format!("add chain inet {table} {name}"));
            if let Some((kind, hook, priority)) = base {
                out.push_str(&format!(
                    " {{ type {kind} hook {hook} priority {priority} ; }}"
                ));
            }
            out.push('\n');
        }
        // nft cannot insert into an empty chain or past its end: such inserts become
        // appends, as upstream does.
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for rule in rules {
            let count = counts.entry(rule.chain).or_insert(0);
            match rule.index {
                Some(i) if *count > 0 && i < *count => out.push_str(&format!(
                    "insert rule inet {table} {} index {i} {}\n",
                    rule.chain, rule.body
                )),
                _ => out.push_str(&format!(
                    "add rule inet {table} {} {}\n",
                    rule.chain, rule.body
                )),
            }
            *count += 1;
        }
    }
    out
}

/// `--cleanup-only`: delete our three tables (adding first, so deleting never fails).
pub(super) fn render_cleanup() -> String {
    [NAT, MANGLE, RAW]
        .iter()
        .map(|t| format!("add table inet {t}\ndelete table inet {t}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_without_rules_are_left_out_and_chains_filtered() {
        let mut p = NftPlan::new(false);
        p.add(RAW, "output", "counter jump istio-output-dns");
        p.add(
            RAW,
            "istio-output-dns",
            "udp dport 53 counter ct zone set 2",
        );
        let want = "add table inet istio-proxy-raw\nflush table inet istio-proxy-raw\n\
            add chain inet istio-proxy-raw output { type filter hook output priority -300 ; }\n\
            add chain inet istio-proxy-raw istio-output-dns\n\
            add rule inet istio-proxy-raw output counter jump istio-output-dns\n\
            add rule inet istio-proxy-raw istio-output-dns udp dport 53 counter ct zone set 2\n";
        assert_eq!(render(&p), want);
    }

    #[test]
    fn inserts_into_empty_chain_or_past_the_end_become_appends() {
        let mut p = NftPlan::new(true);
        p.insert(NAT, "prerouting", 0, "iifname a counter return");
        p.insert(NAT, "prerouting", 0, "iifname b counter return");
        p.insert(NAT, "prerouting", 5, "iifname c counter return");
        p.insert_v6(NAT, "prerouting", 1, "iifname d counter return");
        let out = render(&p);
        let rules: Vec<&str> = out.lines().filter(|l| l.contains(" rule ")).collect();
        assert_eq!(
            rules,
            [
                "add rule inet istio-proxy-nat prerouting iifname a counter return",
                "insert rule inet istio-proxy-nat prerouting index 0 iifname b counter return",
                "add rule inet istio-proxy-nat prerouting iifname c counter return",
                "insert rule inet istio-proxy-nat prerouting index 1 iifname d counter return",
            ]
        );
    }

    #[test]
    fn cleanup_deletes_all_three_tables() {
        let out = render_cleanup();
        assert_eq!(out.lines().count(), 6);
        assert!(
            out.starts_with("add table inet istio-proxy-nat\ndelete table inet istio-proxy-nat\n")
        );
    }
}
