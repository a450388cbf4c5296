//! The bench's node: a node netns with a bridge, a client pod and a server pod (each a netns
//! with `eth0` on that bridge and a cgroup), and the cgroup subtree the agent attaches to.
//!
//! Same shape as `tests/src/node.rs`, re-done with `ip`, `nsenter`, `taskset`, `prlimit` and
//! `setpriv` so xtask keeps its three dependencies and needs no `unsafe` `pre_exec`:
//!
//! ```text
//! <cgroup2>/sluice-bench-<pid>/    the agent's cgroupRoot
//!   agent/                         the agent (inside cgroupRoot, as a DaemonSet pod is)
//!   pods/client/  pods/server/     the pods
//! ```
//!
//! With the agent inside its cgroupRoot every program attaches there, so they see nothing
//! outside this subtree (no other agent on the machine answers for these sockets).
//!
//! Every name carries the creating pid (`slb-<pid>-...`), so leftovers of a run that was
//! killed are recognised and removed by the next run ([`sweep_stale`]).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;

pub const NODE_IP: &str = "10.79.0.1";
pub const CLIENT_IP: &str = "10.79.0.2";
pub const SERVER_IP: &str = "10.79.0.3";

/// Where a process runs: netns, cgroup, CPU, uid, file limit.
#[derive(Clone, Debug, Default)]
pub struct Place {
    pub netns: String,
    pub cgroup: Option<PathBuf>,
    pub cpu: Option<usize>,
    /// Run as this uid and gid (Envoy runs as Istio's 1337, which its iptables rules exempt).
    pub uid: Option<u32>,
    pub nofile: Option<u64>,
}

/// The netns, cgroups and work directory of one bench run; dropping it removes them all.
pub struct Topology {
    prefix: String,
    cgroup_base: PathBuf,
    workdir: PathBuf,
    namespaces: Vec<String>,
    /// CPUs for the client side (load generator, proxy) and the server.
    pub cpus: Cpus,
    /// Open-file limit for every process the bench starts (soft = hard = this).
    pub nofile: u64,
}

#[derive(Clone, Copy, Debug)]
pub struct Cpus {
    pub client: usize,
    pub server: usize,
    pub proxy: usize,
}

impl Topology {
    pub fn create(cpus: Cpus) -> Result<Topology> {
        let prefix = format!("slb-{}", std::process::id());
        let cg2 = cgroup2_mount()?;
        let mut topo = Topology {
            cgroup_base: cg2.join(format!("sluice-bench-{}", std::process::id())),
            workdir: std::env::temp_dir().join(format!("sluice-bench-{}", std::process::id())),
            namespaces: Vec::new(),
            prefix,
            cpus,
            nofile: super::procstat::nofile_hard().unwrap_or(1024).min(1 << 20),
        };
        // From here on, Drop removes whatever was made if a step fails.
        for dir in [
            topo.agent_cgroup(),
            topo.pod_cgroup("client"),
            topo.pod_cgroup("server"),
        ] {
            fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        fs::create_dir_all(&topo.workdir)
            .with_context(|| format!("mkdir {}", topo.workdir.display()))?;
        let node = topo.add_netns("node")?;
        ip(&node, &["link", "add", "br0", "type", "bridge"])?;
        ip(
            &node,
            &["addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"],
        )?;
        ip(&node, &["link", "set", "br0", "up"])?;
        for (pod, addr, veth) in [("client", CLIENT_IP, "vp2"), ("server", SERVER_IP, "vp3")] {
            let ns = topo.add_netns(pod)?;
            ip(
                &node,
                &[
                    "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
                ],
            )?;
            ip(&node, &["link", "set", veth, "master", "br0", "up"])?;
            ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"])?;
            ip(&ns, &["link", "set", "eth0", "up"])?;
            // A pod's default route, as in Kubernetes: the HTTP scenarios' service VIP is on
            // no interface, and without a route a connect to it fails before netfilter can
            // redirect it to a proxy (Envoy's and Sluice's netfilter modes). The node netns
            // forwards nothing, so what no proxy takes goes no further.
            ip(&ns, &["route", "add", "default", "via", NODE_IP])?;
        }
        // Every connection of every scenario is dialled from the client pod, by the client
        // and by a proxy dialling upstream from inside it: the memory scenario's 10,000 held
        // connections take 20,000 ports there, beside what the connect-rate scenario left in
        // TIME_WAIT, more than the default range (32768-60999) holds. In the server pod an
        // inbound sidecar dials the app again, from ports of its own. The same for every
        // contender.
        for pod in ["client", "server"] {
            sysctl(
                &topo.netns(pod),
                "net/ipv4/ip_local_port_range",
                "1024 65535",
            )?;
        }
        Ok(topo)
    }

    fn add_netns(&mut self, role: &str) -> Result<String> {
        let name = self.netns(role);
        cmd::stdout(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        ip(&name, &["link", "set", "lo", "up"])?;
        Ok(name)
    }

    /// `slb-<pid>-<role>` for `node`, `client`, `server`.
    pub fn netns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    pub fn netns_path(&self, role: &str) -> PathBuf {
        Path::new("/run/netns").join(self.netns(role))
    }

    /// The agent's node name (its pins live under `/sys/fs/bpf/sluice/<name>`).
    pub fn node_name(&self) -> &str {
        &self.prefix
    }

    pub fn agent_cgroup(&self) -> PathBuf {
        self.cgroup_base.join("agent")
    }

    pub fn cgroup_root(&self) -> PathBuf {
        self.cgroup_base.clone()
    }

    pub fn pod_cgroup(&self, pod: &str) -> PathBuf {
        self.cgroup_base.join("pods").join(pod)
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    /// A client-pod process on the client CPU.
    pub fn client(&self) -> Place {
        Place {
            netns: self.netns("client"),
            cgroup: Some(self.pod_cgroup("client")),
            cpu: Some(self.cpus.client),
            nofile: Some(self.nofile),
            uid: None,
        }
    }

    /// A server-pod process on the server CPU.
    pub fn server(&self) -> Place {
        Place {
            netns: self.netns("server"),
            cgroup: Some(self.pod_cgroup("server")),
            cpu: Some(self.cpus.server),
            nofile: Some(self.nofile),
            uid: None,
        }
    }

    /// A short helper run in a netns (no cgroup, no pinning): HTTP probes, iptables.
    pub fn plain(&self, role: &str) -> Place {
        Place {
            netns: self.netns(role),
            ..Place::default()
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        // Processes were killed by their `Proc` handles; cgroups are empty a moment later.
        remove_cgroup_tree(&self.cgroup_base);
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = cmd::stdout(Command::new("ip").args(["netns", "delete", ns])) {
                eprintln!("bench: {e:#}");
            }
        }
        let _ = fs::remove_dir_all(&self.workdir);
    }
}

fn ip(netns: &str, args: &[&str]) -> Result<String> {
    cmd::stdout(Command::new("ip").arg("-n").arg(netns).args(args))
}

/// Sets `/proc/sys/<key>` inside `netns` (the `net/` ones are per netns).
fn sysctl(netns: &str, key: &str, value: &str) -> Result<String> {
    cmd::stdout(
        Command::new("ip")
            .args(["netns", "exec", netns, "sh", "-c"])
            .arg(format!("echo '{value}' > /proc/sys/{key}")),
    )
}

/// A command that runs `program` in `place`: the shell moves itself into the cgroup, then
/// execs the chain `nsenter` → `prlimit` → `taskset` → `setpriv`, so the pid stays the
/// program's own (CPU time and RSS are read from it) and it dies with this process.
pub fn command(place: &Place, program: impl AsRef<Path>, args: &[String]) -> Command {
    let mut c = Command::new("sh");
    let procs = place
        .cgroup
        .as_ref()
        .map(|cg| cg.join("cgroup.procs").display().to_string())
        .unwrap_or_default();
    c.args([
        "-c",
        r#"if [ -n "$0" ]; then echo 0 > "$0" || exit 125; fi; exec "$@""#,
        &procs,
        "nsenter",
        &format!("--net=/run/netns/{}", place.netns),
        "--",
    ]);
    if let Some(n) = place.nofile {
        c.args(["prlimit", &format!("--nofile={n}:{n}"), "--"]);
    }
    if let Some(cpu) = place.cpu {
        c.args(["taskset", "-c", &cpu.to_string()]);
    }
    c.args(["setpriv", "--pdeathsig", "KILL"]);
    if let Some(uid) = place.uid {
        c.args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
        ]);
    }
    c.arg("--").arg(program.as_ref()).args(args);
    c
}

/// Runs a short command in `place` and returns its stdout.
pub fn output(place: &Place, program: impl AsRef<Path>, args: &[String]) -> Result<String> {
    cmd::stdout(&mut command(place, program, args))
}

/// A long-running child, killed by pid when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    /// Starts `program` in `place` with its output in `<workdir>/<name>.log`.
    pub fn spawn(
        topo: &Topology,
        name: &str,
        place: &Place,
        program: impl AsRef<Path>,
        args: &[String],
    ) -> Result<Proc> {
        let log = topo.workdir().join(format!("{name}.log"));
        let file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut c = command(place, program, args);
        c.stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = c
            .spawn()
            .with_context(|| format!("starting {name}: `{}`", cmd::describe(&c)))?;
        Ok(Proc {
            name: name.to_string(),
            child,
            log,
        })
    }

    /// Wraps a child spawned elsewhere (with piped stdio).
    pub fn from_child(topo: &Topology, name: &str, child: Child) -> Proc {
        Proc {
            name: name.to_string(),
            child,
            log: topo.workdir().join(format!("{name}.log")),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Fails with the log's tail if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); log:\n{}",
                self.name,
                self.log_tail(30)
            );
        }
        Ok(())
    }

    pub fn log_tail(&self, n: usize) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Waits up to `timeout` for the process to end on its own.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The cgroup2 mount point, from mountinfo (hybrid hosts mount it at `.../unified`).
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            if right.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            Some(PathBuf::from(left.split_whitespace().nth(4)?))
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

/// Removes a cgroup directory and its children, deepest first; an exiting process can keep
/// a cgroup busy for a moment, so each rmdir is retried for a second.
fn remove_cgroup_tree(dir: &Path) {
    if !dir.exists() {
        return;
    }
    if let Ok(entries) = fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&e.path());
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Err(e) = fs::remove_dir(dir) {
        if Instant::now() > deadline {
            eprintln!("bench: removing {}: {e}", dir.display());
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Removes netns and cgroups of earlier bench runs whose process is gone (killed before
/// their Drop ran). Their processes died with them (`--pdeathsig`).
pub fn sweep_stale() {
    let dead = |pid: &str| {
        pid.parse::<u32>()
            .is_ok_and(|p| !Path::new(&format!("/proc/{p}")).exists())
    };
    if let Ok(cg2) = cgroup2_mount()
        && let Ok(entries) = fs::read_dir(&cg2)
    {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix("sluice-bench-").is_some_and(dead) {
                eprintln!("bench: removing stale cgroup {name}");
                remove_cgroup_tree(&e.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/sys/fs/bpf/sluice") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name.strip_prefix("slb-");
            if pid.is_some_and(dead) {
                // Removing pinned links detaches their programs.
                eprintln!("bench: removing stale pins {name}");
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.strip_prefix("sluice-bench-").is_some_and(dead) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    if let Ok(entries) = fs::read_dir("/run/netns") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("slb-")
                .and_then(|rest| rest.split_once('-'))
                .map(|(pid, _)| pid);
            if pid.is_some_and(dead) {
                eprintln!("bench: removing stale netns {name}");
                let _ = cmd::stdout(Command::new("ip").args(["netns", "delete", &name]));
            }
        }
    }
}
