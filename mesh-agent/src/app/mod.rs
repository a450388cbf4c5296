//! The agent as a whole: wires configuration, steering, proxy and endpoints together and
//! applies configuration changes until asked to stop.
mod cni;
mod enrollment;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};
use tracing::{error, info, warn};

use self::enrollment::Enrollment;
use crate::{
    admin::{self, AdminState, RedirectCounters},
    check,
    config::{
        self, Config, ConfigError, ConfigSource, FileSource, ModeSetting, RedirectMode,
        kube::{CniPods, KubeSource},
    },
    identity::Identities,
    logging::LogControl,
    metrics::Metrics,
    proxy::ProxyContext,
    redirect::{
        Redirect,
        ebpf::{EbpfRedirect, EbpfSettings},
        netfilter::NetfilterRedirect,
        router::Router,
    },
    sys::{limits, mounts, netns},
};

/// How often the memory trimmer looks whether connections have come and gone.
const TRIM_INTERVAL: Duration = Duration::from_secs(5);

/// How often pods that failed to enroll are tried again.
const RETRY_INTERVAL: Duration = Duration::from_secs(5);

/// `mesh-agent run`: runs until SIGTERM or SIGINT. Pinned steering stays in place on exit so
/// a restarted agent takes over without a gap (`mesh-agent cleanup` removes it).
pub async fn run(config_path: &Path, node: Option<String>, logs: LogControl) -> anyhow::Result<()> {
    netns::remember_home().context("recording the agent's netns")?;
    match limits::raise_open_files() {
        Ok(limit) => info!(limit, "open file limit"),
        Err(error) => warn!(%error, "cannot raise the open file limit"),
    }
    let metrics = Metrics::new();
    let source = Source::open(config_path, node, &metrics)
        .await
        .context("loading the configuration")?;
    let mut configs = source.configs;
    let config = configs.borrow_and_update().clone();
    info!(node = %config.node, path = %config_path.display(), "starting");

    let (node_mode, reason) = node_mode(&config)?;
    info!(mode = %node_mode, reason, "redirect mode");
    let redirect = Arc::new(start_redirect(&config, node_mode)?);
    metrics.register_collector(Box::new(RedirectCounters(redirect.clone())));
    metrics.set_redirect_mode(node_mode.as_str());

    let identities = match &config.identity {
        Some(settings) => Some(Identities::start(settings).context("loading workload identities")?),
        None => {
            warn!(
                "no identity section: mTLS is off, connections between enrolled pods are plain TCP"
            );
            None
        }
    };
    let proxy = ProxyContext::new(metrics.clone(), &config, identities.clone());
    let mut enrollment = Enrollment::new(
        redirect.clone(),
        proxy.clone(),
        metrics.clone(),
        config.proc_sys_net.clone(),
    );
    enrollment.reconcile(&config).await;
    enrollment.drop_stale_steering();
    let (captured_tx, captured) = watch::channel(enrollment.captured());
    if let Some((socket, pods)) = config
        .kubernetes
        .as_ref()
        .and_then(|k| k.cni_socket.clone())
        .zip(source.cni_pods.clone())
    {
        cni::serve(&socket, pods, captured)
            .with_context(|| format!("listening for the CNI plugin on {}", socket.display()))?;
    }
    // What /config_dump shows of the captured pods, refreshed after each reconcile.
    let pods_view = Arc::new(RwLock::new(serde_json::json!(enrollment.view())));

    let ready = Arc::new(AtomicBool::new(false));
    let view = pods_view.clone();
    admin::serve(Arc::new(AdminState {
        config: configs.clone(),
        redirect: redirect.clone(),
        redirect_reason: reason,
        metrics: metrics.clone(),
        logs: Arc::new(logs),
        ready: ready.clone(),
        pods: Box::new(move || view.read().unwrap_or_else(|p| p.into_inner()).clone()),
        source: source.view,
        identities,
    }))
    .await
    .context("starting the admin, metrics and readiness endpoints")?;
    ready.store(true, Ordering::Relaxed);
    info!("ready");

    tokio::spawn(trim_memory_after_connections(proxy.clone()));

    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let mut applied = config;
    // Pods that failed to enroll (a netns not ready yet, a transient tool error) are retried.
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    loop {
        tokio::select! {
            changed = configs.changed() => {
                if changed.is_err() {
                    error!("configuration source stopped; keeping the current configuration");
                    std::future::pending::<()>().await;
                }
                let next = configs.borrow_and_update().clone();
                warn_restart_only_changes(&applied, &next);
                proxy.update(&next);
                enrollment.reconcile(&next).await;
                metrics.config_reloads.inc();
                applied = next;
            }
            _ = retry.tick() => enrollment.reconcile(&applied).await,
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
        *pods_view.write().unwrap_or_else(|p| p.into_inner()) =
            serde_json::json!(enrollment.view());
        captured_tx.send_if_modified(|set| {
            let now = enrollment.captured();
            let changed = *set != now;
            *set = now;
            changed
        });
    }
    info!("stopping; steering stays pinned for the next agent");
    proxy.http.sink.spans.shutdown().await;
    Ok(())
}

/// The configuration stream, and what `/config_dump` says of where it comes from.
struct Source {
    configs: watch::Receiver<Arc<Config>>,
    view: Box<dyn Fn() -> serde_json::Value + Send + Sync>,
    /// Where the CNI endpoint hands pods to the Kubernetes source.
    cni_pods: Option<CniPods>,
}

impl Source {
    /// A file with a `kubernetes:` section takes everything else from the API server;
    /// any other file is the whole configuration.
    async fn open(path: &Path, node: Option<String>, metrics: &Metrics) -> anyhow::Result<Source> {
        let rejections = metrics.config_rejections.clone();
        let count = move |_: &ConfigError| {
            rejections.inc();
        };
        if !config::names_kubernetes(path)? {
            if node.is_some() {
                warn!("--node is only used with a kubernetes section; the file names the node");
            }
            let configs = FileSource::new(path)
                .on_rejection(count)
                .subscribe()
                .await?;
            let path = path.display().to_string();
            let view = Box::new(move || serde_json::json!({ "source": "file", "path": path }));
            return Ok(Source {
                configs,
                view,
                cni_pods: None,
            });
        }
        let kube = KubeSource::new(path, node).on_rejection(count);
        let status = kube.status();
        let cni_pods = kube.cni_pods();
        let configs = kube.subscribe().await?;
        let view = Box::new(move || serde_json::json!(status.view()));
        Ok(Source {
            configs,
            view,
            cni_pods: Some(cni_pods),
        })
    }
}

/// Hands freed memory back once connections have finished and the proxy has been quiet for
/// a moment (trimming while busy would only make the next burst allocate again).
async fn trim_memory_after_connections(proxy: Arc<ProxyContext>) {
    let mut ticker = tokio::time::interval(TRIM_INTERVAL);
    let mut last = proxy.connections_finished();
    let mut trimmed_at = last;
    loop {
        ticker.tick().await;
        let now = proxy.connections_finished();
        // Connections finished since the last trim, and none in the last interval.
        if now == last && now != trimmed_at {
            crate::sys::memory::trim();
            trimmed_at = now;
        }
        last = now;
    }
}

/// The node's mode: the forced one (trusted to work; starting it fails loudly if it cannot),
/// or what `auto` resolves to after probing, with the reason.
fn node_mode(config: &Config) -> anyhow::Result<(RedirectMode, String)> {
    if let Some(mode) = config.redirect.mode.forced() {
        return Ok((mode, format!("{mode} set in the configuration")));
    }
    let report = check::run(ModeSetting::Auto);
    match report.chosen {
        Some(mode) => Ok((mode, report.reason)),
        None => anyhow::bail!("{}", report.reason),
    }
}

/// Starts every mode the node and its pods' overrides use.
fn start_redirect(config: &Config, node_mode: RedirectMode) -> anyhow::Result<Router> {
    let modes: BTreeSet<RedirectMode> = std::iter::once(node_mode)
        .chain(
            config
                .workloads
                .iter()
                .filter(|w| w.captured_here())
                .map(|w| enrollment::mode_of(w, node_mode)),
        )
        .collect();
    let mut running: BTreeMap<RedirectMode, Arc<dyn Redirect>> = BTreeMap::new();
    for mode in modes {
        let redirect: Arc<dyn Redirect> = match mode {
            RedirectMode::Ebpf => Arc::new(
                EbpfRedirect::start(ebpf_settings(config)?).context("starting eBPF steering")?,
            ),
            RedirectMode::Nftables | RedirectMode::Iptables => Arc::new(
                NetfilterRedirect::new(mode)
                    .with_context(|| format!("starting {mode} steering"))?,
            ),
        };
        running.insert(mode, redirect);
    }
    if !running.contains_key(&RedirectMode::Ebpf) {
        // Pinned programs of an earlier agent in eBPF mode would go on steering pods to
        // listeners that no longer exist.
        let pin_dir = config.bpffs_root.join(&config.node);
        if crate::redirect::ebpf::cleanup(&pin_dir)? {
            info!(pins = %pin_dir.display(), "removed eBPF steering an earlier agent left");
        }
    }
    Ok(Router::new(node_mode, running))
}

fn ebpf_settings(config: &Config) -> anyhow::Result<EbpfSettings> {
    let cgroup_root = match &config.cgroup_root {
        Some(root) => root.clone(),
        None => mounts::cgroup2_mount().context("finding the cgroup2 mount")?,
    };
    Ok(EbpfSettings {
        node: config.node.clone(),
        cgroup_root,
        bpffs_root: config.bpffs_root.clone(),
    })
}

/// Node-level settings are read once at start: say so instead of pretending to apply them.
fn warn_restart_only_changes(old: &Config, new: &Config) {
    let fields = [
        ("node", old.node != new.node),
        ("cgroupRoot", old.cgroup_root != new.cgroup_root),
        ("bpffsRoot", old.bpffs_root != new.bpffs_root),
        ("procSysNet", old.proc_sys_net != new.proc_sys_net),
        ("adminAddress", old.admin_address != new.admin_address),
        ("metricsAddress", old.metrics_address != new.metrics_address),
        (
            "readinessAddress",
            old.readiness_address != new.readiness_address,
        ),
        ("redirect.mode", old.redirect != new.redirect),
        ("identity", old.identity != new.identity),
        ("kubernetes", old.kubernetes != new.kubernetes),
    ];
    for (field, changed) in fields {
        if changed {
            warn!(
                field,
                "this setting changed but only takes effect after a restart"
            );
        }
    }
}

/// Which node's pins `mesh-agent cleanup` removes.
pub enum CleanupTarget<'a> {
    /// The configuration the agent ran with.
    Config(&'a Path),
    /// Node name and bpffs root given directly: works when the config file is gone or broken.
    Node { node: &'a str, bpffs_root: &'a Path },
}

/// `mesh-agent cleanup`: removes every program, link and pin of this node's agent.
pub fn cleanup(target: CleanupTarget<'_>) -> anyhow::Result<()> {
    let pin_dir = match target {
        CleanupTarget::Config(path) => {
            let config = FileSource::load(path).context(
                "loading the configuration (if it is broken, use --node and --bpffs-root instead)",
            )?;
            config.bpffs_root.join(&config.node)
        }
        CleanupTarget::Node { node, bpffs_root } => {
            anyhow::ensure!(
                !node.is_empty() && !node.contains('/') && !node.starts_with('.'),
                "--node {node:?} must be a plain node name"
            );
            bpffs_root.join(node)
        }
    };
    if crate::redirect::ebpf::cleanup(&pin_dir)? {
        info!(pins = %pin_dir.display(), "removed eBPF programs, links and maps");
    } else {
        info!(pins = %pin_dir.display(), "nothing to remove");
    }
    Ok(())
}
