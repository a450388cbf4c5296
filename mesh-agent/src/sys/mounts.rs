//! Where cgroup2 and bpffs are mounted. Never hard-coded: hybrid hosts mount cgroup2 at
//! `/sys/fs/cgroup/unified`, unified ones at `/sys/fs/cgroup`.
use std::{
    fs, io,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("reading {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("no cgroup2 filesystem is mounted (see /proc/self/mountinfo); Sluice needs cgroup v2")]
    NoCgroup2,
    #[error(
        "{0} is not on a bpf filesystem and is not under /sys/fs/bpf, where bpffs could be mounted"
    )]
    NotBpffs(PathBuf),
    #[error("mounting bpffs at /sys/fs/bpf: {0}")]
    MountBpffs(nix::Error),
}

/// The cgroup2 mount point, from the first `cgroup2` line of `/proc/self/mountinfo`.
pub fn cgroup2_mount() -> Result<PathBuf, MountError> {
    let path = Path::new("/proc/self/mountinfo");
    let text = fs::read_to_string(path).map_err(|error| MountError::Read {
        path: path.into(),
        error,
    })?;
    cgroup2_mount_in(&text).ok_or(MountError::NoCgroup2)
}

fn cgroup2_mount_in(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `<id> <parent> <maj:min> <root> <mount point> <opts> [optional...] - <fstype> ...`
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2").then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// The cgroup v2 directory this process belongs to (from `/proc/self/cgroup`, `0::/path`).
pub fn own_cgroup() -> Result<PathBuf, MountError> {
    let mount = cgroup2_mount()?;
    let path = Path::new("/proc/self/cgroup");
    let text = fs::read_to_string(path).map_err(|error| MountError::Read {
        path: path.into(),
        error,
    })?;
    let rel = text
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .ok_or(MountError::NoCgroup2)?;
    Ok(mount.join(rel.trim_start_matches('/')))
}

/// The id the kernel gives a cgroup v2 directory: its inode number.
pub fn cgroup_id(path: &Path) -> Result<u64, MountError> {
    fs::metadata(path)
        .map(|m| m.ino())
        .map_err(|error| MountError::Read {
            path: path.into(),
            error,
        })
}

/// Makes sure `dir` can hold pins: it must be on bpffs; if it is under `/sys/fs/bpf` and
/// nothing is mounted there yet (a new machine), bpffs is mounted.
pub fn ensure_bpffs(dir: &Path) -> Result<(), MountError> {
    let on_bpffs = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == BPF_FS_MAGIC);
    let default = Path::new("/sys/fs/bpf");
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(default);
    if on_bpffs(existing) {
        return Ok(());
    }
    if !dir.starts_with(default) {
        return Err(MountError::NotBpffs(dir.into()));
    }
    mount(
        Some("bpf"),
        default,
        Some("bpf"),
        MsFlags::empty(),
        None::<&str>,
    )
    .map_err(MountError::MountBpffs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let info = "25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
                    31 25 0:26 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755\n\
                    32 31 0:27 / /sys/fs/cgroup/unified rw,nosuid shared:10 - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount_in(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn no_cgroup2_is_none() {
        let info = "25 30 0:23 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n";
        assert_eq!(cgroup2_mount_in(info), None);
    }

    #[test]
    fn this_machine_has_cgroup2() {
        let mount = cgroup2_mount().expect("cgroup2 must be mounted on test machines");
        assert!(mount.join("cgroup.controllers").exists());
        assert!(own_cgroup().unwrap().starts_with(&mount));
    }
}
