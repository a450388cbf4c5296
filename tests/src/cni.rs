//! Driving `sluice-cni` the way a container runtime does (environment, network config on
//! stdin, JSON on stdout), and [`StandInAgent`]: a Unix socket server that answers the CNI
//! protocol with scripted outcomes and records what it was sent. It stands in for the agent's
//! end of the socket until the agent serves it; the tests read and write the wire format as
//! raw JSON, so they pin the documented protocol rather than the crate's types.
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};

/// The plugin binary: `SLUICE_CNI_BIN`, else `<workspace>/target/debug/sluice-cni`. Missing
/// is an error, never a skip.
pub fn cni_bin() -> Result<PathBuf> {
    let p = match std::env::var_os("SLUICE_CNI_BIN") {
        Some(p) => PathBuf::from(p),
        None => crate::workspace_root().join("target/debug/sluice-cni"),
    };
    ensure!(
        p.is_file(),
        "plugin binary {} does not exist: build it (cargo build -p sluice-cni) or set SLUICE_CNI_BIN",
        p.display()
    );
    Ok(p)
}

/// A directory under the temp dir, named so `sweep` removes it if this run crashes.
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(what: &str) -> Result<Scratch> {
        let dir =
            std::env::temp_dir().join(format!("sluice-test-{}-{what}", crate::unique_prefix()));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Scratch(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What the bridge plugin (with host-local IPAM) hands the next plugin in the chain: a
/// dual-stack pod with its veth's host end, both addresses in CIDR notation.
pub fn bridge_result(cni_version: &str, netns: &str) -> Value {
    json!({
        "cniVersion": cni_version,
        "interfaces": [
            {"name": "cni0", "mac": "6a:1f:1d:2e:0b:9a"},
            {"name": "veth3c1d2a7f", "mac": "9e:4b:6f:1a:c2:55"},
            {"name": "eth0", "mac": "2e:7d:91:0c:4f:13", "sandbox": netns}
        ],
        "ips": [
            {"address": "10.244.1.7/24", "gateway": "10.244.1.1", "interface": 2},
            {"address": "fd00:10:244:1::7/64", "gateway": "fd00:10:244:1::1", "interface": 2}
        ],
        "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
        "dns": {}
    })
}

/// One pod sandbox as the runtime describes it to each plugin of the chain.
#[derive(Clone, Debug)]
pub struct Sandbox {
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// `CNI_ARGS` as containerd passes it for a pod; empty for a sandbox that is not a pod's.
    pub args: String,
}

impl Sandbox {
    pub fn pod(namespace: &str, name: &str, uid: &str) -> Sandbox {
        let id = format!("{:x}", 0x5eed_0000_u64 + u64::from(std::process::id()));
        Sandbox {
            container_id: id.clone(),
            netns: format!("/var/run/netns/cni-{uid}"),
            ifname: "eth0".into(),
            args: format!(
                "IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};\
                 K8S_POD_INFRA_CONTAINER_ID={id};K8S_POD_UID={uid}"
            ),
        }
    }

    /// A sandbox started by something other than the kubelet (no `K8S_*` args).
    pub fn not_a_pod() -> Sandbox {
        Sandbox {
            args: String::new(),
            ..Sandbox::pod("", "", "plain")
        }
    }
}

/// What one plugin run printed and returned.
#[derive(Debug)]
pub struct Run {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// Stdout as the runtime parses it: one JSON document.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.stdout).with_context(|| format!("stdout is not JSON: {self:#?}"))
    }

    /// Exit 0 and the parsed stdout.
    pub fn ok_json(&self) -> Result<Value> {
        ensure!(self.status == 0, "plugin failed: {self:#?}");
        self.json()
    }

    /// Exit 1 and a CNI error result: returns it after checking its shape.
    pub fn cni_error(&self) -> Result<Value> {
        ensure!(self.status == 1, "expected exit 1: {self:#?}");
        let err = self.json()?;
        ensure!(
            err["code"].is_u64() && err["msg"].is_string() && err["cniVersion"].is_string(),
            "not a CNI error result: {err:#}"
        );
        Ok(err)
    }
}

/// Runs the plugin for `command` on `sandbox` with `config` on stdin, as a runtime does:
/// in a clean environment holding only the CNI variables.
pub fn run_plugin(command: &str, sandbox: &Sandbox, config: &Value) -> Result<Run> {
    let mut cmd = Command::new(cni_bin()?);
    cmd.env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &sandbox.container_id)
        .env("CNI_NETNS", &sandbox.netns)
        .env("CNI_IFNAME", &sandbox.ifname)
        .env("CNI_ARGS", &sandbox.args)
        .env("CNI_PATH", "/opt/cni/bin");
    run_with_stdin(cmd, &serde_json::to_vec(config)?)
}

/// Runs `cmd` with `stdin`, collecting everything (bounded by the plugin's own timeouts).
pub fn run_with_stdin(mut cmd: Command, stdin: &[u8]) -> Result<Run> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start sluice-cni")?;
    if let Some(mut pipe) = child.stdin.take() {
        pipe.write_all(stdin)
            .context("cannot write the plugin's stdin")?;
    }
    let out = child.wait_with_output()?;
    Ok(Run {
        status: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// The network config the runtime derives for our place in the chain: the list's name and
/// version, our entry's keys, and the previous plugin's result.
pub fn net_config(cni_version: &str, prev_result: Option<Value>, ours: Value) -> Value {
    let mut conf =
        json!({"cniVersion": cni_version, "name": "k8s-pod-network", "type": "sluice-cni"});
    if let Some(obj) = ours.as_object() {
        for (k, v) in obj {
            conf[k] = v.clone();
        }
    }
    if let Some(prev) = prev_result {
        conf["prevResult"] = prev;
    }
    conf
}

/// How the stand-in answers one request.
pub type Script = dyn Fn(&Value) -> Option<Value> + Send + Sync;

/// A stand-in for the agent's end of the CNI socket: answers each connection's request line
/// with what `script` returns (no answer: holds the connection for 3 s without a word) and
/// records the requests as raw JSON.
pub struct StandInAgent {
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<Value>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl StandInAgent {
    /// Answers every request with `{"outcome": outcome, "message": message}`.
    pub fn answering(dir: &Path, outcome: &str, message: &str) -> Result<StandInAgent> {
        let reply = json!({"outcome": outcome, "message": message});
        StandInAgent::start(dir, Box::new(move |_| Some(reply.clone())))
    }

    pub fn start(dir: &Path, script: Box<Script>) -> Result<StandInAgent> {
        let socket = dir.join("cni.sock");
        let listener = UnixListener::bind(&socket)
            .with_context(|| format!("cannot listen on {}", socket.display()))?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (requests, stop) = (requests.clone(), stop.clone());
            std::thread::spawn(move || {
                for conn in listener.incoming() {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let mut reader = BufReader::new(conn);
                    let mut line = String::new();
                    if reader.read_line(&mut line).is_err() {
                        continue;
                    }
                    let req: Value =
                        serde_json::from_str(&line).unwrap_or_else(|_| json!({"unparsable": line}));
                    let answer = script(&req);
                    if let Ok(mut seen) = requests.lock() {
                        seen.push(req);
                    }
                    match answer {
                        Some(reply) => {
                            let _ = writeln!(reader.get_mut(), "{reply}");
                        }
                        None => std::thread::sleep(Duration::from_secs(3)),
                    }
                }
            })
        };
        Ok(StandInAgent {
            socket,
            requests,
            stop,
            thread: Some(thread),
        })
    }

    /// Every request received so far, in order.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The one request received; an error if there were more or none.
    pub fn only_request(&self) -> Result<Value> {
        match self.requests().as_slice() {
            [one] => Ok(one.clone()),
            other => bail!("expected one request, got {other:#?}"),
        }
    }
}

impl Drop for StandInAgent {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = std::os::unix::net::UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// A kubeconfig for an API server that is not there: a port on 127.0.0.1 nothing listens on.
pub fn unreachable_kubeconfig(dir: &Path) -> Result<PathBuf> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let path = dir.join("kubeconfig");
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{port}\n    insecure-skip-tls-verify: true\n\
         users:\n- name: gone\n  user:\n    token: t\n\
         contexts:\n- name: gone\n  context:\n    cluster: gone\n    user: gone\ncurrent-context: gone\n"
    );
    std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `sluice-cni <args>` as the DaemonSet runs it: outside a runtime, so no `CNI_COMMAND`.
pub fn cli(args: &[&str]) -> Result<Run> {
    let mut cmd = Command::new(cni_bin()?);
    cmd.env_remove("CNI_COMMAND").args(args);
    run_with_stdin(cmd, b"")
}

/// A node's CNI directories in a scratch dir: `bin` (the runtime's plugin dir) and `net.d`
/// (its config dir).
pub struct CniDirs {
    _scratch: Scratch,
    pub bin: PathBuf,
    pub conf: PathBuf,
}

impl CniDirs {
    pub fn new(what: &str) -> Result<CniDirs> {
        let scratch = Scratch::new(what)?;
        let (bin, conf) = (scratch.path().join("bin"), scratch.path().join("net.d"));
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(&conf)?;
        Ok(CniDirs {
            _scratch: scratch,
            bin,
            conf,
        })
    }

    fn dirs(&self) -> Vec<String> {
        vec![
            "--bin-dir".into(),
            self.bin.display().to_string(),
            "--conf-dir".into(),
            self.conf.display().to_string(),
        ]
    }

    /// `sluice-cni install` on these dirs, with `extra` flags.
    pub fn install(&self, extra: &[&str]) -> Result<Run> {
        let dirs = self.dirs();
        let mut args = vec!["install"];
        args.extend(dirs.iter().map(String::as_str));
        args.extend(extra);
        cli(&args)
    }

    /// `sluice-cni uninstall` on these dirs.
    pub fn uninstall(&self) -> Result<Run> {
        let dirs = self.dirs();
        let mut args = vec!["uninstall"];
        args.extend(dirs.iter().map(String::as_str));
        cli(&args)
    }

    /// `sluice-cni install --watch` on these dirs, running until signalled.
    pub fn spawn_watch(&self, interval: &str) -> Result<std::process::Child> {
        Command::new(cni_bin()?)
            .env_remove("CNI_COMMAND")
            .args(["install", "--watch", "--interval", interval])
            .args(self.dirs())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start sluice-cni install --watch")
    }

    /// The names in the config dir, sorted.
    pub fn names(&self) -> Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.conf)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    pub fn read(&self, name: &str) -> Result<String> {
        let path = self.conf.join(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    pub fn json(&self, name: &str) -> Result<Value> {
        Ok(serde_json::from_str(&self.read(name)?)?)
    }
}
