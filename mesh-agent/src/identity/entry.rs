//! One service account's certificate, as the TLS configs, the dump and the renewal task
//! share it.
use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, SystemTime},
};

use rustls::sign::CertifiedKey;

use super::{
    IdentityError, LocalCa, SpiffeId,
    tls::{self, CertSlot},
};

/// One service account's certificate: the slot the TLS configs read, and what it holds.
pub(super) struct Entry {
    pub(super) id: SpiffeId,
    pub(super) slot: Arc<CertSlot>,
    current: Mutex<Current>,
}

/// The certificate in a slot, as the dump and the renewal task see it.
#[derive(Clone)]
pub struct Current {
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// When the renewal task replaces it (CA mode: half its lifetime after issue).
    pub renew_at: SystemTime,
}

impl Entry {
    pub(super) fn new(id: SpiffeId, key: CertifiedKey, current: Current) -> Arc<Self> {
        Arc::new(Self {
            id,
            slot: Arc::new(CertSlot::new(key)),
            current: Mutex::new(current),
        })
    }

    pub(super) fn current(&self) -> Current {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Installs a new certificate: handshakes that start from now on present it.
    pub(super) fn install(&self, key: CertifiedKey, current: Current) {
        let mut installed = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        self.slot.set(key);
        *installed = current;
    }

    pub(super) fn retry_at(&self, at: SystemTime) {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .renew_at = at;
    }
}

/// A fresh certificate for `id`, to be renewed half its lifetime from now.
pub(super) fn issue(
    ca: &LocalCa,
    id: &SpiffeId,
    ttl: Duration,
) -> Result<(CertifiedKey, Current), IdentityError> {
    let now = SystemTime::now();
    let issued = ca.issue(id, ttl)?;
    let lifetime = issued.not_after.duration_since(now).unwrap_or_default();
    let current = Current {
        serial: issued.serial,
        not_before: issued.not_before,
        not_after: issued.not_after,
        renew_at: now + lifetime / 2,
    };
    let key =
        CertifiedKey::from_der(issued.chain, issued.key, &tls::provider()).map_err(|source| {
            IdentityError::Tls {
                what: id.to_string(),
                source,
            }
        })?;
    Ok((key, current))
}
