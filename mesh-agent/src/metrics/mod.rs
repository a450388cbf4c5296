//! Prometheus metrics. Connection and request metrics use Istio's standard names and labels
//! so existing dashboards work; Sluice's own are prefixed `sluice_`.
pub mod http;

use std::sync::{Arc, Mutex};

use prometheus_client::{
    collector::Collector,
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// Labels of Istio's TCP metrics. `reporter` is `source` for the client's proxy (outbound)
/// and `destination` for the server's (inbound).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub request_protocol: &'static str,
    /// `mutual_tls` through the tunnel, `none` for plain TCP.
    pub connection_security_policy: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// `client` (dialling a tunnel) or `server` (accepting one on 15008).
    pub side: &'static str,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `new` when the stream opened a tunnel, `pooled` when it reused one.
    pub tunnel: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModeLabels {
    pub mode: &'static str,
}

/// Counters one proxied connection updates, resolved once per connection so the data path
/// only does atomic adds.
#[derive(Clone, Debug)]
pub struct ConnectionCounters {
    pub sent_bytes: Counter,
    pub received_bytes: Counter,
    closed: Counter,
}

impl ConnectionCounters {
    pub fn closed(&self) {
        self.closed.inc();
    }
}

#[derive(Debug)]
pub struct Metrics {
    registry: Mutex<Registry>,
    tcp_opened: Family<TcpLabels, Counter>,
    tcp_closed: Family<TcpLabels, Counter>,
    tcp_sent: Family<TcpLabels, Counter>,
    tcp_received: Family<TcpLabels, Counter>,
    pub enrolled_pods: Gauge,
    redirect_mode: Family<ModeLabels, Gauge>,
    pub config_reloads: Counter,
    pub config_rejections: Counter,
    pub enroll_failures: Counter,
    authz_denied: Family<ReasonLabels, Counter>,
    pub tunnels_opened: Counter,
    pub tunnels_active: Gauge,
    tunnel_streams: Family<StreamLabels, Counter>,
    handshake_failures: Family<HandshakeLabels, Counter>,
    pub http: http::HttpMetrics,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Mutex::new(Registry::default()),
            tcp_opened: Family::default(),
            tcp_closed: Family::default(),
            tcp_sent: Family::default(),
            tcp_received: Family::default(),
            enrolled_pods: Gauge::default(),
            redirect_mode: Family::default(),
            config_reloads: Counter::default(),
            config_rejections: Counter::default(),
            enroll_failures: Counter::default(),
            authz_denied: Family::default(),
            tunnels_opened: Counter::default(),
            tunnels_active: Gauge::default(),
            tunnel_streams: Family::default(),
            handshake_failures: Family::default(),
            http: http::HttpMetrics::new(),
        };
        registry.register(
            "istio_tcp_connections_opened",
            "TCP connections opened through the proxy",
            m.tcp_opened.clone(),
        );
        registry.register(
            "istio_tcp_connections_closed",
            "TCP connections closed through the proxy",
            m.tcp_closed.clone(),
        );
        registry.register(
            "istio_tcp_sent_bytes",
            "Bytes the destination sent back (response), as Istio counts them",
            m.tcp_sent.clone(),
        );
        registry.register(
            "istio_tcp_received_bytes",
            "Bytes the source sent to the destination (request), as Istio counts them",
            m.tcp_received.clone(),
        );
        registry.register(
            "sluice_enrolled_pods",
            "Pods whose traffic this node captures",
            m.enrolled_pods.clone(),
        );
        registry.register(
            "sluice_redirect_mode",
            "How traffic is steered into the proxy (1 for the mode in use)",
            m.redirect_mode.clone(),
        );
        registry.register(
            "sluice_config_reloads",
            "Configuration versions applied",
            m.config_reloads.clone(),
        );
        registry.register(
            "sluice_config_rejections",
            "Configuration versions refused as invalid",
            m.config_rejections.clone(),
        );
        registry.register(
            "sluice_pod_enroll_failures",
            "Pods that could not be enrolled",
            m.enroll_failures.clone(),
        );
        registry.register(
            "sluice_authz_denied",
            "Inbound connections refused by policy, by reason",
            m.authz_denied.clone(),
        );
        registry.register(
            "sluice_hbone_tunnels_opened",
            "Mesh tunnels (TLS + HTTP/2 connections) this node dialled",
            m.tunnels_opened.clone(),
        );
        registry.register(
            "sluice_hbone_tunnels_active",
            "Mesh tunnels this node dialled that are open now",
            m.tunnels_active.clone(),
        );
        registry.register(
            "sluice_hbone_streams",
            "Connections carried as a stream in a mesh tunnel, on a new or a pooled tunnel",
            m.tunnel_streams.clone(),
        );
        registry.register(
            "sluice_hbone_handshake_failures",
            "Mesh tunnels that could not be set up, by side and reason",
            m.handshake_failures.clone(),
        );
        m.http.register(&mut registry);
        *m.registry.lock().unwrap_or_else(|p| p.into_inner()) = registry;
        Arc::new(m)
    }

    /// Adds a collector read at each scrape (e.g. the eBPF programs' counters).
    pub fn register_collector(&self, collector: Box<dyn Collector>) {
        self.registry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register_collector(collector);
    }

    pub fn set_redirect_mode(&self, mode: &'static str) {
        self.redirect_mode
            .get_or_create(&ModeLabels { mode })
            .set(1);
    }

    /// Counts a new connection and returns the counters it will update.
    pub fn connection_opened(&self, labels: &TcpLabels) -> ConnectionCounters {
        self.tcp_opened.get_or_create(labels).inc();
        ConnectionCounters {
            sent_bytes: self.tcp_sent.get_or_create(labels).clone(),
            received_bytes: self.tcp_received.get_or_create(labels).clone(),
            closed: self.tcp_closed.get_or_create(labels).clone(),
        }
    }

    pub fn authz_denied(&self, reason: &'static str) {
        self.authz_denied
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    pub fn tunnel_stream(&self, pooled: bool) {
        let tunnel = if pooled { "pooled" } else { "new" };
        self.tunnel_streams
            .get_or_create(&StreamLabels { tunnel })
            .inc();
    }

    pub fn handshake_failed(&self, side: &'static str, reason: &'static str) {
        self.handshake_failures
            .get_or_create(&HandshakeLabels { side, reason })
            .inc();
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if prometheus_client::encoding::prometheus_text::encode(&mut out, &registry).is_err() {
            out.push_str("# error encoding metrics\n");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_counters_render_with_istio_names() {
        let m = Metrics::new();
        let labels = TcpLabels {
            reporter: "source",
            source_workload: "a".into(),
            source_workload_namespace: "ns".into(),
            source_principal: "spiffe://cluster.local/ns/ns/sa/default".into(),
            destination_workload: "b".into(),
            destination_workload_namespace: "ns".into(),
            destination_principal: "unknown".into(),
            request_protocol: "tcp",
            connection_security_policy: "none",
        };
        let c = m.connection_opened(&labels);
        c.sent_bytes.inc_by(10);
        c.closed();
        let text = m.render();
        assert!(
            text.contains(
                "istio_tcp_connections_opened_total{reporter=\"source\",source_workload=\"a\""
            ),
            "{text}"
        );
        assert!(text.contains("istio_tcp_sent_bytes_total{"), "{text}");
        assert!(text.contains("} 10"), "{text}");
        assert!(
            text.contains("istio_tcp_connections_closed_total{"),
            "{text}"
        );
    }
}
