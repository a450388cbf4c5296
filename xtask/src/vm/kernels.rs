//! Debian's cloud kernels: which suite carries which kernel, fetching and unpacking the
//! package once (cached under `target/vm/kernels/`); `modules` picks the guest's modules.
//!
//! The cloud flavour has BPF and cgroup support built in and boots quickly under QEMU; veth,
//! bridge and most network drivers are modules, so they come from the same package.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::apt::{self, Apt};
use crate::cmd;

/// A kernel line the matrix covers, and the Debian suites that carry it (first that has it
/// wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLine {
    pub label: &'static str,
    pub suites: &'static [&'static str],
    /// Tests left out on this kernel (libtest `--skip` filters), to keep CI's time: the
    /// netfilter variants of the capture scenarios run on 5.10 only, the oldest kernel
    /// (where the fallback matters); every eBPF scenario runs on every kernel but l7's.
    pub skip: &'static [&'static str],
    /// Suites not run at all on this line.
    pub leave_out: &'static [&'static str],
}

/// The redirect modes whose scenario variants run on 5.10 alone.
const NETFILTER_VARIANTS: &[&str] = &["nftables::", "iptables::"];

/// Suites that sit above capture (the mesh tunnel, L7, the Kubernetes source): what they
/// add does not depend on the kernel's netfilter, which `outbound` and `inbound` cover on
/// 5.10, so in a VM only their eBPF variants run.
const ABOVE_CAPTURE: &[&str] = &["mesh", "l7", "kube"];

/// Suites left out of a whole-matrix run (`--test NAME` still runs them in a VM): they
/// exercise no kernel capture and read the source tree.
pub const HOST_ONLY: &[&str] = &["kube_api", "cni", "deploy"];

/// Scenarios that need a binary the guest does not carry: the CNI plugin, run by
/// `kube`'s race-free start (`sluice-cni` is not in the initramfs).
const NEEDS_HOST_BINARIES: &[(&str, &str)] =
    &[("kube", "the_cni_add_returns_once_the_pod_is_captured")];

/// Every variant: a suite a kernel line leaves out whole.
const ALL_VARIANTS: &[&str] = &["ebpf::", "nftables::", "iptables::"];

impl KernelLine {
    /// The `--skip` filters for `suite` on this kernel.
    pub fn skip_for(&self, suite: &str) -> Vec<&'static str> {
        if self.leave_out.contains(&suite) {
            return ALL_VARIANTS.to_vec();
        }
        let mut skip = self.skip.to_vec();
        if ABOVE_CAPTURE.contains(&suite) {
            skip.extend(NETFILTER_VARIANTS.iter().filter(|f| !self.skip.contains(f)));
        }
        skip.extend(
            (NEEDS_HOST_BINARIES.iter())
                .filter(|(s, _)| *s == suite)
                .map(|(_, test)| *test),
        );
        skip
    }
}

pub const LINES: &[KernelLine] = &[
    KernelLine {
        label: "5.10",
        suites: &["bullseye"],
        skip: &[],
        // l7 runs on the newest kernel only, to keep CI well within its time (tests/README).
        leave_out: &["l7"],
    },
    KernelLine {
        label: "6.1",
        suites: &["bookworm"],
        skip: NETFILTER_VARIANTS,
        // l7 runs on the newest kernel only, to keep CI well within its time (tests/README).
        leave_out: &["l7"],
    },
    KernelLine {
        label: "6.12",
        suites: &["trixie", "bookworm-backports"],
        skip: NETFILTER_VARIANTS,
        leave_out: &[],
    },
];

/// The metapackage that points at the current cloud kernel of a suite.
const METAPACKAGE: &str = "linux-image-cloud-amd64";

/// An unpacked kernel package.
pub struct Kernel {
    pub line: KernelLine,
    /// The package's full name, e.g. `linux-image-5.10.0-32-cloud-amd64`, for reports.
    pub package: String,
    pub vmlinuz: PathBuf,
    /// `lib/modules/<release>` inside the unpacked package.
    pub modules_dir: PathBuf,
}

/// Returns the unpacked kernel for `line`, fetching it only when the cache has none. Delete
/// `target/vm/kernels/<line>` to pick up a newer package.
pub fn fetch(line: KernelLine, cache: &Path, mirror: &str) -> Result<Kernel> {
    let dir = cache.join(line.label);
    let prefix = format!("linux-image-{}.", line.label);
    let deb = match cached_deb(&dir, &prefix)? {
        Some(deb) => deb,
        None => download(line, &dir, mirror, &prefix)?,
    };
    let root = dir.join("root");
    let stamp = dir.join("root.done");
    if !stamp.is_file() {
        if root.exists() {
            fs::remove_dir_all(&root)
                .with_context(|| format!("cannot remove {}", root.display()))?;
        }
        cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
            .with_context(|| format!("cannot unpack {}", deb.display()))?;
        fs::write(&stamp, "").with_context(|| format!("cannot write {}", stamp.display()))?;
    }
    let package = deb
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.split('_').next())
        .context("kernel .deb has no name")?
        .to_owned();
    let vmlinuz = find_prefixed(&root.join("boot"), "vmlinuz-")?;
    let release = vmlinuz
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("vmlinuz-"))
        .context("kernel image has no release in its name")?
        .to_owned();
    // Newer packages ship /usr/lib/modules (merged /usr), older ones /lib/modules.
    let modules_dir = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|base| root.join(base).join(&release))
        .find(|dir| dir.is_dir())
        .with_context(|| format!("{package} has no lib/modules/{release}"))?;
    Ok(Kernel {
        line,
        package,
        vmlinuz,
        modules_dir,
    })
}

fn cached_deb(dir: &Path, prefix: &str) -> Result<Option<PathBuf>> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(None);
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(prefix) && name.ends_with(".deb") {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

/// Resolves the metapackage in the first suite that has this kernel line and downloads the
/// image package it points at.
fn download(line: KernelLine, dir: &Path, mirror: &str, prefix: &str) -> Result<PathBuf> {
    apt::require_apt()?;
    let mut seen = Vec::new();
    for suite in line.suites {
        let apt = Apt::new(&dir.join("apt").join(suite), mirror, suite)?;
        apt.update()?;
        let package = apt.first_dependency(METAPACKAGE)?;
        if package.starts_with(prefix) {
            return apt.download(&package, dir);
        }
        seen.push(format!("{suite}: {package}"));
    }
    bail!(
        "no suite carries a {} cloud kernel at {mirror} (found {})",
        line.label,
        seen.join(", ")
    )
}

fn find_prefixed(dir: &Path, prefix: &str) -> Result<PathBuf> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            return Ok(entry.path());
        }
    }
    bail!("no {prefix}* in {}", dir.display())
}

/// The lines selected by `--kernel`.
pub fn select(which: &str) -> Result<Vec<KernelLine>> {
    if which == "all" {
        return Ok(LINES.to_vec());
    }
    let mut picked = Vec::new();
    for label in which.split(',') {
        let line = LINES
            .iter()
            .find(|line| line.label == label.trim())
            .with_context(|| {
                let known: Vec<_> = LINES.iter().map(|line| line.label).collect();
                format!(
                    "unknown kernel {label:?}; choose from {} or all",
                    known.join(", ")
                )
            })?;
        picked.push(*line);
    }
    Ok(picked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l7_runs_its_ebpf_variants_on_6_12_and_mesh_and_kube_theirs_everywhere() {
        assert_eq!(LINES[0].skip_for("l7"), ALL_VARIANTS);
        assert_eq!(LINES[1].skip_for("l7"), ALL_VARIANTS);
        assert_eq!(LINES[2].skip_for("l7"), ["nftables::", "iptables::"]);
        assert_eq!(LINES[0].skip_for("outbound"), Vec::<&str>::new());
        for line in LINES {
            assert_eq!(line.skip_for("mesh"), ["nftables::", "iptables::"]);
            assert_eq!(
                line.skip_for("kube"),
                [
                    "nftables::",
                    "iptables::",
                    "the_cni_add_returns_once_the_pod_is_captured"
                ]
            );
        }
    }

    #[test]
    fn selects_kernel_lines() {
        assert_eq!(select("all").map(|l| l.len()).ok(), Some(3));
        let picked = select("5.10,6.12").ok().unwrap_or_default();
        let labels: Vec<_> = picked.iter().map(|l| l.label).collect();
        assert_eq!(labels, ["5.10", "6.12"]);
        assert!(select("4.19").is_err());
    }
}
