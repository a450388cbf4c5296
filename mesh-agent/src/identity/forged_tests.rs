//! Certificates our CA would never issue, in real handshakes: no or several SPIFFE IDs, and
//! chains forged under a trusted CA's name.
use std::{fs, time::SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::pki_types::PrivatePkcs8KeyDer;

use super::{
    HandshakeFailure, IssuedCert, LocalCa,
    ca::{CA_KEY_FILE, tests::test_ca},
    handshake_tests::{HOUR, TD, client, handshake, id, server},
};

/// Leaf parameters of a workload certificate with these SANs.
fn leaf_params(sans: &[SanType]) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = sans.to_vec();
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params
}

/// A leaf signed by `signer` (the CA's key, or an impostor's), presented with `ca`'s root.
fn signed(ca: &LocalCa, signer: KeyPair, params: &CertificateParams) -> IssuedCert {
    let issuer = Issuer::from_ca_cert_der(ca.certificate(), signer).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    IssuedCert {
        chain: vec![
            params.signed_by(&key, &issuer).unwrap().der().clone(),
            ca.certificate().clone(),
        ],
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        serial: String::new(),
        not_before: SystemTime::now(),
        not_after: SystemTime::now(),
    }
}

fn uri(uri: &str) -> SanType {
    SanType::URI(uri.try_into().unwrap())
}

#[tokio::test]
async fn a_certificate_without_exactly_one_spiffe_id_is_a_bad_certificate() {
    let (ca, dir) = test_ca("hs-nospiffe", TD);
    let ca_key = || KeyPair::from_pem(&fs::read_to_string(dir.join(CA_KEY_FILE)).unwrap()).unwrap();
    let dns_only = [SanType::DnsName("b.default.svc".try_into().unwrap())];
    let two = [uri(&id("b").to_string()), uri(&id("c").to_string())];
    let not_workload = [uri("spiffe://cluster.local/b")];
    for sans in [&dns_only[..], &two, &not_workload] {
        let outcome = handshake(
            client(ca.issue(&id("a"), HOUR).unwrap(), &ca, id("b")),
            server(signed(&ca, ca_key(), &leaf_params(sans)), &[&ca]),
        )
        .await;
        assert_eq!(
            outcome.client,
            Err(HandshakeFailure::BadCertificate),
            "{sans:?}"
        );
    }
}

/// A chain signed by an impostor CA with the trusted CA's exact name and another key.
fn forged(ca: &LocalCa, sa: &str) -> IssuedCert {
    let impostor = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    signed(ca, impostor, &leaf_params(&[uri(&id(sa).to_string())]))
}

#[tokio::test]
async fn a_chain_forged_under_a_trusted_name_is_an_unknown_ca_on_both_sides() {
    let (ca, _) = test_ca("hs-forged", TD);
    let outcome = handshake(
        client(ca.issue(&id("a"), HOUR).unwrap(), &ca, id("b")),
        server(forged(&ca, "b"), &[&ca]),
    )
    .await;
    assert_eq!(outcome.client, Err(HandshakeFailure::UnknownCa));
    assert_eq!(
        outcome.server,
        Err(HandshakeFailure::UnknownCa),
        "unknown_ca alert"
    );

    let outcome = handshake(
        client(forged(&ca, "a"), &ca, id("b")),
        server(ca.issue(&id("b"), HOUR).unwrap(), &[&ca]),
    )
    .await;
    assert_eq!(outcome.server, Err(HandshakeFailure::UnknownCa));
    assert_eq!(
        outcome.client,
        Err(HandshakeFailure::UnknownCa),
        "unknown_ca alert"
    );
}
