//! The addresses of the agent's own network namespace (the node's, in a DaemonSet with
//! `hostNetwork`): connections from them are the node's own, such as the kubelet's probes.
use std::net::IpAddr;

/// Every address on an interface of the calling thread's netns, loopback included.
pub fn local_addresses() -> Result<Vec<IpAddr>, nix::Error> {
    let mut addresses: Vec<IpAddr> = nix::ifaddrs::getifaddrs()?
        .filter_map(|ifaddr| {
            let address = ifaddr.address?;
            if let Some(v4) = address.as_sockaddr_in() {
                Some(IpAddr::V4(v4.ip()))
            } else {
                address.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
            }
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_among_them() {
        let addresses = local_addresses().expect("getifaddrs");
        assert!(
            addresses.contains(&IpAddr::from([127, 0, 0, 1])),
            "{addresses:?}"
        );
    }
}
