//! A node: a netns with a bridge (where the agent runs), a cgroup subtree for the agent and
//! its pods, and a work directory for the agent's config and log.
//!
//! cgroup layout, like a Kubernetes node where the agent is a DaemonSet pod inside the
//! `cgroupRoot` it attaches to:
//!
//! ```text
//! <cgroup2>/sluice-test-<prefix>/        cgroup_root(): the agent's `cgroupRoot`
//!   agent/                               agent_cgroup(): the agent process
//!   pods/<pod>/[<container>/]            the pods
//! ```
//!
//! The agent attaches every program at `cgroupRoot`, so its programs see its own sockets
//! too (they are counted as not enrolled) and nothing outside this node's subtree: parallel
//! tests' agents never answer each other's `SO_ORIGINAL_DST` lookups. Were the agent outside
//! `cgroupRoot`, it would have to attach sock_ops and getsockopt higher up, at the nearest
//! cgroup holding both, and says so in its log; the test bed fails on that warning.

use crate::cgroup;
use crate::netns::NetNs;
use crate::pod::{Pod, PodInner};
use crate::proc::lock;
use anyhow::{Context, Result, ensure};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Owns every pod it made; dropping it tears all of them down, even during a panic.
pub struct Node {
    prefix: String,
    pub(crate) netns: NetNs,
    subnet: u8,
    test_cgroup: PathBuf,
    workdir: PathBuf,
    testapp: PathBuf,
    pods: Mutex<Vec<Arc<PodInner>>>,
    next_host: AtomicU8,
}

impl Node {
    /// Makes the node netns (bridge `br0`, 10.77.S.1/24), its cgroup subtree
    /// `<cgroup2>/sluice-test-<prefix>/` (see the module doc) and work directory `/tmp/sluice-test-<prefix>/`.
    pub fn new() -> Result<Node> {
        crate::sweep::sweep_stale_once();
        static SUBNET: AtomicUsize = AtomicUsize::new(0);
        let testapp = crate::testapp_bin()?;
        let prefix = crate::unique_prefix();
        let cg2 = cgroup::cgroup2_mount()?;
        let node = Node {
            netns: NetNs::create(&format!("{prefix}-node"))?,
            subnet: (SUBNET.fetch_add(1, Ordering::Relaxed) % 250) as u8,
            test_cgroup: cg2.join(format!("sluice-test-{prefix}")),
            workdir: std::env::temp_dir().join(format!("sluice-test-{prefix}")),
            testapp,
            pods: Mutex::new(Vec::new()),
            next_host: AtomicU8::new(2),
            prefix,
        };
        // From here on, Drop cleans up whatever exists if a step fails.
        for dir in [node.agent_cgroup(), node.pods_cgroup()] {
            std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        }
        std::fs::create_dir_all(&node.workdir)?;
        let gw = format!("{}/24", node.gateway());
        let gw6 = format!("{}/64", node.gateway6());
        node.netns.ip(&["link", "add", "br0", "type", "bridge"])?;
        node.netns.ip(&["addr", "add", &gw, "dev", "br0"])?;
        node.netns
            .ip(&["addr", "add", &gw6, "dev", "br0", "nodad"])?;
        node.netns.ip(&["link", "set", "br0", "up"])?;
        Ok(node)
    }

    /// The unique prefix; also used as the agent's node name (pins live under it).
    pub fn name(&self) -> &str {
        &self.prefix
    }

    pub fn netns_path(&self) -> PathBuf {
        self.netns.path()
    }

    /// `<cgroup2>/sluice-test-<prefix>`: the agent's `cgroupRoot`.
    pub fn cgroup_root(&self) -> PathBuf {
        self.test_cgroup.clone()
    }

    /// `<cgroup2>/sluice-test-<prefix>/pods`: the parent of every pod's cgroup.
    pub fn pods_cgroup(&self) -> PathBuf {
        self.test_cgroup.join("pods")
    }

    /// `<cgroup2>/sluice-test-<prefix>/agent`: where the agent process runs.
    pub fn agent_cgroup(&self) -> PathBuf {
        self.test_cgroup.join("agent")
    }

    /// `<cgroup2>/sluice-test-<prefix>`: the whole subtree (check it for leftover programs).
    pub fn test_cgroup(&self) -> &Path {
        &self.test_cgroup
    }

    pub fn workdir(&self) -> &Path {
        &self.workdir
    }

    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    pub fn gateway6(&self) -> Ipv6Addr {
        Ipv6Addr::new(0xfd77, 0, 0, u16::from(self.subnet), 0, 0, 0, 1)
    }

    /// The pods' IPv4 subnet, `10.77.S.0/24`.
    pub fn pod_subnet(&self) -> String {
        format!("10.77.{}.0/24", self.subnet)
    }

    /// The pods' IPv6 subnet, `fd77:0:0:S::/64`.
    pub fn pod_subnet6(&self) -> String {
        format!("fd77:0:0:{:x}::/64", self.subnet)
    }

    /// `S` of this node's subnets: unique among the nodes of this process.
    pub fn subnet(&self) -> u8 {
        self.subnet
    }

    /// Adds a pod: netns `<prefix>-<name>`, `eth0` with 10.77.S.N/24 and fd77:0:0:S::N/64
    /// bridged to the node, default routes (both families) via the node's `br0`, and cgroup
    /// `<pods_cgroup>/<name>`. The default routes only matter once the node is linked to
    /// another (`crate::cluster`): until then the node forwards nothing.
    pub fn add_pod(&self, name: &str) -> Result<Pod> {
        self.add_pod_at(name, self.pods_cgroup().join(name))
    }

    /// [`Node::add_pod`] with the cgroup where the kubelet puts a pod with this UID, with
    /// the systemd driver (`kubepods.slice/kubepods-burstable.slice/
    /// kubepods-burstable-pod<uid_>.slice`) or cgroupfs (`kubepods/besteffort/pod<uid>`),
    /// under the agent's `cgroupRoot`.
    pub fn add_kubelet_pod(&self, name: &str, uid: &str, systemd: bool) -> Result<Pod> {
        let relative = if systemd {
            format!(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice",
                uid.replace('-', "_")
            )
        } else {
            format!("kubepods/besteffort/pod{uid}")
        };
        let cgroup = self.cgroup_root().join(relative);
        if let Some(parent) = cgroup.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("mkdir {}", parent.display()))?;
        }
        self.add_pod_at(name, cgroup)
    }

    fn add_pod_at(&self, name: &str, cgroup: PathBuf) -> Result<Pod> {
        ensure!(
            !name.is_empty()
                && name.len() <= 24
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
            "pod name {name:?}: use 1-24 of [a-z0-9-]"
        );
        let host = self.next_host.fetch_add(1, Ordering::Relaxed);
        ensure!(host < 250, "too many pods on one node");
        let netns = NetNs::create(&format!("{}-{name}", self.prefix))?;
        let inner = Arc::new(PodInner {
            name: name.to_string(),
            cgroup,
            ip: Ipv4Addr::new(10, 77, self.subnet, host),
            ip6: Ipv6Addr::new(
                0xfd77,
                0,
                0,
                u16::from(self.subnet),
                0,
                0,
                0,
                u16::from(host),
            ),
            testapp: self.testapp.clone(),
            netns,
        });
        lock(&self.pods).push(inner.clone());
        // The node-side veth lives only in the node netns, so short names cannot collide
        // across tests and stay within the 15-character limit.
        let veth = format!("vp{host}");
        self.netns.ip(&[
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            inner.netns.name(),
        ])?;
        self.netns
            .ip(&["link", "set", &veth, "master", "br0", "up"])?;
        let ns = &inner.netns;
        ns.ip(&["addr", "add", &format!("{}/24", inner.ip), "dev", "eth0"])?;
        ns.ip(&[
            "addr",
            "add",
            &format!("{}/64", inner.ip6),
            "dev",
            "eth0",
            "nodad",
        ])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&[
            "route",
            "add",
            "default",
            "via",
            &self.gateway().to_string(),
        ])?;
        ns.ip(&[
            "-6",
            "route",
            "add",
            "default",
            "via",
            &self.gateway6().to_string(),
        ])?;
        std::fs::create_dir(&inner.cgroup)
            .with_context(|| format!("mkdir {}", inner.cgroup.display()))?;
        Ok(Pod { inner })
    }

    /// [`Node::add_pod`] for each name, in order.
    pub fn add_pods<const N: usize>(&self, names: [&str; N]) -> Result<[Pod; N]> {
        let pods = names
            .iter()
            .map(|name| self.add_pod(name))
            .collect::<Result<Vec<Pod>>>()?;
        Ok(pods
            .try_into()
            .unwrap_or_else(|_| unreachable!("one pod per name")))
    }

    /// Dials `target` once from the node's own netns, outside every pod and outside
    /// `cgroupRoot` (as the kubelet probes a pod), and returns that connection's result.
    pub fn dial_one(&self, target: std::net::SocketAddr, bytes: u64) -> Result<crate::ConnResult> {
        let opts = crate::DialOpts::bytes(bytes);
        let mut cmd = std::process::Command::new(&self.testapp);
        cmd.args(opts.args(target));
        crate::pod::enter(&mut cmd, std::fs::File::open(self.netns_path())?, None);
        let proc = crate::proc::Proc::spawn(&format!("dial {target} from the node"), cmd)?;
        let mut report = crate::pod::finish_dial(proc, &opts)?;
        report.results.pop().context("dial printed no result")
    }

    /// Every pod made so far.
    pub fn pods(&self) -> Vec<Pod> {
        lock(&self.pods)
            .iter()
            .map(|inner| Pod {
                inner: inner.clone(),
            })
            .collect()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let pods = std::mem::take(&mut *lock(&self.pods));
        for pod in pods.iter().rev() {
            if let Err(e) = cgroup::remove_tree(&pod.cgroup) {
                eprintln!("sluice-tests: removing {}: {e:#}", pod.cgroup.display());
            }
            pod.netns.delete();
        }
        if let Err(e) = cgroup::remove_tree(&self.test_cgroup) {
            eprintln!(
                "sluice-tests: removing {}: {e:#}",
                self.test_cgroup.display()
            );
        }
        self.netns.delete();
        let _ = std::fs::remove_dir_all(&self.workdir);
    }
}
