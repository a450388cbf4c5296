//! Envoy's sidecar for the HTTP scenarios, as Istio configures outbound HTTP to a service:
//! the plaintext sidecar of `envoy` (the same istio-iptables capture, `virtualOutbound` on
//! 15001), whose `virtualOutbound` now hands each connection by its original destination
//! (`use_original_dst`) to the listener of the service's port. That listener is Istio's
//! `0.0.0.0_<port>` (not bound): an `http_connection_manager` (codec AUTO) whose one route
//! sends every request to the port's cluster `outbound|<port>||web.bench.svc.cluster.local`,
//! with Istio's default retry policy, no route timeout, and the circuit breakers Istio sets.
//! The cluster's one endpoint is the server pod; it speaks the port's protocol upstream
//! (HTTP/1.1 for an `http` port, HTTP/2 for `http2`), as Sluice's agent does for a port
//! with that `appProtocol`.
//!
//! Left out, as on the L4 paths: Istio's own HTTP filters (`istio.metadata_exchange`,
//! `istio.stats`, `istio.alpn`; they are not in upstream Envoy), its `grpc_stats`, `fault`
//! and `cors` filters, and tracing. So Envoy does not make Istio's request metrics or a
//! trace context here, which Sluice's agent does.

use serde_json::{Value, json};

use super::envoy;
use super::http::{HttpPort, PORTS, SERVICE};
use super::pki::NAMESPACE;

/// Istio's name of the cluster of a service port.
pub fn cluster(port: HttpPort) -> String {
    format!(
        "outbound|{}||{SERVICE}.{NAMESPACE}.svc.cluster.local",
        port.port
    )
}

/// The `http_connection_manager`'s stat prefix for a port (Istio's listener name).
fn stat_prefix(port: HttpPort) -> String {
    format!("outbound_0.0.0.0_{}", port.port)
}

/// The stat counting the requests the sidecar's HTTP listener of `port` served.
pub fn requests_stat(port: HttpPort) -> String {
    format!("http.{}.downstream_rq_total", stat_prefix(port))
}

/// The sidecar's configuration; `endpoint` is the server pod's address.
pub fn config(endpoint: &str) -> Value {
    let mut config = envoy::config(None);
    let resources = &mut config["static_resources"];
    if let Some(listeners) = resources["listeners"].as_array_mut() {
        for l in listeners.iter_mut() {
            if l["name"] == "virtualOutbound" {
                l["use_original_dst"] = json!(true);
            }
        }
        listeners.extend(PORTS.map(listener));
    }
    if let Some(clusters) = resources["clusters"].as_array_mut() {
        clusters.extend(PORTS.map(|p| service_cluster(p, endpoint)));
    }
    config
}

fn listener(port: HttpPort) -> Value {
    let name = stat_prefix(port);
    let host = format!("{SERVICE}.{NAMESPACE}.svc.cluster.local:{}", port.port);
    json!({
        "name": name,
        "address": {"socket_address": {"address": "0.0.0.0", "port_value": port.port}},
        "bind_to_port": false,
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "AUTO",
                "use_remote_address": false,
                "normalize_path": true,
                "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
                "stream_idle_timeout": "0s",
                "route_config": {
                    "name": port.port.to_string(),
                    "validate_clusters": false,
                    "virtual_hosts": [{
                        "name": host,
                        "domains": ["*"],
                        "routes": [{
                            "name": "default",
                            "match": {"prefix": "/"},
                            "route": {
                                "cluster": cluster(port),
                                "timeout": "0s",
                                "retry_policy": istio_retry_policy(),
                            },
                        }],
                    }],
                },
                "http_filters": [{
                    "name": "envoy.filters.http.router",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
                    }
                }],
            }
        }]}],
    })
}

/// What Istio puts on every route when no VirtualService says otherwise.
fn istio_retry_policy() -> Value {
    json!({
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "num_retries": 2,
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
            }
        }],
        "host_selection_retry_max_attempts": "5",
        "retriable_status_codes": [503],
    })
}

fn service_cluster(port: HttpPort, endpoint: &str) -> Value {
    let unlimited = 4_294_967_295_u64;
    let name = cluster(port);
    let protocol = if port.http2 {
        json!({"http2_protocol_options": {}})
    } else {
        json!({"http_protocol_options": {}})
    };
    json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "10s",
        "lb_policy": "LEAST_REQUEST",
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": {
                "socket_address": {"address": endpoint, "port_value": port.target}
            }}}]}],
        },
        "circuit_breakers": {"thresholds": [{
            "max_connections": unlimited,
            "max_pending_requests": unlimited,
            "max_requests": unlimited,
            "max_retries": unlimited,
        }]},
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": protocol,
            }
        },
    })
}

#[cfg(test)]
mod tests {
    use super::super::http::{HTTP1, HTTP2};
    use super::*;

    fn find<'a>(config: &'a Value, kind: &str, name: &str) -> &'a Value {
        config["static_resources"][kind]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    }

    #[test]
    fn outbound_hands_the_service_ports_to_http_listeners() {
        let c = config("10.79.0.3");
        let outbound = find(&c, "listeners", "virtualOutbound");
        assert_eq!(outbound["use_original_dst"], true);
        // Anything else still passes through, as in the L4 sidecar.
        let tcp = &outbound["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(tcp["cluster"], envoy::OUTBOUND_PLAIN);
        for port in PORTS {
            let l = find(&c, "listeners", &format!("outbound_0.0.0.0_{}", port.port));
            assert_eq!(l["bind_to_port"], false);
            assert_eq!(l["address"]["socket_address"]["port_value"], port.port);
            let hcm = &l["filter_chains"][0]["filters"][0]["typed_config"];
            assert_eq!(hcm["codec_type"], "AUTO");
            let route = &hcm["route_config"]["virtual_hosts"][0]["routes"][0]["route"];
            assert_eq!(route["cluster"], cluster(port));
            assert_eq!(route["retry_policy"]["num_retries"], 2);
            assert_eq!(
                hcm["http_filters"][0]["name"], "envoy.filters.http.router",
                "the router is the last (and only) filter"
            );
        }
    }

    #[test]
    fn each_port_has_its_cluster_with_the_server_pod_and_its_protocol() {
        let c = config("10.79.0.3");
        assert_eq!(
            cluster(HTTP1),
            "outbound|80||web.bench.svc.cluster.local",
            "Istio's naming"
        );
        for (port, h2) in [(HTTP1, false), (HTTP2, true)] {
            let cl = find(&c, "clusters", &cluster(port));
            let addr = &cl["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
                ["socket_address"];
            assert_eq!(addr["address"], "10.79.0.3");
            assert_eq!(addr["port_value"], port.target);
            let explicit = &cl["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
                ["explicit_http_config"];
            assert_eq!(explicit.get("http2_protocol_options").is_some(), h2);
            assert_eq!(explicit.get("http_protocol_options").is_some(), !h2);
        }
        assert_eq!(
            requests_stat(HTTP2),
            "http.outbound_0.0.0.0_81.downstream_rq_total"
        );
    }
}
