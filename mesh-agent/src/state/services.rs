//! Services resolved for the data path: each virtual address and port (a frontend) with its
//! endpoints and its route rules in the order Gateway API says they are tried.
use std::{
    cmp::Reverse,
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use crate::config::{
    Config, Workload, WorkloadKey,
    route::{HttpRoute, HttpRouteMatch, HttpRouteRetry, PathMatchType},
    service::{AppProtocol, Service, ServicePort},
};

/// Names a service across config versions.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A service with its endpoints' addresses.
#[derive(Debug)]
pub struct ServiceView {
    pub key: ServiceKey,
    pub service: Service,
    pub endpoints: Vec<Endpoint>,
}

/// One address that serves a service; `workload` when the config knows who owns it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub workload: Option<Arc<Workload>>,
}

impl ServiceView {
    /// `<name>.<namespace>.svc.cluster.local`, as Istio labels `destination_service`.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.cluster.local", self.key.name, self.key.namespace)
    }

    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.service.ports.iter().find(|p| p.port == port)
    }

    /// The endpoints of the family a client dialled, at the port behind service port `port`.
    pub fn endpoint_addrs(
        &self,
        port: u16,
        ipv6: bool,
    ) -> Vec<(SocketAddr, Option<Arc<Workload>>)> {
        let Some(target) = self.port(port).map(ServicePort::target) else {
            return Vec::new();
        };
        (self.endpoints.iter())
            .filter(|e| e.ip.is_ipv6() == ipv6)
            .map(|e| (SocketAddr::new(e.ip, target), e.workload.clone()))
            .collect()
    }
}

/// What answers at one virtual address and port.
#[derive(Debug)]
pub struct Frontend {
    pub service: Arc<ServiceView>,
    pub port: ServicePort,
    /// Tried in order; the first match wins. Empty: every request goes to the service.
    pub rules: Vec<RouteRule>,
}

/// One match of a route rule, with where its requests go.
#[derive(Debug)]
pub struct RouteRule {
    /// `namespace/name` of the route, for logs and debug output.
    pub route: String,
    pub matched: HttpRouteMatch,
    pub backends: Vec<Backend>,
    pub request_timeout: Option<Duration>,
    pub attempt_timeout: Option<Duration>,
    pub retry: Option<HttpRouteRetry>,
}

/// A weighted share of a rule's requests: a service and one of its ports.
#[derive(Debug)]
pub struct Backend {
    pub service: Arc<ServiceView>,
    pub port: u16,
    pub weight: u32,
}

/// A pod's port that a service declares as HTTP: requests to it are seen (and counted) on
/// the server side too.
#[derive(Clone, Debug)]
pub struct HttpTarget {
    pub service: Arc<ServiceView>,
    pub app_protocol: AppProtocol,
}

#[derive(Debug, Default)]
pub struct ServiceIndex {
    frontends: HashMap<SocketAddr, Arc<Frontend>>,
    http_targets: HashMap<(WorkloadKey, u16), HttpTarget>,
}

impl ServiceIndex {
    pub fn new(config: &Config) -> Self {
        let services: HashMap<ServiceKey, Arc<ServiceView>> = (config.services.iter())
            .map(|s| {
                let view = Arc::new(view(s, &config.workloads));
                (view.key.clone(), view)
            })
            .collect();
        let mut frontends = HashMap::new();
        let mut http_targets = HashMap::new();
        for s in services.values() {
            for port in &s.service.ports {
                let Some(app_protocol) = port.app_protocol.filter(|p| *p != AppProtocol::Tcp)
                else {
                    continue;
                };
                for w in s.endpoints.iter().filter_map(|e| e.workload.as_ref()) {
                    let target = HttpTarget {
                        service: s.clone(),
                        app_protocol,
                    };
                    http_targets
                        .entry((w.key(), port.target()))
                        .or_insert(target);
                }
            }
            for port in &s.service.ports {
                let rules = rules_for(s, port.port, &config.http_routes, &services);
                let frontend = Arc::new(Frontend {
                    service: s.clone(),
                    port: port.clone(),
                    rules,
                });
                for vip in &s.service.vips {
                    frontends.insert(SocketAddr::new(*vip, port.port), frontend.clone());
                }
            }
        }
        Self {
            frontends,
            http_targets,
        }
    }

    pub fn frontend(&self, dst: SocketAddr) -> Option<&Arc<Frontend>> {
        self.frontends.get(&dst)
    }

    /// The service that declares `port` of `workload` as HTTP, if one does.
    pub fn http_target(&self, workload: &WorkloadKey, port: u16) -> Option<&HttpTarget> {
        self.http_targets.get(&(workload.clone(), port))
    }
}

fn view(s: &Service, workloads: &[Workload]) -> ServiceView {
    let key = ServiceKey {
        namespace: s.namespace.clone(),
        name: s.name.clone(),
    };
    let selected = (workloads.iter())
        .filter(|w| !s.selector.is_empty() && w.namespace == s.namespace)
        .filter(|w| s.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)));
    let mut endpoints: Vec<Endpoint> = selected
        .flat_map(|w| {
            let w = Arc::new(w.clone());
            w.ips.clone().into_iter().map(move |ip| Endpoint {
                ip,
                workload: Some(w.clone()),
            })
        })
        .collect();
    for ip in &s.addresses {
        if !endpoints.iter().any(|e| e.ip == *ip) {
            let workload = workloads.iter().find(|w| w.ips.contains(ip)).cloned();
            endpoints.push(Endpoint {
                ip: *ip,
                workload: workload.map(Arc::new),
            });
        }
    }
    ServiceView {
        key,
        service: s.clone(),
        endpoints,
    }
}

/// The rules of every route whose parent is this service port, one entry per match, most
/// specific first (Gateway API's precedence: an exact path, then the longest prefix, a
/// method, more headers, more query parameters; then the order of the config).
fn rules_for(
    s: &ServiceView,
    port: u16,
    routes: &[HttpRoute],
    services: &HashMap<ServiceKey, Arc<ServiceView>>,
) -> Vec<RouteRule> {
    let attached = routes.iter().filter(|r| {
        r.parent_refs.iter().any(|p| {
            let namespace = p.namespace.as_ref().unwrap_or(&r.namespace);
            p.name == s.key.name
                && *namespace == s.key.namespace
                && p.port.is_none_or(|p| p == port)
        })
    });
    let mut rules = Vec::new();
    for route in attached {
        for rule in &route.rules {
            let backends: Vec<Backend> = if rule.backend_refs.is_empty() {
                vec![Backend {
                    service: services[&s.key].clone(),
                    port,
                    weight: 1,
                }]
            } else {
                (rule.backend_refs.iter())
                    .filter_map(|b| {
                        let key = ServiceKey {
                            namespace: b.namespace.clone().unwrap_or(route.namespace.clone()),
                            name: b.name.clone(),
                        };
                        Some(Backend {
                            service: services.get(&key)?.clone(),
                            port: b.port.unwrap_or(port),
                            weight: b.weight,
                        })
                    })
                    .collect()
            };
            let matches = if rule.matches.is_empty() {
                vec![HttpRouteMatch::default()]
            } else {
                rule.matches.clone()
            };
            for matched in matches {
                rules.push(RouteRule {
                    route: format!("{}/{}", route.namespace, route.name),
                    matched,
                    backends: backends
                        .iter()
                        .map(|b| Backend {
                            service: b.service.clone(),
                            port: b.port,
                            weight: b.weight,
                        })
                        .collect(),
                    request_timeout: rule.timeouts.as_ref().and_then(|t| t.request),
                    attempt_timeout: rule.timeouts.as_ref().and_then(|t| t.backend_request),
                    retry: rule.retry.clone(),
                });
            }
        }
    }
    // A stable sort keeps the config's order among equals.
    rules.sort_by_key(|r| precedence(&r.matched));
    rules
}

fn precedence(m: &HttpRouteMatch) -> impl Ord + use<> {
    let (exact, prefix_len) = match &m.path {
        Some(p) if p.kind == PathMatchType::Exact => (true, p.value.len()),
        Some(p) => (false, p.value.len()),
        None => (false, 1),
    };
    (
        Reverse(exact),
        Reverse(prefix_len),
        Reverse(m.method.is_some()),
        Reverse(m.headers.len()),
        Reverse(m.query_params.len()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config(yaml: &str) -> Config {
        crate::config::parse(Path::new("test.yaml"), yaml).unwrap()
    }

    const NODE: &str = "
node: n
workloads:
- {name: web-1, enrolled: false, labels: {app: web}, ips: [10.0.0.1, 'fd00::1']}
- {name: web-2, enrolled: false, labels: {app: web, track: canary}, ips: [10.0.0.2]}
- {name: other, enrolled: false, namespace: prod, labels: {app: web}, ips: [10.0.0.3]}
services:
- {name: web, vips: [10.96.0.1], ports: [{port: 80, targetPort: 8080}], selector: {app: web}}
- {name: web-canary, vips: [10.96.0.2], ports: [{port: 80, targetPort: 8081}], selector: {track: canary}, addresses: [10.0.0.9]}
";

    #[test]
    fn endpoints_come_from_the_selector_in_the_namespace_and_from_addresses() {
        let index = ServiceIndex::new(&config(NODE));
        let web = index.frontend("10.96.0.1:80".parse().unwrap()).unwrap();
        let addrs: Vec<String> = (web.service.endpoint_addrs(80, false).iter())
            .map(|(a, _)| a.to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.1:8080", "10.0.0.2:8080"]);
        assert_eq!(web.service.endpoint_addrs(80, true).len(), 1);
        let canary = index.frontend("10.96.0.2:80".parse().unwrap()).unwrap();
        let addrs: Vec<String> = (canary.service.endpoint_addrs(80, false).iter())
            .map(|(a, _)| a.to_string())
            .collect();
        assert_eq!(addrs, ["10.0.0.2:8081", "10.0.0.9:8081"]);
        assert!(index.frontend("10.96.0.1:81".parse().unwrap()).is_none());
    }

    #[test]
    fn rules_are_tried_most_specific_first() {
        let yaml = format!(
            "{NODE}httpRoutes:\n\
             - name: a\n  parentRefs: [{{name: web}}]\n  rules:\n\
             \x20 - matches: [{{path: {{value: /}}}}]\n\
             \x20 - matches: [{{path: {{value: /api}}, method: GET}}]\n\
             \x20   backendRefs: [{{name: web-canary, weight: 10}}, {{name: web, weight: 90}}]\n\
             \x20 - matches: [{{path: {{type: Exact, value: /api/x}}}}]\n"
        );
        let index = ServiceIndex::new(&config(&yaml));
        let web = index.frontend("10.96.0.1:80".parse().unwrap()).unwrap();
        let paths: Vec<&str> = (web.rules.iter())
            .map(|r| r.matched.path.as_ref().unwrap().value.as_str())
            .collect();
        assert_eq!(paths, ["/api/x", "/api", "/"]);
        let split = &web.rules[1].backends;
        assert_eq!(split[0].service.key.name, "web-canary");
        assert_eq!((split[0].weight, split[1].weight), (10, 90));
        let canary = index.frontend("10.96.0.2:80".parse().unwrap()).unwrap();
        assert!(
            canary.rules.is_empty(),
            "routes attach to their parent only"
        );
    }

    #[test]
    fn routes_to_services_that_do_not_exist_are_refused() {
        let yaml = format!(
            "{NODE}httpRoutes:\n- name: a\n  parentRefs: [{{name: web}}]\n  \
             rules: [{{backendRefs: [{{name: nope}}]}}]\n"
        );
        let err = crate::config::parse(Path::new("test.yaml"), &yaml).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("no service default/nope"), "{err}");
    }
}
