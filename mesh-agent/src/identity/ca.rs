//! The node's local CA: made once by `mesh-agent ca init`, then loaded by the agent to issue
//! short-lived workload certificates in memory (their keys are never written by the agent).
//!
//! The CA certificate records its trust domain as a `spiffe://<td>` URI SAN, so an agent
//! configured for another trust domain refuses it at start instead of issuing certificates
//! every peer would reject.
use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PublicKeyData as _, SanType,
    SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer as _};

use super::{IdentityError, IssuedCert, SpiffeId, pemfile, spiffe};

pub const CA_CERT_FILE: &str = "ca-cert.pem";
pub const CA_KEY_FILE: &str = "ca-key.pem";
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this much in the past, so a peer whose clock is a little behind
/// does not see them as not yet valid.
const CLOCK_SKEW: Duration = Duration::from_secs(60);

pub struct LocalCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    not_after: SystemTime,
}

impl LocalCa {
    /// Makes a new ECDSA P-256 CA valid for 10 years and writes `ca-cert.pem` and
    /// `ca-key.pem` (mode 0600) into `out_dir`, which is created (0700) if missing. Existing
    /// files are never overwritten: replacing a CA cuts every workload off from its peers.
    pub fn init(trust_domain: &str, out_dir: &Path) -> Result<Self, IdentityError> {
        spiffe::validate_trust_domain(trust_domain)?;
        let (cert_path, key_path) = (out_dir.join(CA_CERT_FILE), out_dir.join(CA_KEY_FILE));
        for path in [&cert_path, &key_path] {
            if path.exists() {
                return Err(IdentityError::Exists { path: path.clone() });
            }
        }
        super::issued::create_private_dir(out_dir)?;
        let generate = |source| IdentityError::Generate {
            what: format!("the CA of {trust_domain}"),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = CertificateParams::default();
        let (serial, serial_number) = random_serial();
        // A name of its own (part of the serial): chains are built by issuer name, so a
        // certificate of another CA of this trust domain is then an unknown issuer, not a
        // bad signature under ours, and two CAs in one bundle are told apart.
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Sluice");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("Sluice CA {trust_domain} {}", &serial[..8]),
        );
        params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        let (not_before, not_after) = (
            whole_seconds(now - CLOCK_SKEW),
            whole_seconds(now + CA_LIFETIME),
        );
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(serial_number);
        let cert = params.self_signed(&key).map_err(generate)?;
        pemfile::write_new(&key_path, key.serialize_pem().as_bytes(), pemfile::KEY_MODE)?;
        if let Err(error) =
            pemfile::write_new(&cert_path, cert.pem().as_bytes(), pemfile::CERT_MODE)
        {
            let _ = fs::remove_file(&key_path);
            return Err(error);
        }
        Ok(Self {
            trust_domain: trust_domain.into(),
            cert: cert.der().clone(),
            issuer: Issuer::new(params, key),
            not_after,
        })
    }

    /// Loads the CA that `init` wrote into `dir`, refusing one of another trust domain, an
    /// expired one, or a key that does not match the certificate.
    pub fn load(dir: &Path, expected_trust_domain: &str) -> Result<Self, IdentityError> {
        let (cert_path, key_path) = (dir.join(CA_CERT_FILE), dir.join(CA_KEY_FILE));
        let bad = |reason: String| IdentityError::BadCa {
            path: cert_path.clone(),
            reason,
        };
        let cert = pemfile::read_certs(&cert_path)?.swap_remove(0);
        let (_, x509) = X509Certificate::from_der(&cert).map_err(|e| bad(e.to_string()))?;
        if !x509.is_ca() {
            return Err(bad("it is not a CA (basicConstraints CA:FALSE)".into()));
        }
        let trust_domain = recorded_trust_domain(&x509).ok_or_else(|| {
            bad("no spiffe://<trust-domain> URI SAN (was it made by `mesh-agent ca init`?)".into())
        })?;
        if trust_domain != expected_trust_domain {
            return Err(IdentityError::CaTrustDomainMismatch {
                path: cert_path,
                found: trust_domain,
                expected: expected_trust_domain.into(),
            });
        }
        let not_after = UNIX_EPOCH
            + Duration::from_secs(
                u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0),
            );
        if not_after <= SystemTime::now() {
            return Err(bad(format!(
                "it expired on {}",
                super::issued::rfc3339(not_after)
            )));
        }
        warn_if_readable_by_others(&key_path);
        let key_pem = fs::read_to_string(&key_path).map_err(|source| IdentityError::Read {
            path: key_path.clone(),
            source,
        })?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| IdentityError::Pem {
            path: key_path.clone(),
            reason: format!("no usable private key: {e}"),
        })?;
        if key.subject_public_key_info() != x509.public_key().raw {
            return Err(bad(format!("{} is not its key", key_path.display())));
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            trust_domain,
            issuer,
            cert,
            not_after,
        })
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// When the CA expires; issued certificates never outlive it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The CA certificate: the root every workload trusts in CA mode.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// Issues a certificate for `id` valid for `ttl` (never past the CA's own end), with a
    /// fresh key, a random serial and a start 60 s in the past for clock skew.
    pub fn issue(&self, id: &SpiffeId, ttl: Duration) -> Result<IssuedCert, IdentityError> {
        let now = SystemTime::now();
        if now >= self.not_after {
            return Err(IdentityError::CaExpired(super::issued::rfc3339(
                self.not_after,
            )));
        }
        self.issue_with_validity(id, now - CLOCK_SKEW, (now + ttl).min(self.not_after))
    }

    pub(super) fn issue_with_validity(
        &self,
        id: &SpiffeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<IssuedCert, IdentityError> {
        let uri = SpiffeId::parse(&id.to_string())?.to_string();
        if id.trust_domain() != self.trust_domain {
            return Err(IdentityError::ForeignIdentity {
                id: id.clone(),
                trust_domain: self.trust_domain.clone(),
            });
        }
        let generate = |source| IdentityError::Generate {
            what: uri.clone(),
            source,
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(generate)?;
        let mut params = CertificateParams::default();
        // X.509-SVID: the identity is the URI SAN; the subject stays empty (rcgen then marks
        // the SAN critical, as RFC 5280 wants).
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![uri_san(&uri)?];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let (not_before, not_after) = (whole_seconds(not_before), whole_seconds(not_after));
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        let (serial, serial_number) = random_serial();
        params.serial_number = Some(serial_number);
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        Ok(IssuedCert {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            serial,
            not_before,
            not_after,
        })
    }
}

fn uri_san(uri: &str) -> Result<SanType, IdentityError> {
    let ia5 = uri.try_into().map_err(|source| IdentityError::Generate {
        what: uri.into(),
        source,
    })?;
    Ok(SanType::URI(ia5))
}

/// The trust domain in a CA's `spiffe://<td>` URI SAN.
fn recorded_trust_domain(x509: &X509Certificate<'_>) -> Option<String> {
    let san = x509.subject_alternative_name().ok()??;
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) => uri
            .strip_prefix("spiffe://")
            .filter(|td| spiffe::validate_trust_domain(td).is_ok())
            .map(String::from),
        _ => None,
    })
}

/// 126 random bits: positive, and no leading zero byte, so the hex is what the certificate
/// holds and what `openssl` prints.
fn random_serial() -> (String, SerialNumber) {
    let mut bytes = [0u8; 16];
    // ring's RNG fails only on a system without one; the clock then keeps serials unique.
    if super::tls::provider()
        .secure_random
        .fill(&mut bytes)
        .is_err()
    {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        bytes = nanos.to_be_bytes();
    }
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    let hex = bytes.iter().map(|b| format!("{b:02x}")).collect();
    (hex, SerialNumber::from_slice(&bytes))
}

/// Certificates hold whole seconds; keep what we report equal to what they say.
fn whole_seconds(time: SystemTime) -> SystemTime {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn warn_if_readable_by_others(key: &Path) {
    if let Ok(meta) = fs::metadata(key)
        && meta.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %key.display(), "the CA key is readable by group or others: chmod 600 it");
    }
}

#[cfg(test)]
#[path = "ca_tests.rs"]
pub(crate) mod tests;
