//! Request spans: the proxy's hop of each sampled trace, handed to the OTLP exporter. The
//! exporter follows the config (started, replaced or stopped on reload); its counters are
//! exported as `sluice_otlp_*`.
use std::{
    sync::{Arc, RwLock},
    time::SystemTime,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};
use tracing::{error, info};

use super::observe::Exchange;
use crate::{
    config::TracingSettings,
    metrics::http::RequestRecord,
    otlp::{AttributeValue, Exporter, Span, parse_hex_id},
};

#[derive(Default)]
pub struct Spans {
    current: RwLock<Option<(TracingSettings, Arc<Exporter>)>>,
}

impl Spans {
    /// Starts, replaces or stops the exporter when the settings changed.
    pub fn configure(&self, settings: Option<&TracingSettings>, node: &str) {
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if current.as_ref().map(|(s, _)| s) == settings {
            return;
        }
        *current = settings.and_then(|s| {
            let endpoint = s.otlp_endpoint.parse().ok()?;
            match Exporter::start(endpoint, "sluice-proxy".into(), node.into()) {
                Ok(exporter) => {
                    info!(endpoint = %s.otlp_endpoint, rate = s.sampling_rate, "exporting request spans");
                    Some((s.clone(), exporter))
                }
                Err(err) => {
                    error!(%err, "cannot export spans");
                    None
                }
            }
        });
    }

    /// The share of new traces to record; `None` when no collector is configured.
    pub fn sampling_rate(&self) -> Option<f64> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current.as_ref().map(|(s, _)| s.sampling_rate)
    }

    /// Exports the request's span when its trace is sampled.
    pub fn record(&self, exchange: &Exchange, record: &RequestRecord) {
        let Some(trace) = exchange.trace.as_ref().filter(|t| t.sampled) else {
            return;
        };
        let exporter = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            let Some((_, exporter)) = current.as_ref() else {
                return;
            };
            exporter.clone()
        };
        let (Some(trace_id), Some(span_id)) =
            (parse_hex_id(&trace.trace_id), parse_hex_id(&trace.span_id))
        else {
            return;
        };
        let labels = &record.labels;
        let attributes: Vec<(&'static str, AttributeValue)> = vec![
            ("http.request.method", exchange.method.as_str().into()),
            ("url.path", exchange.path.as_str().into()),
            ("server.address", exchange.authority.as_str().into()),
            (
                "http.response.status_code",
                i64::from(labels.response_code).into(),
            ),
            (
                "upstream.address",
                exchange.upstream_host.clone().unwrap_or_default().into(),
            ),
            (
                "destination.service",
                labels.destination_service.as_str().into(),
            ),
            ("source.workload", labels.source_workload.as_str().into()),
            (
                "destination.workload",
                labels.destination_workload.as_str().into(),
            ),
            ("response_flags", labels.response_flags.into()),
            ("guid:x-request-id", exchange.request_id.as_str().into()),
        ];
        exporter.export(Span {
            trace_id,
            span_id,
            parent_span_id: trace.parent_id.as_deref().and_then(parse_hex_id),
            name: format!("{} {}", exchange.method, labels.destination_service),
            start: exchange.start,
            end: SystemTime::now(),
            attributes,
            error: labels.response_code >= 500 || labels.response_flags != "-",
        });
    }

    /// Sends what is queued before the agent exits.
    pub async fn shutdown(&self) {
        let exporter = {
            let current = self.current.read().unwrap_or_else(|p| p.into_inner());
            current.as_ref().map(|(_, e)| e.clone())
        };
        if let Some(exporter) = exporter {
            exporter.shutdown().await;
        }
    }

    fn counters(&self) -> [(&'static str, &'static str, u64); 3] {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        let (exported, dropped, failed) = current.as_ref().map_or((0, 0, 0), |(_, e)| {
            (e.exported(), e.dropped(), e.failed_batches())
        });
        [
            (
                "sluice_otlp_spans_exported",
                "Spans the collector accepted",
                exported,
            ),
            (
                "sluice_otlp_spans_dropped",
                "Spans dropped: the export queue was full",
                dropped,
            ),
            (
                "sluice_otlp_failed_batches",
                "Span batches the collector did not take",
                failed,
            ),
        ]
    }
}

/// The exporter's counters at each scrape.
pub struct SpanCounters(pub Arc<super::observe::Sink>);

impl std::fmt::Debug for SpanCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpanCounters")
    }
}

impl Collector for SpanCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, help, value) in self.0.spans.counters() {
            let metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }
}
