//! One loopback listener address per eBPF-captured pod, `127.0.1.1` upwards. Every pod dials
//! its listener from `127.0.0.1`, so a distinct listener address is what keeps two pods'
//! connection 4-tuples apart in the kernel's maps.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
};

use crate::config::WorkloadKey;

/// 127.0.1.0: the first address of the block.
const BASE: u32 = 0x7f00_0100;
/// 127.0.1.1 through 127.1.0.255: far more pods than a node runs.
const SIZE: u32 = 0xffff;

#[derive(Debug, Default)]
pub struct ListenerAddrs {
    by_pod: BTreeMap<WorkloadKey, u32>,
    used: BTreeSet<u32>,
}

impl ListenerAddrs {
    /// The pod's address: the one it already has, or the lowest free one.
    pub fn assign(&mut self, key: &WorkloadKey) -> Option<Ipv4Addr> {
        if let Some(offset) = self.by_pod.get(key) {
            return Some(Ipv4Addr::from(BASE + offset));
        }
        let offset = (1..=SIZE).find(|o| !self.used.contains(o))?;
        self.used.insert(offset);
        self.by_pod.insert(key.clone(), offset);
        Some(Ipv4Addr::from(BASE + offset))
    }

    pub fn free(&mut self, key: &WorkloadKey) {
        if let Some(offset) = self.by_pod.remove(key) {
            self.used.remove(&offset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: "ns".into(),
            name: name.into(),
        }
    }

    #[test]
    fn addresses_are_unique_stable_and_reused_after_free() {
        let mut a = ListenerAddrs::default();
        let first = a.assign(&key("a")).unwrap();
        assert_eq!(first, Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(a.assign(&key("b")).unwrap(), Ipv4Addr::new(127, 0, 1, 2));
        assert_eq!(
            a.assign(&key("a")).unwrap(),
            first,
            "same pod, same address"
        );
        a.free(&key("a"));
        assert_eq!(a.assign(&key("c")).unwrap(), first);
    }
}
