//! `cgroup/getpeername4` and `6`: a captured app socket is really connected to its pod's
//! listener; show the app the address it dialled instead.
use core::ptr::write_volatile;

use aya_ebpf::{
    helpers::bpf_get_socket_cookie, macros::cgroup_sock_addr, programs::SockAddrContext,
};
use mesh_common::{AF_INET, AF_INET6, Counter};

use crate::{addr::write_words, counters::count, maps::ORIG_BY_COOKIE};

#[cgroup_sock_addr(getpeername4)]
pub fn getpeername4(ctx: SockAddrContext) -> i32 {
    restore(&ctx, AF_INET);
    1
}

#[cgroup_sock_addr(getpeername6)]
pub fn getpeername6(ctx: SockAddrContext) -> i32 {
    restore(&ctx, AF_INET6);
    1
}

/// `family` is a constant per program, so each program only touches the context fields its
/// hook may write (the verifier rejects `user_ip6` in getpeername4).
#[inline(always)]
fn restore(ctx: &SockAddrContext, family: u16) {
    let sa = ctx.sock_addr;
    // SAFETY: valid context pointer.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    // SAFETY: map values stay valid for the program's run.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(&cookie) }) else {
        return;
    };
    if orig.family != family {
        return;
    }
    // SAFETY: user_ip4/user_ip6/user_port are writable in getpeername hooks.
    unsafe {
        if family == AF_INET {
            write_volatile(&mut (*sa).user_ip4, orig.addr[0]);
        } else {
            write_words(&raw mut (*sa).user_ip6, &orig.addr);
        }
        write_volatile(&mut (*sa).user_port, u32::from(orig.port));
    }
    count(Counter::PeerRestored);
}
