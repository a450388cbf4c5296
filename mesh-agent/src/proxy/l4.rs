//! Byte relay between the app's connection and the upstream one.
//!
//! Each direction holds a buffer only while bytes are flowing and frees it as soon as its
//! source has nothing to read: an idle connection costs no buffer memory, and memory comes
//! back after a burst. The buffer starts small (cheap for request/response traffic) and grows
//! while reads keep filling it (bulk transfers), up to a bound. EOF is passed on as a
//! half-close; an error on either side resets the other, so the app sees a reset where the
//! upstream failed, not a clean end of stream.
use std::{
    io,
    net::Shutdown,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use socket2::SockRef;
use tokio::net::TcpStream;

const MIN_BUFFER: usize = 4 * 1024;
const MAX_BUFFER: usize = 256 * 1024;

/// How a relay ended.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed cleanly.
    Closed,
    /// No bytes either way for the idle timeout.
    Idle,
    /// Ended from outside (a policy no longer allows it).
    Stopped,
}

/// Relays until both directions are done, the connection idles out, a side fails, or
/// `stop` completes (a policy revoked the connection: both sides are reset).
/// `client` opened the connection, `server` accepted it: `request` counts the bytes from
/// client to server, `response` those back.
pub async fn relay(
    client: TcpStream,
    server: TcpStream,
    idle_timeout: Duration,
    request: &Counter,
    response: &Counter,
    stop: impl Future<Output = ()>,
) -> io::Result<RelayEnd> {
    let activity = Activity::new();
    let both = async {
        tokio::try_join!(
            pump(&client, &server, request, &activity),
            pump(&server, &client, response, &activity)
        )
    };
    let end = tokio::select! {
        result = both => result.map(|_| RelayEnd::Closed),
        () = activity.idle_for(idle_timeout) => Ok(RelayEnd::Idle),
        () = stop => Ok(RelayEnd::Stopped),
    };
    if !matches!(end, Ok(RelayEnd::Closed)) {
        reset(&client);
        reset(&server);
    }
    end
}

/// Closes with RST instead of FIN once dropped.
pub fn reset(stream: &TcpStream) {
    // Failing to set linger only means a FIN instead of a RST; nothing else to do.
    let _ = SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

async fn pump(
    from: &TcpStream,
    to: &TcpStream,
    bytes: &Counter,
    activity: &Activity,
) -> io::Result<()> {
    let mut size = MIN_BUFFER;
    let mut buf: Vec<u8> = Vec::new();
    loop {
        if buf.capacity() == 0 {
            buf.reserve_exact(size);
        }
        buf.clear();
        match from.try_read_buf(&mut buf) {
            Ok(0) => {
                SockRef::from(to).shutdown(Shutdown::Write)?;
                return Ok(());
            }
            Ok(n) => {
                write_all(to, &buf[..n]).await?;
                bytes.inc_by(n as u64);
                activity.touch();
                if n == buf.capacity() && size < MAX_BUFFER {
                    size = (size * 4).min(MAX_BUFFER);
                    buf = Vec::new();
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                buf = Vec::new();
                from.readable().await?;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn write_all(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Last time bytes moved, shared by both directions.
pub(super) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    pub(super) fn touch(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_ms.store(now, Ordering::Relaxed);
    }

    pub(super) async fn idle_for(&self, timeout: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let deadline = self.start + last + timeout;
            if Instant::now() >= deadline {
                return;
            }
            tokio::time::sleep_until(deadline.into()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    async fn pair(listener: &TcpListener) -> (TcpStream, TcpStream) {
        let addr = listener.local_addr().unwrap();
        let (a, b) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (a.unwrap(), b.unwrap().0)
    }

    /// app_client -> [app_side | relay | upstream_side] -> server
    async fn setup(
        idle: Duration,
    ) -> (
        TcpStream,
        TcpStream,
        tokio::task::JoinHandle<io::Result<RelayEnd>>,
        Counter,
        Counter,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (client, app_side) = pair(&listener).await;
        let (upstream_side, server) = pair(&listener).await;
        let (request, response) = (Counter::default(), Counter::default());
        let (q, r) = (request.clone(), response.clone());
        let task = tokio::spawn(async move {
            relay(
                app_side,
                upstream_side,
                idle,
                &q,
                &r,
                std::future::pending(),
            )
            .await
        });
        (client, server, task, request, response)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let (mut client, mut server, task, request, response) =
            setup(Duration::from_secs(30)).await;
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        client.write_all(&data).await.unwrap();
        client.shutdown().await.unwrap();
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, data, "client->server bytes intact, EOF passed on");
        server.write_all(b"reply after half-close").await.unwrap();
        server.shutdown().await.unwrap();
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.unwrap();
        assert_eq!(reply, b"reply after half-close");
        assert_eq!(task.await.unwrap().unwrap(), RelayEnd::Closed);
        assert_eq!(request.get(), 1_000_000);
        assert_eq!(response.get(), 22);
    }

    #[tokio::test]
    async fn upstream_reset_reaches_the_app_as_reset() {
        let (mut client, server, task, _, _) = setup(Duration::from_secs(30)).await;
        reset(&server);
        drop(server);
        let mut buf = [0u8; 16];
        let err = loop {
            match client.read(&mut buf).await {
                Ok(0) => panic!("app saw a clean EOF instead of a reset"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::ConnectionReset);
        assert!(task.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn idle_connection_is_closed() {
        let (_client, _server, task, _, _) = setup(Duration::from_millis(200)).await;
        assert_eq!(task.await.unwrap().unwrap(), RelayEnd::Idle);
    }
}
