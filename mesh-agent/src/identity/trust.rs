//! The roots that peers' chains must lead to: the local CA, or the operator's CA bundle
//! (which may hold several roots, so that a root rotation keeps old and new peers talking:
//! istio/istio#47427).
use std::sync::{Arc, PoisonError, RwLock};

use rustls::{
    RootCertStore,
    pki_types::CertificateDer,
    server::{WebPkiClientVerifier, danger::ClientCertVerifier},
};

use super::tls::provider;

/// The roots peers' chains must lead to. Shared by every verifier of an [`super::Identities`]
/// and replaced as a whole when the CA bundle file changes.
pub struct Trust(RwLock<Arc<Anchors>>);

pub(super) struct Anchors {
    pub(super) roots: Arc<RootCertStore>,
    /// webpki's client verifier for these roots; ours adds the SPIFFE check on top.
    pub(super) clients: Arc<dyn ClientCertVerifier>,
}

impl Trust {
    pub fn new(roots: &[CertificateDer<'static>]) -> Result<Self, rustls::Error> {
        Ok(Self(RwLock::new(Arc::new(Anchors::new(roots)?))))
    }

    pub fn replace(&self, roots: &[CertificateDer<'static>]) -> Result<(), rustls::Error> {
        let anchors = Arc::new(Anchors::new(roots)?);
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = anchors;
        Ok(())
    }

    pub(super) fn current(&self) -> Arc<Anchors> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trust({} roots)", self.current().roots.len())
    }
}

impl Anchors {
    fn new(certs: &[CertificateDer<'static>]) -> Result<Self, rustls::Error> {
        let mut roots = RootCertStore::empty();
        for cert in certs {
            roots.add(cert.clone())?;
        }
        let roots = Arc::new(roots);
        let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| rustls::Error::General(e.to_string()))?;
        Ok(Self { roots, clients })
    }
}
