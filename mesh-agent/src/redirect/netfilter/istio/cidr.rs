//! CIDR lists, parsed and printed the way upstream's Go `net/netip` does.
//!
//! Upstream prints a prefix re-formatted (`netip.Prefix.String()`: canonical address
//! text, host bits kept), so "2001:0db8::1/64" comes out as "2001:db8::1/64".

use std::net::IpAddr;

use super::error::IstioRenderError as E;
use super::settings::split_list;

/// One family's share of a CIDR list.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Ranges {
    pub wildcard: bool,
    /// Formatted like Go's `netip.Prefix.String()`: address as written, canonical text.
    pub cidrs: Vec<String>,
    pub has_loopback: bool,
}

/// Parse a prefix as strictly as Go's `netip.ParsePrefix` (no zones, no leading zeros or
/// sign in the length, length within the family's width).
fn parse_prefix(s: &str) -> Result<(IpAddr, u8), &'static str> {
    let (addr, bits) = s.rsplit_once('/').ok_or("missing \"/<prefix length>\"")?;
    let addr: IpAddr = addr.parse().map_err(|_| "not an IP address")?;
    let canonical = bits == "0" || (!bits.starts_with('0') && !bits.is_empty());
    let bits: u8 = match bits.parse() {
        Ok(b) if canonical && bits.bytes().all(|c| c.is_ascii_digit()) => b,
        _ => return Err("bad prefix length"),
    };
    let width = if addr.is_ipv4() { 32 } else { 128 };
    if bits > width {
        return Err("prefix length too long for the address family");
    }
    Ok((addr, bits))
}

fn is_loopback(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => a.is_loopback(),
        IpAddr::V6(a) => a.is_loopback() || a.to_ipv4_mapped().is_some_and(|m| m.is_loopback()),
    }
}

/// Split a CIDR list into its IPv4 and IPv6 parts; "*" is a wildcard for both.
pub(super) fn split_families(list: &str, flag: &'static str) -> Result<(Ranges, Ranges), E> {
    if list == "*" {
        let all = || Ranges {
            wildcard: true,
            ..Ranges::default()
        };
        return Ok((all(), all()));
    }
    let (mut v4, mut v6) = (Ranges::default(), Ranges::default());
    for item in split_list(list) {
        let (addr, bits) = parse_prefix(item).map_err(|reason| E::InvalidCidr {
            flag,
            value: item.to_owned(),
            reason,
        })?;
        let family = if addr.is_ipv4() { &mut v4 } else { &mut v6 };
        family.cidrs.push(format!("{addr}/{bits}"));
        family.has_loopback |= is_loopback(addr);
    }
    Ok((v4, v6))
}

/// Upstream requires an IPv4 loopback CIDR with a prefix of 8 to 32 bits.
pub(super) fn host_loopback(s: &str) -> Result<&str, E> {
    let invalid = |reason| E::InvalidCidr {
        flag: "--host-ipv4-loopback-cidr",
        value: s.to_owned(),
        reason,
    };
    let (addr, bits) = parse_prefix(s).map_err(invalid)?;
    if !addr.is_ipv4() || !addr.is_loopback() {
        return Err(invalid("expected an IPv4 loopback address (127.0.0.0/8)"));
    }
    if !(8..=32).contains(&bits) {
        return Err(invalid("expected a prefix length from 8 to 32"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_lists_split_by_family_and_drop_empty_items() {
        let (v4, v6) = split_families("10.0.0.0/8,,2001:db8::/32,127.0.0.1/32,", "-i").unwrap();
        assert_eq!(v4.cidrs, ["10.0.0.0/8", "127.0.0.1/32"]);
        assert!(v4.has_loopback && !v6.has_loopback);
        assert_eq!(v6.cidrs, ["2001:db8::/32"]);
        let (w4, w6) = split_families("*", "-i").unwrap();
        assert!(w4.wildcard && w6.wildcard && w4.cidrs.is_empty());
    }

    #[test]
    fn cidrs_are_printed_canonically_but_keep_host_bits() {
        let (v4, v6) = split_families("10.1.2.3/8,2001:0db8:0:0::1/64", "-i").unwrap();
        assert_eq!(v4.cidrs, ["10.1.2.3/8"]);
        assert_eq!(v6.cidrs, ["2001:db8::1/64"]);
    }

    #[test]
    fn bad_prefixes_are_rejected_like_go_netip() {
        for bad in [
            "10.0.0.0",
            "10.0.0.0/33",
            "10.0.0.0/08",
            "10.0.0.0/+8",
            "01.0.0.0/8",
        ] {
            assert!(parse_prefix(bad).is_err(), "{bad}");
        }
        assert!(parse_prefix("fe80::1%eth0/64").is_err());
        assert!(parse_prefix("::/0").is_ok());
    }
}
