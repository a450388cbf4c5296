//! Address helpers over the kernel's network-order 32-bit words.
use core::ptr::{read_volatile, write_volatile};

use mesh_common::{AF_INET, AF_INET6, Cidr, MAX_EXCLUDED_PORTS};

/// Reads a 4-word IPv6 address field of a program context, one volatile 32-bit access per
/// word: LLVM would otherwise merge the loads into wider ones the verifier refuses.
///
/// # Safety
/// `field` must point into the program's context.
#[inline(always)]
pub unsafe fn read_words(field: *const [u32; 4]) -> [u32; 4] {
    let p = field.cast::<u32>();
    // SAFETY: the caller guarantees four readable words.
    unsafe {
        [
            read_volatile(p),
            read_volatile(p.add(1)),
            read_volatile(p.add(2)),
            read_volatile(p.add(3)),
        ]
    }
}

/// Writes a 4-word IPv6 address field of a program context, one 32-bit store per word.
///
/// # Safety
/// `field` must point at a writable field of the program's context.
#[inline(always)]
pub unsafe fn write_words(field: *mut [u32; 4], value: &[u32; 4]) {
    let p = field.cast::<u32>();
    // SAFETY: the caller guarantees four writable words.
    unsafe {
        write_volatile(p, value[0]);
        write_volatile(p.add(1), value[1]);
        write_volatile(p.add(2), value[2]);
        write_volatile(p.add(3), value[3]);
    }
}

/// Is this IPv4 address (network order) in 127.0.0.0/8?
#[inline(always)]
pub fn is_loopback_v4(ip: u32) -> bool {
    u32::from_be(ip) >> 24 == 127
}

/// Is this IPv6 address `::1` or an IPv4-mapped loopback (`::ffff:127.0.0.0/104`)?
#[inline(always)]
pub fn is_loopback_v6(ip: &[u32; 4]) -> bool {
    if ip[0] != 0 || ip[1] != 0 {
        return false;
    }
    let w2 = u32::from_be(ip[2]);
    let w3 = u32::from_be(ip[3]);
    (w2 == 0 && w3 == 1) || (w2 == 0xffff && w3 >> 24 == 127)
}

#[inline(always)]
pub fn cidr_contains(cidr: &Cidr, ip: &[u32; 4]) -> bool {
    (ip[0] & cidr.mask[0]) == cidr.addr[0]
        && (ip[1] & cidr.mask[1]) == cidr.addr[1]
        && (ip[2] & cidr.mask[2]) == cidr.addr[2]
        && (ip[3] & cidr.mask[3]) == cidr.addr[3]
}

/// Reads a socket address field pair of a program context (`v4` for IPv4 sockets, `v6` for
/// IPv6 ones) into the map's 4-word form; `None` for other families.
///
/// # Safety
/// Both pointers must point into the program's context.
#[inline(always)]
pub unsafe fn read_addr(family: u16, v4: *const u32, v6: *const [u32; 4]) -> Option<[u32; 4]> {
    // SAFETY: the caller guarantees both fields are readable context fields.
    unsafe {
        match family {
            AF_INET => Some([read_volatile(v4), 0, 0, 0]),
            AF_INET6 => Some(read_words(v6)),
            _ => None,
        }
    }
}

/// Is `port` among the first `n` of `ports`? (The verifier needs the fixed bound.)
#[inline(always)]
pub fn port_listed(ports: &[u16; MAX_EXCLUDED_PORTS], n: u8, port: u16) -> bool {
    for (i, listed) in ports.iter().enumerate() {
        if i >= n as usize {
            break;
        }
        if *listed == port {
            return true;
        }
    }
    false
}
