//! Child processes: building the commands with a clean environment, and running them with
//! errors that name the command that failed.

use std::env;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus};

use anyhow::{Context, Result, bail};

/// `CARGO_*` variables that are the user's standing configuration (where cargo lives, how it
/// reaches registries, how it prints), as opposed to settings for one build.
const KEPT_CARGO_VARS: &[&str] = &[
    "CARGO_HOME",
    "CARGO_INSTALL_ROOT",
    "CARGO_NET_",
    "CARGO_HTTP_",
    "CARGO_REGISTRIES_",
    "CARGO_REGISTRY_",
    "CARGO_TERM_",
    "CARGO_BUILD_JOBS",
];

/// Compiler overrides that are meant for host builds: a host `RUSTFLAGS` such as
/// `-C target-cpu=native` or a stable `RUSTC` breaks a nightly build for the BPF target.
const HOST_COMPILER_VARS: &[&str] = &[
    "RUSTC",
    "RUSTC_WRAPPER",
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
];

/// The workspace root, which every task runs from; xtask lives one level below it.
pub fn workspace_root() -> Result<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    dir.canonicalize()
        .with_context(|| format!("workspace root {} is not reachable", dir.display()))
}

/// A `cargo` run from the workspace root without the variables the outer `cargo run` set for
/// xtask (`CARGO`, `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, ...) or per-build settings such as
/// `CARGO_TARGET_DIR`: the tasks rely on outputs being under `<root>/target`.
pub fn cargo(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root);
    for (key, _) in env::vars_os() {
        if let Some(key) = key.to_str()
            && is_build_cargo_var(key)
        {
            cmd.env_remove(key);
        }
    }
    cmd
}

/// `cargo +nightly` as [`cargo`], also without host compiler overrides (see
/// [`HOST_COMPILER_VARS`]).
pub fn nightly_cargo(root: &Path) -> Command {
    let mut cmd = cargo(root);
    cmd.arg("+nightly");
    for key in HOST_COMPILER_VARS {
        cmd.env_remove(key);
    }
    cmd
}

fn is_build_cargo_var(key: &str) -> bool {
    (key == "CARGO" || key.starts_with("CARGO_"))
        && !KEPT_CARGO_VARS.iter().any(|kept| key.starts_with(kept))
}

/// The command line, for messages.
pub fn describe(cmd: &Command) -> String {
    let args = cmd.get_args().map(OsStr::to_string_lossy);
    std::iter::once(cmd.get_program().to_string_lossy())
        .chain(args)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with inherited stdio and returns its status, failing only if it cannot start.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))
}

/// Runs `cmd` with inherited stdio and fails unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = status(cmd)?;
    if !status.success() {
        bail!("`{}` failed: {status}", describe(cmd));
    }
    Ok(())
}

/// Runs `cmd` and returns its stdout; on failure the error carries its stderr.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{}`", describe(cmd)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}: {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout)
        .with_context(|| format!("`{}` printed something that is not UTF-8", describe(cmd)))
}

/// Where `name` would be found on `PATH`, if it is an executable file there.
pub fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| {
            file.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The exit code that passes a child's status on: its own code, or 128 + signal as shells do.
pub fn exit_code(status: ExitStatus) -> ExitCode {
    let code = status
        .code()
        .or_else(|| status.signal().map(|sig| 128 + sig))
        .unwrap_or(1);
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_outer_cargo_vars_but_keeps_user_config() {
        for var in [
            "CARGO",
            "CARGO_MANIFEST_DIR",
            "CARGO_PKG_NAME",
            "CARGO_TARGET_DIR",
        ] {
            assert!(is_build_cargo_var(var), "{var}");
        }
        for var in [
            "CARGO_HOME",
            "CARGO_NET_OFFLINE",
            "CARGO_TERM_COLOR",
            "RUSTUP_HOME",
        ] {
            assert!(!is_build_cargo_var(var), "{var}");
        }
    }

    #[test]
    fn exit_code_passes_the_childs_code_on() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), ExitCode::from(3));
        assert_eq!(exit_code(ExitStatus::from_raw(9)), ExitCode::from(137));
    }
}
