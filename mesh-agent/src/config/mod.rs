//! The agent's configuration model: what runs on this node and which pods it captures.
//!
//! Everything above this layer (state, redirect, proxy, admin) reads these types; where the
//! configuration comes from is [`ConfigSource`]'s business (a YAML file today, Kubernetes
//! later). Validation happens while parsing, so a `Config` that exists is one the agent can
//! act on, and errors point at the field that is wrong.
mod file;
pub mod identity;
mod model;
pub mod policy;
pub mod route;
pub mod service;

pub use file::FileSource;
#[cfg(test)]
pub use file::parse;
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
}

/// Where configuration comes from. A source validates every version before publishing it:
/// a bad update is reported and the last good configuration stays in force.
pub trait ConfigSource: Send + 'static {
    /// The current configuration and a stream of later, valid versions.
    fn subscribe(self) -> Result<watch::Receiver<Arc<Config>>, ConfigError>;
}
