//! Building the eBPF programs, which only nightly can compile (for `bpfel-unknown-none`, with
//! `core` built from source).

use std::path::PathBuf;

use anyhow::{Result, bail};

use crate::{cmd, toolchain};

/// Builds mesh-ebpf in release mode and returns the path of the object.
pub fn build() -> Result<PathBuf> {
    toolchain::ensure()?;
    let root = cmd::workspace_root()?;
    cmd::run(cmd::nightly_cargo(&root).args([
        "build",
        "--package",
        "mesh-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
    ]))?;
    let object = root.join("target/bpfel-unknown-none/release/mesh-ebpf");
    if !object.is_file() {
        bail!("the build succeeded but left no {}", object.display());
    }
    Ok(object)
}
