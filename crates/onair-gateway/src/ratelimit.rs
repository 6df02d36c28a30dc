//! Per-connection flood control: a token bucket, plus a strike counter that
//! tells sustained abuse (close the socket) from a burst (reject the frame).

use std::time::{Duration, Instant};

/// What to do with one incoming frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Process it.
    Allow,
    /// Drop it and tell the client `rate_limited`.
    Reject,
    /// Close the connection (sustained flooding).
    Abuse,
}

/// Token bucket with abuse detection.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    capacity: f64,
    per_sec: f64,
    tokens: f64,
    last: Instant,
    strikes: u32,
    strike_window_start: Instant,
    max_strikes: u32,
    strike_window: Duration,
}

impl RateLimiter {
    /// `per_sec` sustained frames, bursts up to `burst`; more than `max_strikes`
    /// rejected frames within `strike_window` is abuse.
    pub fn new(per_sec: u32, burst: u32, max_strikes: u32, strike_window: Duration, now: Instant) -> Self {
        Self {
            capacity: f64::from(burst),
            per_sec: f64::from(per_sec),
            tokens: f64::from(burst),
            last: now,
            strikes: 0,
            strike_window_start: now,
            max_strikes,
            strike_window,
        }
    }

    /// Judges one frame arriving at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_sec).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allow;
        }
        if now.saturating_duration_since(self.strike_window_start) > self.strike_window {
            self.strike_window_start = now;
            self.strikes = 0;
        }
        self.strikes += 1;
        if self.strikes > self.max_strikes { Verdict::Abuse } else { Verdict::Reject }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_reject_then_refill() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 5, 100, Duration::from_secs(10), t0);
        for _ in 0..5 {
            assert_eq!(r.check(t0), Verdict::Allow);
        }
        assert_eq!(r.check(t0), Verdict::Reject);
        assert_eq!(r.check(t0 + Duration::from_millis(100)), Verdict::Allow);
    }

    #[test]
    fn sustained_flooding_is_abuse() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(10, 1, 3, Duration::from_secs(10), t0);
        assert_eq!(r.check(t0), Verdict::Allow);
        assert_eq!(r.check(t0), Verdict::Reject);
        assert_eq!(r.check(t0), Verdict::Reject);
        assert_eq!(r.check(t0), Verdict::Reject);
        assert_eq!(r.check(t0), Verdict::Abuse);
    }

    #[test]
    fn strikes_reset_after_the_window() {
        let t0 = Instant::now();
        let mut r = RateLimiter::new(1, 1, 1, Duration::from_secs(1), t0);
        assert_eq!(r.check(t0), Verdict::Allow);
        assert_eq!(r.check(t0), Verdict::Reject);
        let t1 = t0 + Duration::from_millis(1500);
        assert_eq!(r.check(t1), Verdict::Allow);
        assert_eq!(r.check(t1), Verdict::Reject);
    }
}
