//! The iptables rule list (one per family) and its `iptables-restore` rendering.

use std::collections::{BTreeMap, HashSet};

/// Chains and targets the kernel provides: never created, flushed or deleted by us.
const BUILTIN: [&str; 8] = [
    "INPUT",
    "OUTPUT",
    "FORWARD",
    "PREROUTING",
    "POSTROUTING",
    "ACCEPT",
    "RETURN",
    "DROP",
];

pub(super) fn is_builtin(chain: &str) -> bool {
    BUILTIN.contains(&chain)
}

/// One rule: appended to `chain`, or inserted at `position` (1-based) when set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct IptRule {
    pub table: &'static str,
    pub chain: String,
    pub position: Option<u32>,
    /// Everything after the chain (and position): matches, then `-j TARGET ...`.
    pub spec: Vec<String>,
}

impl IptRule {
    /// The rule as `-A CHAIN ...` / `-I CHAIN N ...`.
    pub fn command(&self) -> String {
        let head = match self.position {
            Some(n) => format!("-I {} {n}", self.chain),
            None => format!("-A {}", self.chain),
        };
        std::iter::once(head)
            .chain(self.spec.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The chain this rule jumps to, when the spec ends in `-j CHAIN`.
    pub fn jump_target(&self) -> Option<&str> {
        match self.spec.as_slice() {
            [.., j, target] if j == "-j" => Some(target),
            _ => None,
        }
    }
}

/// Split a rule written as iptables arguments. Every value that reaches a rule was
/// validated to hold no whitespace, so this recovers the arguments exactly.
fn tokens(spec: &str) -> Vec<String> {
    spec.split_whitespace().map(str::to_owned).collect()
}

/// Rules for IPv4 and IPv6 in the order upstream adds them; IPv6 rules are only kept
/// when IPv6 is enabled, as upstream's builder does.
#[derive(Debug, Default)]
pub(super) struct IptPlan {
    pub ipv6: bool,
    pub v4: Vec<IptRule>,
    pub v6: Vec<IptRule>,
}

impl IptPlan {
    pub fn new(ipv6: bool) -> Self {
        IptPlan {
            ipv6,
            ..Self::default()
        }
    }

    fn rule(table: &'static str, chain: &str, position: Option<u32>, spec: &str) -> IptRule {
        IptRule {
            table,
            chain: chain.to_owned(),
            position,
            spec: tokens(spec),
        }
    }

    pub fn append_v4(&mut self, table: &'static str, chain: &str, spec: &str) {
        self.v4.push(Self::rule(table, chain, None, spec));
    }

    pub fn append_v6(&mut self, table: &'static str, chain: &str, spec: &str) {
        if self.ipv6 {
            self.v6.push(Self::rule(table, chain, None, spec));
        }
    }

    /// Append the same rule to both families.
    pub fn append(&mut self, table: &'static str, chain: &str, spec: &str) {
        self.append_v4(table, chain, spec);
        self.append_v6(table, chain, spec);
    }

    /// Append a rule to both families that differs only by an address (`v4` / `v6`).
    pub fn append_each(
        &mut self,
        table: &'static str,
        chain: &str,
        (v4, v6): (&str, &str),
        spec: impl Fn(&str) -> String,
    ) {
        self.append_v4(table, chain, &spec(v4));
        self.append_v6(table, chain, &spec(v6));
    }

    pub fn insert_v4(&mut self, table: &'static str, chain: &str, pos: u32, spec: &str) {
        self.v4.push(Self::rule(table, chain, Some(pos), spec));
    }

    pub fn insert_v6(&mut self, table: &'static str, chain: &str, pos: u32, spec: &str) {
        if self.ipv6 {
            self.v6.push(Self::rule(table, chain, Some(pos), spec));
        }
    }

    pub fn insert(&mut self, table: &'static str, chain: &str, pos: u32, spec: &str) {
        self.insert_v4(table, chain, pos, spec);
        self.insert_v6(table, chain, pos, spec);
    }

    /// The `iptables-restore --noflush` input for IPv4, then for IPv6 when enabled.
    pub fn render_restore(&self) -> String {
        let mut out = restore_payload(&self.v4);
        if self.ipv6 {
            out.push_str(&restore_payload(&self.v6));
        }
        out
    }
}

/// One family's payload: tables in alphabetical order; in each, `-N` for every chain we
/// own (chains with rules first, then chains only jumped to), then the rules in order.
fn restore_payload(rules: &[IptRule]) -> String {
    let mut tables: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut declared: HashSet<(&str, &str)> = HashSet::new();
    let chains = rules.iter().map(|r| (r.table, r.chain.as_str()));
    let targets = rules
        .iter()
        .filter_map(|r| r.jump_target().map(|t| (r.table, t)));
    for (table, chain) in chains.chain(targets) {
        if declared.insert((table, chain)) && !is_builtin(chain) {
            tables.entry(table).or_default().push(format!("-N {chain}"));
        }
    }
    for r in rules {
        tables.entry(r.table).or_default().push(r.command());
    }
    let mut out = String::new();
    for (table, lines) in tables {
        out.push_str(&format!("* {table}\n"));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
        out.push_str("COMMIT\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_render_append_and_insert() {
        let mut p = IptPlan::new(false);
        p.append("nat", "ISTIO_OUTPUT", "-d 10.0.0.0/8 -j ISTIO_REDIRECT");
        p.insert("nat", "PREROUTING", 1, "-i eth1 -j RETURN");
        assert_eq!(
            p.v4[0].command(),
            "-A ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT"
        );
        assert_eq!(p.v4[1].command(), "-I PREROUTING 1 -i eth1 -j RETURN");
        assert!(p.v6.is_empty(), "IPv6 rules are dropped when IPv6 is off");
    }

    #[test]
    fn payload_declares_owned_chains_and_sorts_tables() {
        let mut p = IptPlan::new(true);
        p.append("raw", "OUTPUT", "-j ISTIO_OUTPUT_DNS");
        p.append("nat", "OUTPUT", "-j ISTIO_OUTPUT");
        p.append("nat", "ISTIO_REDIRECT", "-p tcp -j REDIRECT --to-ports 1");
        p.append_each("mangle", "ISTIO_X", ("1.1.1.1/32", "::1/128"), |a| {
            format!("-d {a} -j ACCEPT")
        });
        let want4 = "* mangle\n-N ISTIO_X\n-A ISTIO_X -d 1.1.1.1/32 -j ACCEPT\nCOMMIT\n\
                     * nat\n-N ISTIO_REDIRECT\n-N ISTIO_OUTPUT\n-A OUTPUT -j ISTIO_OUTPUT\n\
                     -A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 1\nCOMMIT\n\
                     * raw\n-N ISTIO_OUTPUT_DNS\n-A OUTPUT -j ISTIO_OUTPUT_DNS\nCOMMIT\n";
        let out = p.render_restore();
        assert!(out.starts_with(want4), "{out}");
        assert!(out[want4.len()..].contains("-A ISTIO_X -d ::1/128 -j ACCEPT"));
    }
}
