//! The agent's eBPF programs and map types: what the guest is asked to probe and what the
//! matrix lists, kept in step with mesh-ebpf by a test.

/// A program of the agent: its kernel program type and the helpers it calls (the
/// `counters` helper's map lookup included). Checked against mesh-ebpf's source by a test.
pub(super) struct Program {
    pub(super) name: &'static str,
    pub(super) prog_type: &'static str,
    pub(super) helpers: &'static [&'static str],
}

pub(super) const PROGRAMS: &[Program] = &[
    Program {
        name: "connect4, connect6",
        prog_type: "cgroup_sock_addr",
        helpers: &[
            "bpf_get_current_cgroup_id",
            "bpf_get_current_ancestor_cgroup_id",
            "bpf_get_socket_cookie",
            "bpf_map_lookup_elem",
            "bpf_map_update_elem",
        ],
    },
    Program {
        name: "getpeername4, getpeername6",
        prog_type: "cgroup_sock_addr",
        helpers: &["bpf_get_socket_cookie", "bpf_map_lookup_elem"],
    },
    Program {
        name: "track_connections",
        prog_type: "sock_ops",
        helpers: &[
            "bpf_get_socket_cookie",
            "bpf_sock_ops_cb_flags_set",
            "bpf_map_lookup_elem",
            "bpf_map_update_elem",
            "bpf_map_delete_elem",
        ],
    },
    Program {
        name: "getsockopt",
        prog_type: "cgroup_sockopt",
        helpers: &["bpf_map_lookup_elem"],
    },
    Program {
        name: "steer_inbound",
        prog_type: "sk_lookup",
        // aya's SockHash::redirect_sk_lookup: the lookup, the assign and the release.
        helpers: &["bpf_map_lookup_elem", "bpf_sk_assign", "bpf_sk_release"],
    },
];

/// The program types the agent loads, for the guest's probe to report helpers of.
pub fn prog_types() -> Vec<&'static str> {
    let mut types: Vec<&str> = PROGRAMS.iter().map(|p| p.prog_type).collect();
    types.sort_unstable();
    types.dedup();
    types
}

/// The map types the agent creates.
pub(super) const MAP_TYPES: &[&str] = &["hash", "percpu_array", "sockhash"];

#[cfg(test)]
mod tests {
    use super::*;

    /// Every helper mesh-ebpf calls appears in [`PROGRAMS`], so the matrix asks the guest
    /// about all of them.
    #[test]
    fn programs_table_covers_mesh_ebpf_helpers() -> std::io::Result<()> {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-ebpf/src");
        let known: Vec<&str> = PROGRAMS
            .iter()
            .flat_map(|p| p.helpers.iter().copied())
            .collect();
        for entry in std::fs::read_dir(src)? {
            let text = std::fs::read_to_string(entry?.path())?;
            for (at, _) in text.match_indices("helpers::") {
                let rest = &text[at + "helpers::".len()..];
                let names = rest.split(['}', ';']).next().unwrap_or_default();
                for name in names.split([',', '{', ' ', '\n']).map(str::trim) {
                    if name.starts_with("bpf_") {
                        assert!(known.contains(&name), "{name} missing from PROGRAMS");
                    }
                }
            }
        }
        Ok(())
    }
}
