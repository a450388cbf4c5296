//! Builders shared by the authorization tests: configs from YAML, workloads with labels.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
};

use crate::config::{
    Config, ProxySettings, Workload,
    policy::{AuthorizationPolicy, PeerAuthentication},
};

pub const PEER: &str = "cluster.local/ns/front/sa/web";

pub fn workload(namespace: &str, name: &str, labels: &[(&str, &str)]) -> Workload {
    Workload {
        name: name.into(),
        namespace: namespace.into(),
        service_account: "default".into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        ips: vec!["10.0.0.9".parse().unwrap()],
        node: None,
        netns: Some(PathBuf::from("/run/netns/x")),
        cgroup: Some(PathBuf::from("/sys/fs/cgroup/x")),
        enrolled: true,
        redirect_mode: None,
        exclude_ports: vec![],
        exclude_cidrs: vec![],
        exclude_inbound_ports: vec![],
        probe_ports: vec![],
    }
}

/// A config whose policies are given as YAML lists, as they appear in the config file.
pub fn config(workloads: Vec<Workload>, authz_yaml: &str, peer_yaml: &str) -> Config {
    let authorization_policies: Vec<AuthorizationPolicy> =
        serde_yaml_ng::from_str(authz_yaml).expect("authorization policies");
    let peer_authentications: Vec<PeerAuthentication> =
        serde_yaml_ng::from_str(peer_yaml).expect("peer authentications");
    Config {
        node: "node-a".into(),
        cgroup_root: None,
        bpffs_root: PathBuf::from("/sys/fs/bpf/sluice"),
        proc_sys_net: PathBuf::from("/proc/sys/net"),
        admin_address: SocketAddr::from(([127, 0, 0, 1], 15000)),
        metrics_address: SocketAddr::from(([0, 0, 0, 0], 15020)),
        readiness_address: SocketAddr::from(([0, 0, 0, 0], 15021)),
        proxy: ProxySettings::default(),
        redirect: Default::default(),
        identity: None,
        workloads,
        authorization_policies,
        peer_authentications,
        services: Vec::new(),
        http_routes: Vec::new(),
        tracing: None,
        kubernetes: None,
    }
}

pub fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}
