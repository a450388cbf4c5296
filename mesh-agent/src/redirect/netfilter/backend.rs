//! The netfilter backends and how to drive each: nftables through `nft`, iptables through
//! `iptables-restore`/`-save` (nf_tables flavour) or their `-legacy` twins.
use crate::sys::exec::{self, NetnsTarget};

use super::rules::Family;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    Nft,
    IptablesNft,
    IptablesLegacy,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Nft, Backend::IptablesNft, Backend::IptablesLegacy];

    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Nft => "nft",
            Backend::IptablesNft => "iptables-nft",
            Backend::IptablesLegacy => "iptables-legacy",
        }
    }

    /// The restore and save programs for one family (iptables backends only).
    pub fn iptables_tools(self, family: Family) -> (&'static str, &'static str) {
        match (self, family) {
            (Backend::IptablesLegacy, Family::V4) => {
                ("iptables-legacy-restore", "iptables-legacy-save")
            }
            (Backend::IptablesLegacy, Family::V6) => {
                ("ip6tables-legacy-restore", "ip6tables-legacy-save")
            }
            (_, Family::V4) => ("iptables-nft-restore", "iptables-nft-save"),
            (_, Family::V6) => ("ip6tables-nft-restore", "ip6tables-nft-save"),
        }
    }

    /// The programs this backend needs.
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Backend::Nft => &["nft"],
            Backend::IptablesNft => &["iptables-nft-restore", "iptables-nft-save"],
            Backend::IptablesLegacy => &["iptables-legacy-restore", "iptables-legacy-save"],
        }
    }

    pub fn installed(self) -> bool {
        self.programs().iter().all(|p| exec::available(p))
    }
}

/// The iptables flavour for a netns: legacy only when legacy rules already exist there (two
/// flavours' rules side by side are evaluated in an order nobody intends), else nf_tables.
pub fn iptables_flavour(target: NetnsTarget<'_>) -> Backend {
    let has_rules = |family| {
        let (_, save) = Backend::IptablesLegacy.iptables_tools(family);
        legacy_tables_exist(target, family)
            && exec::run(target, save, &[], "")
                .is_ok_and(|out| out.lines().any(|l| l.starts_with("-A ")))
    };
    let legacy_in_use =
        Backend::IptablesLegacy.installed() && (has_rules(Family::V4) || has_rules(Family::V6));
    if legacy_in_use {
        Backend::IptablesLegacy
    } else {
        Backend::IptablesNft
    }
}

/// Do legacy iptables tables exist in the netns? Listing legacy rules would instantiate
/// them, so this reads the table names (which creates nothing) instead.
pub fn legacy_tables_exist(target: NetnsTarget<'_>, family: Family) -> bool {
    let names = match family {
        Family::V4 => "/proc/net/ip_tables_names",
        Family::V6 => "/proc/net/ip6_tables_names",
    };
    exec::run(target, "cat", &[names], "").is_ok_and(|out| !out.trim().is_empty())
}
