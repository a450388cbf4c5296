//! Running a closure inside another network namespace.
//!
//! A socket belongs to the netns of the thread that creates it, for life. So the agent makes
//! each pod-side socket (listener, upstream connect) on its own thread after `setns` into the
//! pod's netns and returns the thread at once. Network-namespace membership is per thread, so
//! other threads of the runtime are untouched.
use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use nix::sched::{CloneFlags, setns};

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("opening netns {path}: {error}")]
    Open { path: PathBuf, error: io::Error },
    #[error("entering netns: {0}")]
    Enter(nix::Error),
}

/// An open handle on a network namespace.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|error| NetnsError::Open {
            path: path.into(),
            error,
        })?;
        Ok(Self {
            file,
            path: path.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.file)
    }

    /// Runs `f` with the calling thread inside this netns, then moves the thread back to the
    /// agent's own netns. `f` must not block or await: it is meant for making sockets.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        let home = home_netns()?;
        setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(NetnsError::Enter)?;
        let out = f();
        if let Err(err) = setns(home, CloneFlags::CLONE_NEWNET) {
            // A runtime thread stuck in a pod's netns would put later sockets in the wrong
            // place; nothing sane can continue.
            eprintln!("fatal: cannot return to the agent's netns: {err}");
            std::process::abort();
        }
        Ok(out)
    }
}

/// Records the agent's own netns. Call once at start-up, before any thread enters a pod's
/// netns, so "home" can never be read while the main thread is away.
pub fn remember_home() -> Result<(), NetnsError> {
    home_netns().map(|_| ())
}

fn home_netns() -> Result<&'static File, NetnsError> {
    static HOME: OnceLock<File> = OnceLock::new();
    if let Some(f) = HOME.get() {
        return Ok(f);
    }
    let path = Path::new("/proc/self/ns/net");
    let file = File::open(path).map_err(|error| NetnsError::Open {
        path: path.into(),
        error,
    })?;
    Ok(HOME.get_or_init(|| file))
}
