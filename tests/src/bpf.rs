//! Inspecting what BPF state is left: programs attached to cgroups and network namespaces,
//! pins in bpffs.
//!
//! "Attached" is read from the kernel's list of BPF links (`bpftool -j link show`), not
//! from `bpftool cgroup tree`: bookworm's bpftool walks the tree by asking the kernel about
//! every attach type it knows, and on 5.10, which knows fewer, it silently lists nothing.
//! Every attachment the agent makes is a bpf_link, and a cgroup link names its cgroup by
//! id, which is the cgroup directory's inode number; a netns link (`sk_lookup`) names its
//! network namespace by inode too.

use crate::cmd;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One program attached to one cgroup by a BPF link.
#[derive(Debug, Clone)]
pub struct Attached {
    pub cgroup: PathBuf,
    pub link_id: u64,
    pub prog_id: u64,
    pub attach_type: String,
}

/// `bpftool -j link show` entries; only cgroup links carry `cgroup_id`.
#[derive(Deserialize)]
struct Link {
    id: u64,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    prog_id: u64,
    #[serde(default)]
    cgroup_id: Option<u64>,
    /// Netns links only.
    #[serde(default)]
    netns_ino: Option<u64>,
    /// A name, or a number where bpftool does not know the kernel's attach type.
    #[serde(default)]
    attach_type: serde_json::Value,
}

/// Every BPF link the kernel holds.
fn links() -> Result<Vec<Link>> {
    let out = cmd::run(Command::new("bpftool").args(["-j", "link", "show"]))?;
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(out.trim()).with_context(|| format!("bpftool output {out}"))
}

/// A name, or a number where bpftool does not know the kernel's attach type.
fn attach_type_name(value: serde_json::Value) -> String {
    match value {
        serde_json::Value::String(name) => name,
        other => other.to_string(),
    }
}

/// One program attached to a network namespace by a BPF link (the agent's `sk_lookup`).
#[derive(Debug, Clone)]
pub struct NetnsLink {
    pub link_id: u64,
    pub prog_id: u64,
    /// The network namespace's inode (see [`netns_inode`]).
    pub netns_ino: u64,
    pub attach_type: String,
}

/// Every program linked to the network namespace whose inode is `netns_ino`.
pub fn netns_links(netns_ino: u64) -> Result<Vec<NetnsLink>> {
    Ok(links()?
        .into_iter()
        .filter(|link| link.kind == "netns" && link.netns_ino == Some(netns_ino))
        .map(|link| NetnsLink {
            link_id: link.id,
            prog_id: link.prog_id,
            netns_ino,
            attach_type: attach_type_name(link.attach_type),
        })
        .collect())
}

/// The inode of the network namespace behind `path` (a `/run/netns` file), which is how a
/// netns link names it.
pub fn netns_inode(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .ino())
}

/// Every program linked to a cgroup anywhere in the subtree at `root` (`root` included).
pub fn attached_under(root: &Path) -> Result<Vec<Attached>> {
    let cgroups = cgroup_ids(root)?;
    Ok(links()?
        .into_iter()
        .filter(|link| link.kind == "cgroup")
        .filter_map(|link| {
            let cgroup = cgroups.get(&link.cgroup_id?)?.clone();
            Some(Attached {
                cgroup,
                link_id: link.id,
                prog_id: link.prog_id,
                attach_type: attach_type_name(link.attach_type),
            })
        })
        .collect())
}

/// cgroup id (inode) -> directory, for `root` and every cgroup below it.
fn cgroup_ids(root: &Path) -> Result<BTreeMap<u64, PathBuf>> {
    let mut ids = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let meta = std::fs::metadata(&dir).with_context(|| format!("stat {}", dir.display()))?;
        ids.insert(meta.ino(), dir.clone());
        for entry in std::fs::read_dir(&dir).with_context(|| format!("list {}", dir.display()))? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    Ok(ids)
}

/// Every file (pin) below `dir`; empty when `dir` does not exist.
pub fn pins_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                _ => out.push(e.path()),
            }
        }
    }
    out
}
