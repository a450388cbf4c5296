//! Connection bookkeeping with `sock_ops` (attached once at the cgroup root, so it sees both
//! the app's socket in the pod cgroup and the agent's accepted socket).
//!
//! - Active connect of a captured socket: ask for state callbacks, so its cookie entry is
//!   deleted when it closes even if the connect is refused.
//! - Active side established: copy the original destination from the cookie entry to a
//!   4-tuple entry, the only key the agent's accepted socket can compute too. Per-pod
//!   listener addresses make the tuple unique on the node even though every pod dials from
//!   its own `127.0.0.1`.
//! - Passive side established on a tuple we know: ask for state callbacks on the agent's
//!   socket, so the tuple entry dies with the connection it serves.
use core::ptr::read_volatile;

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB,
        BPF_SOCK_OPS_STATE_CB, BPF_SOCK_OPS_STATE_CB_FLAG, BPF_SOCK_OPS_TCP_CONNECT_CB,
        bpf_sock_ops,
    },
    helpers::{bpf_get_socket_cookie, bpf_sock_ops_cb_flags_set},
    macros::sock_ops,
    programs::SockOpsContext,
};
use mesh_common::{ConnTuple, Counter};

use crate::{
    addr::read_addr,
    counters::count,
    maps::{ORIG_BY_COOKIE, ORIG_BY_TUPLE},
};

const TCP_CLOSE: u32 = 7;

#[sock_ops]
pub fn track_connections(ctx: SockOpsContext) -> u32 {
    let ops = ctx.ops;
    // SAFETY: valid context; volatile so LLVM does not merge adjacent context reads.
    let op = unsafe { read_volatile(&(*ops).op) };
    match op {
        BPF_SOCK_OPS_TCP_CONNECT_CB => {
            if ORIG_BY_COOKIE.get_ptr(cookie(ops)).is_some() {
                enable_state_callbacks(ops);
            }
        }
        BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB => record_tuple(ops),
        BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB => {
            if let Some(tuple) = tuple(ops, true)
                && ORIG_BY_TUPLE.get_ptr(tuple).is_some()
            {
                enable_state_callbacks(ops);
            }
        }
        BPF_SOCK_OPS_STATE_CB => {
            // SAFETY: args[1] is the new state for STATE_CB.
            let new_state = unsafe { read_volatile(&(*ops).__bindgen_anon_1.args[1]) };
            if new_state == TCP_CLOSE {
                forget(ops);
            }
        }
        _ => {}
    }
    1
}

fn record_tuple(ops: *mut bpf_sock_ops) {
    // SAFETY: map values stay valid for the program's run.
    let Some(orig) = (unsafe { ORIG_BY_COOKIE.get(cookie(ops)) }) else {
        return;
    };
    let orig = *orig;
    match tuple(ops, false) {
        Some(tuple) if ORIG_BY_TUPLE.insert(&tuple, &orig, BPF_ANY as u64).is_ok() => {
            count(Counter::TupleRecorded)
        }
        _ => count(Counter::TupleMissingCookie),
    }
}

/// A socket we asked callbacks for is closing: it is either a captured app socket (cookie
/// entry) or the agent's side of a captured connection (tuple entry).
fn forget(ops: *mut bpf_sock_ops) {
    if ORIG_BY_COOKIE.remove(cookie(ops)).is_ok() {
        count(Counter::EntryDeleted);
    } else if let Some(tuple) = tuple(ops, true)
        && ORIG_BY_TUPLE.remove(tuple).is_ok()
    {
        count(Counter::EntryDeleted);
    }
}

#[inline(always)]
fn cookie(ops: *mut bpf_sock_ops) -> u64 {
    // SAFETY: valid context pointer.
    unsafe { bpf_get_socket_cookie(ops.cast()) }
}

#[inline(always)]
fn enable_state_callbacks(ops: *mut bpf_sock_ops) {
    // SAFETY: valid context pointer; keep whatever flags are already set.
    unsafe {
        let flags = read_volatile(&(*ops).bpf_sock_ops_cb_flags);
        bpf_sock_ops_cb_flags_set(ops, (flags | BPF_SOCK_OPS_STATE_CB_FLAG) as i32);
    }
}

/// The connection's 4-tuple in the app's orientation. `from_listener` is true when `ops` is
/// the agent's (passive) socket, whose local end is the app's destination.
#[inline(always)]
fn tuple(ops: *mut bpf_sock_ops, from_listener: bool) -> Option<ConnTuple> {
    // SAFETY: valid context; every field read separately (see module docs of connect).
    unsafe {
        let family = read_volatile(&(*ops).family) as u16;
        // remote_port: network order, shifted into the upper 16 bits; local_port: host order.
        let remote_port = u16::from_be((read_volatile(&(*ops).remote_port) >> 16) as u16);
        let local_port = read_volatile(&(*ops).local_port) as u16;
        let local = read_addr(
            family,
            &raw const (*ops).local_ip4,
            &raw const (*ops).local_ip6,
        )?;
        let remote = read_addr(
            family,
            &raw const (*ops).remote_ip4,
            &raw const (*ops).remote_ip6,
        )?;
        Some(if from_listener {
            ConnTuple::new(family, remote, remote_port, local, local_port)
        } else {
            ConnTuple::new(family, local, local_port, remote, remote_port)
        })
    }
}
