//! Sluice's eBPF programs.
//!
//! All programs attach once, to the configured cgroup root, and decide per socket:
//! - [`connect`]: `cgroup/connect4`, `connect6` capture an enrolled pod's TCP connects and
//!   point them at the pod's outbound listener, remembering where the app meant to go.
//! - [`sockops`]: once the captured connection is established, index that original
//!   destination by 4-tuple so the agent can find it from its accepted socket; drop entries
//!   when the sockets they serve close.
//! - [`sockopt`]: `cgroup/getsockopt` answers `SO_ORIGINAL_DST` on the agent's accepted socket.
//! - [`peername`]: `cgroup/getpeername4`, `6` show the app the address it dialled.
//! - [`inbound`]: `sk_lookup`, attached to each enrolled pod's netns, hands new inbound
//!   connections to the pod's inbound listener without NAT.
#![no_std]
#![no_main]

mod addr;
mod connect;
mod counters;
mod inbound;
mod maps;
mod peername;
mod sockops;
mod sockopt;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this; it only satisfies no_std.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
