//! `cgroup/getsockopt`: answers `SO_ORIGINAL_DST` (IPv4) and `IP6T_SO_ORIGINAL_DST` (IPv6)
//! on the agent's accepted socket from the 4-tuple map, so the proxy reads the original
//! destination with the same call in eBPF mode as in netfilter mode.
use core::ptr::{read_volatile, write_volatile};

use aya_ebpf::{macros::cgroup_sockopt, programs::SockoptContext};
use mesh_common::{AF_INET, AF_INET6, ConnTuple, Counter};

use crate::{addr::read_addr, counters::count, maps::ORIG_BY_TUPLE};

const SOL_IP: i32 = 0;
const SOL_IPV6: i32 = 41;
/// `SO_ORIGINAL_DST` and `IP6T_SO_ORIGINAL_DST` share the number.
const SO_ORIGINAL_DST: i32 = 80;
const SOCKADDR_IN_LEN: usize = 16;
const SOCKADDR_IN6_LEN: usize = 28;

/// Continue (return the kernel's or our answer to user space).
const PASS: i32 = 1;

#[cgroup_sockopt(getsockopt)]
pub fn getsockopt(ctx: SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: valid context; separate volatile accesses (LLVM once merged the optlen and
    // retval stores into one 64-bit store, which the verifier rejects).
    unsafe {
        let level = read_volatile(&(*so).level);
        let optname = read_volatile(&(*so).optname);
        if optname != SO_ORIGINAL_DST || (level != SOL_IP && level != SOL_IPV6) {
            return PASS;
        }
        let sk = read_volatile(&(*so).__bindgen_anon_1.sk);
        if sk.is_null() {
            return PASS;
        }
        let family = read_volatile(&(*sk).family) as u16;
        // The accepted socket's local end is the pod listener (the app's destination).
        let local_port = read_volatile(&(*sk).src_port) as u16;
        // dst_port is network order in the low 16 bits; read all 32 so 5.10 accepts it.
        let remote_port =
            u16::from_be(read_volatile((&raw const (*sk).dst_port).cast::<u32>()) as u16);
        let (Some(local), Some(remote)) = (
            read_addr(family, &raw const (*sk).src_ip4, &raw const (*sk).src_ip6),
            read_addr(family, &raw const (*sk).dst_ip4, &raw const (*sk).dst_ip6),
        ) else {
            return PASS;
        };
        let key = ConnTuple::new(family, remote, remote_port, local, local_port);
        let Some(orig) = ORIG_BY_TUPLE.get(&key) else {
            count(Counter::OrigDstMissed);
            return PASS;
        };

        let optval = read_volatile(&(*so).__bindgen_anon_2.optval) as *mut u8;
        let optval_end = read_volatile(&(*so).__bindgen_anon_3.optval_end) as *mut u8;
        let len = if orig.family == AF_INET {
            SOCKADDR_IN_LEN
        } else {
            SOCKADDR_IN6_LEN
        };
        if optval.add(len) > optval_end {
            // The caller's buffer is too small: leave the kernel's answer.
            count(Counter::OrigDstMissed);
            return PASS;
        }
        if orig.family == AF_INET {
            // struct sockaddr_in { sa_family_t; in_port_t; in_addr; zero[8] }
            write_volatile(optval.cast::<u16>(), AF_INET);
            write_volatile(optval.add(2).cast::<u16>(), orig.port);
            write_volatile(optval.add(4).cast::<u32>(), orig.addr[0]);
            write_volatile(optval.add(8).cast::<u32>(), 0);
            write_volatile(optval.add(12).cast::<u32>(), 0);
        } else {
            // struct sockaddr_in6 { family; port; flowinfo; addr[16]; scope_id }
            write_volatile(optval.cast::<u16>(), AF_INET6);
            write_volatile(optval.add(2).cast::<u16>(), orig.port);
            write_volatile(optval.add(4).cast::<u32>(), 0);
            write_volatile(optval.add(8).cast::<u32>(), orig.addr[0]);
            write_volatile(optval.add(12).cast::<u32>(), orig.addr[1]);
            write_volatile(optval.add(16).cast::<u32>(), orig.addr[2]);
            write_volatile(optval.add(20).cast::<u32>(), orig.addr[3]);
            write_volatile(optval.add(24).cast::<u32>(), 0);
        }
        write_volatile(&mut (*so).optlen, len as i32);
        write_volatile(&mut (*so).retval, 0);
        count(Counter::OrigDstAnswered);
    }
    PASS
}
