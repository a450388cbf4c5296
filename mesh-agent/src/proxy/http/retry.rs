//! Retry policy pieces for the HTTP proxy: a budget that keeps retries to a fraction of
//! recent traffic (so retries cannot multiply load on a failing service), jittered
//! exponential backoff between attempts, and which methods are safe to retry at all.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Accounting unit: a thousandth of a retry, so deposits of a fraction stay exact integers.
const UNITS_PER_RETRY: u64 = 1000;
/// The ttl window is tracked in this many slots, bounding memory whatever the traffic.
const SLOTS: u32 = 10;

/// Retry budget in the manner of Finagle and Linkerd.
///
/// Each original request deposits `ratio` of a retry (to a thousandth) and each retry
/// withdraws one. On top of deposits, a reserve of `min_per_second × ttl` (in seconds)
/// retries per window is always there, so a quiet service can still retry. A retry is
/// allowed while deposits + reserve − withdrawals still cover a whole retry.
///
/// Deposits and withdrawals count for `ttl`, tracked in slots of `ttl / 10`: an entry
/// never counts once older than `ttl`, and always counts for at least `ttl − ttl / 10`.
/// Expired withdrawals give the reserve back, so it refills at `min_per_second` on average.
pub struct RetryBudget {
    deposit_units: u64,
    reserve_units: u64,
    ttl: Duration,
    slot: Duration,
    window: Mutex<VecDeque<Slot>>,
}

struct Slot {
    start: Instant,
    deposits: u64,
    withdrawals: u64,
}

#[derive(Clone, Copy)]
enum Entry {
    Deposit,
    Withdrawal,
}

impl Slot {
    fn count(&mut self, entry: Entry) {
        match entry {
            Entry::Deposit => self.deposits = self.deposits.saturating_add(1),
            Entry::Withdrawal => self.withdrawals = self.withdrawals.saturating_add(1),
        }
    }
}

impl RetryBudget {
    /// A negative or NaN `ratio` counts as 0.
    pub fn new(ratio: f64, min_per_second: u32, ttl: Duration) -> Self {
        let units = UNITS_PER_RETRY as f64;
        Self {
            // Float to integer `as` saturates, mapping NaN and negatives to 0.
            deposit_units: (ratio * units).round() as u64,
            reserve_units: (f64::from(min_per_second) * ttl.as_secs_f64() * units).round() as u64,
            ttl,
            // At least 1 ns so repeated calls at one instant share a slot.
            slot: (ttl / SLOTS).max(Duration::from_nanos(1)),
            window: Mutex::new(VecDeque::new()),
        }
    }

    /// Credits the budget for one original (non-retry) request.
    pub fn deposit(&self, now: Instant) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut window, now);
        self.count(&mut window, Entry::Deposit, now);
    }

    /// Takes one retry from the budget if it covers one; false means do not retry.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        self.expire(&mut window, now);
        let (deposits, withdrawals) = window.iter().fold((0u64, 0u64), |(d, w), slot| {
            (
                d.saturating_add(slot.deposits),
                w.saturating_add(slot.withdrawals),
            )
        });
        let available = deposits
            .saturating_mul(self.deposit_units)
            .saturating_add(self.reserve_units);
        let spent = withdrawals.saturating_mul(UNITS_PER_RETRY);
        if available.saturating_sub(spent) < UNITS_PER_RETRY {
            return false;
        }
        self.count(&mut window, Entry::Withdrawal, now);
        true
    }

    fn expire(&self, window: &mut VecDeque<Slot>, now: Instant) {
        while window
            .front()
            .is_some_and(|slot| now.saturating_duration_since(slot.start) >= self.ttl)
        {
            window.pop_front();
        }
    }

    fn count(&self, window: &mut VecDeque<Slot>, entry: Entry, now: Instant) {
        match window.back_mut() {
            Some(last) if now.saturating_duration_since(last.start) < self.slot => {
                last.count(entry)
            }
            _ => {
                let mut slot = Slot {
                    start: now,
                    deposits: 0,
                    withdrawals: 0,
                };
                slot.count(entry);
                window.push_back(slot);
            }
        }
    }
}

/// Delay before retry number `attempt` (1 for the first retry; 0 counts as 1).
///
/// Exponential, `base × 2^(attempt−1)` capped at `max`, with "equal jitter": half of that
/// is fixed and the other half uniformly random. The jitter spreads retries from many
/// clients apart; the fixed half keeps the delay from collapsing to zero, so it is never
/// 0 when `base` and `max` are above 0.
pub fn backoff(attempt: u32, base: Duration, max: Duration, rng: &mut fastrand::Rng) -> Duration {
    let ceiling = 2u32
        .checked_pow(attempt.saturating_sub(1))
        .and_then(|factor| base.checked_mul(factor))
        .map_or(max, |delay| delay.min(max));
    let random_half = ceiling / 2;
    let random_nanos = u64::try_from(random_half.as_nanos()).unwrap_or(u64::MAX);
    (ceiling - random_half) + Duration::from_nanos(rng.u64(..=random_nanos))
}

/// Whether a request with this method may be sent twice without a different effect
/// (RFC 9110 §9.2.2), and so may be retried after it might have reached the server.
/// Method names are case-sensitive, so "get" is not GET.
pub fn idempotent(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "OPTIONS" | "TRACE" | "PUT" | "DELETE"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(10);

    fn withdrawals(budget: &RetryBudget, now: Instant) -> usize {
        (0..10_000).take_while(|_| budget.try_withdraw(now)).count()
    }

    #[test]
    fn budget_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<RetryBudget>();
    }

    #[test]
    fn ratio_allows_that_share_of_requests_as_retries() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 0, TTL);
        for _ in 0..100 {
            budget.deposit(t0);
        }
        assert_eq!(withdrawals(&budget, t0), 20);
    }

    #[test]
    fn no_requests_and_no_floor_allow_no_retries() {
        let budget = RetryBudget::new(0.2, 0, TTL);
        assert!(!budget.try_withdraw(Instant::now()));
    }

    #[test]
    fn fractional_deposits_accumulate_exactly() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.1, 0, TTL);
        for _ in 0..9 {
            budget.deposit(t0);
        }
        assert!(!budget.try_withdraw(t0));
        budget.deposit(t0);
        assert!(budget.try_withdraw(t0));
        assert!(!budget.try_withdraw(t0));
    }

    #[test]
    fn floor_allows_min_per_second_times_ttl_without_requests() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 10, TTL);
        assert_eq!(withdrawals(&budget, t0), 100);
        // Spent retries expire with their slot and give the reserve back.
        assert!(!budget.try_withdraw(t0 + TTL - Duration::from_millis(1)));
        assert_eq!(withdrawals(&budget, t0 + TTL), 100);
    }

    #[test]
    fn floor_adds_to_deposits() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.5, 1, TTL);
        for _ in 0..10 {
            budget.deposit(t0);
        }
        assert_eq!(withdrawals(&budget, t0), 15);
    }

    #[test]
    fn deposits_older_than_ttl_stop_counting() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(1.0, 0, TTL);
        for _ in 0..5 {
            budget.deposit(t0);
        }
        // Still counted just under ttl later...
        assert!(budget.try_withdraw(t0 + TTL - Duration::from_millis(1)));
        // ...gone at ttl.
        assert!(!budget.try_withdraw(t0 + TTL));
    }

    #[test]
    fn window_mixes_fresh_and_expired_slots() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(1.0, 0, TTL);
        for s in 0..10u32 {
            budget.deposit(t0 + Duration::from_secs(1) * s);
        }
        let later = t0 + Duration::from_secs(13);
        // Deposits from seconds 4..=9 are less than ttl old at second 13.
        assert_eq!(withdrawals(&budget, later), 6);
    }

    #[test]
    fn memory_stays_bounded() {
        let t0 = Instant::now();
        let budget = RetryBudget::new(0.2, 0, TTL);
        for ms in 0..100_000u32 {
            budget.deposit(t0 + Duration::from_millis(u64::from(ms)));
        }
        let slots = budget.window.lock().unwrap().len();
        assert!((1..=11).contains(&slots), "{slots}");
    }

    #[test]
    fn invalid_ratio_deposits_nothing() {
        let t0 = Instant::now();
        for ratio in [-1.0, f64::NAN] {
            let budget = RetryBudget::new(ratio, 0, TTL);
            budget.deposit(t0);
            assert!(!budget.try_withdraw(t0));
        }
    }

    #[test]
    fn backoff_grows_exponentially_within_equal_jitter_bounds() {
        let mut rng = fastrand::Rng::with_seed(7);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(60);
        for attempt in 1..=8u32 {
            let ceiling = base * 2u32.pow(attempt - 1);
            for _ in 0..200 {
                let delay = backoff(attempt, base, max, &mut rng);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{attempt}: {delay:?}"
                );
            }
        }
    }

    #[test]
    fn backoff_is_capped_even_for_huge_attempts() {
        let mut rng = fastrand::Rng::with_seed(8);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(1);
        for attempt in [5, 40, u32::MAX] {
            let delay = backoff(attempt, base, max, &mut rng);
            assert!(delay >= max / 2 && delay <= max, "{attempt}: {delay:?}");
        }
        assert!(backoff(u32::MAX, Duration::MAX, Duration::MAX, &mut rng) <= Duration::MAX);
    }

    #[test]
    fn backoff_attempt_zero_counts_as_first() {
        let mut rng = fastrand::Rng::with_seed(9);
        let base = Duration::from_millis(10);
        let delay = backoff(0, base, Duration::from_secs(1), &mut rng);
        assert!(delay >= base / 2 && delay <= base, "{delay:?}");
    }

    #[test]
    fn backoff_is_never_zero_and_is_jittered() {
        let mut rng = fastrand::Rng::with_seed(10);
        let tiny = Duration::from_nanos(1);
        assert_eq!(backoff(1, tiny, tiny, &mut rng), tiny);
        let base = Duration::from_millis(100);
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|_| backoff(3, base, Duration::from_secs(10), &mut rng))
            .collect();
        assert!(delays.len() > 40, "too little jitter: {}", delays.len());
        assert!(delays.iter().all(|d| !d.is_zero()));
    }

    #[test]
    fn idempotent_methods_per_rfc_9110() {
        for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
            assert!(idempotent(method), "{method}");
        }
        for method in ["POST", "PATCH", "CONNECT", "get", ""] {
            assert!(!idempotent(method), "{method}");
        }
    }
}
