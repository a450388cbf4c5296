//! Running a helper program (`nft`, `iptables-restore`, ...) inside a network namespace.
//!
//! The child enters the namespace between fork and exec, so the agent's own threads never
//! move. A fresh, empty namespace (`NetnsTarget::Scratch`) lets the agent try a ruleset or
//! probe a feature without touching any real one; it disappears with the child.
use std::{
    io::{self, Write as _},
    os::unix::process::CommandExt as _,
    process::{Command, Stdio},
};

use super::netns::Netns;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("running {program}: {error}")]
    Spawn { program: String, error: io::Error },
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Where the program runs.
#[derive(Clone, Copy)]
pub enum NetnsTarget<'a> {
    /// The agent's own netns.
    Current,
    /// A pod's netns.
    Pod(&'a Netns),
    /// A new, empty netns of its own.
    Scratch,
}

/// Runs `program args...` in `target`, feeding `stdin`, and returns its stdout.
pub fn run(
    target: NetnsTarget<'_>,
    program: &str,
    args: &[&str],
    stdin: &str,
) -> Result<String, ExecError> {
    let spawn_err = |error| ExecError::Spawn {
        program: program.to_owned(),
        error,
    };
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    match target {
        NetnsTarget::Current => {}
        NetnsTarget::Pod(netns) => {
            let fd = netns.as_raw_fd();
            // SAFETY: setns is async-signal-safe; the fd stays open until exec (CLOEXEC).
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        NetnsTarget::Scratch => {
            // SAFETY: unshare is async-signal-safe.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::unshare(libc::CLONE_NEWNET) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
    let mut child = cmd.spawn().map_err(spawn_err)?;
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if !out.status.success() {
        return Err(ExecError::Failed {
            program: std::iter::once(program)
                .chain(args.iter().copied())
                .collect::<Vec<_>>()
                .join(" "),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Is `program` on PATH?
pub fn available(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}
