//! The node agent's configuration for one scenario run: both pods as workloads, those on
//! the path enrolled, the run's CA on the mTLS path, the service on the HTTP path.

use std::fmt::Write as _;
use std::path::{Path as FsPath, PathBuf};

use super::http::{PORTS, SERVICE, VIP};
use super::pki;
use super::topo::SERVER_IP;

/// A pod in the agent's configuration; `captured`: its netns and cgroup when enrolled.
pub struct AgentPod {
    pub name: &'static str,
    pub ip: &'static str,
    pub captured: Option<(PathBuf, PathBuf)>,
}

/// The agent's configuration: both pods are known workloads (they name each other in
/// metrics), each with its role as service account, and those on the path are enrolled,
/// which captures their outbound and their inbound connections alike. With `ca` (the mTLS
/// path) the `identity` section turns the tunnel between enrolled pods on. With `service`
/// (the HTTP path), the service the client calls.
pub fn agent_yaml(
    node: &str,
    cgroup_root: &FsPath,
    mode: &str,
    pods: &[AgentPod],
    ca: Option<&FsPath>,
    service: bool,
) -> String {
    let mut yaml = format!(
        "node: {node}\ncgroupRoot: {root}\nredirect:\n  mode: {mode}\n\
         adminAddress: 127.0.0.1:15000\nmetricsAddress: 127.0.0.1:15020\n\
         readinessAddress: 127.0.0.1:15021\n",
        root = cgroup_root.display(),
    );
    if let Some(ca) = ca {
        let _ = write!(
            yaml,
            "identity:\n  trustDomain: {}\n  ca:\n    dir: {}\n",
            pki::TRUST_DOMAIN,
            ca.display()
        );
    }
    yaml.push_str("workloads:\n");
    for pod in pods {
        let _ = write!(
            yaml,
            "  - name: {name}\n    namespace: {ns}\n    serviceAccount: {name}\n    ips: [\"{ip}\"]\n",
            name = pod.name,
            ns = pki::NAMESPACE,
            ip = pod.ip,
        );
        match &pod.captured {
            Some((netns, cgroup)) => {
                let _ = write!(
                    yaml,
                    "    netns: {}\n    cgroup: {}\n",
                    netns.display(),
                    cgroup.display()
                );
            }
            None => yaml.push_str("    enrolled: false\n"),
        }
    }
    if service {
        yaml.push_str(&service_yaml());
    }
    yaml
}

/// Service `web` at the VIP, one port per HTTP version declared by its `appProtocol` (the
/// proxy speaks that version upstream), the server pod as its one endpoint.
fn service_yaml() -> String {
    let mut yaml = format!(
        "services:\n  - name: {SERVICE}\n    namespace: {ns}\n    vips: [\"{VIP}\"]\n    ports:\n",
        ns = pki::NAMESPACE
    );
    for p in PORTS {
        let _ = writeln!(
            yaml,
            "      - {{port: {}, targetPort: {}, appProtocol: {}}}",
            p.port,
            p.target,
            p.app_protocol()
        );
    }
    let _ = writeln!(yaml, "    addresses: [\"{SERVER_IP}\"]");
    yaml
}

#[cfg(test)]
mod tests {
    use super::super::topo::CLIENT_IP;
    use super::*;

    fn pods(server_captured: bool) -> Vec<AgentPod> {
        vec![
            AgentPod {
                name: "client",
                ip: CLIENT_IP,
                captured: Some(("/run/netns/c".into(), "/cg/pods/client".into())),
            },
            AgentPod {
                name: "server",
                ip: SERVER_IP,
                captured: server_captured
                    .then(|| ("/run/netns/s".into(), "/cg/pods/server".into())),
            },
        ]
    }

    #[test]
    fn agent_config_enrolls_the_pods_on_the_path() {
        let yaml = agent_yaml("n1", FsPath::new("/cg"), "ebpf", &pods(false), None, false);
        assert!(yaml.starts_with("node: n1\ncgroupRoot: /cg\nredirect:\n  mode: ebpf\n"));
        assert!(
            !yaml.contains("identity"),
            "no mTLS off the mTLS path:\n{yaml}"
        );
        assert!(yaml.contains(
            "  - name: client\n    namespace: bench\n    serviceAccount: client\n    \
             ips: [\"10.79.0.2\"]\n    netns: /run/netns/c\n    cgroup: /cg/pods/client\n"
        ));
        assert!(yaml.ends_with(
            "  - name: server\n    namespace: bench\n    serviceAccount: server\n    \
             ips: [\"10.79.0.3\"]\n    enrolled: false\n"
        ));
    }

    #[test]
    fn agent_config_on_the_http_path_has_the_service() {
        let yaml = agent_yaml("n1", FsPath::new("/cg"), "ebpf", &pods(false), None, true);
        // The client enrolled, the server a known workload behind the service.
        assert!(yaml.contains("cgroup: /cg/pods/client\n"));
        assert!(yaml.contains("enrolled: false\n"));
        assert!(
            yaml.ends_with(
                "services:\n  - name: web\n    namespace: bench\n    vips: [\"10.96.0.10\"]\n    \
                 ports:\n      - {port: 80, targetPort: 8080, appProtocol: http}\n      \
                 - {port: 81, targetPort: 8081, appProtocol: http2}\n    \
                 addresses: [\"10.79.0.3\"]\n"
            ),
            "{yaml}"
        );
    }

    #[test]
    fn agent_config_on_the_mtls_path_has_the_runs_ca() {
        let yaml = agent_yaml(
            "n1",
            FsPath::new("/cg"),
            "nftables",
            &pods(true),
            Some(FsPath::new("/w/ca")),
            false,
        );
        assert!(yaml.contains(
            "identity:\n  trustDomain: cluster.local\n  ca:\n    dir: /w/ca\nworkloads:\n"
        ));
        assert!(yaml.contains("netns: /run/netns/s\n    cgroup: /cg/pods/server\n"));
        assert!(!yaml.contains("enrolled: false"));
        // The identities the Envoy sidecars' certificates carry too.
        assert!(yaml.contains("serviceAccount: server\n"));
        assert_eq!(
            pki::spiffe_id("server"),
            "spiffe://cluster.local/ns/bench/sa/server"
        );
    }
}
