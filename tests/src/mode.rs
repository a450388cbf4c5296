//! The agent's redirect modes, and a macro that runs one scenario in each of them.
//!
//! The modes must be interchangeable: a pod sees the same destinations, exclusions and
//! bytes whichever steers it. Running every scenario in every mode is what checks that.

use serde::Serialize;

/// How the agent steers an enrolled pod's connections into its proxy.
#[derive(Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// cgroup programs rewrite the connect; `SO_ORIGINAL_DST` comes from a BPF map.
    Ebpf,
    /// `table inet sluice` in the pod's netns; `SO_ORIGINAL_DST` from conntrack.
    Nftables,
    /// `SLUICE_OUTPUT` in the pod's `nat` table (nf_tables flavour here).
    Iptables,
}

impl Mode {
    pub const ALL: [Mode; 3] = [Mode::Ebpf, Mode::Nftables, Mode::Iptables];

    /// The name the config, `/debug/redirect` and `sluice_redirect_mode` use.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Ebpf => "ebpf",
            Mode::Nftables => "nftables",
            Mode::Iptables => "iptables",
        }
    }

    pub fn is_netfilter(self) -> bool {
        self != Mode::Ebpf
    }

    /// What [`crate::netfilter::ours`] must report in an enrolled pod's netns: exactly the
    /// rules of this mode, none of another (eBPF writes no rules at all).
    pub fn expected_rules(self) -> Vec<crate::netfilter::Found> {
        use crate::netfilter::Found;
        match self {
            Mode::Ebpf => Vec::new(),
            Mode::Nftables => vec![Found::NftTable],
            Mode::Iptables => vec![Found::IptablesNft],
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// For each `fn name(mode: Mode)` listed, generates `ebpf::name`, `nftables::name` and
/// `iptables::name` tests, so a failure names its mode.
#[macro_export]
macro_rules! in_every_mode {
    ($($name:ident),+ $(,)?) => {
        $crate::tests_for!(ebpf, $crate::Mode::Ebpf, [$($name),+]);
        $crate::tests_for!(nftables, $crate::Mode::Nftables, [$($name),+]);
        $crate::tests_for!(iptables, $crate::Mode::Iptables, [$($name),+]);
    };
}

/// `mod $module { #[test] fn name() { super::name($value) } ... }`: one variant's tests of
/// a parametrized suite (see [`in_every_mode!`]).
#[macro_export]
macro_rules! tests_for {
    ($module:ident, $value:expr, [$($name:ident),+]) => {
        mod $module {
            $(
                #[test]
                fn $name() {
                    super::$name($value)
                }
            )+
        }
    };
}
