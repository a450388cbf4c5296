//! The agent in Kubernetes mode, each scenario in every redirect mode: it learns pods,
//! namespaces, services and policies from an API server (`tests::kube_api`, real list and
//! watch over HTTP through kube-rs), finds each enrolled pod's cgroup (laid out as the
//! kubelet lays it out) and netns on the node, and captures it. Capture is judged as in the
//! other suites: the proxy opened the connection, and the app saw the addresses it dialled.

use serde_json::json;
use std::collections::BTreeSet;
use std::time::Duration;
use tests::cni::{Sandbox, net_config, run_plugin};
use tests::kube::{KubeBed, KubePod, MESH_LABEL};
use tests::netfilter::expect_rules;
use tests::scenario::{addr, assert_transparent};
use tests::{Agent, AgentConfig, Mode, Snapshot, TestCa, Workload, poll_until};

tests::in_every_mode!(
    a_labelled_pod_is_captured_and_released_when_unlabelled,
    a_namespace_label_enrolls_its_pods_and_a_pod_can_opt_out,
    a_deleted_pod_is_released_and_nothing_is_left,
    an_api_server_restart_and_410_lose_and_double_nothing,
    a_policy_change_applies_to_the_next_connection,
    a_pod_waits_for_a_process_then_enrolls,
    a_service_answers_on_its_cluster_ip,
    kubelet_probes_reach_a_strict_pod,
    the_cni_add_returns_once_the_pod_is_captured,
);

const ENABLED: (&str, &str) = (MESH_LABEL, "enabled");
const DISABLED: (&str, &str) = (MESH_LABEL, "disabled");

/// The pods `/config_dump` says are captured, as `namespace/name`.
fn captured(agent: &Agent) -> BTreeSet<String> {
    let dump = agent.config_dump().unwrap();
    let pods = dump["capturedPods"].as_array().cloned().unwrap_or_default();
    pods.iter()
        .map(|p| {
            let w = &p["workload"];
            format!(
                "{}/{}",
                w["namespace"].as_str().unwrap_or_default(),
                w["name"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

fn wait_captured(agent: &Agent, want: &[&str]) {
    let want: BTreeSet<String> = want.iter().map(|s| s.to_string()).collect();
    poll_until(Duration::from_secs(10), "the captured pods", || {
        Ok((captured(agent) == want).then_some(()))
    })
    .unwrap_or_else(|e| {
        panic!(
            "{e:#}: want {want:?}, have {:?}\nsource: {}\nagent log:\n{}",
            captured(agent),
            agent
                .config_dump()
                .map(|d| d["source"].to_string())
                .unwrap_or_default(),
            agent.log_tail(40)
        )
    });
}

/// Whether one dial from `from` to `to`:8080 was captured; the dial must work either way.
fn captured_dial(agent: &Agent, from: &KubePod, to: &KubePod) -> bool {
    let before = Snapshot::take(agent).unwrap();
    let target = addr(to.pod.ip(), 8080);
    let r = from.pod.dial_one(target, 1000).unwrap();
    assert_transparent(&r, from.pod.ip().into(), target);
    before.opened_since(&Snapshot::take(agent).unwrap(), from.pod.name()) > 0.0
}

/// What `expect_rules` needs to know: which pods this node captures, as workloads.
fn shadow(bed: &KubeBed, mode: Mode, enrolled: &[&KubePod]) -> AgentConfig {
    enrolled.iter().fold(bed.config(mode), |cfg, p| {
        cfg.with(Workload::enrolled(&p.pod).namespace(&p.namespace))
    })
}

/// Scenario 1: a pod labelled `sluice.dev/mesh: enabled` is found on the node (systemd
/// cgroup driver) and captured; when the label goes, it is released, and the rules with it.
fn a_labelled_pod_is_captured_and_released_when_unlabelled(mode: Mode) {
    let bed = KubeBed::new().unwrap();
    bed.namespace("shop", &[]).unwrap();
    let a = bed.pod("client-a", "shop", true).unwrap();
    let b = bed.pod("server-b", "shop", false).unwrap();
    let _server = b.pod.serve(8080, "server-b").unwrap();
    bed.apply_pod(&a, &[("app", "client"), ENABLED]).unwrap();
    bed.apply_pod(&b, &[("app", "server")]).unwrap();
    let agent = Agent::start(&bed.node, bed.config(mode)).unwrap();

    wait_captured(&agent, &["shop/client-a"]);
    assert!(
        captured_dial(&agent, &a, &b),
        "the labelled pod is not captured"
    );
    expect_rules(&bed.node, &shadow(&bed, mode, &[&a])).unwrap();

    bed.apply_pod(&a, &[("app", "client")]).unwrap();
    wait_captured(&agent, &[]);
    assert!(
        !captured_dial(&agent, &a, &b),
        "captured after its label went"
    );
    expect_rules(&bed.node, &bed.config(mode)).unwrap();
}

/// Scenario 2: a namespace's label enrolls every pod in it (cgroupfs driver here) but one
/// labelled `disabled`; a pod of another namespace stays out.
fn a_namespace_label_enrolls_its_pods_and_a_pod_can_opt_out(mode: Mode) {
    let bed = KubeBed::new().unwrap();
    bed.namespace("shop", &[ENABLED]).unwrap();
    bed.namespace("lab", &[]).unwrap();
    let a = bed.pod("client-a", "shop", false).unwrap();
    let out = bed.pod("opted-out", "shop", true).unwrap();
    let other = bed.pod("other-ns", "lab", false).unwrap();
    let b = bed.pod("server-b", "lab", true).unwrap();
    let _server = b.pod.serve(8080, "server-b").unwrap();
    bed.apply_pod(&a, &[]).unwrap();
    bed.apply_pod(&out, &[DISABLED]).unwrap();
    bed.apply_pod(&other, &[]).unwrap();
    bed.apply_pod(&b, &[]).unwrap();
    let agent = Agent::start(&bed.node, bed.config(mode)).unwrap();

    wait_captured(&agent, &["shop/client-a"]);
    assert!(captured_dial(&agent, &a, &b));
    assert!(
        !captured_dial(&agent, &out, &b),
        "a pod labelled disabled was captured"
    );
    assert!(
        !captured_dial(&agent, &other, &b),
        "a pod of an unlabelled namespace was captured"
    );

    // The namespace label going releases its pods.
    bed.namespace("shop", &[]).unwrap();
    wait_captured(&agent, &[]);
    expect_rules(&bed.node, &bed.config(mode)).unwrap();
}

/// Scenario 3: a captured pod's object is deleted: released, no rules, no eBPF enrollment
/// left for its cgroup.
fn a_deleted_pod_is_released_and_nothing_is_left(mode: Mode) {
    let bed = KubeBed::new().unwrap();
    bed.namespace("shop", &[ENABLED]).unwrap();
    let a = bed.pod("client-a", "shop", true).unwrap();
    bed.apply_pod(&a, &[]).unwrap();
    let agent = Agent::start(&bed.node, bed.config(mode)).unwrap();
    wait_captured(&agent, &["shop/client-a"]);

    bed.delete_pod(&a).unwrap();
    wait_captured(&agent, &[]);
    expect_rules(&bed.node, &bed.config(mode)).unwrap();
    if mode == Mode::Ebpf {
        let ebpf = agent.debug_ebpf().unwrap();
        let enrolled = ebpf["enrolled"]
            .as_array()
            .expect("/debug/ebpf lists enrolled cgroups");
        assert!(enrolled.is_empty(), "eBPF enrollment left behind: {ebpf:#}");
    }
}

/// Scenario 4: the API server goes away; meanwhile a second pod is labelled and the
/// server's history is compacted, so the agent's watch resumes into `410 Gone` and must
/// list again. The first pod stays captured throughout; afterwards both are, once each.
fn an_api_server_restart_and_410_lose_and_double_nothing(mode: Mode) {
    let bed = KubeBed::new().unwrap();
    bed.namespace("shop", &[]).unwrap();
    let a = bed.pod("client-a", "shop", true).unwrap();
    let c = bed.pod("client-c", "shop", false).unwrap();
    let b = bed.pod("server-b", "shop", false).unwrap();
    let _server = b.pod.serve(8080, "server-b").unwrap();
    bed.apply_pod(&a, &[ENABLED]).unwrap();
    bed.apply_pod(&c, &[]).unwrap();
    bed.apply_pod(&b, &[]).unwrap();
    let agent = Agent::start(&bed.node, bed.config(mode)).unwrap();
    wait_captured(&agent, &["shop/client-a"]);
    let lists_before = pod_lists(&bed);

    bed.api.stop();
    bed.apply_pod(&c, &[ENABLED]).unwrap();
    bed.api.compact();
    assert!(
        captured_dial(&agent, &a, &b),
        "capture lost while the API server is away"
    );
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        captured_dial(&agent, &a, &b),
        "capture lost while the API server is away"
    );
    bed.api.serve_again().unwrap();

    wait_captured(&agent, &["shop/client-a", "shop/client-c"]);
    assert!(captured_dial(&agent, &c, &b));
    assert!(
        pod_lists(&bed) > lists_before,
        "the agent did not list pods again after 410 Gone"
    );
    let dump = agent.config_dump().unwrap();
    let workloads = dump["config"]["workloads"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let names: Vec<&str> = workloads
        .iter()
        .filter_map(|w| w["name"].as_str())
        .collect();
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(
        names.len(),
        unique.len(),
        "a workload is doubled: {names:?}"
    );
    assert_eq!(names.len(), 3, "{names:?}");
}

fn pod_lists(bed: &KubeBed) -> usize {
    let lists = bed.api.requests();
    lists.iter().filter(|r| r.is_list_of("pods")).count()
}

/// Scenario 5: an AuthorizationPolicy (Sluice's CRD) denying the client's address applies
/// to the next connection to the enrolled server, and deleting it lets the next one in.
fn a_policy_change_applies_to_the_next_connection(mode: Mode) {
    let bed = KubeBed::new().unwrap();
    bed.namespace("shop", &[ENABLED]).unwrap();
    let a = bed.pod("client-a", "shop", true).unwrap();
    let b = bed.pod("server-b", "shop", false).unwrap();
    let server = b.pod.serve(8080, "server-b").unwrap();
    bed.apply_pod(&a, &[]).unwrap();
    bed.apply_pod(&b, &[("app", "server")]).unwrap();
    let agent = Agent::start(&bed.node, bed.config(mode)).unwrap();
    wait_captured(&agent, &["shop/client-a", "shop/server-b"]);
    let target = addr(b.pod.ip(), 8080);
    assert_eq!(a.pod.dial_one(target, 1000).unwrap().result, "ok");

    let policy = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": { "name": "no-client-a", "namespace": "shop" },
        "spec": {
            "selector": { "matchLabels": { "app": "server" } },
            "action": "DENY",
            "rules": [{ "from": [{ "source": { "ipBlocks": [a.pod.ip().to_string()] } }] }],
        },
    });
    bed.api.apply(&policy.to_string()).unwrap();
    poll_until(
        Duration::from_secs(10),
        "the DENY policy is in force",
        || {
            let r = a.pod.dial_one(target, 1000)?;
            Ok((r.result != "ok").then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
    let accepted = server.accepted().len();
    let r = a.pod.dial_one(target, 1000).unwrap();
    assert_ne!(r.result, "ok", "allowed again under DENY: {r:?}");
    assert_eq!(
        server.accepted().len(),
        accepted,
        "a denied connection reached the app"
    );

    bed.api
        .delete("AuthorizationPolicy", "shop", "no-client-a")
        .unwrap();
    poll_until(
        Duration::from_secs(10),
        "the policy's deletion is in force",
        || Ok((a.pod.dial_one(target, 1000)?.result == "ok").then_some(())),
    )
    .unwrap();
}

/// Scenario 6: an enrolled pod whose cgroup has no process yet (its sandbox is starting)
/// waits, with the reason in `/config_dump`, and is captured once a process is there.
fn a_pod_waits_for_a_process_then_enrolls(mode: Mode) {
    let bed = KubeBed::new().unwrap();
    bed.namespace("shop", &[]).unwrap();
    let a = bed.pod_without_process("client-a", "shop", true).unwrap();
    bed.apply_pod(&a, &[ENABLED]).unwrap();
    let agent = Agent::start(&bed.node, bed.config(mode)).unwrap();
    let waiting = poll_until(Duration::from_secs(10), "client-a waiting", || {
        let dump = agent.config_dump()?;
        let waiting = dump["source"]["waitingPods"].clone();
        Ok(waiting
            .as_array()
            .is_some_and(|w| !w.is_empty())
            .then_some(waiting))
    })
    .unwrap();
    assert!(
        waiting.to_string().contains("shop/client-a") && waiting.to_string().contains("no process"),
        "{waiting}"
    );
    assert!(captured(&agent).is_empty());

    bed.keep_populated(&a.pod).unwrap();
    wait_captured(&agent, &["shop/client-a"]);
}

/// Scenario 7: a Service and its EndpointSlice from the API: an enrolled client's
/// connection to the cluster IP (which no interface owns) reaches the endpoint through the
/// proxy, with the `targetPort` named in the Service resolved through the slice.
fn a_service_answers_on_its_cluster_ip(mode: Mode) {
    let bed = KubeBed::new().unwrap();
    bed.namespace("shop", &[ENABLED]).unwrap();
    let a = bed.pod("client-a", "shop", true).unwrap();
    let b = bed.pod("server-b", "lab", false).unwrap();
    let server = b.pod.serve(8080, "server-b").unwrap();
    bed.namespace("lab", &[]).unwrap();
    bed.apply_pod(&a, &[]).unwrap();
    bed.apply_pod(&b, &[("app", "web")]).unwrap();
    let vip = "10.96.77.10";
    let service = json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": { "name": "web", "namespace": "lab" },
        "spec": {
            "type": "ClusterIP",
            "clusterIP": vip,
            "clusterIPs": [vip],
            "selector": { "app": "web" },
            "ports": [{ "name": "tcp-web", "port": 80, "targetPort": "web", "protocol": "TCP" }],
        },
    });
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": "web-x1",
            "namespace": "lab",
            "labels": { "kubernetes.io/service-name": "web" },
        },
        "addressType": "IPv4",
        "ports": [{ "name": "tcp-web", "port": 8080, "protocol": "TCP" }],
        "endpoints": [{ "addresses": [b.pod.ip().to_string()], "conditions": { "ready": true } }],
    });
    bed.api.apply(&service.to_string()).unwrap();
    bed.api.apply(&slice.to_string()).unwrap();
    let agent = Agent::start(&bed.node, bed.config(mode)).unwrap();
    wait_captured(&agent, &["shop/client-a"]);

    let target = addr(vip.parse::<std::net::Ipv4Addr>().unwrap(), 80);
    let r = poll_until(Duration::from_secs(10), "the cluster IP answers", || {
        let r = a.pod.dial_one(target, 1000)?;
        Ok((r.result == "ok").then_some(r))
    })
    .unwrap_or_else(|e| panic!("{e:#}\nagent log:\n{}", agent.log_tail(30)));
    assert_eq!((r.sent, r.received), (1000, 1000));
    assert_eq!(r.peer.as_deref(), Some("10.96.77.10:80"), "{r:?}");
    let accepted = server.accepted();
    assert!(
        accepted
            .iter()
            .any(|c| c.peer.starts_with(&format!("{}:", a.pod.ip()))),
        "{accepted:?}"
    );
}

/// Scenario 8: under `STRICT` (a PeerAuthentication resource), the node's own plaintext
/// connection to the pod's probe port (the fixture's readiness probe, `httpGet` on 8080),
/// as the kubelet's, reaches the app; the node on another port, and a pod outside the mesh
/// on the probe port, are refused.
fn kubelet_probes_reach_a_strict_pod(mode: Mode) {
    let ca = TestCa::new().unwrap();
    let bed = KubeBed::new().unwrap();
    bed.namespace("shop", &[ENABLED]).unwrap();
    bed.namespace("lab", &[]).unwrap();
    let b = bed.pod("server-b", "shop", true).unwrap();
    let outside = bed.pod("outside", "lab", false).unwrap();
    let probed = b.pod.serve(8080, "server-b").unwrap();
    let _other = b.pod.serve(9090, "server-b-admin").unwrap();
    bed.apply_pod(&b, &[]).unwrap();
    bed.apply_pod(&outside, &[]).unwrap();
    let strict = json!({
        "apiVersion": "sluice.dev/v1alpha1",
        "kind": "PeerAuthentication",
        "metadata": { "name": "default", "namespace": "shop" },
        "spec": { "mtls": { "mode": "STRICT" } },
    });
    bed.api.apply(&strict.to_string()).unwrap();
    let agent = Agent::start(&bed.node, bed.config(mode).identity(ca.identity())).unwrap();
    wait_captured(&agent, &["shop/server-b"]);
    let probe_port = addr(b.pod.ip(), 8080);

    let r = outside.pod.dial_one(probe_port, 1000).unwrap();
    assert_ne!(
        r.result, "ok",
        "plaintext from outside the mesh under STRICT: {r:?}"
    );
    let accepted = probed.accepted().len();
    let r = bed.node.dial_one(probe_port, 1000).unwrap();
    assert_eq!(
        r.result,
        "ok",
        "the node's probe was refused: {r:?}\n{}",
        agent.log_tail(20)
    );
    assert_eq!(probed.accepted().len(), accepted + 1);
    let r = bed.node.dial_one(addr(b.pod.ip(), 9090), 1000).unwrap();
    assert_ne!(
        r.result, "ok",
        "the node reached a port no probe names: {r:?}"
    );
}

/// Scenario 9: the race-free start. A labelled pod's object is `Pending` with no address
/// and its cgroup has no process yet, so the agent cannot find it alone; `sluice-cni ADD`
/// (run as a runtime runs it) hands over its netns and addresses and returns only once the
/// pod is captured: the very first connection after it is. An unlabelled pod's ADD passes
/// its `prevResult` through; DEL succeeds.
fn the_cni_add_returns_once_the_pod_is_captured(mode: Mode) {
    let bed = KubeBed::new().unwrap();
    bed.namespace("shop", &[ENABLED]).unwrap();
    bed.namespace("lab", &[]).unwrap();
    let a = bed.pod_without_process("client-a", "shop", true).unwrap();
    let b = bed.pod("server-b", "lab", false).unwrap();
    let _server = b.pod.serve(8080, "server-b").unwrap();
    bed.apply_pending_pod(&a, &[]).unwrap();
    bed.apply_pod(&b, &[]).unwrap();
    let socket = bed.node.workdir().join("cni.sock");
    let cfg = bed.config(mode).kubernetes(&bed.kubeconfig, Some(&socket));
    let agent = Agent::start(&bed.node, cfg).unwrap();
    wait_captured(&agent, &[]);

    let add = |pod: &KubePod| {
        let mut sandbox = Sandbox::pod(&pod.namespace, pod.pod.name(), &pod.uid);
        sandbox.netns = pod.pod.netns_path().display().to_string();
        let prev = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{ "name": "eth0", "sandbox": sandbox.netns }],
            "ips": [
                { "address": format!("{}/24", pod.pod.ip()), "interface": 0 },
                { "address": format!("{}/64", pod.pod.ip6()), "interface": 0 },
            ],
        });
        let config = net_config(
            "1.0.0",
            Some(prev.clone()),
            json!({ "agentSocket": socket }),
        );
        let run = run_plugin("ADD", &sandbox, &config).unwrap();
        (run, prev, sandbox, config)
    };
    let (run, prev, sandbox, config) = add(&a);
    assert_eq!(
        run.ok_json().unwrap(),
        prev,
        "ADD must print prevResult unchanged"
    );
    assert!(
        captured_dial(&agent, &a, &b),
        "the first connection after ADD returned was not captured\n{}",
        agent.log_tail(30)
    );
    assert_eq!(
        captured(&agent),
        BTreeSet::from(["shop/client-a".to_string()])
    );

    let (run, prev, _, _) = add(&b);
    assert_eq!(
        run.ok_json().unwrap(),
        prev,
        "an unlabelled pod's ADD passes through"
    );
    assert_eq!(
        captured(&agent),
        BTreeSet::from(["shop/client-a".to_string()])
    );

    let run = run_plugin("DEL", &sandbox, &config).unwrap();
    assert_eq!(run.status, 0, "{run:?}");
}
