//! Files mode: the operator's PKI writes a CA bundle and, per service account, a chain and a
//! key; the agent reads them at start and again whenever their mtime changes.
//!
//! A file that changed but does not load (half-written, key and certificate from different
//! rotations) leaves the previous certificate in use and is retried at its next change;
//! a pair rewritten one file at a time thus passes through one failed state and then loads.
//! Whether a certificate chains to the bundle is left to the peers that verify it: the
//! bundle and the certificates may be rotated in either order.
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustls::{pki_types::CertificateDer, sign::CertifiedKey};
use x509_parser::{certificate::X509Certificate, prelude::FromDer as _};

use super::{
    IdentityError, SpiffeId, entry::Current, issued::rfc3339, pemfile, tls::provider,
    verify::leaf_id,
};
use crate::config::identity::IdentityFile;

/// What a load read: the mtimes of its files.
pub type Stamp = Vec<Option<SystemTime>>;

/// Which version of some files is in use, and which last failed to load.
#[derive(Default)]
struct Watch {
    loaded: Stamp,
    failed: Option<(Stamp, String)>,
}

pub struct FileSource {
    pub ca_bundle: PathBuf,
    pub files: HashMap<SpiffeId, IdentityFile>,
    watches: Mutex<HashMap<Option<SpiffeId>, Watch>>,
}

impl FileSource {
    pub fn new(ca_bundle: PathBuf, files: HashMap<SpiffeId, IdentityFile>) -> Self {
        let watches = Mutex::new(HashMap::new());
        Self {
            ca_bundle,
            files,
            watches,
        }
    }

    /// The files behind `id` (`None`: the CA bundle).
    fn paths(&self, id: Option<&SpiffeId>) -> Vec<&Path> {
        match id {
            None => vec![&self.ca_bundle],
            Some(id) => self
                .files
                .get(id)
                .map(|f| vec![f.cert.as_path(), f.key.as_path()])
                .unwrap_or_default(),
        }
    }

    /// The mtimes of `id`'s files (`None`: the bundle's).
    pub fn stamp(&self, id: Option<&SpiffeId>) -> Stamp {
        self.paths(id).into_iter().map(pemfile::mtime).collect()
    }

    /// Whether files with this stamp are worth reading: neither loaded nor failed before.
    pub fn is_new(&self, id: Option<&SpiffeId>, stamp: &Stamp) -> bool {
        let watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        watches
            .get(&id.cloned())
            .is_none_or(|w| w.loaded != *stamp && w.failed.as_ref().is_none_or(|(s, _)| s != stamp))
    }

    pub fn loaded(&self, id: Option<&SpiffeId>, stamp: Stamp) {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        let watch = watches.entry(id.cloned()).or_default();
        watch.loaded = stamp;
        watch.failed = None;
    }

    /// Records a failed load; true when it is a new failure (worth a warning).
    pub fn failed(&self, id: Option<&SpiffeId>, stamp: Stamp, error: &IdentityError) -> bool {
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        let watch = watches.entry(id.cloned()).or_default();
        let message = error.to_string();
        let new = watch.failed.as_ref().is_none_or(|(_, m)| *m != message);
        watch.failed = Some((stamp, message));
        new
    }

    /// The last reload error of `id`'s files, while it is not fixed.
    pub fn last_error(&self, id: Option<&SpiffeId>) -> Option<String> {
        let watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        watches
            .get(&id.cloned())?
            .failed
            .as_ref()
            .map(|(_, m)| m.clone())
    }
}

/// The roots of the CA bundle.
pub fn load_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    pemfile::read_certs(path)
}

/// An identity's chain and key, checked: the leaf is `id`, the key is the leaf's.
pub fn load_identity(
    file: &IdentityFile,
    id: &SpiffeId,
) -> Result<(CertifiedKey, Current), IdentityError> {
    let chain = pemfile::read_certs(&file.cert)?;
    let key = pemfile::read_key(&file.key)?;
    let mismatch = |found: String| IdentityError::IdentityMismatch {
        path: file.cert.clone(),
        expected: id.clone(),
        found,
    };
    let found = leaf_id(&chain[0]).map_err(|e| mismatch(e.to_string()))?;
    if found != *id {
        return Err(mismatch(found.to_string()));
    }
    let current = describe(&chain[0]).map_err(|reason| IdentityError::Pem {
        path: file.cert.clone(),
        reason,
    })?;
    if current.not_after <= SystemTime::now() {
        tracing::warn!(
            path = %file.cert.display(), %id, not_after = %rfc3339(current.not_after),
            "the workload certificate has expired: peers will refuse it"
        );
    }
    let certified = CertifiedKey::from_der(chain, key, &provider()).map_err(|source| {
        IdentityError::KeyMismatch {
            cert: file.cert.clone(),
            key: file.key.clone(),
            source,
        }
    })?;
    Ok((certified, current))
}

/// Serial and validity of a certificate, as the dump shows them.
fn describe(der: &CertificateDer<'_>) -> Result<Current, String> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let time = |t: i64| UNIX_EPOCH + Duration::from_secs(u64::try_from(t).unwrap_or(0));
    let not_after = time(cert.validity().not_after.timestamp());
    Ok(Current {
        serial: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        not_before: time(cert.validity().not_before.timestamp()),
        not_after,
        // Not renewed by us: the files change when the operator's PKI renews them.
        renew_at: not_after,
    })
}
