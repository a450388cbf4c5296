//! [`Identities`] end to end: loading, issuing per service account, configs that follow
//! renewal and file rotation, and the errors an operator sees.
use std::{
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls::ServerConfig;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::{
    HandshakeFailure, Identities, IdentityError, SpiffeId,
    ca::{CA_CERT_FILE, tests::test_ca},
    handshake_tests::{Outcome, handshake},
    pemfile::tempdir,
};
use crate::config::identity::{
    CertificateSource, IdentityFile, IdentityFiles, IdentitySettings, LocalCaSettings,
};

const TD: &str = "cluster.local";

fn ca_settings(dir: &Path, ttl: Duration) -> IdentitySettings {
    IdentitySettings {
        trust_domain: TD.into(),
        source: CertificateSource::Ca(LocalCaSettings {
            dir: dir.into(),
            certificate_ttl: ttl,
        }),
    }
}

fn serial(ids: &Identities, id: &SpiffeId) -> Option<String> {
    let dump = ids.dump();
    let entry = dump["identities"]
        .as_array()?
        .iter()
        .find(|e| e["id"] == id.to_string())?;
    entry["serial"].as_str().map(String::from)
}

fn start_err(settings: &IdentitySettings) -> String {
    Identities::start(settings)
        .err()
        .expect("start must fail")
        .to_string()
}

#[tokio::test]
async fn ca_mode_issues_per_service_account_and_caches_configs() {
    let (_, dir) = test_ca("store-ca", TD);
    let ids = Identities::start(&ca_settings(&dir, Duration::from_secs(3600))).unwrap();
    assert_eq!(ids.id_for("default", "a").trust_domain(), TD);
    let (a, b) = (ids.id_for("default", "a"), ids.id_for("default", "b"));
    assert_eq!(b.to_string(), "spiffe://cluster.local/ns/default/sa/b");

    let server = ids.server_config(&b).unwrap();
    assert!(Arc::ptr_eq(&server, &ids.server_config(&b).unwrap()));
    let client = ids.client_config(&a, &b).unwrap();
    assert!(Arc::ptr_eq(&client, &ids.client_config(&a, &b).unwrap()));
    let outcome = handshake(client, server).await;
    assert_eq!(
        outcome,
        Outcome {
            client: Ok(b.clone()),
            server: Ok(a.clone())
        }
    );

    let dump = ids.dump();
    assert_eq!(dump["trustDomain"], TD);
    assert_eq!(dump["source"], "ca");
    assert_eq!(dump["dir"], dir.display().to_string());
    let entries = dump["identities"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "one per service account: {dump}");
    assert_eq!(entries[0]["id"], a.to_string());
    for field in ["serial", "notBefore", "notAfter"] {
        assert!(entries[0][field].is_string(), "{field}: {dump}");
    }
    assert!(entries[0]["notAfter"].as_str().unwrap().ends_with('Z'));
    assert!(!dump.to_string().to_lowercase().contains("private"));

    let foreign = SpiffeId::new("other.local", "default", "a");
    let err = ids.server_config(&foreign).unwrap_err();
    assert!(
        matches!(err, IdentityError::ForeignIdentity { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn rotation_changes_the_certificate_but_not_the_configs_or_live_connections() {
    let (_, dir) = test_ca("store-rotate", TD);
    let ids = Identities::start(&ca_settings(&dir, Duration::from_secs(3600))).unwrap();
    let (a, b) = (ids.id_for("ns", "a"), ids.id_for("ns", "b"));
    let (server, client) = (
        ids.server_config(&b).unwrap(),
        ids.client_config(&a, &b).unwrap(),
    );
    let before = serial(&ids, &b).unwrap();

    let (c, s) = tokio::io::duplex(4096);
    let name = rustls::pki_types::ServerName::try_from("b").unwrap();
    let (live_client, live_server) = tokio::join!(
        tokio_rustls::TlsConnector::from(client.clone()).connect(name, c),
        tokio_rustls::TlsAcceptor::from(server.clone()).accept(s),
    );
    let (mut live_client, mut live_server) = (live_client.unwrap(), live_server.unwrap());

    ids.rotate_now();
    let after = serial(&ids, &b).unwrap();
    assert_ne!(before, after);
    assert!(Arc::ptr_eq(&server, &ids.server_config(&b).unwrap()));

    live_client.write_all(b"still").await.unwrap();
    let mut buf = [0; 5];
    live_server.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");

    let presented = presented_serial(client, server).await;
    assert_eq!(
        presented, after,
        "new handshakes present the new certificate"
    );
}

/// The serial of the certificate the server presents in a new handshake.
async fn presented_serial(client: Arc<rustls::ClientConfig>, server: Arc<ServerConfig>) -> String {
    let (c, s) = tokio::io::duplex(4096);
    let name = rustls::pki_types::ServerName::try_from("b").unwrap();
    let (tls, _) = tokio::join!(
        tokio_rustls::TlsConnector::from(client).connect(name, c),
        tokio_rustls::TlsAcceptor::from(server).accept(s),
    );
    let tls = tls.unwrap();
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = <x509_parser::certificate::X509Certificate as x509_parser::prelude::FromDer<
        _,
    >>::from_der(leaf)
    .unwrap();
    cert.raw_serial()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn ca_mode_renews_at_half_the_lifetime() {
    let (_, dir) = test_ca("store-renew", TD);
    let ids = Identities::start(&ca_settings(&dir, Duration::from_secs(4))).unwrap();
    let a = ids.id_for("ns", "a");
    ids.server_config(&a).unwrap();
    let first = serial(&ids, &a).unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        serial(&ids, &a).unwrap(),
        first,
        "not before half the lifetime"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while serial(&ids, &a).unwrap() == first {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not renewed after 2 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
fn start_names_what_is_wrong() {
    let missing = tempdir("store-missing").join("nothing");
    let err = start_err(&ca_settings(&missing, Duration::from_secs(60)));
    assert!(err.contains("nothing/ca-cert.pem"), "{err}");

    let (_, dir) = test_ca("store-mismatch", "prod.example");
    let err = start_err(&ca_settings(&dir, Duration::from_secs(60)));
    assert!(
        err.contains("\"prod.example\"") && err.contains("\"cluster.local\""),
        "{err}"
    );

    let (ca, ca_dir) = test_ca("store-files-bad", TD);
    let work = tempdir("store-files-bad-out");
    let issued = ca
        .issue(&SpiffeId::new(TD, "ns", "other"), Duration::from_secs(60))
        .unwrap();
    issued.write(&work, false).unwrap();
    let mut settings = files_settings(&ca_dir, vec![file_for("ns", "a", &work)]);
    let err = start_err(&settings);
    assert!(
        err.contains("cert.pem") && err.contains("sa/other"),
        "{err}"
    );

    settings = files_settings(&ca_dir, vec![file_for("ns", "a", &work.join("gone"))]);
    let err = start_err(&settings);
    assert!(err.contains("gone/cert.pem"), "{err}");
}

fn file_for(namespace: &str, service_account: &str, dir: &Path) -> IdentityFile {
    IdentityFile {
        namespace: namespace.into(),
        service_account: service_account.into(),
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    }
}

fn files_settings(ca_dir: &Path, identities: Vec<IdentityFile>) -> IdentitySettings {
    IdentitySettings {
        trust_domain: TD.into(),
        source: CertificateSource::Files(IdentityFiles {
            ca_bundle: ca_dir.join(CA_CERT_FILE),
            identities,
        }),
    }
}

/// Moves a file's mtime forward, as a later write would (coarse clocks can repeat one).
fn touch_later(path: &Path, secs: u64) {
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_modified(SystemTime::now() + Duration::from_secs(secs))
        .unwrap();
}

#[tokio::test]
async fn files_mode_serves_the_files_and_follows_their_changes() {
    let (ca, ca_dir) = test_ca("store-files", TD);
    let work = tempdir("store-files-out");
    let (a_dir, b_dir) = (work.join("a"), work.join("b"));
    let hour = Duration::from_secs(3600);
    for (sa, dir) in [("a", &a_dir), ("b", &b_dir)] {
        ca.issue(&SpiffeId::new(TD, "ns", sa), hour)
            .unwrap()
            .write(dir, false)
            .unwrap();
    }
    let settings = files_settings(
        &ca_dir,
        vec![file_for("ns", "a", &a_dir), file_for("ns", "b", &b_dir)],
    );
    let ids = Identities::start(&settings).unwrap();
    let (a, b) = (ids.id_for("ns", "a"), ids.id_for("ns", "b"));
    let outcome = handshake(
        ids.client_config(&a, &b).unwrap(),
        ids.server_config(&b).unwrap(),
    )
    .await;
    assert_eq!(
        outcome,
        Outcome {
            client: Ok(b.clone()),
            server: Ok(a.clone())
        }
    );
    let err = ids
        .server_config(&ids.id_for("ns", "c"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("spiffe://cluster.local/ns/ns/sa/c") && err.contains("identity.files"),
        "{err}"
    );
    assert_eq!(ids.dump()["source"], "files");

    // A half-rotated pair (new key, old certificate) is refused; the old pair stays in use.
    let first = serial(&ids, &b).unwrap();
    let next = ca.issue(&b, hour).unwrap();
    fs::write(b_dir.join("key.pem"), next.key_pem()).unwrap();
    touch_later(&b_dir.join("key.pem"), 5);
    ids.rotate_now();
    assert_eq!(serial(&ids, &b).unwrap(), first);
    let dump = ids.dump();
    let reload_error = dump["identities"][1]["reloadError"].as_str().unwrap();
    assert!(reload_error.contains("key.pem does not match"), "{dump}");

    // The certificate follows: the poller loads the pair without being asked.
    fs::write(b_dir.join("cert.pem"), next.chain_pem()).unwrap();
    touch_later(&b_dir.join("cert.pem"), 6);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while serial(&ids, &b).unwrap() == first {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the change was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(serial(&ids, &b).unwrap(), next.serial);
    assert!(ids.dump()["identities"][1].get("reloadError").is_none());
    let outcome = handshake(
        ids.client_config(&a, &b).unwrap(),
        ids.server_config(&b).unwrap(),
    )
    .await;
    assert_eq!(outcome.client, Ok(b));
    assert_ne!(outcome.server, Err(HandshakeFailure::Other));
}
