//! The kernel modules the guest gets: the netfilter trees whole (nft and iptables ask the
//! kernel for expressions, matches and targets by name at run time, and the kernel calls
//! `/sbin/modprobe` for them), plus what the test bed needs at boot and everything those
//! depend on. Decompressed on the host so busybox's `depmod`/`modprobe` need no xz or zstd.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::kernels::Kernel;

/// Directories (under `lib/modules/<release>`) shipped whole.
const TREES: &[&str] = &[
    "kernel/net/netfilter",
    "kernel/net/ipv4/netfilter",
    "kernel/net/ipv6/netfilter",
];

/// Loaded by `/init` before the suites, in this order (dependencies come with them). Every
/// one exists as a module in Debian's 5.10, 6.1 and 6.12 cloud kernels; a missing one fails
/// the run on the host, so the guest never starts half-equipped.
///
/// - veth, bridge: the test bed's pods.
/// - nf_tables, nft_chain_nat, nft_redir: `table inet sluice` (nat chains, `redirect to`).
/// - nf_conntrack, nf_nat, nf_defrag_ipv4/6: REDIRECT and `SO_ORIGINAL_DST` for the proxy.
/// - nft_compat, xt_REDIRECT, xt_mark, xt_tcpudp: iptables-nft's `-j REDIRECT`, `-m mark`,
///   `-m tcp` (xtables extensions inside nf_tables).
/// - ip_tables, ip6_tables, iptable_nat, ip6table_nat: iptables-legacy's `nat` tables.
///
/// The kernel would also load most of these on demand; loading them up front makes a
/// missing one show at boot instead of as a puzzling rule failure.
pub const LOAD_AT_BOOT: &[&str] = &[
    "veth",
    "bridge",
    "nf_conntrack",
    "nf_defrag_ipv4",
    "nf_defrag_ipv6",
    "nf_nat",
    "nf_tables",
    "nft_chain_nat",
    "nft_redir",
    "nft_compat",
    "x_tables",
    "xt_REDIRECT",
    "xt_mark",
    "xt_tcpudp",
    "ip_tables",
    "ip6_tables",
    "iptable_nat",
    "ip6table_nat",
];

/// A module file for the guest.
pub struct Module {
    /// Path under `lib/modules/<release>/`, ending in `.ko`.
    pub path: String,
    pub image: Vec<u8>,
}

/// Everything one kernel's guest gets under `lib/modules/<release>/`.
pub struct ModuleSet {
    pub release: String,
    pub modules: Vec<Module>,
    /// [`LOAD_AT_BOOT`] without the ones built into this kernel.
    pub load: Vec<String>,
}

impl Kernel {
    /// The [`TREES`], [`LOAD_AT_BOOT`] and their dependencies.
    pub fn module_set(&self) -> Result<ModuleSet> {
        let dir = &self.modules_dir;
        let release = dir
            .file_name()
            .and_then(|name| name.to_str())
            .context("modules directory has no release name")?
            .to_owned();
        let mut files = BTreeMap::new();
        index(dir, &dir.join("kernel"), &mut files)?;
        let builtin = fs::read_to_string(dir.join("modules.builtin")).unwrap_or_default();
        let is_builtin = |name: &str| {
            builtin
                .lines()
                .filter_map(|line| line.rsplit('/').next())
                .any(|file| key(file.trim_end_matches(".ko")) == name)
        };
        let mut wanted: Vec<String> = files
            .iter()
            .filter(|(_, rel)| TREES.iter().any(|tree| rel.starts_with(tree)))
            .map(|(name, _)| name.clone())
            .collect();
        let mut load = Vec::new();
        for name in LOAD_AT_BOOT.iter().map(|name| key(name)) {
            if files.contains_key(&name) {
                wanted.push(name.clone());
                load.push(name);
            } else if !is_builtin(&name) {
                bail!(
                    "module {name} is neither in {} nor built into {}",
                    dir.display(),
                    self.package
                );
            }
        }
        let mut modules: BTreeMap<String, Module> = BTreeMap::new();
        while let Some(name) = wanted.pop() {
            if modules.contains_key(&name) {
                continue;
            }
            let Some(rel) = files.get(&name) else {
                if is_builtin(&name) {
                    continue;
                }
                bail!("a module depends on {name}, which {} lacks", self.package);
            };
            let image = decompress(&dir.join(rel))?;
            wanted.extend(depends(&image).iter().map(|dep| key(dep)));
            let path = format!("{}.ko", rel.split(".ko").next().unwrap_or(rel));
            modules.insert(name, Module { path, image });
        }
        Ok(ModuleSet {
            release,
            modules: modules.into_values().collect(),
            load,
        })
    }
}

/// Module names treat `-` and `_` alike.
fn key(name: &str) -> String {
    name.replace('-', "_")
}

/// Module name -> path relative to `base`, for every `.ko[.xz|.zst|.gz]` below `dir`.
fn index(base: &Path, dir: &Path, files: &mut BTreeMap<String, String>) -> Result<()> {
    let entries = fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
    for entry in entries {
        let entry = entry.with_context(|| format!("cannot list {}", dir.display()))?;
        let path: PathBuf = entry.path();
        if path.is_dir() {
            index(base, &path, files)?;
        } else if let Some(file) = path.file_name().and_then(|name| name.to_str())
            && let Some((stem, _)) = file.split_once(".ko")
            && let Ok(rel) = path.strip_prefix(base)
        {
            files.insert(key(stem), rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn decompress(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    let tool = if name.ends_with(".ko.xz") {
        "xz"
    } else if name.ends_with(".ko.zst") {
        "zstd"
    } else if name.ends_with(".ko.gz") {
        "gzip"
    } else {
        return fs::read(path).with_context(|| format!("cannot read {}", path.display()));
    };
    let out = Command::new(tool)
        .args(["-d", "-c"])
        .arg(path)
        .output()
        .with_context(|| format!("cannot run {tool} to decompress {}", path.display()))?;
    if !out.status.success() {
        bail!(
            "{tool} could not decompress {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

/// The `depends=a,b` entry of a module's `.modinfo` section (null-terminated strings).
fn depends(image: &[u8]) -> Vec<String> {
    image
        .split(|&byte| byte == 0)
        .find_map(|field| field.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|dep| !dep.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_depends_from_modinfo() {
        let image = b"\x7fELF..\0license=GPL\0depends=stp,llc\0vermagic=5.10\0";
        assert_eq!(depends(image), ["stp", "llc"]);
        assert!(depends(b"\0depends=\0").is_empty());
    }

    #[test]
    fn boot_list_names_are_module_keys() {
        assert!(LOAD_AT_BOOT.iter().all(|name| !name.contains('-')));
        assert_eq!(key("nf-nat"), "nf_nat");
    }
}
