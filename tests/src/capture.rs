//! Was a connection captured? Asked the same way in every redirect mode.
//!
//! The mode-neutral signal is the proxy's: a captured connection is one the proxy accepted,
//! so `istio_tcp_connections_opened_total` rose (before the upstream dial, so refused
//! upstreams count too): with `reporter="source"` for its source workload when it was
//! captured leaving a pod (outbound), with `reporter="destination"` for its destination
//! workload when it was captured arriving at a pod (inbound). A connection between two
//! enrolled pods is counted once each way. In eBPF mode the programs' own counters are
//! checked as well, exactly: they must agree.
//!
//! The agent runs inside its `cgroupRoot` (see `crate::node`), so the eBPF programs also see
//! its own connects: each outbound capture's upstream dial and each inbound capture's
//! delivery to the app counts once as `skip_not_enrolled`, as does every connect of a pod
//! that is not enrolled. Nothing else on a test node connects, so every delta is exact.

use crate::agent::Agent;
use crate::metrics::Metrics;
use crate::mode::Mode;
use anyhow::{Context, Result, ensure};
use std::collections::BTreeMap;
use std::time::Duration;

pub const OPENED: &str = "istio_tcp_connections_opened_total";

/// The eBPF counter the proxy's own connects (upstream and delivery) land in.
pub const AGENT_CONNECTS: &str = "skip_not_enrolled";

/// What a stretch of traffic must have been captured as; see [`Snapshot::expect_flows`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Flows<'a> {
    /// `(source workload, connections)` captured leaving their pod.
    pub outbound: &'a [(&'a str, u64)],
    /// `(destination workload, connections)` captured arriving at their pod.
    pub inbound: &'a [(&'a str, u64)],
    /// Connects made from pods that are not enrolled (eBPF counts each as not enrolled).
    pub unenrolled_connects: u64,
}

impl<'a> Flows<'a> {
    /// Connections from pods outside the mesh, captured arriving at `inbound`'s workloads.
    pub fn from_outside(inbound: &'a [(&'a str, u64)]) -> Flows<'a> {
        let mut flows = Flows {
            inbound,
            ..Flows::default()
        };
        flows.unenrolled_connects = flows.inbound_total();
        flows
    }

    fn outbound_total(&self) -> u64 {
        self.outbound.iter().map(|(_, n)| n).sum()
    }

    fn inbound_total(&self) -> u64 {
        self.inbound.iter().map(|(_, n)| n).sum()
    }

    /// Connects eBPF sees from processes outside the mesh: the agent's upstream dials and
    /// deliveries, and the unenrolled pods' own.
    fn not_enrolled_connects(&self) -> u64 {
        self.outbound_total() + self.inbound_total() + self.unenrolled_connects
    }

    /// What each eBPF counter must have risen by.
    fn ebpf(&self) -> [(&'static str, u64); 2] {
        [
            ("captured", self.outbound_total()),
            (AGENT_CONNECTS, self.not_enrolled_connects()),
        ]
    }

    /// eBPF counters that count lookups rather than connections: sk_lookup sees each SYN,
    /// and a SYN a full accept queue dropped (the app's for a delivery, the proxy's for a
    /// capture, as on a loaded VM) comes again. The proxy's own inbound count stays exact,
    /// so a connection captured twice is still caught.
    fn ebpf_at_least(&self) -> [(&'static str, u64); 2] {
        [
            ("inbound_captured", self.inbound_total()),
            ("inbound_skip_delivery", self.inbound_total()),
        ]
    }
}

/// Counters at one moment, to compare with a later moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub mode: Mode,
    /// Connections the proxy opened outbound (`reporter="source"`), by source workload.
    pub opened: BTreeMap<String, f64>,
    /// Connections the proxy opened inbound (`reporter="destination"`), by destination
    /// workload.
    pub inbound: BTreeMap<String, f64>,
    /// The eBPF programs' counters (eBPF mode only).
    pub ebpf: Option<BTreeMap<String, u64>>,
}

impl Snapshot {
    pub fn take(agent: &Agent) -> Result<Snapshot> {
        let metrics = agent.metrics()?;
        let mode = running_mode(&metrics)?;
        let ebpf = match mode {
            Mode::Ebpf => Some(agent.counters()?),
            _ => None,
        };
        Ok(Snapshot {
            mode,
            opened: opened_by(&metrics, "source", "source_workload"),
            inbound: opened_by(&metrics, "destination", "destination_workload"),
            ebpf,
        })
    }

    /// How many more connections `source` opened through the proxy (outbound) than in `self`.
    pub fn opened_since(&self, now: &Snapshot, source: &str) -> f64 {
        let at = |s: &Snapshot| s.opened.get(source).copied().unwrap_or(0.0);
        at(now) - at(self)
    }

    /// How many more connections the proxy captured arriving at `destination` than in `self`.
    pub fn inbound_since(&self, now: &Snapshot, destination: &str) -> f64 {
        let at = |s: &Snapshot| s.inbound.get(destination).copied().unwrap_or(0.0);
        at(now) - at(self)
    }

    /// How much eBPF counter `counter` rose since `self` (both must be eBPF snapshots).
    pub fn ebpf_delta(&self, now: &Snapshot, counter: &str) -> Result<i64> {
        match (&self.ebpf, &now.ebpf) {
            (Some(before), Some(after)) => crate::agent::delta(before, after, counter),
            _ => anyhow::bail!("no eBPF counters in {self:?} / {now:?}"),
        }
    }

    /// Asserts that each `(source, n)` had exactly `n` connections captured outbound since
    /// `self`, and nothing inbound (see [`Snapshot::expect_flows`]).
    pub fn expect_captured(&self, agent: &Agent, want: &[(&str, u64)]) -> Result<()> {
        self.expect_flows(
            agent,
            Flows {
                outbound: want,
                ..Flows::default()
            },
        )
    }

    /// Asserts that exactly `want` was captured since `self` (waiting up to 5 s for the
    /// proxy's counts): outbound by source workload, inbound by destination workload. In
    /// eBPF mode also that `captured` rose by the outbound total, `inbound_captured` and
    /// `inbound_skip_delivery` (the agent's delivery to the app, let through) by at least the
    /// inbound total (once per SYN), and `skip_not_enrolled` by both plus the unenrolled
    /// pods' connects.
    pub fn expect_flows(&self, agent: &Agent, want: Flows) -> Result<()> {
        let rose_enough = |now: &Snapshot| -> Result<bool> {
            let outbound = want
                .outbound
                .iter()
                .all(|(s, n)| self.opened_since(now, s) >= *n as f64);
            let inbound = want
                .inbound
                .iter()
                .all(|(d, n)| self.inbound_since(now, d) >= *n as f64);
            let dialled = match self.mode {
                Mode::Ebpf => {
                    self.ebpf_delta(now, AGENT_CONNECTS)? >= want.not_enrolled_connects() as i64
                }
                _ => true,
            };
            Ok(outbound && inbound && dialled)
        };
        let now = crate::poll_until(Duration::from_secs(5), "proxy counts the captures", || {
            let now = Snapshot::take(agent)?;
            Ok(rose_enough(&now)?.then_some(now))
        })?;
        for (source, n) in want.outbound {
            let got = self.opened_since(&now, source);
            ensure!(
                got == *n as f64,
                "{source}: {got} connections opened outbound through the proxy, want {n} ({} mode)",
                self.mode
            );
        }
        for (destination, n) in want.inbound {
            let got = self.inbound_since(&now, destination);
            ensure!(
                got == *n as f64,
                "{destination}: {got} connections captured inbound, want {n} ({} mode)",
                self.mode
            );
        }
        if self.mode == Mode::Ebpf {
            for (counter, n) in want.ebpf() {
                let got = self.ebpf_delta(&now, counter)?;
                ensure!(
                    got == n as i64,
                    "eBPF {counter} rose by {got}, want {n} for {want:?}: {:?} -> {:?}",
                    self.ebpf,
                    now.ebpf
                );
            }
            for (counter, n) in want.ebpf_at_least() {
                let got = self.ebpf_delta(&now, counter)?;
                ensure!(
                    got >= n as i64,
                    "eBPF {counter} rose by {got}, want at least {n} for {want:?}: {:?} -> {:?}",
                    self.ebpf,
                    now.ebpf
                );
            }
        }
        Ok(())
    }

    /// Asserts that the one connection made since `self` was not captured: the proxy opened
    /// no connection, outbound or inbound. In eBPF mode also that neither `captured` nor
    /// `inbound_captured` rose and `ebpf_reason` (the skip counter that explains why) rose
    /// by exactly one.
    pub fn expect_not_captured(&self, agent: &Agent, ebpf_reason: &str) -> Result<()> {
        let now = Snapshot::take(agent)?;
        let total = |s: &Snapshot| s.opened.values().chain(s.inbound.values()).sum::<f64>();
        ensure!(
            total(&now) == total(self),
            "the proxy opened connections ({} mode): {:?} {:?} -> {:?} {:?}",
            self.mode,
            self.opened,
            self.inbound,
            now.opened,
            now.inbound
        );
        if self.mode == Mode::Ebpf {
            let captured = self.ebpf_delta(&now, "captured")?;
            let inbound = self.ebpf_delta(&now, "inbound_captured")?;
            let skipped = self.ebpf_delta(&now, ebpf_reason)?;
            ensure!(
                captured == 0 && inbound == 0 && skipped == 1,
                "eBPF: captured +{captured}, inbound_captured +{inbound}, {ebpf_reason} \
                 +{skipped} (want +0, +0, +1): {:?} -> {:?}",
                self.ebpf,
                now.ebpf
            );
        }
        Ok(())
    }
}

/// Istio's four TCP counters summed over the samples whose labels include `labels`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TcpCounts {
    pub opened: f64,
    pub closed: f64,
    /// Bytes the server sent back (the response).
    pub sent: f64,
    /// Bytes the client sent (the request).
    pub received: f64,
}

impl TcpCounts {
    pub fn of(metrics: &Metrics, labels: &[(&str, &str)]) -> TcpCounts {
        TcpCounts {
            opened: metrics.sum(OPENED, labels),
            closed: metrics.sum("istio_tcp_connections_closed_total", labels),
            sent: metrics.sum("istio_tcp_sent_bytes_total", labels),
            received: metrics.sum("istio_tcp_received_bytes_total", labels),
        }
    }
}

/// The node mode the agent reports through `sluice_redirect_mode{mode=...} 1`.
pub fn running_mode(metrics: &Metrics) -> Result<Mode> {
    let on: Vec<&str> = metrics
        .matching("sluice_redirect_mode", &[])
        .filter(|s| s.value == 1.0)
        .filter_map(|s| s.labels.get("mode").map(String::as_str))
        .collect();
    let name = match on.as_slice() {
        [one] => *one,
        _ => anyhow::bail!("sluice_redirect_mode: want exactly one mode at 1, got {on:?}"),
    };
    Mode::ALL
        .into_iter()
        .find(|m| m.as_str() == name)
        .with_context(|| format!("unknown redirect mode {name:?}"))
}

/// `istio_tcp_connections_opened_total{reporter=<reporter>}` summed by the value of `label`.
fn opened_by(metrics: &Metrics, reporter: &str, label: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in metrics.matching(OPENED, &[("reporter", reporter)]) {
        let key = s.labels.get(label).cloned().unwrap_or_default();
        *out.entry(key).or_insert(0.0) += s.value;
    }
    out
}
