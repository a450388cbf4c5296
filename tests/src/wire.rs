//! What `sluice-testapp` speaks and prints, shared by the app and the harness.
//!
//! Protocol, client first: `REQ <n> <m>\n`, then `n` bytes of [`pattern`]. The server reads
//! them, then answers `RESP id=<id> peer=<client addr it saw> sum=<fnv of the n bytes> n=<m>\n`
//! and `m` bytes of [`pattern`], and closes. Both directions are thus verifiable, and the
//! reply carries the server's identity and its view of the client's address.

use serde::{Deserialize, Serialize};

/// Byte `i` of every payload: cheap, and a shifted or truncated stream never matches.
pub fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ (i >> 8) as u8
}

/// Bytes `start..start + len` of the pattern: a needle to look for on the wire (every
/// payload, both ways, is the pattern from byte 0 on).
pub fn pattern_bytes(start: u64, len: usize) -> Vec<u8> {
    (start..start + len as u64).map(pattern).collect()
}

/// FNV-1a, 64 bit.
#[derive(Clone, Copy)]
pub struct Fnv(pub u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn update(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x100_0000_01b3);
        }
    }
}

/// The outcome of one connection, as `dial` prints it.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct ConnResult {
    /// The address dialled.
    pub target: String,
    /// `ok`, `reset`, `refused`, `timeout`, `eof` (peer closed early), `broken_pipe`, `error`.
    pub result: String,
    pub error: Option<String>,
    pub sent: u64,
    pub received: u64,
    /// The server's checksum of what it received equals ours of what we sent.
    pub sent_ok: bool,
    /// We received exactly the requested bytes, in pattern.
    pub recv_ok: bool,
    /// `getpeername()` right after connect.
    pub peer: Option<String>,
    /// `getsockname()` right after connect.
    pub local: Option<String>,
    /// The `id` the server replied with.
    pub server_id: Option<String>,
    /// The client address the server saw.
    pub server_saw: Option<String>,
    pub elapsed_ms: u64,
}

impl ConnResult {
    pub fn is_ok(&self) -> bool {
        self.result == "ok" && self.sent_ok && self.recv_ok
    }
}

/// One `dial` run: one JSON line on stdout.
#[derive(Serialize, Deserialize, Debug, Clone, Default)]
pub struct DialReport {
    pub results: Vec<ConnResult>,
}
