//! The restart policy, as plain code tested without processes: how long to wait before the
//! next collector ([`RestartPolicy`]: backoff, crash loop) and which collectors to leave out
//! of it ([`Quarantine`]).
//!
//! # Backoff and crash loop
//!
//! The n-th consecutive crash waits `restart_initial_delay_ms · 2^(n-1)`, capped at
//! `restart_max_delay_secs`, minus up to 10 % jitter ([`crate::backoff`], the one scheme of
//! every retry loop in vigil). An incarnation that lived `stable_after_secs` resets the count
//! first. `crash_loop_crashes` crashes within `crash_loop_window_secs` make the state
//! `crash_loop` instead of `backoff`: an operator signal, not a surrender, since restarts go on
//! with delays that keep doubling to the cap. A stable run does not clear that window.
//!
//! # Quarantine
//!
//! A crash with a collector in flight counts against that collector. Its
//! `quarantine_after_crashes`-th such crash (since its last quarantine) quarantines it for
//! `quarantine_secs`: every incarnation started meanwhile is configured without it, and the
//! others keep running. The count starts over with the quarantine.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::backoff;
use crate::config::SupervisorConfig;

/// Backoff and crash-loop bookkeeping; plain code so it is tested without processes.
#[derive(Debug)]
pub struct RestartPolicy {
    initial: Duration,
    max: Duration,
    stable_after: Duration,
    loop_crashes: usize,
    loop_window: Duration,
    consecutive: u32,
    recent: VecDeque<Instant>,
}

/// What to do after a crash.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestartDecision {
    pub delay: Duration,
    pub crash_loop: bool,
    /// Crashes counted within the crash-loop window, this one included.
    pub recent_crashes: usize,
}

impl RestartPolicy {
    pub fn new(c: &SupervisorConfig) -> Self {
        Self {
            initial: c.restart_initial_delay(),
            max: c.restart_max_delay(),
            stable_after: c.stable_after(),
            loop_crashes: c.crash_loop_crashes.max(1) as usize,
            loop_window: c.crash_loop_window(),
            consecutive: 0,
            recent: VecDeque::new(),
        }
    }

    /// Records a crash at `now` of an incarnation that lived `lived`; `jitter` in [0, 1).
    pub fn on_crash(&mut self, now: Instant, lived: Duration, jitter: f64) -> RestartDecision {
        if lived >= self.stable_after {
            self.consecutive = 0;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        let delay =
            backoff::with_jitter(backoff::exponential(self.initial, self.max, self.consecutive), jitter);
        while self.recent.front().is_some_and(|&t| now.duration_since(t) > self.loop_window) {
            self.recent.pop_front();
        }
        self.recent.push_back(now);
        RestartDecision {
            delay,
            crash_loop: self.recent.len() >= self.loop_crashes,
            recent_crashes: self.recent.len(),
        }
    }
}

/// Collectors that crashed the process too often, and until when they are left out.
#[derive(Debug)]
pub struct Quarantine {
    after: u32,
    duration: Duration,
    /// Crashes attributed per collector since its last quarantine.
    crashes: HashMap<String, u32>,
    /// Quarantined collectors: when it ends, by the monotonic clock and by the wall clock
    /// (for `/status`).
    until: HashMap<String, (Instant, chrono::DateTime<chrono::Utc>)>,
}

impl Quarantine {
    pub fn new(c: &SupervisorConfig) -> Self {
        Self {
            after: c.quarantine_after_crashes,
            duration: crate::validate::secs(c.quarantine_secs),
            crashes: HashMap::new(),
            until: HashMap::new(),
        }
    }

    /// Counts a crash attributed to `name` at `now`. When it starts a quarantine, returns how
    /// long it lasts and when it ends (wall clock).
    pub fn on_crash(
        &mut self,
        name: &str,
        now: Instant,
    ) -> Option<(Duration, chrono::DateTime<chrono::Utc>)> {
        let n = self.crashes.entry(name.to_string()).or_default();
        *n += 1;
        if *n < self.after {
            return None;
        }
        *n = 0;
        let until = chrono::Utc::now() + chrono::Duration::from_std(self.duration).unwrap_or_default();
        self.until.insert(name.to_string(), (now + self.duration, until));
        Some((self.duration, until))
    }

    /// Takes back the last crash counted against `name` (`quarantined`: it started a
    /// quarantine, which is lifted).
    pub fn withdraw(&mut self, name: &str, quarantined: bool) {
        if quarantined {
            self.until.remove(name);
            self.crashes.insert(name.to_string(), self.after.saturating_sub(1));
        } else if let Some(n) = self.crashes.get_mut(name) {
            *n = n.saturating_sub(1);
        }
    }

    /// Ends `name`'s quarantine if its time is up at `now`; whether it did.
    pub fn end_if_over(&mut self, name: &str, now: Instant) -> bool {
        if self.until.get(name).is_some_and(|(end, _)| *end <= now) {
            self.until.remove(name);
            return true;
        }
        false
    }

    /// When `name`'s quarantine ends, while it lasts at `now`.
    pub fn until(&self, name: &str, now: Instant) -> Option<chrono::DateTime<chrono::Utc>> {
        self.until.get(name).filter(|(end, _)| *end > now).map(|(_, at)| *at)
    }

    /// The collectors quarantined at `now`, sorted.
    pub fn disabled(&self, now: Instant) -> Vec<String> {
        let mut v: Vec<String> =
            self.until.iter().filter(|(_, (end, _))| *end > now).map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy::new(&SupervisorConfig {
            restart_initial_delay_ms: 100,
            restart_max_delay_secs: 1.0,
            stable_after_secs: 10.0,
            crash_loop_crashes: 3,
            crash_loop_window_secs: 5.0,
            ..SupervisorConfig::default()
        })
    }

    #[test]
    fn delay_doubles_up_to_the_cap() {
        let mut p = policy();
        let t = Instant::now();
        let ms: Vec<u128> = (0..6)
            .map(|i| p.on_crash(t + Duration::from_secs(10 * i), Duration::ZERO, 0.0).delay.as_millis())
            .collect();
        assert_eq!(ms, [100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_only_shortens_and_never_breaks_growth() {
        let mut p = policy();
        let t = Instant::now();
        let a = p.on_crash(t, Duration::ZERO, 0.999).delay;
        let b = p.on_crash(t, Duration::ZERO, 0.0).delay;
        assert!(a > Duration::from_millis(90) && a <= Duration::from_millis(100), "{a:?}");
        assert!(b > a);
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut p = policy();
        let t = Instant::now();
        for _ in 0..4 {
            p.on_crash(t, Duration::ZERO, 0.0);
        }
        let d = p.on_crash(t, Duration::from_secs(11), 0.0);
        assert_eq!(d.delay, Duration::from_millis(100));
    }

    #[test]
    fn crash_loop_needs_enough_crashes_inside_the_window() {
        let mut p = policy();
        let t = Instant::now();
        assert!(!p.on_crash(t, Duration::ZERO, 0.0).crash_loop);
        assert!(!p.on_crash(t + Duration::from_secs(1), Duration::ZERO, 0.0).crash_loop);
        assert!(p.on_crash(t + Duration::from_secs(2), Duration::ZERO, 0.0).crash_loop);
        // Later crashes, spaced wider than the window allows, leave the loop.
        assert!(!p.on_crash(t + Duration::from_secs(20), Duration::ZERO, 0.0).crash_loop);
    }

    #[test]
    fn quarantine_after_enough_crashes_for_its_time_then_the_count_starts_over() {
        let mut q = Quarantine::new(&SupervisorConfig {
            quarantine_after_crashes: 2,
            quarantine_secs: 30.0,
            ..SupervisorConfig::default()
        });
        let t = Instant::now();
        assert_eq!(q.on_crash("load", t), None);
        assert_eq!(q.on_crash("cpu", t), None, "counted per collector");
        let (d, _) = q.on_crash("load", t).expect("second crash quarantines");
        assert_eq!(d, Duration::from_secs(30));
        assert_eq!(q.disabled(t), ["load"]);
        assert!(q.until("load", t).is_some() && q.until("cpu", t).is_none());
        assert!(!q.end_if_over("load", t + Duration::from_secs(29)));
        assert!(q.end_if_over("load", t + Duration::from_secs(30)));
        assert!(q.disabled(t).is_empty());
        assert_eq!(q.on_crash("load", t), None, "the count started over");
    }
}
