//! How an enrolled pod's traffic is steered into the node proxy.
//!
//! [`Redirect`] is the one boundary: the proxy opens the pod's listeners, then asks the
//! redirect mode to start steering; it stops steering before the listeners close. The eBPF
//! mode lives in [`ebpf`]; the netfilter fallback will sit beside it behind the same trait.
pub mod ebpf;
pub mod netfilter;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::PathBuf,
};

use ipnet::IpNet;
use serde::Serialize;

use crate::config::WorkloadKey;

/// What steering one pod needs to know.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CaptureSpec {
    pub key: WorkloadKey,
    pub cgroup: PathBuf,
    /// The pod's outbound listener for IPv4 connects (loopback, unique on the node).
    pub listener_v4: Ipv4Addr,
    /// The pod's outbound listener for IPv6 connects, when the pod has an IPv6 address.
    pub listener_v6: Option<Ipv6Addr>,
    pub exclude_ports: Vec<u16>,
    pub exclude_cidrs: Vec<IpNet>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RedirectMode {
    Ebpf,
}

impl RedirectMode {
    pub fn as_str(self) -> &'static str {
        match self {
            RedirectMode::Ebpf => "ebpf",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RedirectError {
    #[error(transparent)]
    Ebpf(#[from] ebpf::EbpfError),
}

/// Steers enrolled pods' connections into their in-pod listeners.
pub trait Redirect: Send + Sync {
    fn mode(&self) -> RedirectMode;
    /// Starts capturing the pod. Its listeners must already be open.
    fn enroll(&self, spec: &CaptureSpec) -> Result<(), RedirectError>;
    /// Stops capturing the pod, at once for new connections.
    fn release(&self, spec: &CaptureSpec) -> Result<(), RedirectError>;
    /// Stops steering every pod not in `keep`.
    fn retain_only(&self, keep: &[&CaptureSpec]) -> Result<(), RedirectError>;
    /// Named counters of what the steering did, for metrics.
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// Everything worth seeing when debugging the steering, for the admin endpoint.
    fn debug_dump(&self) -> serde_json::Value;
}
