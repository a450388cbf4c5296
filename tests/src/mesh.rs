//! What the mesh (mTLS tunnel) suite reads from the agents: counters by name and labels, the
//! Istio connection counters with the labels that say who talked to whom and how, and the
//! tunnel's own counters (docs/hbone.md).
//!
//! Counters are judged as rises between two reads of the same agent, never as absolute
//! values, and a rise is waited for (the proxy counts after the fact) but then checked
//! exactly where the contract says how many: a connection counted twice is as wrong as one
//! not counted.

use crate::agent::{Agent, Workload};
use crate::capture::OPENED;
use crate::metrics::Metrics;
use crate::wire::ConnResult;
use anyhow::{Context, Result, ensure};
use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

pub const TUNNELS_OPENED: &str = "sluice_hbone_tunnels_opened_total";
/// Streams by `tunnel="new"|"pooled"`: one per proxied connection.
pub const STREAMS: &str = "sluice_hbone_streams_total";
/// By `side="client"|"server"` and `reason` (`unknown_ca`, `wrong_identity`, `connect`...).
pub const HANDSHAKE_FAILURES: &str = "sluice_hbone_handshake_failures_total";
/// By `reason`: `deny_policy`, `no_allow_match`, `plaintext_strict`.
pub const AUTHZ_DENIED: &str = "sluice_authz_denied_total";
/// `connection_security_policy` of a connection that went through the tunnel.
pub const MUTUAL_TLS: &str = "mutual_tls";
/// `connection_security_policy` of a plain TCP connection.
pub const PLAINTEXT: &str = "none";

/// A counter: the sum of the samples of `name` whose labels include all of `labels` (0
/// while there are none, as for a counter nothing has touched yet).
#[derive(Clone, Debug)]
pub struct Counter {
    pub name: String,
    pub labels: Vec<(String, String)>,
}

impl Counter {
    pub fn new(name: &str) -> Counter {
        Counter {
            name: name.to_string(),
            labels: Vec::new(),
        }
    }

    /// Also requires label `key="value"`.
    pub fn with(mut self, key: &str, value: &str) -> Counter {
        self.labels.push((key.to_string(), value.to_string()));
        self
    }

    pub fn of(&self, metrics: &Metrics) -> f64 {
        let labels: Vec<(&str, &str)> = self
            .labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        // `+ 0.0`: a sum over no samples is -0.0, which reads oddly in messages.
        metrics.sum(&self.name, &labels) + 0.0
    }

    pub fn read(&self, agent: &Agent) -> Result<f64> {
        Ok(self.of(&agent.metrics()?))
    }

    /// Waits up to 5 s for the counter to reach `from + by`, then requires exactly that.
    pub fn expect_rise(&self, agent: &Agent, from: f64, by: f64) -> Result<()> {
        let now = self.expect_rise_at_least(agent, from, by)?;
        ensure!(
            now == from + by,
            "{self} rose by {}, want exactly {by}; samples:\n{}",
            now - from,
            self.samples(&agent.metrics()?)
        );
        Ok(())
    }

    /// Waits up to 5 s for the counter to reach at least `from + by`; returns its value.
    pub fn expect_rise_at_least(&self, agent: &Agent, from: f64, by: f64) -> Result<f64> {
        let mut last = Metrics::default();
        let reached = crate::poll_until(Duration::from_secs(5), &self.to_string(), || {
            last = agent.metrics()?;
            let now = self.of(&last);
            Ok((now >= from + by).then_some(now))
        });
        reached.map_err(|e| {
            anyhow::anyhow!(
                "{e:#}: {self} at {}, want a rise by {by} from {from}; samples:\n{}",
                self.of(&last),
                self.samples(&last)
            )
        })
    }

    /// Every sample of this counter's name, for failure messages (the labels that are there
    /// say what the agent counted instead).
    pub fn samples(&self, metrics: &Metrics) -> String {
        let lines: Vec<String> = metrics
            .samples
            .iter()
            .filter(|s| s.name == self.name)
            .map(|s| format!("  {:?} {}", s.labels, s.value))
            .collect();
        if lines.is_empty() {
            format!("  (no {} samples at all)", self.name)
        } else {
            lines.join("\n")
        }
    }
}

impl fmt::Display for Counter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let labels: Vec<String> = self
            .labels
            .iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect();
        write!(f, "{}{{{}}}", self.name, labels.join(","))
    }
}

/// `istio_tcp_connections_opened_total` of connections from `src` to `dst` as `reporter`
/// (`source` on the client's node, `destination` on the server's) counted them, secured by
/// `security`; under [`MUTUAL_TLS`] also both principals, the SPIFFE IDs of their config.
pub fn opened(reporter: &str, src: &Workload, dst: &Workload, security: &str) -> Counter {
    let c = Counter::new(OPENED)
        .with("reporter", reporter)
        .with("source_workload", &src.name)
        .with("destination_workload", &dst.name)
        .with("connection_security_policy", security);
    match security {
        MUTUAL_TLS => c
            .with("source_principal", &src.spiffe_id())
            .with("destination_principal", &dst.spiffe_id()),
        _ => c,
    }
}

/// `sluice_hbone_handshake_failures_total{side, reason}`.
pub fn handshake_failures(side: &str, reason: &str) -> Counter {
    Counter::new(HANDSHAKE_FAILURES)
        .with("side", side)
        .with("reason", reason)
}

/// `sluice_authz_denied_total{reason}`.
pub fn denied(reason: &str) -> Counter {
    Counter::new(AUTHZ_DENIED).with("reason", reason)
}

/// Whether the client was turned away as a refused or reset connection is: how the proxy
/// must end a connection it will not carry (never a hang, never a clean close that an app
/// could take for a complete answer).
pub fn is_refused(r: &ConnResult) -> bool {
    ["reset", "refused"].contains(&r.result.as_str())
}

/// The workload certificates an agent holds now, SPIFFE ID to serial, from `/config_dump`'s
/// `identity.identities`; an error when mTLS is off there (`identity` is then a sentence).
pub fn certificates(agent: &Agent) -> Result<BTreeMap<String, String>> {
    let dump = agent.config_dump()?;
    let ids = dump
        .pointer("/identity/identities")
        .and_then(|i| i.as_array())
        .with_context(|| {
            format!(
                "no identity.identities in /config_dump: {}",
                dump["identity"]
            )
        })?;
    Ok(ids
        .iter()
        .filter_map(|i| Some((i["id"].as_str()?.into(), i["serial"].to_string())))
        .collect())
}
