//! Per-request load balancing over a service's endpoints: power of two choices over a
//! peak-EWMA latency estimate, as Linkerd does. Comparing two random endpoints is O(1) and,
//! unlike always taking the global minimum, does not herd every request onto one endpoint;
//! weighting latency by requests in flight makes a slow or busy endpoint shed load quickly.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Load of one endpoint: a peak-EWMA of its response latency and its requests in flight.
///
/// Until the first sample the estimate is `default_rtt` and does not decay; the first sample
/// replaces it, since a measurement beats a guess. After that, a sample above the current
/// estimate replaces it at once (the "peak": a slowdown counts on the very next pick), and a
/// lower one is blended in with weight `1 − e^(−Δt/decay)`, Δt being the time since the last
/// sample. Between samples the estimate decays toward zero with the same time constant, so
/// an endpoint that stopped getting traffic because it looked slow is eventually probed again.
pub struct Load {
    default_rtt_ns: f64,
    decay_ns: f64,
    estimate: Mutex<Option<Estimate>>,
    pending: AtomicUsize,
}

/// The latency estimate as of its last sample.
#[derive(Clone, Copy)]
struct Estimate {
    rtt_ns: f64,
    sampled_at: Instant,
}

impl Estimate {
    /// Share of the estimate that survives from the last sample until `now`.
    fn retained(&self, now: Instant, decay_ns: f64) -> f64 {
        let elapsed_ns = nanos(now.saturating_duration_since(self.sampled_at));
        (-elapsed_ns / decay_ns).exp()
    }
}

impl Load {
    pub fn new(default_rtt: Duration, decay: Duration) -> Self {
        Self {
            default_rtt_ns: nanos(default_rtt),
            // A zero time constant would divide by zero; one nanosecond means "no memory".
            decay_ns: nanos(decay.max(Duration::from_nanos(1))),
            estimate: Mutex::new(None),
            pending: AtomicUsize::new(0),
        }
    }

    /// Counts a request as in flight until the returned guard is finished or dropped.
    pub fn start(self: &Arc<Self>, now: Instant) -> InFlight {
        self.pending.fetch_add(1, Ordering::Relaxed);
        InFlight {
            load: Arc::clone(self),
            started_at: now,
        }
    }

    /// Expected latency in nanoseconds scaled by the queue a new request would join.
    pub fn cost(&self, now: Instant) -> f64 {
        let pending = self.pending.load(Ordering::Relaxed);
        self.latency_ns(now) * (pending as f64 + 1.0)
    }

    fn latency_ns(&self, now: Instant) -> f64 {
        let estimate = *self.estimate.lock().unwrap_or_else(|p| p.into_inner());
        estimate.map_or(self.default_rtt_ns, |e| {
            e.rtt_ns * e.retained(now, self.decay_ns)
        })
    }

    fn observe(&self, rtt: Duration, now: Instant) {
        let rtt_ns = nanos(rtt);
        let mut estimate = self.estimate.lock().unwrap_or_else(|p| p.into_inner());
        *estimate = Some(match *estimate {
            None => Estimate {
                rtt_ns,
                sampled_at: now,
            },
            Some(last) => {
                let retained = last.retained(now, self.decay_ns);
                let current_ns = last.rtt_ns * retained;
                Estimate {
                    rtt_ns: if rtt_ns > current_ns {
                        rtt_ns
                    } else {
                        current_ns + rtt_ns * (1.0 - retained)
                    },
                    // Finishes can race; never move the anchor back in time.
                    sampled_at: last.sampled_at.max(now),
                }
            }
        });
    }
}

/// A request counted as pending on its endpoint's [`Load`].
///
/// [`InFlight::finish`] records the latency; dropping the guard unfinished (the request
/// was cancelled) only stops counting it, since a cancellation says nothing about latency.
#[must_use = "the request stops counting as pending when the guard is dropped"]
pub struct InFlight {
    load: Arc<Load>,
    started_at: Instant,
}

impl InFlight {
    /// Records the response latency (`now` − start) and stops counting the request.
    pub fn finish(self, now: Instant) {
        self.load
            .observe(now.saturating_duration_since(self.started_at), now);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.load.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Picks among `len` endpoints: two distinct random ones, the cheaper by `cost` (ties go to
/// either). `None` when there is nothing to pick.
pub fn pick_p2c(len: usize, rng: &mut fastrand::Rng, cost: impl Fn(usize) -> f64) -> Option<usize> {
    match len {
        0 => None,
        1 => Some(0),
        _ => {
            let first = rng.usize(..len);
            // Draw from the other len − 1 indexes so the two are always distinct.
            let drawn = rng.usize(..len - 1);
            let second = if drawn >= first { drawn + 1 } else { drawn };
            Some(if cost(first) <= cost(second) {
                first
            } else {
                second
            })
        }
    }
}

fn nanos(duration: Duration) -> f64 {
    duration.as_nanos() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn assert_close(actual: f64, expected: f64) {
        let tolerance = expected.abs() * 1e-9 + 1e-3;
        assert!(
            (actual - expected).abs() <= tolerance,
            "{actual} is not close to {expected}"
        );
    }

    fn load(default_rtt: Duration) -> Arc<Load> {
        Arc::new(Load::new(default_rtt, DECAY))
    }

    fn observed(load: &Arc<Load>, latency: Duration, at: Instant) {
        load.start(at).finish(at + latency);
    }

    #[test]
    fn types_are_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Load>();
        send_sync::<InFlight>();
    }

    #[test]
    fn without_samples_cost_is_default_rtt_and_does_not_decay() {
        let t0 = Instant::now();
        let endpoint = load(ms(30));
        assert_close(endpoint.cost(t0), nanos(ms(30)));
        assert_close(endpoint.cost(t0 + Duration::from_secs(60)), nanos(ms(30)));
    }

    #[test]
    fn first_sample_replaces_default_rtt() {
        let t0 = Instant::now();
        let endpoint = load(ms(30));
        observed(&endpoint, ms(5), t0);
        assert_close(endpoint.cost(t0 + ms(5)), nanos(ms(5)));
    }

    #[test]
    fn higher_sample_replaces_estimate_at_once() {
        let t0 = Instant::now();
        let endpoint = load(ms(30));
        observed(&endpoint, ms(1), t0);
        observed(&endpoint, ms(40), t0 + ms(1));
        assert_close(endpoint.cost(t0 + ms(41)), nanos(ms(40)));
    }

    #[test]
    fn lower_sample_is_blended_by_elapsed_time() {
        let t0 = Instant::now();
        let endpoint = load(ms(30));
        observed(&endpoint, ms(100), t0);
        let sample_at = t0 + ms(100) + DECAY * 3;
        endpoint.start(sample_at - ms(1)).finish(sample_at);
        let retained = (-3.0f64).exp();
        let expected = nanos(ms(100)) * retained + nanos(ms(1)) * (1.0 - retained);
        assert_close(endpoint.cost(sample_at), expected);
    }

    #[test]
    fn decay_brings_a_past_peak_down_over_time() {
        let t0 = Instant::now();
        let endpoint = load(ms(30));
        observed(&endpoint, ms(100), t0);
        let peak_at = t0 + ms(100);
        let at_peak = endpoint.cost(peak_at);
        let later = endpoint.cost(peak_at + DECAY);
        let much_later = endpoint.cost(peak_at + DECAY * 5);
        assert_close(at_peak, nanos(ms(100)));
        assert_close(later, nanos(ms(100)) * (-1.0f64).exp());
        assert!(much_later < nanos(ms(1)), "{much_later}");
    }

    #[test]
    fn pending_requests_raise_cost() {
        let t0 = Instant::now();
        let endpoint = load(ms(10));
        let first = endpoint.start(t0);
        assert_close(endpoint.cost(t0), nanos(ms(10)) * 2.0);
        let second = endpoint.start(t0);
        assert_close(endpoint.cost(t0), nanos(ms(10)) * 3.0);
        drop(first);
        drop(second);
        assert_close(endpoint.cost(t0), nanos(ms(10)));
    }

    #[test]
    fn dropping_unfinished_guard_records_nothing() {
        let t0 = Instant::now();
        let endpoint = load(ms(10));
        let cancelled = endpoint.start(t0);
        drop(cancelled);
        assert_eq!(endpoint.pending.load(Ordering::Relaxed), 0);
        assert!(endpoint.estimate.lock().unwrap().is_none());
        assert_close(endpoint.cost(t0 + Duration::from_secs(5)), nanos(ms(10)));
    }

    #[test]
    fn finish_stops_counting_the_request() {
        let t0 = Instant::now();
        let endpoint = load(ms(10));
        endpoint.start(t0).finish(t0 + ms(2));
        assert_eq!(endpoint.pending.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn racing_finishes_do_not_move_the_sample_time_back() {
        let t0 = Instant::now();
        let endpoint = load(ms(10));
        observed(&endpoint, ms(20), t0);
        // A sample stamped before the last one carries no elapsed time: no blend, no decay.
        endpoint.start(t0).finish(t0 + ms(5));
        assert_close(endpoint.cost(t0 + ms(20)), nanos(ms(20)));
    }

    #[test]
    fn p2c_handles_empty_and_single() {
        let mut rng = fastrand::Rng::with_seed(1);
        assert_eq!(pick_p2c(0, &mut rng, |_| 0.0), None);
        assert_eq!(pick_p2c(1, &mut rng, |_| 0.0), Some(0));
    }

    #[test]
    fn p2c_compares_two_distinct_endpoints() {
        let mut rng = fastrand::Rng::with_seed(2);
        // With two endpoints both are always compared, so the cheaper one always wins.
        for _ in 0..1_000 {
            assert_eq!(
                pick_p2c(2, &mut rng, |i| if i == 1 { 1.0 } else { 2.0 }),
                Some(1)
            );
        }
        // The most expensive endpoint can never win a comparison.
        for _ in 0..1_000 {
            let picked = pick_p2c(5, &mut rng, |i| i as f64);
            assert!(matches!(picked, Some(0..=3)), "{picked:?}");
        }
    }

    #[test]
    fn p2c_spreads_over_equal_endpoints() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut picks = [0usize; 4];
        for _ in 0..4_000 {
            if let Some(i) = pick_p2c(4, &mut rng, |_| 1.0) {
                picks[i] += 1;
            }
        }
        assert!(
            picks.iter().all(|&n| (800..1_200).contains(&n)),
            "{picks:?}"
        );
    }

    /// Requests arrive every 0.5 ms; endpoint 0 answers in 50 ms, the others in 1 ms.
    #[test]
    fn slow_endpoint_gets_well_under_a_third_of_picks() {
        let mut rng = fastrand::Rng::with_seed(4);
        let latencies = [ms(50), ms(1), ms(1)];
        let endpoints: Vec<Arc<Load>> = latencies.iter().map(|_| load(ms(30))).collect();
        let t0 = Instant::now();
        let mut in_flight: Vec<(Instant, InFlight)> = Vec::new();
        let mut picks = [0usize; 3];
        for n in 0..3_000u32 {
            let now = t0 + Duration::from_micros(500) * n;
            let (done, waiting) = in_flight.into_iter().partition(|(due, _)| *due <= now);
            in_flight = waiting;
            for (due, guard) in done {
                guard.finish(due);
            }
            let Some(i) = pick_p2c(endpoints.len(), &mut rng, |i| endpoints[i].cost(now)) else {
                panic!("no endpoint picked");
            };
            picks[i] += 1;
            in_flight.push((now + latencies[i], endpoints[i].start(now)));
        }
        assert!(picks[0] < 3_000 / 10, "slow endpoint picked {picks:?}");
        assert!(picks[1] > 1_000 && picks[2] > 1_000, "{picks:?}");
    }
}
