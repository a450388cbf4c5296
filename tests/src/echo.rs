//! One long-lived connection the test itself holds, for scenarios that change the agent's
//! config under it: an echo server bound inside one pod's netns and a client socket opened
//! inside another's, both owned by the test process (so neither belongs to a pod cgroup:
//! only netns-wide steering, netfilter rules or `sk_lookup`, sees them).
//!
//! Where the client must be captured leaving its pod in every mode (eBPF captures by cgroup),
//! [`PodEchoClient`] holds the connection in a `sluice-testapp hold` process inside the pod.

use crate::pod::Pod;
use crate::proc::{Proc, lock};
use anyhow::{Context, Result, bail};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Echoes every connection it accepts; stops accepting when dropped.
pub struct EchoServer {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
}

impl EchoServer {
    /// Listens on `addr` inside `pod`'s netns.
    pub fn start(pod: &Pod, addr: SocketAddr) -> Result<EchoServer> {
        let listener = crate::netns::run_in(&pod.netns_path(), || Ok(TcpListener::bind(addr)?))?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let (stopped, seen) = (stop.clone(), peers.clone());
        std::thread::spawn(move || {
            while !stopped.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        lock(&seen).push(peer);
                        std::thread::spawn(move || echo_until_closed(conn));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(EchoServer { stop, peers })
    }

    /// The peer address of every connection accepted so far.
    pub fn peers(&self) -> Vec<SocketAddr> {
        lock(&self.peers).clone()
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo_until_closed(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let mut buf = [0u8; 64];
    while let Ok(n @ 1..) = conn.read(&mut buf) {
        if conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// A client connection to an [`EchoServer`].
pub struct EchoClient {
    conn: TcpStream,
}

impl EchoClient {
    /// Connects to `target` from inside `pod`'s netns.
    pub fn connect(pod: &Pod, target: SocketAddr) -> Result<EchoClient> {
        let conn = crate::netns::run_in(&pod.netns_path(), || {
            Ok(TcpStream::connect_timeout(&target, Duration::from_secs(5))?)
        })?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(EchoClient { conn })
    }

    /// Sends `word` and reads as many bytes back.
    pub fn echo(&mut self, word: &[u8]) -> std::io::Result<Vec<u8>> {
        self.conn.write_all(word)?;
        let mut got = vec![0u8; word.len()];
        self.conn.read_exact(&mut got)?;
        Ok(got)
    }
}

/// A connection to an [`EchoServer`] held by `sluice-testapp hold` inside a pod (its netns
/// and cgroup), so every redirect mode captures it as the pod's own.
pub struct PodEchoClient {
    proc: Proc,
    next: u64,
}

impl PodEchoClient {
    /// Connects from `pod` to `target`; fails if the connect does.
    pub fn connect(pod: &Pod, target: SocketAddr) -> Result<PodEchoClient> {
        let mut cmd = pod.command(&pod.inner.testapp)?;
        cmd.args(["hold", &target.to_string()]);
        let proc = Proc::spawn_with_stdin(&format!("hold {target} from {}", pod.name()), cmd)?;
        let line = proc.wait_line(Duration::from_secs(10), |l| {
            l.starts_with("CONNECTED ") || l.starts_with("CLOSED ")
        })?;
        if line.starts_with("CLOSED ") {
            bail!("hold {target} from {}: {line}", pod.name());
        }
        Ok(PodEchoClient { proc, next: 0 })
    }

    /// Sends a word and waits for it to come back; fails once the connection is closed
    /// ([`PodEchoClient::closed`] then says how).
    pub fn echo(&mut self, word: &str) -> Result<()> {
        if let Some(how) = self.closed() {
            bail!("connection already closed: {how}");
        }
        self.next += 1;
        let line = format!("{}-{word}", self.next);
        self.proc.send_line(&line)?;
        let want = format!("ECHO {line}");
        let got = self
            .proc
            .wait_line(Duration::from_secs(10), |l| {
                l == want || l.starts_with("CLOSED ")
            })
            .context("no echo")?;
        if got != want {
            bail!("connection closed: {got}");
        }
        Ok(())
    }

    /// How the connection ended (`reset`, `eof`, `timeout`, ...), once it has.
    pub fn closed(&self) -> Option<String> {
        self.proc.lines().iter().find_map(|l| {
            let rest = l.strip_prefix("CLOSED ")?;
            Some(
                rest.split_whitespace()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            )
        })
    }
}
