//! The plugin: one CNI invocation, from the runtime's environment and stdin to what goes on
//! stdout and the exit code. The binary is a thin shell over [`run`], which takes the agent
//! and the API server as [`Backends`] so the decisions can be tested without either.
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::enrollment::Decision;
use crate::protocol::{self, ClientError, PodRef, Request, Response};

pub mod cluster;
pub mod commands;
pub mod config;
pub mod env;
pub mod error;
pub mod log;

use cluster::ClusterError;
use config::{CURRENT_VERSION, NetConf, SUPPORTED_VERSIONS};
use env::{CniCommand, Invocation};
use error::CniError;

/// What the plugin reaches outside itself.
pub trait Backends {
    /// One exchange with the agent ([`protocol::exchange`]).
    fn exchange(
        &self,
        socket: &Path,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError>;
    /// The label rule for `pod`, from the API server ([`cluster::decide`]).
    fn decide(
        &self,
        pod: &PodRef,
        kubeconfig: &Path,
        timeout: Duration,
    ) -> Result<Decision, ClusterError>;
    /// Called once the config is known (the live backends start logging here).
    fn configured(&self, _conf: &NetConf) {}
}

/// The agent's real socket and the real API server.
pub struct Live;

impl Backends for Live {
    fn exchange(
        &self,
        socket: &Path,
        req: &Request,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        protocol::exchange(socket, req, timeout)
    }

    fn decide(
        &self,
        pod: &PodRef,
        kubeconfig: &Path,
        timeout: Duration,
    ) -> Result<Decision, ClusterError> {
        cluster::decide(pod, kubeconfig, timeout)
    }

    fn configured(&self, conf: &NetConf) {
        log::init(conf.log_level, conf.log_file.as_deref());
    }
}

/// What to print on stdout (nothing for a successful DEL, CHECK, GC, STATUS) and whether the
/// process exits 0.
#[derive(Debug, PartialEq)]
pub struct Reply {
    pub stdout: Option<Value>,
    pub success: bool,
}

/// One invocation. `var` reads the environment (`std::env::var_os` outside tests).
pub fn run(var: impl Fn(&str) -> Option<OsString>, stdin: &[u8], backends: &dyn Backends) -> Reply {
    let inv = match Invocation::from_env(var) {
        Ok(inv) => inv,
        Err(e) => return failure(&e, &error_version(stdin)),
    };
    if inv.command == CniCommand::Version {
        return Reply {
            stdout: Some(json!({
                "cniVersion": CURRENT_VERSION,
                "supportedVersions": SUPPORTED_VERSIONS,
            })),
            success: true,
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(conf) => conf,
        Err(e) => return failure(&e, &error_version(stdin)),
    };
    backends.configured(&conf);
    match commands::dispatch(&inv, &conf, backends) {
        Ok(stdout) => Reply {
            stdout,
            success: true,
        },
        Err(e) => {
            tracing::error!(
                container = %inv.container_id,
                code = e.code,
                "{:?} failed: {}: {}",
                inv.command,
                e.msg,
                e.details
            );
            failure(&e, &conf.cni_version)
        }
    }
}

/// Errors are reported in the config's version when it is one this plugin speaks.
fn error_version(stdin: &[u8]) -> String {
    config::declared_version(stdin)
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| CURRENT_VERSION.to_owned())
}

fn failure(e: &CniError, version: &str) -> Reply {
    Reply {
        stdout: Some(e.to_json(version)),
        success: false,
    }
}
