//! The maps every program shares. Pinned by name, so a restarted agent reuses them and the
//! connections they describe survive the restart.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray},
};
use mesh_common::{ConnTuple, Counter, OrigDst, PodCapture};

/// Enrolled pods by cgroup id. Written only by the agent.
#[map(name = "ENROLLED")]
pub static ENROLLED: HashMap<u64, PodCapture> = HashMap::pinned(4096, 0);

/// Original destination by the app socket's cookie: written at connect, read by
/// getpeername and sock_ops, deleted when the app socket closes.
#[map(name = "ORIG_BY_COOKIE")]
pub static ORIG_BY_COOKIE: HashMap<u64, OrigDst> = HashMap::pinned(65536, 0);

/// Original destination by the connection's 4-tuple, as the app sees it: written when the
/// connection is established, read by getsockopt on the agent's side, deleted when the
/// agent's accepted socket closes (the app may close first, before the agent even accepts).
#[map(name = "ORIG_BY_TUPLE")]
pub static ORIG_BY_TUPLE: HashMap<ConnTuple, OrigDst> = HashMap::pinned(65536, 0);

/// What the programs did, per CPU (the BPF target has no 64-bit atomic add).
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);
