//! A pod object, with its namespace's labels, as the workload the rest of the agent knows.
//!
//! Per-pod settings are annotations, named like Istio's `traffic.sidecar.istio.io/*` ones
//! so an operator finds them where they would look.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    str::FromStr,
};

use k8s_openapi::{
    api::core::v1::{Pod, PodSpec},
    apimachinery::pkg::util::intstr::IntOrString,
};
use sluice_cni::enrollment;

use crate::config::{RedirectMode, Workload};

pub const REDIRECT_MODE: &str = "sluice.dev/redirect-mode";
pub const EXCLUDE_OUTBOUND_PORTS: &str = "sluice.dev/exclude-outbound-ports";
pub const EXCLUDE_OUTBOUND_IP_RANGES: &str = "sluice.dev/exclude-outbound-ip-ranges";
pub const EXCLUDE_INBOUND_PORTS: &str = "sluice.dev/exclude-inbound-ports";

/// A pod the agent should know, before it is placed on this node (cgroup and netns).
#[derive(Clone, Debug)]
pub struct PodWorkload {
    pub uid: String,
    /// `netns` and `cgroup` are unset; `enrolled` is the labels' decision.
    pub workload: Workload,
}

/// `Ok(None)` for pods that are no workload of the mesh's: host-network pods (they have
/// the node's addresses), finished pods, pods without an address yet. `Err` for a pod
/// whose annotations cannot be honoured.
pub fn workload_of(
    pod: &Pod,
    namespace_labels: &BTreeMap<String, String>,
    this_node: &str,
    extra_ips: &[IpAddr],
) -> Result<Option<PodWorkload>, String> {
    let meta = &pod.metadata;
    let (Some(name), Some(namespace), Some(uid)) = (&meta.name, &meta.namespace, &meta.uid) else {
        return Err("pod without name, namespace or uid".into());
    };
    let spec = pod.spec.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if host_network || matches!(phase, Some("Succeeded" | "Failed")) {
        return Ok(None);
    }
    let mut ips = pod_ips(pod);
    for ip in extra_ips {
        if !ips.contains(ip) {
            ips.push(*ip);
        }
    }
    if ips.is_empty() {
        return Ok(None);
    }
    let labels = meta.labels.clone().unwrap_or_default();
    let decision = enrollment::decide(&labels, namespace_labels, host_network);
    let annotations = meta.annotations.clone().unwrap_or_default();
    let node = spec.and_then(|s| s.node_name.clone());
    let here = node.as_deref() == Some(this_node);
    let workload = Workload {
        name: name.clone(),
        namespace: namespace.clone(),
        service_account: spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        labels,
        ips,
        // A pod not yet scheduled is nowhere: say so as another node, never this one.
        node: if here {
            None
        } else {
            Some(node.unwrap_or_default())
        },
        netns: None,
        cgroup: None,
        enrolled: decision.enrolled(),
        redirect_mode: annotation(&annotations, REDIRECT_MODE, parse_mode)?,
        exclude_ports: list(&annotations, EXCLUDE_OUTBOUND_PORTS)?,
        exclude_cidrs: list(&annotations, EXCLUDE_OUTBOUND_IP_RANGES)?,
        exclude_inbound_ports: list(&annotations, EXCLUDE_INBOUND_PORTS)?,
        probe_ports: spec.map(probe_ports).unwrap_or_default(),
    };
    Ok(Some(PodWorkload {
        uid: uid.clone(),
        workload,
    }))
}

/// The ports the kubelet's HTTP, TCP and gRPC probes reach, named ports resolved through
/// the containers' ports (a probe's port must be one of its own container's).
fn probe_ports(spec: &PodSpec) -> Vec<u16> {
    let mut ports = BTreeSet::new();
    for container in spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
    {
        let probes = [
            &container.liveness_probe,
            &container.readiness_probe,
            &container.startup_probe,
        ];
        for probe in probes.into_iter().flatten() {
            let named = (probe.http_get.as_ref().map(|h| &h.port))
                .or(probe.tcp_socket.as_ref().map(|t| &t.port));
            let port = match named {
                Some(IntOrString::Int(n)) => Some(*n),
                Some(IntOrString::String(name)) => (container.ports.iter().flatten())
                    .find(|p| p.name.as_ref() == Some(name))
                    .map(|p| p.container_port),
                None => probe.grpc.as_ref().map(|g| g.port),
            };
            ports.extend(port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0));
        }
    }
    ports.into_iter().collect()
}

/// `status.podIPs` (both families on a dual-stack cluster), else `status.podIP`.
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let ips: Vec<IpAddr> = listed.filter_map(|ip| ip.parse().ok()).collect();
    if !ips.is_empty() {
        return ips;
    }
    status
        .pod_ip
        .as_deref()
        .and_then(|ip| ip.parse().ok())
        .into_iter()
        .collect()
}

fn parse_mode(value: &str) -> Result<RedirectMode, String> {
    match value {
        "ebpf" => Ok(RedirectMode::Ebpf),
        "nftables" => Ok(RedirectMode::Nftables),
        "iptables" => Ok(RedirectMode::Iptables),
        other => Err(format!("{other:?} is not ebpf, nftables or iptables")),
    }
}

fn annotation<T>(
    annotations: &BTreeMap<String, String>,
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Option<T>, String> {
    annotations
        .get(key)
        .map(|v| parse(v.trim()).map_err(|e| format!("annotation {key}: {e}")))
        .transpose()
}

/// A comma-separated annotation (`"5432, 6379"`); absent or empty: none.
fn list<T: FromStr>(annotations: &BTreeMap<String, String>, key: &str) -> Result<Vec<T>, String>
where
    T::Err: std::fmt::Display,
{
    let parsed = annotation(annotations, key, |value| {
        (value.split(',').map(str::trim).filter(|v| !v.is_empty()))
            .map(|v| v.parse::<T>().map_err(|e| format!("{v:?}: {e}")))
            .collect::<Result<Vec<T>, String>>()
    })?;
    Ok(parsed.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml_ng::from_str(yaml).expect("pod yaml")
    }

    const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-0
  namespace: shop
  uid: 4f6c1c2e-8a1b-4d8e-9c39-1f2a3b4c5d6e
  labels: { app: web, sluice.dev/mesh: enabled }
  annotations:
    sluice.dev/exclude-outbound-ports: "5432, 6379"
    sluice.dev/exclude-outbound-ip-ranges: 169.254.169.254/32
spec:
  nodeName: node-a
  serviceAccountName: web
  containers:
    - name: app
      image: web
      ports: [{ name: http, containerPort: 8080 }, { name: admin, containerPort: 9901 }]
      readinessProbe: { httpGet: { path: /ready, port: http } }
      livenessProbe: { tcpSocket: { port: 9901 } }
      startupProbe: { grpc: { port: 9000 } }
status:
  phase: Running
  podIP: 10.244.1.7
  podIPs: [{ ip: 10.244.1.7 }, { ip: "fd00:10:244:1::7" }]
"#;

    #[test]
    fn a_labelled_pod_on_this_node_is_an_enrolled_local_workload() {
        let w = workload_of(&pod(POD), &BTreeMap::new(), "node-a", &[])
            .expect("valid")
            .expect("a workload");
        assert!(w.workload.enrolled && w.workload.node.is_none());
        assert_eq!(w.workload.service_account, "web");
        assert_eq!(w.workload.ips.len(), 2);
        assert_eq!(w.workload.exclude_ports, [5432, 6379]);
        assert_eq!(w.workload.exclude_cidrs.len(), 1);
        assert_eq!(w.workload.probe_ports, [8080, 9000, 9901]);
        let elsewhere = workload_of(&pod(POD), &BTreeMap::new(), "node-b", &[])
            .expect("valid")
            .expect("a workload");
        assert_eq!(elsewhere.workload.node.as_deref(), Some("node-a"));
    }

    #[test]
    fn host_network_finished_and_addressless_pods_are_no_workloads() {
        let host = POD.replace("nodeName: node-a", "nodeName: node-a\n  hostNetwork: true");
        let done = POD.replace("phase: Running", "phase: Succeeded");
        let fresh = POD.split("status:").next().expect("head").to_owned();
        for yaml in [host, done, fresh.clone()] {
            let got = workload_of(&pod(&yaml), &BTreeMap::new(), "node-a", &[]).expect("ok");
            assert!(got.is_none());
        }
        // The CNI plugin's addresses stand in until the status has them.
        let ip: IpAddr = "10.244.1.9".parse().expect("ip");
        let placed = workload_of(&pod(&fresh), &BTreeMap::new(), "node-a", &[ip]).expect("ok");
        assert_eq!(placed.expect("a workload").workload.ips, [ip]);
    }

    #[test]
    fn bad_annotations_are_errors_not_ignored() {
        let bad = POD.replace("\"5432, 6379\"", "\"5432, http\"");
        let err = workload_of(&pod(&bad), &BTreeMap::new(), "node-a", &[]).unwrap_err();
        assert!(err.contains(EXCLUDE_OUTBOUND_PORTS), "{err}");
        let mode = POD.replace(
            "annotations:",
            "annotations:\n    sluice.dev/redirect-mode: tproxy",
        );
        let err = workload_of(&pod(&mode), &BTreeMap::new(), "node-a", &[]).unwrap_err();
        assert!(err.contains("tproxy"), "{err}");
    }
}
