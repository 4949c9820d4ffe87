//! Capped exponential backoff with jitter, for retrying transient failures (connection loss,
//! failover, deadlock, serialization failure, an unavailable broker).
//!
//! The delay before retry `n` (from 0) is drawn uniformly from `[d/2, d]` with
//! `d = min(max, initial * 2^n)`: growth keeps a struggling target from being hammered, the cap keeps
//! recovery prompt, and the jitter keeps many sinks from retrying in lockstep.

use std::time::Duration;

/// A retry schedule. [`next_delay`](Self::next_delay) gives the wait before each retry;
/// [`reset`](Self::reset) after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
    rng: u64,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (u64::from(std::process::id()) << 32);
        Self::with_seed(initial, max, seed)
    }

    /// A schedule with a fixed jitter seed, for reproducible tests.
    pub fn with_seed(initial: Duration, max: Duration, seed: u64) -> Self {
        Self {
            initial,
            max: max.max(initial),
            attempt: 0,
            rng: seed | 1,
        }
    }

    /// Retries made since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// The wait before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        let ceiling = self.initial.saturating_mul(factor).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        // xorshift64*: enough randomness for jitter, no dependency.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let r = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let frac = (r >> 11) as f64 / (1u64 << 53) as f64;
        ceiling.mul_f64(0.5 + 0.5 * frac)
    }
}

impl Default for Backoff {
    /// 100 ms doubling to 30 s.
    fn default() -> Self {
        Self::new(Duration::from_millis(100), Duration::from_secs(30))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps_with_jitter_in_range() {
        let mut b = Backoff::with_seed(Duration::from_millis(100), Duration::from_secs(2), 7);
        let mut ceilings = Vec::new();
        for n in 0..10u32 {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(100 * 2u64.pow(n)).min(Duration::from_secs(2));
            assert!(
                d >= ceiling / 2 && d <= ceiling,
                "retry {n}: {d:?} vs {ceiling:?}"
            );
            ceilings.push(ceiling);
        }
        assert_eq!(b.attempts(), 10);
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn jitter_varies_and_huge_attempt_counts_do_not_overflow() {
        let mut b = Backoff::with_seed(Duration::from_secs(1), Duration::from_secs(60), 42);
        let delays: Vec<_> = (0..200).map(|_| b.next_delay()).collect();
        let tail = &delays[10..];
        assert!(
            tail.iter()
                .all(|d| *d >= Duration::from_secs(30) && *d <= Duration::from_secs(60))
        );
        assert!(tail.windows(2).any(|w| w[0] != w[1]), "no jitter");
    }
}
