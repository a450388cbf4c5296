//! What crossed a link between nodes, TCP flow by flow, read by the test itself (no tcpdump).
//!
//! A [`LinkCapture`] is an `AF_PACKET` socket bound to one interface in a node netns (both
//! directions), read by a background thread until it is dropped; every frame goes to a
//! [`Seen`] (`crate::tcp_flows`), which keeps each TCP flow's payload (one direction of one
//! connection) placed by sequence number.
//!
//! Its job is mostly to judge negatives ("the payload never crossed in the clear"), which a
//! capture can only vouch for when it missed nothing, so every query first waits until the
//! reader has caught up (a marker frame sent out on the interface lands behind everything
//! that crossed before it: the socket's queue is FIFO), and refuses to answer when the
//! kernel dropped or truncated frames. Queries: [`Seen::contains`] (a byte string in any
//! flow), [`Seen::tls_records`] (TLS records of one content type, walked from each stream's
//! first byte), [`Seen::flows_to_port`] (connections opened to a port across the link).

use crate::proc::lock;
use crate::tcp_flows::be16;
use anyhow::{Context, Result, bail, ensure};
use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub use crate::tcp_flows::{Flow, Seen, TLS_APPLICATION_DATA, TLS_HANDSHAKE};

/// The marker frames' ethertype: IEEE 802 "local experimental", which no stack answers.
const MARKER_ETHERTYPE: u16 = 0x88b5;
const MARKER_TAG: &[u8] = b"sluice-link-capture-sync";
/// Large enough for a GSO frame of 64 KiB and its headers.
const FRAME_BUF: usize = 256 * 1024;
const SOL_PACKET: libc::c_int = 263;
const PACKET_STATISTICS: libc::c_int = 6;

/// Records what crosses one interface until dropped; see the module doc.
pub struct LinkCapture {
    label: String,
    reader: Arc<OwnedFd>,
    sender: OwnedFd,
    ifindex: i32,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    next_marker: AtomicU64,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    seen: Seen,
    /// The last marker the reader saw.
    marker: u64,
    /// Why the reader stopped, if it did.
    error: Option<String>,
}

impl LinkCapture {
    /// Starts capturing on `ifname` in the netns at `netns`.
    pub fn start(netns: &Path, ifname: &str) -> Result<LinkCapture> {
        let name = CString::new(ifname)?;
        let (reader, sender, ifindex) = crate::netns::run_in(netns, || {
            // SAFETY: plain libc calls on a C string we own.
            let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
            ensure!(ifindex != 0, "no interface {ifname}: {}", errno());
            let ifindex = ifindex as i32;
            // Protocol 0 until bound: the socket sees nothing of other interfaces meanwhile.
            let reader = packet_socket()?;
            tune(&reader)?;
            bind(&reader, ifindex)?;
            Ok((reader, packet_socket()?, ifindex))
        })
        .with_context(|| format!("capturing on {ifname} in {}", netns.display()))?;
        let reader = Arc::new(reader);
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (fd, shared, stop) = (reader.clone(), shared.clone(), stop.clone());
            std::thread::spawn(move || read_frames(&fd, &shared, &stop))
        };
        Ok(LinkCapture {
            label: format!("{ifname} in {}", netns.display()),
            reader,
            sender,
            ifindex,
            shared,
            stop,
            thread: Some(thread),
            next_marker: AtomicU64::new(0),
        })
    }

    /// Everything that crossed the interface up to this call. Fails if the reader cannot
    /// catch up within 5 s, stopped, or if any frame was dropped or truncated.
    pub fn seen(&self) -> Result<Seen> {
        let token = self.next_marker.fetch_add(1, Ordering::Relaxed) + 1;
        self.send_marker(token)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut state = lock(&self.shared.state);
        while state.marker < token {
            if let Some(e) = &state.error {
                bail!("capture on {} stopped: {e}", self.label);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            ensure!(
                !left.is_zero(),
                "capture on {}: the reader did not see marker {token} within 5 s",
                self.label
            );
            state = self
                .shared
                .changed
                .wait_timeout(state, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        state.seen.drops += drops(&self.reader)?;
        let seen = state.seen.clone();
        ensure!(
            seen.drops == 0 && seen.truncated == 0,
            "capture on {} has holes: {} frames dropped, {} truncated",
            self.label,
            seen.drops,
            seen.truncated
        );
        Ok(seen)
    }

    /// Whether `needle` crossed the link in any TCP flow. Panics if the capture cannot
    /// vouch for what crossed (see [`LinkCapture::seen`]).
    pub fn contains(&self, needle: &[u8]) -> bool {
        self.seen_or_panic().contains(needle)
    }

    /// TLS records of `content_type` that crossed; see [`Seen::tls_records`].
    pub fn tls_records(&self, content_type: u8) -> usize {
        self.seen_or_panic().tls_records(content_type)
    }

    /// Connections opened across the link to `port`; see [`Seen::flows_to_port`].
    pub fn flows_to_port(&self, port: u16) -> usize {
        self.seen_or_panic().flows_to_port(port)
    }

    fn seen_or_panic(&self) -> Seen {
        self.seen().unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// Sends a marker frame out of the interface: broadcast, an ethertype nobody takes.
    fn send_marker(&self, token: u64) -> Result<()> {
        let mut frame = vec![0xff; 6];
        frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        frame.extend_from_slice(&MARKER_ETHERTYPE.to_be_bytes());
        frame.extend_from_slice(MARKER_TAG);
        frame.extend_from_slice(&token.to_be_bytes());
        frame.resize(frame.len().max(60), 0);
        let mut to = sockaddr_ll(self.ifindex, MARKER_ETHERTYPE);
        to.sll_halen = 6;
        to.sll_addr[..6].fill(0xff);
        // SAFETY: a valid fd, buffer and sockaddr_ll of the size given.
        let sent = unsafe {
            libc::sendto(
                self.sender.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        ensure!(
            sent == frame.len() as isize,
            "sending a marker on {}: {}",
            self.label,
            errno()
        );
        Ok(())
    }
}

impl Drop for LinkCapture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The reader thread: records every frame until `stop` (checked at least every 100 ms).
fn read_frames(fd: &OwnedFd, shared: &Shared, stop: &AtomicBool) {
    let mut buf = vec![0u8; FRAME_BUF];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: a valid fd and buffer; MSG_TRUNC makes it return the frame's full length.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ) {
                continue;
            }
            lock(&shared.state).error = Some(e.to_string());
            shared.changed.notify_all();
            return;
        }
        let n = n as usize;
        let mut state = lock(&shared.state);
        if n > buf.len() {
            state.seen.truncated += 1;
        }
        let frame = &buf[..n.min(buf.len())];
        match marker(frame) {
            Some(token) => {
                state.marker = state.marker.max(token);
                drop(state);
                shared.changed.notify_all();
            }
            None => state.seen.record(frame),
        }
    }
}

/// The token of a marker frame.
fn marker(frame: &[u8]) -> Option<u64> {
    if be16(frame, 12)? != MARKER_ETHERTYPE {
        return None;
    }
    let rest = frame.get(14..)?.strip_prefix(MARKER_TAG)?;
    Some(u64::from_be_bytes(rest.get(..8)?.try_into().ok()?))
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

fn packet_socket() -> Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
    ensure!(fd >= 0, "socket(AF_PACKET): {}", errno());
    // SAFETY: a fresh fd nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn sockaddr_ll(ifindex: i32, protocol: u16) -> libc::sockaddr_ll {
    // SAFETY: an all-zero sockaddr_ll is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = protocol.to_be();
    sll.sll_ifindex = ifindex;
    sll
}

fn bind(fd: &OwnedFd, ifindex: i32) -> Result<()> {
    let sll = sockaddr_ll(ifindex, libc::ETH_P_ALL as u16);
    // SAFETY: a valid fd and sockaddr_ll of the size given.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&raw const sll).cast(),
            size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    ensure!(rc == 0, "bind(AF_PACKET, ifindex {ifindex}): {}", errno());
    Ok(())
}

/// A 32 MiB receive buffer (so bursts are not dropped) and a 100 ms receive timeout (so
/// the reader notices when to stop).
fn tune(fd: &OwnedFd) -> Result<()> {
    let size: libc::c_int = 32 << 20;
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: 100_000,
    };
    for (name, ptr, len) in [
        (
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast::<libc::c_void>(),
            size_of::<libc::c_int>(),
        ),
        (
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>(),
        ),
    ] {
        // SAFETY: a valid fd and option value of the size given.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                name,
                ptr,
                len as libc::socklen_t,
            )
        };
        ensure!(rc == 0, "setsockopt({name}): {}", errno());
    }
    Ok(())
}

/// Frames the kernel dropped for want of buffer since the last call (the counter resets).
fn drops(fd: &OwnedFd) -> Result<u64> {
    #[repr(C)]
    #[derive(Default)]
    struct TpacketStats {
        packets: u32,
        drops: u32,
    }
    let mut stats = TpacketStats::default();
    let mut len = size_of::<TpacketStats>() as libc::socklen_t;
    // SAFETY: a valid fd and a buffer of the length given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            PACKET_STATISTICS,
            (&raw mut stats).cast(),
            &mut len,
        )
    };
    ensure!(rc == 0, "getsockopt(PACKET_STATISTICS): {}", errno());
    Ok(u64::from(stats.drops))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_marker_frames_only() {
        let mut frame = vec![0xff; 12];
        frame.extend_from_slice(&MARKER_ETHERTYPE.to_be_bytes());
        frame.extend_from_slice(MARKER_TAG);
        frame.extend_from_slice(&42u64.to_be_bytes());
        assert_eq!(marker(&frame), Some(42));
        let mut other = frame.clone();
        other[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        assert_eq!(marker(&other), None);
        let mut s = Seen::default();
        s.record(&frame);
        assert_eq!((s.frames, s.flows().len()), (1, 0), "a marker is no TCP");
    }
}
