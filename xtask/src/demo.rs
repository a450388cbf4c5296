//! `cargo xtask demo`: the release agent driven by the `sluice-demo` scenario runner.

use std::process::{Command, ExitCode};

use anyhow::{Result, bail};

use crate::{cmd, system, toolchain};

/// Prepares the machine, builds release binaries and runs `sluice-demo` with `args`.
pub fn run(args: &[String]) -> Result<ExitCode> {
    system::require_root("cargo xtask demo")?;
    toolchain::ensure()?;
    system::ensure()?;
    let root = cmd::workspace_root()?;
    cmd::run(cmd::cargo(&root).args(["build", "--release", "--bins"]))?;
    let release = root.join("target/release");
    let (demo, agent) = (release.join("sluice-demo"), release.join("mesh-agent"));
    for binary in [&demo, &agent] {
        if !binary.is_file() {
            bail!("the release build left no {}", binary.display());
        }
    }
    let status = cmd::status(
        Command::new(&demo)
            .args(args)
            .current_dir(&root)
            .env("SLUICE_AGENT_BIN", &agent),
    )?;
    Ok(cmd::exit_code(status))
}
