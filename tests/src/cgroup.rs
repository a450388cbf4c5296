//! cgroup v2 directories: finding the mount, creating, emptying and removing them.

use anyhow::{Context, Result, bail};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The cgroup2 mount point from `/proc/self/mountinfo` (`/sys/fs/cgroup/unified` on hybrid
/// hosts, `/sys/fs/cgroup` on most Kubernetes nodes), never a hard-coded path.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    parse_mountinfo(&info).context("no cgroup2 mount in /proc/self/mountinfo")
}

fn parse_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        Some(PathBuf::from(unescape(left.split_whitespace().nth(4)?)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The cgroup v2 path (relative to the mount) of a process, from `/proc/<pid>/cgroup`.
pub fn cgroup_of(pid: u32) -> Result<String> {
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
        .context("process has no cgroup v2 line")
}

/// The pids in one cgroup directory (not its children).
pub fn procs(dir: &Path) -> Result<Vec<i32>> {
    let text = fs::read_to_string(dir.join("cgroup.procs"))
        .with_context(|| format!("reading {}/cgroup.procs", dir.display()))?;
    Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
}

/// Kills every process in the subtree and waits until it is empty. Everything in a test
/// cgroup was started by the test, so this is still "by pid", not by name.
pub fn kill_all(dir: &Path) -> Result<()> {
    let kill_file = dir.join("cgroup.kill");
    if kill_file.exists() {
        fs::write(&kill_file, "1").with_context(|| format!("writing {}", kill_file.display()))?;
    } else {
        for d in subtree(dir)? {
            for pid in procs(&d)? {
                // SAFETY: plain syscall; the pid was read from our own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while populated(dir)? {
        if Instant::now() > deadline {
            bail!("{} still has processes after SIGKILL", dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn populated(dir: &Path) -> Result<bool> {
    let events = fs::read_to_string(dir.join("cgroup.events"))?;
    Ok(events.lines().any(|l| l == "populated 1"))
}

/// The directory and all cgroup directories below it, parents first.
fn subtree(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        for entry in fs::read_dir(&out[i])? {
            let entry = entry?;
            if entry.file_type()?.is_dir() {
                out.push(entry.path());
            }
        }
        i += 1;
    }
    Ok(out)
}

/// Kills what is left in the subtree and removes it, children first. Missing is fine.
pub fn remove_tree(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    kill_all(dir)?;
    for d in subtree(dir)?.iter().rev() {
        // rmdir can briefly fail with EBUSY while killed tasks finish exiting.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match fs::remove_dir(d) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(_) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e).with_context(|| format!("rmdir {}", d.display())),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_mountinfo() {
        let info = "25 30 0:23 / /sys rw - sysfs sysfs rw\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            parse_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            parse_mountinfo("25 30 0:23 / /sys rw - sysfs sysfs rw\n"),
            None
        );
        assert_eq!(unescape("/a\\040b"), "/a b");
    }
}
