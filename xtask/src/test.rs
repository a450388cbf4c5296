//! `cargo xtask test`: the whole suite, integration tests included, which need root and the
//! agent binary built beforehand.

use std::process::ExitCode;

use anyhow::{Result, bail};

use crate::{cmd, system, toolchain};

/// Prepares the machine, builds the binaries and runs `cargo test` with `extra` appended.
///
/// No `--workspace`: cargo then uses the default members, which leave out mesh-ebpf (it
/// builds only for the BPF target).
pub fn run(extra: &[String]) -> Result<ExitCode> {
    system::require_root("cargo xtask test")?;
    toolchain::ensure()?;
    system::ensure()?;
    let root = cmd::workspace_root()?;
    cmd::run(cmd::cargo(&root).args(["build", "--bins"]))?;
    let agent = root.join("target/debug/mesh-agent");
    if !agent.is_file() {
        bail!("the build left no agent at {}", agent.display());
    }
    let status = cmd::status(
        cmd::cargo(&root)
            .arg("test")
            .args(extra)
            .env("SLUICE_AGENT_BIN", &agent),
    )?;
    Ok(cmd::exit_code(status))
}
