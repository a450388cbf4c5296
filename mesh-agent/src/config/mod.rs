//! The agent's configuration model: what runs on this node and which pods it captures.
//!
//! Everything above this layer (state, redirect, proxy, admin) reads these types; where the
//! configuration comes from is [`ConfigSource`]'s business: a YAML file, or the file's node
//! settings with the rest from the Kubernetes API. Validation happens while parsing, so a `Config` that exists is one the agent can
//! act on, and errors point at the field that is wrong.
mod file;
pub mod identity;
pub mod kube;
mod model;
pub mod policy;
pub mod route;
pub mod service;

#[cfg(test)]
pub use file::parse;
pub use file::{FileSource, names_kubernetes};
pub use model::{
    AccessLogFormat, Config, ModeSetting, ProxySettings, RedirectMode, TracingSettings, Workload,
    WorkloadKey,
};

use std::{path::PathBuf, sync::Arc};

use tokio::sync::watch;

/// Errors from reading or validating configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("Kubernetes: {0}")]
    Kubernetes(String),
}

/// Where configuration comes from. A source validates every version before publishing it:
/// a bad update is reported and the last good configuration stays in force.
pub trait ConfigSource: Send + 'static {
    /// The current configuration and a stream of later, valid versions.
    fn subscribe(
        self,
    ) -> impl Future<Output = Result<watch::Receiver<Arc<Config>>, ConfigError>> + Send;
}
