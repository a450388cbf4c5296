//! Exports the redirect mode's own counters (the eBPF programs' per-CPU counters) at each
//! scrape, as `sluice_ebpf_<name>_total`.
use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter},
};

use crate::redirect::router::Router;

pub struct RedirectCounters(pub Arc<Router>);

impl std::fmt::Debug for RedirectCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedirectCounters")
    }
}

impl Collector for RedirectCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for (name, value) in self.0.counters() {
            let metric_name = format!("sluice_{name}");
            let help = format!("Steering: {}", name.replace('_', " "));
            let metric =
                encoder.encode_descriptor(&metric_name, &help, None, MetricType::Counter)?;
            ConstCounter::new(value).encode(metric)?;
        }
        Ok(())
    }
}
