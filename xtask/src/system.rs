//! What the privileged tests and the demo need from the host: root, the network tools they
//! drive, and a mounted bpffs for pinning.

use std::fs;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Commands the tests run, with the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("iptables", "iptables"),
    ("nft", "nftables"),
    ("bpftool", "bpftool"),
];

const BPFFS: &str = "/sys/fs/bpf";

/// Fails unless the effective uid is 0: the tasks create namespaces and cgroups and load eBPF.
pub fn require_root(task: &str) -> Result<()> {
    let status =
        fs::read_to_string("/proc/self/status").context("cannot read /proc/self/status")?;
    let euid = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().nth(1))
        .context("no effective uid in /proc/self/status")?;
    if euid != "0" {
        bail!(
            "`{task}` must run as root (effective uid is {euid}): it creates network namespaces \
             and cgroups and loads eBPF; rerun it as root, e.g. `sudo -E env PATH=\"$PATH\" {task}`"
        );
    }
    Ok(())
}

/// Installs missing test tools and mounts bpffs. Expects root.
pub fn ensure() -> Result<()> {
    ensure_tools()?;
    ensure_bpffs()
}

/// `apt-get update` then `apt-get install` of `packages`, non-interactively; the error says
/// the command to run by hand.
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let manual = format!(
        "apt-get update && apt-get install -y {}",
        packages.join(" ")
    );
    if cmd::find_in_path("apt-get").is_none() {
        bail!("no apt-get on this machine; install the equivalent of `{manual}`");
    }
    let apt = || {
        let mut apt = Command::new("apt-get");
        apt.env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        apt
    };
    cmd::run(apt().arg("update"))
        .and_then(|()| {
            cmd::run(
                apt()
                    .args(["install", "-y", "--no-install-recommends"])
                    .args(packages),
            )
        })
        .with_context(|| format!("apt-get failed; run `{manual}`"))
}

fn missing_tools() -> Vec<(&'static str, &'static str)> {
    TOOLS
        .iter()
        .copied()
        .filter(|(tool, _)| cmd::find_in_path(tool).is_none())
        .collect()
}

fn ensure_tools() -> Result<()> {
    let missing = missing_tools();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    let names: Vec<&str> = missing.iter().map(|(tool, _)| *tool).collect();
    eprintln!(
        "xtask: installing {} for {}",
        packages.join(" "),
        names.join(", ")
    );
    apt_install(&packages).with_context(|| format!("cannot install {}", names.join(", ")))?;
    let still: Vec<&str> = missing_tools().iter().map(|(tool, _)| *tool).collect();
    if !still.is_empty() {
        bail!(
            "installed {} but {} is still not on PATH ({:?})",
            packages.join(" "),
            still.join(", "),
            std::env::var_os("PATH")
        );
    }
    Ok(())
}

/// Pinned maps and links live in bpffs, which a new machine does not mount.
fn ensure_bpffs() -> Result<()> {
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").context("cannot read /proc/self/mountinfo")?;
    if is_bpffs_mounted(&mountinfo) {
        return Ok(());
    }
    eprintln!("xtask: mounting bpffs at {BPFFS}");
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))
        .with_context(|| format!("cannot mount bpffs; run `mount -t bpf bpf {BPFFS}`"))
}

/// Whether a mountinfo line has bpffs at [`BPFFS`]: field 5 is the mount point, and the
/// file system type follows the ` - ` separator.
fn is_bpffs_mounted(mountinfo: &str) -> bool {
    mountinfo.lines().any(|line| {
        let Some((mount, fs_part)) = line.split_once(" - ") else {
            return false;
        };
        mount.split(' ').nth(4) == Some(BPFFS) && fs_part.split(' ').next() == Some("bpf")
    })
}

#[cfg(test)]
mod tests {
    use super::is_bpffs_mounted;

    #[test]
    fn finds_bpffs_in_mountinfo() {
        let sysfs = "22 28 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n";
        let bpf = "41 22 0:34 / /sys/fs/bpf rw,nosuid,nodev shared:15 - bpf bpf rw,mode=700\n";
        let tmpfs_there = "41 22 0:34 / /sys/fs/bpf rw - tmpfs none rw\n";
        assert!(!is_bpffs_mounted(sysfs));
        assert!(is_bpffs_mounted(&format!("{sysfs}{bpf}")));
        assert!(!is_bpffs_mounted(tmpfs_there));
    }
}
