//! The L7 suite's test bed (`tests/l7.rs`): a client pod, server pods, and service `web`
//! at a virtual address in front of them.
use crate::http_app::{self, LoadOpts, LoadReport, serve_http};
use crate::{Agent, AgentConfig, Mode, Node, Pod, Server, Workload};
use serde_json::json;
use std::collections::BTreeMap;
use std::net::SocketAddr;

pub const VIP: &str = "10.96.0.10";
pub const PORT: u16 = 80;
pub const TARGET: u16 = 8080;

pub fn vip() -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), PORT)
}

/// An enrolled `client` pod and `servers` pods (labels `app: web`, not enrolled) each
/// serving `sluice-httpapp serve` on 8080 with `serve_args`.
pub struct Bed {
    pub node: Node,
    pub client: Pod,
    pub servers: Vec<(Pod, Server)>,
}

impl Bed {
    pub fn new(servers: &[(&str, &[&str])]) -> Bed {
        let node = Node::new().unwrap();
        let client = node.add_pod("client").unwrap();
        let servers = servers
            .iter()
            .map(|(name, args)| {
                let pod = node.add_pod(name).unwrap();
                let server = serve_http(&pod, TARGET, name, args).unwrap();
                (pod, server)
            })
            .collect();
        Bed {
            node,
            client,
            servers,
        }
    }

    /// One server pod `name` running what `serve` starts on 8080 (TLS, a banner, gRPC).
    pub fn serving(name: &str, serve: impl Fn(&Pod) -> anyhow::Result<Server>) -> Bed {
        let node = Node::new().unwrap();
        let client = node.add_pod("client").unwrap();
        let pod = node.add_pod(name).unwrap();
        let server = serve(&pod).unwrap();
        Bed {
            node,
            client,
            servers: vec![(pod, server)],
        }
    }

    /// The node's config: the client enrolled, the servers known, service `web`.
    pub fn config(&self, mode: Mode, service: serde_json::Value) -> AgentConfig {
        let mut cfg = AgentConfig::new(&self.node)
            .mode(mode)
            .with(Workload::enrolled(&self.client))
            .service(service);
        for (pod, _) in &self.servers {
            cfg = cfg.with(Workload::known(pod).labels(&[("app", "web")]));
        }
        cfg
    }

    pub fn server(&self, name: &str) -> &Server {
        let found = self.servers.iter().find(|(p, _)| p.name() == name);
        &found.unwrap_or_else(|| panic!("no server {name}")).1
    }

    pub fn load(&self, opts: &LoadOpts) -> LoadReport {
        http_app::http_load(&self.client, vip(), opts).unwrap()
    }
}

/// Service `web` at [`VIP`]:80 → the `app: web` pods' 8080; `extra` merges into it.
pub fn web(extra: serde_json::Value) -> serde_json::Value {
    let mut service = json!({
        "name": "web",
        "vips": [VIP],
        "ports": [{"port": PORT, "targetPort": TARGET}],
        "selector": {"app": "web"},
    });
    if let (Some(s), Some(extra)) = (service.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            s.insert(k.clone(), v.clone());
        }
    }
    service
}

/// A route on `web` with one rule; `rule` is the rule's JSON.
pub fn route(rule: serde_json::Value) -> serde_json::Value {
    json!({"name": "web-route", "parentRefs": [{"name": "web", "port": PORT}], "rules": [rule]})
}

pub fn metric(agent: &Agent, name: &str, labels: &[(&str, &str)]) -> f64 {
    agent.metrics().unwrap().sum(name, labels)
}

pub fn statuses(report: &LoadReport) -> BTreeMap<u16, u64> {
    report.by_status.clone()
}
