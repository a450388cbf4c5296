//! Outbound capture: `cgroup/connect4` and `cgroup/connect6`.
//!
//! A connect from a task under an enrolled pod's cgroup is rewritten to that pod's outbound
//! listener (inside the pod's own netns), after recording the dialled address under the
//! socket's cookie. Sockets the agent creates live in the agent's cgroup, so they are never
//! enrolled and never captured: that is what keeps the proxy out of its own loop.
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{BPF_ANY, bpf_sock_addr},
    helpers::{
        bpf_get_current_ancestor_cgroup_id, bpf_get_current_cgroup_id, bpf_get_socket_cookie,
    },
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use mesh_common::{
    AF_INET, AF_INET6, Cidr, Counter, MAX_CGROUP_DEPTH, MAX_EXCLUDED_CIDRS, OUTBOUND_LISTENER_PORT,
    OrigDst, PodCapture,
};

use crate::{
    addr::{cidr_contains, is_loopback_v4, is_loopback_v6, port_listed, read_words, write_words},
    counters::count,
    maps::{ENROLLED, ORIG_BY_COOKIE},
};

/// Allow the syscall to go on (with whatever address we left in the context).
const ALLOW: i32 = 1;
/// Fail the syscall with EPERM.
const REJECT: i32 = 0;

const SOCK_STREAM: u32 = 1;
const IPPROTO_TCP: u32 = 6;

#[cgroup_sock_addr(connect4)]
pub fn connect4(ctx: SockAddrContext) -> i32 {
    capture(&ctx, AF_INET)
}

#[cgroup_sock_addr(connect6)]
pub fn connect6(ctx: SockAddrContext) -> i32 {
    capture(&ctx, AF_INET6)
}

#[inline(always)]
fn capture(ctx: &SockAddrContext, family: u16) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: the kernel hands us a valid bpf_sock_addr; volatile reads keep LLVM from
    // merging context loads into widths the verifier refuses.
    let (sock_type, protocol) =
        unsafe { (read_volatile(&(*sa).type_), read_volatile(&(*sa).protocol)) };
    if sock_type != SOCK_STREAM || (protocol != IPPROTO_TCP && protocol != 0) {
        count(Counter::SkipNotTcp);
        return ALLOW;
    }
    let Some(pod) = enrolled_pod() else {
        count(Counter::SkipNotEnrolled);
        return ALLOW;
    };
    let dst = read_destination(sa, family);
    if (family == AF_INET && is_loopback_v4(dst.addr[0]))
        || (family == AF_INET6 && is_loopback_v6(&dst.addr))
    {
        count(Counter::SkipLoopback);
        return ALLOW;
    }
    if port_listed(
        &pod.excluded_ports,
        pod.n_excluded_ports,
        u16::from_be(dst.port),
    ) {
        count(Counter::SkipExcludedPort);
        return ALLOW;
    }
    let (cidrs, n) = if family == AF_INET {
        (&pod.excluded_v4, pod.n_excluded_v4)
    } else {
        (&pod.excluded_v6, pod.n_excluded_v6)
    };
    if cidr_excluded(cidrs, n, &dst.addr) {
        count(Counter::SkipExcludedCidr);
        return ALLOW;
    }
    if family == AF_INET6 && pod.has_v6 == 0 {
        count(Counter::SkipNoV6Listener);
        return ALLOW;
    }

    // SAFETY: valid context pointer for the program's lifetime.
    let cookie = unsafe { bpf_get_socket_cookie(sa.cast()) };
    if ORIG_BY_COOKIE
        .insert(&cookie, &dst, BPF_ANY as u64)
        .is_err()
    {
        // Letting it through would bypass the mesh without anyone knowing.
        count(Counter::RejectMapFull);
        return REJECT;
    }
    rewrite_destination(sa, family, pod);
    count(Counter::Captured);
    ALLOW
}

/// Finds the enrolled pod the calling task belongs to: its own cgroup or the nearest
/// enrolled ancestor (containers sit in child cgroups of the pod's cgroup).
#[inline(always)]
fn enrolled_pod() -> Option<&'static PodCapture> {
    // SAFETY: helpers without pointer arguments.
    let own = unsafe { bpf_get_current_cgroup_id() };
    // SAFETY: map values stay valid for the program's run; the agent replaces them whole.
    if let Some(pod) = unsafe { ENROLLED.get(&own) } {
        return Some(pod);
    }
    for level in 1..MAX_CGROUP_DEPTH {
        // SAFETY: as above.
        let ancestor = unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) };
        if ancestor == 0 || ancestor == own {
            break;
        }
        // SAFETY: as above.
        if let Some(pod) = unsafe { ENROLLED.get(&ancestor) } {
            return Some(pod);
        }
    }
    None
}

#[inline(always)]
fn read_destination(sa: *mut bpf_sock_addr, family: u16) -> OrigDst {
    // SAFETY: valid context; each field read on its own (see above).
    unsafe {
        let port = read_volatile(&(*sa).user_port) as u16;
        let mut addr = [0u32; 4];
        if family == AF_INET {
            addr[0] = read_volatile(&(*sa).user_ip4);
        } else {
            addr = read_words(&raw const (*sa).user_ip6);
        }
        OrigDst { family, port, addr }
    }
}

#[inline(always)]
fn rewrite_destination(sa: *mut bpf_sock_addr, family: u16, pod: &PodCapture) {
    // SAFETY: valid context; user_ip4/user_ip6/user_port are writable in connect hooks.
    unsafe {
        if family == AF_INET {
            write_volatile(&mut (*sa).user_ip4, pod.listener_v4);
        } else {
            write_words(&raw mut (*sa).user_ip6, &pod.listener_v6);
        }
        write_volatile(
            &mut (*sa).user_port,
            u32::from(OUTBOUND_LISTENER_PORT.to_be()),
        );
    }
}

#[inline(always)]
fn cidr_excluded(cidrs: &[Cidr; MAX_EXCLUDED_CIDRS], n: u8, ip: &[u32; 4]) -> bool {
    for (i, cidr) in cidrs.iter().enumerate() {
        if i >= n as usize {
            break;
        }
        if cidr_contains(cidr, ip) {
            return true;
        }
    }
    false
}
