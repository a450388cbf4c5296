//! A pod: its own netns (eth0 on the node bridge, loopback up) and cgroup v2 directory.

use crate::netns::NetNs;
use crate::proc::{Proc, Server};
use crate::wire::DialReport;
use anyhow::{Context, Result, bail};
use std::fs::{self, File};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use crate::wire::ConnResult;

/// A handle to a pod; the [`crate::Node`] that made it owns its teardown.
#[derive(Clone)]
pub struct Pod {
    pub(crate) inner: Arc<PodInner>,
}

pub(crate) struct PodInner {
    pub name: String,
    pub netns: NetNs,
    pub cgroup: PathBuf,
    pub ip: Ipv4Addr,
    pub ip6: Ipv6Addr,
    pub testapp: PathBuf,
}

/// Options for `sluice-testapp dial`.
#[derive(Clone, Debug)]
pub struct DialOpts {
    pub bytes: u64,
    /// `SO_MARK` on each socket before it connects (the proxy's own mark bypasses capture).
    pub mark: Option<u32>,
    pub recv_bytes: Option<u64>,
    pub count: usize,
    pub concurrency: usize,
    /// Open every connection before any data flows.
    pub barrier: bool,
    pub timeout_ms: u64,
}

impl Default for DialOpts {
    fn default() -> Self {
        DialOpts {
            bytes: 1024,
            recv_bytes: None,
            count: 1,
            concurrency: 1,
            barrier: false,
            timeout_ms: 5000,
            mark: None,
        }
    }
}

impl DialOpts {
    pub fn bytes(n: u64) -> Self {
        DialOpts {
            bytes: n,
            ..Default::default()
        }
    }

    /// `count` connections, `concurrency` at a time.
    pub fn times(mut self, count: usize, concurrency: usize) -> Self {
        self.count = count;
        self.concurrency = concurrency;
        self
    }

    pub fn mark(mut self, mark: u32) -> Self {
        self.mark = Some(mark);
        self
    }

    pub(crate) fn args(&self, target: SocketAddr) -> Vec<String> {
        let mut a = vec![
            "dial".to_string(),
            target.to_string(),
            "--bytes".into(),
            self.bytes.to_string(),
            "--count".into(),
            self.count.to_string(),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "--timeout-ms".into(),
            self.timeout_ms.to_string(),
        ];
        if let Some(m) = self.recv_bytes {
            a.extend(["--recv-bytes".into(), m.to_string()]);
        }
        if self.barrier {
            a.push("--barrier".into());
        }
        if let Some(mark) = self.mark {
            a.extend(["--mark".into(), mark.to_string()]);
        }
        a
    }
}

impl Pod {
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.inner.ip
    }

    pub fn ip6(&self) -> Ipv6Addr {
        self.inner.ip6
    }

    pub fn netns_path(&self) -> PathBuf {
        self.inner.netns.path()
    }

    pub fn netns_name(&self) -> &str {
        self.inner.netns.name()
    }

    /// The pod's cgroup directory (absolute).
    pub fn cgroup(&self) -> &Path {
        &self.inner.cgroup
    }

    /// Creates a child cgroup of the pod cgroup: the Kubernetes pod/container layout.
    pub fn container(&self, name: &str) -> Result<PathBuf> {
        let dir = self.inner.cgroup.join(name);
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        Ok(dir)
    }

    /// A command that runs in the pod's netns and cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        self.command_in(&self.inner.cgroup, program)
    }

    /// A command that runs in the pod's netns and in `cgroup` (the pod's or one below it).
    ///
    /// The child enters both in `pre_exec`, so its sockets are created in the pod and belong
    /// to that cgroup. It also gets `PDEATHSIG=SIGKILL`, which fires when the *thread* that
    /// spawned it exits: spawn from the test's own thread, not from short-lived helpers.
    pub fn command_in(
        &self,
        cgroup: &Path,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command> {
        anyhow::ensure!(
            cgroup.starts_with(&self.inner.cgroup),
            "{} is not inside pod cgroup {}",
            cgroup.display(),
            self.inner.cgroup.display()
        );
        let procs_path = cgroup.join("cgroup.procs");
        let procs = File::options()
            .write(true)
            .open(&procs_path)
            .with_context(|| format!("opening {}", procs_path.display()))?;
        let ns = File::open(self.netns_path())?;
        let mut cmd = Command::new(program);
        enter(&mut cmd, ns, Some(procs));
        Ok(cmd)
    }

    /// Starts `sluice-testapp serve` on `port` (all addresses) answering with identity `id`.
    pub fn serve(&self, port: u16, id: &str) -> Result<Server> {
        self.serve_args(port, id, &[])
    }

    /// Like [`Pod::serve`] with extra arguments (`--ipv6`, `--bind ADDR`).
    pub fn serve_args(&self, port: u16, id: &str, extra: &[&str]) -> Result<Server> {
        let mut cmd = self.command(&self.inner.testapp)?;
        cmd.args(["serve", "--port", &port.to_string(), "--id", id])
            .args(extra);
        let proc = Proc::spawn(&format!("server {id} in {}", self.name()), cmd)?;
        proc.wait_line(Duration::from_secs(10), |l| l.starts_with("READY "))?;
        Ok(Server {
            proc,
            id: id.to_string(),
            port,
        })
    }

    /// Starts `sluice-testapp dial` in the pod cgroup without waiting; see [`finish_dial`].
    pub fn spawn_dial(&self, target: SocketAddr, opts: &DialOpts) -> Result<Proc> {
        self.spawn_dial_in(&self.inner.cgroup, target, opts)
    }

    /// Starts `sluice-testapp dial` in `cgroup` (the pod's or a child) without waiting.
    pub fn spawn_dial_in(
        &self,
        cgroup: &Path,
        target: SocketAddr,
        opts: &DialOpts,
    ) -> Result<Proc> {
        let mut cmd = self.command_in(cgroup, &self.inner.testapp)?;
        cmd.args(opts.args(target));
        Proc::spawn(&format!("dial {target} from {}", self.name()), cmd)
    }

    /// Dials from the pod cgroup and returns the report.
    pub fn dial(&self, target: SocketAddr, opts: &DialOpts) -> Result<DialReport> {
        finish_dial(self.spawn_dial(target, opts)?, opts)
    }

    /// Dials from `cgroup` (a child of the pod cgroup) and returns the report.
    pub fn dial_in(
        &self,
        cgroup: &Path,
        target: SocketAddr,
        opts: &DialOpts,
    ) -> Result<DialReport> {
        finish_dial(self.spawn_dial_in(cgroup, target, opts)?, opts)
    }

    /// Dials once and returns that connection's result.
    pub fn dial_one(&self, target: SocketAddr, bytes: u64) -> Result<ConnResult> {
        let mut report = self.dial(target, &DialOpts::bytes(bytes))?;
        report.results.pop().context("dial printed no result")
    }

    /// TCP sockets listening inside the pod netns (from `/proc/thread-self/net/tcp{,6}`).
    pub fn listeners(&self) -> Result<Vec<SocketAddr>> {
        crate::netns::run_in(&self.netns_path(), || {
            let mut out = parse_listeners(&fs::read_to_string("/proc/thread-self/net/tcp")?, false);
            if let Ok(t6) = fs::read_to_string("/proc/thread-self/net/tcp6") {
                out.extend(parse_listeners(&t6, true));
            }
            Ok(out)
        })
    }
}

/// Waits for a dial process (generous: the app has its own per-connection timeouts).
pub fn finish_dial(mut proc: Proc, opts: &DialOpts) -> Result<DialReport> {
    let per_conn = Duration::from_millis(opts.timeout_ms.saturating_mul(3));
    let rounds = opts.count.div_ceil(opts.concurrency.max(1)).max(1) as u32;
    let budget = per_conn * if opts.barrier { 1 } else { rounds } + Duration::from_secs(10);
    let status = proc.wait(budget)?;
    let lines = proc.lines();
    let Some(line) = lines.iter().find(|l| l.starts_with('{')) else {
        bail!(
            "dial ({status}) printed no report; stdout {lines:?}; stderr {}",
            proc.stderr()
        );
    };
    serde_json::from_str(line).with_context(|| format!("parsing dial report {line}"))
}

/// Sets up `pre_exec` so the child enters the netns and, if given, the cgroup.
pub(crate) fn enter(cmd: &mut Command, netns: File, cgroup_procs: Option<File>) {
    // SAFETY: the closure only makes async-signal-safe syscalls on fds opened beforehand.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(procs) = &cgroup_procs
                && libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) != 1
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Listening sockets from a `/proc/net/tcp` style table (state `0A`).
fn parse_listeners(table: &str, v6: bool) -> Vec<SocketAddr> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(3) != Some(&"0A") {
                return None;
            }
            let (addr, port) = f.get(1)?.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            let ip = if v6 {
                let mut bytes = [0u8; 16];
                for i in 0..4 {
                    let word = u32::from_str_radix(addr.get(i * 8..i * 8 + 8)?, 16).ok()?;
                    bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
                }
                IpAddr::V6(Ipv6Addr::from(bytes))
            } else {
                IpAddr::V4(Ipv4Addr::from(
                    u32::from_str_radix(addr, 16).ok()?.to_ne_bytes(),
                ))
            };
            Some(SocketAddr::new(ip, port))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_listeners() {
        let t = "  sl  local_address rem_address   st\n   0: 0100017F:3A99 00000000:0000 0A 0\n   1: 0100007F:1F90 0200007F:D431 01 0\n";
        assert_eq!(
            parse_listeners(t, false),
            vec!["127.1.0.1:15001".parse().unwrap()]
        );
        let t6 = "sl\n 0: 00000000000000000000000001000000:1F90 0 0A\n";
        assert_eq!(
            parse_listeners(t6, true),
            vec!["[::1]:8080".parse().unwrap()]
        );
    }
}
