//! Loading, attaching and pinning the programs.
use std::{fs::File, path::Path};

use aya::{
    Ebpf,
    programs::{
        CgroupAttachMode, CgroupSockAddr, CgroupSockopt, SockOps,
        links::{FdLink, LinkError},
    },
};
use tracing::{debug, warn};

use super::{EbpfError, EbpfSettings};
use crate::sys::mounts;

/// Attach flags for bpf_link: the kernel refuses any flag on a cgroup link and always
/// attaches links in multi mode, so "Single" (no flags) is what gives multi-attach here.
pub(super) const LINK_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Socket-address programs: they act on the pods' own sockets, so the cgroup root is enough.
pub(super) const SOCK_ADDR_PROGRAMS: [&str; 4] =
    ["connect4", "connect6", "getpeername4", "getpeername6"];
/// These also act on the agent's accepted sockets, which belong to the agent's cgroup.
pub(super) const SOCK_OPS_PROGRAM: &str = "track_connections";
pub(super) const SOCKOPT_PROGRAM: &str = "getsockopt";

/// Attaches the socket-address programs at the cgroup root (they act on pods' sockets) and
/// the sock_ops and getsockopt programs where they see both the pods' and the agent's
/// sockets: the nearest cgroup holding both (the root itself when the agent runs below it,
/// as in a DaemonSet). Links are pinned, replacing a previous agent's pins.
pub fn attach_all(ebpf: &mut Ebpf, settings: &EbpfSettings) -> Result<Vec<FdLink>, EbpfError> {
    let root = open_cgroup(&settings.cgroup_root)?;
    let own = mounts::own_cgroup()?;
    let shared_path = settings
        .cgroup_root
        .ancestors()
        .find(|dir| own.starts_with(dir))
        .unwrap_or(&settings.cgroup_root);
    if shared_path != settings.cgroup_root {
        warn!(
            shared = %shared_path.display(),
            root = %settings.cgroup_root.display(),
            "the agent runs outside cgroupRoot, so sock_ops and getsockopt attach higher up; \
             a second agent on this kernel whose programs see the same sockets could answer \
             for them: run the agent inside cgroupRoot"
        );
    }
    let shared = open_cgroup(shared_path)?;
    let links_dir = settings.pin_dir().join("links");
    let mut links = Vec::new();

    for name in SOCK_ADDR_PROGRAMS {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load()
            .map_err(|error| EbpfError::Program { name, error })?;
        let id = prog
            .attach(&root, LINK_MODE)
            .map_err(|error| EbpfError::Program { name, error })?;
        let link = prog
            .take_link(id)
            .map_err(|error| EbpfError::Program { name, error })?;
        links.push(pin(link, name, &links_dir.join(name))?);
    }

    let name = SOCK_OPS_PROGRAM;
    let prog: &mut SockOps = program(ebpf, name)?;
    prog.load()
        .map_err(|error| EbpfError::Program { name, error })?;
    let id = prog
        .attach(&shared, LINK_MODE)
        .map_err(|error| EbpfError::Program { name, error })?;
    let link = prog
        .take_link(id)
        .map_err(|error| EbpfError::Program { name, error })?;
    links.push(pin(link, name, &links_dir.join(name))?);

    // Not pinned (aya cannot turn this link into an FdLink) and it need not be: it only
    // answers the agent's own calls, so it lives exactly as long as the agent, which holds
    // it through the loaded program.
    let name = SOCKOPT_PROGRAM;
    let prog: &mut CgroupSockopt = program(ebpf, name)?;
    prog.load()
        .map_err(|error| EbpfError::Program { name, error })?;
    prog.attach(&shared, LINK_MODE)
        .map_err(|error| EbpfError::Program { name, error })?;
    debug!(root = %settings.cgroup_root.display(), shared = %shared_path.display(), "programs attached");
    remove_foreign_pins(&links_dir)?;
    Ok(links)
}

pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, EbpfError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(EbpfError::Program {
        name,
        error: aya::programs::ProgramError::UnexpectedProgramType,
    })?;
    prog.try_into()
        .map_err(|error| EbpfError::Program { name, error })
}

/// Pins `link` at `path`, first removing a pin a previous agent left there (its link then
/// detaches, once our new one is already attached: no gap in steering).
fn pin<L>(link: L, name: &'static str, path: &Path) -> Result<FdLink, EbpfError>
where
    L: TryInto<FdLink, Error = LinkError>,
{
    let link = link
        .try_into()
        .map_err(|error| EbpfError::Link { name, error })?;
    pin_link(link, path)
}

/// [`pin`] for a link that already is an [`FdLink`].
pub(super) fn pin_link(link: FdLink, path: &Path) -> Result<FdLink, EbpfError> {
    if path.exists() {
        debug!(path = %path.display(), "replacing pinned link");
        std::fs::remove_file(path).map_err(|error| EbpfError::Unpin {
            path: path.into(),
            error,
        })?;
    }
    let pinned = link.pin(path).map_err(|error| EbpfError::Pin {
        path: path.into(),
        error,
    })?;
    Ok(FdLink::from(pinned))
}

/// Removes link pins this version did not create (an older agent's, under other names), so
/// no program of a previous version keeps running beside ours.
fn remove_foreign_pins(links_dir: &Path) -> Result<(), EbpfError> {
    let ours: Vec<&str> = SOCK_ADDR_PROGRAMS
        .iter()
        .copied()
        .chain([SOCK_OPS_PROGRAM])
        .collect();
    let entries = std::fs::read_dir(links_dir).map_err(|error| EbpfError::Unpin {
        path: links_dir.into(),
        error,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !ours.iter().any(|o| name.to_str() == Some(o)) {
            debug!(pin = ?entry.path(), "removing a pin this agent does not own");
            std::fs::remove_file(entry.path()).map_err(|error| EbpfError::Unpin {
                path: entry.path(),
                error,
            })?;
        }
    }
    Ok(())
}

fn open_cgroup(path: &Path) -> Result<File, EbpfError> {
    File::open(path).map_err(|error| EbpfError::Cgroup {
        path: path.into(),
        error,
    })
}
