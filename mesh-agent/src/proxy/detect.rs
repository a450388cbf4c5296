//! Protocol detection: what the client sends first, peeked (never consumed) so whichever
//! path takes the connection sees every byte.
//!
//! The upstream connection is dialled at once, beside detection, so a server-first protocol
//! (a banner on accept) costs no delay: if the server speaks before the client, or the client
//! stays silent through the window, the connection is opaque TCP.
use std::{future::Future, io, pin::Pin, time::Duration};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite},
    net::TcpStream,
};

/// Enough for a TLS record with a ClientHello, and for a long HTTP/1 request line.
const MAX_PEEK: usize = 16 * 1024 + 5;
/// How long to wait before peeking again when the bytes so far do not decide.
const MORE_BYTES: Duration = Duration::from_millis(2);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"CONNECT", b"OPTIONS", b"TRACE", b"PATCH",
];

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    Http2,
    /// A TLS ClientHello, passed through as TCP; the server name it asked for, if any.
    Tls {
        sni: Option<String>,
    },
    Opaque(Opaque),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opaque {
    ServerFirst,
    ClientSilent,
    Unrecognized,
}

impl Protocol {
    /// The `protocol` label of `sluice_protocol_detected_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::Http2 => "http2",
            Protocol::Tls { .. } => "tls",
            Protocol::Opaque(Opaque::ServerFirst) => "opaque_server_first",
            Protocol::Opaque(Opaque::ClientSilent) => "opaque_client_silent",
            Protocol::Opaque(Opaque::Unrecognized) => "opaque",
        }
    }
}

/// A byte stream to the upstream: a TCP connection or a tunnel stream.
pub trait UpstreamStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> UpstreamStream for T {}

pub type Dial = Pin<Box<dyn Future<Output = io::Result<Box<dyn UpstreamStream>>> + Send>>;

/// The upstream dial, done or still under way when detection decided.
pub enum Upstream {
    /// Connected, with what the server already sent (read, so it must go to the client
    /// first).
    Connected(Box<dyn UpstreamStream>, Vec<u8>),
    Failed(io::Error),
    Dialling(Dial),
}

impl Upstream {
    /// The connection and the server's first bytes, once dialled.
    pub async fn connection(self) -> io::Result<(Box<dyn UpstreamStream>, Vec<u8>)> {
        match self {
            Upstream::Connected(stream, first) => Ok((stream, first)),
            Upstream::Failed(error) => Err(error),
            Upstream::Dialling(dial) => Ok((dial.await?, Vec::new())),
        }
    }
}

/// Detects the client's protocol while `dial` connects upstream.
pub async fn detect_beside_dial(
    client: &TcpStream,
    window: Duration,
    mut dial: Dial,
) -> (Protocol, Upstream) {
    let client_first = client_speaks(client, window);
    tokio::pin!(client_first);
    tokio::select! {
        protocol = &mut client_first => (protocol, Upstream::Dialling(dial)),
        connected = &mut dial => {
            let mut server = match connected {
                Ok(server) => server,
                Err(error) => return (client_first.await, Upstream::Failed(error)),
            };
            let mut first = vec![0u8; 4096];
            tokio::select! {
                protocol = &mut client_first => (protocol, Upstream::Connected(server, Vec::new())),
                read = server.read(&mut first) => {
                    first.truncate(read.unwrap_or(0));
                    (Protocol::Opaque(Opaque::ServerFirst), Upstream::Connected(server, first))
                }
            }
        }
    }
}

/// Peeks until the client's bytes decide, it closes, or the window ends.
pub async fn client_speaks(client: &TcpStream, window: Duration) -> Protocol {
    let mut buf = vec![0u8; MAX_PEEK];
    let deadline = tokio::time::sleep(window);
    tokio::pin!(deadline);
    let mut seen = 0;
    loop {
        tokio::select! {
            peeked = client.peek(&mut buf) => match peeked {
                Ok(0) | Err(_) => return Protocol::Opaque(Opaque::Unrecognized),
                Ok(n) => {
                    seen = n;
                    if let Some(protocol) = classify(&buf[..n]) {
                        return protocol;
                    }
                    if n == buf.len() {
                        return undecided(&buf[..n]);
                    }
                }
            },
            () = &mut deadline => {
                return if seen == 0 {
                    Protocol::Opaque(Opaque::ClientSilent)
                } else {
                    undecided(&buf[..seen])
                };
            }
        }
        tokio::select! {
            () = tokio::time::sleep(MORE_BYTES) => {}
            () = &mut deadline => return undecided(&buf[..seen]),
        }
    }
}

/// What the bytes are, or `None` while more bytes could still change the answer.
pub fn classify(bytes: &[u8]) -> Option<Protocol> {
    if bytes.is_empty() {
        return None;
    }
    if H2_PREFACE.starts_with(bytes) {
        return (bytes.len() == H2_PREFACE.len()).then_some(Protocol::Http2);
    }
    if bytes.starts_with(H2_PREFACE) {
        return Some(Protocol::Http2);
    }
    if bytes[0] == 0x16 {
        return tls(bytes);
    }
    http1(bytes)
}

/// The answer once no more bytes will come: a TLS record cut short is still TLS.
fn undecided(bytes: &[u8]) -> Protocol {
    if bytes.len() >= 3 && bytes[0] == 0x16 && bytes[1] == 3 {
        return Protocol::Tls { sni: None };
    }
    Protocol::Opaque(Opaque::Unrecognized)
}

/// `METHOD SP target SP HTTP/1.x CRLF`; anything else (a Redis `GET key`, say) is not HTTP.
fn http1(bytes: &[u8]) -> Option<Protocol> {
    let opaque = Some(Protocol::Opaque(Opaque::Unrecognized));
    let method_len = bytes.iter().position(|b| *b == b' ');
    let method = &bytes[..method_len.unwrap_or(bytes.len())];
    if !METHODS.iter().any(|m| m.starts_with(method)) {
        return opaque;
    }
    let method_len = method_len?;
    if !METHODS.contains(&method) {
        return opaque;
    }
    let line_end = bytes.windows(2).position(|w| w == b"\r\n")?;
    let line = &bytes[method_len + 1..line_end];
    let is_http = line.ends_with(b" HTTP/1.1") || line.ends_with(b" HTTP/1.0");
    if is_http && !line.starts_with(b" ") {
        Some(Protocol::Http1)
    } else {
        opaque
    }
}

/// A handshake record starting with a ClientHello; `None` until the whole record is here.
fn tls(bytes: &[u8]) -> Option<Protocol> {
    let opaque = Some(Protocol::Opaque(Opaque::Unrecognized));
    if bytes.len() < 6 {
        return if bytes.get(1).is_none_or(|v| *v == 3) {
            None
        } else {
            opaque
        };
    }
    if bytes[1] != 3 || bytes[5] != 1 {
        return opaque;
    }
    let record_len = usize::from(u16::from_be_bytes([bytes[3], bytes[4]]));
    let record = bytes.get(5..5 + record_len)?;
    Some(Protocol::Tls {
        sni: server_name(record),
    })
}

/// The `server_name` extension of a ClientHello handshake message.
fn server_name(hello: &[u8]) -> Option<String> {
    let mut r = Reader(hello);
    r.skip(4 + 2 + 32)?; // type and length, version, random
    let session = r.u8()?;
    r.skip(usize::from(session))?;
    let suites = r.u16()?;
    r.skip(usize::from(suites))?;
    let compression = r.u8()?;
    r.skip(usize::from(compression))?;
    let mut extensions = Reader(r.prefixed()?);
    while let (Some(kind), Some(len)) = (extensions.u16(), extensions.u16()) {
        let body = extensions.take(usize::from(len))?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(body);
        let mut names = Reader(list.prefixed()?);
        while let Some(name_type) = names.u8() {
            let name = names.prefixed()?;
            if name_type == 0 {
                return std::str::from_utf8(name).ok().map(str::to_owned);
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = self.0.split_at_checked(n)?;
        self.0 = rest;
        Some(head)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A field after its 2-byte length.
    fn prefixed(&mut self) -> Option<&'a [u8]> {
        let len = self.u16()?;
        self.take(usize::from(len))
    }
}

#[cfg(test)]
#[path = "detect/tests.rs"]
mod tests;
