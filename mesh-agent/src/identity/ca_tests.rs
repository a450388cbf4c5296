use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, SystemTime},
};

use rustls::{RootCertStore, server::ParsedCertificate};
use x509_parser::{certificate::X509Certificate, prelude::FromDer as _};

use super::*;
use crate::identity::{
    pemfile::{TempDir, tempdir},
    verify::leaf_id,
};

/// A fresh CA in its own directory.
pub fn test_ca(name: &str, trust_domain: &str) -> (LocalCa, TempDir) {
    let dir = tempdir(name).child("ca");
    (LocalCa::init(trust_domain, &dir).unwrap(), dir)
}

/// Whether `chain` leads to `root`, checked by rustls as the tunnel does.
pub fn chains_to(chain: &[CertificateDer<'static>], root: &CertificateDer<'static>) -> bool {
    let mut roots = RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    let leaf = ParsedCertificate::try_from(&chain[0]).unwrap();
    let algs = crate::identity::tls::provider()
        .signature_verification_algorithms
        .all;
    let now = rustls::pki_types::UnixTime::now();
    rustls::client::verify_server_cert_signed_by_trust_anchor(&leaf, &roots, &chain[1..], now, algs)
        .is_ok()
}

fn mode(path: &Path) -> u32 {
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_the_ca_and_never_overwrites_it() {
    let (ca, dir) = test_ca("ca-init", "cluster.local");
    assert_eq!(ca.trust_domain(), "cluster.local");
    assert_eq!(mode(&dir.join(CA_KEY_FILE)), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let pem = fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap();
    let der = crate::identity::pemfile::read_certs(&dir.join(CA_CERT_FILE)).unwrap();
    let (_, x509) = X509Certificate::from_der(&der[0]).unwrap();
    assert!(x509.is_ca());
    assert_eq!(
        recorded_trust_domain(&x509).as_deref(),
        Some("cluster.local")
    );
    let years = x509.validity().time_to_expiration().unwrap().whole_days() / 365;
    assert_eq!(years, 9, "about ten years left");

    let err = LocalCa::init("cluster.local", &dir).err().unwrap();
    assert!(matches!(err, IdentityError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("ca-cert.pem"), "{err}");
    assert_eq!(fs::read_to_string(dir.join(CA_CERT_FILE)).unwrap(), pem);
    let err = LocalCa::init("Bad_Domain", &dir.join("x")).err().unwrap();
    assert!(err.to_string().contains("Bad_Domain"), "{err}");
}

#[test]
fn load_refuses_another_trust_domain_and_a_foreign_key() {
    let (ca, dir) = test_ca("ca-load", "cluster.local");
    let loaded = LocalCa::load(&dir, "cluster.local").unwrap();
    assert_eq!(loaded.certificate(), ca.certificate());

    let err = LocalCa::load(&dir, "prod.example")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ca-cert.pem"), "{err}");
    assert!(
        err.contains("\"cluster.local\"") && err.contains("\"prod.example\""),
        "{err}"
    );

    let (other_ca, other) = test_ca("ca-load-other", "cluster.local");
    let subject = |ca: &LocalCa| {
        let (_, x509) = X509Certificate::from_der(ca.certificate()).unwrap();
        x509.subject().to_string()
    };
    assert_ne!(
        subject(&ca),
        subject(&other_ca),
        "each CA has a name of its own"
    );
    fs::copy(other.join(CA_KEY_FILE), dir.join(CA_KEY_FILE)).unwrap();
    let err = LocalCa::load(&dir, "cluster.local")
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("ca-key.pem is not its key"), "{err}");

    let err = LocalCa::load(&dir.join("missing"), "cluster.local")
        .err()
        .unwrap();
    assert!(matches!(err, IdentityError::Read { .. }), "{err}");
    assert!(err.to_string().contains("missing/ca-cert.pem"), "{err}");
}

#[test]
fn issues_spiffe_certificates_that_chain_to_the_ca() {
    let (ca, dir) = test_ca("ca-issue", "cluster.local");
    let ca = LocalCa::load(&dir, "cluster.local").map(|_| ca).unwrap();
    let id = SpiffeId::new("cluster.local", "default", "sleep");
    let before = SystemTime::now();
    let issued = ca.issue(&id, Duration::from_secs(3600)).unwrap();
    assert_eq!(issued.chain.len(), 2);
    assert_eq!(&issued.chain[1], ca.certificate());
    assert!(chains_to(&issued.chain, ca.certificate()));
    assert_eq!(leaf_id(&issued.chain[0]).unwrap(), id);

    let (_, leaf) = X509Certificate::from_der(&issued.chain[0]).unwrap();
    assert!(!leaf.is_ca());
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let serial: String = leaf
        .raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(serial, issued.serial);
    assert_eq!(serial.len(), 32);
    let skew = before.duration_since(issued.not_before).unwrap();
    assert!(
        skew >= Duration::from_secs(59) && skew <= Duration::from_secs(61),
        "{skew:?}"
    );
    let life = issued.not_after.duration_since(before).unwrap();
    assert!(
        life.abs_diff(Duration::from_secs(3600)) <= Duration::from_secs(2),
        "{life:?}"
    );
    assert!(format!("{issued:?}").contains(&issued.serial));
    assert!(!format!("{issued:?}").contains("key"));

    let again = ca.issue(&id, Duration::from_secs(3600)).unwrap();
    assert_ne!(again.serial, issued.serial);
    assert_ne!(again.key.secret_der(), issued.key.secret_der());
}

#[test]
fn a_loaded_ca_issues_what_the_written_certificate_verifies() {
    let (_, dir) = test_ca("ca-reload", "mesh.test");
    let ca = LocalCa::load(&dir, "mesh.test").unwrap();
    let issued = ca
        .issue(
            &SpiffeId::new("mesh.test", "a", "b"),
            Duration::from_secs(60),
        )
        .unwrap();
    let written = crate::identity::pemfile::read_certs(&dir.join(CA_CERT_FILE)).unwrap();
    assert!(chains_to(&issued.chain, &written[0]));
    let (other, _) = test_ca("ca-reload-other", "mesh.test");
    assert!(!chains_to(&issued.chain, other.certificate()));
}

#[test]
fn refuses_foreign_or_malformed_identities() {
    let (ca, _) = test_ca("ca-refuse", "cluster.local");
    let ttl = Duration::from_secs(60);
    let err = ca
        .issue(&SpiffeId::new("other.local", "a", "b"), ttl)
        .err()
        .unwrap();
    assert!(
        matches!(err, IdentityError::ForeignIdentity { .. }),
        "{err}"
    );
    let err = ca
        .issue(&SpiffeId::new("cluster.local", "a/b", "c"), ttl)
        .err()
        .unwrap();
    assert!(matches!(err, IdentityError::InvalidId(_)), "{err}");
}

#[test]
fn pem_output_reads_back() {
    let (ca, _) = test_ca("ca-pem", "cluster.local");
    let issued = ca
        .issue(
            &SpiffeId::new("cluster.local", "a", "b"),
            Duration::from_secs(60),
        )
        .unwrap();
    let dir = tempdir("ca-pem-out");
    fs::write(dir.join("cert.pem"), issued.chain_pem()).unwrap();
    fs::write(dir.join("key.pem"), issued.key_pem()).unwrap();
    assert_eq!(
        crate::identity::pemfile::read_certs(&dir.join("cert.pem")).unwrap(),
        issued.chain
    );
    let key = crate::identity::pemfile::read_key(&dir.join("key.pem")).unwrap();
    assert_eq!(key.secret_der(), issued.key.secret_der());
}
