//! A Kubernetes `Service` and its `EndpointSlice`s as the service the node proxy answers for.
use std::{collections::BTreeSet, net::IpAddr};

use k8s_openapi::{
    api::{core::v1, discovery::v1::EndpointSlice},
    apimachinery::pkg::util::intstr::IntOrString,
};

use crate::config::service::{AppProtocol, Service, ServicePort, TrafficPolicy};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// `Ok(None)` for services without a virtual address of their own (headless, ExternalName)
/// or without a TCP port: clients reach those pods directly, at L4.
pub fn service_of(
    service: &v1::Service,
    slices: &[&EndpointSlice],
) -> Result<Option<Service>, String> {
    let (Some(name), Some(namespace)) = (&service.metadata.name, &service.metadata.namespace)
    else {
        return Err("service without name or namespace".into());
    };
    let Some(spec) = &service.spec else {
        return Ok(None);
    };
    let cluster_ips = spec.cluster_ips.clone().unwrap_or_default();
    let vips: Vec<IpAddr> = cluster_ips
        .iter()
        .chain(spec.cluster_ip.as_ref())
        .filter(|ip| ip.as_str() != "None" && !ip.is_empty())
        .map(|ip| ip.parse().map_err(|e| format!("clusterIP {ip:?}: {e}")))
        .collect::<Result<BTreeSet<_>, _>>()?
        .into_iter()
        .collect();
    if vips.is_empty() || spec.type_.as_deref() == Some("ExternalName") {
        return Ok(None);
    }
    let mine: Vec<&EndpointSlice> = slices
        .iter()
        .copied()
        .filter(|s| {
            s.metadata.namespace.as_ref() == Some(namespace)
                && (s.metadata.labels.as_ref())
                    .and_then(|l| l.get(SERVICE_NAME_LABEL))
                    .is_some_and(|n| n == name)
        })
        .collect();
    let ports: Vec<ServicePort> = (spec.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| service_port(p, &mine))
        .collect();
    if ports.is_empty() {
        return Ok(None);
    }
    Ok(Some(Service {
        name: name.clone(),
        namespace: namespace.clone(),
        vips,
        ports,
        selector: Default::default(),
        addresses: ready_addresses(&mine),
        traffic_policy: TrafficPolicy::default(),
    }))
}

/// A named `targetPort` takes its number from the slices (every endpoint of one slice
/// shares it); a port whose name no slice resolves yet is left out until one does.
fn service_port(port: &v1::ServicePort, slices: &[&EndpointSlice]) -> Option<ServicePort> {
    let service_port = u16::try_from(port.port).ok()?;
    let name = port.name.clone().unwrap_or_default();
    let target_port = match &port.target_port {
        None => None,
        Some(IntOrString::Int(n)) => Some(u16::try_from(*n).ok()?),
        Some(IntOrString::String(_)) => {
            let resolved = (slices.iter())
                .flat_map(|s| s.ports.iter().flatten())
                .find(|p| p.name.as_deref().unwrap_or_default() == name)
                .and_then(|p| p.port);
            Some(u16::try_from(resolved?).ok()?)
        }
    };
    Some(ServicePort {
        app_protocol: app_protocol(port.app_protocol.as_deref(), &name),
        name,
        port: service_port,
        target_port,
    })
}

/// `appProtocol` when it names something the proxy knows, else Istio's port-name
/// convention (`http`, `http-web`, `grpc-api`, ...); else detected.
fn app_protocol(declared: Option<&str>, port_name: &str) -> Option<AppProtocol> {
    let by_name = port_name.split('-').next().unwrap_or_default();
    [declared.unwrap_or_default(), by_name]
        .into_iter()
        .find_map(|p| match p {
            "http" => Some(AppProtocol::Http),
            "http2" | "kubernetes.io/h2c" => Some(AppProtocol::Http2),
            "grpc" => Some(AppProtocol::Grpc),
            "tcp" => Some(AppProtocol::Tcp),
            _ => None,
        })
}

/// Endpoints not marked unready (absent `ready` means ready, as the API defines it), each
/// address once.
fn ready_addresses(slices: &[&EndpointSlice]) -> Vec<IpAddr> {
    let ready = slices.iter().flat_map(|s| &s.endpoints).filter(|e| {
        let conditions = e.conditions.as_ref();
        conditions.and_then(|c| c.ready).unwrap_or(true)
            && !conditions.and_then(|c| c.terminating).unwrap_or(false)
    });
    let addresses: BTreeSet<IpAddr> = ready
        .flat_map(|e| &e.addresses)
        .filter_map(|a| a.parse().ok())
        .collect();
    addresses.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = r#"
apiVersion: v1
kind: Service
metadata: { name: web, namespace: shop }
spec:
  type: ClusterIP
  clusterIP: 10.96.0.20
  clusterIPs: [10.96.0.20, "fd00:96::20"]
  selector: { app: web }
  ports:
    - { name: http, port: 80, targetPort: web, protocol: TCP }
    - { name: grpc-api, port: 9000, targetPort: 9000 }
    - { name: admin, port: 9901, targetPort: 9901, appProtocol: kubernetes.io/h2c }
    - { name: dns, port: 53, protocol: UDP }
"#;

    const SLICE: &str = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-abcde
  namespace: shop
  labels: { kubernetes.io/service-name: web }
addressType: IPv4
ports: [{ name: http, port: 8080 }, { name: grpc-api, port: 9000 }]
endpoints:
  - { addresses: [10.244.1.7], conditions: { ready: true } }
  - { addresses: [10.244.2.9] }
  - { addresses: [10.244.2.10], conditions: { ready: false } }
  - { addresses: [10.244.2.11], conditions: { ready: true, terminating: true } }
"#;

    #[test]
    fn ports_addresses_and_protocols_come_from_the_service_and_its_slices() {
        let svc: v1::Service = serde_yaml_ng::from_str(SERVICE).expect("service");
        let slice: EndpointSlice = serde_yaml_ng::from_str(SLICE).expect("slice");
        let got = service_of(&svc, &[&slice])
            .expect("valid")
            .expect("a service");
        assert_eq!(got.vips.len(), 2);
        let ports: Vec<(u16, Option<u16>, Option<AppProtocol>)> = (got.ports.iter())
            .map(|p| (p.port, p.target_port, p.app_protocol))
            .collect();
        assert_eq!(
            ports,
            [
                (80, Some(8080), Some(AppProtocol::Http)),
                (9000, Some(9000), Some(AppProtocol::Grpc)),
                (9901, Some(9901), Some(AppProtocol::Http2)),
            ]
        );
        let ready: Vec<IpAddr> = ["10.244.1.7", "10.244.2.9"]
            .map(|a| a.parse().expect("ip"))
            .into();
        assert_eq!(got.addresses, ready);
        // Before any slice names the `web` port, port 80 cannot be served yet.
        let early = service_of(&svc, &[]).expect("valid").expect("a service");
        assert!(early.ports.iter().all(|p| p.port != 80));
        assert!(early.addresses.is_empty());
    }

    #[test]
    fn headless_and_external_name_services_have_no_frontend() {
        let headless = SERVICE
            .replace("clusterIP: 10.96.0.20", "clusterIP: None")
            .replace(
                "clusterIPs: [10.96.0.20, \"fd00:96::20\"]",
                "clusterIPs: [None]",
            );
        let svc: v1::Service = serde_yaml_ng::from_str(&headless).expect("service");
        assert!(service_of(&svc, &[]).expect("valid").is_none());
        let external = SERVICE.replace("type: ClusterIP", "type: ExternalName");
        let svc: v1::Service = serde_yaml_ng::from_str(&external).expect("service");
        assert!(service_of(&svc, &[]).expect("valid").is_none());
    }
}
