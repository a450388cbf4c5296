//! Circuit breaking for the HTTP proxy: per-endpoint ejection after consecutive failures,
//! and a per-service cap on pending requests. Ejection stops sending traffic to a broken
//! endpoint for a while, longer each time it relapses; the pending cap turns a stalled
//! service into fast local failures instead of unbounded queues and memory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
pub struct BreakerSettings {
    /// Failures in a row that eject a healthy endpoint (0 behaves as 1).
    pub consecutive_failures: u32,
    /// Length of the first ejection; each relapse doubles it.
    pub base_ejection: Duration,
    /// Upper bound on any ejection.
    pub max_ejection: Duration,
}

/// What a [`Breaker::record`] changed, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerEvent {
    /// The endpoint takes no traffic `for_` this long; `times` counts ejections since its
    /// last success.
    Ejected { for_: Duration, times: u32 },
    /// The ejection had expired and the endpoint answered successfully.
    Readmitted,
}

/// Outlier detection for one endpoint.
///
/// - `consecutive_failures` failures in a row eject the endpoint for
///   `base_ejection × 2^(k−1)`, capped at `max_ejection`, where `k` counts ejections since
///   the last success.
/// - Once that time has passed, [`Breaker::available`] is true again. `available` only
///   reads; the first [`Breaker::record`] after expiry ends the ejection.
/// - After an ejection (`k > 0`), a single failure ejects again, for the next, doubled time.
/// - A success resets both the failure streak and `k`; if it is the first outcome after an
///   ejection expired, `record` reports [`BreakerEvent::Readmitted`].
/// - Outcomes recorded while ejected are ignored: they belong to requests sent before the
///   ejection and must neither extend it nor cut it short.
pub struct Breaker {
    settings: BreakerSettings,
    state: Mutex<BreakerState>,
}

#[derive(Default)]
struct BreakerState {
    failures: u32,
    ejections: u32,
    ejection: Option<Ejection>,
}

/// Kept as start and length rather than an end instant, which could overflow.
#[derive(Clone, Copy)]
struct Ejection {
    since: Instant,
    length: Duration,
}

impl Ejection {
    fn active(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) < self.length
    }
}

impl Breaker {
    pub fn new(settings: BreakerSettings) -> Self {
        Self {
            settings,
            state: Mutex::new(BreakerState::default()),
        }
    }

    /// Whether the endpoint may take traffic: false while ejected.
    pub fn available(&self, now: Instant) -> bool {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        !state.ejection.is_some_and(|e| e.active(now))
    }

    /// Records the outcome of a response; returns what changed, if anything.
    pub fn record(&self, success: bool, now: Instant) -> Option<BreakerEvent> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let readmitted = match state.ejection {
            Some(ejection) if ejection.active(now) => return None,
            Some(_) => {
                state.ejection = None;
                true
            }
            None => false,
        };
        if success {
            state.failures = 0;
            state.ejections = 0;
            return readmitted.then_some(BreakerEvent::Readmitted);
        }
        state.failures = state.failures.saturating_add(1);
        let relapsed = state.ejections > 0;
        if !relapsed && state.failures < self.settings.consecutive_failures {
            return None;
        }
        state.failures = 0;
        state.ejections = state.ejections.saturating_add(1);
        let length = self.ejection_length(state.ejections);
        state.ejection = Some(Ejection { since: now, length });
        Some(BreakerEvent::Ejected {
            for_: length,
            times: state.ejections,
        })
    }

    /// Ejections since the last success.
    pub fn ejections(&self) -> u32 {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ejections
    }

    fn ejection_length(&self, times: u32) -> Duration {
        let BreakerSettings {
            base_ejection,
            max_ejection,
            ..
        } = self.settings;
        2u32.checked_pow(times.saturating_sub(1))
            .and_then(|factor| base_ejection.checked_mul(factor))
            .map_or(max_ejection, |length| length.min(max_ejection))
    }
}

/// Cap on a service's requests waiting or in flight, so a stalled service fails fast.
pub struct PendingLimit {
    max: usize,
    current: AtomicUsize,
}

impl PendingLimit {
    pub fn new(max: usize) -> Self {
        Self {
            max,
            current: AtomicUsize::new(0),
        }
    }

    /// A permit while under the cap, `None` once `max` permits are out.
    pub fn try_acquire(self: &Arc<Self>) -> Option<PendingPermit> {
        self.current
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()?;
        Some(PendingPermit {
            limit: Arc::clone(self),
        })
    }

    /// Permits currently out.
    pub fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed)
    }
}

/// One pending request's place under a [`PendingLimit`], given back on drop.
#[must_use = "the place is given back as soon as the permit is dropped"]
pub struct PendingPermit {
    limit: Arc<PendingLimit>,
}

impl Drop for PendingPermit {
    fn drop(&mut self) {
        self.limit.current.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    const BASE: Duration = Duration::from_secs(1);

    fn breaker(consecutive_failures: u32, max_ejection: Duration) -> Breaker {
        Breaker::new(BreakerSettings {
            consecutive_failures,
            base_ejection: BASE,
            max_ejection,
        })
    }

    fn ejected(for_: Duration, times: u32) -> Option<BreakerEvent> {
        Some(BreakerEvent::Ejected { for_, times })
    }

    fn fail_times(breaker: &Breaker, n: u32, now: Instant) -> Option<BreakerEvent> {
        let mut last = None;
        for _ in 0..n {
            last = breaker.record(false, now);
        }
        last
    }

    #[test]
    fn types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Breaker>();
        send_sync::<PendingLimit>();
        send_sync::<PendingPermit>();
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let t0 = Instant::now();
        let b = breaker(3, Duration::from_secs(60));
        assert_eq!(fail_times(&b, 2, t0), None);
        assert_eq!(b.record(true, t0), None);
        assert_eq!(fail_times(&b, 2, t0), None);
        assert!(b.available(t0));
        assert_eq!(b.record(false, t0), ejected(BASE, 1));
        assert!(!b.available(t0));
        assert_eq!(b.ejections(), 1);
    }

    #[test]
    fn zero_threshold_ejects_on_first_failure() {
        let t0 = Instant::now();
        let b = breaker(0, Duration::from_secs(60));
        assert_eq!(b.record(false, t0), ejected(BASE, 1));
    }

    #[test]
    fn available_again_once_ejection_expires() {
        let t0 = Instant::now();
        let b = breaker(1, Duration::from_secs(60));
        b.record(false, t0);
        assert!(!b.available(t0 + BASE - Duration::from_nanos(1)));
        assert!(b.available(t0 + BASE));
    }

    #[test]
    fn success_after_expiry_reports_readmission_and_resets() {
        let t0 = Instant::now();
        let b = breaker(2, Duration::from_secs(60));
        fail_times(&b, 2, t0);
        assert_eq!(b.record(true, t0 + BASE), Some(BreakerEvent::Readmitted));
        assert_eq!(b.ejections(), 0);
        assert_eq!(b.record(true, t0 + BASE), None);
        // Back to a healthy endpoint: a full streak is needed, and the time is base again.
        let t1 = t0 + BASE * 2;
        assert_eq!(b.record(false, t1), None);
        assert_eq!(b.record(false, t1), ejected(BASE, 1));
    }

    #[test]
    fn single_failure_after_readmission_ejects_for_double() {
        let t0 = Instant::now();
        let b = breaker(3, Duration::from_secs(60));
        fail_times(&b, 3, t0);
        let t1 = t0 + BASE;
        assert!(b.available(t1));
        assert_eq!(b.record(false, t1), ejected(BASE * 2, 2));
        assert!(!b.available(t1));
        assert_eq!(b.ejections(), 2);
    }

    #[test]
    fn ejection_time_doubles_up_to_the_cap() {
        let max = Duration::from_secs(5);
        let b = breaker(1, max);
        let mut now = Instant::now();
        let mut lengths = Vec::new();
        for _ in 0..6 {
            if let Some(BreakerEvent::Ejected { for_, .. }) = b.record(false, now) {
                lengths.push(for_);
                now += for_;
            }
        }
        let secs = |n| Duration::from_secs(n);
        assert_eq!(
            lengths,
            [secs(1), secs(2), secs(4), secs(5), secs(5), secs(5)]
        );
        assert_eq!(b.ejections(), 6);
    }

    #[test]
    fn huge_ejections_neither_overflow_nor_expire_early() {
        let t0 = Instant::now();
        let b = Breaker::new(BreakerSettings {
            consecutive_failures: 1,
            base_ejection: Duration::MAX,
            max_ejection: Duration::MAX,
        });
        assert_eq!(b.record(false, t0), ejected(Duration::MAX, 1));
        assert!(!b.available(t0 + Duration::from_secs(365 * 24 * 3600)));
    }

    #[test]
    fn outcomes_while_ejected_are_ignored() {
        let t0 = Instant::now();
        let b = breaker(1, Duration::from_secs(60));
        b.record(false, t0);
        let during = t0 + BASE / 2;
        assert_eq!(b.record(false, during), None);
        assert_eq!(b.record(true, during), None);
        assert_eq!(b.ejections(), 1);
        // Neither extended nor cut short: expires on time, still on probation.
        assert!(b.available(t0 + BASE));
        assert_eq!(b.record(false, t0 + BASE), ejected(BASE * 2, 2));
    }

    #[test]
    fn pending_limit_caps_and_releases_on_drop() {
        let limit = Arc::new(PendingLimit::new(3));
        let permits: Vec<_> = (0..5).filter_map(|_| limit.try_acquire()).collect();
        assert_eq!(permits.len(), 3);
        assert_eq!(limit.current(), 3);
        assert!(limit.try_acquire().is_none());
        drop(permits);
        assert_eq!(limit.current(), 0);
        assert!(limit.try_acquire().is_some());
    }

    #[test]
    fn pending_limit_of_zero_refuses_everything() {
        let limit = Arc::new(PendingLimit::new(0));
        assert!(limit.try_acquire().is_none());
        assert_eq!(limit.current(), 0);
    }

    #[test]
    fn pending_limit_holds_under_concurrent_acquires() {
        let limit = Arc::new(PendingLimit::new(50));
        let held: Vec<Vec<PendingPermit>> = thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| (0..100).filter_map(|_| limit.try_acquire()).collect()))
                .collect();
            workers.into_iter().filter_map(|w| w.join().ok()).collect()
        });
        assert_eq!(held.len(), 8);
        assert_eq!(held.iter().map(Vec::len).sum::<usize>(), 50);
        assert_eq!(limit.current(), 50);
        drop(held);
        assert_eq!(limit.current(), 0);
    }
}
