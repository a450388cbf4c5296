//! The node proxy. [`outbound`] accepts captured connections on each enrolled pod's
//! listeners, [`upstream`] dials the original destination from inside the pod's netns, and
//! [`l4`] relays bytes between them.
pub mod l4;
pub mod orig_dst;
pub mod outbound;
pub mod upstream;

use std::sync::{
    Arc, RwLock,
    atomic::{AtomicU64, Ordering},
};

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
    /// Connections finished since start: tells the memory trimmer that memory may be free.
    finished: AtomicU64,
}

impl ProxyContext {
    pub fn new(metrics: Arc<Metrics>, config: &Config) -> Arc<Self> {
        Arc::new(Self {
            metrics,
            settings: RwLock::new(config.proxy.clone()),
            workloads: RwLock::new(Arc::new(WorkloadIndex::new(config))),
            finished: AtomicU64::new(0),
        })
    }

    pub fn update(&self, config: &Config) {
        *self.settings.write().unwrap_or_else(|p| p.into_inner()) = config.proxy.clone();
        *self.workloads.write().unwrap_or_else(|p| p.into_inner()) =
            Arc::new(WorkloadIndex::new(config));
    }

    pub fn connection_finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connections_finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
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
