//! Address helpers over the kernel's network-order 32-bit words.
use mesh_common::Cidr;

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
