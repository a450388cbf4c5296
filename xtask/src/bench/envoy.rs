//! Envoy's configuration as Istio's sidecar: an L4 sidecar for the plaintext paths, and the
//! same sidecar with Istio's mutual TLS between the two pods for the mTLS path.
//!
//! Every sidecar has Istio's two listeners. `virtualOutbound` on 15001 restores the
//! original destination and `tcp_proxy`s it to an ORIGINAL_DST cluster: `PassthroughCluster`
//! in plaintext, or `outbound_mtls`, whose `UpstreamTlsContext` presents the pod's
//! certificate and accepts only the server's SPIFFE ID. `virtualInbound` on 15006 does the
//! same to `InboundPassthroughClusterIpv4`, which dials the app from 127.0.0.6 (Istio's
//! `upstream_bind_config`: the istio-iptables rules let that source through, so the
//! connection to the app is not captured again; the app sees 127.0.0.6, not the caller).
//! With mTLS, `virtualInbound` is Istio's PERMISSIVE listener: `tls_inspector` sends TLS to a
//! chain whose `DownstreamTlsContext` requires a client certificate from the trust domain,
//! and anything else to the plaintext chain.
//!
//! Istio's TCP telemetry filters (`istio.metadata_exchange`, `istio.stats`) and its ALPN
//! (`istio-peer-exchange`, `istio`) are left out: plain TLS 1.3 with client certificates,
//! the part of Istio's mTLS that Sluice's tunnel also does. The config is written as JSON
//! (which Envoy reads as YAML), so it is built and tested as a value.

use std::path::PathBuf;

use serde_json::{Value, json};

/// Istio's proxy uid: its iptables rules exempt the proxy's own traffic by this owner.
pub const UID: u32 = 1337;

/// Stat prefixes of the `tcp_proxy`s, so the bench can tell which chain carried what.
pub const OUTBOUND_PLAIN: &str = "PassthroughCluster";
pub const OUTBOUND_MTLS: &str = "outbound_mtls";
pub const INBOUND_PLAIN: &str = "InboundPassthroughClusterIpv4";
pub const INBOUND_MTLS: &str = "inbound_mtls";

/// The client sidecar's TLS handshakes with the server's (full or resumed).
pub const CLIENT_HANDSHAKES: &str = "cluster.outbound_mtls.ssl.handshake";

/// One sidecar's side of Istio's mTLS: its own certificate, and what it accepts of peers.
#[derive(Clone, Debug)]
pub struct Tls {
    /// PEM chain: the pod's certificate, then the CA's (`mesh-agent ca issue`'s cert.pem).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The CA certificate alone, the root every peer's chain must lead to.
    pub ca: PathBuf,
    /// Inbound: client certificates must carry a URI SAN under `spiffe://<trust domain>/`.
    pub trust_domain: String,
    /// Outbound: the server's certificate must carry exactly this URI SAN.
    pub server_id: String,
}

/// The `tcp_proxy` stat prefix whose `downstream_cx_total` counts the connections of a
/// hop: the client sidecar's outbound or the server sidecar's inbound.
pub fn carried_stat(outbound: bool, mtls: bool) -> String {
    let prefix = match (outbound, mtls) {
        (true, false) => OUTBOUND_PLAIN,
        (true, true) => OUTBOUND_MTLS,
        (false, false) => INBOUND_PLAIN,
        (false, true) => INBOUND_MTLS,
    };
    format!("tcp.{prefix}.downstream_cx_total")
}

/// The sidecar's configuration: plaintext without `tls`, Istio's mTLS with it.
pub fn config(tls: Option<&Tls>) -> Value {
    let outbound = match tls {
        None => OUTBOUND_PLAIN,
        Some(_) => OUTBOUND_MTLS,
    };
    let mut inbound_filters = vec![original_dst()];
    let mut inbound_chains = Vec::new();
    if let Some(tls) = tls {
        inbound_filters.push(json!({
            "name": "envoy.filters.listener.tls_inspector",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector"
            }
        }));
        inbound_chains.push(json!({
            "name": INBOUND_MTLS,
            "filter_chain_match": {"transport_protocol": "tls"},
            "transport_socket": tls_socket(
                "DownstreamTlsContext",
                json!({
                    "require_client_certificate": true,
                    "common_tls_context": common_tls(tls, json!({"prefix": format!("spiffe://{}/", tls.trust_domain)})),
                }),
            ),
            "filters": [tcp_proxy(INBOUND_MTLS, INBOUND_PLAIN)],
        }));
        inbound_chains.push(json!({
            "name": INBOUND_PLAIN,
            "filter_chain_match": {"transport_protocol": "raw_buffer"},
            "filters": [tcp_proxy(INBOUND_PLAIN, INBOUND_PLAIN)],
        }));
    } else {
        inbound_chains.push(json!({"filters": [tcp_proxy(INBOUND_PLAIN, INBOUND_PLAIN)]}));
    }
    let mut outbound_cluster = passthrough(outbound);
    if let Some(tls) = tls {
        outbound_cluster["transport_socket"] = tls_socket(
            "UpstreamTlsContext",
            json!({"common_tls_context": common_tls(tls, json!({"exact": tls.server_id}))}),
        );
    }
    let mut inbound_cluster = passthrough(INBOUND_PLAIN);
    inbound_cluster["upstream_bind_config"] =
        json!({"source_address": {"address": "127.0.0.6", "port_value": 0}});
    json!({
        "admin": {"address": socket("127.0.0.1", 15000)},
        "static_resources": {
            "listeners": [
                {
                    "name": "virtualOutbound",
                    "address": socket("0.0.0.0", 15001),
                    "listener_filters": [original_dst()],
                    "filter_chains": [{"filters": [tcp_proxy(outbound, outbound)]}],
                },
                {
                    "name": "virtualInbound",
                    "address": socket("0.0.0.0", 15006),
                    "listener_filters": inbound_filters,
                    "filter_chains": inbound_chains,
                },
            ],
            "clusters": [outbound_cluster, inbound_cluster],
        },
    })
}

fn socket(address: &str, port: u16) -> Value {
    json!({"socket_address": {"address": address, "port_value": port}})
}

fn original_dst() -> Value {
    json!({
        "name": "envoy.filters.listener.original_dst",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.listener.original_dst.v3.OriginalDst"
        }
    })
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Value {
    json!({
        "name": "envoy.filters.network.tcp_proxy",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy",
            "stat_prefix": stat_prefix,
            "cluster": cluster,
        }
    })
}

/// An ORIGINAL_DST cluster with the circuit breakers Istio sets on its passthrough clusters
/// (Envoy's default of 1024 connections would refuse the idle-connection test).
fn passthrough(name: &str) -> Value {
    let unlimited = 4_294_967_295_u64;
    json!({
        "name": name,
        "type": "ORIGINAL_DST",
        "lb_policy": "CLUSTER_PROVIDED",
        "connect_timeout": "5s",
        "circuit_breakers": {"thresholds": [{
            "max_connections": unlimited,
            "max_pending_requests": unlimited,
            "max_requests": unlimited,
            "max_retries": unlimited,
        }]},
    })
}

fn tls_socket(context: &str, fields: Value) -> Value {
    let mut typed = json!({
        "@type": format!("type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.{context}")
    });
    if let (Some(typed), Value::Object(fields)) = (typed.as_object_mut(), fields) {
        typed.extend(fields);
    }
    json!({"name": "envoy.transport_sockets.tls", "typed_config": typed})
}

/// TLS 1.3 only (as Sluice's tunnel), the pod's certificate, and peers' chains checked
/// against the CA with their URI SAN matched by `san`.
fn common_tls(tls: &Tls, san: Value) -> Value {
    json!({
        "tls_params": {
            "tls_minimum_protocol_version": "TLSv1_3",
            "tls_maximum_protocol_version": "TLSv1_3",
        },
        "tls_certificates": [{
            "certificate_chain": {"filename": tls.cert.display().to_string()},
            "private_key": {"filename": tls.key.display().to_string()},
        }],
        "validation_context": {
            "trusted_ca": {"filename": tls.ca.display().to_string()},
            "match_typed_subject_alt_names": [{"san_type": "URI", "matcher": san}],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tls() -> Tls {
        Tls {
            cert: "/w/certs/client/cert.pem".into(),
            key: "/w/certs/client/key.pem".into(),
            ca: "/w/certs/client/ca-cert.pem".into(),
            trust_domain: "cluster.local".into(),
            server_id: "spiffe://cluster.local/ns/bench/sa/server".into(),
        }
    }

    fn listener<'a>(config: &'a Value, name: &str) -> &'a Value {
        config["static_resources"]["listeners"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["name"] == name)
            .unwrap()
    }

    fn cluster<'a>(config: &'a Value, name: &str) -> &'a Value {
        config["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no cluster {name}"))
    }

    #[test]
    fn plaintext_sidecar_passes_through_both_ways() {
        let c = config(None);
        let out = listener(&c, "virtualOutbound");
        assert_eq!(out["address"]["socket_address"]["port_value"], 15001);
        let proxy = &out["filter_chains"][0]["filters"][0]["typed_config"];
        assert_eq!(proxy["cluster"], OUTBOUND_PLAIN);
        assert_eq!(proxy["stat_prefix"], OUTBOUND_PLAIN);
        let inbound = listener(&c, "virtualInbound");
        assert_eq!(inbound["listener_filters"].as_array().unwrap().len(), 1);
        assert_eq!(inbound["filter_chains"].as_array().unwrap().len(), 1);
        assert!(
            inbound["filter_chains"][0]
                .get("transport_socket")
                .is_none()
        );
        let passthrough = cluster(&c, OUTBOUND_PLAIN);
        assert_eq!(passthrough["type"], "ORIGINAL_DST");
        assert!(passthrough.get("transport_socket").is_none());
        assert_eq!(
            passthrough["circuit_breakers"]["thresholds"][0]["max_connections"],
            4_294_967_295_u64
        );
        let to_app = cluster(&c, INBOUND_PLAIN);
        assert_eq!(
            to_app["upstream_bind_config"]["source_address"]["address"],
            "127.0.0.6"
        );
        assert!(!c.to_string().contains("tls"));
    }

    #[test]
    fn mtls_client_side_presents_its_cert_and_checks_the_servers_identity() {
        let c = config(Some(&tls()));
        let proxy = &listener(&c, "virtualOutbound")["filter_chains"][0]["filters"][0];
        assert_eq!(proxy["typed_config"]["cluster"], OUTBOUND_MTLS);
        let socket = &cluster(&c, OUTBOUND_MTLS)["transport_socket"];
        assert_eq!(socket["name"], "envoy.transport_sockets.tls");
        let ctx = &socket["typed_config"];
        assert_eq!(
            ctx["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
        );
        let common = &ctx["common_tls_context"];
        assert_eq!(
            common["tls_params"]["tls_minimum_protocol_version"],
            "TLSv1_3"
        );
        assert_eq!(
            common["tls_params"]["tls_maximum_protocol_version"],
            "TLSv1_3"
        );
        assert_eq!(
            common["tls_certificates"][0]["certificate_chain"]["filename"],
            "/w/certs/client/cert.pem"
        );
        assert_eq!(
            common["tls_certificates"][0]["private_key"]["filename"],
            "/w/certs/client/key.pem"
        );
        let validation = &common["validation_context"];
        assert_eq!(
            validation["trusted_ca"]["filename"],
            "/w/certs/client/ca-cert.pem"
        );
        assert_eq!(
            validation["match_typed_subject_alt_names"],
            json!([{"san_type": "URI", "matcher": {"exact": "spiffe://cluster.local/ns/bench/sa/server"}}])
        );
        assert!(ctx.get("alpn_protocols").is_none() && common.get("alpn_protocols").is_none());
    }

    #[test]
    fn mtls_server_side_requires_client_certs_of_the_trust_domain() {
        let c = config(Some(&tls()));
        let inbound = listener(&c, "virtualInbound");
        let filters: Vec<&str> = inbound["listener_filters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            filters,
            [
                "envoy.filters.listener.original_dst",
                "envoy.filters.listener.tls_inspector"
            ]
        );
        let chains = inbound["filter_chains"].as_array().unwrap();
        assert_eq!(
            chains.len(),
            2,
            "PERMISSIVE: a TLS chain and a plaintext one"
        );
        let mtls = &chains[0];
        assert_eq!(mtls["filter_chain_match"]["transport_protocol"], "tls");
        let ctx = &mtls["transport_socket"]["typed_config"];
        assert_eq!(
            ctx["@type"],
            "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
        );
        assert_eq!(ctx["require_client_certificate"], true);
        let validation = &ctx["common_tls_context"]["validation_context"];
        assert_eq!(
            validation["match_typed_subject_alt_names"][0]["matcher"],
            json!({"prefix": "spiffe://cluster.local/"})
        );
        let proxy = &mtls["filters"][0]["typed_config"];
        assert_eq!(proxy["stat_prefix"], INBOUND_MTLS);
        assert_eq!(proxy["cluster"], INBOUND_PLAIN, "delivered from 127.0.0.6");
        let plain = &chains[1];
        assert_eq!(
            plain["filter_chain_match"]["transport_protocol"],
            "raw_buffer"
        );
        assert!(plain.get("transport_socket").is_none());
        // The app is reached in plaintext, as in Istio.
        assert!(cluster(&c, INBOUND_PLAIN).get("transport_socket").is_none());
    }

    #[test]
    fn stats_name_the_chain_that_carried_a_hop() {
        assert_eq!(
            carried_stat(true, false),
            "tcp.PassthroughCluster.downstream_cx_total"
        );
        assert_eq!(
            carried_stat(false, false),
            "tcp.InboundPassthroughClusterIpv4.downstream_cx_total"
        );
        assert_eq!(
            carried_stat(true, true),
            "tcp.outbound_mtls.downstream_cx_total"
        );
        assert_eq!(
            carried_stat(false, true),
            "tcp.inbound_mtls.downstream_cx_total"
        );
        assert!(CLIENT_HANDSHAKES.starts_with(&format!("cluster.{OUTBOUND_MTLS}.")));
    }
}
