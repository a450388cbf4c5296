//! Inspecting what BPF state is left: programs attached to cgroups, pins in bpffs.

use crate::cmd;
use anyhow::{Context, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

/// One program attached to one cgroup, as `bpftool cgroup tree` reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct Attached {
    #[serde(default)]
    pub cgroup: String,
    pub id: u64,
    pub attach_type: String,
    #[serde(default)]
    pub name: String,
}

#[derive(Deserialize)]
struct TreeEntry {
    cgroup: String,
    programs: Vec<Attached>,
}

/// Every program attached (directly, by link or not) anywhere in the subtree at `root`.
pub fn attached_under(root: &Path) -> Result<Vec<Attached>> {
    let root_s = root.to_str().context("cgroup path is not UTF-8")?;
    let out = cmd::run(Command::new("bpftool").args(["-j", "cgroup", "tree", root_s]))?;
    let tree: Vec<TreeEntry> =
        serde_json::from_str(out.trim()).with_context(|| format!("bpftool output {out}"))?;
    Ok(tree
        .into_iter()
        .flat_map(|e| {
            let cg = e.cgroup;
            e.programs.into_iter().map(move |p| Attached {
                cgroup: cg.clone(),
                ..p
            })
        })
        .collect())
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
