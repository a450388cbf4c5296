//! Node state derived from the configuration, indexed for the data path: who owns which IP
//! (to name destinations in metrics) and which service answers at which virtual address.
mod services;

pub use services::{
    Backend, Frontend, HttpTarget, RouteRule, ServiceIndex, ServiceKey, ServiceView,
};

use std::{collections::HashMap, net::IpAddr, sync::Arc};

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
