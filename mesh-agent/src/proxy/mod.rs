//! The node proxy. [`outbound`] accepts captured connections on each enrolled pod's
//! listeners, [`upstream`] dials the original destination from inside the pod's netns, and
//! [`l4`] relays bytes between them.
pub mod l4;
pub mod orig_dst;
pub mod outbound;
pub mod upstream;

use std::sync::{Arc, RwLock};

use crate::{
    config::{Config, ProxySettings},
    metrics::Metrics,
    state::WorkloadIndex,
};

/// What every connection handler reads: settings and names that follow config reloads.
#[derive(Debug)]
pub struct ProxyContext {
    pub metrics: Arc<Metrics>,
    settings: RwLock<ProxySettings>,
    workloads: RwLock<Arc<WorkloadIndex>>,
}

impl ProxyContext {
    pub fn new(metrics: Arc<Metrics>, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            settings: RwLock::new(config.proxy.clone()),
            workloads: RwLock::new(Arc::new(WorkloadIndex::new(config))),
        })
    }

    pub fn update(&self, config: &Config) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = config.proxy.clone();
        *self.workloads.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(WorkloadIndex::new(config));
    }

    pub fn settings(&self) -> ProxySettings {
        self.settings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn workloads(&self) -> Arc<WorkloadIndex> {
        self.workloads
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}
