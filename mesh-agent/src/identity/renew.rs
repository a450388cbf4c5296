//! Keeping certificates fresh: CA mode renews each one half its lifetime after issue (so a
//! failed renewal has the other half to be retried); files mode re-reads changed files.
//! Either way the new certificate goes into the identity's slot: new handshakes present it,
//! live connections keep theirs.
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use super::{
    IdentityError, LocalCa,
    entry::{self, Entry},
    files::{self, FileSource},
    issued::rfc3339,
    store::{Identities, Source},
};

/// How often files mode looks at the files' mtimes.
pub const FILES_POLL: Duration = Duration::from_secs(2);
/// Bounds of the CA-mode wait: short enough to follow the wall clock after a suspend.
const MIN_WAIT: Duration = Duration::from_millis(200);
const MAX_WAIT: Duration = Duration::from_secs(30);
/// A failed renewal is tried again after this long.
const RETRY: Duration = Duration::from_secs(10);

impl Identities {
    /// Reissues every cached certificate now (CA mode) or re-reads every file (files mode).
    pub fn rotate_now(&self) {
        match &self.source {
            Source::Ca { ca, ttl, .. } => {
                for entry in self.entries() {
                    renew(ca, *ttl, &entry);
                }
            }
            Source::Files(files) => self.poll_files(files, true),
        }
    }

    /// One round of the background task; returns how long to wait before the next.
    fn tick(&self) -> Duration {
        match &self.source {
            Source::Files(files) => {
                self.poll_files(files, false);
                FILES_POLL
            }
            Source::Ca { ca, ttl, .. } => {
                let now = SystemTime::now();
                let mut wait = MAX_WAIT;
                for entry in self.entries() {
                    if entry.current().renew_at <= now {
                        renew(ca, *ttl, &entry);
                    }
                    let due = entry.current().renew_at.duration_since(now);
                    wait = wait.min(due.unwrap_or_default());
                }
                wait.max(MIN_WAIT)
            }
        }
    }

    /// Reloads the bundle and each identity whose files changed (all of them if `force`).
    fn poll_files(&self, files: &FileSource, force: bool) {
        let stamp = files.stamp(None);
        if force || files.is_new(None, &stamp) {
            let replaced = files::load_bundle(&files.ca_bundle).and_then(|roots| {
                self.trust.replace(&roots).map_err(|e| IdentityError::Pem {
                    path: files.ca_bundle.clone(),
                    reason: format!("not a usable root: {e}"),
                })?;
                Ok(roots.len())
            });
            match replaced {
                Ok(roots) => {
                    files.loaded(None, stamp);
                    tracing::info!(path = %files.ca_bundle.display(), roots, "reloaded the CA bundle");
                }
                Err(error) => {
                    if files.failed(None, stamp, &error) {
                        tracing::warn!(%error, "kept the previous CA bundle");
                    }
                }
            }
        }
        for entry in self.entries() {
            let Some(file) = files.files.get(&entry.id) else {
                continue;
            };
            let id = Some(&entry.id);
            let stamp = files.stamp(id);
            if !force && !files.is_new(id, &stamp) {
                continue;
            }
            match files::load_identity(file, &entry.id) {
                Ok((key, current)) => {
                    files.loaded(id, stamp);
                    tracing::info!(
                        id = %entry.id, serial = %current.serial,
                        not_after = %rfc3339(current.not_after), "reloaded a workload certificate"
                    );
                    entry.install(key, current);
                }
                Err(error) => {
                    if files.failed(id, stamp, &error) {
                        tracing::warn!(id = %entry.id, %error, "kept the previous certificate");
                    }
                }
            }
        }
    }
}

fn renew(ca: &LocalCa, ttl: Duration, entry: &Entry) {
    match entry::issue(ca, &entry.id, ttl) {
        Ok((key, current)) => {
            tracing::info!(
                id = %entry.id, serial = %current.serial,
                not_after = %rfc3339(current.not_after), "renewed a workload certificate"
            );
            entry.install(key, current);
        }
        Err(error) => {
            tracing::error!(id = %entry.id, %error, "renewing a workload certificate failed; retrying");
            entry.retry_at(SystemTime::now() + RETRY);
        }
    }
}

/// Starts the task that runs [`Identities::tick`] until the identities are dropped. Each
/// round runs on the blocking pool: it signs keys and reads files.
pub(super) fn spawn(identities: &Arc<Identities>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        tracing::warn!(
            "no async runtime: workload certificates will be neither renewed nor re-read"
        );
        return;
    };
    let weak = Arc::downgrade(identities);
    let wake = identities.wake.clone();
    runtime.spawn(async move {
        loop {
            let Some(identities) = weak.upgrade() else {
                return;
            };
            let wait = match tokio::task::spawn_blocking(move || identities.tick()).await {
                Ok(wait) => wait,
                Err(error) => {
                    tracing::error!(%error, "a certificate renewal round failed; retrying");
                    RETRY
                }
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = wake.notified() => {}
            }
        }
    });
}
