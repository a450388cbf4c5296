//! Finds a Kubernetes pod on this node: its cgroup (by pod UID, under the kubelet's
//! `kubepods` hierarchy) and its network namespace (through a process in that cgroup).
//!
//! The kubelet names a pod's cgroup after its UID, in one of two shapes depending on its
//! cgroup driver, and nests it by QoS class (Guaranteed pods sit directly under `kubepods`):
//!
//! ```text
//! cgroupfs: kubepods/[burstable|besteffort/]pod<uid>/<container>/
//! systemd:  kubepods.slice/[kubepods-burstable.slice/]kubepods[-burstable]-pod<uid_>.slice/<cri-...>.scope/
//! ```
//!
//! (`<uid_>` is the UID with `-` replaced by `_`, since systemd reserves `-` in unit names.)
//! Some distributions nest `kubepods` deeper (kind and k3s under `kubelet.slice`), so the
//! search walks a few levels down from the root instead of trying fixed paths.
use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// How deep below the root `kubepods` may sit, and the pod below it (QoS level included).
const MAX_DEPTH: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum KubepodsError {
    #[error("no cgroup for pod {uid} under {root} (the kubelet may not have made it yet)")]
    NoCgroup { uid: String, root: PathBuf },
    #[error("pod {uid} has cgroups in two places: {first} and {second}")]
    TwoCgroups {
        uid: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("no process in {cgroup} yet, so its network namespace is unknown")]
    NoProcess { cgroup: PathBuf },
    #[error("{uid:?} is not a pod UID")]
    BadUid { uid: String },
    #[error("reading {path}: {error}")]
    Io { path: PathBuf, error: io::Error },
}

/// The cgroup directory of the pod with this UID, searched for below `root`.
pub fn pod_cgroup(root: &Path, uid: &str) -> Result<PathBuf, KubepodsError> {
    let valid = !uid.is_empty()
        && uid.len() <= 64
        && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    if !valid {
        return Err(KubepodsError::BadUid { uid: uid.into() });
    }
    let names = PodCgroupNames::new(uid);
    let mut found: Option<PathBuf> = None;
    walk(root, 0, &mut |dir| {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()) else {
            return Ok(true);
        };
        if !names.matches(name) {
            return Ok(true);
        }
        match &found {
            Some(first) => Err(KubepodsError::TwoCgroups {
                uid: uid.into(),
                first: first.clone(),
                second: dir.to_owned(),
            }),
            None => {
                found = Some(dir.to_owned());
                // Nothing below a pod's cgroup is another pod's.
                Ok(false)
            }
        }
    })?;
    found.ok_or_else(|| KubepodsError::NoCgroup {
        uid: uid.into(),
        root: root.to_owned(),
    })
}

/// `/proc/<pid>/ns/net` of a process in `cgroup` or below it (every container of a pod,
/// the sandbox's pause process included, shares the pod's network namespace).
pub fn netns_of(cgroup: &Path) -> Result<PathBuf, KubepodsError> {
    let mut pid: Option<u32> = None;
    walk_all(cgroup, 0, &mut |dir| {
        if pid.is_some() {
            return Ok(false);
        }
        let procs = dir.join("cgroup.procs");
        let text = match fs::read_to_string(&procs) {
            Ok(text) => text,
            // The cgroup went away under us: its processes did too.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(error) => return Err(KubepodsError::Io { path: procs, error }),
        };
        pid = text.lines().find_map(|l| l.trim().parse().ok());
        Ok(pid.is_none())
    })?;
    match pid {
        Some(pid) => Ok(PathBuf::from(format!("/proc/{pid}/ns/net"))),
        None => Err(KubepodsError::NoProcess {
            cgroup: cgroup.to_owned(),
        }),
    }
}

/// The two names a pod's cgroup can have.
struct PodCgroupNames {
    cgroupfs: String,
    systemd_suffix: String,
}

impl PodCgroupNames {
    fn new(uid: &str) -> Self {
        Self {
            cgroupfs: format!("pod{uid}"),
            systemd_suffix: format!("-pod{}.slice", uid.replace('-', "_")),
        }
    }

    fn matches(&self, name: &str) -> bool {
        name == self.cgroupfs || (name.contains("kubepods") && name.ends_with(&self.systemd_suffix))
    }
}

/// Visits directories below `dir` (not `dir` itself) depth first, down to [`MAX_DEPTH`];
/// `visit` returns whether to descend into the one it was given.
fn walk(
    dir: &Path,
    depth: usize,
    visit: &mut dyn FnMut(&Path) -> Result<bool, KubepodsError>,
) -> Result<(), KubepodsError> {
    if depth >= MAX_DEPTH {
        return Ok(());
    }
    for child in subdirs(dir)? {
        if visit(&child)? {
            walk(&child, depth + 1, visit)?;
        }
    }
    Ok(())
}

/// [`walk`], starting with `dir` itself.
fn walk_all(
    dir: &Path,
    depth: usize,
    visit: &mut dyn FnMut(&Path) -> Result<bool, KubepodsError>,
) -> Result<(), KubepodsError> {
    if visit(dir)? {
        walk(dir, depth, visit)?;
    }
    Ok(())
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, KubepodsError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(KubepodsError::Io {
                path: dir.to_owned(),
                error,
            });
        }
    };
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    Ok(dirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "4f6c1c2e-8a1b-4d8e-9c39-1f2a3b4c5d6e";

    fn tree(dirs: &[&str]) -> tempfile::TempDir {
        let root = tempfile::tempdir().expect("tempdir");
        for d in dirs {
            fs::create_dir_all(root.path().join(d)).expect("mkdir");
        }
        root
    }

    #[test]
    fn finds_every_driver_and_qos_layout() {
        let uid_ = UID.replace('-', "_");
        let layouts = [
            format!("kubepods/pod{UID}"),
            format!("kubepods/burstable/pod{UID}"),
            format!("kubepods/besteffort/pod{UID}"),
            format!("kubepods.slice/kubepods-pod{uid_}.slice"),
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"),
            format!(
                "kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice"
            ),
        ];
        for layout in layouts {
            let root = tree(&[
                &layout,
                &format!("{layout}/cri-containerd-abc.scope"),
                "kubepods/burstable/pod00000000-0000-0000-0000-000000000000",
            ]);
            let found = pod_cgroup(root.path(), UID).expect(&layout);
            assert_eq!(found, root.path().join(&layout));
        }
    }

    #[test]
    fn absent_pods_and_bad_uids_are_errors() {
        let root = tree(&["kubepods/burstable"]);
        assert!(matches!(
            pod_cgroup(root.path(), UID),
            Err(KubepodsError::NoCgroup { .. })
        ));
        assert!(matches!(
            pod_cgroup(root.path(), "../etc"),
            Err(KubepodsError::BadUid { .. })
        ));
        let twice = tree(&[
            &format!("kubepods/pod{UID}"),
            &format!("kubepods/burstable/pod{UID}"),
        ]);
        assert!(matches!(
            pod_cgroup(twice.path(), UID),
            Err(KubepodsError::TwoCgroups { .. })
        ));
    }

    #[test]
    fn the_netns_comes_from_a_process_in_a_container_cgroup() {
        let root = tree(&["pod/empty", "pod/app"]);
        fs::write(root.path().join("pod/cgroup.procs"), "").expect("write");
        fs::write(root.path().join("pod/empty/cgroup.procs"), "").expect("write");
        fs::write(root.path().join("pod/app/cgroup.procs"), "4242\n4243\n").expect("write");
        assert_eq!(
            netns_of(&root.path().join("pod")).expect("netns"),
            PathBuf::from("/proc/4242/ns/net")
        );
        assert!(matches!(
            netns_of(&root.path().join("pod/empty")),
            Err(KubepodsError::NoProcess { .. })
        ));
    }
}
