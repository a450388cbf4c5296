//! Converting between the agent's types and the maps' plain-data layouts.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use aya::{
    Ebpf,
    maps::{HashMap, Map, MapData, MapError, PerCpuArray},
};
use ipnet::IpNet;
use mesh_common::{AF_INET, AF_INET6, Cidr, ConnTuple, Counter, OrigDst, PodCapture};
use serde_json::{Value, json};

use super::EbpfError;
use crate::redirect::CaptureSpec;

/// Takes the named map out of the loaded object as its typed handle.
pub fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::Map {
        name,
        error: MapError::InvalidName { name: name.into() },
    })?;
    T::try_from(map).map_err(|error| EbpfError::Map { name, error })
}

/// True when a map operation failed only because the key was not there.
pub fn is_not_found(error: &MapError) -> bool {
    matches!(error, MapError::KeyNotFound)
        || matches!(error, MapError::SyscallError(e) if e.io_error.raw_os_error() == Some(libc::ENOENT))
}

pub fn family(ip: IpAddr) -> u16 {
    if ip.is_ipv4() { AF_INET } else { AF_INET6 }
}

/// The enrollment value for a pod. The counts fit: config validation bounds the lists.
pub fn pod_capture(spec: &CaptureSpec) -> PodCapture {
    let mut value = PodCapture::default();
    for listener in &spec.listeners {
        match listener.ip() {
            IpAddr::V4(v4) => value.listener_v4 = u32::from_ne_bytes(v4.octets()),
            IpAddr::V6(v6) => {
                value.listener_v6 = v6_words(&v6);
                value.has_v6 = 1;
            }
        }
    }
    for (slot, port) in value.excluded_ports.iter_mut().zip(&spec.exclude_ports) {
        *slot = *port;
        value.n_excluded_ports += 1;
    }
    for net in &spec.exclude_cidrs {
        let (slots, n) = match net {
            IpNet::V4(_) => (&mut value.excluded_v4, &mut value.n_excluded_v4),
            IpNet::V6(_) => (&mut value.excluded_v6, &mut value.n_excluded_v6),
        };
        if let Some(slot) = slots.get_mut(*n as usize) {
            *slot = cidr(net);
            *n += 1;
        }
    }
    value
}

/// Network-order words as the kernel lays out an address.
fn v6_words(ip: &Ipv6Addr) -> [u32; 4] {
    let o = ip.octets();
    std::array::from_fn(|i| {
        u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]])
    })
}

/// An address as the maps hold it: network-order words, IPv4 in the first.
pub fn words(ip: IpAddr) -> [u32; 4] {
    match ip {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => v6_words(&v6),
    }
}

fn cidr(net: &IpNet) -> Cidr {
    Cidr {
        addr: words(net.network()),
        mask: words(net.netmask()),
    }
}

fn addr_of(family: u16, addr: &[u32; 4]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::from(addr[0].to_ne_bytes()))
    } else {
        let mut o = [0u8; 16];
        for (i, w) in addr.iter().enumerate() {
            o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(o))
    }
}

pub fn orig_dst_addr(orig: &OrigDst) -> SocketAddr {
    SocketAddr::new(addr_of(orig.family, &orig.addr), u16::from_be(orig.port))
}

/// Sums each per-CPU counter; an unreadable slot reads as zero rather than hiding the rest.
pub fn read_counters(map: &PerCpuArray<MapData, u64>) -> Vec<(&'static str, u64)> {
    Counter::ALL
        .iter()
        .map(|c| {
            let total = map
                .get(&(*c as u32), 0)
                .map(|values| values.iter().sum())
                .unwrap_or(0);
            (c.name(), total)
        })
        .collect()
}

pub fn dump_enrolled(map: &HashMap<MapData, u64, PodCapture>) -> Vec<Value> {
    map.iter()
        .filter_map(Result::ok)
        .map(|(cgroup_id, pod)| {
            json!({
                "cgroupId": cgroup_id,
                "listenerV4": Ipv4Addr::from(pod.listener_v4.to_ne_bytes()),
                "listenerV6": (pod.has_v6 == 1).then(|| addr_of(10, &pod.listener_v6)),
                "excludedPorts": &pod.excluded_ports[..pod.n_excluded_ports as usize],
            })
        })
        .collect()
}

/// At most this many live connections are listed (the count is always exact).
const DUMP_LIMIT: usize = 256;

pub fn dump_tuples(map: &HashMap<MapData, ConnTuple, OrigDst>) -> Value {
    let mut entries = Vec::new();
    let mut count = 0usize;
    for (tuple, orig) in map.iter().filter_map(Result::ok) {
        count += 1;
        if entries.len() < DUMP_LIMIT {
            entries.push(json!({
                "src": SocketAddr::new(addr_of(tuple.family, &tuple.src), tuple.src_port),
                "dst": SocketAddr::new(addr_of(tuple.family, &tuple.dst), tuple.dst_port),
                "origDst": orig_dst_addr(&orig),
            }));
        }
    }
    json!({ "count": count, "entries": entries })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::WorkloadKey;

    fn spec() -> CaptureSpec {
        CaptureSpec {
            key: WorkloadKey {
                namespace: "ns".into(),
                name: "a".into(),
            },
            mode: crate::redirect::RedirectMode::Ebpf,
            netns: "/x".into(),
            cgroup: "/x".into(),
            listeners: vec![
                "127.0.1.7:15001".parse().unwrap(),
                "[fd00::2]:15001".parse().unwrap(),
            ],
            exclude_ports: vec![22, 8080],
            exclude_cidrs: vec!["10.96.0.0/12".parse().unwrap(), "fd00::/8".parse().unwrap()],
            ips: vec!["10.0.0.7".parse().unwrap()],
            inbound_listeners: vec!["0.0.0.0:15006".parse().unwrap()],
            exclude_inbound_ports: vec![15021],
        }
    }

    #[test]
    fn listener_is_in_network_order() {
        let v = pod_capture(&spec());
        assert_eq!(v.listener_v4.to_ne_bytes(), [127, 0, 1, 7]);
        assert_eq!(v.has_v6, 1);
        assert_eq!(
            addr_of(10, &v.listener_v6),
            "fd00::2".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn exclusions_are_counted_per_family() {
        let v = pod_capture(&spec());
        assert_eq!(
            &v.excluded_ports[..v.n_excluded_ports as usize],
            &[22, 8080]
        );
        assert_eq!(v.n_excluded_v4, 1);
        assert_eq!(v.n_excluded_v6, 1);
        assert_eq!(v.excluded_v4[0].addr[0].to_ne_bytes(), [10, 96, 0, 0]);
        assert_eq!(v.excluded_v4[0].mask[0].to_ne_bytes(), [255, 240, 0, 0]);
    }

    #[test]
    fn orig_dst_round_trips() {
        let orig = OrigDst {
            family: AF_INET,
            port: 8080u16.to_be(),
            addr: [u32::from_ne_bytes([10, 0, 0, 9]), 0, 0, 0],
        };
        assert_eq!(orig_dst_addr(&orig).to_string(), "10.0.0.9:8080");
    }
}
