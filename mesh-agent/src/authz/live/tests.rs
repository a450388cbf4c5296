//! Live-connection tests with real tasks waiting on `revoked()`, as the proxy's copy loops
//! will.
use std::time::Duration;

use tokio::{task::JoinHandle, time::timeout};

use super::*;
use crate::authz::testutil::{PEER, config, ip, workload};

const SETTLE: Duration = Duration::from_millis(50);
const LONG: Duration = Duration::from_secs(5);

fn back() -> Workload {
    workload("back", "api", &[("app", "api")])
}

fn conn(principal: Option<&str>) -> OwnedConnection {
    OwnedConnection {
        destination: back().key(),
        destination_port: 8080,
        source_ip: ip("10.1.0.5"),
        source_principal: principal.map(str::to_owned),
        source_namespace: principal.map(|_| "front".to_owned()),
    }
}

/// A task that holds the guard, as a connection's copy loop does, until it is revoked.
fn serve(guard: LiveGuard) -> JoinHandle<()> {
    tokio::spawn(async move {
        guard.revoked().await;
        assert!(guard.is_revoked());
    })
}

/// Config and policies with the `back/api` workload and these policies.
fn policy(authz_yaml: &str, peer_yaml: &str) -> (Policies, Config) {
    let config = config(vec![back()], authz_yaml, peer_yaml);
    (Policies::new(&config), config)
}

#[tokio::test]
async fn revokes_only_what_the_new_policy_denies() {
    let live = LiveConnections::new();
    let mtls = serve(live.register(conn(Some(PEER))));
    let plain = serve(live.register(conn(None)));
    assert_eq!(live.len(), 2);

    let (policies, config) = policy("[]", "[]");
    assert_eq!(live.revoke_denied(&policies, &config), 0);

    let allow_mtls =
        "[{name: a, namespace: back, rules: [{from: [{source: {principals: ['*']}}]}]}]";
    let (policies, config) = policy(allow_mtls, "[]");
    assert_eq!(live.revoke_denied(&policies, &config), 1);
    timeout(LONG, plain)
        .await
        .expect("plaintext revoked")
        .unwrap();
    // The task ended and dropped its guard.
    assert_eq!(live.len(), 1);
    tokio::time::sleep(SETTLE).await;
    assert!(!mtls.is_finished());
    mtls.abort();
}

#[tokio::test]
async fn a_destination_that_left_the_mesh_keeps_its_connections() {
    let live = LiveConnections::new();
    let task = serve(live.register(conn(Some(PEER))));
    let deny_all = "[{name: a, namespace: back}]";
    let config = config(vec![workload("back", "other", &[])], deny_all, "[]");
    assert_eq!(live.revoke_denied(&Policies::new(&config), &config), 0);
    tokio::time::sleep(SETTLE).await;
    assert!(
        !task.is_finished(),
        "a released pod's connection was closed"
    );
    task.abort();
}

#[tokio::test]
async fn strict_revokes_plaintext() {
    let live = LiveConnections::new();
    let mtls = serve(live.register(conn(Some(PEER))));
    let plain = serve(live.register(conn(None)));
    let (policies, config) = policy("[]", "[{name: s, namespace: back, mtls: {mode: STRICT}}]");
    assert_eq!(live.revoke_denied(&policies, &config), 1);
    timeout(LONG, plain)
        .await
        .expect("plaintext revoked")
        .unwrap();
    tokio::time::sleep(SETTLE).await;
    assert!(!mtls.is_finished());
    mtls.abort();
}

#[tokio::test]
async fn a_connection_is_counted_once() {
    let live = LiveConnections::new();
    let guard = live.register(conn(None));
    let (policies, config) = policy("[{name: a, namespace: back}]", "[]");
    assert_eq!(live.revoke_denied(&policies, &config), 1);
    assert_eq!(live.revoke_denied(&policies, &config), 0);
    // Revoked before anyone waited: `revoked()` completes at once, every time.
    timeout(LONG, guard.revoked()).await.expect("first");
    timeout(LONG, guard.revoked()).await.expect("second");
}

#[tokio::test]
async fn revoked_is_cancel_safe_in_select() {
    let live = LiveConnections::new();
    let guard = live.register(conn(None));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let task = tokio::spawn(async move {
        let mut ticks = 0;
        loop {
            // The `revoked()` future loses this race and is dropped on every tick.
            tokio::select! {
                _ = guard.revoked() => return ticks,
                Some(()) = rx.recv() => ticks += 1,
            }
        }
    });
    for _ in 0..3 {
        tx.send(()).await.unwrap();
    }
    tokio::time::sleep(SETTLE).await;
    let (policies, config) = policy("[{name: a, namespace: back}]", "[]");
    assert_eq!(live.revoke_denied(&policies, &config), 1);
    let ticks = timeout(LONG, task).await.expect("revoked").unwrap();
    assert_eq!(ticks, 3);
    assert!(live.is_empty());
}

#[tokio::test]
async fn dropping_the_guard_unregisters() {
    let live = LiveConnections::new();
    let a = live.register(conn(None));
    let b = live.register(conn(None));
    assert_eq!(b.connection(), &conn(None));
    assert_eq!(live.len(), 2);
    drop(a);
    assert_eq!(live.len(), 1);
    drop(b);
    assert!(live.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_waiters_across_threads() {
    let live = LiveConnections::new();
    let tasks: Vec<_> = (0..50)
        .map(|i| serve(live.register(conn((i % 2 == 0).then_some(PEER)))))
        .collect();
    let (policies, config) = policy("[]", "[{name: s, namespace: back, mtls: {mode: STRICT}}]");
    assert_eq!(live.revoke_denied(&policies, &config), 25);
    for (i, task) in tasks.into_iter().enumerate() {
        if i % 2 == 1 {
            timeout(LONG, task).await.expect("revoked").unwrap();
        } else {
            task.abort();
        }
    }
}
