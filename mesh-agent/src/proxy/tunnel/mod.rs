//! The mesh tunnel (HBONE, as Istio ambient speaks it): between the proxies of two enrolled
//! pods, each connection is an HTTP/2 `CONNECT` stream, `:authority` = the original
//! `ip:port`, inside a TLS 1.3 connection (ALPN `h2`) to `<destination pod IP>:15008` in
//! which both sides present the SPIFFE identity of their pod. `docs/hbone.md` has the wire.
//!
//! [`client`] pools tunnels and opens streams for outbound connections to mesh pods;
//! [`server`] accepts tunnels on each enrolled pod's `15008` listener, checks the peer and
//! the policy, and delivers each stream to the app; [`relay`] moves bytes between a stream
//! and a TCP connection.
pub mod client;
pub mod relay;
pub mod server;

use std::{net::IpAddr, time::Duration};

use hyper::http::HeaderValue;

/// Streams one tunnel carries at most; the next connection opens another tunnel. hyper
/// would queue a stream over the peer's limit instead of opening a connection, so the pool
/// counts them itself.
const MAX_STREAMS_PER_TUNNEL: usize = 100;
/// What the server allows, above the client's own bound so a pool never hits it.
const SERVER_MAX_STREAMS: u32 = 2 * MAX_STREAMS_PER_TUNNEL as u32;
/// A tunnel without streams for this long is closed.
const IDLE_TUNNEL: Duration = Duration::from_secs(300);
/// HTTP/2 flow-control windows. The connection's is larger than a stream's, so that one
/// stream whose reader is slow cannot stall the others.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
const MAX_FRAME: u32 = 256 * 1024;
/// HTTP/2 pings on an idle tunnel, so a peer that vanished is noticed.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The `forwarded` header Istio's peers send: `for=<client ip>`, an IPv6 address quoted
/// and in brackets (RFC 7239).
fn forwarded_for(ip: IpAddr) -> HeaderValue {
    let value = match ip {
        IpAddr::V4(v4) => format!("for={v4}"),
        IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
    };
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("for=unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_quotes_ipv6_only() {
        assert_eq!(forwarded_for("10.0.0.1".parse().unwrap()), "for=10.0.0.1");
        assert_eq!(
            forwarded_for("fd00::1".parse().unwrap()),
            "for=\"[fd00::1]\""
        );
    }
}
