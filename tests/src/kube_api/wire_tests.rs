//! The server over raw HTTP, for what kube-rs hides: the events a watch really carries
//! (selector edges as ADDED/DELETED, the ERROR event's `Status`, a streaming list's end
//! bookmark), list items without `kind`, error `Status` objects, discovery and CRD groups
//! coming and going, and the lifecycle controls (restart, stop, drop).

use super::{ApiServer, fixture};
use serde_json::{Value, json};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn put(server: &ApiServer, name: &str, node: &str, labels: Value) -> String {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "labels": labels},
        "spec": {"nodeName": node},
    });
    server.apply(&pod.to_string()).expect("apply").to_string()
}

/// A raw HTTP/1.0 request (the body ends when the server closes): status and body.
fn raw(server: &ApiServer, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(server.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let (addr, token) = (server.addr(), server.token());
    let head = format!(
        "{method} {path} HTTP/1.0\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).expect("write");
    // Read until the server closes; a reset after the data (a restart) still keeps it.
    let mut bytes = Vec::new();
    let _ = s.read_to_end(&mut bytes);
    let answer = String::from_utf8_lossy(&bytes);
    let (head, body) = answer.split_once("\r\n\r\n").expect("a head");
    let status = head.split_whitespace().nth(1).and_then(|c| c.parse().ok());
    (status.expect("a status"), body.to_string())
}

fn get(server: &ApiServer, path: &str) -> (u16, Value) {
    let (status, body) = raw(server, "GET", path);
    let doc = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, doc)
}

/// A watch's events, read until the stream ends.
fn events(server: &ApiServer, path: &str) -> Vec<Value> {
    let (status, body) = raw(server, "GET", path);
    assert_eq!(status, 200, "{path}: {body}");
    let event = |l: &str| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
    body.lines().map(event).collect()
}

/// (type, name, resourceVersion) of each event.
fn summary(events: &[Value]) -> Vec<(String, String, String)> {
    let text = |e: &Value, p: &str| {
        e.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let one = |e: &Value| {
        let object = |f: &str| text(e, &format!("/object/metadata/{f}"));
        (text(e, "/type"), object("name"), object("resourceVersion"))
    };
    events.iter().map(one).collect()
}

#[test]
fn watches_replay_history_through_selectors_and_expire_after_compaction() {
    let server = ApiServer::start().unwrap();
    server.set_bookmark_interval(Duration::from_secs(60));
    let from = put(&server, "x", "n", json!({"app": "db"}));
    let added = put(&server, "x", "n", json!({"app": "web"}));
    let modified = put(&server, "x", "n2", json!({"app": "web"}));
    let left = put(&server, "x", "n2", json!({"app": "db"}));
    let back = put(&server, "x", "n2", json!({"app": "web"}));
    let deleted = server.delete("Pod", "shop", "x").unwrap().to_string();
    let query = format!("watch=1&labelSelector=app%3Dweb&timeoutSeconds=1&resourceVersion={from}");
    let got = events(&server, &format!("/api/v1/namespaces/shop/pods?{query}"));
    let x = |t: &str, rv: &String| (t.to_string(), "x".to_string(), rv.clone());
    let want = [
        x("ADDED", &added),
        x("MODIFIED", &modified),
        x("DELETED", &left),
    ];
    let want = [&want[..], &[x("ADDED", &back), x("DELETED", &deleted)]].concat();
    assert_eq!(
        summary(&got),
        want,
        "leaving the selector is DELETED, entering it ADDED"
    );

    let y = put(&server, "y", "n", json!({}));
    let initial = events(
        &server,
        "/api/v1/pods?watch=true&timeoutSeconds=1&resourceVersion=0",
    );
    assert_eq!(summary(&initial), [("ADDED".into(), "y".into(), y.clone())]);
    let streaming = "/api/v1/pods?watch=1&timeoutSeconds=1&sendInitialEvents=true\
                     &resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&resourceVersion=";
    let got = events(&server, streaming);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[1]["type"].as_str(), got[1]["object"]["kind"].as_str()),
        (Some("BOOKMARK"), Some("Pod"))
    );
    let metadata = &got[1]["object"]["metadata"];
    assert_eq!(
        metadata["annotations"]["k8s.io/initial-events-end"], "true",
        "{got:?}"
    );
    assert_eq!(metadata["resourceVersion"], y);

    server.compact();
    let got = events(
        &server,
        &format!("/api/v1/pods?watch=1&resourceVersion={from}"),
    );
    let [error] = got.as_slice() else {
        panic!("one event: {got:?}")
    };
    assert_eq!(
        (error["type"].as_str(), error["object"]["kind"].as_str()),
        (Some("ERROR"), Some("Status"))
    );
    let status = &error["object"];
    assert_eq!(
        (status["code"].as_u64(), status["reason"].as_str()),
        (Some(410), Some("Expired"))
    );
    let message = status["message"].as_str().unwrap_or_default();
    assert_eq!(message, format!("too old resource version: {from} ({y})"));
    let from_now = events(
        &server,
        &format!("/api/v1/pods?watch=1&timeoutSeconds=1&resourceVersion={y}"),
    );
    assert!(
        from_now.is_empty(),
        "the compaction itself can be resumed from: {from_now:?}"
    );
}

#[test]
fn lists_errors_and_discovery_look_like_the_real_servers() {
    let server = ApiServer::start().unwrap();
    server.apply(&fixture("pod-web.yaml").unwrap()).unwrap();
    server.install("gateway.networking.k8s.io", "v1").unwrap();
    let route = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"}});
    server.apply(&route.to_string()).unwrap();
    let (status, pods) = get(&server, "/api/v1/namespaces/shop/pods");
    assert_eq!(
        (status, pods["kind"].as_str(), pods["apiVersion"].as_str()),
        (200, Some("PodList"), Some("v1"))
    );
    assert_eq!(
        pods["metadata"]["resourceVersion"],
        server.resource_version().to_string()
    );
    assert!(
        pods["items"][0].get("kind").is_none(),
        "built-in items carry no kind: {pods}"
    );
    let (_, routes) = get(
        &server,
        "/apis/gateway.networking.k8s.io/v1/namespaces/default/httproutes",
    );
    assert_eq!(routes["items"][0]["kind"], "HTTPRoute", "CRD items do");
    let (status, missing) = get(&server, "/api/v1/namespaces/shop/pods/nope");
    let message = missing["message"].as_str();
    assert_eq!(
        (status, missing["kind"].as_str(), message),
        (404, Some("Status"), Some("pods \"nope\" not found"))
    );
    assert_eq!(get(&server, "/api/v1/widgets").0, 404);
    assert_eq!(
        get(&server, "/apis/sluice.dev/v1alpha1").0,
        404,
        "not installed"
    );
    assert_eq!(get(&server, "/api/v1/pods?labelSelector=app+in+()").0, 400);
    let (status, rv) = get(
        &server,
        "/api/v1/pods?resourceVersion=999&resourceVersionMatch=NotOlderThan",
    );
    assert_eq!((status, rv["reason"].as_str()), (504, Some("Timeout")));
    assert_eq!(
        raw(
            &server,
            "DELETE",
            "/api/v1/namespaces/shop/pods/web-6f8d9c7b5-x2k4q"
        )
        .0,
        405
    );
    assert_eq!(get(&server, "/api").1["versions"], json!(["v1"]));
    let (_, core) = get(&server, "/api/v1");
    let resources = core["resources"].as_array().cloned().unwrap_or_default();
    let namespaces = resources.iter().find(|r| r["name"] == "namespaces");
    assert_eq!(namespaces.map(|n| &n["namespaced"]), Some(&json!(false)));
    assert_eq!(get(&server, "/version").1["major"], "1");
    let log = server.requests();
    assert!(
        log.iter()
            .any(|r| r.is_list_of("httproutes") && r.status == 200),
        "{log:#?}"
    );
}

#[test]
fn a_restart_closes_watches_and_keeps_the_store_and_address() {
    let server = ApiServer::start().unwrap();
    put(&server, "a", "n", json!({}));
    let path = "/api/v1/pods?watch=1&timeoutSeconds=60";
    let (took, got) = std::thread::scope(|s| {
        let watch = s.spawn(|| (Instant::now(), events(&server, path)));
        std::thread::sleep(Duration::from_millis(300));
        server.restart().unwrap();
        let (started, got) = watch.join().unwrap();
        (started.elapsed(), got)
    });
    assert!(
        took < Duration::from_secs(5),
        "the watch ended with the restart: {took:?}"
    );
    assert_eq!(summary(&got).len(), 1, "a, as ADDED: {got:?}");
    assert_eq!(get(&server, "/api/v1/namespaces/shop/pods/a").0, 200);
    server.stop();
    assert!(
        TcpStream::connect(server.addr()).is_err(),
        "refused while stopped"
    );
    put(&server, "b", "n", json!({}));
    server.serve_again().unwrap();
    assert_eq!(get(&server, "/api/v1/namespaces/shop/pods/b").0, 200);
    let addr = server.addr();
    drop(server);
    assert!(TcpStream::connect(addr).is_err(), "closed on drop");
}

#[test]
fn crd_groups_are_served_only_while_installed() {
    let server = ApiServer::start().unwrap();
    let policy = r#"{"apiVersion": "sluice.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "p", "namespace": "shop"}, "spec": {"action": "DENY"}}"#;
    assert!(server.apply(policy).is_err(), "no CRD at first, no object");
    let (sluice, policies) = (
        "/apis/sluice.dev/v1alpha1",
        "/apis/sluice.dev/v1alpha1/authorizationpolicies",
    );
    assert_eq!(
        (get(&server, sluice).0, get(&server, policies).0),
        (404, 404)
    );
    let groups = |server: &ApiServer| {
        let groups = get(server, "/apis").1["groups"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        groups
            .iter()
            .map(|g| g["name"].as_str().unwrap_or("").to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(groups(&server), ["discovery.k8s.io"]);
    server.install("sluice.dev", "v1alpha1").unwrap();
    server.install("gateway.networking.k8s.io", "v1").unwrap();
    server.apply(policy).unwrap();
    assert_eq!(
        get(&server, policies).1["items"].as_array().map(Vec::len),
        Some(1)
    );
    assert_eq!(
        groups(&server),
        [
            "discovery.k8s.io",
            "gateway.networking.k8s.io",
            "sluice.dev"
        ]
    );
    let resources = get(&server, sluice).1["resources"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let plurals: Vec<&str> = resources
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(
        plurals,
        ["authorizationpolicies", "peerauthentications", "httproutes"]
    );

    let watching = std::thread::scope(|s| {
        let watch = s.spawn(|| events(&server, &format!("{policies}?watch=1&resourceVersion=0")));
        std::thread::sleep(Duration::from_millis(300));
        server.uninstall("sluice.dev", "v1alpha1").unwrap();
        watch.join().unwrap()
    });
    let got: Vec<(String, String)> = summary(&watching)
        .into_iter()
        .map(|(t, n, _)| (t, n))
        .collect();
    assert_eq!(
        got,
        [("ADDED".into(), "p".into()), ("DELETED".into(), "p".into())],
        "then the watch ends"
    );
    assert_eq!(
        (get(&server, sluice).0, get(&server, policies).0),
        (404, 404)
    );
    assert_eq!(
        groups(&server),
        ["discovery.k8s.io", "gateway.networking.k8s.io"]
    );
    assert!(server.apply(policy).is_err(), "no CRD, no object");
    server.install("sluice.dev", "v1alpha1").unwrap();
    assert_eq!(
        get(&server, policies).1["items"],
        json!([]),
        "its objects went with it"
    );
}
