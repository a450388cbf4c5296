//! Why a tunnel handshake failed, as a small set of labels for metrics and logs.
//!
//! The side that rejects a certificate knows exactly why and is the one to count it. The
//! other side only receives a TLS alert (`AlertReceived`), and alerts are coarse: rustls
//! sends `certificate_unknown` for every reason of our own (wrong identity, untrusted
//! domain, no SPIFFE ID), so those arrive as [`HandshakeFailure::Other`];
//! `bad_certificate`, `unknown_ca`, `certificate_expired` and `certificate_required` are
//! mapped. (Our verifiers report a chain signed by another CA of a trusted CA's name as an
//! unknown issuer, so that it arrives as `unknown_ca`, not as `decrypt_error`.) In TLS 1.3 the
//! client's handshake completes before the server has checked the client's certificate, so
//! the client sees a rejection as an error on its first read, not from `connect`.
use std::{error::Error as StdError, io};

use rustls::{AlertDescription, CertificateError};

use super::verify::PeerIdentityError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HandshakeFailure {
    /// The chain does not lead to a trusted root (no such issuer, or a signature by
    /// another key than the trusted issuer's).
    UnknownCa,
    /// A certificate is outside its validity period (expired, or not valid yet).
    Expired,
    /// A valid certificate of another workload than the one dialled.
    WrongIdentity,
    /// A valid certificate of a workload outside our trust domain.
    UntrustedDomain,
    /// The client sent no certificate.
    NoCertificate,
    /// A certificate that cannot be used: malformed, wrong key usage, no SPIFFE ID.
    BadCertificate,
    Other,
}

impl HandshakeFailure {
    /// The label value (`reason="..."`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UnknownCa => "unknown_ca",
            Self::Expired => "expired",
            Self::WrongIdentity => "wrong_identity",
            Self::UntrustedDomain => "untrusted_domain",
            Self::NoCertificate => "no_certificate",
            Self::BadCertificate => "bad_certificate",
            Self::Other => "other",
        }
    }

    pub fn from_tls_error(error: &rustls::Error) -> Self {
        match error {
            rustls::Error::InvalidCertificate(error) => Self::from_certificate_error(error),
            rustls::Error::NoCertificatesPresented => Self::NoCertificate,
            rustls::Error::AlertReceived(alert) => Self::from_alert(*alert),
            _ => Self::Other,
        }
    }

    /// tokio-rustls returns rustls errors inside an `io::Error`; this finds them (anywhere in
    /// the source chain). A plain I/O error (reset, EOF) is `Other`.
    pub fn from_io_error(error: &io::Error) -> Self {
        let mut source = error.get_ref().map(|e| e as &(dyn StdError + 'static));
        while let Some(error) = source {
            if let Some(tls) = error.downcast_ref::<rustls::Error>() {
                return Self::from_tls_error(tls);
            }
            source = error.source();
        }
        Self::Other
    }

    fn from_certificate_error(error: &CertificateError) -> Self {
        use CertificateError as E;
        match error {
            E::UnknownIssuer | E::BadSignature => Self::UnknownCa,
            E::Expired
            | E::ExpiredContext { .. }
            | E::NotValidYet
            | E::NotValidYetContext { .. } => Self::Expired,
            E::BadEncoding
            | E::UnhandledCriticalExtension
            | E::InvalidPurpose
            | E::InvalidPurposeContext { .. }
            | E::NotValidForName
            | E::NotValidForNameContext { .. }
            | E::UnsupportedSignatureAlgorithmContext { .. }
            | E::UnsupportedSignatureAlgorithmForPublicKeyContext { .. } => Self::BadCertificate,
            E::Other(other) => match other.0.downcast_ref::<PeerIdentityError>() {
                Some(PeerIdentityError::WrongIdentity { .. }) => Self::WrongIdentity,
                Some(PeerIdentityError::UntrustedDomain { .. }) => Self::UntrustedDomain,
                Some(PeerIdentityError::NoSpiffeId(_)) => Self::BadCertificate,
                None => Self::Other,
            },
            _ => Self::Other,
        }
    }

    fn from_alert(alert: AlertDescription) -> Self {
        match alert {
            AlertDescription::BadCertificate | AlertDescription::UnsupportedCertificate => {
                Self::BadCertificate
            }
            AlertDescription::UnknownCA => Self::UnknownCa,
            AlertDescription::CertificateExpired => Self::Expired,
            AlertDescription::CertificateRequired => Self::NoCertificate,
            _ => Self::Other,
        }
    }
}

impl std::fmt::Display for HandshakeFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::OtherError;

    use super::*;
    use crate::identity::SpiffeId;

    #[test]
    fn labels_are_exact() {
        use HandshakeFailure::*;
        let all = [
            UnknownCa,
            Expired,
            WrongIdentity,
            UntrustedDomain,
            NoCertificate,
            BadCertificate,
            Other,
        ];
        let labels: Vec<&str> = all.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            labels,
            [
                "unknown_ca",
                "expired",
                "wrong_identity",
                "untrusted_domain",
                "no_certificate",
                "bad_certificate",
                "other"
            ]
        );
        assert_eq!(HandshakeFailure::Expired.to_string(), "expired");
    }

    #[test]
    fn classifies_rustls_errors_and_alerts() {
        let cert = |e| rustls::Error::InvalidCertificate(e);
        let cases = [
            (
                cert(CertificateError::UnknownIssuer),
                HandshakeFailure::UnknownCa,
            ),
            (cert(CertificateError::Expired), HandshakeFailure::Expired),
            (
                cert(CertificateError::NotValidYet),
                HandshakeFailure::Expired,
            ),
            (
                cert(CertificateError::BadEncoding),
                HandshakeFailure::BadCertificate,
            ),
            (
                rustls::Error::NoCertificatesPresented,
                HandshakeFailure::NoCertificate,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateRequired),
                HandshakeFailure::NoCertificate,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::UnknownCA),
                HandshakeFailure::UnknownCa,
            ),
            (
                rustls::Error::AlertReceived(AlertDescription::CertificateUnknown),
                HandshakeFailure::Other,
            ),
            (rustls::Error::DecryptError, HandshakeFailure::Other),
        ];
        for (error, expected) in cases {
            assert_eq!(
                HandshakeFailure::from_tls_error(&error),
                expected,
                "{error}"
            );
        }
        let wrong: rustls::Error = PeerIdentityError::WrongIdentity {
            expected: SpiffeId::new("td", "a", "b"),
            presented: SpiffeId::new("td", "a", "c"),
        }
        .into();
        assert_eq!(
            HandshakeFailure::from_tls_error(&wrong),
            HandshakeFailure::WrongIdentity
        );
        let foreign = cert(CertificateError::Other(OtherError(Arc::new(
            io::Error::other("x"),
        ))));
        assert_eq!(
            HandshakeFailure::from_tls_error(&foreign),
            HandshakeFailure::Other
        );
    }

    #[test]
    fn finds_the_rustls_error_inside_io_errors() {
        let untrusted: rustls::Error = PeerIdentityError::UntrustedDomain {
            trust_domain: "td".into(),
            presented: SpiffeId::new("other", "a", "b"),
        }
        .into();
        let io = io::Error::new(io::ErrorKind::InvalidData, untrusted);
        assert_eq!(
            HandshakeFailure::from_io_error(&io),
            HandshakeFailure::UntrustedDomain
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(
            HandshakeFailure::from_io_error(&reset),
            HandshakeFailure::Other
        );
    }
}
