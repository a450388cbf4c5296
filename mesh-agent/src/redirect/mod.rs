//! How an enrolled pod's traffic is steered into the node proxy.
//!
//! [`Redirect`] is the one boundary. The proxy asks where the pod's listeners must be,
//! opens them, then asks the redirect mode to start steering; steering stops before the
//! listeners close. Modes: [`ebpf`] (no NAT) and [`netfilter`] (nftables or iptables rules
//! in the pod's netns). [`router::Router`] sends each pod to its mode, so one node can mix
//! them.
pub mod ebpf;
pub mod netfilter;
pub mod router;

use std::{
    net::{Ipv6Addr, SocketAddr},
    path::PathBuf,
};

use ipnet::IpNet;
use serde::Serialize;

pub use crate::config::RedirectMode;
use crate::config::WorkloadKey;

/// What steering one pod needs to know.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaptureSpec {
    pub key: WorkloadKey,
    pub mode: RedirectMode,
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    /// The pod's outbound listeners, as [`Redirect::listeners`] placed them.
    pub listeners: Vec<SocketAddr>,
    pub exclude_ports: Vec<u16>,
    pub exclude_cidrs: Vec<IpNet>,
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
    #[error(transparent)]
    Netfilter(#[from] netfilter::NetfilterError),
    #[error("redirect mode {0} is not running on this node")]
    ModeNotRunning(RedirectMode),
}

/// Steers enrolled pods' connections into their in-pod listeners.
pub trait Redirect: Send + Sync {
    /// Where the pod's outbound listeners must listen so this mode's steering reaches them.
    fn listeners(
        &self,
        key: &WorkloadKey,
        ipv6: Option<Ipv6Addr>,
    ) -> Result<Vec<SocketAddr>, RedirectError>;
    /// Starts (or updates) capturing the pod. Its listeners must already be open.
    fn enroll(&self, spec: &CaptureSpec) -> Result<(), RedirectError>;
    /// Stops capturing the pod, at once for new connections.
    fn release(&self, spec: &CaptureSpec) -> Result<(), RedirectError>;
    /// Stops steering every pod not in `keep` that this mode can still find.
    fn retain_only(&self, keep: &[&CaptureSpec]) -> Result<(), RedirectError>;
    /// `(metric name, value)` of what the steering did: `sluice_<name>_total`.
    fn counters(&self) -> Vec<(String, u64)>;
    /// Everything worth seeing when debugging the steering, for the admin endpoint.
    fn debug_dump(&self) -> serde_json::Value;
}
