//! Keeps the set of captured pods equal to the enrolled workloads of the current config.
//!
//! Order matters, so that no connection is ever steered to a listener that is not there:
//! a pod's listeners open before steering starts, and steering stops before they close.
use std::{collections::BTreeMap, net::SocketAddr, sync::Arc};

use serde::Serialize;
use tracing::{error, info};

use crate::{
    config::{Config, Workload, WorkloadKey},
    metrics::Metrics,
    proxy::{
        ProxyContext,
        outbound::{Pod, PodListeners},
    },
    redirect::{CaptureSpec, Redirect},
    state::ListenerAddrs,
    sys::netns::Netns,
};

/// One captured pod.
struct Captured {
    workload: Workload,
    spec: CaptureSpec,
    listeners: Vec<SocketAddr>,
    _open: PodListeners,
}

/// What `/config_dump` shows of a captured pod.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapturedView {
    pub workload: WorkloadKey,
    pub listeners: Vec<SocketAddr>,
    pub capture: CaptureSpec,
}

pub struct Enrollment {
    redirect: Arc<dyn Redirect>,
    proxy: Arc<ProxyContext>,
    metrics: Arc<Metrics>,
    addrs: ListenerAddrs,
    pods: BTreeMap<WorkloadKey, Captured>,
}

impl Enrollment {
    pub fn new(
        redirect: Arc<dyn Redirect>,
        proxy: Arc<ProxyContext>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            redirect,
            proxy,
            metrics,
            addrs: ListenerAddrs::default(),
            pods: BTreeMap::new(),
        }
    }

    /// Brings captured pods in line with `config`. A pod that fails to enroll is logged and
    /// counted; the others go on.
    pub fn reconcile(&mut self, config: &Config) {
        let desired: BTreeMap<WorkloadKey, &Workload> = config
            .workloads
            .iter()
            .filter(|w| w.enrolled)
            .map(|w| (w.key(), w))
            .collect();
        let gone: Vec<WorkloadKey> = self
            .pods
            .keys()
            .filter(|k| !desired.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.remove(&key);
        }
        for (key, workload) in desired {
            match self.pods.get(&key) {
                Some(current) if current.workload == *workload => {}
                Some(current) if only_exclusions_differ(&current.workload, workload) => {
                    self.update_exclusions(&key, workload)
                }
                _ => self.replace(key, workload),
            }
        }
        self.metrics.enrolled_pods.set(self.pods.len() as i64);
    }

    pub fn view(&self) -> Vec<CapturedView> {
        self.pods
            .iter()
            .map(|(key, pod)| CapturedView {
                workload: key.clone(),
                listeners: pod.listeners.clone(),
                capture: pod.spec.clone(),
            })
            .collect()
    }

    /// Starts capturing `workload`; a previous version of it is swapped out without a gap
    /// (the new listeners are open and steered to before the old ones close).
    fn replace(&mut self, key: WorkloadKey, workload: &Workload) {
        match self.capture(workload) {
            Ok(captured) => {
                info!(pod = %key, listeners = ?captured.listeners, "pod enrolled");
                if let Some(old) = self.pods.insert(key, captured) {
                    self.addrs.release(old.spec.listener_v4);
                    if old.spec.cgroup != workload.cgroup.clone().unwrap_or_default() {
                        self.release_steering(&old.spec);
                    }
                }
            }
            Err(err) => {
                self.metrics.enroll_failures.inc();
                error!(pod = %key, "cannot enroll pod: {err:#}");
            }
        }
    }

    fn capture(&mut self, workload: &Workload) -> anyhow::Result<Captured> {
        use anyhow::Context as _;
        let (netns_path, cgroup) = match (&workload.netns, &workload.cgroup) {
            (Some(n), Some(c)) => (n, c),
            _ => anyhow::bail!("enrolled workload without netns or cgroup"),
        };
        let netns = Netns::open(netns_path)?;
        let listener_v4 = self
            .addrs
            .allocate()
            .context("no free loopback listener address left on this node")?;
        let listener_v6 = workload.ipv6().and_then(|ip| match ip {
            std::net::IpAddr::V6(v6) => Some(v6),
            std::net::IpAddr::V4(_) => None,
        });
        let port = mesh_common::OUTBOUND_LISTENER_PORT;
        let mut listeners = vec![SocketAddr::from((listener_v4, port))];
        listeners.extend(listener_v6.map(|v6| SocketAddr::from((v6, port))));
        let spec = CaptureSpec {
            key: workload.key(),
            cgroup: cgroup.clone(),
            listener_v4,
            listener_v6,
            exclude_ports: workload.exclude_ports.clone(),
            exclude_cidrs: workload.exclude_cidrs.clone(),
        };
        let pod = Arc::new(Pod {
            workload: workload.clone(),
            netns,
            listeners: listeners.clone(),
        });
        let result = PodListeners::open(pod, self.proxy.clone())
            .context("opening the pod's listeners")
            .and_then(|open| {
                self.redirect
                    .enroll(&spec)
                    .context("starting steering")
                    .map(|()| open)
            });
        match result {
            Ok(open) => Ok(Captured {
                workload: workload.clone(),
                spec,
                listeners,
                _open: open,
            }),
            Err(err) => {
                self.addrs.release(listener_v4);
                Err(err)
            }
        }
    }

    fn update_exclusions(&mut self, key: &WorkloadKey, workload: &Workload) {
        let Some(pod) = self.pods.get_mut(key) else {
            return;
        };
        let mut spec = pod.spec.clone();
        spec.exclude_ports = workload.exclude_ports.clone();
        spec.exclude_cidrs = workload.exclude_cidrs.clone();
        match self.redirect.enroll(&spec) {
            Ok(()) => {
                info!(pod = %key, "pod exclusions updated");
                pod.spec = spec;
                pod.workload = workload.clone();
            }
            Err(err) => {
                self.metrics.enroll_failures.inc();
                error!(pod = %key, "cannot update pod exclusions: {err}");
            }
        }
    }

    fn remove(&mut self, key: &WorkloadKey) {
        if let Some(pod) = self.pods.remove(key) {
            self.release_steering(&pod.spec);
            self.addrs.release(pod.spec.listener_v4);
            info!(pod = %key, "pod released");
            // Dropping `pod` closes its listeners, after steering stopped.
        }
    }

    fn release_steering(&self, spec: &CaptureSpec) {
        if let Err(err) = self.redirect.release(spec) {
            error!(pod = %spec.key, "cannot stop steering: {err}");
        }
    }

    /// Drops steering that no captured pod accounts for (left by an earlier agent for pods
    /// that are gone), so nothing is steered to listeners nobody serves.
    pub fn drop_stale_steering(&self) {
        let keep: Vec<&CaptureSpec> = self.pods.values().map(|p| &p.spec).collect();
        if let Err(err) = self.redirect.retain_only(&keep) {
            error!("cannot drop stale steering: {err}");
        }
    }
}

fn only_exclusions_differ(a: &Workload, b: &Workload) -> bool {
    let mut a = a.clone();
    a.exclude_ports = b.exclude_ports.clone();
    a.exclude_cidrs = b.exclude_cidrs.clone();
    a == *b
}
