//! Inbound connections open under policy, so that a policy change closes those it no longer
//! allows (as ztunnel re-checks its open connections), not only refuses new ones.
//!
//! Ordering that keeps a change from being missed: the inbound path [`register`]s a
//! connection *before* it checks it against the current [`Policies`], and the config side
//! publishes new policies *before* calling [`revoke_denied`]. Then either the check sees the
//! new policies, or the connection is registered when `revoke_denied` looks.
//!
//! [`register`]: LiveConnections::register
//! [`revoke_denied`]: LiveConnections::revoke_denied
use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::sync::watch;

use super::{Connection, Policies};
use crate::config::{Config, Workload, WorkloadKey, policy::MtlsMode};

/// The facts of a live connection, owned, so that it can be checked again later against a
/// new config, where its destination is found again by key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnedConnection {
    pub destination: WorkloadKey,
    pub destination_port: u16,
    pub source_ip: IpAddr,
    /// As in [`Connection::source_principal`]; `None` for plaintext.
    pub source_principal: Option<String>,
    pub source_namespace: Option<String>,
}

impl OwnedConnection {
    /// Borrows the facts for [`Policies::check`]; `destination` is the workload
    /// `self.destination` names.
    pub fn connection<'a>(&'a self, destination: &'a Workload) -> Connection<'a> {
        Connection {
            destination,
            destination_port: self.destination_port,
            source_ip: self.source_ip,
            source_principal: self.source_principal.as_deref(),
            source_namespace: self.source_namespace.as_deref(),
        }
    }
}

/// One registered connection; `revoked` turns true once, never back.
#[derive(Debug)]
struct Entry {
    conn: OwnedConnection,
    revoked: watch::Sender<bool>,
}

#[derive(Debug, Default)]
struct Registry {
    next_id: AtomicU64,
    entries: Mutex<HashMap<u64, Arc<Entry>>>,
}

impl Registry {
    /// Nothing panics while holding the lock, and the map stays consistent if something did.
    fn entries(&self) -> MutexGuard<'_, HashMap<u64, Arc<Entry>>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The live inbound connections of this node. Cheap to clone; clones share the registry.
#[derive(Clone, Debug, Default)]
pub struct LiveConnections {
    registry: Arc<Registry>,
}

impl LiveConnections {
    #[cfg(test)]
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection until the returned guard is dropped. Register before checking the
    /// connection (see the module doc).
    pub fn register(&self, conn: OwnedConnection) -> LiveGuard {
        let id = self.registry.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(Entry {
            conn,
            revoked: watch::Sender::new(false),
        });
        self.registry.entries().insert(id, Arc::clone(&entry));
        LiveGuard {
            registry: Arc::clone(&self.registry),
            id,
            entry,
        }
    }

    #[cfg(test)]
    /// How many connections are registered (revoked ones included until they close).
    pub fn len(&self) -> usize {
        self.registry.entries().len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks every live connection against `policies` (compiled from `config`) and signals
    /// those no longer allowed; returns how many were newly signalled. Denied means: the
    /// destination is still enrolled on this node and [`Policies::check`] denies, or it is
    /// now `STRICT` and the connection is plaintext. A destination released or gone from
    /// `config` keeps its connections, as a release without policy does.
    ///
    /// The registry's lock is held only to snapshot it, not while evaluating.
    pub fn revoke_denied(&self, policies: &Policies, config: &Config) -> usize {
        let workloads: HashMap<(&str, &str), &Workload> = config
            .workloads
            .iter()
            .map(|w| ((w.namespace.as_str(), w.name.as_str()), w))
            .collect();
        let live: Vec<Arc<Entry>> = self.registry.entries().values().cloned().collect();
        let mut revoked = 0;
        for entry in live {
            if *entry.revoked.borrow() {
                continue;
            }
            let key = &entry.conn.destination;
            // A destination that left the mesh (released, or gone from the config) keeps
            // its connections, as a release does without policy: only a pod still under
            // policy here can have a connection taken away by it.
            let allowed = match workloads.get(&(key.namespace.as_str(), key.name.as_str())) {
                Some(w) if w.captured_here() => admits(policies, &entry.conn.connection(w)),
                _ => true,
            };
            // `send_if_modified` counts each connection once even if two callers race.
            if !allowed
                && entry
                    .revoked
                    .send_if_modified(|r| !std::mem::replace(r, true))
            {
                revoked += 1;
            }
        }
        revoked
    }
}

/// Whether `policies` would admit this connection if it arrived now.
fn admits(policies: &Policies, conn: &Connection) -> bool {
    let plaintext_refused =
        conn.source_principal.is_none() && policies.mtls_mode(conn.destination) == MtlsMode::Strict;
    !plaintext_refused && policies.check(conn).is_allow()
}

/// A registered connection; dropping it unregisters the connection.
#[derive(Debug)]
pub struct LiveGuard {
    registry: Arc<Registry>,
    id: u64,
    entry: Arc<Entry>,
}

impl LiveGuard {
    /// Completes once the connection must be closed; at once if it already must.
    ///
    /// Cancel-safe: the state lives in the entry, not in the future, so a dropped call (a
    /// `tokio::select!` branch that lost) misses nothing and the next call sees it.
    pub async fn revoked(&self) {
        let mut rx = self.entry.revoked.subscribe();
        // The sender lives in `self.entry`, which outlives this borrow: no `Err` can come.
        let _ = rx.wait_for(|revoked| *revoked).await;
    }

    #[cfg(test)]
    pub fn is_revoked(&self) -> bool {
        *self.entry.revoked.borrow()
    }

    pub fn connection(&self) -> &OwnedConnection {
        &self.entry.conn
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.registry.entries().remove(&self.id);
    }
}

#[cfg(test)]
mod tests;
