//! Request metrics with Istio's names, labels and buckets, and the L7 proxy's own counters.
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::{Family, MetricConstructor},
        histogram::Histogram,
    },
    registry::Registry,
};

/// Istio's buckets for `istio_request_duration_milliseconds`.
const DURATION_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];
/// Istio's buckets for request and response sizes.
const SIZE_BYTES: [f64; 8] = [
    1.0, 10.0, 100.0, 1000.0, 10000.0, 100000.0, 1000000.0, 10000000.0,
];
const DETECTION_SECONDS: [f64; 8] = [0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 1.0];

/// Labels of Istio's request metrics.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_service: String,
    pub destination_service_name: String,
    pub destination_service_namespace: String,
    /// `http` or `grpc`.
    pub request_protocol: &'static str,
    pub response_code: u16,
    /// The gRPC status from the trailers (or headers), `-` for plain HTTP.
    pub grpc_response_status: String,
    /// Envoy's response flags: `-`, `UH`, `UF`, `UT`, `UO`, `RL`, `NR`, `DC`.
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

impl RequestLabels {
    /// Every label `unknown` (or its neutral value), to fill in what is known.
    pub fn unknown() -> Self {
        let unknown = || "unknown".to_string();
        Self {
            reporter: "source",
            source_workload: unknown(),
            source_workload_namespace: unknown(),
            source_principal: unknown(),
            destination_workload: unknown(),
            destination_workload_namespace: unknown(),
            destination_principal: unknown(),
            destination_service: unknown(),
            destination_service_name: unknown(),
            destination_service_namespace: unknown(),
            request_protocol: "http",
            response_code: 0,
            grpc_response_status: "-".into(),
            response_flags: "-",
            connection_security_policy: "none",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub destination_service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BadRequestLabels {
    pub reason: &'static str,
}

#[derive(Clone, Copy)]
pub struct Buckets(&'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type Histograms<L> = Family<L, Histogram, Buckets>;

#[derive(Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Histograms<RequestLabels>,
    request_bytes: Histograms<RequestLabels>,
    response_bytes: Histograms<RequestLabels>,
    detected: Family<ProtocolLabels, Counter>,
    pub detection_seconds: Histogram,
    retries: Family<ServiceLabels, Counter>,
    budget_exhausted: Family<ServiceLabels, Counter>,
    ejections: Family<ServiceLabels, Counter>,
    rate_limited: Family<ServiceLabels, Counter>,
    pending_overflow: Family<ServiceLabels, Counter>,
    bad_requests: Family<BadRequestLabels, Counter>,
}

impl std::fmt::Debug for Buckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} buckets", self.0.len())
    }
}

/// One finished request, as the metrics see it.
pub struct RequestRecord {
    pub labels: RequestLabels,
    pub duration_ms: f64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl HttpMetrics {
    pub fn new() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(Buckets(&DURATION_MS)),
            request_bytes: Family::new_with_constructor(Buckets(&SIZE_BYTES)),
            response_bytes: Family::new_with_constructor(Buckets(&SIZE_BYTES)),
            detected: Family::default(),
            detection_seconds: Histogram::new(DETECTION_SECONDS.iter().copied()),
            retries: Family::default(),
            budget_exhausted: Family::default(),
            ejections: Family::default(),
            rate_limited: Family::default(),
            pending_overflow: Family::default(),
            bad_requests: Family::default(),
        }
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "istio_requests",
            "Requests through the proxy",
            self.requests.clone(),
        );
        r.register(
            "istio_request_duration_milliseconds",
            "Time from the request's arrival to the end of its response",
            self.duration.clone(),
        );
        r.register(
            "istio_request_bytes",
            "Request body sizes",
            self.request_bytes.clone(),
        );
        r.register(
            "istio_response_bytes",
            "Response body sizes",
            self.response_bytes.clone(),
        );
        r.register(
            "sluice_protocol_detected",
            "Connections to services by the protocol detected (or configured)",
            self.detected.clone(),
        );
        r.register(
            "sluice_protocol_detection_seconds",
            "Time protocol detection took",
            self.detection_seconds.clone(),
        );
        r.register(
            "sluice_http_retries",
            "Requests sent again",
            self.retries.clone(),
        );
        r.register(
            "sluice_http_retry_budget_exhausted",
            "Retries the budget refused",
            self.budget_exhausted.clone(),
        );
        r.register(
            "sluice_endpoint_ejections",
            "Endpoints the circuit breaker left out",
            self.ejections.clone(),
        );
        r.register(
            "sluice_http_rate_limited",
            "Requests refused with 429 by the local rate limit",
            self.rate_limited.clone(),
        );
        r.register(
            "sluice_http_pending_overflow",
            "Requests refused with 503 over the pending-request cap",
            self.pending_overflow.clone(),
        );
        r.register(
            "sluice_http_bad_requests",
            "Client connections ended for bad HTTP, by reason",
            self.bad_requests.clone(),
        );
    }

    pub fn request(&self, record: &RequestRecord) {
        self.requests.get_or_create(&record.labels).inc();
        (self.duration.get_or_create(&record.labels)).observe(record.duration_ms);
        #[allow(clippy::cast_precision_loss)] // sizes far below 2^53
        {
            (self.request_bytes.get_or_create(&record.labels)).observe(record.request_bytes as f64);
            (self.response_bytes.get_or_create(&record.labels))
                .observe(record.response_bytes as f64);
        }
    }

    pub fn detected(&self, protocol: &'static str) {
        self.detected
            .get_or_create(&ProtocolLabels { protocol })
            .inc();
    }

    pub fn retried(&self, service: &str) {
        self.retries.get_or_create(&service_labels(service)).inc();
    }

    pub fn budget_exhausted(&self, service: &str) {
        self.budget_exhausted
            .get_or_create(&service_labels(service))
            .inc();
    }

    pub fn ejected(&self, service: &str) {
        self.ejections.get_or_create(&service_labels(service)).inc();
    }

    pub fn rate_limited(&self, service: &str) {
        self.rate_limited
            .get_or_create(&service_labels(service))
            .inc();
    }

    pub fn pending_overflow(&self, service: &str) {
        self.pending_overflow
            .get_or_create(&service_labels(service))
            .inc();
    }

    pub fn bad_request(&self, reason: &'static str) {
        self.bad_requests
            .get_or_create(&BadRequestLabels { reason })
            .inc();
    }
}

fn service_labels(service: &str) -> ServiceLabels {
    ServiceLabels {
        destination_service: service.to_owned(),
    }
}
