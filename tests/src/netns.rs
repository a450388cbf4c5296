//! Named network namespaces (`/run/netns/<name>`, made by `ip netns add`) and entering them.

use crate::cmd;
use anyhow::{Context, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A named netns. Deletion is explicit (the owner decides the teardown order).
#[derive(Debug)]
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// Creates `/run/netns/<name>` with loopback up.
    pub fn create(name: &str) -> Result<Self> {
        cmd::ip(&["netns", "add", name])?;
        let ns = NetNs {
            name: name.to_string(),
        };
        if let Err(e) = ns.ip(&["link", "set", "lo", "up"]) {
            ns.delete();
            return Err(e);
        }
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn path(&self) -> PathBuf {
        path_of(&self.name)
    }

    /// `ip -n <name> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        cmd::ip(&all)
    }

    /// Removes the namespace; missing is fine (teardown is idempotent).
    pub fn delete(&self) {
        delete_named(&self.name);
    }
}

pub fn path_of(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Deletes a named netns, reporting (not failing on) errors other than "already gone".
pub fn delete_named(name: &str) {
    if !path_of(name).exists() {
        return;
    }
    if let Err(e) = cmd::ip(&["netns", "delete", name]) {
        eprintln!("sluice-tests: deleting netns {name}: {e:#}");
    }
}

/// Moves the calling thread into the netns behind `fd`.
pub fn setns_net(fd: i32) -> std::io::Result<()> {
    // SAFETY: setns only reads the fd; failure is reported through errno.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a fresh thread that has entered the netns at `path`, so the caller's own
/// thread never changes namespace (libtest runs tests on shared threads).
pub fn run_in<T: Send>(path: &Path, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening netns {}", path.display()))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            setns_net(file.as_raw_fd()).with_context(|| format!("setns {}", path.display()))?;
            f()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in netns {} panicked", path.display()))?
    })
}
