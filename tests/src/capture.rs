//! Was a connection captured? Asked the same way in every redirect mode.
//!
//! The mode-neutral signal is the proxy's: a captured connection is one the proxy accepted,
//! so `istio_tcp_connections_opened_total` for its source workload rose (before the
//! upstream dial, so refused upstreams count too). In eBPF mode the programs' own counters
//! are checked as well, exactly: they must agree.
//!
//! The agent runs inside its `cgroupRoot` (see `crate::node`), so the eBPF programs also see
//! its own connects: each captured connection's upstream dial counts once as
//! `skip_not_enrolled`. Nothing else on a test node connects, so both deltas are exact.

use crate::agent::Agent;
use crate::metrics::Metrics;
use crate::mode::Mode;
use anyhow::{Context, Result, ensure};
use std::collections::BTreeMap;
use std::time::Duration;

pub const OPENED: &str = "istio_tcp_connections_opened_total";

/// The eBPF counter the proxy's own upstream connects land in.
pub const AGENT_CONNECTS: &str = "skip_not_enrolled";

/// Counters at one moment, to compare with a later moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub mode: Mode,
    /// Connections the proxy opened, by source workload.
    pub opened: BTreeMap<String, f64>,
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
            opened: opened_by_source(&metrics),
            ebpf,
        })
    }

    /// How many more connections `source` opened through the proxy than in `self`.
    pub fn opened_since(&self, now: &Snapshot, source: &str) -> f64 {
        let at = |s: &Snapshot| s.opened.get(source).copied().unwrap_or(0.0);
        at(now) - at(self)
    }

    /// How much eBPF counter `counter` rose since `self` (both must be eBPF snapshots).
    pub fn ebpf_delta(&self, now: &Snapshot, counter: &str) -> Result<i64> {
        match (&self.ebpf, &now.ebpf) {
            (Some(before), Some(after)) => crate::agent::delta(before, after, counter),
            _ => anyhow::bail!("no eBPF counters in {self:?} / {now:?}"),
        }
    }

    /// Asserts that each `(source, n)` had exactly `n` connections captured since `self`
    /// (waiting up to 5 s for the proxy's count); in eBPF mode, also that `captured` rose by
    /// the total and `skip_not_enrolled` by as much (one upstream dial of the proxy each).
    pub fn expect_captured(&self, agent: &Agent, want: &[(&str, u64)]) -> Result<()> {
        let total: u64 = want.iter().map(|(_, n)| n).sum();
        let now = crate::poll_until(Duration::from_secs(5), "proxy counts the captures", || {
            let now = Snapshot::take(agent)?;
            let opened = want
                .iter()
                .all(|(s, n)| self.opened_since(&now, s) >= *n as f64);
            let dialled = match self.mode {
                Mode::Ebpf => self.ebpf_delta(&now, AGENT_CONNECTS)? >= total as i64,
                _ => true,
            };
            Ok((opened && dialled).then_some(now))
        })?;
        for (source, n) in want {
            let got = self.opened_since(&now, source);
            ensure!(
                got == *n as f64,
                "{source}: {got} connections opened through the proxy, want {n} ({} mode)",
                self.mode
            );
        }
        if self.mode == Mode::Ebpf {
            for counter in ["captured", AGENT_CONNECTS] {
                let got = self.ebpf_delta(&now, counter)?;
                ensure!(
                    got == total as i64,
                    "eBPF {counter} rose by {got}, want {total}: {:?} -> {:?}",
                    self.ebpf,
                    now.ebpf
                );
            }
        }
        Ok(())
    }

    /// Asserts that the one connection made since `self` was not captured: the proxy opened
    /// no connection from any source. In eBPF mode also that `captured` did not rise and
    /// `ebpf_reason` (the skip counter that explains why) rose by exactly one.
    pub fn expect_not_captured(&self, agent: &Agent, ebpf_reason: &str) -> Result<()> {
        let now = Snapshot::take(agent)?;
        let total = |s: &Snapshot| s.opened.values().sum::<f64>();
        ensure!(
            total(&now) == total(self),
            "the proxy opened connections ({} mode): {:?} -> {:?}",
            self.mode,
            self.opened,
            now.opened
        );
        if self.mode == Mode::Ebpf {
            let captured = self.ebpf_delta(&now, "captured")?;
            let skipped = self.ebpf_delta(&now, ebpf_reason)?;
            ensure!(
                captured == 0 && skipped == 1,
                "eBPF: captured +{captured}, {ebpf_reason} +{skipped} (want +0, +1): {:?} -> {:?}",
                self.ebpf,
                now.ebpf
            );
        }
        Ok(())
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

fn opened_by_source(metrics: &Metrics) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for s in metrics.matching(OPENED, &[]) {
        let source = s.labels.get("source_workload").cloned().unwrap_or_default();
        *out.entry(source).or_insert(0.0) += s.value;
    }
    out
}
