//! The istio-iptables flags, with upstream's short and long names and defaults.
//!
//! Values stay strings here: upstream splits lists on commas and drops empty items, and
//! prints ports, ids and addresses as given, so validation happens in `settings`.

use clap::Args;

/// Flags of upstream `istio-iptables` (sidecar capture), plus the inputs upstream takes
/// from the pod's environment, as explicit flags.
#[derive(Args, Clone, Debug, PartialEq, Eq)]
pub struct IstioArgs {
    /// Port of the proxy's outbound listener; all captured outbound TCP is redirected here.
    #[arg(short = 'p', long = "envoy-port", default_value = "15001")]
    pub envoy_port: String,

    /// Port to which all captured inbound TCP traffic is redirected.
    #[arg(short = 'z', long = "inbound-capture-port", default_value = "15006")]
    pub inbound_capture_port: String,

    /// Inbound tunnel (HBONE) port; traffic to it is never captured.
    #[arg(short = 'e', long = "inbound-tunnel-port", default_value = "15008")]
    pub inbound_tunnel_port: String,

    /// Comma separated UIDs (or user names) of the proxy; their traffic is not redirected.
    #[arg(short = 'u', long = "proxy-uid", default_value = "1337")]
    pub proxy_uid: String,

    /// Comma separated GIDs (or group names) of the proxy; defaults to the --proxy-uid value.
    #[arg(short = 'g', long = "proxy-gid")]
    pub proxy_gid: Option<String>,

    /// Inbound capture mode: "TPROXY" uses the mangle table and TPROXY; any other value
    /// (normally "REDIRECT" or empty) uses NAT REDIRECT.
    #[arg(
        short = 'm',
        long = "istio-inbound-interception-mode",
        default_value = ""
    )]
    pub istio_inbound_interception_mode: String,

    /// Packet mark used by TPROXY inbound capture.
    #[arg(
        short = 't',
        long = "istio-inbound-tproxy-mark",
        default_value = "1337"
    )]
    pub istio_inbound_tproxy_mark: String,

    /// Routing table used by TPROXY inbound capture (it only shapes the policy routes, not
    /// the rules printed here).
    #[arg(
        short = 'r',
        long = "istio-inbound-tproxy-route-table",
        default_value = "133"
    )]
    pub istio_inbound_tproxy_route_table: String,

    /// Comma separated inbound ports to capture; "*" captures all, empty captures none.
    #[arg(short = 'b', long = "istio-inbound-ports", default_value = "")]
    pub istio_inbound_ports: String,

    /// Comma separated inbound ports left alone; only used with --istio-inbound-ports "*".
    #[arg(short = 'd', long = "istio-local-exclude-ports", default_value = "")]
    pub istio_local_exclude_ports: String,

    /// Comma separated interfaces whose traffic is never captured, in or out.
    #[arg(short = 'c', long = "istio-exclude-interfaces", default_value = "")]
    pub istio_exclude_interfaces: String,

    /// Comma separated CIDRs whose outbound traffic is captured; "*" captures all, empty
    /// captures none by destination.
    #[arg(short = 'i', long = "istio-service-cidr", default_value = "")]
    pub istio_service_cidr: String,

    /// Comma separated CIDRs whose outbound traffic is never captured ("*" is rejected).
    #[arg(short = 'x', long = "istio-service-exclude-cidr", default_value = "")]
    pub istio_service_exclude_cidr: String,

    /// Comma separated outbound TCP ports always captured, whatever the destination.
    #[arg(short = 'q', long = "istio-outbound-ports", default_value = "")]
    pub istio_outbound_ports: String,

    /// Comma separated outbound ports (TCP and UDP) never captured.
    #[arg(
        short = 'o',
        long = "istio-local-outbound-ports-exclude",
        default_value = ""
    )]
    pub istio_local_outbound_ports_exclude: String,

    /// Comma separated virtual interfaces whose inbound traffic is treated as outbound.
    #[arg(short = 'k', long = "kube-virt-interfaces", default_value = "")]
    pub kube_virt_interfaces: String,

    /// Capture DNS (port 53) to the agent's DNS proxy on 15053.
    #[arg(long = "redirect-dns")]
    pub redirect_dns: bool,

    /// With --redirect-dns, capture all port-53 traffic instead of only traffic to the
    /// --dns-servers-v4/--dns-servers-v6 resolvers.
    #[arg(long = "capture-all-dns")]
    pub capture_all_dns: bool,

    /// Drop packets conntrack marks INVALID instead of letting them reset the connection.
    #[arg(long = "drop-invalid")]
    pub drop_invalid: bool,

    /// Accepted for compatibility: upstream only uses it to pick the pod IP; the IP family
    /// is given explicitly with --enable-ipv6 here.
    #[arg(long = "dual-stack")]
    pub dual_stack: bool,

    /// Print the commands that remove the rules instead of the rules.
    #[arg(long = "cleanup-only")]
    pub cleanup_only: bool,

    /// Also program IPv6 (upstream: the pod's first IP is IPv6).
    #[arg(long = "enable-ipv6")]
    pub enable_ipv6: bool,

    /// Comma separated IPv4 resolvers whose DNS is captured (upstream: /etc/resolv.conf).
    #[arg(long = "dns-servers-v4", value_delimiter = ',')]
    pub dns_servers_v4: Vec<String>,

    /// Comma separated IPv6 resolvers whose DNS is captured (upstream: /etc/resolv.conf).
    #[arg(long = "dns-servers-v6", value_delimiter = ',')]
    pub dns_servers_v6: Vec<String>,

    /// Comma separated groups whose outbound traffic is captured; "*" means all
    /// (upstream: env ISTIO_OUTBOUND_OWNER_GROUPS).
    #[arg(long = "outbound-owner-groups", default_value = "*")]
    pub outbound_owner_groups: String,

    /// Comma separated groups whose outbound traffic is not captured; only used with
    /// --outbound-owner-groups "*" (upstream: env ISTIO_OUTBOUND_OWNER_GROUPS_EXCLUDE).
    #[arg(long = "outbound-owner-groups-exclude", default_value = "")]
    pub outbound_owner_groups_exclude: String,

    /// IPv4 loopback CIDR treated as the application's own loopback traffic (upstream: env
    /// ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR).
    #[arg(long = "host-ipv4-loopback-cidr", default_value = "127.0.0.1/32")]
    pub host_ipv4_loopback_cidr: String,
}

#[cfg(test)]
pub(super) mod test_support {
    use super::IstioArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: IstioArgs,
    }

    /// Parse a flag string the way the CLI would (split on whitespace).
    pub(crate) fn parse(flags: &str) -> IstioArgs {
        let argv = std::iter::once("test").chain(flags.split_whitespace());
        match Cli::try_parse_from(argv) {
            Ok(cli) => cli.args,
            Err(e) => panic!("flags {flags:?} did not parse: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::IstioArgs;
    use super::test_support::parse;

    #[test]
    fn flags_are_consistent_for_clap() {
        use clap::{Args, Command};
        IstioArgs::augment_args(Command::new("render")).debug_assert();
    }

    #[test]
    fn defaults_match_istio_iptables() {
        let a = parse("");
        assert_eq!(a.envoy_port, "15001");
        assert_eq!(a.inbound_capture_port, "15006");
        assert_eq!(a.inbound_tunnel_port, "15008");
        assert_eq!(a.proxy_uid, "1337");
        assert_eq!(a.proxy_gid, None);
        assert_eq!(a.istio_inbound_tproxy_mark, "1337");
        assert_eq!(a.istio_inbound_tproxy_route_table, "133");
        assert_eq!(a.outbound_owner_groups, "*");
        assert_eq!(a.host_ipv4_loopback_cidr, "127.0.0.1/32");
        assert!(a.dns_servers_v4.is_empty() && !a.redirect_dns && !a.enable_ipv6);
    }

    #[test]
    fn short_and_long_names() {
        let a =
            parse("-p 1 -z 2 -e 3 -u 4 -g 5 -m TPROXY -t 6 -r 7 -b 8 -d 9 -c eth9 -i 10.0.0.0/8");
        assert_eq!(
            (a.envoy_port.as_str(), a.inbound_capture_port.as_str()),
            ("1", "2")
        );
        assert_eq!(a.proxy_gid.as_deref(), Some("5"));
        assert_eq!(a.istio_inbound_interception_mode, "TPROXY");
        assert_eq!(a.istio_service_cidr, "10.0.0.0/8");
        let b = parse("-x 1.1.0.0/16 -q 80 -o 81 -k eth1 --dns-servers-v4=1.1.1.1,8.8.8.8");
        assert_eq!(b.istio_local_outbound_ports_exclude, "81");
        assert_eq!(b.kube_virt_interfaces, "eth1");
        assert_eq!(b.dns_servers_v4, ["1.1.1.1", "8.8.8.8"]);
    }
}
