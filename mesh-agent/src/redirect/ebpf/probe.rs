//! Can this kernel run Sluice's programs? Answered the only reliable way: load each one
//! (the verifier checks every helper and context access against this kernel) and attach it
//! with a bpf_link to a throwaway cgroup (sk_lookup: a throwaway netns).
use std::{fs::File, io, path::Path};

use aya::{
    EbpfLoader,
    programs::{CgroupSockAddr, CgroupSockopt, SkLookup, SockOps},
};

use super::{
    EbpfError, PROGRAMS,
    attach::{LINK_MODE, SOCK_ADDR_PROGRAMS, SOCK_OPS_PROGRAM, SOCKOPT_PROGRAM, program},
    inbound,
};

/// One program's result.
#[derive(Debug)]
pub struct ProgramProbe {
    pub program: &'static str,
    /// `Err` holds the first line of the kernel's (or aya's) complaint.
    pub load: Result<(), String>,
    /// `Ok` says what it was attached to.
    pub attach: Result<&'static str, String>,
}

/// Loads every program with its maps pinned under `pin_dir` (removed afterwards) and
/// attaches it to `cgroup`; everything is detached and unloaded before returning.
pub fn probe_programs(pin_dir: &Path, cgroup: &Path) -> Result<Vec<ProgramProbe>, EbpfError> {
    std::fs::create_dir_all(pin_dir).map_err(|error| EbpfError::PinDir {
        path: pin_dir.into(),
        error,
    })?;
    let result = load_and_attach(pin_dir, cgroup);
    let _ = std::fs::remove_dir_all(pin_dir);
    result
}

/// Loads and attaches one program of the given aya type (to a cgroup, or with `attach`),
/// recording each step's outcome.
macro_rules! probe {
    ($ebpf:expr, $kind:ty, $name:expr, attach = $attach:expr) => {{
        let name: &'static str = $name;
        match program::<$kind>($ebpf, name).and_then(|prog| {
            prog.load()
                .map(|()| prog)
                .map_err(|error| EbpfError::Program { name, error })
        }) {
            Ok(prog) => ProgramProbe {
                program: name,
                load: Ok(()),
                attach: ($attach)(prog).map_err(|e| first_line(&e.to_string())),
            },
            Err(e) => ProgramProbe {
                program: name,
                load: Err(first_line(&e.to_string())),
                attach: Err("not loaded".into()),
            },
        }
    }};
    ($ebpf:expr, $kind:ty, $name:expr, $cgroup:expr) => {
        probe!(
            $ebpf,
            $kind,
            $name,
            attach = |prog: &mut $kind| prog
                .attach($cgroup, LINK_MODE)
                .map(|_| "bpf_link to a cgroup (multi)")
        )
    };
}

fn load_and_attach(pin_dir: &Path, cgroup: &Path) -> Result<Vec<ProgramProbe>, EbpfError> {
    let mut ebpf = EbpfLoader::new()
        .default_map_pin_directory(pin_dir)
        .load(PROGRAMS)?;
    let cgroup = File::open(cgroup).map_err(|error| EbpfError::Cgroup {
        path: cgroup.into(),
        error,
    })?;
    let mut probes: Vec<ProgramProbe> = SOCK_ADDR_PROGRAMS
        .into_iter()
        .map(|name| probe!(&mut ebpf, CgroupSockAddr, name, &cgroup))
        .collect();
    probes.push(probe!(&mut ebpf, SockOps, SOCK_OPS_PROGRAM, &cgroup));
    probes.push(probe!(&mut ebpf, CgroupSockopt, SOCKOPT_PROGRAM, &cgroup));
    probes.push(probe!(
        &mut ebpf,
        SkLookup,
        inbound::PROGRAM,
        attach = |prog: &mut SkLookup| -> Result<&'static str, String> {
            let netns = scratch_netns().map_err(|e| format!("making a scratch netns: {e}"))?;
            prog.attach(&netns)
                .map(|_| "bpf_link to a network namespace")
                .map_err(|e| e.to_string())
        }
    ));
    // Dropping `ebpf` detaches and unloads everything.
    Ok(probes)
}

/// A new, empty network namespace, alive as long as the returned handle: made on a thread
/// of its own, so none of the agent's threads changes namespace.
fn scratch_netns() -> io::Result<File> {
    std::thread::spawn(|| {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .map_err(|_| io::Error::other("the scratch netns thread panicked"))?
}

/// Verifier logs are long: keep the syscall's complaint and the log line that names the
/// rejected instruction (the last one before the statistics).
fn first_line(text: &str) -> String {
    let head = text.lines().next().unwrap_or_default();
    let head = head.split(". Verifier output").next().unwrap_or(head);
    let culprit = text
        .lines()
        .take_while(|l| !l.trim_start().starts_with("verification time"))
        .filter(|l| !l.trim().is_empty())
        .last()
        .map(str::trim);
    let summary = match culprit {
        Some(line) if !head.contains(line) => format!("{head}: {line}"),
        _ => head.to_owned(),
    };
    summary.chars().take(300).collect()
}
