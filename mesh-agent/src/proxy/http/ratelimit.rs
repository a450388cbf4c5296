//! Local rate limiting per destination service: a token bucket admits bursts up to `burst`
//! and a sustained `per_second` rate, so clients on this node cannot flood a service.
//! "Local" means per proxy: nodes do not coordinate, so a service's total limit is this
//! one times the number of nodes sending to it.

use std::sync::Mutex;
use std::time::Instant;

/// Token bucket: starts full with `burst` tokens, refills continuously at `per_second`
/// and never holds more than `burst`; each admitted request takes one token.
/// A negative or NaN rate counts as 0 (no refill); a `burst` of 0 admits nothing.
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    state: Mutex<Bucket>,
}

struct Bucket {
    tokens: f64,
    /// Time up to which refills are accounted; `None` until the first request.
    refilled_at: Option<Instant>,
}

impl TokenBucket {
    pub fn new(per_second: f64, burst: u32) -> Self {
        Self {
            per_second: per_second.max(0.0),
            burst: f64::from(burst),
            state: Mutex::new(Bucket {
                tokens: f64::from(burst),
                refilled_at: None,
            }),
        }
    }

    /// Takes a token if one is there; false means the request is over the limit.
    pub fn try_take(&self, now: Instant) -> bool {
        let mut bucket = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(refilled_at) = bucket.refilled_at {
            let elapsed = now.saturating_duration_since(refilled_at).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.burst);
        }
        // Concurrent callers may pass slightly older instants; never move time back.
        bucket.refilled_at = Some(bucket.refilled_at.map_or(now, |at| at.max(now)));
        if bucket.tokens < 1.0 {
            return false;
        }
        bucket.tokens -= 1.0;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn taken(bucket: &TokenBucket, attempts: usize, now: Instant) -> usize {
        (0..attempts).filter(|_| bucket.try_take(now)).count()
    }

    #[test]
    fn bucket_is_send_and_sync() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<TokenBucket>();
    }

    #[test]
    fn full_burst_then_refusal() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1.0, 5);
        assert_eq!(taken(&bucket, 5, t0), 5);
        assert!(!bucket.try_take(t0));
    }

    #[test]
    fn refills_with_time() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(10.0, 5);
        assert_eq!(taken(&bucket, 5, t0), 5);
        assert!(!bucket.try_take(t0 + Duration::from_millis(50)));
        assert!(bucket.try_take(t0 + Duration::from_millis(100)));
        assert!(!bucket.try_take(t0 + Duration::from_millis(100)));
        assert_eq!(taken(&bucket, 10, t0 + Duration::from_millis(400)), 3);
    }

    #[test]
    fn never_holds_more_than_burst() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(100.0, 4);
        assert_eq!(taken(&bucket, 1, t0), 1);
        assert_eq!(taken(&bucket, 100, t0 + Duration::from_secs(3600)), 4);
    }

    #[test]
    fn rate_100_burst_10_admits_110_in_the_first_second() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(100.0, 10);
        let admitted: usize = (0..=1000u64)
            .map(|ms| taken(&bucket, 3, t0 + Duration::from_millis(ms)))
            .sum();
        assert!((109..=111).contains(&admitted), "{admitted}");
    }

    #[test]
    fn zero_or_invalid_rate_never_refills() {
        let t0 = Instant::now();
        for rate in [0.0, -5.0, f64::NAN] {
            let bucket = TokenBucket::new(rate, 2);
            assert_eq!(taken(&bucket, 5, t0), 2);
            assert!(!bucket.try_take(t0 + Duration::from_secs(3600)), "{rate}");
        }
    }

    #[test]
    fn zero_burst_admits_nothing() {
        let bucket = TokenBucket::new(1000.0, 0);
        let t0 = Instant::now();
        assert!(!bucket.try_take(t0));
        assert!(!bucket.try_take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn older_instants_do_not_move_time_back() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(1.0, 1);
        assert!(bucket.try_take(t0 + Duration::from_secs(1)));
        // A late caller with an older instant neither refills nor rewinds the clock...
        assert!(!bucket.try_take(t0));
        // ...so the next token still arrives one second after the first take.
        assert!(!bucket.try_take(t0 + Duration::from_millis(1900)));
        assert!(bucket.try_take(t0 + Duration::from_secs(2)));
    }
}
