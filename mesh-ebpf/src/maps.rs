//! The maps every program shares. Pinned by name, so a restarted agent reuses them and the
//! connections they describe survive the restart.
use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, SockHash},
};
use mesh_common::{ConnTuple, Counter, InboundPod, OrigDst, PodCapture, PodIp};

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

/// Enrolled pods' addresses and their inbound exclusions. Written only by the agent.
#[map(name = "INBOUND_PODS")]
pub static INBOUND_PODS: HashMap<PodIp, InboundPod> = HashMap::pinned(8192, 0);

/// The proxy's inbound listener for each enrolled pod address (in that pod's netns). An
/// entry disappears by itself when its socket closes.
#[map(name = "INBOUND_LISTENERS")]
pub static INBOUND_LISTENERS: SockHash<PodIp> = SockHash::pinned(8192, 0);

/// The proxy's deliveries to apps, present while they live: sk_lookup sees their packets
/// like any inbound connection's (the SYN, and later ones while the app's side has no full
/// socket) and must not steer them back to the proxy. They carry no mark or interface sign
/// the program could read on 5.10, hence the explicit list. Sized like ORIG_BY_TUPLE: one
/// entry per delivered connection on the node.
#[map(name = "DELIVERIES")]
pub static DELIVERIES: HashMap<ConnTuple, u8> = HashMap::pinned(65536, 0);

/// What the programs did, per CPU (the BPF target has no 64-bit atomic add).
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(Counter::COUNT, 0);
