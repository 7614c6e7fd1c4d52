//! The validation vocabulary shared by the config schema ([`crate::config`]) and the
//! collector registry (which validates its own tables): a located problem, and seconds as a
//! `Duration`. A leaf: it imports nothing of vigil, so both can use it without a circle.

use std::time::Duration;

/// One semantic error: the dotted key path (`supervisor.heartbeat_timeout_secs`) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    pub path: String,
    pub message: String,
}

/// Seconds (validated finite and non-negative) as a `Duration`.
pub fn secs(v: f64) -> Duration {
    if v.is_finite() && v > 0.0 {
        Duration::from_secs_f64(v.min(1e9))
    } else {
        Duration::ZERO
    }
}
