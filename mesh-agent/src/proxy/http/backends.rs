//! The live side of each service port: its endpoints' latency and breaker state, its
//! pending-request cap, retry budget and rate limit. Kept across config versions (matched by
//! endpoint address) so a reload does not forget which endpoint is slow or ejected.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use super::{
    balance::{Load, pick_p2c},
    breaker::{Breaker, BreakerEvent, BreakerSettings, PendingLimit, PendingPermit},
    ratelimit::TokenBucket,
    retry::RetryBudget,
};
use crate::{
    config::{Workload, service::TrafficPolicy},
    state::{ServiceKey, ServiceView},
};

/// The latency a new endpoint is assumed to have, and how fast old samples fade.
const DEFAULT_RTT: Duration = Duration::from_millis(10);
const LATENCY_DECAY: Duration = Duration::from_secs(10);
/// How long a deposit counts in the retry budget.
const BUDGET_WINDOW: Duration = Duration::from_secs(10);

pub struct EndpointState {
    pub addr: SocketAddr,
    pub workload: Option<Arc<Workload>>,
    pub load: Arc<Load>,
    breaker: Option<Breaker>,
}

impl EndpointState {
    /// Records an attempt's outcome; returns how many times in a row the endpoint has
    /// been ejected when this outcome ejected it.
    pub fn record(&self, success: bool, now: Instant) -> Option<u32> {
        let breaker = self.breaker.as_ref()?;
        match breaker.record(success, now) {
            Some(BreakerEvent::Ejected { .. }) => Some(breaker.ejections()),
            _ => None,
        }
    }

    fn available(&self, now: Instant) -> bool {
        self.breaker.as_ref().is_none_or(|b| b.available(now))
    }
}

/// One service port's endpoints (of one address family) and limits.
pub struct BackendSet {
    pub service: Arc<ServiceView>,
    /// `<name>.<namespace>.svc.cluster.local`.
    pub host: String,
    endpoints: Vec<Arc<EndpointState>>,
    pending: Option<Arc<PendingLimit>>,
    pub budget: Arc<RetryBudget>,
    rate: Option<Arc<TokenBucket>>,
}

impl BackendSet {
    /// Power of two choices among the endpoints the breaker has not ejected.
    pub fn pick(&self, rng: &mut fastrand::Rng, now: Instant) -> Option<Arc<EndpointState>> {
        let up: Vec<&Arc<EndpointState>> =
            self.endpoints.iter().filter(|e| e.available(now)).collect();
        let i = pick_p2c(up.len(), rng, |i| up[i].load.cost(now))?;
        Some(up[i].clone())
    }

    /// False when the service's rate limit refuses a request now.
    pub fn admit(&self, now: Instant) -> bool {
        self.rate.as_ref().is_none_or(|r| r.try_take(now))
    }

    /// A place under the pending cap; `Err` with the requests pending when it is reached.
    pub fn pending_permit(&self) -> Result<Option<PendingPermit>, usize> {
        match &self.pending {
            None => Ok(None),
            Some(limit) => limit.try_acquire().map(Some).ok_or_else(|| limit.current()),
        }
    }
}

/// Every service port's [`BackendSet`], rebuilt when its service's config changes.
#[derive(Default)]
pub struct Backends {
    sets: Mutex<HashMap<(ServiceKey, u16, bool), Arc<BackendSet>>>,
}

impl Backends {
    /// The set for `service`'s port `port`, endpoints of the family of the dialled address.
    pub fn get(&self, service: &Arc<ServiceView>, port: u16, ipv6: bool) -> Arc<BackendSet> {
        let key = (service.key.clone(), port, ipv6);
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(set) = sets.get(&key)
            && Arc::ptr_eq(&set.service, service)
        {
            return set.clone();
        }
        let set = Arc::new(build(service, port, ipv6, sets.get(&key)));
        sets.insert(key, set.clone());
        set
    }

    /// Forgets services no longer configured.
    pub fn retain(&self, keep: impl Fn(&ServiceKey) -> bool) {
        let mut sets = self.sets.lock().unwrap_or_else(|p| p.into_inner());
        sets.retain(|(key, _, _), _| keep(key));
    }
}

fn build(
    service: &Arc<ServiceView>,
    port: u16,
    ipv6: bool,
    old: Option<&Arc<BackendSet>>,
) -> BackendSet {
    let policy = &service.service.traffic_policy;
    let same_policy = old.is_some_and(|o| &o.service.service.traffic_policy == policy);
    let breaker = policy.circuit_breaker.as_ref().map(|cb| BreakerSettings {
        consecutive_failures: cb.consecutive_failures,
        base_ejection: cb.base_ejection_time,
        max_ejection: cb.max_ejection_time,
    });
    let endpoints = (service.endpoint_addrs(port, ipv6).into_iter())
        .map(|(addr, workload)| {
            let kept = old
                .filter(|_| same_policy)
                .and_then(|o| o.endpoints.iter().find(|e| e.addr == addr));
            match kept {
                Some(e) => e.clone(),
                None => Arc::new(EndpointState {
                    addr,
                    workload,
                    load: Arc::new(Load::new(DEFAULT_RTT, LATENCY_DECAY)),
                    breaker: breaker.map(Breaker::new),
                }),
            }
        })
        .collect();
    let (pending, budget, rate) = match old.filter(|_| same_policy) {
        Some(o) => (o.pending.clone(), o.budget.clone(), o.rate.clone()),
        None => limits(policy),
    };
    BackendSet {
        host: service.host(),
        service: service.clone(),
        endpoints,
        pending,
        budget,
        rate,
    }
}

type Limits = (
    Option<Arc<PendingLimit>>,
    Arc<RetryBudget>,
    Option<Arc<TokenBucket>>,
);

fn limits(policy: &TrafficPolicy) -> Limits {
    let pending = (policy.circuit_breaker.as_ref())
        .map(|cb| Arc::new(PendingLimit::new(cb.max_pending_requests)));
    let b = &policy.retry_budget;
    let budget = Arc::new(RetryBudget::new(
        b.ratio,
        b.min_retries_per_second,
        BUDGET_WINDOW,
    ));
    let rate = policy.rate_limit.as_ref().map(|r| {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // validated > 0
        let burst = r.burst.unwrap_or(r.requests_per_second.ceil() as u32);
        Arc::new(TokenBucket::new(r.requests_per_second, burst))
    });
    (pending, budget, rate)
}
