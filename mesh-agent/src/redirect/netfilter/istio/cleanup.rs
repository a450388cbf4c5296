//! `--cleanup-only` for the iptables backend: the commands that undo a plan.
//!
//! Rules are undone newest first. Rules inside our own `ISTIO_*` chains are not deleted
//! one by one (the chains are flushed and removed afterwards), except jumps to another
//! `ISTIO_*` chain, which upstream deletes explicitly.

use std::collections::HashSet;

use super::rules::{IptPlan, IptRule, is_builtin};

const OWN_PREFIX: &str = "ISTIO_";

/// Undo commands, one per line: IPv4 (`iptables ...`), then IPv6 (`ip6tables ...`) when
/// IPv6 is enabled.
pub(super) fn render_undo(plan: &IptPlan) -> String {
    let mut lines = undo_family("iptables", &plan.v4);
    if plan.ipv6 {
        lines.extend(undo_family("ip6tables", &plan.v6));
    }
    lines.into_iter().map(|l| l + "\n").collect()
}

fn jumps_to_own_chain(rule: &IptRule) -> bool {
    rule.spec
        .windows(2)
        .any(|w| w[0] == "-j" && w[1].starts_with(OWN_PREFIX))
}

fn undo_family(binary: &str, rules: &[IptRule]) -> Vec<String> {
    let mut lines = Vec::new();
    for rule in rules.iter().rev() {
        let flushed_anyway = rule.chain.starts_with(OWN_PREFIX) && !jumps_to_own_chain(rule);
        if flushed_anyway {
            continue;
        }
        let mut line = format!("{binary} -t {} -D {}", rule.table, rule.chain);
        for part in &rule.spec {
            line.push(' ');
            line.push_str(part);
        }
        lines.push(line);
    }
    // Then empty and delete every chain we put rules in, newest first.
    let mut seen = HashSet::new();
    for rule in rules.iter().rev() {
        if is_builtin(&rule.chain) || !seen.insert((rule.table, rule.chain.as_str())) {
            continue;
        }
        lines.push(format!("{binary} -t {} -F {}", rule.table, rule.chain));
        lines.push(format!("{binary} -t {} -X {}", rule.table, rule.chain));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undo_deletes_hooks_and_jumps_then_removes_chains() {
        let mut p = IptPlan::new(true);
        p.append("nat", "ISTIO_REDIRECT", "-p tcp -j REDIRECT --to-ports 1");
        p.insert("nat", "PREROUTING", 1, "-i eth1 -j RETURN");
        p.append("nat", "OUTPUT", "-j ISTIO_OUTPUT");
        p.append("nat", "ISTIO_OUTPUT", "-d 10.0.0.0/8 -j ISTIO_REDIRECT");
        p.append("nat", "ISTIO_OUTPUT", "-d 127.0.0.1/32 -j RETURN");
        let want = [
            "iptables -t nat -D ISTIO_OUTPUT -d 10.0.0.0/8 -j ISTIO_REDIRECT",
            "iptables -t nat -D OUTPUT -j ISTIO_OUTPUT",
            "iptables -t nat -D PREROUTING -i eth1 -j RETURN",
            "iptables -t nat -F ISTIO_OUTPUT",
            "iptables -t nat -X ISTIO_OUTPUT",
            "iptables -t nat -F ISTIO_REDIRECT",
            "iptables -t nat -X ISTIO_REDIRECT",
        ];
        let out = render_undo(&p);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(&lines[..7], want);
        assert_eq!(lines.len(), 14);
        assert_eq!(lines[7], want[0].replacen("iptables", "ip6tables", 1));
    }

    #[test]
    fn ipv6_undo_only_when_enabled() {
        let mut p = IptPlan::new(false);
        p.append("nat", "OUTPUT", "-j ISTIO_OUTPUT");
        assert_eq!(
            render_undo(&p),
            "iptables -t nat -D OUTPUT -j ISTIO_OUTPUT\n"
        );
    }
}
