//! Errors for input that istio-iptables (or the kernel tools it drives) would reject.

use thiserror::Error;

/// Why a set of istio-iptables flags cannot be rendered.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum IstioRenderError {
    /// `-x '*'`: upstream refuses to exclude every destination.
    #[error(
        "--istio-service-exclude-cidr cannot be \"*\": excluding every destination would disable outbound capture; leave --istio-service-cidr empty instead"
    )]
    WildcardExcludeCidr,

    #[error("{flag}: invalid CIDR {value:?}: {reason}")]
    InvalidCidr {
        flag: &'static str,
        value: String,
        reason: &'static str,
    },

    #[error("{flag}: invalid port {value:?}: expected a number from 1 to 65535")]
    InvalidPort { flag: &'static str, value: String },

    #[error("{flag}: invalid mark {value:?}: expected a 32-bit number (decimal or 0x hex)")]
    InvalidMark { flag: &'static str, value: String },

    #[error("{flag}: invalid routing table {value:?}: expected a number from 1 to 4294967295")]
    InvalidRouteTable { flag: &'static str, value: String },

    #[error("{flag}: invalid user or group {value:?}: expected a numeric id or a name")]
    InvalidOwner { flag: &'static str, value: String },

    #[error(
        "--outbound-owner-groups: at most {max} groups can be listed (they become one rule), got {count}"
    )]
    TooManyOwnerGroups { max: usize, count: usize },

    #[error("{flag}: invalid interface name {value:?}")]
    InvalidInterface { flag: &'static str, value: String },

    #[error("{flag}: invalid DNS server {value:?}: expected an {family} address")]
    InvalidDnsServer {
        flag: &'static str,
        value: String,
        family: &'static str,
    },
}
