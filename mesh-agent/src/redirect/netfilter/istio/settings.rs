//! Validated inputs, in the shape the rule planners need.
//!
//! Upstream keeps most values as the strings it was given and prints them verbatim, so we
//! do too (a port "080" stays "080"); we only check that each value is one the kernel
//! tools would accept. CIDRs are the exception (see `cidr`).

use std::net::{Ipv4Addr, Ipv6Addr};

use super::args::IstioArgs;
use super::cidr::{Ranges, host_loopback, split_families};
use super::error::IstioRenderError as E;

/// Upstream caps the include list: all groups become matches of one rule.
const MAX_OWNER_GROUPS_INCLUDE: usize = 64;

/// Which inbound ports are captured.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum InboundPorts<'a> {
    None,
    All { except: Vec<&'a str> },
    Only(Vec<&'a str>),
}

/// Outbound capture by socket owner group.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum OwnerGroups<'a> {
    /// Capture every group except these.
    AllExcept(Vec<&'a str>),
    /// Capture only these groups.
    Only(Vec<&'a str>),
}

#[derive(Debug)]
pub(super) struct Settings<'a> {
    pub proxy_port: &'a str,
    pub inbound_capture_port: &'a str,
    pub inbound_tunnel_port: &'a str,
    pub proxy_uids: Vec<&'a str>,
    pub proxy_gids: Vec<&'a str>,
    pub tproxy: bool,
    pub tproxy_mark: &'a str,
    pub inbound_ports: InboundPorts<'a>,
    pub exclude_interfaces: Vec<&'a str>,
    pub virt_interfaces: Vec<&'a str>,
    pub include_v4: Ranges,
    pub include_v6: Ranges,
    pub exclude_v4: Ranges,
    pub exclude_v6: Ranges,
    pub outbound_ports_include: Vec<&'a str>,
    pub outbound_ports_exclude: Vec<&'a str>,
    /// DNS capture after upstream's rule: with no resolvers known and not capturing all
    /// DNS, there is nothing to capture.
    pub redirect_dns: bool,
    pub capture_all_dns: bool,
    pub dns_v4: Vec<&'a str>,
    pub dns_v6: Vec<&'a str>,
    pub drop_invalid: bool,
    pub ipv6: bool,
    pub owner_groups: OwnerGroups<'a>,
    pub host_loopback: &'a str,
    pub cleanup_only: bool,
}

impl<'a> Settings<'a> {
    pub fn from_args(a: &'a IstioArgs) -> Result<Self, E> {
        let (exclude_v4, exclude_v6) = split_families(&a.istio_service_exclude_cidr, "-x")?;
        if exclude_v4.wildcard {
            return Err(E::WildcardExcludeCidr);
        }
        let (include_v4, include_v6) = split_families(&a.istio_service_cidr, "-i")?;

        // Upstream: an unset UID means the proxy user's (1337); an unset GID follows the UID.
        let uid_text = if a.proxy_uid.is_empty() {
            "1337"
        } else {
            &a.proxy_uid
        };
        let gid_text = match a.proxy_gid.as_deref() {
            None | Some("") => uid_text,
            Some(g) => g,
        };

        let dns_v4 = dns_servers(&a.dns_servers_v4, "--dns-servers-v4", "IPv4", |s| {
            s.parse::<Ipv4Addr>().is_ok()
        })?;
        let dns_v6 = dns_servers(&a.dns_servers_v6, "--dns-servers-v6", "IPv6", |s| {
            s.parse::<Ipv6Addr>().is_ok()
        })?;
        let no_resolvers = dns_v4.is_empty() && dns_v6.is_empty();

        // Exclusions only matter with "*", but a bad one is still an error.
        let inbound_exclude = port_list(&a.istio_local_exclude_ports, "-d")?;
        let inbound_ports = match a.istio_inbound_ports.as_str() {
            "" => InboundPorts::None,
            "*" => InboundPorts::All {
                except: inbound_exclude,
            },
            list => InboundPorts::Only(port_list(list, "-b")?),
        };

        check_mark(&a.istio_inbound_tproxy_mark)?;
        check_route_table(&a.istio_inbound_tproxy_route_table)?;

        Ok(Settings {
            proxy_port: port(&a.envoy_port, "-p")?,
            inbound_capture_port: port(&a.inbound_capture_port, "-z")?,
            inbound_tunnel_port: port(&a.inbound_tunnel_port, "-e")?,
            proxy_uids: owner_list(uid_text, "-u")?,
            proxy_gids: owner_list(gid_text, "-g")?,
            tproxy: a.istio_inbound_interception_mode == "TPROXY",
            tproxy_mark: &a.istio_inbound_tproxy_mark,
            inbound_ports,
            exclude_interfaces: interface_list(&a.istio_exclude_interfaces, "-c")?,
            virt_interfaces: interface_list(&a.kube_virt_interfaces, "-k")?,
            include_v4,
            include_v6,
            exclude_v4,
            exclude_v6,
            outbound_ports_include: port_list(&a.istio_outbound_ports, "-q")?,
            outbound_ports_exclude: port_list(&a.istio_local_outbound_ports_exclude, "-o")?,
            redirect_dns: a.redirect_dns && (a.capture_all_dns || !no_resolvers),
            capture_all_dns: a.capture_all_dns,
            dns_v4,
            dns_v6,
            drop_invalid: a.drop_invalid,
            ipv6: a.enable_ipv6,
            owner_groups: owner_groups(&a.outbound_owner_groups, &a.outbound_owner_groups_exclude)?,
            host_loopback: host_loopback(&a.host_ipv4_loopback_cidr)?,
            cleanup_only: a.cleanup_only,
        })
    }
}

/// Upstream's list syntax: comma separated, empty items ignored.
pub(super) fn split_list(s: &str) -> Vec<&str> {
    s.split(',').filter(|item| !item.is_empty()).collect()
}

fn port<'s>(s: &'s str, flag: &'static str) -> Result<&'s str, E> {
    let ok = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_digit())
        && matches!(s.parse::<u32>(), Ok(1..=65535));
    if ok {
        Ok(s)
    } else {
        Err(E::InvalidPort {
            flag,
            value: s.to_owned(),
        })
    }
}

fn port_list<'s>(s: &'s str, flag: &'static str) -> Result<Vec<&'s str>, E> {
    split_list(s).into_iter().map(|p| port(p, flag)).collect()
}

fn check_mark(s: &str) -> Result<(), E> {
    let value = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) if !hex.is_empty() => u32::from_str_radix(hex, 16).ok(),
        Some(_) => None,
        None if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.parse::<u32>().ok(),
        None => None,
    };
    match value {
        Some(_) => Ok(()),
        None => Err(E::InvalidMark {
            flag: "-t",
            value: s.to_owned(),
        }),
    }
}

fn check_route_table(s: &str) -> Result<(), E> {
    let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match s.parse::<u32>() {
        Ok(n) if digits && n > 0 => Ok(()),
        _ => Err(E::InvalidRouteTable {
            flag: "-r",
            value: s.to_owned(),
        }),
    }
}

/// A user or group: a numeric id or a plain name, as `-m owner` and `skuid` accept.
fn owner_list<'s>(s: &'s str, flag: &'static str) -> Result<Vec<&'s str>, E> {
    let valid = |o: &str| {
        let numeric = o.bytes().all(|b| b.is_ascii_digit());
        if numeric {
            o.parse::<u32>().is_ok()
        } else {
            !o.starts_with('-')
                && o.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        }
    };
    split_list(s)
        .into_iter()
        .map(|o| {
            if valid(o) {
                Ok(o)
            } else {
                Err(E::InvalidOwner {
                    flag,
                    value: o.to_owned(),
                })
            }
        })
        .collect()
}

fn owner_groups<'s>(include: &'s str, exclude: &'s str) -> Result<OwnerGroups<'s>, E> {
    if include == "*" {
        return Ok(OwnerGroups::AllExcept(owner_list(
            exclude,
            "--outbound-owner-groups-exclude",
        )?));
    }
    let groups = owner_list(include, "--outbound-owner-groups")?;
    if groups.len() > MAX_OWNER_GROUPS_INCLUDE {
        return Err(E::TooManyOwnerGroups {
            max: MAX_OWNER_GROUPS_INCLUDE,
            count: groups.len(),
        });
    }
    Ok(OwnerGroups::Only(groups))
}

/// Linux interface names: 1-15 bytes, no '/', ':' or whitespace, not "." or "..".
fn interface_list<'s>(s: &'s str, flag: &'static str) -> Result<Vec<&'s str>, E> {
    let valid = |n: &str| {
        n.len() <= 15
            && n != "."
            && n != ".."
            && !n
                .chars()
                .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    };
    split_list(s)
        .into_iter()
        .map(|n| {
            if valid(n) {
                Ok(n)
            } else {
                Err(E::InvalidInterface {
                    flag,
                    value: n.to_owned(),
                })
            }
        })
        .collect()
}

fn dns_servers<'s>(
    list: &'s [String],
    flag: &'static str,
    family: &'static str,
    valid: impl Fn(&str) -> bool,
) -> Result<Vec<&'s str>, E> {
    let mut out = Vec::new();
    for s in list.iter().map(String::as_str).filter(|s| !s.is_empty()) {
        if !valid(s) {
            return Err(E::InvalidDnsServer {
                flag,
                value: s.to_owned(),
                family,
            });
        }
        out.push(s);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::super::args::test_support::parse;
    use super::*;

    fn settings_err(flags: &str) -> E {
        let args = parse(flags);
        match Settings::from_args(&args) {
            Ok(s) => panic!("{flags:?} was accepted: {s:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn rejects_invalid_input() {
        assert_eq!(settings_err("-x *"), E::WildcardExcludeCidr);
        assert!(matches!(
            settings_err("-x 1.2.3.4/40"),
            E::InvalidCidr { flag: "-x", .. }
        ));
        assert!(matches!(
            settings_err("-i 10.0.0.0/8,*"),
            E::InvalidCidr { .. }
        ));
        assert!(matches!(
            settings_err("-p 70000"),
            E::InvalidPort { flag: "-p", .. }
        ));
        assert!(matches!(
            settings_err("-b 80,http"),
            E::InvalidPort { flag: "-b", .. }
        ));
        assert!(matches!(
            settings_err("-o 1000:2000"),
            E::InvalidPort { .. }
        ));
        assert!(matches!(settings_err("-t 0xzz"), E::InvalidMark { .. }));
        assert!(matches!(
            settings_err("-r abc"),
            E::InvalidRouteTable { .. }
        ));
        assert!(matches!(settings_err("-u 1337;x"), E::InvalidOwner { .. }));
        assert!(matches!(settings_err("-c a/b"), E::InvalidInterface { .. }));
        assert!(matches!(
            settings_err("--dns-servers-v4 ::1"),
            E::InvalidDnsServer { .. }
        ));
        let loopback = "--host-ipv4-loopback-cidr";
        assert!(matches!(
            settings_err(&format!("{loopback} 10.0.0.1/32")),
            E::InvalidCidr { .. }
        ));
        assert!(matches!(
            settings_err(&format!("{loopback} 127.0.0.1/7")),
            E::InvalidCidr { .. }
        ));
        let many: Vec<String> = (0..65).map(|g| g.to_string()).collect();
        let flags = format!("--outbound-owner-groups {}", many.join(","));
        assert_eq!(
            settings_err(&flags),
            E::TooManyOwnerGroups { max: 64, count: 65 }
        );
    }

    #[test]
    fn accepts_hex_marks_and_named_owners() {
        let args = parse("-t 0x539 -u istio-proxy -g 1337,java --outbound-owner-groups java");
        let s = Settings::from_args(&args).unwrap();
        assert_eq!(s.proxy_uids, ["istio-proxy"]);
        assert_eq!(s.proxy_gids, ["1337", "java"]);
        assert_eq!(s.owner_groups, OwnerGroups::Only(vec!["java"]));
    }

    #[test]
    fn gid_defaults_to_uid_and_dns_needs_resolvers() {
        let args = parse("-u 3,4 --redirect-dns");
        let s = Settings::from_args(&args).unwrap();
        assert_eq!(s.proxy_gids, ["3", "4"]);
        assert!(
            !s.redirect_dns,
            "no resolvers and not capture-all: DNS capture is off"
        );
        let args = parse("--redirect-dns --capture-all-dns");
        assert!(Settings::from_args(&args).unwrap().redirect_dns);
    }

    #[test]
    fn inbound_port_modes() {
        let s = |f: &str| Settings::from_args(&parse(f)).map(|s| format!("{:?}", s.inbound_ports));
        assert_eq!(s("").unwrap(), "None");
        assert_eq!(s("-b * -d 22,").unwrap(), "All { except: [\"22\"] }");
        assert_eq!(s("-b 80,81 -d 22").unwrap(), "Only([\"80\", \"81\"])");
    }
}
