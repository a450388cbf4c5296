//! Real TLS 1.3 handshakes over an in-memory duplex between our client and server configs:
//! which certificates pass, and how each rejection is classified on each side.
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use rustls::{ClientConfig, ServerConfig, pki_types::ServerName, sign::CertifiedKey};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::{
    HandshakeFailure, IssuedCert, LocalCa, SpiffeId,
    ca::tests::test_ca,
    peer_id,
    tls::{self, CertSlot},
    verify::{PeerVerifier, Trust, WorkloadVerifier},
};

pub(super) const TD: &str = "cluster.local";
pub(super) const HOUR: Duration = Duration::from_secs(3600);

pub(super) fn id(sa: &str) -> SpiffeId {
    SpiffeId::new(TD, "default", sa)
}

fn slot(issued: IssuedCert) -> Arc<CertSlot> {
    let key = CertifiedKey::from_der(issued.chain, issued.key, &tls::provider()).unwrap();
    Arc::new(CertSlot::new(key))
}

pub(super) fn server(cert: IssuedCert, roots: &[&LocalCa]) -> Arc<ServerConfig> {
    let roots: Vec<_> = roots.iter().map(|ca| ca.certificate().clone()).collect();
    let verifier = WorkloadVerifier::new(Arc::new(Trust::new(&roots).unwrap()), TD);
    Arc::new(tls::server_config(slot(cert), Arc::new(verifier)).unwrap())
}

pub(super) fn client(cert: IssuedCert, root: &LocalCa, peer: SpiffeId) -> Arc<ClientConfig> {
    let trust = Trust::new(&[root.certificate().clone()]).unwrap();
    let verifier = PeerVerifier::new(Arc::new(trust), peer);
    Arc::new(tls::client_config(slot(cert), Arc::new(verifier)).unwrap())
}

/// How the handshake (and a first exchange, where a TLS 1.3 client learns that the server
/// refused its certificate) ended on each side.
#[derive(Debug, PartialEq)]
pub struct Outcome {
    pub client: Result<SpiffeId, HandshakeFailure>,
    pub server: Result<SpiffeId, HandshakeFailure>,
}

pub async fn handshake(client: Arc<ClientConfig>, server: Arc<ServerConfig>) -> Outcome {
    let (c, s) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("workload.mesh").unwrap();
    let client_side = async {
        let mut tls = TlsConnector::from(client).connect(name, c).await?;
        let peer = peer_id(tls.get_ref().1).expect("a verified server has a SPIFFE ID");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        tls.write_all(b"ping").await?;
        let mut buf = [0; 4];
        tls.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(peer)
    };
    let server_side = async {
        let mut tls = TlsAcceptor::from(server).accept(s).await?;
        let peer = peer_id(tls.get_ref().1).expect("a verified client has a SPIFFE ID");
        let mut buf = [0; 4];
        tls.read_exact(&mut buf).await?;
        tls.write_all(b"pong").await?;
        tls.flush().await?;
        Ok::<_, std::io::Error>(peer)
    };
    let (client, server) = tokio::join!(client_side, server_side);
    let classify = |e: std::io::Error| HandshakeFailure::from_io_error(&e);
    Outcome {
        client: client.map_err(classify),
        server: server.map_err(classify),
    }
}

#[tokio::test]
async fn mutual_tls_proves_both_identities() {
    let (ca, _) = test_ca("hs-ok", TD);
    let (a, b) = (id("a"), id("b"));
    let client = client(ca.issue(&a, HOUR).unwrap(), &ca, b.clone());
    let server = server(ca.issue(&b, HOUR).unwrap(), &[&ca]);
    let outcome = handshake(client, server).await;
    assert_eq!(
        outcome,
        Outcome {
            client: Ok(b),
            server: Ok(a)
        }
    );
}

#[tokio::test]
async fn the_client_refuses_a_server_of_another_identity() {
    let (ca, _) = test_ca("hs-wrong", TD);
    let client = client(ca.issue(&id("a"), HOUR).unwrap(), &ca, id("b"));
    let server = server(ca.issue(&id("c"), HOUR).unwrap(), &[&ca]);
    let outcome = handshake(client, server).await;
    assert_eq!(outcome.client, Err(HandshakeFailure::WrongIdentity));
    // The server only gets certificate_unknown: the client is the one that counts it.
    assert_eq!(outcome.server, Err(HandshakeFailure::Other));
}

#[tokio::test]
async fn an_unknown_ca_is_reported_as_such_not_masked_by_the_identity_check() {
    let (ca, _) = test_ca("hs-unknown", TD);
    let (rogue, _) = test_ca("hs-unknown-rogue", TD);
    // The rogue server is also the wrong identity: the chain error must win.
    let client_cfg = client(ca.issue(&id("a"), HOUR).unwrap(), &ca, id("b"));
    let outcome = handshake(
        client_cfg,
        server(rogue.issue(&id("c"), HOUR).unwrap(), &[&ca]),
    )
    .await;
    assert_eq!(outcome.client, Err(HandshakeFailure::UnknownCa));

    // A client of a CA the server does not trust, of the same trust domain.
    let client_cfg = client(rogue.issue(&id("a"), HOUR).unwrap(), &ca, id("b"));
    let outcome = handshake(
        client_cfg,
        server(ca.issue(&id("b"), HOUR).unwrap(), &[&ca]),
    )
    .await;
    assert_eq!(outcome.server, Err(HandshakeFailure::UnknownCa));
    assert_eq!(
        outcome.client,
        Err(HandshakeFailure::UnknownCa),
        "unknown_ca alert"
    );

    // A CA of another name (and trust domain: the chain error wins over that too).
    let (stranger, _) = test_ca("hs-unknown-stranger", "other.local");
    let foreign = SpiffeId::new("other.local", "default", "a");
    let client_cfg = client(stranger.issue(&foreign, HOUR).unwrap(), &ca, id("b"));
    let outcome = handshake(
        client_cfg,
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

#[tokio::test]
async fn expired_certificates_are_refused_on_both_sides() {
    let (ca, _) = test_ca("hs-expired", TD);
    let now = SystemTime::now();
    let expired = |sa| {
        ca.issue_with_validity(&id(sa), now - 2 * HOUR, now - HOUR)
            .unwrap()
    };
    let outcome = handshake(
        client(ca.issue(&id("a"), HOUR).unwrap(), &ca, id("b")),
        server(expired("b"), &[&ca]),
    )
    .await;
    assert_eq!(outcome.client, Err(HandshakeFailure::Expired));

    let outcome = handshake(
        client(expired("a"), &ca, id("b")),
        server(ca.issue(&id("b"), HOUR).unwrap(), &[&ca]),
    )
    .await;
    assert_eq!(outcome.server, Err(HandshakeFailure::Expired));
    assert_eq!(
        outcome.client,
        Err(HandshakeFailure::Expired),
        "from the alert"
    );
}

#[tokio::test]
async fn the_server_refuses_other_trust_domains_even_with_a_trusted_root() {
    let (ca, _) = test_ca("hs-domain", TD);
    let (other, _) = test_ca("hs-domain-other", "other.local");
    let foreign = SpiffeId::new("other.local", "default", "a");
    let client_cfg = client(other.issue(&foreign, HOUR).unwrap(), &ca, id("b"));
    let outcome = handshake(
        client_cfg,
        server(ca.issue(&id("b"), HOUR).unwrap(), &[&ca, &other]),
    )
    .await;
    assert_eq!(outcome.server, Err(HandshakeFailure::UntrustedDomain));
    assert_eq!(
        outcome.client,
        Err(HandshakeFailure::Other),
        "certificate_unknown alert"
    );
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused() {
    let (ca, _) = test_ca("hs-nocert", TD);
    let trust = Arc::new(Trust::new(&[ca.certificate().clone()]).unwrap());
    let mut client_cfg = ClientConfig::builder_with_provider(tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PeerVerifier::new(trust, id("b"))))
        .with_no_client_auth();
    client_cfg.alpn_protocols = vec![b"h2".to_vec()];
    let outcome = handshake(
        Arc::new(client_cfg),
        server(ca.issue(&id("b"), HOUR).unwrap(), &[&ca]),
    )
    .await;
    assert_eq!(outcome.server, Err(HandshakeFailure::NoCertificate));
    assert_eq!(
        outcome.client,
        Err(HandshakeFailure::NoCertificate),
        "certificate_required"
    );
}
