//! The registry's limits on what one caller may create, and the metric that counts refusals.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

/// Registry limits (0: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub struct Limits {
    /// Live streams one owner (a publish grant's subject) may have at once.
    pub live_per_subject: u32,
    /// `CreateStream` calls one developer (an admin token's subject) may make per minute.
    pub creates_per_minute: u32,
}

/// Labels of `onair_registry_limited_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct LimitLabels {
    /// `live_per_subject` or `creates_per_minute`.
    pub limit: &'static str,
}

/// Refusals by limit.
pub type Limited = Family<LimitLabels, Counter>;

/// The window `creates_per_minute` counts in.
const WINDOW: Duration = Duration::from_secs(60);

/// Callers tracked before windows that ended are swept out.
const SWEEP_AT: usize = 4096;

/// Counts each caller's creates in a sliding minute (the previous window's count, weighted by how
/// much of it still overlaps, plus the current one's), as nginx's and Cloudflare's limiters do.
#[derive(Debug)]
pub struct CreateRate {
    per_minute: u32,
    windows: Mutex<HashMap<String, Window>>,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start: Instant,
    current: u32,
    previous: u32,
}

impl CreateRate {
    /// At most `per_minute` creates per caller (0: no limit).
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute, windows: Mutex::new(HashMap::new()) }
    }

    /// Counts one create by `caller` at `now`; `Err` with the seconds to wait when over the limit.
    pub fn admit(&self, caller: &str, now: Instant) -> Result<(), u64> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let mut windows = self.windows.lock();
        if windows.len() >= SWEEP_AT {
            windows.retain(|_, w| now.saturating_duration_since(w.start) < 2 * WINDOW);
        }
        let w = windows.entry(caller.to_owned()).or_insert(Window { start: now, current: 0, previous: 0 });
        let mut elapsed = now.saturating_duration_since(w.start);
        if elapsed >= WINDOW {
            w.previous = if elapsed < 2 * WINDOW { w.current } else { 0 };
            w.current = 0;
            let whole = u32::try_from(elapsed.as_secs() / WINDOW.as_secs()).unwrap_or(u32::MAX);
            w.start += WINDOW * whole.min(2);
            if w.start + WINDOW <= now {
                w.start = now;
            }
            elapsed = now.saturating_duration_since(w.start);
        }
        let overlap = 1.0 - elapsed.as_secs_f64() / WINDOW.as_secs_f64();
        let counted = f64::from(w.previous) * overlap + f64::from(w.current);
        if counted + 1.0 > f64::from(self.per_minute) {
            return Err((WINDOW - elapsed).as_secs().max(1));
        }
        w.current += 1;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caller_gets_its_rate_and_then_waits_and_others_are_not_affected() {
        let rate = CreateRate::new(3);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(rate.admit("dev", t0), Ok(()));
        }
        let wait = rate.admit("dev", t0).unwrap_err();
        assert_eq!(wait, 60);
        assert_eq!(rate.admit("other", t0), Ok(()), "limits are per caller");
        // A window later, the previous minute still weighs: half way in, 1.5 of 3 count.
        assert_eq!(rate.admit("dev", t0 + Duration::from_secs(90)), Ok(()));
        assert!(rate.admit("dev", t0 + Duration::from_secs(90)).is_err());
        // Long idle: a fresh minute.
        let later = t0 + Duration::from_secs(600);
        for _ in 0..3 {
            assert_eq!(rate.admit("dev", later), Ok(()));
        }
        assert!(rate.admit("dev", later).is_err());
    }

    #[test]
    fn no_limit_admits_everything_and_idle_callers_are_swept() {
        let open = CreateRate::new(0);
        let t0 = Instant::now();
        for _ in 0..10_000 {
            assert_eq!(open.admit("dev", t0), Ok(()));
        }
        let rate = CreateRate::new(1);
        for i in 0..SWEEP_AT {
            rate.admit(&format!("c{i}"), t0).unwrap();
        }
        rate.admit("late", t0 + 3 * WINDOW).unwrap();
        assert!(rate.windows.lock().len() < 10, "windows of idle callers were kept");
    }
}
