//! Running helper programs (`ip`, `bpftool`) with errors that say what failed.

use anyhow::{Context, Result, bail};
use std::process::Command;

/// Runs a command to completion; a non-zero exit is an error carrying its stderr.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("spawning {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip <args>` from iproute2.
pub fn ip(args: &[&str]) -> Result<String> {
    run(Command::new("ip").args(args))
}
