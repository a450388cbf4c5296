//! An in-process Kubernetes API server for the tests: real list/watch semantics over HTTP,
//! so the agent's kube-rs watchers and reflectors can be tested where no cluster can run.
//!
//! It serves the resources the agent reads (`resources.rs`) from a store of JSON objects
//! (`store.rs`) with one global resource version and a change history, the way etcd backs a
//! real server: lists with selectors and consistent pages (`list.rs`, `selector.rs`), watches
//! that replay history, send bookmarks and answer 410 Expired once the history is compacted
//! (`watch.rs`). Tests seed it with YAML as `kubectl get -o yaml` prints it
//! (`tests/fixtures/kube/`), change it while clients watch, and play what makes clients
//! recover: compaction, a restart that drops every connection, CRDs missing.
//!
//! Like [`crate::otlp::OtlpReceiver`], the listening socket is made inside the netns the
//! client runs in (a socket stays in the namespace it was made in) and served from a
//! background thread with its own tokio runtime.

mod list;
mod requests;
mod resources;
mod selector;
mod serve;
mod status;
mod store;
mod watch;
#[cfg(test)]
mod wire_tests;

pub use requests::RequestRecord;
pub use resources::{RESOURCES, Resource};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::combinators::UnsyncBoxBody;
use requests::param;
use resources::Rid;
use serde::Deserialize;
use serde_json::Value;
use std::convert::Infallible;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use store::Store;
use tokio::sync::oneshot;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// How long [`ApiServer::restart`] refuses connections.
pub const RESTART_PAUSE: Duration = Duration::from_millis(300);

/// What the serving thread and the test share; it outlives restarts.
struct Shared {
    store: Mutex<Store>,
    /// Signalled after every change to the store, to wake the watches.
    changed: tokio::sync::watch::Sender<()>,
    log: Mutex<Vec<RequestRecord>>,
    bookmark_interval: Mutex<Duration>,
    token: String,
    addr: SocketAddr,
}

impl Shared {
    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn log(&self, record: RequestRecord) {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(record);
    }

    fn bookmark_interval(&self) -> Duration {
        *self
            .bookmark_interval
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self) {
        self.changed.send_replace(());
    }
}

/// The serving thread of one "incarnation" of the server.
struct Serving {
    stop: oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

/// The fake API server. Stops serving, closing every connection and joining its thread,
/// when dropped.
pub struct ApiServer {
    shared: Arc<Shared>,
    netns: Option<PathBuf>,
    serving: Mutex<Option<Serving>>,
}

impl ApiServer {
    /// Listens on 127.0.0.1:<free port> in the current netns.
    pub fn start() -> Result<ApiServer> {
        Self::launch(None)
    }

    /// Listens on 127.0.0.1:<free port> inside the netns at `netns`, where the agent runs.
    pub fn start_in(netns: &Path) -> Result<ApiServer> {
        Self::launch(Some(netns.to_path_buf()))
    }

    fn launch(netns: Option<PathBuf>) -> Result<ApiServer> {
        let listener = bind(netns.as_deref(), SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            changed: tokio::sync::watch::Sender::new(()),
            log: Mutex::default(),
            bookmark_interval: Mutex::new(Duration::from_secs(1)),
            token: token(),
            addr: listener.local_addr()?,
        });
        let serving = serve(listener, shared.clone())?;
        Ok(ApiServer {
            shared,
            netns,
            serving: Mutex::new(Some(serving)),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.shared.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.shared.addr)
    }

    /// The bearer token every request must carry (401 without it).
    pub fn token(&self) -> &str {
        &self.shared.token
    }

    /// A kubeconfig for this server: one cluster, user and context, plain HTTP.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sluice-test\n  cluster:\n    server: {}\n\
             users:\n- name: sluice-test\n  user:\n    token: {}\n\
             contexts:\n- name: sluice-test\n  context:\n    cluster: sluice-test\n    user: sluice-test\n    namespace: default\n\
             current-context: sluice-test\n",
            self.url(),
            self.shared.token
        )
    }

    /// Writes [`ApiServer::kubeconfig`] to `path`, with a `certificate-authority` beside it
    /// (`<path>.ca.pem`, a throwaway self-signed certificate). The server speaks plain HTTP,
    /// so the CA is never used; but kube-rs without one loads the system's roots, and the
    /// kernel VMs' guests have none.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let ca = path.with_extension("ca.pem");
        let certified = rcgen::generate_simple_self_signed(vec!["sluice-test".to_string()])
            .context("making the kubeconfig's CA")?;
        std::fs::write(&ca, certified.cert.pem())
            .with_context(|| format!("writing {}", ca.display()))?;
        let server = format!("    server: {}\n", self.url());
        let with_ca = format!("{server}    certificate-authority: {}\n", ca.display());
        let text = self.kubeconfig().replacen(&server, &with_ca, 1);
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    /// Creates or replaces every object in `yaml_or_json` (several YAML documents, or a
    /// `kind: List`), each taking the next resource version; an unchanged object takes none.
    /// Nothing is applied when any document is invalid. Returns the resource version after.
    pub fn apply(&self, yaml_or_json: &str) -> Result<u64> {
        let mut objects = Vec::new();
        for doc in documents(yaml_or_json)? {
            let api_version = doc
                .get("apiVersion")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let kind = doc.get("kind").and_then(Value::as_str).unwrap_or_default();
            let store = self.shared.store();
            let rid = Rid::by_type(api_version, kind).filter(|r| store.installed.contains(*r));
            let Some(rid) = rid else {
                bail!(
                    "no matches for kind {kind:?} in version {api_version:?} (served and installed)"
                );
            };
            objects.push((rid, doc));
        }
        let mut store = self.shared.store();
        let result = objects
            .into_iter()
            .try_for_each(|(rid, obj)| store.put(rid, obj));
        let rv = store.rv();
        drop(store);
        self.shared.notify();
        result.map(|()| rv)
    }

    /// Deletes an object. `kind` is e.g. `Pod`, or `HTTPRoute.sluice.dev` where the kind
    /// alone is ambiguous; `namespace` is ignored for cluster-scoped kinds.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<u64> {
        let key = key(kind, namespace, name)?;
        let mut store = self.shared.store();
        store.remove(&key)?;
        let rv = store.rv();
        drop(store);
        self.shared.notify();
        Ok(rv)
    }

    /// The stored object, as a `get` would return it.
    pub fn object(&self, kind: &str, namespace: &str, name: &str) -> Result<Option<Value>> {
        let key = key(kind, namespace, name)?;
        Ok(self.shared.store().get(&key).cloned())
    }

    /// The current resource version.
    pub fn resource_version(&self) -> u64 {
        self.shared.store().rv()
    }

    /// Installs a CRD group version, e.g. `("sluice.dev", "v1alpha1")`, as applying its
    /// CRDs would: served (empty) from now on, discovery included. CRDs start uninstalled,
    /// as on a fresh cluster.
    pub fn install(&self, group: &str, version: &str) -> Result<()> {
        self.shared.store().installed.set(group, version, true)?;
        self.shared.notify();
        Ok(())
    }

    /// Removes a CRD group version as deleting its CRDs would: its objects are deleted
    /// (watches see them go), then its watches end and it answers 404, discovery included.
    pub fn uninstall(&self, group: &str, version: &str) -> Result<()> {
        let mut store = self.shared.store();
        store.installed.set(group, version, false)?;
        let plurals = RESOURCES
            .iter()
            .filter(|r| (r.group, r.version) == (group, version));
        for rid in plurals.filter_map(|r| Rid::by_path(r.group, r.version, r.plural)) {
            store.remove_all(rid);
        }
        drop(store);
        self.shared.notify();
        Ok(())
    }

    /// Compacts the change history as etcd does: a watch, continue token or exact list from
    /// before now gets 410 Expired. Watches already open keep their events.
    pub fn compact(&self) {
        self.shared.store().compact();
    }

    /// How often watches that asked for bookmarks get one (1 s unless set).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *self
            .shared
            .bookmark_interval
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = interval;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.shared
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Like an API server restart: every connection and watch is closed, connections are
    /// refused for [`RESTART_PAUSE`], then it serves again on the same address with the same
    /// store.
    pub fn restart(&self) -> Result<()> {
        self.stop();
        std::thread::sleep(RESTART_PAUSE);
        self.serve_again()
    }

    /// The first half of a restart: closes everything and refuses connections until
    /// [`ApiServer::serve_again`]. The store can still be changed meanwhile, which is how a
    /// test makes changes a client cannot have seen.
    pub fn stop(&self) {
        let serving = self
            .serving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(serving) = serving {
            let _ = serving.stop.send(());
            let _ = serving.thread.join();
        }
    }

    /// Serves again on the same address after [`ApiServer::stop`] (a no-op while serving).
    pub fn serve_again(&self) -> Result<()> {
        let mut serving = self.serving.lock().unwrap_or_else(|p| p.into_inner());
        if serving.is_some() {
            return Ok(());
        }
        // The port is ours until someone else binds it; retry briefly in case of a race.
        let deadline = Instant::now() + Duration::from_secs(2);
        let listener = loop {
            match bind(self.netns.as_deref(), self.shared.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        *serving = Some(serve(listener, self.shared.clone())?);
        Ok(())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn key(kind: &str, namespace: &str, name: &str) -> Result<store::Key> {
    let rid = Rid::by_kind(kind)?;
    let namespace = if rid.res().namespaced { namespace } else { "" };
    Ok((rid, namespace.to_string(), name.to_string()))
}

/// std's bind sets SO_REUSEADDR, so the address can be bound again right after a restart
/// closed connections (which leaves them in TIME_WAIT on our side).
fn bind(netns: Option<&Path>, addr: SocketAddr) -> Result<TcpListener> {
    let bind = || {
        TcpListener::bind(addr).with_context(|| format!("binding the fake API server to {addr}"))
    };
    match netns {
        Some(path) => crate::netns::run_in(path, bind),
        None => bind(),
    }
}

fn serve(listener: TcpListener, shared: Arc<Shared>) -> Result<Serving> {
    listener.set_nonblocking(true)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (stop, stopped) = oneshot::channel();
    let thread = std::thread::Builder::new()
        .name("kube-api".into())
        .spawn(move || {
            let handle = move |req| serve::handle(req, shared.clone());
            runtime.block_on(crate::serve::until_stopped(
                "fake API server",
                listener,
                handle,
                stopped,
            ))
        })?;
    Ok(Serving { stop, thread })
}

/// A fixture from `tests/fixtures/kube/`, e.g. `pod-web.yaml`, for [`ApiServer::apply`].
pub fn fixture(name: &str) -> Result<String> {
    let path = crate::workspace_root()
        .join("tests/fixtures/kube")
        .join(name);
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

/// The objects in a YAML (or JSON) text: every non-empty document, with `kind: List`
/// documents (what `kubectl get -o yaml` prints for several objects) expanded.
fn documents(text: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = Value::deserialize(doc).context("parsing YAML")?;
        match value {
            Value::Null => {}
            Value::Object(ref o) if o.get("kind").and_then(Value::as_str) == Some("List") => {
                let items = o
                    .get("items")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                out.extend(items);
            }
            Value::Object(_) => out.push(value),
            other => bail!("a document is not an object: {other}"),
        }
    }
    Ok(out)
}

/// A token distinct per server, so a client configured for another one is refused.
fn token() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("sluice-test-{:x}-{n}-{nanos:08x}", std::process::id())
}
