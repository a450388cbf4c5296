use std::{sync::Arc, time::Instant};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
};

use super::*;

fn client_hello(server_name: &str) -> Vec<u8> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let name = server_name.to_owned().try_into().unwrap();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

#[test]
fn http1_needs_a_whole_request_line() {
    assert_eq!(classify(b"GE"), None);
    assert_eq!(classify(b"GET /index.html HT"), None);
    let get = b"GET /index.html HTTP/1.1\r\nHost: a\r\n";
    assert_eq!(classify(get), Some(Protocol::Http1));
    assert_eq!(classify(b"POST / HTTP/1.0\r\n"), Some(Protocol::Http1));
    let redis = Some(Protocol::Opaque(Opaque::Unrecognized));
    assert_eq!(classify(b"GET key\r\n"), redis, "a Redis GET is not HTTP");
    assert_eq!(classify(b"SSH-2.0-OpenSSH\r\n"), redis);
    assert_eq!(
        classify(b"get / HTTP/1.1\r\n"),
        redis,
        "methods are case-sensitive"
    );
}

#[test]
fn http2_is_the_whole_preface() {
    assert_eq!(classify(&H2_PREFACE[..10]), None);
    assert_eq!(classify(H2_PREFACE), Some(Protocol::Http2));
    assert_eq!(
        classify(b"PRI * HTTP/1.1\r\n"),
        Some(Protocol::Opaque(Opaque::Unrecognized))
    );
}

#[test]
fn tls_client_hello_gives_its_server_name() {
    let hello = client_hello("api.example.test");
    let sni = Some("api.example.test".to_owned());
    assert_eq!(classify(&hello), Some(Protocol::Tls { sni }));
    assert_eq!(
        classify(&hello[..20]),
        None,
        "a record cut short waits for the rest"
    );
    assert_eq!(undecided(&hello[..20]), Protocol::Tls { sni: None });
}

#[test]
fn garbage_after_a_handshake_byte_is_opaque() {
    assert_eq!(
        classify(&[0x16, 9, 9, 9]),
        Some(Protocol::Opaque(Opaque::Unrecognized))
    );
    let mut truncated_extension = client_hello("a.test");
    truncated_extension.truncate(truncated_extension.len() - 3);
    let len = (truncated_extension.len() - 5) as u16;
    truncated_extension[3..5].copy_from_slice(&len.to_be_bytes());
    assert!(matches!(
        classify(&truncated_extension),
        Some(Protocol::Tls { .. })
    ));
}

async fn pair() -> (TcpStream, TcpStream, TcpListener) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (accepted, _) = listener.accept().await.unwrap();
    (client, accepted, listener)
}

#[tokio::test]
async fn a_server_that_speaks_first_decides_at_once() {
    let (_client, accepted, _l) = pair().await;
    let upstream = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = upstream.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = upstream.accept().await.unwrap();
        s.write_all(b"220 ready\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(5)).await;
    });
    let started = Instant::now();
    let dial: Dial = Box::pin(async move {
        let s = TcpStream::connect(addr).await?;
        Ok(Box::new(s) as Box<dyn UpstreamStream>)
    });
    let (protocol, upstream) = detect_beside_dial(&accepted, Duration::from_secs(5), dial).await;
    assert_eq!(protocol, Protocol::Opaque(Opaque::ServerFirst));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (_, first) = upstream.connection().await.unwrap();
    assert_eq!(first, b"220 ready\r\n", "the banner is kept for the client");
}

#[tokio::test]
async fn a_silent_client_is_opaque_after_the_window() {
    let (_client, accepted, _l) = pair().await;
    let protocol = client_speaks(&accepted, Duration::from_millis(50)).await;
    assert_eq!(protocol, Protocol::Opaque(Opaque::ClientSilent));
}

#[tokio::test]
async fn a_request_line_in_pieces_is_http_and_nothing_is_consumed() {
    let (mut client, accepted, _l) = pair().await;
    tokio::spawn(async move {
        client.write_all(b"GET / HT").await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        client.write_all(b"TP/1.1\r\n\r\n").await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    let protocol = client_speaks(&accepted, Duration::from_secs(5)).await;
    assert_eq!(protocol, Protocol::Http1);
    let mut buf = [0u8; 64];
    let n = accepted.peek(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"GET / HTTP/1.1"));
}
