//! The fake Kubernetes API server (`tests::kube_api`) judged by the real client: kube-rs
//! lists, watchers and reflectors against it must behave as they would against a cluster,
//! including recovery from compaction, a restart and a 410 on a watch. (What kube-rs hides,
//! the wire format itself, is checked over raw HTTP in `src/kube_api/wire_tests.rs`.)

use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, WatchEvent};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client, Config, ResourceExt};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::{Duration, Instant};
use tests::kube_api::{ApiServer, RequestRecord, fixture};
use tokio_stream::StreamExt;

async fn client_with(server: &ApiServer, token: &str) -> Client {
    let yaml = server.kubeconfig().replace(server.token(), token);
    let kubeconfig = Kubeconfig::from_yaml(&yaml).expect("kubeconfig");
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await;
    Client::try_from(config.expect("config")).expect("client")
}

async fn client(server: &ApiServer) -> Client {
    client_with(server, server.token()).await
}

/// Creates or replaces a small pod; returns the resource version after.
fn put(server: &ApiServer, name: &str, namespace: &str, node: &str, labels: Value) -> u64 {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]},
    });
    server.apply(&pod.to_string()).expect("apply")
}

/// The code and reason of a refusal.
fn refusal<T: Debug>(result: kube::Result<T>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(s)) => (s.code, s.reason),
        other => panic!("not refused: {other:?}"),
    }
}

async fn names(api: &Api<Pod>, lp: ListParams) -> Vec<String> {
    let list = api.list(&lp).await.expect("list");
    list.items.iter().map(|p| p.name_any()).collect()
}

/// Polls `f` every 50 ms until it holds, for at most 10 s.
async fn eventually(what: &str, mut f: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match f() {
            Ok(()) => return,
            Err(last) if Instant::now() > deadline => panic!("{what}: not within 10 s: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// Whether the reflector holds exactly the server's pods among `names` (name → version).
fn same(reader: &reflector::Store<Pod>, server: &ApiServer, names: &[&str]) -> Result<(), String> {
    let got: BTreeMap<String, String> = (reader.state().iter())
        .map(|p| (p.name_any(), p.resource_version().unwrap_or_default()))
        .collect();
    let on_server = |n: &&str| server.object("Pod", "shop", n).expect("a served kind");
    let version = |p: Value| {
        p["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string)
    };
    let want: BTreeMap<String, String> = (names.iter())
        .filter_map(|n| Some((n.to_string(), version(on_server(n)?)?)))
        .collect();
    (got == want)
        .then_some(())
        .ok_or(format!("store {got:?}, server {want:?}"))
}

/// Runs a reflector over `api` in the background; returns its store once it has listed.
async fn reflect(
    api: Api<Pod>,
    config: watcher::Config,
) -> (reflector::Store<Pod>, tokio::task::JoinHandle<()>) {
    let (reader, writer) = reflector::store();
    let stream = reflector(writer, watcher(api, config)).default_backoff();
    let task = tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while stream.next().await.is_some() {}
    });
    let ready = tokio::time::timeout(Duration::from_secs(10), reader.wait_until_ready()).await;
    ready.expect("listed within 10 s").expect("ready");
    (reader, task)
}

fn pod_lists(server: &ApiServer) -> usize {
    let log = server.requests();
    log.iter().filter(|r| r.is_list_of("pods")).count()
}

/// A watch resuming from before the compaction at `floor`.
fn stale_watch(r: &RequestRecord, floor: u64) -> bool {
    let rv = r
        .param("resourceVersion")
        .and_then(|v| v.parse::<u64>().ok());
    r.is_watch_of("pods") && rv.is_some_and(|v| v < floor)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixtures_list_with_field_and_label_selectors() {
    let server = ApiServer::start().unwrap();
    let fixtures = "namespace-shop pod-web pod-kube-proxy service-web endpointslice-web";
    for f in fixtures.split(' ').map(|f| format!("{f}.yaml")) {
        server.apply(&fixture(&f).unwrap()).expect(&f);
    }
    let api_1 = json!({"app": "api", "version": "v2"});
    put(&server, "api-1", "shop", "node-b", api_1);
    let client = client(&server).await;
    let pods: Api<Pod> = Api::all(client.clone());
    let lp = ListParams::default;
    let (web, proxy) = ("web-6f8d9c7b5-x2k4q", "kube-proxy-7kq2d");
    assert_eq!(
        names(&pods, lp().fields("spec.nodeName=node-a")).await,
        [proxy, web]
    );
    assert_eq!(
        names(&pods, lp().fields("spec.hostNetwork=true")).await,
        [proxy]
    );
    let sel = lp()
        .labels("app in (web,api),version!=v1")
        .fields("metadata.namespace==shop");
    assert_eq!(names(&pods, sel).await, ["api-1"]);
    let not_proxy = lp().labels("!k8s-app").fields("spec.nodeName!=node-b");
    assert_eq!(names(&pods, not_proxy).await, [web]);
    let unsupported = pods.list(&lp().fields("spec.containers=x")).await;
    assert_eq!(refusal(unsupported), (400, "BadRequest".into()));

    // The typed objects come through whole, with what the server fills in.
    let pod = Api::<Pod>::namespaced(client.clone(), "shop")
        .get(web)
        .await
        .unwrap();
    let ips = pod.status.and_then(|s| s.pod_ips).unwrap_or_default();
    let ips: Vec<String> = ips.into_iter().map(|i| i.ip).collect();
    assert_eq!(ips, ["10.244.1.7", "fd00:10:244:1::7"]);
    let spec = pod.spec.unwrap_or_default();
    let spec = (
        spec.node_name.as_deref(),
        spec.service_account_name.as_deref(),
        spec.host_network,
    );
    assert_eq!(spec, (Some("node-a"), Some("web"), None));
    let meta = &pod.metadata;
    assert_eq!(
        meta.uid.as_deref(),
        Some("9d3e6f0a-1b2c-4d5e-8f70-a1b2c3d4e5f6"),
        "a given uid is kept"
    );
    assert_eq!(meta.generation, Some(1));
    let rv = meta.resource_version.as_deref().map(str::parse::<u64>);
    assert!(
        matches!(rv, Some(Ok(v)) if v > 1 && v != 1342),
        "the server's own: {rv:?}"
    );
    let shop = Api::<Namespace>::all(client.clone())
        .get("shop")
        .await
        .unwrap();
    assert_eq!(
        shop.labels().get("sluice.dev/mesh").map(String::as_str),
        Some("enabled")
    );
    let svc = Api::<Service>::namespaced(client.clone(), "shop")
        .get("web")
        .await
        .unwrap();
    let cluster_ips = svc.spec.and_then(|s| s.cluster_ips).unwrap_or_default();
    assert_eq!(cluster_ips, ["10.96.142.17", "fd00:10:96::8e11"]);
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), "shop");
    let slices = slices
        .list(&lp().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
    let endpoint = &slices.items[0].endpoints[0];
    let target = endpoint.target_ref.as_ref().and_then(|r| r.name.as_deref());
    assert_eq!(
        (endpoint.node_name.as_deref(), target),
        (Some("node-a"), Some(web))
    );
    let missing = Api::<Pod>::namespaced(client, "shop").get("nope").await;
    assert_eq!(refusal(missing), (404, "NotFound".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reflector_follows_apply_modify_relabel_and_delete() {
    let server = ApiServer::start().unwrap();
    put(&server, "a", "shop", "n", json!({"app": "web"}));
    put(&server, "b", "shop", "n", json!({"app": "web"}));
    put(&server, "c", "shop", "n", json!({"app": "db"}));
    let api = Api::<Pod>::namespaced(client(&server).await, "shop");
    let (reader, task) = reflect(api, watcher::Config::default().labels("app=web")).await;
    eventually("a and b listed", || same(&reader, &server, &["a", "b"])).await;
    put(&server, "a", "shop", "n2", json!({"app": "web"}));
    eventually("a modified", || same(&reader, &server, &["a", "b"])).await;
    put(&server, "b", "shop", "n", json!({"app": "db"}));
    put(&server, "c", "shop", "n", json!({"app": "web"}));
    put(&server, "d", "other", "n", json!({"app": "web"}));
    eventually("b left, c joined, d elsewhere", || {
        same(&reader, &server, &["a", "c"])
    })
    .await;
    server.delete("Pod", "shop", "a").unwrap();
    eventually("a deleted", || same(&reader, &server, &["c"])).await;
    assert!(
        server.object("Pod", "shop", "b").unwrap().is_some(),
        "b is still on the server"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookmarks_arrive_at_the_current_version() {
    let server = ApiServer::start().unwrap();
    server.set_bookmark_interval(Duration::from_millis(200));
    let start = put(&server, "a", "shop", "n", json!({}));
    let api = Api::<Pod>::all(client(&server).await);
    let params = kube::api::WatchParams::default().timeout(2);
    let mut stream = std::pin::pin!(api.watch(&params, &start.to_string()).await.unwrap());
    let mut seen = Vec::new();
    while let Some(event) = stream.next().await {
        match event.unwrap() {
            WatchEvent::Bookmark(b) => seen.push(("BOOKMARK", b.metadata.resource_version)),
            WatchEvent::Added(p) => seen.push(("ADDED", p.resource_version().unwrap_or_default())),
            other => panic!("unexpected {other:?}"),
        }
        if seen.len() == 3 {
            put(&server, "b", "shop", "n", json!({}));
        }
    }
    let bookmarks = seen.iter().filter(|(t, _)| *t == "BOOKMARK").count();
    assert!(bookmarks >= 6, "a bookmark every 200 ms for 2 s: {seen:?}");
    let added = seen.iter().position(|(t, _)| *t == "ADDED");
    let added = added.expect("b added");
    let (before, after) = (start.to_string(), (start + 1).to_string());
    let versions: Vec<&String> = seen.iter().map(|(_, rv)| rv).collect();
    let want: Vec<&String> = (0..seen.len())
        .map(|i| if i < added { &before } else { &after })
        .collect();
    assert_eq!(
        versions, want,
        "bookmarks at a, then b added, then at b: {seen:?}"
    );
}

/// Changes made while the client cannot hear, then a compaction, leave its resource version
/// too old when the server is back: it must get 410, list again, and end up exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_compaction_and_a_restart_the_watcher_lists_again_exactly() {
    let server = ApiServer::start().unwrap();
    for name in ["p1", "p2", "p3"] {
        put(&server, name, "shop", "n", json!({}));
    }
    let (reader, task) = reflect(Api::all(client(&server).await), watcher::Config::default()).await;
    let all = ["p1", "p2", "p3", "p4"];
    eventually("listed", || same(&reader, &server, &all)).await;

    server.stop();
    let down = server.requests().len();
    server.delete("Pod", "shop", "p1").unwrap();
    put(&server, "p2", "shop", "other-node", json!({}));
    put(&server, "p4", "shop", "n", json!({}));
    server.compact();
    let floor = server.resource_version();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.serve_again().unwrap();

    eventually("the store matches the server", || {
        same(&reader, &server, &all)
    })
    .await;
    let after = server.requests().split_off(down);
    let stale = after.iter().position(|r| stale_watch(r, floor));
    let stale = stale.unwrap_or_else(|| panic!("no watch from before the compaction: {after:#?}"));
    assert!(
        after[stale..].iter().any(|r| r.is_list_of("pods")),
        "no list after the 410: {after:#?}"
    );
    assert_eq!(
        pod_lists(&server),
        2,
        "one list at the start, one after the 410"
    );
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_on_the_watch_stream_makes_the_watcher_list_again() {
    let server = ApiServer::start().unwrap();
    put(&server, "a", "shop", "n", json!({}));
    // No bookmarks: the client's version stays at its last pod event while namespaces
    // change; when its 1 s watch ends, it resumes from before the compaction.
    let config = watcher::Config::default().disable_bookmarks().timeout(1);
    let (reader, task) = reflect(Api::namespaced(client(&server).await, "shop"), config).await;
    put(&server, "b", "shop", "n", json!({}));
    for i in 0..3 {
        let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": format!("ns-{i}")}});
        server.apply(&ns.to_string()).unwrap();
    }
    server.compact();
    let floor = server.resource_version();
    let relisted = || {
        (pod_lists(&server) >= 2)
            .then_some(())
            .ok_or("one list".into())
    };
    eventually("a second list", relisted).await;
    let log = server.requests();
    let stale = log.iter().position(|r| stale_watch(r, floor));
    let relist = log.iter().rposition(|r| r.is_list_of("pods"));
    assert!(
        matches!((stale, relist), (Some(w), Some(l)) if w < l),
        "{log:#?}"
    );
    eventually("a and b", || same(&reader, &server, &["a", "b"])).await;
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_of_one_return_everything_once_from_one_snapshot() {
    let server = ApiServer::start().unwrap();
    for name in ["p1", "p2", "p3", "p4", "p5"] {
        put(&server, name, "shop", "n", json!({}));
    }
    let api = Api::<Pod>::all(client(&server).await);
    let (mut names, mut versions, mut token) = (Vec::new(), Vec::new(), None);
    loop {
        let mut lp = ListParams::default().limit(1);
        lp.continue_token = token;
        let page = api.list(&lp).await.unwrap();
        assert_eq!(page.items.len(), 1, "{page:?}");
        names.push(page.items[0].name_any());
        versions.push(page.metadata.resource_version.clone());
        if names.len() == 2 {
            server.delete("Pod", "shop", "p5").unwrap();
            put(&server, "p0", "shop", "n", json!({}));
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            break;
        }
    }
    assert_eq!(
        names,
        ["p1", "p2", "p3", "p4", "p5"],
        "the first page's snapshot"
    );
    assert!(versions.windows(2).all(|w| w[0] == w[1]), "{versions:?}");

    let (reader, task) = reflect(api.clone(), watcher::Config::default().page_size(1)).await;
    assert_eq!(
        same(&reader, &server, &["p0", "p1", "p2", "p3", "p4", "p5"]),
        Ok(())
    );
    task.abort();

    let first = api.list(&ListParams::default().limit(2)).await.unwrap();
    put(&server, "p9", "shop", "n", json!({}));
    server.compact();
    let token = first.metadata.continue_.unwrap_or_default();
    let expired = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await;
    assert_eq!(refusal(expired), (410, "Expired".into()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_the_token_are_refused() {
    let server = ApiServer::start().unwrap();
    let wrong = client_with(&server, "not-the-token").await;
    let all = ListParams::default();
    let listed = Api::<Pod>::all(wrong.clone()).list(&all).await;
    assert_eq!(refusal(listed), (401, "Unauthorized".into()));
    assert_eq!(refusal(wrong.list_core_api_versions().await).0, 401);
    let right = Api::<Pod>::all(client(&server).await).list(&all).await;
    assert!(right.is_ok(), "{right:?}");
    let log = server.requests();
    assert_eq!(
        log.iter().map(|r| r.status).collect::<Vec<_>>(),
        [401, 401, 200],
        "{log:#?}"
    );
}
