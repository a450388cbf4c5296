//! `## Behaviour, from test outcomes`: what only a real run shows, each row read off the
//! outcome of the test that exercises it.

use std::fmt::Write as _;

use super::{Columns, cell};

/// Behaviours only a real run shows, each with the test whose outcome is its evidence
/// (`mode::test` names one redirect mode's run of an outbound scenario).
const BEHAVIOURS: &[(&str, &str)] = &[
    (
        "IPv4: connect4 rewrite, sock_ops bookkeeping, getsockopt SO_ORIGINAL_DST, getpeername4",
        "ebpf::enrolled_pod_is_captured_end_to_end",
    ),
    (
        "IPv6: connect6 rewrite, getsockopt IP6T_SO_ORIGINAL_DST, getpeername6",
        "ebpf::enrolled_pod_ipv6_is_captured",
    ),
    (
        "capture from a child cgroup (ancestor cgroup id)",
        "ebpf::container_cgroup_of_enrolled_pod_is_captured",
    ),
    (
        "bpf_link multi-attach, pinned links, detach on cleanup",
        "ebpf_cleanup_leaves_no_pins_or_programs",
    ),
    (
        "the agent's own upstream connects are not recaptured",
        "ebpf::agent_upstream_is_not_recaptured",
    ),
    (
        "nftables: `table inet sluice` nat redirect, conntrack SO_ORIGINAL_DST (v4)",
        "nftables::enrolled_pod_is_captured_end_to_end",
    ),
    (
        "nftables: the same over IPv6",
        "nftables::enrolled_pod_ipv6_is_captured",
    ),
    (
        "iptables-nft: SLUICE_OUTPUT REDIRECT (v4)",
        "iptables::enrolled_pod_is_captured_end_to_end",
    ),
    (
        "iptables-nft: the same over IPv6",
        "iptables::enrolled_pod_ipv6_is_captured",
    ),
    (
        "iptables-legacy: rules steer traffic",
        "iptables_legacy::traffic_follows_the_rules",
    ),
    (
        "the precheck's choice matches the kernel, and auto runs it",
        "auto_mode_runs_what_check_chose_and_captures",
    ),
];

pub(super) fn write(md: &mut String, columns: &Columns) {
    let _ = writeln!(md, "\n## Behaviour, from test outcomes\n");
    columns.head(md, "behaviour (test)");
    for (behaviour, test) in BEHAVIOURS {
        let _ = writeln!(
            md,
            "| {behaviour} (`{test}`) | {} |",
            columns.row(|run| run.outcome(test).map_or("not run", cell).to_owned())
        );
    }
}
