//! Bytes between a TCP connection and a tunnel stream, with the same idle timeout, counting
//! and reset rules as the plain relay ([`super::super::l4`]). The stream side is any async
//! byte stream (an upgraded HTTP/2 stream); its buffer is held only while bytes flow.
use std::{io, time::Duration};

use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::super::l4::{self, Activity, RelayEnd};

const BUFFER: usize = 64 * 1024;

/// Relays until both directions are done, the connection idles out, a side fails, or
/// `stop` completes. `tcp_to_stream` counts bytes from the TCP side into the tunnel.
pub async fn relay<S>(
    mut tcp: TcpStream,
    stream: S,
    idle_timeout: Duration,
    tcp_to_stream: &Counter,
    stream_to_tcp: &Counter,
    stop: impl Future<Output = ()>,
) -> io::Result<RelayEnd>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let activity = Activity::new();
    let (mut stream_read, mut stream_write) = tokio::io::split(stream);
    let both = async {
        let (mut tcp_read, mut tcp_write) = tcp.split();
        tokio::try_join!(
            copy(&mut tcp_read, &mut stream_write, tcp_to_stream, &activity),
            copy(&mut stream_read, &mut tcp_write, stream_to_tcp, &activity),
        )
    };
    let end = tokio::select! {
        result = both => result.map(|_| RelayEnd::Closed),
        () = activity.idle_for(idle_timeout) => Ok(RelayEnd::Idle),
        () = stop => Ok(RelayEnd::Stopped),
    };
    if !matches!(end, Ok(RelayEnd::Closed)) {
        // The stream side closes with the task (its HTTP/2 stream is reset when dropped).
        l4::reset(&tcp);
    }
    end
}

/// Copies until EOF, then passes the EOF on as a half-close.
async fn copy<R, W>(
    from: &mut R,
    to: &mut W,
    bytes: &Counter,
    activity: &Activity,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.capacity() == 0 {
            buf.reserve_exact(BUFFER);
        }
        buf.clear();
        let n = from.read_buf(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        bytes.inc_by(n as u64);
        activity.touch();
    }
}
