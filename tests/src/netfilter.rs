//! Reading (and, for tamper tests, writing) netfilter rules inside a pod's netns, and
//! driving `mesh-agent iptables apply|cleanup` there.
//!
//! Listings come from the tools an operator would use (`nft list ruleset`,
//! `iptables-save -t nat`), with the parts that change on their own (timestamps, policy
//! counters) blanked, so two listings of the same rules compare equal byte for byte.

use crate::agent::AgentConfig;
use crate::mode::Mode;
use crate::node::Node;
use crate::pod::Pod;
use anyhow::{Context, Result, ensure};
use std::fs::File;
use std::process::Command;

/// A netfilter backend of `mesh-agent iptables apply|cleanup --backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Nft,
    /// `iptables`, which resolves to the nf_tables flavour in a netns without legacy rules.
    Iptables,
    IptablesLegacy,
}

impl Backend {
    /// The `--backend` value.
    pub fn arg(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Iptables => "iptables",
            Backend::IptablesLegacy => "iptables-legacy",
        }
    }

    /// The name the CLI prints before its verdict (`<name>: applied`).
    pub fn printed(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::Iptables => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
        }
    }

    /// The program that edits this backend's rules for `ipv6` or not (`nft` for both).
    pub fn tool(self, ipv6: bool) -> &'static str {
        match (self, ipv6) {
            (Backend::Nft, _) => "nft",
            (Backend::Iptables, false) => "iptables-nft",
            (Backend::Iptables, true) => "ip6tables-nft",
            (Backend::IptablesLegacy, false) => "iptables-legacy",
            (Backend::IptablesLegacy, true) => "ip6tables-legacy",
        }
    }

    /// Where this backend's rules show up in [`ours`].
    pub fn found(self) -> Found {
        match self {
            Backend::Nft => Found::NftTable,
            Backend::Iptables => Found::IptablesNft,
            Backend::IptablesLegacy => Found::IptablesLegacy,
        }
    }

    /// Runs this backend's tool in `pod` with `args` (e.g. to tamper with rules).
    pub fn edit(self, pod: &Pod, ipv6: bool, args: &[&str]) -> Result<String> {
        in_pod(pod, self.tool(ipv6), args)
    }
}

/// Every netfilter rule in `pod`, normalised (see the module doc): `nft list ruleset`
/// (nftables, and iptables-nft in nft syntax), then `iptables-nft-save -t nat` of both
/// families, then every legacy table that exists, of both families.
pub fn listing(pod: &Pod) -> Result<String> {
    let mut raw = in_pod(pod, "nft", &["list", "ruleset"])?;
    for ipv6 in [false, true] {
        let save = format!("{}-save", Backend::Iptables.tool(ipv6));
        raw.push_str(&format!("## {save} -t nat\n"));
        raw.push_str(&in_pod(pod, &save, &["-t", "nat"])?);
    }
    for ipv6 in [false, true] {
        // Without `-t`: only the tables that exist (naming one would create it).
        if legacy_tables_exist(pod, ipv6)? {
            let save = format!("{}-save", Backend::IptablesLegacy.tool(ipv6));
            raw.push_str(&format!("## {save}\n"));
            raw.push_str(&in_pod(pod, &save, &[])?);
        }
    }
    Ok(normalise(&raw))
}

/// Drops comment lines (keeping our `## ` section titles) and blanks counters: `[packets:bytes]` of iptables-save chains and
/// `packets N bytes M` of nft rules.
fn normalise(listing: &str) -> String {
    let mut out = String::new();
    for line in listing
        .lines()
        .filter(|l| !l.starts_with('#') || l.starts_with("## "))
    {
        let line = match (line.rfind(" ["), line.ends_with(']')) {
            (Some(i), true) if line.starts_with(':') => format!("{} [0:0]", &line[..i]),
            _ => line.to_string(),
        };
        let mut words: Vec<&str> = line.split(' ').collect();
        for i in 1..words.len() {
            if matches!(words[i - 1], "packets" | "bytes") && words[i].parse::<u64>().is_ok() {
                words[i] = "0";
            }
        }
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

/// Asserts that every pod of `node` holds exactly the rules its mode in `cfg` writes:
/// the mode's own for an enrolled pod, outbound ([`ours`]) and inbound ([`inbound_rules`]),
/// none for the others (and none in eBPF mode).
pub fn expect_rules(node: &Node, cfg: &AgentConfig) -> Result<()> {
    for pod in node.pods() {
        let mode = cfg.mode_of(pod.name())?;
        let want = mode.map_or_else(Vec::new, Mode::expected_rules);
        let got = ours(&pod)?;
        let ipv6 = cfg.has_ipv6(pod.name());
        let want_inbound = mode.map_or_else(Vec::new, |m| expected_inbound(m, ipv6));
        let got_inbound = inbound_rules(&pod)?;
        ensure!(
            got == want && got_inbound == want_inbound,
            "pod {}: rules of ours {got:?}, want {want:?}; inbound steering {got_inbound:?}, \
             want {want_inbound:?}; rules:\n{}",
            pod.name(),
            listing(&pod).unwrap_or_else(|e| format!("{e:#}"))
        );
    }
    Ok(())
}

/// The inbound listener netfilter modes redirect to, and the mark of the proxy's delivery
/// connections to the app (which the output rules must let through).
pub const INBOUND_PORT: u16 = 15006;
pub const DELIVERY_MARK: u32 = 0x111;

/// What [`inbound_rules`] must report in a pod that `mode` steers (nothing for eBPF, whose
/// inbound steering is a program); `ipv6`: the pod has an IPv6 address.
pub fn expected_inbound(mode: Mode, ipv6: bool) -> Vec<String> {
    let pieces = [
        "PREROUTING jump",
        "SLUICE_INBOUND redirect",
        "delivery mark returns",
    ];
    match mode {
        Mode::Ebpf => Vec::new(),
        Mode::Nftables => vec![
            "nft prerouting redirect".into(),
            "nft delivery mark returns".into(),
        ],
        Mode::Iptables => ["iptables-nft", "ip6tables-nft"][..if ipv6 { 2 } else { 1 }]
            .iter()
            .flat_map(|tool| pieces.iter().map(move |p| format!("{tool} {p}")))
            .collect(),
    }
}

/// The pieces of inbound steering of ours in `pod`'s netns, as [`expected_inbound`] names
/// them: in nftables, `table inet sluice` with a `prerouting` chain redirecting to the
/// inbound listener and an output rule letting the delivery mark through; in each iptables
/// flavour and family, the `PREROUTING` jump, the `SLUICE_INBOUND` redirect and the
/// `SLUICE_OUTPUT` return for the delivery mark.
pub fn inbound_rules(pod: &Pod) -> Result<Vec<String>> {
    let mut found = Vec::new();
    if in_pod(pod, "nft", &["list", "tables"])?.contains("table inet sluice") {
        let table = in_pod(pod, "nft", &["list", "table", "inet", "sluice"])?;
        if nft_chain(&table, "prerouting").is_some_and(|c| {
            c.contains("type nat hook prerouting")
                && c.contains(&format!("redirect to :{INBOUND_PORT}"))
        }) {
            found.push("nft prerouting redirect".to_string());
        }
        if table.lines().any(is_nft_delivery_return) {
            found.push("nft delivery mark returns".to_string());
        }
    }
    for backend in [Backend::Iptables, Backend::IptablesLegacy] {
        for ipv6 in [false, true] {
            if backend == Backend::IptablesLegacy && !legacy_tables_exist(pod, ipv6)? {
                continue;
            }
            let tool = backend.tool(ipv6);
            let save = in_pod(pod, &format!("{tool}-save"), &["-t", "nat"])?;
            let pieces = [
                (
                    "PREROUTING jump",
                    save.lines().any(|l| {
                        l.starts_with("-A PREROUTING ") && l.ends_with("-j SLUICE_INBOUND")
                    }),
                ),
                (
                    "SLUICE_INBOUND redirect",
                    save.lines().any(|l| {
                        l.starts_with("-A SLUICE_INBOUND ")
                            && l.ends_with(&format!("-j REDIRECT --to-ports {INBOUND_PORT}"))
                    }),
                ),
                (
                    "delivery mark returns",
                    save.lines().any(|l| {
                        l == format!("-A SLUICE_OUTPUT -m mark --mark {DELIVERY_MARK:#x} -j RETURN")
                    }),
                ),
            ];
            for (piece, present) in pieces {
                if present {
                    found.push(format!("{tool} {piece}"));
                }
            }
        }
    }
    Ok(found)
}

/// The body of chain `name` in an `nft list table` listing.
fn nft_chain<'a>(table: &'a str, name: &str) -> Option<&'a str> {
    let start = table.find(&format!("chain {name} {{"))?;
    let body = &table[start..];
    Some(&body[..body.find("\n\t}").unwrap_or(body.len())])
}

/// `meta mark 0x00000111 return` (nft prints marks zero-padded).
fn is_nft_delivery_return(line: &str) -> bool {
    let words: Vec<&str> = line.split_whitespace().collect();
    matches!(words.as_slice(), ["meta", "mark", mark, "return"]
        if u32::from_str_radix(mark.trim_start_matches("0x"), 16) == Ok(DELIVERY_MARK))
}

/// Packets the iptables-nft `SLUICE_INBOUND` redirect of one family matched in `pod` (the
/// nat table sees the first packet of each connection only, so: connections redirected).
pub fn inbound_redirects(pod: &Pod, ipv6: bool) -> Result<u64> {
    let tool = format!("{}-save", Backend::Iptables.tool(ipv6));
    let save = in_pod(pod, &tool, &["-c", "-t", "nat"])?;
    let suffix = format!("-j REDIRECT --to-ports {INBOUND_PORT}");
    let counters = save.lines().find_map(|l| {
        let (counters, rule) = l.strip_prefix('[')?.split_once("] ")?;
        (rule.starts_with("-A SLUICE_INBOUND ") && rule.ends_with(&suffix)).then_some(counters)
    });
    let packets = counters
        .and_then(|c| c.split_once(':'))
        .and_then(|(p, _)| p.parse().ok());
    packets.with_context(|| format!("no SLUICE_INBOUND redirect with counters in {tool}:\n{save}"))
}

/// Rules of ours that a netns holds, by where they live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Found {
    /// `table inet sluice` with its redirect rule.
    NftTable,
    /// A `SLUICE_*` chain or jump in the nf_tables flavour of iptables (either family).
    IptablesNft,
    /// The same in legacy iptables.
    IptablesLegacy,
}

/// Every rule of ours in `pod`'s netns. Legacy tables are only listed when they exist:
/// listing them would create them.
pub fn ours(pod: &Pod) -> Result<Vec<Found>> {
    let mut found = Vec::new();
    // A released pod keeps a retired ruleset that redirects nothing (so connections
    // redirected before the release keep their NAT); only rules that redirect count.
    if in_pod(pod, "nft", &["list", "tables"])?.contains("table inet sluice")
        && in_pod(pod, "nft", &["list", "table", "inet", "sluice"])?.contains("redirect")
    {
        found.push(Found::NftTable);
    }
    for backend in [Backend::Iptables, Backend::IptablesLegacy] {
        for ipv6 in [false, true] {
            if backend == Backend::IptablesLegacy && !legacy_tables_exist(pod, ipv6)? {
                continue;
            }
            let text = in_pod(pod, &format!("{}-save", backend.tool(ipv6)), &[])?;
            let steers = text
                .lines()
                .any(|l| l.starts_with("-A SLUICE_") && l.contains("REDIRECT"));
            if steers && !found.contains(&backend.found()) {
                found.push(backend.found());
            }
        }
    }
    Ok(found)
}

/// Does `pod` have legacy iptables tables of that family? Read from `/proc`, which
/// creates nothing (listing a legacy table creates it).
fn legacy_tables_exist(pod: &Pod, ipv6: bool) -> Result<bool> {
    let file = match ipv6 {
        false => "/proc/thread-self/net/ip_tables_names",
        true => "/proc/thread-self/net/ip6_tables_names",
    };
    crate::netns::run_in(&pod.netns_path(), || {
        Ok(std::fs::read_to_string(file).is_ok_and(|names| !names.trim().is_empty()))
    })
}

/// Runs `program args` inside `pod`'s netns (not its cgroup); non-zero exit is an error.
pub fn in_pod(pod: &Pod, program: &str, args: &[&str]) -> Result<String> {
    let mut cmd = Command::new(program);
    cmd.args(args);
    crate::pod::enter(&mut cmd, File::open(pod.netns_path())?, None);
    crate::cmd::run(&mut cmd).with_context(|| format!("in pod {}", pod.name()))
}

/// `mesh-agent iptables <action> --netns <pod> [--backend <b> <extra>...]`, run from the
/// test's own netns as an operator would; fails unless it exits 0. Returns stdout, trimmed.
/// `cleanup` takes no backend or rule flags: it removes Sluice's rules from every backend.
pub fn cli(pod: &Pod, action: &str, backend: Backend, extra: &[String]) -> Result<String> {
    let bin = crate::agent_bin()?;
    let mut cmd = Command::new(&bin);
    cmd.args(["iptables", action, "--netns"])
        .arg(pod.netns_path());
    if action != "cleanup" {
        cmd.args(["--backend", backend.arg()]).args(extra);
    }
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        out.status.success(),
        "{cmd:?} failed ({}): {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_nft_delivery_return_and_chain_bodies() {
        assert!(is_nft_delivery_return("\t\tmeta mark 0x00000111 return"));
        assert!(is_nft_delivery_return("meta mark 0x111 return"));
        assert!(!is_nft_delivery_return("\t\tmeta mark 0x00000539 return"));
        let table = "table inet sluice {\n\tchain output {\n\t\tredirect to :15001\n\t}\n\
                     \tchain prerouting {\n\t\tredirect to :15006\n\t}\n}\n";
        assert_eq!(
            nft_chain(table, "output"),
            Some("chain output {\n\t\tredirect to :15001")
        );
        assert!(nft_chain(table, "prerouting").is_some_and(|c| c.contains(":15006")));
        assert_eq!(nft_chain(table, "input"), None);
    }

    #[test]
    fn normalise_drops_comments_and_policy_counters() {
        let save = "# Generated by iptables-save v1.8.9 on Wed\n*nat\n:OUTPUT ACCEPT [12:720]\n\
                    :SLUICE_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j SLUICE_OUTPUT\nCOMMIT\n# Completed\n";
        assert_eq!(
            normalise(save),
            "*nat\n:OUTPUT ACCEPT [0:0]\n:SLUICE_OUTPUT - [0:0]\n-A OUTPUT -p tcp -j SLUICE_OUTPUT\nCOMMIT\n"
        );
        assert_eq!(
            normalise("\t\tmeta l4proto tcp counter packets 2 bytes 120 jump SLUICE_OUTPUT\n"),
            "\t\tmeta l4proto tcp counter packets 0 bytes 0 jump SLUICE_OUTPUT\n"
        );
    }
}
