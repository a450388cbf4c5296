//! `tls-serve` and `tls-dial`: TLS 1.3 that the mesh must pass through untouched (the app's
//! own TLS, routed by SNI at most). The server's certificate is self-signed and the client
//! accepts any, because what is under test is the proxy's handling, not PKI.

use crate::args::{Args, Fail, accept, chain, listen, report};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use std::sync::Arc;
use std::time::Duration;
use tests::http_app::TlsReport;
use tests::wire::pattern;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// `tls-serve --port P --id NAME [--ipv6]`: a certificate for NAME; prints
/// `SNI <name or ->` per completed handshake, then echoes.
pub async fn serve(raw: &[String]) -> Result<(), Fail> {
    let args = Args::parse(raw, &["--port", "--id"], &["--ipv6"])?;
    let id = args.required("--id")?;
    let certified = rcgen::generate_simple_self_signed(vec![id.to_string()])
        .map_err(|e| Fail::Usage(format!("no certificate for {id}: {e}")))?;
    let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .and_then(|b| {
            b.with_no_client_auth()
                .with_single_cert(vec![certified.cert.der().clone()], key.into())
        })
        .map_err(|e| Fail::Run(format!("tls config: {e}")))?;
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = listen(&args).await?;
    loop {
        let (stream, peer) = accept(&listener).await;
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(stream).await {
                Ok(tls) => tls,
                Err(e) => return eprintln!("handshake from {peer}: {e}"),
            };
            println!("SNI {}", tls.get_ref().1.server_name().unwrap_or("-"));
            let (mut rd, mut wr) = tokio::io::split(tls);
            let res = async {
                tokio::io::copy(&mut rd, &mut wr).await?;
                wr.shutdown().await
            };
            if let Err(e) = res.await {
                eprintln!("connection from {peer}: {e}");
            }
        });
    }
}

/// `tls-dial ADDR --sni NAME [--bytes N] [--timeout-ms T]`: N bytes there and back over
/// TLS 1.3, written and read at once so a large N cannot deadlock on full buffers.
pub async fn dial(raw: &[String]) -> Result<(), Fail> {
    let args = Args::parse(raw, &["--sni", "--bytes", "--timeout-ms"], &[])?;
    let addr = args.addr()?;
    let sni = args.required("--sni")?;
    let name = ServerName::try_from(sni.to_string())
        .map_err(|_| Fail::Usage(format!("bad --sni {sni}")))?;
    let bytes: u64 = args.num("--bytes", 1024)?;
    let timeout = Duration::from_millis(args.num("--timeout-ms", 5000)?);
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| Fail::Run(format!("tls config: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let mut out = TlsReport::default();
    let exchange = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("handshake: {}", chain(&e)))?;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let write = async {
            let payload: Vec<u8> = (0..bytes).map(pattern).collect();
            wr.write_all(&payload).await?;
            // close_notify: the server's echo ends cleanly once it has sent everything back.
            wr.shutdown().await
        };
        let read = async {
            let mut buf = vec![0u8; 16 * 1024];
            while out.bytes_echoed < bytes {
                let n = rd.read(&mut buf).await?;
                if n == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                for &b in &buf[..n] {
                    if b != pattern(out.bytes_echoed) {
                        return Err(std::io::Error::other("echo differs from what was sent"));
                    }
                    out.bytes_echoed += 1;
                }
            }
            Ok(())
        };
        let (w, r) = tokio::join!(write, read);
        w.map_err(|e| format!("write: {e}"))?;
        r.map_err(|e| format!("read: {e}"))
    };
    let res = match tokio::time::timeout(timeout, exchange).await {
        Ok(res) => res,
        Err(_) => Err(format!("timed out after {timeout:?}")),
    };
    match res {
        Ok(()) => out.ok = true,
        Err(e) => out.error = Some(e),
    }
    report(&out)
}

/// Accepts any server certificate (test only); handshake signatures are still checked,
/// so the handshake itself is a real one.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // Only TLS 1.3 is offered.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
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
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
