//! The one backoff-with-jitter of vigil, used by every retry loop: the supervisor's collector
//! restarts, the upload sinks' reconnects and retries, and the check-ins.
//!
//! The n-th consecutive failure (n ≥ 1) waits `initial · 2^(n-1)`, capped at `max`. Jitter
//! only shortens: the wait is `base · (1 − JITTER · r)`, `r` uniform in [0, 1), so a fleet
//! of agents that failed together does not retry in lockstep, and no wait ever exceeds its
//! cap. With `JITTER = 0.1` a wait is between 90 % and 100 % of its base.

use std::time::Duration;

/// The largest share of a wait that jitter takes off.
pub const JITTER: f64 = 0.1;

/// The base wait of the `n`-th consecutive failure: `initial · 2^(n-1)`, at most `max`
/// (`n = 0` counts as the first).
pub fn exponential(initial: Duration, max: Duration, n: u32) -> Duration {
    let factor = 2f64.powi(n.saturating_sub(1).min(63) as i32);
    let base = initial.as_secs_f64() * factor;
    Duration::from_secs_f64(base.min(max.as_secs_f64()).max(0.0))
}

/// `d` shortened by the jitter for `r` in [0, 1) (clamped): `d · (1 − JITTER · r)`.
pub fn with_jitter(d: Duration, r: f64) -> Duration {
    d.mul_f64(1.0 - JITTER * r.clamp(0.0, 1.0))
}

/// `d` shortened by a random jitter.
pub fn jittered(d: Duration) -> Duration {
    with_jitter(d, rand::random::<f64>())
}

/// A retry loop's state: consecutive failures since the last success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { initial, max, failures: 0 }
    }

    /// Counts a failure and returns how long to wait before the next try (jittered).
    pub fn next_delay(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        jittered(exponential(self.initial, self.max, self.failures))
    }

    /// A success: the next failure waits `initial` again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive failures since the last success.
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_from_initial_up_to_the_cap() {
        let ms: Vec<u128> = (1..=7)
            .map(|n| exponential(Duration::from_millis(100), Duration::from_secs(1), n).as_millis())
            .collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000, 1000]);
        assert_eq!(
            exponential(Duration::from_secs(1), Duration::from_secs(60), u32::MAX),
            Duration::from_secs(60)
        );
    }

    #[test]
    fn jitter_only_shortens_by_at_most_a_tenth() {
        let d = Duration::from_secs(10);
        assert_eq!(with_jitter(d, 0.0), d);
        assert!(with_jitter(d, 0.999) > Duration::from_millis(9000));
        assert_eq!(with_jitter(d, 7.0), Duration::from_secs(9), "r is clamped");
        for _ in 0..1000 {
            let j = jittered(d);
            assert!(j <= d && j > Duration::from_millis(9000), "{j:?}");
        }
    }

    #[test]
    fn a_success_starts_over() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        let first = b.next_delay();
        let _ = b.next_delay();
        let third = b.next_delay();
        assert!(third > Duration::from_millis(3600) && third <= Duration::from_secs(4), "{third:?}");
        assert_eq!(b.failures(), 3);
        b.reset();
        let again = b.next_delay();
        assert!(first <= Duration::from_secs(1) && again <= Duration::from_secs(1));
    }
}
