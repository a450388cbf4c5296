//! rustls configs for the tunnel: TLS 1.3 only, ALPN `h2`, the local identity's certificate
//! read at every handshake, and our SPIFFE verifiers on both sides.
use std::sync::{Arc, OnceLock, PoisonError, RwLock};

use rustls::{
    ClientConfig, ServerConfig, SignatureScheme,
    client::{ResolvesClientCert, Resumption, danger::ServerCertVerifier},
    crypto::CryptoProvider,
    server::{ClientHello, NoServerSessionStorage, ResolvesServerCert, danger::ClientCertVerifier},
    sign::CertifiedKey,
};

/// The tunnel's application protocol: HTTP/2 CONNECT.
pub const ALPN_H2: &[u8] = b"h2";

/// The ring provider, made once (the workspace builds rustls without a process default).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| Arc::new(rustls::crypto::ring::default_provider()))
        .clone()
}

/// The certificate an identity presents now. Renewal swaps it; each handshake reads it when
/// it starts, so new connections get the new one while live ones are left as they are.
#[derive(Debug)]
pub struct CertSlot(RwLock<Arc<CertifiedKey>>);

impl CertSlot {
    pub fn new(key: CertifiedKey) -> Self {
        Self(RwLock::new(Arc::new(key)))
    }

    pub fn get(&self) -> Arc<CertifiedKey> {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set(&self, key: CertifiedKey) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
    }
}

/// Presents the slot's current certificate, as a server and as a client.
#[derive(Debug)]
struct SlotResolver(Arc<CertSlot>);

impl ResolvesServerCert for SlotResolver {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }
}

impl ResolvesClientCert for SlotResolver {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.get())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Session resumption is off on both sides: a resumed TLS 1.3 session skips certificate
/// verification, so a peer would keep passing after its certificate expired or its root was
/// withdrawn, and tunnels are long-lived pooled connections that gain little from it.
pub fn server_config(
    slot: Arc<CertSlot>,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<ServerConfig, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(SlotResolver(slot)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(config)
}

pub fn client_config(
    slot: Arc<CertSlot>,
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<ClientConfig, rustls::Error> {
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(SlotResolver(slot)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}
