//! Inbound capture: `sk_lookup`, attached to each enrolled pod's network namespace.
//!
//! When a TCP SYN reaches the netns and finds no established socket, the kernel asks this
//! program which socket should take it. For a pod's own address on a port that is not
//! excluded, the answer is the proxy's inbound listener: the connection is accepted there
//! with its original destination as the local address, so nothing is rewritten (no NAT,
//! no conntrack). Everything else takes the kernel's normal lookup.
use core::ptr::read_volatile;

use aya_ebpf::{bindings::bpf_sk_lookup, macros::sk_lookup, programs::SkLookupContext};
use mesh_common::{
    AF_INET, AF_INET6, ConnTuple, Counter, OUTBOUND_LISTENER_PORT, PodIp, TUNNEL_PORT,
};

use crate::{
    addr::{port_listed, read_words},
    counters::count,
    maps::{DELIVERIES, INBOUND_LISTENERS, INBOUND_PODS},
};

/// Go on: with a socket assigned, that socket takes the connection; without, the normal
/// lookup runs.
const SK_PASS: u32 = 1;
/// Fail the lookup: the SYN is dropped.
const SK_DROP: u32 = 0;

const IPPROTO_TCP: u32 = 6;
/// What bpf_sk_assign says when an earlier program of the same lookup assigned a socket.
const EEXIST: i32 = -17;

#[sk_lookup]
pub fn steer_inbound(ctx: SkLookupContext) -> u32 {
    let lookup = ctx.lookup;
    // SAFETY: the kernel hands us a valid bpf_sk_lookup; each field is read on its own.
    let (family, protocol) = unsafe {
        (
            read_volatile(&(*lookup).family),
            read_volatile(&(*lookup).protocol),
        )
    };
    if protocol != IPPROTO_TCP {
        count(Counter::InboundSkipNotTcp);
        return SK_PASS;
    }
    let Some((local, local_port, remote, remote_port)) = read_tuple(lookup, family) else {
        return SK_PASS;
    };
    let pod_ip = PodIp {
        family: family as u16,
        _pad: 0,
        addr: local,
    };
    // SAFETY: map values stay valid for the program's run; the agent replaces them whole.
    let Some(pod) = (unsafe { INBOUND_PODS.get(&pod_ip) }) else {
        count(Counter::InboundSkipOtherAddress);
        return SK_PASS;
    };
    if local_port == TUNNEL_PORT || local_port == OUTBOUND_LISTENER_PORT {
        count(Counter::InboundSkipProxyPort);
        return SK_PASS;
    }
    if port_listed(&pod.excluded_ports, pod.n_excluded_ports, local_port) {
        count(Counter::InboundSkipExcludedPort);
        return SK_PASS;
    }
    let delivery = ConnTuple::new(family as u16, remote, remote_port, local, local_port);
    // SAFETY: as above.
    if unsafe { DELIVERIES.get(&delivery) }.is_some() {
        count(Counter::InboundSkipDelivery);
        return SK_PASS;
    }
    match INBOUND_LISTENERS.redirect_sk_lookup(&ctx, pod_ip, 0) {
        Ok(()) => {
            count(Counter::InboundCaptured);
            SK_PASS
        }
        // Another program already chose a socket: during an agent's takeover the old and
        // new agents' programs both run, on the same maps, and the first one counted it.
        Err(EEXIST) => SK_PASS,
        Err(_) => {
            // Passing would hand the connection to the app past the mesh; a dropped SYN is
            // retried by the client and reaches the proxy once it is back.
            count(Counter::InboundNoListener);
            SK_DROP
        }
    }
}

/// (local address, local port, remote address, remote port), ports in host order.
#[inline(always)]
fn read_tuple(lookup: *mut bpf_sk_lookup, family: u32) -> Option<([u32; 4], u16, [u32; 4], u16)> {
    // SAFETY: valid context; one volatile access per field.
    unsafe {
        let (local, remote) = match family as u16 {
            AF_INET => (
                [read_volatile(&(*lookup).local_ip4), 0, 0, 0],
                [read_volatile(&(*lookup).remote_ip4), 0, 0, 0],
            ),
            AF_INET6 => (
                read_words(&raw const (*lookup).local_ip6),
                read_words(&raw const (*lookup).remote_ip6),
            ),
            _ => return None,
        };
        let local_port = read_volatile(&(*lookup).local_port) as u16;
        // Network order in the low 16 bits. 5.10 declares the field 32 bits wide and newer
        // kernels 16; a 32-bit read is accepted by both.
        let remote_port =
            u16::from_be(read_volatile((&raw const (*lookup).remote_port).cast::<u32>()) as u16);
        Some((local, local_port, remote, remote_port))
    }
}
