//! Certificate verification for the tunnel, on both sides.
//!
//! rustls and webpki check a chain, its validity and its key usage, but not URI SANs
//! (rustls/rustls#1194), and the SPIFFE ID is the only name a workload certificate carries.
//! So each verifier runs the full chain check first and returns its error as is (an unknown
//! CA or an expired certificate must never be reported, or skipped, as a name problem:
//! maxlambrecht/rust-spiffe#346), and only then checks the leaf's SPIFFE ID: the client
//! wants exactly the peer it dialled, the server any workload of our trust domain (which
//! workload may talk to which is authorization's job, with [`peer_id`]).
use std::sync::Arc;

use rustls::{
    CertificateError, CommonState, DigitallySignedStruct, DistinguishedName, OtherError,
    SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::{verify_tls12_signature, verify_tls13_signature},
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::{
        ParsedCertificate,
        danger::{ClientCertVerified, ClientCertVerifier},
    },
};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _};

pub use super::trust::Trust;
use super::{spiffe::SpiffeId, tls::provider};

/// Why a chain that verified is still refused. Carried in `CertificateError::Other` so that
/// [`super::HandshakeFailure`] can tell the cases apart.
#[derive(Debug, thiserror::Error)]
pub enum PeerIdentityError {
    #[error("the peer is {presented}, expected {expected}")]
    WrongIdentity {
        expected: SpiffeId,
        presented: SpiffeId,
    },
    #[error("the peer {presented} is not in trust domain {trust_domain:?}")]
    UntrustedDomain {
        trust_domain: String,
        presented: SpiffeId,
    },
    #[error(transparent)]
    NoSpiffeId(#[from] NoSpiffeId),
}

/// A leaf without exactly one URI SAN that is a workload SPIFFE ID.
#[derive(Debug, thiserror::Error)]
#[error("the certificate carries no workload SPIFFE ID: {0}")]
pub struct NoSpiffeId(String);

impl From<PeerIdentityError> for rustls::Error {
    fn from(error: PeerIdentityError) -> Self {
        CertificateError::Other(OtherError(Arc::new(error))).into()
    }
}

impl From<NoSpiffeId> for rustls::Error {
    fn from(error: NoSpiffeId) -> Self {
        PeerIdentityError::from(error).into()
    }
}

/// Client side: the server must chain to our roots and be exactly `expected`. The server
/// name given to `connect` is not checked (workload certificates carry no DNS name).
#[derive(Debug)]
pub struct PeerVerifier {
    trust: Arc<Trust>,
    expected: SpiffeId,
}

impl PeerVerifier {
    pub fn new(trust: Arc<Trust>, expected: SpiffeId) -> Self {
        Self { trust, expected }
    }
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.trust.current().roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )
        .map_err(unknown_if_forged)?;
        let presented = leaf_id(end_entity)?;
        if presented != self.expected {
            return Err(PeerIdentityError::WrongIdentity {
                expected: self.expected.clone(),
                presented,
            }
            .into());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Server side: a client certificate is mandatory, must chain to our roots, and must name a
/// workload of our trust domain (a bundle may hold other domains' roots during a migration).
#[derive(Debug)]
pub struct WorkloadVerifier {
    trust: Arc<Trust>,
    trust_domain: String,
}

impl WorkloadVerifier {
    pub fn new(trust: Arc<Trust>, trust_domain: impl Into<String>) -> Self {
        let trust_domain = trust_domain.into();
        Self {
            trust,
            trust_domain,
        }
    }
}

impl ClientCertVerifier for WorkloadVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    /// No hints: clients have one certificate to send, and the CA names need not be sent.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let clients = self.trust.current().clients.clone();
        clients
            .verify_client_cert(end_entity, intermediates, now)
            .map_err(unknown_if_forged)?;
        let presented = leaf_id(end_entity)?;
        if presented.trust_domain() != self.trust_domain {
            return Err(PeerIdentityError::UntrustedDomain {
                trust_domain: self.trust_domain.clone(),
                presented,
            }
            .into());
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A chain whose signature does not verify under the trusted issuer of that name was made
/// by another CA of the same name: an unknown issuer, and said so, because the alert for a
/// bad signature (`decrypt_error`) would tell the peer nothing about its certificate.
fn unknown_if_forged(error: rustls::Error) -> rustls::Error {
    match error {
        rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            CertificateError::UnknownIssuer.into()
        }
        error => error,
    }
}

/// The verified peer's SPIFFE ID, once the handshake is done (`None` before, or without a
/// peer certificate). Works on both ends: `ClientConnection` and `ServerConnection` deref to
/// `CommonState`.
pub fn peer_id(conn: &CommonState) -> Option<SpiffeId> {
    leaf_id(conn.peer_certificates()?.first()?).ok()
}

/// The SPIFFE ID of a leaf: its one URI SAN (the X.509-SVID rule), in workload form.
pub fn leaf_id(der: &CertificateDer<'_>) -> Result<SpiffeId, NoSpiffeId> {
    let no_id = NoSpiffeId;
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| no_id(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| no_id(e.to_string()))?
        .ok_or_else(|| no_id("no subjectAltName".into()))?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [uri] => SpiffeId::parse(uri).map_err(|e| no_id(e.to_string())),
        [] => Err(no_id("no URI SAN".into())),
        _ => Err(no_id(format!("{} URI SANs, expected one", uris.len()))),
    }
}
