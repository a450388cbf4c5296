//! `sluice-cni`, the chained CNI plugin, run the way a container runtime runs it: the CNI
//! variables in a clean environment, the network config with a bridge plugin's prevResult on
//! stdin, stdout parsed as JSON. Where the agent is present, a stand-in serves the agent's
//! socket (`tests::cni::StandInAgent`) and the request it received is checked field by field;
//! where it is away, the fake API server answers for the pod and its namespace.
//! `sluice-cni install` / `uninstall` run on scratch directories.
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tests::cni::{
    CniDirs, Sandbox, Scratch, StandInAgent, bridge_result, cli, cni_bin, net_config, run_plugin,
    run_with_stdin, unreachable_kubeconfig,
};
use tests::kube_api::ApiServer;

const NETNS: &str = "/var/run/netns/cni-0c1f";

fn sandbox() -> Sandbox {
    Sandbox {
        netns: NETNS.into(),
        ..Sandbox::pod("shop", "web-7d9f", "6f1e2d3c-aaaa-4bbb-8ccc-0123456789ab")
    }
}

fn config(version: &str, socket: &Path) -> Value {
    net_config(
        version,
        Some(bridge_result(version, NETNS)),
        json!({"agentSocket": socket}),
    )
}

/// The request the plugin must send for [`sandbox`] with the bridge result's addresses.
fn expected_request(command: &str) -> Value {
    let sb = sandbox();
    json!({
        "command": command,
        "containerId": sb.container_id,
        "netns": NETNS,
        "ifname": "eth0",
        "pod": {"namespace": "shop", "name": "web-7d9f", "uid": "6f1e2d3c-aaaa-4bbb-8ccc-0123456789ab"},
        "ips": ["10.244.1.7", "fd00:10:244:1::7"],
    })
}

#[test]
fn version_lists_the_supported_versions() {
    let run = run_plugin(
        "VERSION",
        &Sandbox::not_a_pod(),
        &json!({"cniVersion": "1.0.0"}),
    )
    .unwrap();
    assert_eq!(
        run.ok_json().unwrap(),
        json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
    );
}

#[test]
fn add_enrolled_sends_the_pod_and_prints_the_prev_result_unchanged() {
    for version in ["1.1.0", "1.0.0", "0.4.0", "0.3.1"] {
        let dir = Scratch::new("cni-add").unwrap();
        let agent = StandInAgent::answering(dir.path(), "enrolled", "captured (eBPF)").unwrap();
        let run = run_plugin("ADD", &sandbox(), &config(version, &agent.socket)).unwrap();
        assert_eq!(
            run.ok_json().unwrap(),
            bridge_result(version, NETNS),
            "{run:#?}"
        );
        assert_eq!(agent.only_request().unwrap(), expected_request("add"));
    }
}

#[test]
fn add_not_enrolled_prints_the_prev_result_unchanged() {
    let dir = Scratch::new("cni-not-enrolled").unwrap();
    let agent = StandInAgent::answering(dir.path(), "notEnrolled", "not labelled").unwrap();
    let run = run_plugin("ADD", &sandbox(), &config("1.0.0", &agent.socket)).unwrap();
    assert_eq!(run.ok_json().unwrap(), bridge_result("1.0.0", NETNS));
    assert_eq!(agent.only_request().unwrap(), expected_request("add"));
}

#[test]
fn add_fails_with_a_cni_error_when_the_agent_cannot_enroll() {
    let dir = Scratch::new("cni-agent-error").unwrap();
    let agent =
        StandInAgent::answering(dir.path(), "error", "cannot open the pod's netns").unwrap();
    let err = run_plugin("ADD", &sandbox(), &config("1.0.0", &agent.socket))
        .unwrap()
        .cni_error()
        .unwrap();
    assert_eq!(err["code"], 999, "{err:#}");
    assert_eq!(err["cniVersion"], "1.0.0");
    assert!(
        err["msg"].as_str().unwrap().contains("shop/web-7d9f"),
        "{err:#}"
    );
    assert_eq!(err["details"], "cannot open the pod's netns");
}

#[test]
fn add_without_prev_result_is_an_invalid_config() {
    let dir = Scratch::new("cni-no-prev").unwrap();
    let agent = StandInAgent::answering(dir.path(), "enrolled", "").unwrap();
    let conf = net_config("1.0.0", None, json!({"agentSocket": agent.socket}));
    let err = run_plugin("ADD", &sandbox(), &conf)
        .unwrap()
        .cni_error()
        .unwrap();
    assert_eq!(err["code"], 7, "{err:#}");
    assert!(
        err["msg"].as_str().unwrap().contains("prevResult"),
        "{err:#}"
    );
    assert!(
        agent.requests().is_empty(),
        "the agent was asked: {:?}",
        agent.requests()
    );
}

#[test]
fn a_sandbox_that_is_not_a_pod_is_passed_through_without_asking() {
    let dir = Scratch::new("cni-not-a-pod").unwrap();
    let agent = StandInAgent::answering(dir.path(), "error", "must not be asked").unwrap();
    let run = run_plugin(
        "ADD",
        &Sandbox::not_a_pod(),
        &config("1.0.0", &agent.socket),
    )
    .unwrap();
    assert_eq!(run.ok_json().unwrap(), bridge_result("1.0.0", NETNS));
    assert!(agent.requests().is_empty(), "{:?}", agent.requests());
}

#[test]
fn add_gives_up_on_a_silent_agent_at_the_timeout_and_asks_for_a_retry() {
    let dir = Scratch::new("cni-silent").unwrap();
    let agent = StandInAgent::start(dir.path(), Box::new(|_: &Value| None)).unwrap();
    let mut conf = config("1.0.0", &agent.socket);
    conf["timeout"] = json!("1s");
    let started = Instant::now();
    let err = run_plugin("ADD", &sandbox(), &conf)
        .unwrap()
        .cni_error()
        .unwrap();
    let took = started.elapsed();
    assert_eq!(err["code"], 11, "{err:#}");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_millis(2900),
        "{took:?}"
    );
}

#[test]
fn del_tells_the_agent_and_succeeds_with_the_agent_away() {
    let dir = Scratch::new("cni-del").unwrap();
    let agent = StandInAgent::answering(dir.path(), "released", "").unwrap();
    // DEL's netns is optional (the namespace may be gone) and so is its prevResult.
    let gone = Sandbox {
        netns: String::new(),
        ..sandbox()
    };
    let conf = net_config("1.0.0", None, json!({"agentSocket": agent.socket}));
    let run = run_plugin("DEL", &gone, &conf).unwrap();
    assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{run:#?}");
    let mut want = expected_request("del");
    want.as_object_mut().unwrap().remove("netns");
    want["ips"] = json!([]);
    assert_eq!(agent.only_request().unwrap(), want);

    // No agent at all, twice: DEL must be idempotent.
    let away = net_config(
        "1.0.0",
        None,
        json!({"agentSocket": dir.path().join("none.sock")}),
    );
    for _ in 0..2 {
        let run = run_plugin("DEL", &sandbox(), &away).unwrap();
        assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{run:#?}");
    }
}

#[test]
fn check_passes_for_an_enrolled_pod_and_fails_for_one_that_must_be_and_is_not() {
    let dir = Scratch::new("cni-check").unwrap();
    let agent = StandInAgent::answering(dir.path(), "enrolled", "").unwrap();
    let run = run_plugin("CHECK", &sandbox(), &config("1.0.0", &agent.socket)).unwrap();
    assert_eq!((run.status, run.stdout.as_str()), (0, ""), "{run:#?}");
    assert_eq!(agent.only_request().unwrap(), expected_request("check"));

    let dir = Scratch::new("cni-check-bad").unwrap();
    let agent = StandInAgent::answering(dir.path(), "error", "no listener in the pod").unwrap();
    let err = run_plugin("CHECK", &sandbox(), &config("1.0.0", &agent.socket))
        .unwrap()
        .cni_error()
        .unwrap();
    assert!(
        err["msg"].as_str().unwrap().contains("must be enrolled"),
        "{err:#}"
    );
    assert_eq!(err["details"], "no listener in the pod");
}

#[test]
fn bad_invocations_get_the_specs_error_codes() {
    let dir = Scratch::new("cni-bad").unwrap();
    let socket = dir.path().join("cni.sock");
    // ADD without CNI_NETNS: 4, naming the variable.
    let no_netns = Sandbox {
        netns: String::new(),
        ..sandbox()
    };
    let err = run_plugin("ADD", &no_netns, &config("1.0.0", &socket))
        .unwrap()
        .cni_error()
        .unwrap();
    assert_eq!(err["code"], 4, "{err:#}");
    assert!(
        err["msg"].as_str().unwrap().contains("CNI_NETNS"),
        "{err:#}"
    );
    // A version the plugin does not speak: 1.
    let err = run_plugin("ADD", &sandbox(), &config("0.2.0", &socket))
        .unwrap()
        .cni_error()
        .unwrap();
    assert_eq!(err["code"], 1, "{err:#}");
    // Not JSON: 6.
    let mut cmd = Command::new(cni_bin().unwrap());
    cmd.env_clear()
        .env("CNI_COMMAND", "ADD")
        .env("CNI_CONTAINERID", "c1")
        .env("CNI_NETNS", NETNS)
        .env("CNI_IFNAME", "eth0");
    let err = run_with_stdin(cmd, b"{\"cniVersion\": ")
        .unwrap()
        .cni_error()
        .unwrap();
    assert_eq!(err["code"], 6, "{err:#}");
}

#[test]
fn agent_away_and_api_server_unreachable_fails_closed() {
    let dir = Scratch::new("cni-no-api").unwrap();
    let mut conf = config("1.0.0", &dir.path().join("absent.sock"));
    conf["kubeconfig"] = json!(unreachable_kubeconfig(dir.path()).unwrap());
    conf["timeout"] = json!("5s");
    let err = run_plugin("ADD", &sandbox(), &conf)
        .unwrap()
        .cni_error()
        .unwrap();
    assert_eq!(err["code"], 11, "{err:#}");
    let msg = err["msg"].as_str().unwrap();
    assert!(msg.contains("agent on this node is not running"), "{err:#}");
    assert!(
        msg.contains("API server") && msg.contains("failing closed"),
        "{err:#}"
    );
}

const FLANNEL: &str = "{\n  \"name\": \"cbr0\",\n  \"cniVersion\": \"0.3.1\",\n  \"plugins\": [\n    {\n      \"type\": \"flannel\",\n      \"delegate\": {\"hairpinMode\": true, \"isDefaultGateway\": true}\n    },\n    {\"type\": \"portmap\", \"capabilities\": {\"portMappings\": true}}\n  ]\n}\n";

const BRIDGE: &str = "{\"cniVersion\":\"1.0.0\",\"name\":\"mynet\",\"type\":\"bridge\",\"bridge\":\"cni0\",\"isGateway\":true,\"ipMasq\":true,\"ipam\":{\"type\":\"host-local\",\"ranges\":[[{\"subnet\":\"10.244.1.0/24\"}]]}}";

const KUBECONFIG: [&str; 2] = ["--kubeconfig", "/etc/cni/net.d/sluice-kubeconfig"];

fn our_entry() -> Value {
    json!({"type": "sluice-cni", "agentSocket": "/var/run/sluice/cni.sock",
           "kubeconfig": "/etc/cni/net.d/sluice-kubeconfig"})
}

/// The installed copy is this build's binary, and it answers as a plugin.
fn assert_binary_installed(dirs: &CniDirs) {
    let copy = dirs.bin.join("sluice-cni");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        std::fs::read(cni_bin().unwrap()).unwrap()
    );
    let mut cmd = Command::new(&copy);
    cmd.env_clear().env("CNI_COMMAND", "VERSION");
    let run = run_with_stdin(cmd, b"{\"cniVersion\":\"1.0.0\"}").unwrap();
    assert_eq!(run.ok_json().unwrap()["cniVersion"], "1.1.0");
}

#[test]
fn install_chains_into_a_conflist_idempotently_and_uninstall_restores_it_byte_for_byte() {
    let dirs = CniDirs::new("cni-install-list").unwrap();
    std::fs::write(dirs.conf.join("10-flannel.conflist"), FLANNEL).unwrap();
    let loopback = "{\"cniVersion\":\"0.3.1\",\"name\":\"lo\",\"type\":\"loopback\"}";
    std::fs::write(dirs.conf.join("99-loopback.conf"), loopback).unwrap();
    let run = dirs.install(&KUBECONFIG).unwrap();
    assert_eq!(run.status, 0, "{run:#?}");
    assert_binary_installed(&dirs);
    let list = dirs.json("10-flannel.conflist").unwrap();
    let flannel: Value = serde_json::from_str(FLANNEL).unwrap();
    let mut want = flannel.clone();
    want["plugins"].as_array_mut().unwrap().push(our_entry());
    assert_eq!(list, want);
    assert_eq!(dirs.read("99-loopback.conf").unwrap(), loopback);

    let installed = dirs.read("10-flannel.conflist").unwrap();
    assert_eq!(dirs.install(&KUBECONFIG).unwrap().status, 0);
    assert_eq!(
        dirs.read("10-flannel.conflist").unwrap(),
        installed,
        "a second install changed the file"
    );

    let run = dirs.uninstall().unwrap();
    assert_eq!(run.status, 0, "{run:#?}");
    assert_eq!(dirs.read("10-flannel.conflist").unwrap(), FLANNEL);
    assert_eq!(
        dirs.names().unwrap(),
        ["10-flannel.conflist", "99-loopback.conf"]
    );
    assert!(!dirs.bin.join("sluice-cni").exists());
}

#[test]
fn install_turns_a_conf_into_a_conflist_and_uninstall_brings_the_conf_back() {
    let dirs = CniDirs::new("cni-install-conf").unwrap();
    std::fs::write(dirs.conf.join("10-bridge.conf"), BRIDGE).unwrap();
    let run = dirs.install(&KUBECONFIG).unwrap();
    assert_eq!(run.status, 0, "{run:#?}");
    assert_binary_installed(&dirs);
    // No .conf is left for the runtime to pick first (".conf" sorts before ".conflist").
    assert_eq!(
        dirs.names().unwrap(),
        ["10-bridge.conf.sluice-cni.orig", "10-bridge.conflist"]
    );
    let bridge: Value = serde_json::from_str(BRIDGE).unwrap();
    assert_eq!(
        dirs.json("10-bridge.conflist").unwrap(),
        json!({"cniVersion": "1.0.0", "name": "mynet", "plugins": [bridge, our_entry()]})
    );
    let installed = dirs.read("10-bridge.conflist").unwrap();
    assert_eq!(dirs.install(&KUBECONFIG).unwrap().status, 0);
    assert_eq!(dirs.read("10-bridge.conflist").unwrap(), installed);

    assert_eq!(dirs.uninstall().unwrap().status, 0);
    assert_eq!(dirs.names().unwrap(), ["10-bridge.conf"]);
    assert_eq!(dirs.read("10-bridge.conf").unwrap(), BRIDGE);
}

#[test]
fn install_watch_puts_the_entry_back_after_the_primary_rewrites_and_uninstalls_on_sigterm() {
    let dirs = CniDirs::new("cni-install-watch").unwrap();
    std::fs::write(dirs.conf.join("10-flannel.conflist"), FLANNEL).unwrap();
    let mut child = dirs.spawn_watch("100ms").unwrap();
    let chained = |name: &str| {
        dirs.json("10-flannel.conflist").ok().is_some_and(|list| {
            list["name"] == name
                && list["plugins"]
                    .as_array()
                    .is_some_and(|p| p.len() == 3 && p[2]["type"] == "sluice-cni")
        })
    };
    let wait = |what: &str, name: &str| {
        tests::poll_until(Duration::from_secs(10), what, || {
            Ok(chained(name).then_some(()))
        })
        .unwrap()
    };
    wait("the first install", "cbr0");

    // The primary CNI restarts and writes its own config again, without our entry.
    let rewritten = FLANNEL.replace("\"cbr0\"", "\"cbr1\"");
    std::fs::write(dirs.conf.join("10-flannel.conflist"), &rewritten).unwrap();
    wait("the entry put back", "cbr1");

    // The DaemonSet's pod is stopped.
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on a child this test spawned and has not reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "install --watch did not exit on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert_eq!(dirs.read("10-flannel.conflist").unwrap(), rewritten);
    assert_eq!(dirs.names().unwrap(), ["10-flannel.conflist"]);
    assert!(!dirs.bin.join("sluice-cni").exists());
}

/// Outside a pod (no `KUBERNETES_SERVICE_HOST`), `--service-account-kubeconfig` says what
/// is missing and changes nothing; it and `--kubeconfig` exclude each other.
#[test]
fn install_from_the_service_account_outside_a_cluster_says_what_is_missing() {
    let dirs = CniDirs::new("cni-install-sa").unwrap();
    std::fs::write(dirs.conf.join("10-flannel.conflist"), FLANNEL).unwrap();
    let mut cmd = Command::new(cni_bin().unwrap());
    cmd.env_remove("CNI_COMMAND")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .args(["install", "--service-account-kubeconfig", "--bin-dir"])
        .arg(&dirs.bin)
        .arg("--conf-dir")
        .arg(&dirs.conf);
    let run = run_with_stdin(cmd, b"").unwrap();
    assert_ne!(run.status, 0, "{run:#?}");
    assert!(
        run.stderr.contains("KUBERNETES_SERVICE_HOST is not set"),
        "{run:#?}"
    );
    assert_eq!(dirs.names().unwrap(), ["10-flannel.conflist"]);
    assert_eq!(dirs.read("10-flannel.conflist").unwrap(), FLANNEL);

    let mut both = KUBECONFIG.to_vec();
    both.push("--service-account-kubeconfig");
    let run = dirs.install(&both).unwrap();
    assert_ne!(run.status, 0, "{run:#?}");
    assert!(run.stderr.contains("cannot be used with"), "{run:#?}");
}

#[test]
fn the_cli_explains_itself() {
    let run = cli(&["--help"]).unwrap();
    assert_eq!(run.status, 0, "{run:#?}");
    for word in ["CNI_COMMAND", "install", "uninstall", "docs/cni.md"] {
        assert!(
            run.stdout.contains(word),
            "--help lacks {word:?}: {}",
            run.stdout
        );
    }
    let run = cli(&["install", "--help"]).unwrap();
    for flag in [
        "--bin-dir",
        "--conf-dir",
        "--kubeconfig",
        "--service-account-kubeconfig",
        "--watch",
    ] {
        assert!(
            run.stdout.contains(flag),
            "install --help lacks {flag}: {}",
            run.stdout
        );
    }
}

/// `shop` enrolls its pods by the namespace label, except `batch-0`, which opts out; `plain`
/// is not labelled.
const CLUSTER: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {kubernetes.io/metadata.name: shop, sluice.dev/mesh: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain, labels: {kubernetes.io/metadata.name: plain}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-7d9f, namespace: shop, uid: 6f1e2d3c-aaaa-4bbb-8ccc-0123456789ab, labels: {app: web}}
spec: {containers: [{name: web, image: web:1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: batch-0, namespace: shop, uid: 11111111-2222-4333-8444-555555555555, labels: {sluice.dev/mesh: disabled}}
spec: {containers: [{name: batch, image: batch:1}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: plain, uid: 99999999-8888-4777-8666-555555555555}
spec: {containers: [{name: api, image: api:1}]}
";

/// The fake API server holding [`CLUSTER`], and the plugin's config pointing at it with no
/// agent on the socket.
fn agent_away(dir: &Path) -> (ApiServer, Value) {
    let api = ApiServer::start().unwrap();
    api.apply(CLUSTER).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let mut conf = config("1.0.0", &dir.join("absent.sock"));
    conf["kubeconfig"] = json!(kubeconfig);
    (api, conf)
}

#[test]
fn agent_away_and_a_pod_that_must_be_captured_fails_with_try_again_later() {
    let dir = Scratch::new("cni-away-captured").unwrap();
    let (api, conf) = agent_away(dir.path());
    let err = run_plugin("ADD", &sandbox(), &conf)
        .unwrap()
        .cni_error()
        .unwrap();
    assert_eq!(err["code"], 11, "{err:#}");
    assert_eq!(
        err["msg"],
        "the Sluice agent on this node is not running, and pod shop/web-7d9f must be captured; \
         retrying the sandbox once it is up"
    );
    assert!(
        err["details"].as_str().unwrap().contains("namespace label"),
        "{err:#}"
    );
    let asked: Vec<String> = api.requests().into_iter().map(|r| r.path).collect();
    for path in [
        "/api/v1/namespaces/shop/pods/web-7d9f",
        "/api/v1/namespaces/shop",
    ] {
        assert!(asked.iter().any(|p| p == path), "no GET {path}: {asked:?}");
    }
    // CHECK judges the same way: the pod must be captured and nothing captures it.
    let err = run_plugin("CHECK", &sandbox(), &conf)
        .unwrap()
        .cni_error()
        .unwrap();
    assert_eq!(err["code"], 11, "{err:#}");
}

#[test]
fn agent_away_and_a_pod_outside_the_mesh_is_passed_through() {
    let dir = Scratch::new("cni-away-plain").unwrap();
    let (_api, conf) = agent_away(dir.path());
    let unlabelled = Sandbox::pod("plain", "api-0", "99999999-8888-4777-8666-555555555555");
    let opted_out = Sandbox::pod("shop", "batch-0", "11111111-2222-4333-8444-555555555555");
    for sb in [unlabelled, opted_out] {
        let run = run_plugin(
            "ADD",
            &Sandbox {
                netns: NETNS.into(),
                ..sb
            },
            &conf,
        )
        .unwrap();
        assert_eq!(
            run.ok_json().unwrap(),
            bridge_result("1.0.0", NETNS),
            "{run:#?}"
        );
    }
}
