//! Removing leftovers of earlier runs that crashed before their Drop ran.
//!
//! Only objects named with our prefix (`sl-<pid>-...`) whose creating pid is dead are
//! touched: a live run's objects, or anyone else's, are left alone.

use crate::{PREFIX, cgroup, netns};
use std::path::Path;
use std::sync::Once;

/// Runs [`sweep_stale`] once per process.
pub fn sweep_stale_once() {
    static ONCE: Once = Once::new();
    ONCE.call_once(sweep_stale);
}

/// The creating pid of a name `<lead>sl-<pid>-...`, if it has that shape.
fn creator(name: &str, lead: &str) -> Option<u32> {
    let rest = name.strip_prefix(lead)?.strip_prefix(PREFIX)?;
    rest.split_once('-')?.0.parse().ok()
}

fn dead(pid: u32) -> bool {
    !Path::new(&format!("/proc/{pid}")).exists()
}

fn stale_entries(dir: &Path, lead: &str) -> Vec<(String, std::path::PathBuf)> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = creator(&name, lead)?;
            (dead(pid)).then(|| (name, e.path()))
        })
        .collect()
}

/// Sweeps stale cgroups (first, killing their processes), pins, netns and work dirs.
pub fn sweep_stale() {
    if let Ok(cg2) = cgroup::cgroup2_mount() {
        for (name, path) in stale_entries(&cg2, "sluice-test-") {
            eprintln!("sluice-tests: sweeping stale cgroup {name}");
            if let Err(e) = cgroup::remove_tree(&path) {
                eprintln!("sluice-tests: {e:#}");
            }
        }
    }
    // Removing pinned links detaches their programs.
    for (name, path) in stale_entries(Path::new("/sys/fs/bpf/sluice"), "") {
        eprintln!("sluice-tests: sweeping stale pins {name}");
        let _ = std::fs::remove_dir_all(path);
    }
    for (name, _) in stale_entries(Path::new("/run/netns"), "") {
        eprintln!("sluice-tests: sweeping stale netns {name}");
        netns::delete_named(&name);
    }
    for (_, path) in stale_entries(&std::env::temp_dir(), "sluice-test-") {
        let _ = std::fs::remove_dir_all(path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_our_names_only() {
        assert_eq!(creator("sl-123-4-node", ""), Some(123));
        assert_eq!(creator("sluice-test-sl-77-0", "sluice-test-"), Some(77));
        assert_eq!(creator("slx-123-4", ""), None);
        assert_eq!(creator("other", ""), None);
        assert_eq!(creator("sl-abc-1", ""), None);
    }
}
