//! The CNI error result: what the runtime shows the kubelet, and the code that tells it
//! whether to retry.
use serde_json::{Value, json};

/// Error codes from the CNI specification (section 5, "Error").
pub mod code {
    /// The network config's `cniVersion` is not one this plugin speaks.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// A required `CNI_*` environment variable is missing or wrong.
    pub const INVALID_ENV: u32 = 4;
    /// Reading the network config failed.
    pub const IO: u32 = 5;
    /// The network config is not JSON.
    pub const DECODE: u32 = 6;
    /// The network config is JSON but not valid for this plugin.
    pub const INVALID_CONFIG: u32 = 7;
    /// A transient condition (here: the agent is not up yet); the runtime should retry.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// Anything else (a plugin-specific code: 100+ are free for plugins).
    pub const OTHER: u32 = 999;
}

/// A failed CNI operation, printed as the spec's error result on stdout.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{msg} ({details})")]
pub struct CniError {
    pub code: u32,
    /// Short: what failed.
    pub msg: String,
    /// Longer: why, with the cause chain.
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>, details: impl Into<String>) -> CniError {
        CniError {
            code,
            msg: msg.into(),
            details: details.into(),
        }
    }

    /// The error result for `cniVersion` (the config's, or the newest when it is unknown).
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut out = json!({"cniVersion": cni_version, "code": self.code, "msg": self.msg});
        if !self.details.is_empty() {
            out["details"] = Value::String(self.details.clone());
        }
        out
    }
}
