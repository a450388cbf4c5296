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
    net::{IpAddr, Ipv6Addr, SocketAddr},
    os::fd::BorrowedFd,
    path::PathBuf,
};

use ipnet::IpNet;
use serde::Serialize;

pub use crate::config::RedirectMode;
use crate::config::WorkloadKey;

/// What steering one pod needs to know.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaptureSpec {
    pub key: WorkloadKey,
    pub mode: RedirectMode,
    pub netns: PathBuf,
    pub cgroup: PathBuf,
    /// The pod's outbound listeners, as [`Redirect::listeners`] placed them.
    pub listeners: Vec<SocketAddr>,
    pub exclude_ports: Vec<u16>,
    pub exclude_cidrs: Vec<IpNet>,
    /// The pod's own addresses: inbound connections to these are captured.
    pub ips: Vec<IpAddr>,
    /// Where inbound connections are steered (the same in every mode).
    pub inbound_listeners: Vec<SocketAddr>,
    pub exclude_inbound_ports: Vec<u16>,
}

/// The pod's open inbound listening sockets by the address they are bound to, for steering
/// that hands a connection to the socket itself (sk_lookup) rather than to an address.
pub type InboundSockets<'a> = [(SocketAddr, BorrowedFd<'a>)];

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
    /// Starts (or updates) capturing the pod, outbound and inbound. Its listeners must
    /// already be open.
    fn enroll(&self, spec: &CaptureSpec, inbound: &InboundSockets<'_>)
    -> Result<(), RedirectError>;
    /// Stops capturing the pod, at once for new connections.
    fn release(&self, spec: &CaptureSpec) -> Result<(), RedirectError>;
    /// Stops steering every pod not in `keep` that this mode can still find.
    fn retain_only(&self, keep: &[&CaptureSpec]) -> Result<(), RedirectError>;
    /// The proxy is about to connect `from` → `to` inside a pod to deliver an inbound
    /// connection: steering that would capture that connection's packets again must let
    /// them through until [`Redirect::end_delivery`].
    fn begin_delivery(&self, _from: SocketAddr, _to: SocketAddr) -> Result<(), RedirectError> {
        Ok(())
    }
    /// That delivered connection is closed (or its connect failed).
    fn end_delivery(&self, _from: SocketAddr, _to: SocketAddr) {}
    /// `(metric name, value)` of what the steering did: `sluice_<name>_total`.
    fn counters(&self) -> Vec<(String, u64)>;
    /// Everything worth seeing when debugging the steering, for the admin endpoint.
    fn debug_dump(&self) -> serde_json::Value;
}
