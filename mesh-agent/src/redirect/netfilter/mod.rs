//! Netfilter (iptables / nftables) rules: the fallback where eBPF steering cannot run.
//!
//! [`istio`] renders istio-iptables compatible rulesets, so Sluice can stand in for Istio's
//! init container and be checked against its expectations.
pub mod istio;
