//! The eBPF toolchain: nightly with `rust-src` (for `-Z build-std=core`) and a `bpf-linker`
//! built against nightly's own LLVM, because no distribution LLVM matches nightly's.

use std::env;
use std::fs;
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The bpf-linker line known to link with nightly 1.97 (LLVM 22); raise it with the nightly.
const BPF_LINKER_VERSION: &str = "^0.13";

/// Makes sure eBPF can be built: checks first, installs only what is missing.
pub fn ensure() -> Result<()> {
    let nightly = Nightly::probe()?;
    nightly.ensure_rust_src()?;
    let linker = ensure_bpf_linker(&nightly)?;
    eprintln!(
        "xtask: eBPF toolchain ready (nightly with rust-src, LLVM {}; {linker})",
        nightly.llvm_major
    );
    Ok(())
}

/// What the eBPF build needs to know about the nightly toolchain.
struct Nightly {
    sysroot: PathBuf,
    llvm_major: String,
}

impl Nightly {
    fn probe() -> Result<Self> {
        if cmd::find_in_path("rustup").is_none() {
            bail!(
                "rustup is not on PATH; install it (https://rustup.rs), then run \
                 `rustup toolchain install nightly --component rust-src`"
            );
        }
        let missing = "the nightly toolchain is missing or broken; get it with \
                       `rustup toolchain install nightly --component rust-src`";
        let version =
            cmd::stdout(Command::new("rustc").args(["+nightly", "-vV"])).context(missing)?;
        let llvm_major = llvm_major(&version)
            .with_context(|| format!("no `LLVM version: N.M` line in:\n{version}"))?
            .to_owned();
        let sysroot = cmd::stdout(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
            .context(missing)?;
        Ok(Self {
            sysroot: PathBuf::from(sysroot.trim()),
            llvm_major,
        })
    }

    /// `-Z build-std=core` compiles `core` from source, which only `rust-src` ships.
    fn ensure_rust_src(&self) -> Result<()> {
        let core = self.sysroot.join("lib/rustlib/src/rust/library/core");
        if core.is_dir() {
            return Ok(());
        }
        eprintln!("xtask: adding rust-src to nightly (needed for -Z build-std=core)");
        cmd::run(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))
        .context(
            "nightly lacks rust-src; get it with `rustup component add rust-src --toolchain nightly`",
        )
    }

    /// nightly's `libLLVM.so.<ver>-rust-<release>`, the library bpf-linker must link against.
    fn libllvm(&self) -> Result<PathBuf> {
        let lib = self.sysroot.join("lib");
        let entries =
            fs::read_dir(&lib).with_context(|| format!("cannot list {}", lib.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot list {}", lib.display()))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("libLLVM.so.") && name.contains("-rust-") {
                return Ok(entry.path());
            }
        }
        bail!(
            "no libLLVM.so.*-rust-* in {}: nightly ships without its LLVM library; \
             reinstall it with `rustup toolchain install nightly --force`",
            lib.display()
        )
    }
}

/// The major version from `rustc -vV`'s `LLVM version: 22.1.4` line.
fn llvm_major(rustc_vv: &str) -> Option<&str> {
    let version = rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))?
        .trim();
    let major = version.split('.').next()?;
    (!major.is_empty() && major.bytes().all(|b| b.is_ascii_digit())).then_some(major)
}

/// Runs `bpf-linker --version`; a linker whose LLVM library has gone (nightly updated or the
/// symlink directory removed) fails to start, and is then rebuilt. Returns the version line.
fn ensure_bpf_linker(nightly: &Nightly) -> Result<String> {
    let why = match linker_version() {
        Ok(version) => return Ok(version),
        Err(why) => why,
    };
    eprintln!(
        "xtask: bpf-linker unusable ({why:#}); building it against nightly's LLVM {} \
         (takes minutes)",
        nightly.llvm_major
    );
    let prefix = llvm_prefix(nightly)?;
    let features = format!("llvm-{}", nightly.llvm_major);
    let mut install = cmd::nightly_cargo(&prefix);
    install
        .args(["install", "bpf-linker", "--locked", "--force"])
        .args(["--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", &features])
        .env("LLVM_PREFIX", &prefix);
    cmd::run(&mut install).with_context(|| {
        format!(
            "cannot build bpf-linker; the manual recipe is `LLVM_PREFIX={} cargo +nightly \
             install bpf-linker --no-default-features --features {features}`",
            prefix.display()
        )
    })?;
    linker_version()
        .context("bpf-linker was installed but does not start: is cargo's bin directory on PATH?")
}

fn linker_version() -> Result<String> {
    let version = cmd::stdout(Command::new("bpf-linker").arg("--version"))?;
    Ok(version.trim().to_owned())
}

/// A stable `LLVM_PREFIX` whose `lib/` links to nightly's libLLVM under both names bpf-linker's
/// build looks for. Stable because the built linker keeps an rpath into it.
fn llvm_prefix(nightly: &Nightly) -> Result<PathBuf> {
    let libllvm = nightly.libllvm()?;
    let home = env::var_os("HOME")
        .context("HOME is not set; it is needed to keep bpf-linker's LLVM links")?;
    let prefix = PathBuf::from(home)
        .join(".local/share/sluice")
        .join(format!("llvm-{}", nightly.llvm_major));
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let versioned = libllvm
        .file_name()
        .context("nightly's libLLVM path has no file name")?;
    for name in [Path::new("libLLVM.so"), Path::new(versioned)] {
        replace_symlink(&lib.join(name), &libllvm)?;
    }
    Ok(prefix)
}

fn replace_symlink(link: &Path, target: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    match fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("cannot replace {}", link.display())),
    }
    symlink(target, link)
        .with_context(|| format!("cannot link {} to {}", link.display(), target.display()))
}

#[cfg(test)]
mod tests {
    use super::llvm_major;

    #[test]
    fn llvm_major_comes_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\nhost: x86_64-unknown-linux-gnu\n\
                  release: 1.97.0-nightly\nLLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some("22"));
        assert_eq!(llvm_major("release: 1.97.0\n"), None);
        assert_eq!(llvm_major("LLVM version: x.1\n"), None);
    }
}
