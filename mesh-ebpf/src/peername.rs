//! `cgroup/getpeername4` and `6`: a captured app socket is really connected to its pod's
//! listener; show the app the address it dialled instead.
use core::ptr::write_volatile;

use aya_ebpf::{helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext};
use mesh_common::{AF_INET, Counter};

use crate::{counters::count, maps::ORIG_BY_COOKIE};

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    restore(&ctx);
    1
}

#[inline(always)]
fn restore(ctx: &SockAddrContext) {
    let sa = ctx.sock_addr;
    // SAFETY: valid context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // SAFETY: map values stay valid for the program's run.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }) else {
        return;
    };
    // SAFETY: user_ip4/user_ip6/user_port are writable in getpeername hooks.
    unsafe {
        if orig.family == AF_INET {
            write_volatile(&mut (*sa).user_ip4, orig.addr[0]);
        } else {
            write_volatile(&mut (*sa).user_ip6[0], orig.addr[0]);
            write_volatile(&mut (*sa).user_ip6[1], orig.addr[1]);
            write_volatile(&mut (*sa).user_ip6[2], orig.addr[2]);
            write_volatile(&mut (*sa).user_ip6[3], orig.addr[3]);
        }
        write_volatile(&mut (*sa).user_port, u32::from(orig.port));
    }
    count(Counter::PeerRestored);
}
