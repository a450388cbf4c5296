//! Compiles `mesh-ebpf` for the BPF target and leaves the object in `OUT_DIR`, where the
//! agent embeds it. A plain `cargo build` is all it takes once the toolchain is there;
//! `cargo xtask build-ebpf` installs what is missing.
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    check_toolchain()?;
    println!("cargo:rerun-if-changed=../mesh-common/src");
    share_ebpf_target_dir()?;
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

/// aya-build compiles the programs in a cargo target directory under `OUT_DIR`, and every
/// build of the agent with other flags (check, clippy, test, another profile) has its own
/// `OUT_DIR`: each would compile `core` and the programs from scratch, about a minute.
/// Pointing that directory at one shared beside the profiles lets cargo reuse the work.
fn share_ebpf_target_dir() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR is not set")?);
    // OUT_DIR is <target dir>[/<triple>]/<profile>/build/<package>-<hash>/out.
    let shared = (out_dir.ancestors().nth(4))
        .with_context(|| format!("unexpected OUT_DIR {}", out_dir.display()))?
        .join("mesh-ebpf");
    let link = out_dir.join("aya-build/target/mesh-ebpf");
    if fs::read_link(&link).is_ok_and(|to| to == shared) {
        return Ok(());
    }
    let parent = link.parent().context("the link has a parent")?;
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    fs::create_dir_all(&shared).with_context(|| format!("creating {}", shared.display()))?;
    match fs::symlink_metadata(&link) {
        Ok(meta) if meta.is_dir() => fs::remove_dir_all(&link)?,
        Ok(_) => fs::remove_file(&link)?,
        Err(_) => {}
    }
    std::os::unix::fs::symlink(&shared, &link)
        .with_context(|| format!("linking {} to {}", link.display(), shared.display()))
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
