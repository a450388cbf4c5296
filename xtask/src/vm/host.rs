//! What the host lends the VM: QEMU and xz to run and unpack, the programs `userland` copies
//! into the initramfs (`ip`, `bpftool`, `nft`, iptables), and Debian's static busybox.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use super::apt::{self, Apt};
use crate::cmd;

/// Host commands vm-test uses, with the Debian package of each.
const HOST_TOOLS: &[(&str, &str)] = &[
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("ip", "iproute2"),
    ("bpftool", "bpftool"),
    ("nft", "nftables"),
    ("xtables-nft-multi", "iptables"),
    ("xtables-legacy-multi", "iptables"),
    ("xz", "xz-utils"),
];

/// The suite busybox-static is taken from; any current release works, its busybox is static.
const BUSYBOX_SUITE: &str = "bookworm";

/// Installs the missing [`HOST_TOOLS`] with the host's apt (needs root).
pub fn ensure_tools() -> Result<()> {
    let missing: Vec<(&str, &str)> = HOST_TOOLS
        .iter()
        .copied()
        .filter(|(tool, _)| locate(tool).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut packages: Vec<&str> = missing.iter().map(|(_, package)| *package).collect();
    packages.dedup();
    let manual = format!(
        "apt-get update && apt-get install -y --no-install-recommends {}",
        packages.join(" ")
    );
    apt::require_apt().with_context(|| format!("install {} yourself", packages.join(" ")))?;
    eprintln!("xtask: vm: installing {}", packages.join(" "));
    let apt = || {
        let mut apt = Command::new("apt-get");
        apt.env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null());
        apt
    };
    cmd::run(apt().args(["-q", "update"]))
        .and_then(|()| {
            cmd::run(
                apt()
                    .args(["-q", "install", "-y", "--no-install-recommends"])
                    .args(&packages),
            )
        })
        .with_context(|| format!("cannot install the VM's host tools; run `{manual}` as root"))?;
    if let Some((tool, package)) = HOST_TOOLS.iter().find(|(tool, _)| locate(tool).is_none()) {
        bail!("installed {package} but {tool} is still not found");
    }
    Ok(())
}

/// `tool` on PATH or in the sbin directories, which a non-root PATH often lacks.
pub fn locate(tool: &str) -> Option<PathBuf> {
    cmd::find_in_path(tool).or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin"]
            .iter()
            .map(|dir| Path::new(dir).join(tool))
            .find(|path| path.is_file())
    })
}

/// Debian's static busybox, downloaded once into `cache` (never installed on the host).
pub fn busybox(cache: &Path, mirror: &str) -> Result<PathBuf> {
    let binary = cache.join("busybox");
    if binary.is_file() {
        return Ok(binary);
    }
    let deb = match apt::find_deb(cache, "busybox-static")? {
        Some(deb) => deb,
        None => {
            apt::require_apt()?;
            let apt = Apt::new(&cache.join("apt"), mirror, BUSYBOX_SUITE)?;
            apt.update()?;
            apt.download("busybox-static", cache)?
        }
    };
    let root = cache.join("busybox-root");
    cmd::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))
        .with_context(|| format!("cannot unpack {}", deb.display()))?;
    let unpacked = ["bin/busybox", "usr/bin/busybox"]
        .iter()
        .map(|rel| root.join(rel))
        .find(|path| path.is_file())
        .with_context(|| format!("{} holds no bin/busybox", deb.display()))?;
    fs::copy(&unpacked, &binary)
        .with_context(|| format!("cannot copy busybox to {}", binary.display()))?;
    Ok(binary)
}

/// The shared libraries `binary` loads, as absolute host paths (the dynamic loader included),
/// from `ldd`.
pub fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = cmd::stdout(Command::new("ldd").arg(binary))
        .with_context(|| format!("cannot list the libraries of {}", binary.display()))?;
    if let Some(line) = out.lines().find(|line| line.contains("not found")) {
        bail!("{} misses a library: {}", binary.display(), line.trim());
    }
    Ok(parse_ldd(&out))
}

fn parse_ldd(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line,
            };
            let path = path.split(" (").next()?.trim();
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A copy of `binary` without debug info in `dir` (the debug test binaries are mostly DWARF;
/// a smaller initramfs boots faster and leaves the 2 GiB guest its memory). Falls back to
/// the binary itself when `strip` is missing.
pub fn stripped(binary: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    let Some(strip) = locate("strip") else {
        return Ok(binary.to_owned());
    };
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let out = dir.join(name);
    cmd::run(
        Command::new(strip)
            .arg("--strip-debug")
            .arg("-o")
            .arg(&out)
            .arg(binary),
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let out = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                   \tlibbpf.so.1 => /lib/x86_64-linux-gnu/libbpf.so.1 (0x00007f)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(out),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libbpf.so.1"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }
}
