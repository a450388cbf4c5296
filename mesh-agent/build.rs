//! Compiles `mesh-ebpf` for the BPF target and leaves the object in `OUT_DIR`, where the
//! agent embeds it. A plain `cargo build` is all it takes once the toolchain is there;
//! `cargo xtask build-ebpf` installs what is missing.
use std::process::Command;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    check_toolchain()?;
    println!("cargo:rerun-if-changed=../mesh-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "mesh-ebpf",
            root_dir: "../mesh-ebpf",
            ..Default::default()
        }],
        aya_build::Toolchain::Nightly,
    )
    .context("building the eBPF programs (mesh-ebpf)")
}

/// Fails early, with the fix, instead of deep inside a nightly cargo run.
fn check_toolchain() -> anyhow::Result<()> {
    const FIX: &str = "run `cargo xtask build-ebpf` once: it installs what is missing";
    let linker = Command::new("bpf-linker").arg("--version").output();
    if !matches!(&linker, Ok(out) if out.status.success()) {
        bail!("bpf-linker is missing or does not start (it must match nightly's LLVM); {FIX}");
    }
    let sysroot = Command::new("rustup")
        .args(["run", "nightly", "rustc", "--print", "sysroot"])
        .output()
        .context("running rustup: the nightly toolchain is needed for the eBPF build")?;
    if !sysroot.status.success() {
        bail!("the nightly toolchain is missing; {FIX}");
    }
    let sysroot = String::from_utf8_lossy(&sysroot.stdout).trim().to_owned();
    if !std::path::Path::new(&sysroot)
        .join("lib/rustlib/src/rust/library/core")
        .exists()
    {
        bail!("rust-src is missing for nightly; {FIX}");
    }
    Ok(())
}
