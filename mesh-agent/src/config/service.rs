//! Services in the config: a name and virtual IPs in front of endpoints, shaped like a
//! Kubernetes `Service` (ports with `targetPort` and `appProtocol`, a label `selector`) so the
//! Kubernetes source can fill them in, plus the traffic policy the node proxy applies to
//! every request to them.
use std::{collections::BTreeMap, net::IpAddr, time::Duration};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// The addresses clients dial; nobody owns them, the proxy answers for them.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// Endpoints: the workloads of the service's namespace whose labels include all of these.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Endpoints given by address, beside (or instead of) the selector's.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub traffic_policy: TrafficPolicy,
}

fn default_namespace() -> String {
    "default".into()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePort {
    #[serde(default)]
    pub name: String,
    pub port: u16,
    /// The endpoints' port; the service port when absent.
    pub target_port: Option<u16>,
    /// What the port speaks; absent: detected from what the client sends first.
    pub app_protocol: Option<AppProtocol>,
}

impl ServicePort {
    pub fn target(&self) -> u16 {
        self.target_port.unwrap_or(self.port)
    }
}

/// Kubernetes' `appProtocol` values the proxy knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppProtocol {
    Http,
    Http2,
    Grpc,
    Tcp,
}

/// What the proxy does for every request to a service; each part is off unless configured,
/// except the retry budget, which always bounds retries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrafficPolicy {
    pub circuit_breaker: Option<CircuitBreaker>,
    pub rate_limit: Option<RateLimit>,
    #[serde(default)]
    pub retry_budget: RetryBudget,
}

/// An endpoint failing `consecutiveFailures` times in a row (connect errors, 5xx) is left out
/// for `baseEjectionTime`, doubled at each ejection up to `maxEjectionTime`;
/// `maxPendingRequests` caps the requests waiting or in flight (503 beyond it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CircuitBreaker {
    #[serde(default = "defaults::consecutive_failures")]
    pub consecutive_failures: u32,
    #[serde(with = "humantime_serde", default = "defaults::base_ejection")]
    pub base_ejection_time: Duration,
    #[serde(with = "humantime_serde", default = "defaults::max_ejection")]
    pub max_ejection_time: Duration,
    #[serde(default = "defaults::max_pending")]
    pub max_pending_requests: usize,
}

/// A token bucket per client pod and service: 429 beyond it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RateLimit {
    pub requests_per_second: f64,
    /// Requests allowed at once after a quiet spell; `requestsPerSecond` when absent.
    pub burst: Option<u32>,
}

/// Retries may add `ratio` of the requests, and at least `minRetriesPerSecond`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RetryBudget {
    #[serde(default = "defaults::retry_ratio")]
    pub ratio: f64,
    #[serde(default = "defaults::min_retries")]
    pub min_retries_per_second: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        Self {
            ratio: defaults::retry_ratio(),
            min_retries_per_second: defaults::min_retries(),
        }
    }
}

mod defaults {
    use std::time::Duration;

    pub fn consecutive_failures() -> u32 {
        5
    }
    pub fn base_ejection() -> Duration {
        Duration::from_secs(10)
    }
    pub fn max_ejection() -> Duration {
        Duration::from_secs(300)
    }
    pub fn max_pending() -> usize {
        1024
    }
    pub fn retry_ratio() -> f64 {
        0.2
    }
    pub fn min_retries() -> u32 {
        10
    }
}

impl Service {
    /// Checks what serde cannot: ports that are ports, once each, sane numbers.
    pub fn validate(&self) -> Result<(), String> {
        let who = format!("services: {}/{}", self.namespace, self.name);
        if self.vips.is_empty() {
            return Err(format!("{who}: vips must list at least one address"));
        }
        if self.ports.is_empty() {
            return Err(format!("{who}: ports must list at least one port"));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.ports {
            if p.port == 0 || p.target_port == Some(0) {
                return Err(format!("{who}: port 0 is not a port"));
            }
            if !seen.insert(p.port) {
                return Err(format!("{who}: port {} is listed twice", p.port));
            }
        }
        let policy = &self.traffic_policy;
        if let Some(cb) = &policy.circuit_breaker {
            if cb.consecutive_failures == 0 || cb.max_pending_requests == 0 {
                return Err(format!(
                    "{who}: circuitBreaker: consecutiveFailures and maxPendingRequests must be > 0"
                ));
            }
            if cb.base_ejection_time > cb.max_ejection_time {
                return Err(format!(
                    "{who}: circuitBreaker: baseEjectionTime is above maxEjectionTime"
                ));
            }
        }
        if let Some(rl) = &policy.rate_limit
            && !(rl.requests_per_second.is_finite() && rl.requests_per_second > 0.0)
        {
            return Err(format!("{who}: rateLimit: requestsPerSecond must be > 0"));
        }
        let budget = &policy.retry_budget;
        if !(0.0..=1000.0).contains(&budget.ratio) {
            return Err(format!("{who}: retryBudget: ratio must be within 0..1000"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_reads_like_a_kubernetes_service() {
        let s: Service = serde_yaml_ng::from_str(
            "name: web\nvips: [10.96.0.10]\nports: [{port: 80, targetPort: 8080, appProtocol: http}]\n\
             selector: {app: web}\ntrafficPolicy: {circuitBreaker: {consecutiveFailures: 3}, \
             rateLimit: {requestsPerSecond: 5}}",
        )
        .unwrap();
        assert_eq!(s.namespace, "default");
        assert_eq!(s.ports[0].target(), 8080);
        assert_eq!(s.ports[0].app_protocol, Some(AppProtocol::Http));
        let cb = s.traffic_policy.circuit_breaker.clone().unwrap();
        assert_eq!(cb.consecutive_failures, 3);
        assert_eq!(cb.base_ejection_time, Duration::from_secs(10));
        assert_eq!(s.traffic_policy.retry_budget.ratio, 0.2);
        s.validate().unwrap();
    }

    #[test]
    fn bad_services_say_what_is_wrong() {
        let bad = |yaml: &str| {
            serde_yaml_ng::from_str::<Service>(yaml)
                .map_err(|e| e.to_string())
                .and_then(|s| s.validate())
                .unwrap_err()
        };
        assert!(bad("name: a\nvips: []\nports: [{port: 80}]").contains("vips"));
        assert!(
            bad("name: a\nvips: [10.0.0.1]\nports: [{port: 80}, {port: 80}]").contains("twice")
        );
        assert!(
            bad("name: a\nvips: [10.0.0.1]\nports: [{port: 80, appProtocol: ftp}]").contains("ftp")
        );
        let rate = "name: a\nvips: [10.0.0.1]\nports: [{port: 80}]\n\
                    trafficPolicy: {rateLimit: {requestsPerSecond: 0}}";
        assert!(bad(rate).contains("requestsPerSecond"));
    }
}
