//! Running `mesh-agent` in a node's netns: config file, readiness, HTTP endpoints, reload,
//! and a teardown that kills it by pid and runs `mesh-agent cleanup`.

use crate::http::{self, Response};
use crate::metrics::Metrics;
use crate::node::Node;
use anyhow::{Context, Result, bail, ensure};
use std::collections::BTreeMap;
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod config;
pub use config::{AgentConfig, ProxyConfig, RedirectConfig, Workload};

pub const ADMIN: &str = "127.0.0.1:15000";
pub const METRICS: &str = "127.0.0.1:15020";
pub const READINESS: &str = "127.0.0.1:15021";

/// What the agent logs when it is not inside its `cgroupRoot` and has to attach sock_ops and
/// getsockopt above it (`mesh-agent/src/redirect/ebpf/attach.rs`).
pub const OUTSIDE_ROOT_WARNING: &str = "runs outside cgroupRoot";

/// A running agent; borrowing the node makes it drop (and clean up) before the pods go.
pub struct Agent<'n> {
    node: &'n Node,
    bin: PathBuf,
    config: AgentConfig,
    config_path: PathBuf,
    log_path: PathBuf,
    env: Vec<(String, String)>,
    launch: Launch,
    child: Option<Child>,
}

/// How the agent process is held, to run it as a Kubernetes container would.
#[derive(Clone, Debug, Default)]
pub struct Launch {
    /// Only these capabilities (`NET_ADMIN`, ...), as a container with `drop: [ALL]` and
    /// this `add` holds them: the bounding and inheritable sets, so a root process has
    /// them (and its children as well) and cannot regain others. `None`: all of them.
    pub capabilities: Option<Vec<String>>,
    /// `/proc/sys` as a container sees it; `None`: the host's, writable.
    pub proc_sys: Option<ContainerProcSys>,
}

/// `/proc/sys` read-only, as container runtimes mount it for an unprivileged container
/// (in a mount namespace of the agent's own).
#[derive(Clone, Debug)]
pub enum ContainerProcSys {
    /// Nothing writable under it.
    ReadOnly,
    /// The host's `/proc/sys/net` mounted writable at this path, as the DaemonSet's
    /// `proc-sys-net` volume is (give the agent the path as `procSysNet`).
    WithHostNetAt(PathBuf),
}

impl Launch {
    /// The command that starts `program` held this way (through `setpriv`, `unshare`).
    fn command(&self, program: &Path) -> Command {
        let mut argv: Vec<String> = Vec::new();
        if let Some(proc_sys) = &self.proc_sys {
            // `$1`: where the host's /proc/sys/net goes, or empty for nowhere.
            let host_net = match proc_sys {
                ContainerProcSys::ReadOnly => String::new(),
                ContainerProcSys::WithHostNetAt(path) => path.display().to_string(),
            };
            argv.extend(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "slave",
                    "--",
                    "sh",
                    "-c",
                    "if [ -n \"$1\" ]; then mkdir -p \"$1\" && mount --bind /proc/sys/net \"$1\"; fi \
                     && mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys \
                     && shift && exec \"$@\"",
                    "sh",
                    &host_net,
                ]
                .map(String::from),
            );
        }
        if let Some(caps) = &self.capabilities {
            let set: String = caps
                .iter()
                .map(|c| format!(",+{}", c.trim_start_matches("CAP_").to_lowercase()))
                .collect();
            argv.extend([
                "setpriv".into(),
                format!("--bounding-set=-all{set}"),
                format!("--inh-caps=-all{set}"),
                "--".into(),
            ]);
        }
        argv.push(program.display().to_string());
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..]);
        cmd
    }
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
        Agent::start_held(node, config, env, Launch::default())
    }

    /// [`Agent::start_with_env`], with the process held as `launch` says.
    pub fn start_held(
        node: &'n Node,
        config: AgentConfig,
        env: &[(&str, &str)],
        launch: Launch,
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
            launch,
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
        let mut cmd = self.launch.command(&self.bin);
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
