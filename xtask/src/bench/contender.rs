//! The contenders: no mesh, Sluice's node agent in each of its redirect modes (eBPF,
//! nftables, iptables), and Envoy set up as Istio's sidecar would be for the same path
//! (istio-iptables REDIRECT rules in the client pod, a `virtualOutbound` listener on 15001,
//! `tcp_proxy` to an ORIGINAL_DST cluster).
//!
//! Both proxies get one CPU (`taskset`, the same one) and so one worker: Envoy by
//! `--concurrency 1`, the agent because tokio sizes its multi-thread runtime from the CPUs
//! it may run on.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use super::topo::{self, CLIENT_IP, Place, Proc, SERVER_IP, Topology};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Contender {
    Direct,
    SluiceEbpf,
    SluiceNftables,
    SluiceIptables,
    Envoy,
}

impl Contender {
    pub const ALL: [Contender; 5] = [
        Contender::Direct,
        Contender::SluiceEbpf,
        Contender::SluiceNftables,
        Contender::SluiceIptables,
        Contender::Envoy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Contender::Direct => "direct",
            Contender::SluiceEbpf => "sluice-ebpf",
            Contender::SluiceNftables => "sluice-nftables",
            Contender::SluiceIptables => "sluice-iptables",
            Contender::Envoy => "envoy",
        }
    }

    /// The agent's `redirect.mode` for a Sluice contender.
    fn redirect_mode(self) -> Option<&'static str> {
        match self {
            Contender::SluiceEbpf => Some("ebpf"),
            Contender::SluiceNftables => Some("nftables"),
            Contender::SluiceIptables => Some("iptables"),
            Contender::Direct | Contender::Envoy => None,
        }
    }

    pub fn parse(name: &str) -> Result<Contender> {
        Contender::ALL
            .into_iter()
            .find(|c| c.name() == name)
            .with_context(|| {
                let all: Vec<&str> = Contender::ALL.iter().map(|c| c.name()).collect();
                format!("unknown contender {name:?}: one of {}", all.join(", "))
            })
    }
}

/// The binaries a run needs.
pub struct Bins {
    pub agent: PathBuf,
    /// The release xtask, run inside the pods as the load tool.
    pub tool: PathBuf,
    pub envoy: PathBuf,
}

impl Bins {
    /// Runs the load tool (`xtask bench <args>`) in `place` and returns its stdout.
    pub fn tool_output(&self, place: &Place, args: &[String]) -> Result<String> {
        let mut all = vec!["bench".to_string()];
        all.extend_from_slice(args);
        topo::output(place, &self.tool, &all)
    }

    pub fn tool_args(&self, args: &[String]) -> Vec<String> {
        let mut all = vec!["bench".to_string()];
        all.extend_from_slice(args);
        all
    }
}

/// Istio's proxy uid: its iptables rules exempt the proxy's own traffic by this owner.
const ENVOY_UID: u32 = 1337;

/// A contender set up for one scenario run; dropping it tears it down.
pub struct Running<'t> {
    pub contender: Contender,
    topo: &'t Topology,
    bins: &'t Bins,
    proxy: Option<Proc>,
    agent_config: Option<PathBuf>,
    iptables: bool,
}

impl<'t> Running<'t> {
    pub fn start(contender: Contender, topo: &'t Topology, bins: &'t Bins) -> Result<Self> {
        let mut running = Running {
            contender,
            topo,
            bins,
            proxy: None,
            agent_config: None,
            iptables: false,
        };
        match (contender, contender.redirect_mode()) {
            (_, Some(mode)) => running.start_sluice(mode)?,
            (Contender::Envoy, None) => running.start_envoy()?,
            _ => {}
        }
        Ok(running)
    }

    /// The proxy's pid (its CPU time and RSS are the proxy's cost); `None` for `direct`.
    pub fn proxy_pid(&self) -> Option<u32> {
        self.proxy.as_ref().map(Proc::pid)
    }

    fn proxy_place(&self, netns: &str, cgroup: PathBuf) -> Place {
        Place {
            netns: self.topo.netns(netns),
            cgroup: Some(cgroup),
            cpu: Some(self.topo.cpus.proxy),
            uid: None,
            // A DaemonSet's container gets containerd's 1M; the agent does not raise it.
            nofile: Some(self.topo.nofile),
        }
    }

    fn start_sluice(&mut self, mode: &str) -> Result<()> {
        let t = self.topo;
        let config = t.workdir().join("agent.yaml");
        let yaml = format!(
            "node: {node}\ncgroupRoot: {root}\nredirect:\n  mode: {mode}\nadminAddress: 127.0.0.1:15000\n\
             metricsAddress: 127.0.0.1:15020\nreadinessAddress: 127.0.0.1:15021\n\
             workloads:\n  - name: client\n    namespace: bench\n    ips: [\"{CLIENT_IP}\"]\n\
             \x20   netns: {netns}\n    cgroup: {cgroup}\n  - name: server\n    namespace: bench\n\
             \x20   ips: [\"{SERVER_IP}\"]\n    enrolled: false\n",
            node = t.node_name(),
            root = t.cgroup_root().display(),
            netns = t.netns_path("client").display(),
            cgroup = t.pod_cgroup("client").display(),
        );
        std::fs::write(&config, yaml).with_context(|| format!("writing {}", config.display()))?;
        self.agent_config = Some(config.clone());
        let place = self.proxy_place("node", t.agent_cgroup());
        let args = [
            "run".to_string(),
            "--config".into(),
            config.display().to_string(),
            "--log-level".into(),
            "warn".into(),
        ];
        self.proxy = Some(Proc::spawn(
            t,
            "mesh-agent",
            &place,
            &self.bins.agent,
            &args,
        )?);
        self.wait_http("node", "127.0.0.1:15021", "/healthz/ready")
            .context("mesh-agent did not become ready")?;
        Ok(())
    }

    fn start_envoy(&mut self) -> Result<()> {
        let t = self.topo;
        let rules = topo::output(
            &t.plain("client"),
            &self.bins.agent,
            &[
                "iptables".into(),
                "render".into(),
                "--profile".into(),
                "istio-sidecar".into(),
                "-i".into(),
                "*".into(),
                "-u".into(),
                ENVOY_UID.to_string(),
            ],
        )
        .context("rendering istio-iptables rules with mesh-agent")?;
        self.iptables = true;
        let mut restore = topo::command(&t.plain("client"), "iptables-restore", &[]);
        let mut child = restore
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting iptables-restore in the client pod")?;
        child
            .stdin
            .take()
            .context("iptables-restore has no stdin")?
            .write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "iptables-restore in the client pod failed: {}\nrules:\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
        let config = t.workdir().join("envoy.yaml");
        std::fs::write(&config, ENVOY_CONFIG)
            .with_context(|| format!("writing {}", config.display()))?;
        let mut place = self.proxy_place("client", t.pod_cgroup("client"));
        place.uid = Some(ENVOY_UID);
        let args = [
            "-c".to_string(),
            config.display().to_string(),
            "--concurrency".into(),
            "1".into(),
            "--log-level".into(),
            "warn".into(),
            "--disable-hot-restart".into(),
        ];
        self.proxy = Some(Proc::spawn(t, "envoy", &place, &self.bins.envoy, &args)?);
        self.wait_http("client", "127.0.0.1:15000", "/ready")
            .context("envoy did not become ready")?;
        Ok(())
    }

    fn wait_http(&mut self, netns: &str, addr: &str, path: &str) -> Result<()> {
        let probe = self.bins.tool_output(
            &self.topo.plain(netns),
            &[
                "http-get".into(),
                addr.into(),
                path.into(),
                "--timeout".into(),
                "30".into(),
            ],
        );
        if let Some(proxy) = self.proxy.as_mut() {
            proxy.check_alive()?;
        }
        probe.map(drop)
    }

    /// The end of the proxy's log, for errors.
    pub fn log_tail(&self) -> String {
        self.proxy
            .as_ref()
            .map(|p| {
                // Envoy's crash dumps end in dozens of bare frame addresses; keep the message.
                let tail = p.log_tail(80);
                let lines: Vec<&str> = tail.lines().filter(|l| !l.contains("] #")).collect();
                format!(
                    "{} log:\n{}",
                    p.name,
                    lines[lines.len().saturating_sub(20)..].join("\n")
                )
            })
            .unwrap_or_default()
    }

    /// Connections the proxy has accepted so far: a run whose proxy carried nothing measured
    /// the direct path, and must fail rather than be reported.
    pub fn connections_carried(&self) -> Result<u64> {
        let (netns, addr, path, metric) = match self.contender {
            Contender::Direct => return Ok(0),
            Contender::SluiceEbpf | Contender::SluiceNftables | Contender::SluiceIptables => (
                "node",
                "127.0.0.1:15020",
                "/metrics",
                "istio_tcp_connections_opened_total",
            ),
            Contender::Envoy => (
                "client",
                "127.0.0.1:15000",
                "/stats?filter=downstream_cx_total",
                "tcp.PassthroughCluster.downstream_cx_total",
            ),
        };
        let text = self.bins.tool_output(
            &self.topo.plain(netns),
            &["http-get".into(), addr.into(), path.into()],
        )?;
        Ok(sum_metric(&text, metric))
    }

    /// Stops the proxy and removes what it installed; errors are returned, not printed.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        if let Some(mut proxy) = self.proxy.take() {
            let exited = proxy.wait_timeout(Duration::ZERO)?;
            drop(proxy);
            if let Some(status) = exited {
                bail!(
                    "{} had exited ({status}) before the end of its run",
                    self.contender.name()
                );
            }
        }
        if let Some(config) = self.agent_config.take() {
            topo::output(
                &self.topo.plain("node"),
                &self.bins.agent,
                &[
                    "cleanup".into(),
                    "--config".into(),
                    config.display().to_string(),
                ],
            )
            .context("mesh-agent cleanup")?;
            // The agent leaves its netfilter rules in the pod when it stops, so that a
            // restarted agent takes over without a gap; here they would send the next
            // contender's connections to a listener that is gone.
            let netns = self.topo.netns_path("client").display().to_string();
            topo::output(
                &self.topo.plain("node"),
                &self.bins.agent,
                &["iptables".into(), "cleanup".into(), "--netns".into(), netns],
            )
            .context("removing the agent's rules from the client pod")?;
        }
        if std::mem::take(&mut self.iptables) {
            for args in [["-t", "nat", "-F"], ["-t", "nat", "-X"]] {
                let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                topo::output(&self.topo.plain("client"), "iptables", &args)
                    .context("removing the client pod's iptables rules")?;
            }
            // REDIRECT leaves NAT entries in conntrack (TIME_WAIT lasts two minutes): a later
            // contender's connection reusing such a 4-tuple would still be redirected to
            // 15001, where nothing listens any more, and be reset.
            topo::output(&self.topo.plain("client"), "conntrack", &["-F".to_string()])
                .context("flushing the client pod's conntrack table")?;
        }
        Ok(())
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            eprintln!("bench: tearing down {}: {e:#}", self.contender.name());
        }
    }
}

/// Sums every sample of `name` in Prometheus text (`name{...} 3`) or Envoy stats
/// (`name: 3`).
fn sum_metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{', ':']))
        })
        .filter_map(|l| l.rsplit([' ', ':']).next()?.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Istio's outbound path reduced to L4: `virtualOutbound` on 15001 restores the original
/// destination and `tcp_proxy` sends it to `PassthroughCluster` (ORIGINAL_DST), with the
/// circuit breakers Istio sets there (Envoy's default of 1024 connections would refuse the
/// idle-connection test).
const ENVOY_CONFIG: &str = r#"admin:
  address: {socket_address: {address: 127.0.0.1, port_value: 15000}}
static_resources:
  listeners:
  - name: virtualOutbound
    address: {socket_address: {address: 0.0.0.0, port_value: 15001}}
    listener_filters:
    - name: envoy.filters.listener.original_dst
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: PassthroughCluster
          cluster: PassthroughCluster
  clusters:
  - name: PassthroughCluster
    type: ORIGINAL_DST
    lb_policy: CLUSTER_PROVIDED
    connect_timeout: 5s
    circuit_breakers:
      thresholds:
      - max_connections: 4294967295
        max_pending_requests: 4294967295
        max_requests: 4294967295
        max_retries: 4294967295
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_prometheus_and_envoy_counters() {
        let prom = "# HELP x\nistio_tcp_connections_opened_total{a=\"1\"} 3\n\
                    istio_tcp_connections_opened_total{a=\"2\"} 4\nistio_tcp_connections_opened_totalx 9\n";
        assert_eq!(sum_metric(prom, "istio_tcp_connections_opened_total"), 7);
        let envoy = "tcp.PassthroughCluster.downstream_cx_total: 12\n";
        assert_eq!(
            sum_metric(envoy, "tcp.PassthroughCluster.downstream_cx_total"),
            12
        );
    }
}
