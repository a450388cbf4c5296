//! Running `mesh-agent` in a node's netns: config file, readiness, HTTP endpoints, reload,
//! and a teardown that kills it by pid and runs `mesh-agent cleanup`.

use crate::http::{self, Response};
use crate::identity::Identity;
use crate::metrics::Metrics;
use crate::mode::Mode;
use crate::node::Node;
use crate::pod::Pod;
use anyhow::{Context, Result, bail, ensure};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const ADMIN: &str = "127.0.0.1:15000";
pub const METRICS: &str = "127.0.0.1:15020";
pub const READINESS: &str = "127.0.0.1:15021";

/// What the agent logs when it is not inside its `cgroupRoot` and has to attach sock_ops and
/// getsockopt above it (`mesh-agent/src/redirect/ebpf/attach.rs`).
pub const OUTSIDE_ROOT_WARNING: &str = "runs outside cgroupRoot";

/// The agent's YAML config (camelCase keys), as the agent's interface defines it.
#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct AgentConfig {
    pub node: String,
    pub cgroup_root: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bpffs_root: Option<PathBuf>,
    pub admin_address: String,
    pub metrics_address: String,
    pub readiness_address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proxy: Option<ProxyConfig>,
    /// `None`: the agent's default (`auto`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect: Option<RedirectConfig>,
    /// Certificates for the mesh tunnel; `None`: mTLS off on this node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<Identity>,
    pub workloads: Vec<Workload>,
    /// Istio-shaped `AuthorizationPolicy` objects (`name`, `namespace`, `selector`,
    /// `action`, `rules`), written inline with `serde_json::json!`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub authorization_policies: Vec<serde_json::Value>,
    /// Istio-shaped `PeerAuthentication` objects (`name`, `namespace`, `selector`, `mtls`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peer_authentications: Vec<serde_json::Value>,
}

#[derive(Serialize, Clone, Debug)]
pub struct RedirectConfig {
    pub mode: Mode,
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct ProxyConfig {
    pub connect_timeout: String,
    pub idle_timeout: String,
}

#[derive(Serialize, Clone, Debug)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// What policies' `selector.matchLabels` match.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub ips: Vec<String>,
    /// The node the pod runs on; `None`: this node. Enrolled on another node means in the
    /// mesh but captured there: connections to it go through the tunnel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub netns: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<PathBuf>,
    pub enrolled: bool,
    /// Overrides the node's redirect mode for this pod.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_mode: Option<Mode>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_ports: Vec<u16>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_cidrs: Vec<String>,
    /// Ports never captured inbound (the tunnel port never is either).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub exclude_inbound_ports: Vec<u16>,
}

impl Workload {
    /// An enrolled (captured) pod, named after the pod, namespace `default`.
    pub fn enrolled(pod: &Pod) -> Workload {
        Workload {
            name: pod.name().to_string(),
            namespace: "default".into(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
            ips: vec![pod.ip().to_string(), pod.ip6().to_string()],
            node: None,
            netns: Some(pod.netns_path()),
            cgroup: Some(pod.cgroup().to_path_buf()),
            enrolled: true,
            redirect_mode: None,
            exclude_ports: Vec::new(),
            exclude_cidrs: Vec::new(),
            exclude_inbound_ports: Vec::new(),
        }
    }

    /// A known but not captured pod (gives destinations a workload name).
    pub fn known(pod: &Pod) -> Workload {
        Workload {
            enrolled: false,
            netns: None,
            cgroup: None,
            ..Workload::enrolled(pod)
        }
    }

    /// An enrolled pod of another node (`node`: that node's name, e.g. [`Node::name`]): in
    /// the mesh, captured there, reached from here through the tunnel.
    pub fn remote(pod: &Pod, node: &str) -> Workload {
        Workload::enrolled(pod).on_node(node)
    }

    /// Places this workload on another node: `node` set, no netns or cgroup here.
    pub fn on_node(mut self, node: &str) -> Workload {
        self.node = Some(node.to_string());
        self.netns = None;
        self.cgroup = None;
        self
    }

    pub fn namespace(mut self, namespace: &str) -> Workload {
        self.namespace = namespace.to_string();
        self
    }

    pub fn service_account(mut self, service_account: &str) -> Workload {
        self.service_account = service_account.to_string();
        self
    }

    /// Adds labels (`selector.matchLabels` of policies match them).
    pub fn labels(mut self, labels: &[(&str, &str)]) -> Workload {
        self.labels
            .extend(labels.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self
    }

    /// How policies name this workload: `cluster.local/ns/<ns>/sa/<sa>`.
    pub fn principal(&self) -> String {
        crate::identity::principal(&self.namespace, &self.service_account)
    }

    /// Its SPIFFE ID, as certificates and metrics carry it.
    pub fn spiffe_id(&self) -> String {
        crate::identity::spiffe_id(&self.namespace, &self.service_account)
    }

    /// Whether this node captures it: enrolled, and not placed on another node.
    pub fn captured_on(&self, node: &str) -> bool {
        self.enrolled && self.node.as_deref().is_none_or(|n| n == node)
    }

    pub fn exclude_ports(mut self, ports: &[u16]) -> Workload {
        self.exclude_ports = ports.to_vec();
        self
    }

    pub fn exclude_cidrs(mut self, cidrs: &[String]) -> Workload {
        self.exclude_cidrs = cidrs.to_vec();
        self
    }

    pub fn exclude_inbound_ports(mut self, ports: &[u16]) -> Workload {
        self.exclude_inbound_ports = ports.to_vec();
        self
    }

    /// Steers this pod with `mode` whatever the node's mode is.
    pub fn redirect_mode(mut self, mode: Mode) -> Workload {
        self.redirect_mode = Some(mode);
        self
    }
}

impl AgentConfig {
    /// Defaults for `node`: its name, its cgroup subtree, standard ports, no workloads.
    pub fn new(node: &Node) -> AgentConfig {
        AgentConfig {
            node: node.name().to_string(),
            cgroup_root: node.cgroup_root(),
            bpffs_root: None,
            admin_address: ADMIN.into(),
            metrics_address: "0.0.0.0:15020".into(),
            readiness_address: "0.0.0.0:15021".into(),
            proxy: Some(ProxyConfig {
                connect_timeout: "5s".into(),
                idle_timeout: "1h".into(),
            }),
            redirect: None,
            identity: None,
            workloads: Vec::new(),
            authorization_policies: Vec::new(),
            peer_authentications: Vec::new(),
        }
    }

    /// Turns mTLS on: the `identity:` section (e.g. [`crate::identity::TestCa::identity`]).
    pub fn identity(mut self, identity: Identity) -> AgentConfig {
        self.identity = Some(identity);
        self
    }

    /// Adds an Istio-shaped `AuthorizationPolicy` (see [`AgentConfig::authorization_policies`]).
    pub fn authorization_policy(mut self, policy: serde_json::Value) -> AgentConfig {
        self.authorization_policies.push(policy);
        self
    }

    /// Adds an Istio-shaped `PeerAuthentication`.
    pub fn peer_authentication(mut self, policy: serde_json::Value) -> AgentConfig {
        self.peer_authentications.push(policy);
        self
    }

    /// Drops every authorization policy and peer authentication.
    pub fn without_policies(mut self) -> AgentConfig {
        self.authorization_policies.clear();
        self.peer_authentications.clear();
        self
    }

    /// The workload called `name` (the first, if several share it).
    pub fn workload(&self, name: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.name == name)
    }

    /// Forces the node's redirect mode (instead of `auto`).
    pub fn mode(mut self, mode: Mode) -> AgentConfig {
        self.redirect = Some(RedirectConfig { mode });
        self
    }

    pub fn with(mut self, w: Workload) -> AgentConfig {
        self.workloads.push(w);
        self
    }

    /// Drops the workload called `name`.
    pub fn without(mut self, name: &str) -> AgentConfig {
        self.workloads.retain(|w| w.name != name);
        self
    }

    /// The mode steering pod `name`: its override or the node's; `None` when it is not
    /// enrolled on this node. The node mode must be explicit (see [`AgentConfig::mode`]).
    pub fn mode_of(&self, name: &str) -> Result<Option<Mode>> {
        let here = |w: &&Workload| w.name == name && w.captured_on(&self.node);
        let Some(w) = self.workloads.iter().find(here) else {
            return Ok(None);
        };
        let node = self.redirect.as_ref().map(|r| r.mode);
        w.redirect_mode
            .or(node)
            .map(Some)
            .context("the node's redirect mode is auto; set one with AgentConfig::mode")
    }

    /// Whether the workload named `name` has an IPv6 address in this config (the agent
    /// writes IPv6 rules only for such pods).
    pub fn has_ipv6(&self, name: &str) -> bool {
        self.workloads
            .iter()
            .filter(|w| w.name == name)
            .any(|w| w.ips.iter().any(|ip| ip.contains(':')))
    }

    /// Where this node's pins live: `<bpffsRoot>/<node>`.
    pub fn pin_dir(&self) -> PathBuf {
        self.bpffs_root
            .clone()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/bpf/sluice"))
            .join(&self.node)
    }
}

/// A running agent; borrowing the node makes it drop (and clean up) before the pods go.
pub struct Agent<'n> {
    node: &'n Node,
    bin: PathBuf,
    config: AgentConfig,
    config_path: PathBuf,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    child: Option<Child>,
}

impl<'n> Agent<'n> {
    /// Writes the config, starts `mesh-agent run` in the node netns and the node's agent
    /// cgroup (inside `cgroupRoot`, as a DaemonSet pod is, but never enrolled), waits until
    /// ready, and fails if the agent warns that it runs outside `cgroupRoot`.
    pub fn start(node: &'n Node, config: AgentConfig) -> Result<Agent<'n>> {
        Agent::start_with_env(node, config, &[])
    }

    /// [`Agent::start`] with extra environment (e.g. `RUST_LOG`).
    pub fn start_with_env(
        node: &'n Node,
        config: AgentConfig,
        env: &[(&str, &str)],
    ) -> Result<Agent<'n>> {
        let mut agent = Agent {
            node,
            bin: crate::agent_bin()?,
            config,
            config_path: node.workdir().join("agent.yaml"),
            log_path: node.workdir().join("agent.log"),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            child: None,
        };
        agent.launch()?;
        Ok(agent)
    }

    /// Writes the config and starts the process as [`Agent::start`] says. Once the child
    /// exists, a failure leaves it to Drop (kill and `mesh-agent cleanup`).
    fn launch(&mut self) -> Result<()> {
        write_config(&self.config_path, &self.config)?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("run").arg("--config").arg(&self.config_path);
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let node = self.node;
        let procs = File::options()
            .write(true)
            .open(node.agent_cgroup().join("cgroup.procs"))?;
        crate::pod::enter(&mut cmd, File::open(node.netns_path())?, Some(procs));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.bin.display()))?;
        // The agent must not share a cgroup with other tests' agents (see `crate::node`).
        let want = node.agent_cgroup();
        let got = crate::cgroup::cgroup_of(child.id()).map(|rel| {
            crate::cgroup::cgroup2_mount()
                .unwrap_or_default()
                .join(rel.trim_start_matches('/'))
        });
        self.child = Some(child);
        ensure!(
            got.as_ref().is_ok_and(|g| *g == want),
            "agent runs in cgroup {got:?}, not {}",
            want.display()
        );
        self.wait_ready(Duration::from_secs(30))?;
        let log = self.log();
        ensure!(
            !log.contains(OUTSIDE_ROOT_WARNING),
            "the agent says it runs outside cgroupRoot; log:\n{log}"
        );
        Ok(())
    }

    /// Stops the agent if it runs ([`Agent::stop`]: SIGKILL and `mesh-agent cleanup`) and
    /// starts it again with `config`, as a crashed or upgraded DaemonSet pod comes back.
    pub fn restart(&mut self, config: AgentConfig) -> Result<()> {
        self.stop()?;
        self.config = config;
        self.launch()
    }

    pub fn config(&self) -> &AgentConfig {
        &self.config
    }

    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `n` log lines, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Polls `/healthz/ready` until 200; fails early (with the log) if the agent exits.
    pub fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "agent exited ({status}) before ready; log:\n{}",
                    self.log_tail(60)
                );
            }
            let last = match self.get(READINESS, "/healthz/ready") {
                Ok(r) if r.status == 200 => return Ok(()),
                Ok(r) => format!("status {}: {}", r.status, r.body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "agent not ready within {timeout:?} (last: {last}); log:\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET http://<addr><path>` from inside the node netns.
    pub fn get(&self, addr: &str, path: &str) -> Result<Response> {
        let addr: SocketAddr = addr.parse()?;
        http::get(&self.node.netns_path(), addr, path, Duration::from_secs(5))
    }

    /// `POST http://<addr><path>` (empty body) from inside the node netns.
    pub fn post(&self, addr: &str, path: &str) -> Result<Response> {
        let addr: SocketAddr = addr.parse()?;
        http::request(
            &self.node.netns_path(),
            "POST",
            addr,
            path,
            Duration::from_secs(5),
        )
    }

    /// POST that must answer 2xx; returns the body.
    pub fn post_ok(&self, addr: &str, path: &str) -> Result<String> {
        let r = self.post(addr, path)?;
        ensure!(
            (200..300).contains(&r.status),
            "POST {addr}{path}: status {}: {}",
            r.status,
            r.body
        );
        Ok(r.body)
    }

    /// GET that must answer 200.
    pub fn get_ok(&self, addr: &str, path: &str) -> Result<String> {
        let r = self.get(addr, path)?;
        ensure!(
            r.status == 200,
            "GET {addr}{path}: status {}: {}",
            r.status,
            r.body
        );
        Ok(r.body)
    }

    pub fn metrics(&self) -> Result<Metrics> {
        Ok(Metrics::parse(&self.get_ok(METRICS, "/metrics")?))
    }

    pub fn debug_ebpf(&self) -> Result<serde_json::Value> {
        let body = self.get_ok(ADMIN, "/debug/ebpf")?;
        serde_json::from_str(&body).with_context(|| format!("/debug/ebpf is not JSON: {body}"))
    }

    /// `/debug/redirect`: every redirect mode running, eBPF or netfilter.
    pub fn debug_redirect(&self) -> Result<serde_json::Value> {
        let body = self.get_ok(ADMIN, "/debug/redirect")?;
        serde_json::from_str(&body).with_context(|| format!("/debug/redirect is not JSON: {body}"))
    }

    pub fn config_dump(&self) -> Result<serde_json::Value> {
        let body = self.get_ok(ADMIN, "/config_dump")?;
        serde_json::from_str(&body).with_context(|| format!("/config_dump is not JSON: {body}"))
    }

    /// The eBPF counters from `/debug/ebpf`.
    pub fn counters(&self) -> Result<BTreeMap<String, u64>> {
        let v = self.debug_ebpf()?;
        let obj = v
            .get("counters")
            .and_then(|c| c.as_object())
            .with_context(|| format!("no counters in {v}"))?;
        Ok(obj
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
            .collect())
    }

    /// One eBPF counter; a missing name is an error (a typo must not read as zero).
    pub fn counter(&self, name: &str) -> Result<u64> {
        let all = self.counters()?;
        all.get(name)
            .copied()
            .with_context(|| format!("no counter {name:?} in {all:?}"))
    }

    /// Original-destination entries the agent's maps hold now: `orig_dst_entries` as the
    /// interface names it, or the agent's per-map counts (`origDstByTuple.count` plus
    /// `origDstByCookieEntries`); neither present is an error.
    pub fn orig_dst_entries(&self) -> Result<u64> {
        let v = self.debug_ebpf()?;
        if let Some(n) = v.get("orig_dst_entries").and_then(|n| n.as_u64()) {
            return Ok(n);
        }
        let by_tuple = v.pointer("/origDstByTuple/count").and_then(|n| n.as_u64());
        let by_cookie = v.get("origDstByCookieEntries").and_then(|n| n.as_u64());
        match (by_tuple, by_cookie) {
            (Some(t), Some(c)) => Ok(t + c),
            _ => bail!("no original-destination entry count in /debug/ebpf: {v}"),
        }
    }

    /// Writes `text` as the config file, verbatim (atomically), e.g. to test bad input.
    pub fn write_raw_config(&self, text: &str) -> Result<()> {
        let tmp = self.config_path.with_extension("yaml.tmp");
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &self.config_path)?;
        Ok(())
    }

    /// Replaces the config file atomically (write + rename), as a ConfigMap update does.
    pub fn reload(&mut self, config: AgentConfig) -> Result<()> {
        write_config(&self.config_path, &config)?;
        self.config = config;
        Ok(())
    }

    /// [`Agent::reload`], then waits (up to 5 s) until `/config_dump` shows the new
    /// workloads, authorization policies and peer authentications in force: every field
    /// written is there with the value written (the agent adds its defaults). A workload
    /// placed on this node by name is shown without `node`, as the agent does.
    pub fn reload_applied(&mut self, config: AgentConfig) -> Result<()> {
        self.reload(config)?;
        let mut want = serde_json::to_value(&self.config)?;
        for w in want["workloads"].as_array_mut().into_iter().flatten() {
            if w["node"] == self.config.node.as_str()
                && let Some(w) = w.as_object_mut()
            {
                w.remove("node");
            }
        }
        let sections = ["workloads", "authorizationPolicies", "peerAuthentications"];
        crate::poll_until(
            Duration::from_secs(5),
            "the agent applies the reloaded config",
            || {
                let dump = self.config_dump()?;
                let applied = sections.iter().all(|k| {
                    let want = want
                        .get(*k)
                        .cloned()
                        .unwrap_or_else(|| serde_json::json!([]));
                    includes(&dump["config"][*k], &want)
                });
                Ok(applied.then_some(()))
            },
        )
        .with_context(|| format!("log:\n{}", self.log_tail(30)))
    }

    /// Kills the agent by pid (SIGKILL, as a crash would), then runs `mesh-agent cleanup`.
    pub fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.cleanup()
    }

    /// `mesh-agent cleanup --config <file>` in the node netns; fails with its output.
    ///
    /// It is given the last config written through [`Agent::reload`] (in a file of its own),
    /// so a test that fed the agent a broken file still cleans up.
    pub fn cleanup(&self) -> Result<()> {
        let path = self.config_path.with_file_name("agent-cleanup.yaml");
        write_config(&path, &self.config)?;
        let mut cmd = Command::new(&self.bin);
        cmd.arg("cleanup").arg("--config").arg(&path);
        crate::pod::enter(&mut cmd, File::open(self.node.netns_path())?, None);
        let out = cmd.output().context("running mesh-agent cleanup")?;
        ensure!(
            out.status.success(),
            "mesh-agent cleanup failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

impl Drop for Agent<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- agent log ({}) ---\n{}\n---",
                self.node.name(),
                self.log_tail(80)
            );
        }
        if self.child.is_none() {
            return;
        }
        let pin_dir = self.config.pin_dir();
        let res = self.stop().and_then(|()| {
            let pins = crate::bpf::pins_under(&pin_dir);
            ensure!(
                pins.is_empty(),
                "pins left after mesh-agent cleanup: {pins:?}"
            );
            Ok(())
        });
        if let Err(e) = res {
            // A teardown that leaves state behind fails the test, unless it already failed.
            if std::thread::panicking() {
                eprintln!("sluice-tests: agent teardown: {e:#}");
            } else {
                panic!("agent teardown: {e:#}");
            }
        }
    }
}

/// How much counter `name` rose between two [`Agent::counters`] snapshots; a counter missing
/// from `after` is an error (a typo must not read as "did not rise").
pub fn delta(
    before: &BTreeMap<String, u64>,
    after: &BTreeMap<String, u64>,
    name: &str,
) -> Result<i64> {
    let a = *after
        .get(name)
        .with_context(|| format!("no counter {name:?} in {after:?}"))?;
    let b = before.get(name).copied().unwrap_or(0);
    Ok(a as i64 - b as i64)
}

/// Whether `have` holds everything `want` does: objects by key (extra keys allowed), arrays
/// element by element (same length), numbers by value, the rest equal.
fn includes(have: &serde_json::Value, want: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (have, want) {
        (Value::Object(h), Value::Object(w)) => w
            .iter()
            .all(|(k, v)| h.get(k).is_some_and(|hv| includes(hv, v))),
        (Value::Array(h), Value::Array(w)) => {
            h.len() == w.len() && h.iter().zip(w).all(|(a, b)| includes(a, b))
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        _ => have == want,
    }
}

fn write_config(path: &Path, config: &AgentConfig) -> Result<()> {
    let text = serde_yaml_ng::to_string(config)?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming into {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn includes_what_was_written_and_tolerates_defaults() {
        let have = json!([{"name": "p", "action": "DENY", "selector": null, "rules": [
            {"from": [{"source": {"principals": ["a"], "notPrincipals": null}}], "to": []}
        ]}]);
        let want = json!([{"name": "p", "action": "DENY", "rules": [
            {"from": [{"source": {"principals": ["a"]}}]}
        ]}]);
        assert!(includes(&have, &want));
        assert!(!includes(&have, &json!([{"name": "p", "action": "ALLOW"}])));
        assert!(!includes(&have, &json!([])));
        assert!(includes(&json!({"n": 8080}), &json!({"n": 8080.0})));
    }

    #[test]
    fn new_fields_stay_out_of_the_yaml_until_set() {
        let w = Workload {
            name: "a".into(),
            namespace: "default".into(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
            ips: vec!["10.77.0.2".into()],
            node: None,
            netns: None,
            cgroup: None,
            enrolled: false,
            redirect_mode: None,
            exclude_ports: Vec::new(),
            exclude_cidrs: Vec::new(),
            exclude_inbound_ports: Vec::new(),
        };
        let yaml = serde_yaml_ng::to_string(&w).unwrap();
        assert!(!yaml.contains("labels") && !yaml.contains("node"), "{yaml}");
        let w = w
            .labels(&[("app", "b")])
            .service_account("sa-b")
            .on_node("node-2");
        let v = serde_json::to_value(&w).unwrap();
        assert_eq!(v["labels"], json!({"app": "b"}));
        assert_eq!(
            (v["node"].as_str(), v["enrolled"].as_bool()),
            (Some("node-2"), Some(false))
        );
        assert_eq!(w.principal(), "cluster.local/ns/default/sa/sa-b");
        assert_eq!(w.spiffe_id(), "spiffe://cluster.local/ns/default/sa/sa-b");
        let id = crate::identity::Identity::ca(Path::new("/ca")).certificate_ttl("1h");
        let v = serde_json::to_value(&id).unwrap();
        assert_eq!(
            v,
            json!({"trustDomain": "cluster.local", "ca": {"dir": "/ca", "certificateTtl": "1h"}})
        );
    }
}
