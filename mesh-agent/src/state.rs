//! Node state derived from the configuration: who owns which IP (to name destinations in
//! metrics) and which loopback address each enrolled pod's outbound listener uses.
use std::{
    collections::{BTreeSet, HashMap},
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
};

use crate::config::{Config, Workload};

/// Workloads by IP address.
#[derive(Debug, Default)]
pub struct WorkloadIndex {
    by_ip: HashMap<IpAddr, Arc<Workload>>,
}

impl WorkloadIndex {
    pub fn new(config: &Config) -> Self {
        let mut by_ip = HashMap::new();
        for w in &config.workloads {
            let w = Arc::new(w.clone());
            for ip in &w.ips {
                by_ip.insert(*ip, w.clone());
            }
        }
        Self { by_ip }
    }

    pub fn by_ip(&self, ip: IpAddr) -> Option<&Arc<Workload>> {
        self.by_ip.get(&ip)
    }
}

/// Hands out one loopback address per enrolled pod, `127.0.1.1` upwards. Every pod dials its
/// listener from `127.0.0.1`, so a distinct listener address is what keeps two pods'
/// connection 4-tuples apart in the kernel's maps.
#[derive(Debug, Default)]
pub struct ListenerAddrs {
    used: BTreeSet<u32>,
}

/// 127.0.1.0: the first address of the block.
const BASE: u32 = 0x7f00_0100;
/// 127.0.1.1 through 127.1.0.255: far more pods than a node runs.
const SIZE: u32 = 0xffff;

impl ListenerAddrs {
    pub fn allocate(&mut self) -> Option<Ipv4Addr> {
        let offset = (1..=SIZE).find(|o| !self.used.contains(o))?;
        self.used.insert(offset);
        Some(Ipv4Addr::from(BASE + offset))
    }

    pub fn release(&mut self, addr: Ipv4Addr) {
        self.used.remove(&(u32::from(addr).wrapping_sub(BASE)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_unique_and_reused_after_release() {
        let mut a = ListenerAddrs::default();
        let first = a.allocate().unwrap();
        let second = a.allocate().unwrap();
        assert_eq!(first, Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(second, Ipv4Addr::new(127, 0, 1, 2));
        a.release(first);
        assert_eq!(a.allocate().unwrap(), first);
        assert_eq!(a.allocate().unwrap(), Ipv4Addr::new(127, 0, 1, 3));
    }
}
