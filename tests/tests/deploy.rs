//! The DaemonSet's capabilities are enough, and each one is needed: the agent runs with
//! exactly the agent container's `capabilities.add` (read from `kubectl kustomize deploy/`),
//! as a container holding `drop: [ALL]` plus that list would (`tests::agent::Launch`), and
//! an enrolled pod's outbound connection must be captured in every redirect mode. Then each
//! capability is taken away in turn and capture must fail, so the set is also minimal and
//! the check is shown able to fail.
//!
//! The pod's netns is given as `/proc/<pid>/ns/net` of a process in the pod, as the
//! Kubernetes source finds it: opening it needs ptrace access to that process.
//!
//! `/proc/sys` is read-only as in any unprivileged container, with the host's
//! `/proc/sys/net` mounted writable where the agent's `procSysNet` says, as the DaemonSet
//! mounts it. Also: the Grafana dashboard's metrics exist in a running agent.

use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use tests::agent::{ContainerProcSys, Launch, METRICS};
use tests::netfilter::{Found, expect_rules, in_pod, ours};
use tests::scenario::{addr, assert_transparent};
use tests::{Agent, AgentConfig, Mode, Node, Snapshot, Workload};

tests::in_every_mode!(deployed_capabilities_capture, each_capability_is_needed);

/// `kubectl kustomize deploy/`, one JSON value per document.
fn kustomized() -> Vec<serde_json::Value> {
    let root = tests::workspace_root();
    let out = std::process::Command::new("kubectl")
        .arg("kustomize")
        .arg(root.join("deploy"))
        .output()
        .expect("kubectl (for `kubectl kustomize deploy/`) must be on PATH");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|doc| serde_json::Value::deserialize(doc).unwrap())
        .collect()
}

fn daemonset(docs: &[serde_json::Value]) -> &serde_json::Value {
    (docs.iter())
        .find(|d| d["kind"] == "DaemonSet")
        .expect("no DaemonSet in deploy/")
}

/// The DaemonSet's `agent` container.
fn agent_container(docs: &[serde_json::Value]) -> &serde_json::Value {
    let containers = daemonset(docs)["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("the DaemonSet's containers");
    (containers.iter())
        .find(|c| c["name"] == "agent")
        .expect("no agent container")
}

/// The agent container's `capabilities.add`, after checking it drops everything else.
fn deployed_capabilities() -> Vec<String> {
    let docs = kustomized();
    let sc = &agent_container(&docs)["securityContext"];
    assert_ne!(sc["privileged"], true, "{sc}");
    assert_eq!(
        sc["capabilities"]["drop"],
        serde_json::json!(["ALL"]),
        "{sc}"
    );
    let add = sc["capabilities"]["add"].as_array().unwrap();
    add.iter().map(|c| c.as_str().unwrap().to_owned()).collect()
}

/// What fails without a capability: capture in some modes, or `auto` finding eBPF.
enum Proof {
    Capture(&'static [Mode], Setup),
    AutoPicksEbpf,
}

/// Why each capability is in the DaemonSet; `None` for one that has no place there.
fn needed_for(capability: &str) -> Option<Proof> {
    match capability {
        // setns into the pod's netns; bpf() too (no CAP_BPF in the set).
        "SYS_ADMIN" => Some(Proof::Capture(&Mode::ALL, Setup::Plain)),
        // ip rule/route, SO_MARK, IP_TRANSPARENT, netfilter in the pod's netns.
        "NET_ADMIN" => Some(Proof::Capture(&Mode::ALL, Setup::Plain)),
        // /proc/<pid>/ns/net of a process holding capabilities the agent does not.
        "SYS_PTRACE" => Some(Proof::Capture(&Mode::ALL, Setup::Plain)),
        // iptables-legacy's raw socket, in a pod whose netns holds legacy rules (without it
        // the agent cannot see them and steers with iptables-nft beside them).
        "NET_RAW" => Some(Proof::Capture(&[Mode::Iptables], Setup::LegacyIptables)),
        // auto's probe makes a scratch cgroup in the cgroup2 root, which is mode 0555.
        "DAC_OVERRIDE" => Some(Proof::AutoPicksEbpf),
        _ => None,
    }
}

/// What the client pod's netns holds before the agent starts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    Plain,
    /// A legacy iptables rule, so the agent's iptables mode uses iptables-legacy there.
    LegacyIptables,
}

/// An agent holding `capabilities` captures client-a's connection to server-b (`Err` says
/// why not: the agent did not start, or did not capture).
fn captured_with(mode: Mode, setup: Setup, capabilities: &[String]) -> Result<()> {
    captured_held(mode, setup, capabilities, ProcSys::AsDeployed)
}

/// What the agent can write under `/proc/sys`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum ProcSys {
    /// As the DaemonSet has it (see [`as_deployed`]).
    AsDeployed,
    /// Read-only, with no mount of the host's `/proc/sys/net` (nor `procSysNet`).
    ReadOnly,
}

/// The agent held as the DaemonSet holds it: exactly `capabilities`, `/proc/sys`
/// read-only as in any unprivileged container, and the host's `/proc/sys/net` mounted
/// writable and given as `procSysNet` (checked against deploy/ by
/// `the_daemonset_mounts_the_hosts_proc_sys_net_at_proc_sys_net`).
fn as_deployed(node: &Node, capabilities: &[String], cfg: AgentConfig) -> (Launch, AgentConfig) {
    let host_net = node.workdir().join("host-proc-sys-net");
    let launch = Launch {
        capabilities: Some(capabilities.to_vec()),
        proc_sys: Some(ContainerProcSys::WithHostNetAt(host_net.clone())),
    };
    let cfg = AgentConfig {
        proc_sys_net: Some(host_net),
        ..cfg
    };
    (launch, cfg)
}

fn captured_held(
    mode: Mode,
    setup: Setup,
    capabilities: &[String],
    proc_sys: ProcSys,
) -> Result<()> {
    let node = Node::new()?;
    let a = node.add_pod("client-a")?;
    let b = node.add_pod("server-b")?;
    let _server = b.serve(8080, "server-b")?;
    // A process of the pod whose netns the agent reaches through /proc, as in Kubernetes.
    let holder = a.serve(9, "holder")?;
    if setup == Setup::LegacyIptables {
        in_pod(
            &a,
            "iptables-legacy",
            &["-A", "INPUT", "-p", "tcp", "--dport", "7", "-j", "ACCEPT"],
        )?;
    }
    let mut client = Workload::enrolled(&a);
    client.netns = Some(PathBuf::from(format!("/proc/{}/ns/net", holder.proc.pid())));
    let cfg = AgentConfig::new(&node)
        .mode(mode)
        .with(client)
        .with(Workload::known(&b));
    let (launch, cfg) = match proc_sys {
        ProcSys::AsDeployed => as_deployed(&node, capabilities, cfg),
        ProcSys::ReadOnly => {
            let launch = Launch {
                capabilities: Some(capabilities.to_vec()),
                proc_sys: Some(ContainerProcSys::ReadOnly),
            };
            (launch, cfg)
        }
    };
    let agent = Agent::start_held(&node, cfg.clone(), &[], launch)?;
    // A mismatch is the test bed's fault, never a capability's: it must not pass for one.
    let pid = agent.pid().context("the agent has no pid")?;
    assert_eq!(
        held_capabilities(pid)?,
        mask(capabilities)?,
        "CapEff of the agent, for {capabilities:?}"
    );
    match setup {
        Setup::Plain => expect_rules(&node, &cfg),
        // Steering in the flavour the pod already uses: nf_tables rules beside legacy
        // ones would be evaluated in an order nobody intends.
        Setup::LegacyIptables => match ours(&a)?.as_slice() {
            [Found::IptablesLegacy] => Ok(()),
            other => Err(anyhow::anyhow!(
                "steered with {other:?}, not legacy iptables"
            )),
        },
    }
    .with_context(|| format!("log:\n{}", agent.log_tail(20)))?;
    // Written through procSysNet, the delivery sysctls land in the pod's netns.
    let fwmark_accept = tests::netns::run_in(&a.netns_path(), || {
        Ok(std::fs::read_to_string(
            "/proc/sys/net/ipv4/tcp_fwmark_accept",
        )?)
    })?;
    ensure!(
        fwmark_accept.trim() == "1",
        "client-a's tcp_fwmark_accept is {fwmark_accept:?}"
    );
    let before = Snapshot::take(&agent)?;
    let target = addr(b.ip(), 8080);
    let r = a.dial_one(target, 4096)?;
    ensure!(
        r.is_ok(),
        "the connection failed: {r:?}; log:\n{}",
        agent.log_tail(20)
    );
    assert_transparent(&r, a.ip().into(), target);
    before
        .expect_captured(&agent, &[("client-a", 1)])
        .with_context(|| format!("log:\n{}", agent.log_tail(20)))
}

/// The effective capabilities of process `pid`, as a bit mask.
fn held_capabilities(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .context("no CapEff")?;
    Ok(u64::from_str_radix(hex.trim(), 16)?)
}

/// The bit mask of capability names (linux/capability.h).
fn mask(caps: &[String]) -> Result<u64> {
    const NUMBERS: &[(&str, u32)] = &[
        ("NET_ADMIN", 12),
        ("NET_RAW", 13),
        ("SYS_PTRACE", 19),
        ("SYS_ADMIN", 21),
        ("SYS_RESOURCE", 24),
        ("PERFMON", 38),
        ("BPF", 39),
        ("DAC_OVERRIDE", 1),
    ];
    caps.iter().try_fold(0, |m, cap| {
        let name = cap.trim_start_matches("CAP_");
        let (_, n) = NUMBERS
            .iter()
            .find(|(known, _)| *known == name)
            .with_context(|| format!("{cap}: add its number here"))?;
        Ok(m | 1 << n)
    })
}

/// The DaemonSet's `redirect.mode: auto` finds eBPF workable with only the shipped
/// capabilities (its probe loads and attaches every program on a scratch cgroup).
#[test]
fn auto_picks_ebpf_with_the_deployed_capabilities() {
    assert_eq!(auto_mode(&deployed_capabilities()).unwrap(), "ebpf");
}

/// The shipped set captures in `mode` (and, in iptables mode, through iptables-legacy).
fn deployed_capabilities_capture(mode: Mode) {
    let caps = deployed_capabilities();
    captured_with(mode, Setup::Plain, &caps).unwrap();
    if mode == Mode::Iptables {
        captured_with(mode, Setup::LegacyIptables, &caps).unwrap();
    }
}

/// Without any one of the shipped capabilities, what it is said to be needed for fails
/// (capture in `mode`, or, once, `auto` picking eBPF); a capability no proof needs has no
/// place in the DaemonSet.
fn each_capability_is_needed(mode: Mode) {
    let caps = deployed_capabilities();
    for cap in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != cap).cloned().collect();
        match needed_for(cap) {
            None => panic!("{cap} is in deploy/ but nothing here shows it is needed"),
            Some(Proof::Capture(modes, setup)) if modes.contains(&mode) => {
                match captured_with(mode, setup, &fewer) {
                    Ok(()) => panic!("{mode} mode captured without {cap}: it is not needed"),
                    Err(e) => {
                        let e = format!("{e:#}");
                        // Said as what it is, not as a netns that does not exist.
                        if cap == "SYS_PTRACE" {
                            assert!(e.contains("needs ptrace access"), "without {cap}: {e}");
                        }
                        eprintln!("without {cap}, {mode} mode fails as it should: {e}");
                    }
                }
            }
            Some(Proof::AutoPicksEbpf) if mode == Mode::Ebpf => {
                let picked = auto_mode(&fewer).unwrap();
                assert_ne!(
                    picked, "ebpf",
                    "auto found eBPF without {cap}: it is not needed"
                );
                eprintln!("without {cap}, auto falls back to {picked}, as it should");
            }
            Some(_) => {}
        }
    }
}

/// The mode `redirect.mode: auto` (the DaemonSet's) picks with `capabilities`.
fn auto_mode(capabilities: &[String]) -> Result<String> {
    let node = Node::new()?;
    let a = node.add_pod("client-a")?;
    let cfg = AgentConfig::new(&node).with(Workload::enrolled(&a));
    ensure!(cfg.redirect.is_none(), "the default must be auto");
    let (launch, cfg) = as_deployed(&node, capabilities, cfg);
    let agent = Agent::start_held(&node, cfg, &[], launch)?;
    let metrics = agent.get_ok(METRICS, "/metrics")?;
    let picked = metrics.lines().find_map(|l| {
        let rest = l.strip_prefix("sluice_redirect_mode{mode=\"")?;
        let (mode, value) = rest.split_once("\"} ")?;
        (value.trim() == "1").then(|| mode.to_owned())
    });
    picked.with_context(|| format!("no mode in use in /metrics:\n{metrics}"))
}

/// Families that appear only after traffic this suite does not make: HTTP through a
/// service (the l7 suite), a policy denial and a failed tunnel handshake (the mesh suite).
/// `cargo xtask manifests validate` checks their names against the agent's source.
const NEED_L7_OR_MESH_TRAFFIC: &[&str] = &[
    "istio_requests_total",
    "istio_request_duration_milliseconds_bucket",
    "sluice_authz_denied_total",
    "sluice_hbone_handshake_failures_total",
];

/// Every metric the dashboard queries is one the agent exports after a captured
/// connection, in one mode or another (eBPF and netfilter counters exist only in theirs).
#[test]
fn dashboard_queries_only_exported_metrics() {
    let root = tests::workspace_root();
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/sluice.json")).unwrap();
    let wanted = dashboard_metrics(&dashboard).unwrap();
    let node = Node::new().unwrap();
    let a = node.add_pod("client-a").unwrap();
    let b = node.add_pod("server-b").unwrap();
    let _server = b.serve(8080, "server-b").unwrap();
    let mut exported = std::collections::BTreeSet::new();
    let mut agent: Option<Agent> = None;
    for mode in Mode::ALL {
        let cfg = AgentConfig::new(&node)
            .mode(mode)
            .with(Workload::enrolled(&a))
            .with(Workload::known(&b));
        match agent.as_mut() {
            Some(running) => running.restart(cfg).unwrap(),
            None => agent = Some(Agent::start(&node, cfg).unwrap()),
        }
        let running = agent.as_ref().unwrap();
        let before = Snapshot::take(running).unwrap();
        assert!(a.dial_one(addr(b.ip(), 8080), 1024).unwrap().is_ok());
        before.expect_captured(running, &[("client-a", 1)]).unwrap();
        let text = running.get_ok(METRICS, "/metrics").unwrap();
        exported.extend(exported_names(&text));
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|m| !exported.contains(*m) && !NEED_L7_OR_MESH_TRAFFIC.contains(&m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which no agent mode exports; exported: {exported:?}"
    );
}

/// The `istio_*` and `sluice_*` names in the dashboard's queries.
fn dashboard_metrics(json: &str) -> Result<std::collections::BTreeSet<String>> {
    let dash: serde_json::Value = serde_json::from_str(json)?;
    let mut names = std::collections::BTreeSet::new();
    for panel in dash["panels"].as_array().context("no panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().context("a target with no expr")?;
            let words = expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
            names.extend(
                words
                    .filter(|w| w.starts_with("istio_") || w.starts_with("sluice_"))
                    .map(String::from),
            );
        }
    }
    if names.is_empty() {
        bail!("no metric in the dashboard");
    }
    Ok(names)
}

/// The sample names in `/metrics`, from its `# TYPE` lines (Prometheus text: a counter's
/// line names its `_total` sample, a histogram's its family).
fn exported_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut parts = rest.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
            continue;
        };
        match kind {
            "histogram" => {
                names.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")))
            }
            _ => names.push(name.to_owned()),
        }
    }
    names
}

/// Without the host's `/proc/sys/net` (an unprivileged container's `/proc/sys` is
/// read-only), no pod can be enrolled: the agent says which sysctl it could not set and
/// through which path, rather than steering a pod whose deliveries would not return.
#[test]
fn a_read_only_proc_sys_net_fails_enrollment_with_the_path() {
    let err = captured_held(
        Mode::Nftables,
        Setup::Plain,
        &deployed_capabilities(),
        ProcSys::ReadOnly,
    )
    .unwrap_err();
    let err = format!("{err:#}");
    for part in [
        "setting net.ipv4.tcp_fwmark_accept through /proc/sys/net/ipv4/tcp_fwmark_accept",
        "Read-only file system",
    ] {
        assert!(err.contains(part), "{part:?} not in: {err}");
    }
}

/// The DaemonSet gives the agent a writable `/proc/sys/net`: the agent container mounts
/// the host's (hostPath `/proc/sys/net`, not read-only) where the shipped agent.yaml's
/// `procSysNet` says.
#[test]
fn the_daemonset_mounts_the_hosts_proc_sys_net_at_proc_sys_net() {
    let docs = kustomized();
    let configmap = docs
        .iter()
        .find(|d| d["kind"] == "ConfigMap" && d["data"]["agent.yaml"].is_string())
        .expect("a ConfigMap with agent.yaml");
    let file: serde_json::Value =
        serde_yaml_ng::from_str(configmap["data"]["agent.yaml"].as_str().unwrap()).unwrap();
    let proc_sys_net = file["procSysNet"]
        .as_str()
        .expect("procSysNet in agent.yaml");
    let pod = &daemonset(&docs)["spec"]["template"]["spec"];
    let agent = agent_container(&docs);
    let mount = (agent["volumeMounts"].as_array().unwrap().iter())
        .find(|m| m["mountPath"] == proc_sys_net)
        .unwrap_or_else(|| panic!("nothing mounted at {proc_sys_net}"));
    assert_ne!(mount["readOnly"], true, "{mount}");
    let volume = (pod["volumes"].as_array().unwrap().iter())
        .find(|v| v["name"] == mount["name"])
        .unwrap_or_else(|| panic!("no volume {}", mount["name"]));
    assert_eq!(volume["hostPath"]["path"], "/proc/sys/net", "{volume}");
}
