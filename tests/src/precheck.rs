//! `mesh-agent check --json`, and the facts to judge its verdict by that do not come from
//! the agent: the kernel release, `bpftool feature probe kernel` for the program types,
//! helpers and maps the eBPF mode uses, and the netfilter tools run by hand in a pod.

use crate::cmd;
use crate::netfilter::in_pod;
use crate::pod::Pod;
use anyhow::{Context, Result, ensure};
use serde_json::Value;
use std::process::Command;

/// What mesh-ebpf loads, with the helpers each program type must offer
/// (`mesh-ebpf/src`; the VM report's table in `xtask/src/vm/report.rs` lists the same).
pub const EBPF_NEEDS: &[(&str, &[&str])] = &[
    (
        "cgroup_sock_addr",
        &[
            "bpf_get_current_cgroup_id",
            "bpf_get_current_ancestor_cgroup_id",
            "bpf_get_socket_cookie",
            "bpf_map_lookup_elem",
            "bpf_map_update_elem",
        ],
    ),
    (
        "sock_ops",
        &[
            "bpf_get_socket_cookie",
            "bpf_sock_ops_cb_flags_set",
            "bpf_map_lookup_elem",
            "bpf_map_update_elem",
            "bpf_map_delete_elem",
        ],
    ),
    ("cgroup_sockopt", &["bpf_map_lookup_elem"]),
    (
        "sk_lookup",
        &["bpf_map_lookup_elem", "bpf_sk_assign", "bpf_sk_release"],
    ),
];

/// Map types the eBPF mode creates.
pub const EBPF_MAPS: &[&str] = &["hash", "percpu_array", "sockhash"];

/// The oldest kernel the eBPF mode claims (connect4 to getsockopt, all helpers above).
pub const EBPF_FLOOR: (u32, u32) = (5, 10);

/// `mesh-agent check <args>`: exit status and stdout (both echoed for failure output).
pub fn run_check(args: &[&str]) -> Result<(bool, String)> {
    let bin = crate::agent_bin()?;
    let out = Command::new(&bin).arg("check").args(args).output()?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "mesh-agent check {args:?}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), stdout))
}

/// `mesh-agent check --json` (auto), which must exit 0 and print a report.
pub fn report() -> Result<Value> {
    let (ok, stdout) = run_check(&["--json"])?;
    ensure!(ok, "mesh-agent check --json failed: {stdout}");
    serde_json::from_str(&stdout).with_context(|| format!("check --json: {stdout}"))
}

/// `uname -r` of the running kernel.
pub fn kernel_release() -> Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/osrelease")?
        .trim()
        .to_owned())
}

/// `(major, minor)` of a release such as `5.10.0-32-cloud-amd64`.
pub fn version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// What `bpftool feature probe kernel` says about everything the eBPF mode needs: the
/// missing items, empty when the kernel has them all.
pub fn ebpf_gaps() -> Result<Vec<String>> {
    let out = cmd::run(Command::new("bpftool").args(["-j", "feature", "probe", "kernel"]))?;
    let probe: Value = serde_json::from_str(&out).context("bpftool feature probe output")?;
    Ok(gaps(&probe))
}

fn gaps(probe: &Value) -> Vec<String> {
    let mut missing = Vec::new();
    for (prog_type, helpers) in EBPF_NEEDS {
        if probe["program_types"][format!("have_{prog_type}_prog_type")] != true {
            missing.push(format!("program type {prog_type}"));
            continue;
        }
        let offered = &probe["helpers"][format!("{prog_type}_available_helpers")];
        for helper in *helpers {
            let has = offered
                .as_array()
                .is_some_and(|list| list.iter().any(|h| h == helper));
            if !has {
                missing.push(format!("{helper} in {prog_type}"));
            }
        }
    }
    for map in EBPF_MAPS {
        if probe["map_types"][format!("have_{map}_map_type")] != true {
            missing.push(format!("map type {map}"));
        }
    }
    missing
}

/// Can `pod`'s netns take a nat `redirect` rule through `nftables` or `iptables` (the
/// nf_tables flavour), tried by hand with the plain tools? The pod's netns is the test's
/// own and goes away with it.
pub fn netfilter_redirect_works(pod: &Pod, mode: crate::Mode) -> bool {
    let script = match mode {
        crate::Mode::Nftables => {
            "add table inet sluice_probe\n\
             add chain inet sluice_probe out { type nat hook output priority -100; }\n\
             add rule inet sluice_probe out meta l4proto tcp redirect to :15001\n"
        }
        crate::Mode::Iptables => {
            "*nat\n:SLUICE_PROBE - [0:0]\n-A OUTPUT -p tcp -j SLUICE_PROBE\n\
             -A SLUICE_PROBE -m mark --mark 0x539 -j RETURN\n\
             -A SLUICE_PROBE -p tcp -m tcp --dport 22 -j RETURN\n\
             -A SLUICE_PROBE -p tcp -j REDIRECT --to-ports 15001\nCOMMIT\n"
        }
        crate::Mode::Ebpf => return false,
    };
    let path = std::env::temp_dir().join(format!("{}-{mode}.rules", crate::unique_prefix()));
    let applied = std::fs::write(&path, script).is_ok() && {
        let file = path.to_string_lossy();
        let result = match mode {
            crate::Mode::Nftables => in_pod(pod, "nft", &["-f", &file]),
            _ => in_pod(pod, "iptables-nft-restore", &["--noflush", &file]),
        };
        if let Err(e) = &result {
            eprintln!("{mode} by hand in {}: {e:#}", pod.name());
        }
        result.is_ok()
    };
    let _ = std::fs::remove_file(&path);
    applied
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_gaps() {
        assert_eq!(version("5.10.0-32-cloud-amd64"), Some((5, 10)));
        assert_eq!(version("6.12.117+deb13-cloud-amd64"), Some((6, 12)));
        let mut probe = serde_json::json!({"program_types": {}, "helpers": {}, "map_types": {}});
        for (prog_type, helpers) in EBPF_NEEDS {
            probe["program_types"][format!("have_{prog_type}_prog_type")] = true.into();
            probe["helpers"][format!("{prog_type}_available_helpers")] = (*helpers).into();
        }
        for map in EBPF_MAPS {
            probe["map_types"][format!("have_{map}_map_type")] = true.into();
        }
        assert!(gaps(&probe).is_empty(), "{:?}", gaps(&probe));
        probe["program_types"]["have_cgroup_sockopt_prog_type"] = false.into();
        assert_eq!(gaps(&probe), ["program type cgroup_sockopt"]);
    }
}
