//! Privileged test bed for Sluice.
//!
//! A [`Node`] is a network namespace holding a Linux bridge (the agent runs there); each
//! [`Pod`] is a network namespace, a cgroup v2 directory and a veth pair onto that bridge.
//! Everything is real, so the eBPF programs the agent attaches see exactly what they would
//! see on a Kubernetes node. All objects carry a per-run prefix (`sl-<pid>-<n>`) so tests in
//! one process can run in parallel and leftovers of crashed runs can be recognised and swept.

pub mod agent;
pub mod bpf;
pub mod capture;
pub mod cgroup;
pub mod cluster;
pub mod cmd;
pub mod cni;
pub mod echo;
pub mod http;
pub mod http_app;
pub mod identity;
pub mod inbound;
pub mod kube;
pub mod kube_api;
pub mod l7;
pub mod link_capture;
pub mod mesh;
pub mod metrics;
pub mod mode;
pub mod netfilter;
pub mod netns;
pub mod node;
pub mod otlp;
pub mod pod;
pub mod precheck;
pub mod proc;
pub mod scenario;
pub mod serve;
pub mod sock;
pub mod sweep;
pub mod tcp_flows;
pub mod wire;

pub use agent::{Agent, AgentConfig, Workload, delta};
pub use capture::{Flows, Snapshot};
pub use cluster::NodeLink;
pub use identity::TestCa;
pub use link_capture::LinkCapture;
pub use metrics::Metrics;
pub use mode::Mode;
pub use node::Node;
pub use pod::{DialOpts, Pod};
pub use proc::{Proc, Server};
pub use wire::{ConnResult, DialReport};

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Every name this crate creates starts with this, followed by the creating pid.
pub const PREFIX: &str = "sl-";

/// A name unique within this machine while this process lives: `sl-<pid>-<n>`.
pub fn unique_prefix() -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{PREFIX}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The workspace root, known at compile time (the agent binary is found relative to it).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The `sluice-testapp` binary: `SLUICE_TESTAPP_BIN`, else next to the running executable
/// (binaries) or one directory up (integration tests live in `target/<profile>/deps/`).
pub fn testapp_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("SLUICE_TESTAPP_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let dir = exe.parent().map(PathBuf::from).unwrap_or_default();
    for d in [Some(dir.as_path()), dir.parent()].into_iter().flatten() {
        let candidate = d.join("sluice-testapp");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "sluice-testapp not found near {}; build it (cargo build -p tests) or set SLUICE_TESTAPP_BIN",
        exe.display()
    )
}

/// The agent binary: `SLUICE_AGENT_BIN`, else `<workspace>/target/debug/mesh-agent`.
/// A missing binary is an error, never a skip.
pub fn agent_bin() -> anyhow::Result<PathBuf> {
    let p = match std::env::var_os("SLUICE_AGENT_BIN") {
        Some(p) => PathBuf::from(p),
        None => workspace_root().join("target/debug/mesh-agent"),
    };
    anyhow::ensure!(
        p.is_file(),
        "agent binary {} does not exist: build it (cargo build -p mesh-agent) or set SLUICE_AGENT_BIN",
        p.display()
    );
    Ok(p)
}

/// Calls `f` every 100 ms until it yields `Some`, or fails after `timeout` with the last
/// error or the last `None` described by `what`.
pub fn poll_until<T>(
    timeout: std::time::Duration,
    what: &str,
    mut f: impl FnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => String::from("condition not met"),
            Err(e) => format!("{e:#}"),
        };
        if std::time::Instant::now() > deadline {
            anyhow::bail!("{what}: not within {timeout:?} ({last})");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}
