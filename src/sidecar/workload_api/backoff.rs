//! Reconnection delays: exponential with full jitter in its upper half, so
//! that the sidecars of a node do not all hammer a restarting agent at the
//! same instant.

use std::time::Duration;

const FIRST: Duration = Duration::from_millis(200);
const MAX: Duration = Duration::from_secs(30);

pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Backoff {
        Backoff { attempt: 0 }
    }

    /// Back to the first delay (after the agent answered).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The next delay: `FIRST * 2^n` capped at `MAX`, then a random point
    /// in its upper half.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = FIRST.saturating_mul(1u32 << self.attempt.min(16)).min(MAX);
        self.attempt = self.attempt.saturating_add(1);
        jittered(ceiling, random_fraction())
    }
}

/// `ceiling * (1/2 + fraction/2)`, `fraction` in [0, 1].
pub fn jittered(ceiling: Duration, fraction: f64) -> Duration {
    ceiling.mul_f64(0.5 + fraction.clamp(0.0, 1.0) / 2.0)
}

/// A uniform fraction in [0, 1] from the system's random source (the one
/// rustls uses); without one, the middle of the range.
fn random_fraction() -> f64 {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    match aws_lc_rs::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}
