//! Keeps the set of captured pods equal to the enrolled workloads of the current config.
//!
//! Order matters, so that no connection is ever steered to a listener that is not there:
//! a pod's listeners (outbound and inbound) open before steering starts, and steering stops
//! before they close.
use std::{
    collections::BTreeMap,
    io,
    net::SocketAddr,
    os::fd::{AsFd, BorrowedFd},
    path::PathBuf,
    sync::Arc,
};

use anyhow::Context as _;
use serde::Serialize;
use tracing::{error, info};

use crate::{
    config::{Config, RedirectMode, Workload, WorkloadKey},
    metrics::Metrics,
    proxy::{
        ProxyContext, delivery,
        pod::{self, Pod, PodListeners},
    },
    redirect::{CaptureSpec, router::Router},
    sys::netns::Netns,
};

/// One captured pod.
struct Captured {
    workload: Workload,
    spec: CaptureSpec,
    listeners: PodListeners,
}

/// What `/config_dump` shows of a captured pod.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CapturedView {
    pub workload: WorkloadKey,
    pub capture: CaptureSpec,
}

pub struct Enrollment {
    redirect: Arc<Router>,
    proxy: Arc<ProxyContext>,
    metrics: Arc<Metrics>,
    /// Where each pod's delivery sysctls are written (`procSysNet`).
    proc_sys_net: PathBuf,
    pods: BTreeMap<WorkloadKey, Captured>,
}

impl Enrollment {
    pub fn new(
        redirect: Arc<Router>,
        proxy: Arc<ProxyContext>,
        metrics: Arc<Metrics>,
        proc_sys_net: PathBuf,
    ) -> Self {
        Self {
            redirect,
            proxy,
            metrics,
            proc_sys_net,
            pods: BTreeMap::new(),
        }
    }

    /// Brings captured pods in line with `config`. A pod that fails to enroll is logged and
    /// counted; the others go on, and a later call (the agent retries periodically) tries it
    /// again.
    pub async fn reconcile(&mut self, config: &Config) {
        let desired: BTreeMap<WorkloadKey, &Workload> = config
            .workloads
            .iter()
            .filter(|w| w.captured_here())
            .map(|w| (w.key(), w))
            .collect();
        let stale: Vec<WorkloadKey> = self
            .pods
            .iter()
            .filter(|(key, pod)| {
                desired
                    .get(*key)
                    .is_none_or(|w| !only_exclusions_differ(&pod.workload, w))
            })
            .map(|(key, _)| key.clone())
            .collect();
        for key in stale {
            self.remove(&key).await;
        }
        for (key, workload) in desired {
            match self.pods.get(&key) {
                Some(current) if current.workload == *workload => {}
                Some(_) => self.update_exclusions(&key, workload),
                None => self.add(key, workload).await,
            }
        }
        self.metrics.enrolled_pods.set(self.pods.len() as i64);
    }

    /// The pods captured now.
    pub fn captured(&self) -> std::collections::BTreeSet<WorkloadKey> {
        self.pods.keys().cloned().collect()
    }

    pub fn view(&self) -> Vec<CapturedView> {
        self.pods
            .iter()
            .map(|(key, pod)| CapturedView {
                workload: key.clone(),
                capture: pod.spec.clone(),
            })
            .collect()
    }

    /// Drops steering that no captured pod accounts for (left by an earlier agent for pods
    /// that are gone), so nothing is steered to listeners nobody serves.
    pub fn drop_stale_steering(&self) {
        let keep: Vec<&CaptureSpec> = self.pods.values().map(|p| &p.spec).collect();
        if let Err(err) = self.redirect.retain_only(&keep) {
            error!("cannot drop stale steering: {err}");
        }
    }

    async fn add(&mut self, key: WorkloadKey, workload: &Workload) {
        match self.capture(workload).await {
            Ok(captured) => {
                info!(pod = %key, mode = %captured.spec.mode, listeners = ?captured.spec.listeners, "pod enrolled");
                self.pods.insert(key, captured);
            }
            Err(err) => {
                self.metrics.enroll_failures.inc();
                error!(pod = %key, "cannot enroll pod: {err:#}");
            }
        }
    }

    async fn capture(&self, workload: &Workload) -> anyhow::Result<Captured> {
        let (netns_path, cgroup) = match (&workload.netns, &workload.cgroup) {
            (Some(n), Some(c)) => (n, c),
            _ => anyhow::bail!("enrolled workload without netns or cgroup"),
        };
        let mode = mode_of(workload, self.redirect.node_mode());
        let ipv6 = workload.ipv6();
        let key = workload.key();
        let listeners: Vec<SocketAddr> = self
            .redirect
            .listeners(&key, mode, ipv6)
            .with_context(|| format!("placing listeners for {mode} steering"))?;
        let inbound = pod::inbound_listeners(ipv6.is_some());
        let spec = CaptureSpec {
            key,
            mode,
            netns: netns_path.clone(),
            cgroup: cgroup.clone(),
            listeners: listeners.clone(),
            exclude_ports: workload.exclude_ports.clone(),
            exclude_cidrs: workload.exclude_cidrs.clone(),
            ips: workload.ips.clone(),
            inbound_listeners: inbound.clone(),
            exclude_inbound_ports: workload.exclude_inbound_ports.clone(),
        };
        let netns = Netns::open(netns_path)?;
        delivery::prepare_netns(&netns, ipv6.is_some(), &self.proc_sys_net)
            .context("installing the return route for inbound delivery")?;
        let pod = Arc::new(Pod {
            workload: workload.clone(),
            netns,
            outbound: listeners,
            inbound,
            tunnel: if self.proxy.mesh.is_some() {
                pod::tunnel_listeners(ipv6.is_some())
            } else {
                Vec::new()
            },
            exemption: Arc::new(RouterExemption {
                router: self.redirect.clone(),
                mode,
            }),
        });
        let listeners = match PodListeners::open(pod, self.proxy.clone()) {
            Ok(listeners) => listeners,
            Err(err) => {
                self.release_steering(&spec);
                return Err(err).context("opening the pod's listeners");
            }
        };
        if let Err(err) = self.redirect.enroll(&spec, &inbound_sockets(&listeners)) {
            // Undo whatever part of steering started, and free the listeners for a retry.
            self.release_steering(&spec);
            listeners.close().await;
            return Err(err).with_context(|| format!("starting {mode} steering"));
        }
        Ok(Captured {
            workload: workload.clone(),
            spec,
            listeners,
        })
    }

    /// Exclusions change in place: the mode's enroll overwrites its state atomically, so
    /// the pod is never uncaptured in between.
    fn update_exclusions(&mut self, key: &WorkloadKey, workload: &Workload) {
        let Some(pod) = self.pods.get_mut(key) else {
            return;
        };
        let mut spec = pod.spec.clone();
        spec.exclude_ports = workload.exclude_ports.clone();
        spec.exclude_cidrs = workload.exclude_cidrs.clone();
        spec.exclude_inbound_ports = workload.exclude_inbound_ports.clone();
        match self
            .redirect
            .enroll(&spec, &inbound_sockets(&pod.listeners))
        {
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

    async fn remove(&mut self, key: &WorkloadKey) {
        if let Some(pod) = self.pods.remove(key) {
            // Steering stops first, then the listeners close: no connect is ever steered
            // to a closed listener.
            self.release_steering(&pod.spec);
            pod.listeners.close().await;
            info!(pod = %key, "pod released");
        }
    }

    fn release_steering(&self, spec: &CaptureSpec) {
        if let Err(err) = self.redirect.release(spec) {
            error!(pod = %spec.key, "cannot stop steering: {err}");
        }
    }
}

/// True when `a` and `b` differ at most in their exclusions (which can change in place).
fn only_exclusions_differ(a: &Workload, b: &Workload) -> bool {
    let mut a = a.clone();
    a.exclude_ports = b.exclude_ports.clone();
    a.exclude_cidrs = b.exclude_cidrs.clone();
    a.exclude_inbound_ports = b.exclude_inbound_ports.clone();
    a == *b
}

fn inbound_sockets(listeners: &PodListeners) -> Vec<(SocketAddr, BorrowedFd<'_>)> {
    listeners
        .inbound()
        .map(|(addr, listener)| (addr, listener.as_fd()))
        .collect()
}

/// Tells the pod's redirect mode about the proxy's deliveries to its app.
struct RouterExemption {
    router: Arc<Router>,
    mode: RedirectMode,
}

impl delivery::SteeringExemption for RouterExemption {
    fn begin(&self, from: SocketAddr, to: SocketAddr) -> io::Result<()> {
        self.router
            .begin_delivery(self.mode, from, to)
            .map_err(io::Error::other)
    }

    fn end(&self, from: SocketAddr, to: SocketAddr) {
        self.router.end_delivery(self.mode, from, to);
    }
}

/// Which mode a workload uses on a node running `node_mode`.
pub fn mode_of(workload: &Workload, node_mode: RedirectMode) -> RedirectMode {
    workload.redirect_mode.unwrap_or(node_mode)
}
