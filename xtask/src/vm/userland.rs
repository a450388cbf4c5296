//! The host programs the guest borrows, with everything they load: iproute2's `ip` (busybox
//! `ip` cannot make veth pairs), `bpftool`, and the netfilter tools the agent and the tests
//! drive (`nft`, the iptables nf_tables and legacy multi-call binaries under every name they
//! are called by, and the xtables extensions they `dlopen`). Busybox supplies `sh`, `cat`
//! and the rest.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::host;

/// A host program and the names it is also called by (symlinks next to it in the guest).
struct Program {
    binary: &'static str,
    aliases: &'static [&'static str],
}

/// What the agent (`redirect/netfilter/backend.rs`, `check`) and the tests
/// (`tests/src/netfilter.rs`) run, plus the plain names an operator types.
const PROGRAMS: &[Program] = &[
    Program {
        binary: "ip",
        aliases: &[],
    },
    Program {
        binary: "bpftool",
        aliases: &[],
    },
    Program {
        binary: "nft",
        aliases: &[],
    },
    Program {
        binary: "xtables-nft-multi",
        aliases: &[
            "iptables",
            "iptables-save",
            "iptables-restore",
            "ip6tables",
            "ip6tables-save",
            "ip6tables-restore",
            "iptables-nft",
            "iptables-nft-save",
            "iptables-nft-restore",
            "ip6tables-nft",
            "ip6tables-nft-save",
            "ip6tables-nft-restore",
        ],
    },
    Program {
        binary: "xtables-legacy-multi",
        aliases: &[
            "iptables-legacy",
            "iptables-legacy-save",
            "iptables-legacy-restore",
            "ip6tables-legacy",
            "ip6tables-legacy-save",
            "ip6tables-legacy-restore",
        ],
    },
];

/// Where libxtables looks for its extensions (compiled in; Debian and Ubuntu first). The
/// extensions are `dlopen`ed by match or target name, so `ldd` of the binaries misses them.
const XTABLES_DIRS: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/xtables",
    "/usr/lib64/xtables",
    "/usr/lib/xtables",
];

/// Files (guest path -> host file) and symlinks (guest path -> target) for the initramfs.
#[derive(Default)]
pub struct Userland {
    pub files: BTreeMap<String, PathBuf>,
    pub links: BTreeMap<String, String>,
}

impl Userland {
    /// Gathers [`PROGRAMS`], the xtables extensions and every shared library they load.
    /// Libraries keep their host paths, where the host's loader looks for them.
    pub fn gather() -> Result<Userland> {
        let mut land = Userland::default();
        for program in PROGRAMS {
            let binary = host::locate(program.binary)
                .with_context(|| format!("{} is not installed", program.binary))?;
            land.add_with_libraries(&format!("usr/sbin/{}", program.binary), &binary)?;
            for alias in program.aliases {
                land.links
                    .insert(format!("usr/sbin/{alias}"), program.binary.to_owned());
            }
        }
        let xtables = XTABLES_DIRS
            .iter()
            .map(Path::new)
            .find(|dir| dir.is_dir())
            .with_context(|| format!("no xtables extension directory in {XTABLES_DIRS:?}"))?;
        let entries = std::fs::read_dir(xtables)
            .with_context(|| format!("cannot list {}", xtables.display()))?;
        for entry in entries {
            let path = entry
                .with_context(|| format!("cannot list {}", xtables.display()))?
                .path();
            if path.extension().is_some_and(|ext| ext == "so") {
                land.add_with_libraries(&path.to_string_lossy(), &path)?;
            }
        }
        Ok(land)
    }

    fn add_with_libraries(&mut self, guest: &str, binary: &Path) -> Result<()> {
        self.files.insert(guest.to_owned(), binary.to_owned());
        for library in host::shared_libraries(binary)? {
            self.files
                .insert(library.to_string_lossy().into_owned(), library);
        }
        Ok(())
    }
}
