use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::super::cluster::ClusterError;
use super::super::{Backends, Reply, run};
use super::*;
use crate::enrollment::Decision;
use crate::protocol::{Request, Response};

/// How the fake agent answers a request.
type AgentScript = Box<dyn Fn(&Request) -> Result<Response, ClientError>>;

/// The agent and the API server as scripted answers; records what the plugin asked.
struct Fake {
    agent: AgentScript,
    cluster: Option<Decision>,
    asked_agent: RefCell<Vec<Request>>,
    asked_cluster: RefCell<Vec<String>>,
}

impl Fake {
    fn answering(outcome: Outcome) -> Fake {
        Fake::with(move |_| Ok(Response::new(outcome, "scripted")), None)
    }

    fn away(cluster: Option<Decision>) -> Fake {
        Fake::with(
            |_| {
                Err(ClientError::NotListening {
                    path: "/x.sock".into(),
                    source: std::io::ErrorKind::NotFound.into(),
                })
            },
            cluster,
        )
    }

    fn with(
        agent: impl Fn(&Request) -> Result<Response, ClientError> + 'static,
        cluster: Option<Decision>,
    ) -> Fake {
        Fake {
            agent: Box::new(agent),
            cluster,
            asked_agent: RefCell::default(),
            asked_cluster: RefCell::default(),
        }
    }
}

impl Backends for Fake {
    fn exchange(&self, _: &Path, req: &Request, _: Duration) -> Result<Response, ClientError> {
        self.asked_agent.borrow_mut().push(req.clone());
        (self.agent)(req)
    }

    fn decide(&self, pod: &PodRef, _: &Path, _: Duration) -> Result<Decision, ClusterError> {
        self.asked_cluster.borrow_mut().push(pod.to_string());
        self.cluster
            .ok_or(ClusterError::Timeout(Duration::from_secs(1)))
    }
}

fn prev() -> Value {
    json!({
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "sandbox": "/var/run/netns/cni-1"}],
        "ips": [{"address": "10.0.0.5/24", "gateway": "10.0.0.1", "interface": 0},
                {"address": "fd00::5/64", "interface": 0}],
    })
}

fn invoke(command: &str, k8s: bool, conf: Value, fake: &Fake) -> Reply {
    let mut env: HashMap<&str, &str> = HashMap::from([
        ("CNI_COMMAND", command),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/cni-1"),
        ("CNI_IFNAME", "eth0"),
    ]);
    if k8s {
        env.insert(
            "CNI_ARGS",
            "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;K8S_POD_UID=u1",
        );
    }
    let stdin = serde_json::to_vec(&conf).unwrap();
    run(|k| env.get(k).map(OsString::from), &stdin, fake)
}

fn conf(prev: Option<Value>, kubeconfig: bool) -> Value {
    let mut c = json!({"cniVersion": "1.0.0", "name": "k8s", "type": "sluice-cni"});
    if let Some(p) = prev {
        c["prevResult"] = p;
    }
    if kubeconfig {
        c["kubeconfig"] = json!("/etc/cni/net.d/sluice-kubeconfig");
    }
    c
}

fn err_code(reply: &Reply) -> u64 {
    assert!(!reply.success, "{reply:?}");
    reply.stdout.as_ref().unwrap()["code"].as_u64().unwrap()
}

#[test]
fn add_asks_the_agent_and_passes_the_result_through() {
    for outcome in [Outcome::Enrolled, Outcome::NotEnrolled] {
        let fake = Fake::answering(outcome);
        let reply = invoke("ADD", true, conf(Some(prev()), false), &fake);
        assert_eq!(
            reply,
            Reply {
                stdout: Some(prev()),
                success: true
            }
        );
        let asked = fake.asked_agent.borrow();
        assert_eq!(asked.len(), 1);
        assert_eq!(asked[0].command, Command::Add);
        assert_eq!(asked[0].pod.to_string(), "shop/web-0");
        assert_eq!(asked[0].netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        let want: Vec<IpAddr> = vec!["10.0.0.5".parse().unwrap(), "fd00::5".parse().unwrap()];
        assert_eq!(asked[0].ips, want);
    }
}

#[test]
fn add_fails_on_an_agent_error_a_missing_prev_result_or_a_stray_outcome() {
    let reply = invoke(
        "ADD",
        true,
        conf(Some(prev()), false),
        &Fake::answering(Outcome::Error),
    );
    assert_eq!(err_code(&reply), u64::from(code::OTHER));
    assert_eq!(reply.stdout.as_ref().unwrap()["details"], "scripted");
    let reply = invoke(
        "ADD",
        true,
        conf(None, false),
        &Fake::answering(Outcome::Enrolled),
    );
    assert_eq!(err_code(&reply), u64::from(code::INVALID_CONFIG));
    let reply = invoke(
        "ADD",
        true,
        conf(Some(prev()), false),
        &Fake::answering(Outcome::Released),
    );
    assert_eq!(err_code(&reply), u64::from(code::OTHER));
    let timeout = Fake::with(
        |_| {
            Err(ClientError::Timeout {
                path: "/x".into(),
                timeout: Duration::from_secs(1),
            })
        },
        None,
    );
    let reply = invoke("ADD", true, conf(Some(prev()), true), &timeout);
    assert_eq!(err_code(&reply), u64::from(code::TRY_AGAIN_LATER));
    assert!(
        timeout.asked_cluster.borrow().is_empty(),
        "a slow agent is not an absent one"
    );
}

#[test]
fn a_sandbox_that_is_not_a_pod_is_passed_through_unasked() {
    let fake = Fake::answering(Outcome::Error);
    let reply = invoke("ADD", false, conf(Some(prev()), true), &fake);
    assert_eq!(
        reply,
        Reply {
            stdout: Some(prev()),
            success: true
        }
    );
    assert!(fake.asked_agent.borrow().is_empty());
}

#[test]
fn with_the_agent_away_the_label_rule_decides_and_doubt_fails_closed() {
    let fake = Fake::away(Some(Decision::NamespaceLabel));
    let reply = invoke("ADD", true, conf(Some(prev()), true), &fake);
    assert_eq!(err_code(&reply), u64::from(code::TRY_AGAIN_LATER));
    let msg = reply.stdout.as_ref().unwrap()["msg"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        msg.contains("not running, and pod shop/web-0 must be captured"),
        "{msg}"
    );
    assert_eq!(*fake.asked_cluster.borrow(), ["shop/web-0"]);

    for decision in [Decision::NotLabelled, Decision::PodOptOut] {
        let reply = invoke(
            "ADD",
            true,
            conf(Some(prev()), true),
            &Fake::away(Some(decision)),
        );
        assert_eq!(
            reply,
            Reply {
                stdout: Some(prev()),
                success: true
            }
        );
    }
    // The API server unreachable, or no kubeconfig to reach it: closed.
    let reply = invoke("ADD", true, conf(Some(prev()), true), &Fake::away(None));
    assert_eq!(err_code(&reply), u64::from(code::TRY_AGAIN_LATER));
    let fake = Fake::away(Some(Decision::NotLabelled));
    let reply = invoke("ADD", true, conf(Some(prev()), false), &fake);
    assert_eq!(err_code(&reply), u64::from(code::TRY_AGAIN_LATER));
    assert!(fake.asked_cluster.borrow().is_empty());
}

#[test]
fn del_never_fails_for_an_absent_agent_and_prints_nothing() {
    for fake in [Fake::away(None), Fake::answering(Outcome::Released)] {
        let reply = invoke("DEL", true, conf(None, false), &fake);
        assert_eq!(
            reply,
            Reply {
                stdout: None,
                success: true
            }
        );
    }
    let fake = Fake::answering(Outcome::Released);
    invoke("DEL", true, conf(Some(prev()), false), &fake);
    assert_eq!(fake.asked_agent.borrow()[0].command, Command::Del);
    assert_eq!(fake.asked_agent.borrow()[0].ips.len(), 2);
}

#[test]
fn check_fails_when_a_pod_that_must_be_enrolled_is_not() {
    let ok = invoke(
        "CHECK",
        true,
        conf(Some(prev()), false),
        &Fake::answering(Outcome::Enrolled),
    );
    assert_eq!(
        ok,
        Reply {
            stdout: None,
            success: true
        }
    );
    let bad = invoke(
        "CHECK",
        true,
        conf(Some(prev()), false),
        &Fake::answering(Outcome::Error),
    );
    assert_eq!(err_code(&bad), u64::from(code::OTHER));
    let away = invoke(
        "CHECK",
        true,
        conf(Some(prev()), true),
        &Fake::away(Some(Decision::PodLabel)),
    );
    assert_eq!(err_code(&away), u64::from(code::TRY_AGAIN_LATER));
    let mut old = conf(Some(prev()), false);
    old["cniVersion"] = json!("0.3.1");
    let reply = invoke("CHECK", true, old, &Fake::answering(Outcome::Enrolled));
    assert_eq!(err_code(&reply), u64::from(code::INCOMPATIBLE_VERSION));
}

#[test]
fn version_gc_and_status() {
    let fake = Fake::answering(Outcome::Error);
    let reply = invoke("VERSION", false, json!({"cniVersion": "1.0.0"}), &fake);
    assert_eq!(
        reply.stdout,
        Some(
            json!({"cniVersion": "1.1.0", "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]})
        )
    );
    let mut c = conf(None, false);
    c["cniVersion"] = json!("1.1.0");
    for command in ["GC", "STATUS"] {
        assert_eq!(
            invoke(command, false, c.clone(), &fake),
            Reply {
                stdout: None,
                success: true
            }
        );
    }
    assert!(fake.asked_agent.borrow().is_empty());
}

#[test]
fn bad_addresses_in_prev_result_are_invalid_config() {
    let bad = json!({"ips": [{"address": "10.0.0.300/24"}]});
    assert_eq!(ips_of(&bad).unwrap_err().code, code::INVALID_CONFIG);
    assert!(ips_of(&json!({"interfaces": []})).unwrap().is_empty());
    let dup = json!({"ips": [{"address": "10.0.0.5/24"}, {"address": "10.0.0.5/32"}]});
    assert_eq!(ips_of(&dup).unwrap().len(), 1);
}
