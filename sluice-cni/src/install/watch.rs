//! `install --watch`: keep our entry in the chain while the DaemonSet pod runs. Primary CNIs
//! rewrite their config when they restart or upgrade, dropping entries they did not write;
//! each tick puts ours back. On SIGTERM (or SIGINT) the chain is restored and the binary
//! removed, so a node whose Sluice is gone never runs pods through a plugin nobody answers.
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::signal::unix::{SignalKind, signal};

use super::{Change, InstallError, Written, ensure_installed, files, uninstall};
use crate::error_chain;

/// What the watch keeps in place.
pub struct Watch<'a> {
    /// This executable, copied again if the binary disappears from the bin dir.
    pub source: &'a Path,
    pub binary: PathBuf,
    pub conf_dir: &'a Path,
    pub entry: &'a Value,
    /// The kubeconfig our entry names, kept current with this account's token.
    pub kubeconfig: Option<Written>,
    pub interval: Duration,
    /// Leave the binary in place on exit (for pods still being torn down with it).
    pub keep_binary: bool,
}

impl Watch<'_> {
    /// Runs until SIGTERM or SIGINT, then uninstalls. A tick that fails (no config yet, a
    /// file the primary is half-way through writing) is logged and retried on the next.
    pub fn run(&self) -> Result<(), InstallError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(InstallError::Signals)?;
        rt.block_on(async {
            let mut term = signal(SignalKind::terminate()).map_err(InstallError::Signals)?;
            let mut int = signal(SignalKind::interrupt()).map_err(InstallError::Signals)?;
            let mut last_error = String::new();
            loop {
                match self.tick() {
                    Ok(change) => {
                        last_error.clear();
                        if change != Change::Unchanged {
                            tracing::info!("chained into the runtime's config: {change:?}");
                        }
                    }
                    Err(e) => {
                        let msg = error_chain(&e);
                        if msg != last_error {
                            tracing::warn!("{msg}; trying again every {:?}", self.interval);
                            last_error = msg;
                        }
                    }
                }
                tokio::select! {
                    _ = term.recv() => break,
                    _ = int.recv() => break,
                    _ = tokio::time::sleep(self.interval) => {}
                }
            }
            tracing::info!("signalled: restoring the CNI chain");
            let binary = (!self.keep_binary).then_some(self.binary.as_path());
            let changed = uninstall(self.conf_dir, binary)?;
            tracing::info!("took sluice-cni out of {changed:?}");
            Ok(())
        })
    }

    fn tick(&self) -> Result<Change, InstallError> {
        if !self.binary.exists() {
            files::copy_binary(self.source, &self.binary)?;
            tracing::info!("copied the plugin to {} again", self.binary.display());
        }
        ensure_installed(self.conf_dir, self.entry, self.kubeconfig.as_ref())
    }
}
