//! The individual probes behind `mesh-agent check`.
use std::path::Path;

use super::Check;
use crate::{
    config::RedirectMode,
    redirect::{
        ebpf::probe::probe_programs,
        netfilter::{apply::Applier, backend::Backend, pod_rules, rules::Family},
    },
    sys::{exec::NetnsTarget, mounts},
};

/// The first kernel with every hook and helper the eBPF mode uses.
const EBPF_FLOOR: (u32, u32) = (5, 10);

pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

pub fn kernel(release: &str) -> Vec<Check> {
    let version = parse_version(release);
    vec![Check {
        area: "kernel",
        name: format!("version >= {}.{}", EBPF_FLOOR.0, EBPF_FLOOR.1),
        ok: version.is_some_and(|v| v >= EBPF_FLOOR),
        needed_by: Some(RedirectMode::Ebpf),
        detail: release.to_owned(),
    }]
}

fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

pub fn ebpf() -> Vec<Check> {
    let mut checks = Vec::new();
    let needed = |name: &str, result: Result<String, String>| Check {
        area: "ebpf",
        name: name.to_owned(),
        ok: result.is_ok(),
        needed_by: Some(RedirectMode::Ebpf),
        detail: result.unwrap_or_else(|e| e),
    };
    let cgroup2 = mounts::cgroup2_mount();
    checks.push(needed(
        "cgroup v2",
        cgroup2
            .as_ref()
            .map(|m| format!("mounted at {}", m.display()))
            .map_err(ToString::to_string),
    ));
    let pin_root = Path::new("/sys/fs/bpf/sluice");
    let bpffs = mounts::ensure_bpffs(pin_root);
    checks.push(needed(
        "bpffs",
        bpffs
            .as_ref()
            .map(|()| "/sys/fs/bpf is a bpf filesystem".to_owned())
            .map_err(ToString::to_string),
    ));
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    checks.push(Check {
        area: "ebpf",
        name: "kernel BTF".into(),
        ok: btf,
        needed_by: None,
        detail: if btf {
            "present"
        } else {
            "absent (not needed)"
        }
        .into(),
    });
    let (Ok(cgroup2), Ok(())) = (cgroup2, bpffs) else {
        checks.push(needed(
            "programs",
            Err("not tried: cgroup v2 or bpffs missing".into()),
        ));
        return checks;
    };
    let scratch_cgroup = cgroup2.join(format!("sluice-check-{}", std::process::id()));
    // bpffs refuses names with a dot.
    let pin_dir = pin_root.join(format!("check-{}", std::process::id()));
    let probes = std::fs::create_dir(&scratch_cgroup)
        .map_err(|e| format!("creating {}: {e}", scratch_cgroup.display()))
        .and_then(|()| probe_programs(&pin_dir, &scratch_cgroup).map_err(|e| e.to_string()));
    let _ = std::fs::remove_dir(&scratch_cgroup);
    // Leave no empty pin root behind when no agent uses it.
    let _ = std::fs::remove_dir(pin_root);
    match probes {
        Err(e) => checks.push(needed("programs", Err(e))),
        Ok(probes) => {
            for p in probes {
                checks.push(needed(
                    &format!("load {}", p.program),
                    p.load.map(|()| "verifier accepted it".into()),
                ));
                checks.push(needed(
                    &format!("attach {}", p.program),
                    p.attach.map(str::to_owned),
                ));
            }
        }
    }
    checks
}

pub fn netfilter() -> Vec<Check> {
    [
        (Backend::Nft, Some(RedirectMode::Nftables)),
        (Backend::IptablesNft, Some(RedirectMode::Iptables)),
        // Only used where legacy rules already exist in a pod's netns.
        (Backend::IptablesLegacy, None),
    ]
    .into_iter()
    .map(|(backend, needed_by)| {
        let result = if backend.installed() {
            let rules = pod_rules(
                &[22],
                &["10.0.0.0/8".parse().expect("a valid CIDR literal")],
                &[15021],
            );
            Applier::default()
                .apply(
                    NetnsTarget::Scratch,
                    backend,
                    &rules,
                    &[Family::V4, Family::V6],
                )
                .map(|_| "nat REDIRECT ruleset applied in a scratch netns".to_owned())
                .map_err(|e| e.to_string())
        } else {
            Err(format!("not installed ({})", backend.programs().join(", ")))
        };
        Check {
            area: "netfilter",
            name: backend.as_str().to_owned(),
            ok: result.is_ok(),
            needed_by,
            detail: result.unwrap_or_else(|e| e),
        }
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(parse_version("5.10.0-28-cloud-amd64"), Some((5, 10)));
        assert_eq!(parse_version("6.18.44-fc-v769"), Some((6, 18)));
        assert_eq!(parse_version("garbage"), None);
    }
}
