//! The contenders: no mesh, Sluice's node agent in each of its redirect modes (eBPF,
//! nftables, iptables), and Envoy set up as Istio's sidecar would be for the same path
//! (istio-iptables REDIRECT rules in each pod on the path, a `virtualOutbound` listener on
//! 15001 and a `virtualInbound` one on 15006, `tcp_proxy` to ORIGINAL_DST clusters; its
//! configuration is in `envoy`).
//!
//! A scenario's [`Path`] says which pods are in the mesh: one agent serves them all, where
//! Istio puts one Envoy in each. On the mTLS path the agent gets an `identity` section with
//! the run's CA (`pki`), so the two pods talk through its HBONE tunnel, and each Envoy
//! sidecar a certificate of that CA for Istio's mTLS between them. On the HTTP path the
//! agent gets the service the client calls (`agent`), and the client's Envoy an HTTP
//! listener for it (`envoy_http`).
//!
//! Every proxy gets the same one CPU (`taskset`) and so one worker: Envoy by
//! `--concurrency 1`, the agent because tokio sizes its multi-thread runtime from the CPUs
//! it may run on. On the mesh path both sidecars share that CPU too: the mesh gets one CPU
//! for proxying whichever proxy does it, and with two CPUs the other one is the server's.

use std::io::Write;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, ensure};

use super::agent::{AgentPod, agent_yaml};
use super::scenario::Path;
use super::topo::{self, CLIENT_IP, Place, Proc, SERVER_IP, Topology};
use super::{envoy, envoy_http, http, pki};

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

/// The proxy a captured pod puts on the path, and how each contender counts what it carried.
struct Hop {
    /// Topology role of the pod.
    pod: &'static str,
    /// For errors: which way the connections pass this proxy.
    what: &'static str,
    /// Sluice's `reporter` label on its connection counters for this side.
    reporter: &'static str,
}

const HOPS: [Hop; 2] = [
    Hop {
        pod: "client",
        what: "out of the client pod",
        reporter: "source",
    },
    Hop {
        pod: "server",
        what: "into the server pod",
        reporter: "destination",
    },
];

fn hop(pod: &str) -> &'static Hop {
    HOPS.iter()
        .find(|h| h.pod == pod)
        .expect("every captured pod is a client or a server")
}

/// A contender set up on one path for one scenario run; dropping it tears it down.
pub struct Running<'t> {
    pub contender: Contender,
    path: Path,
    topo: &'t Topology,
    bins: &'t Bins,
    /// The agent, or one Envoy per captured pod.
    proxies: Vec<Proc>,
    agent_config: Option<PathBuf>,
    /// Pods where the bench applied istio-iptables rules itself.
    iptables: Vec<&'static str>,
}

impl<'t> Running<'t> {
    pub fn start(
        contender: Contender,
        path: Path,
        topo: &'t Topology,
        bins: &'t Bins,
    ) -> Result<Self> {
        let mut running = Running {
            contender,
            path,
            topo,
            bins,
            proxies: Vec::new(),
            agent_config: None,
            iptables: Vec::new(),
        };
        match (contender, contender.redirect_mode()) {
            (_, Some(mode)) => running.start_sluice(mode)?,
            (Contender::Envoy, None) => {
                for &pod in path.captured() {
                    running.start_sidecar(pod)?;
                }
            }
            _ => {}
        }
        Ok(running)
    }

    /// The proxies' pids (their CPU time and RSS are the proxies' cost); none for `direct`.
    pub fn proxy_pids(&self) -> Vec<u32> {
        self.proxies.iter().map(Proc::pid).collect()
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
        let ca = match self.path.mtls() {
            true => Some(pki::ca(t.workdir(), &self.bins.agent)?),
            false => None,
        };
        let pods: Vec<AgentPod> = [("client", CLIENT_IP), ("server", SERVER_IP)]
            .into_iter()
            .map(|(name, ip)| AgentPod {
                name,
                ip,
                captured: self
                    .path
                    .captured()
                    .contains(&name)
                    .then(|| (t.netns_path(name), t.pod_cgroup(name))),
            })
            .collect();
        let yaml = agent_yaml(
            t.node_name(),
            &t.cgroup_root(),
            mode,
            &pods,
            ca.as_deref(),
            self.path == Path::Http,
        );
        let config = t.workdir().join("agent.yaml");
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
        self.proxies.push(Proc::spawn(
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

    /// Envoy as Istio injects it into `pod`: istio-iptables capturing the pod's outbound
    /// and inbound TCP, and Envoy beside the app as uid 1337 with one worker.
    fn start_sidecar(&mut self, pod: &'static str) -> Result<()> {
        let t = self.topo;
        let rules = topo::output(
            &t.plain(pod),
            &self.bins.agent,
            &[
                "iptables".into(),
                "render".into(),
                "--profile".into(),
                "istio-sidecar".into(),
                "-p".into(),
                "15001".into(),
                "-z".into(),
                "15006".into(),
                "-i".into(),
                "*".into(),
                "-b".into(),
                "*".into(),
                "-u".into(),
                envoy::UID.to_string(),
            ],
        )
        .context("rendering istio-iptables rules with mesh-agent")?;
        self.iptables.push(pod);
        let mut restore = topo::command(&t.plain(pod), "iptables-restore", &[]);
        let mut child = restore
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting iptables-restore in the {pod} pod"))?;
        child
            .stdin
            .take()
            .context("iptables-restore has no stdin")?
            .write_all(rules.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "iptables-restore in the {pod} pod failed: {}\nrules:\n{rules}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tls = match self.path.mtls() {
            true => Some(pki::sidecar(t.workdir(), &self.bins.agent, pod)?),
            false => None,
        };
        // Envoy reads JSON as YAML; the name keeps each sidecar's apart.
        let config = t.workdir().join(format!("envoy-{pod}.json"));
        let value = match self.path {
            Path::Http => envoy_http::config(SERVER_IP),
            _ => envoy::config(tls.as_ref()),
        };
        let text = serde_json::to_string_pretty(&value)?;
        std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
        let mut place = self.proxy_place(pod, t.pod_cgroup(pod));
        place.uid = Some(envoy::UID);
        let args = [
            "-c".to_string(),
            config.display().to_string(),
            "--concurrency".into(),
            "1".into(),
            "--log-level".into(),
            "warn".into(),
            "--disable-hot-restart".into(),
        ];
        let name = format!("envoy-{pod}");
        self.proxies
            .push(Proc::spawn(t, &name, &place, &self.bins.envoy, &args)?);
        self.wait_http(pod, "127.0.0.1:15000", "/ready")
            .with_context(|| format!("{name} did not become ready"))?;
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
        for proxy in &mut self.proxies {
            proxy.check_alive()?;
        }
        probe.map(drop)
    }

    /// The end of each proxy's log, for errors.
    pub fn log_tail(&self) -> String {
        let tails: Vec<String> = self
            .proxies
            .iter()
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
            .collect();
        tails.join("\n")
    }

    /// Fails unless every proxy on the path accepted connections: a run where one of them
    /// carried nothing measured a shorter path than its name says, and must fail rather
    /// than be reported.
    pub fn check_carried(&self) -> Result<()> {
        if self.contender == Contender::Direct {
            return Ok(());
        }
        if self.path == Path::Http {
            return self.check_served();
        }
        for &pod in self.path.captured() {
            let hop = hop(pod);
            let n = self.carried(hop)?;
            ensure!(
                n > 0,
                "{} carried no connection {}{}: capture is not working",
                self.contender.name(),
                hop.what,
                if self.path.mtls() { " in mTLS" } else { "" }
            );
        }
        // Envoy's count above is of its TLS chains; Sluice's counters are the same with or
        // without the tunnel, so its streams are counted too.
        if self.path.mtls() && self.contender != Contender::Envoy {
            let text = self.get("node", "127.0.0.1:15020", "/metrics")?;
            ensure!(
                sum_metric(&text, "sluice_hbone_streams_total", None) > 0,
                "{} carried no connection through its mTLS tunnel",
                self.contender.name()
            );
        }
        Ok(())
    }

    /// On the HTTP path: the proxy must have served the requests itself (at L7), not passed
    /// the connections through.
    fn check_served(&self) -> Result<()> {
        let n = if self.contender == Contender::Envoy {
            let text = self.get(
                "client",
                "127.0.0.1:15000",
                "/stats?filter=downstream_rq_total",
            )?;
            (http::PORTS.iter())
                .map(|&p| sum_metric(&text, &envoy_http::requests_stat(p), None))
                .sum()
        } else {
            let text = self.get("node", "127.0.0.1:15020", "/metrics")?;
            sum_metric(&text, "istio_requests_total", Some("reporter=\"source\""))
        };
        ensure!(
            n > 0,
            "{} served no HTTP request of the client pod itself: the requests did not go \
             through its L7 path",
            self.contender.name()
        );
        Ok(())
    }

    /// TLS handshakes the client side has made so far on the mTLS path: Sluice's tunnels
    /// opened, Envoy's client sidecar's handshakes (full or resumed). `None` elsewhere.
    pub fn tls_handshakes(&self) -> Result<Option<u64>> {
        if !self.path.mtls() || self.contender == Contender::Direct {
            return Ok(None);
        }
        let n = if self.contender == Contender::Envoy {
            let text = self.get("client", "127.0.0.1:15000", "/stats?filter=ssl.handshake")?;
            sum_metric(&text, envoy::CLIENT_HANDSHAKES, None)
        } else {
            let text = self.get("node", "127.0.0.1:15020", "/metrics")?;
            sum_metric(&text, "sluice_hbone_tunnels_opened_total", None)
        };
        Ok(Some(n))
    }

    /// `GET http://<addr><path>` from inside `netns`: the body.
    fn get(&self, netns: &str, addr: &str, path: &str) -> Result<String> {
        self.bins.tool_output(
            &self.topo.plain(netns),
            &["http-get".into(), addr.into(), path.into()],
        )
    }

    /// Connections accepted so far by the proxy of `hop`.
    fn carried(&self, hop: &Hop) -> Result<u64> {
        if self.contender == Contender::Envoy {
            let stat = envoy::carried_stat(hop.pod == "client", self.path.mtls());
            let text = self.get(
                hop.pod,
                "127.0.0.1:15000",
                "/stats?filter=downstream_cx_total",
            )?;
            return Ok(sum_metric(&text, &stat, None));
        }
        let label = format!("reporter=\"{}\"", hop.reporter);
        let text = self.get("node", "127.0.0.1:15020", "/metrics")?;
        Ok(sum_metric(
            &text,
            "istio_tcp_connections_opened_total",
            Some(&label),
        ))
    }

    /// Stops the proxies and removes what they installed; errors are returned, not printed.
    pub fn stop(mut self) -> Result<()> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let mut exited = Vec::new();
        for mut proxy in std::mem::take(&mut self.proxies) {
            if let Some(status) = proxy.wait_timeout(Duration::ZERO)? {
                exited.push(format!("{} ({status})", proxy.name));
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
            // The agent leaves its netfilter rules in the pods when it stops, so that a
            // restarted agent takes over without a gap; here they would send the next
            // contender's connections to a listener that is gone.
            for &pod in self.path.captured() {
                let netns = self.topo.netns_path(pod).display().to_string();
                topo::output(
                    &self.topo.plain("node"),
                    &self.bins.agent,
                    &["iptables".into(), "cleanup".into(), "--netns".into(), netns],
                )
                .with_context(|| format!("removing the agent's rules from the {pod} pod"))?;
            }
        }
        for pod in std::mem::take(&mut self.iptables) {
            for args in [["-t", "nat", "-F"], ["-t", "nat", "-X"]] {
                let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
                topo::output(&self.topo.plain(pod), "iptables", &args)
                    .with_context(|| format!("removing the {pod} pod's iptables rules"))?;
            }
        }
        if self.contender != Contender::Direct {
            for &pod in self.path.captured() {
                // REDIRECT leaves NAT entries in conntrack (TIME_WAIT lasts two minutes): a
                // later contender's connection reusing such a 4-tuple would still be
                // redirected to 15001 or 15006, where nothing listens any more, and be reset.
                topo::output(&self.topo.plain(pod), "conntrack", &["-F".to_string()])
                    .with_context(|| format!("flushing the {pod} pod's conntrack table"))?;
            }
        }
        ensure!(
            exited.is_empty(),
            "{} had exited before the end of its run: {}",
            self.contender.name(),
            exited.join(", ")
        );
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
/// (`name: 3`); with `label` (`key="value"`), only the samples that carry it.
fn sum_metric(text: &str, name: &str, label: Option<&str>) -> u64 {
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            rest.starts_with([' ', '{', ':']).then_some(rest)
        })
        .filter(|rest| {
            label.is_none_or(|label| {
                rest.strip_prefix('{')
                    .and_then(|r| r.split_once('}'))
                    .is_some_and(|(labels, _)| labels.split(',').any(|l| l == label))
            })
        })
        .filter_map(|l| l.rsplit([' ', ':']).next()?.trim().parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_prometheus_and_envoy_counters() {
        let prom = "# HELP x\nistio_tcp_connections_opened_total{a=\"1\"} 3\n\
                    istio_tcp_connections_opened_total{a=\"2\"} 4\nistio_tcp_connections_opened_totalx 9\n";
        assert_eq!(
            sum_metric(prom, "istio_tcp_connections_opened_total", None),
            7
        );
        let envoy = "tcp.PassthroughCluster.downstream_cx_total: 12\n";
        assert_eq!(
            sum_metric(envoy, "tcp.PassthroughCluster.downstream_cx_total", None),
            12
        );
    }

    #[test]
    fn sums_only_the_samples_with_the_label() {
        let prom = "x{reporter=\"source\",a=\"1\"} 3\nx{a=\"2\",reporter=\"destination\"} 4\n\
                    x{reporter=\"destination\"} 5\nx 6\n";
        assert_eq!(sum_metric(prom, "x", Some("reporter=\"destination\"")), 9);
        assert_eq!(sum_metric(prom, "x", Some("reporter=\"source\"")), 3);
    }
}
