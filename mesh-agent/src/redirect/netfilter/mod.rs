//! Netfilter steering: the fallback where eBPF cannot run, with the same listeners and the
//! same behaviour. Rules live inside each pod's netns (so they die with it), under our own
//! chain or table names; the proxy reads `SO_ORIGINAL_DST` from conntrack.
//!
//! [`istio`] renders istio-iptables compatible rulesets, so Sluice can stand in for Istio's
//! init container and be checked against its expectations.
pub mod apply;
pub mod backend;
pub mod istio;
pub mod rules;

use std::{
    collections::BTreeMap,
    net::{Ipv6Addr, SocketAddr},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use mesh_common::{
    DELIVERY_MARK, INBOUND_LISTENER_PORT, OUTBOUND_LISTENER_PORT, PROXY_MARK, TUNNEL_PORT,
};
use serde::Serialize;

use self::{
    apply::{Applier, ApplyError, Outcome},
    backend::Backend,
    rules::{Family, RuleSet},
};
use super::{CaptureSpec, InboundSockets, Redirect, RedirectError, RedirectMode};
use crate::{
    config::WorkloadKey,
    sys::{
        exec::NetnsTarget,
        netns::{Netns, NetnsError},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum NetfilterError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{mode} steering needs {programs}, which is not installed")]
    Missing {
        mode: RedirectMode,
        programs: String,
    },
}

/// The ruleset a captured pod gets: outbound and inbound capture.
pub fn pod_rules(
    exclude_ports: &[u16],
    exclude_cidrs: &[ipnet::IpNet],
    exclude_inbound_ports: &[u16],
) -> RuleSet {
    RuleSet {
        outbound_port: OUTBOUND_LISTENER_PORT,
        inbound_port: INBOUND_LISTENER_PORT,
        tunnel_port: TUNNEL_PORT,
        proxy_mark: PROXY_MARK,
        delivery_mark: DELIVERY_MARK,
        exclude_ports: exclude_ports.to_vec(),
        exclude_cidrs: exclude_cidrs.to_vec(),
        inbound: true,
        inbound_exclude_ports: exclude_inbound_ports.to_vec(),
        retired: false,
    }
}

/// The families a pod's rules cover: IPv6 too when it has an IPv6 listener (then an IPv6
/// failure is fatal, or IPv6 traffic would bypass the proxy).
pub fn families(listeners: &[SocketAddr]) -> Vec<Family> {
    let mut families = vec![Family::V4];
    if listeners.iter().any(SocketAddr::is_ipv6) {
        families.push(Family::V6);
    }
    families
}

#[derive(Clone, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodRecord {
    backend: Backend,
    netns: std::path::PathBuf,
    /// Where inbound connections are steered from, for `/debug/redirect`.
    inbound_chain: &'static str,
    last_apply: Outcome,
}

fn inbound_chain(backend: Backend) -> &'static str {
    match backend {
        Backend::Nft => "inet sluice prerouting",
        _ => "nat PREROUTING -> SLUICE_INBOUND",
    }
}

pub struct NetfilterRedirect {
    mode: RedirectMode,
    applier: Applier,
    pods: Mutex<BTreeMap<WorkloadKey, PodRecord>>,
    written: AtomicU64,
    unchanged: AtomicU64,
    removed: AtomicU64,
}

impl NetfilterRedirect {
    /// `mode` is `Nftables` or `Iptables`; fails when its tools are missing.
    pub fn new(mode: RedirectMode) -> Result<Self, NetfilterError> {
        let needed = match mode {
            RedirectMode::Nftables => Backend::Nft,
            _ => Backend::IptablesNft,
        };
        if !needed.installed() {
            return Err(NetfilterError::Missing {
                mode,
                programs: needed.programs().join(", "),
            });
        }
        Ok(Self {
            mode,
            applier: Applier::default(),
            pods: Mutex::default(),
            written: AtomicU64::new(0),
            unchanged: AtomicU64::new(0),
            removed: AtomicU64::new(0),
        })
    }

    fn backend(&self, netns: &Netns) -> Backend {
        match self.mode {
            RedirectMode::Nftables => Backend::Nft,
            _ => backend::iptables_flavour(NetnsTarget::Pod(netns)),
        }
    }
}

impl Redirect for NetfilterRedirect {
    /// REDIRECT sends locally made connections to the loopback address of their family.
    fn listeners(
        &self,
        _key: &WorkloadKey,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<Vec<SocketAddr>, RedirectError> {
        let mut listeners = vec![SocketAddr::from(([127, 0, 0, 1], OUTBOUND_LISTENER_PORT))];
        if ipv6.is_some() {
            listeners.push(SocketAddr::from((
                Ipv6Addr::LOCALHOST,
                OUTBOUND_LISTENER_PORT,
            )));
        }
        Ok(listeners)
    }

    /// Inbound capture is a REDIRECT to the listeners' port: the sockets are not needed.
    fn enroll(
        &self,
        spec: &CaptureSpec,
        _inbound: &InboundSockets<'_>,
    ) -> Result<(), RedirectError> {
        let netns = Netns::open(&spec.netns).map_err(NetfilterError::from)?;
        let backend = self.backend(&netns);
        let rules = pod_rules(
            &spec.exclude_ports,
            &spec.exclude_cidrs,
            &spec.exclude_inbound_ports,
        );
        let outcome = self
            .applier
            .apply(
                NetnsTarget::Pod(&netns),
                backend,
                &rules,
                &families(&spec.listeners),
            )
            .map_err(NetfilterError::from)?;
        match outcome {
            Outcome::Written => self.written.fetch_add(1, Ordering::Relaxed),
            Outcome::Unchanged => self.unchanged.fetch_add(1, Ordering::Relaxed),
        };

        self.pods.lock().unwrap_or_else(|p| p.into_inner()).insert(
            spec.key.clone(),
            PodRecord {
                backend,
                netns: spec.netns.clone(),
                inbound_chain: inbound_chain(backend),
                last_apply: outcome,
            },
        );
        Ok(())
    }

    /// An enrolled pod's rules are replaced by a retired ruleset (see [`RuleSet::retired`]):
    /// nothing new is captured, connections already redirected keep working.
    fn release(&self, spec: &CaptureSpec) -> Result<(), RedirectError> {
        let record = self
            .pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&spec.key);
        // A pod whose netns is gone took its rules with it.
        let Ok(netns) = Netns::open(&spec.netns) else {
            return Ok(());
        };
        let target = NetnsTarget::Pod(&netns);
        let Some(record) = record else {
            // Enrolling failed part-way (release undoes it): nothing was ever relayed, so
            // whatever got applied goes, rather than leaving a retired ruleset behind.
            self.applier
                .remove_everywhere(target)
                .map_err(NetfilterError::from)?;
            return Ok(());
        };
        let mut retired = pod_rules(&[], &[], &[]);
        retired.retired = true;
        self.applier
            .apply(target, record.backend, &retired, &families(&spec.listeners))
            .map_err(NetfilterError::from)?;
        self.removed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Rules live in each pod's netns and die with it; pods this agent never enrolled are
    /// not known to it (`mesh-agent iptables cleanup --netns` removes their rules).
    fn retain_only(&self, _keep: &[&CaptureSpec]) -> Result<(), RedirectError> {
        Ok(())
    }

    fn counters(&self) -> Vec<(String, u64)> {
        let mode = self.mode.as_str();
        [
            ("rules_written", &self.written),
            ("rules_unchanged", &self.unchanged),
            ("rules_removed", &self.removed),
        ]
        .into_iter()
        .map(|(name, value)| (format!("{mode}_{name}"), value.load(Ordering::Relaxed)))
        .collect()
    }

    fn debug_dump(&self) -> serde_json::Value {
        let pods = self.pods.lock().unwrap_or_else(|p| p.into_inner()).clone();
        serde_json::json!({
            "mode": self.mode,
            "pods": pods.iter().map(|(k, v)| (k.to_string(), v)).collect::<BTreeMap<_, _>>(),
            "counters": self.counters().into_iter().collect::<BTreeMap<_, _>>(),
        })
    }
}
