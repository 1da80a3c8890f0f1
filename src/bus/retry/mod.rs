//! Consumer retries: the policy (how long to wait before each attempt) and
//! the broker-held delay queues that do the waiting (`delay`).
//!
//! Delays follow the queue's policy: exponential from `initial_backoff` to
//! `max_backoff` with jitter, rounded to a grid of quarter powers of two (at
//! most ±9 % off) so that a queue needs only a few delay queues; unused ones
//! expire on their own.

mod delay;

use std::time::Duration;

use rand::Rng;

use crate::config::RetryPolicy;

pub use delay::Retrier;

/// `d` rounded to the nearest quarter power of two of milliseconds.
pub fn quantize(d: Duration) -> Duration {
    let ms = d.as_secs_f64() * 1000.0;
    if ms <= 1.0 {
        return Duration::from_millis(1);
    }
    let step = (ms.log2() * 4.0).round() / 4.0;
    Duration::from_millis(2f64.powf(step).round() as u64)
}

/// The delay before attempt `attempt + 1`: exponential from the policy's
/// initial backoff, equal jitter, within the policy's bounds.
pub fn backoff(policy: &RetryPolicy, attempt: u32, rng: &mut impl Rng) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let base = policy
        .initial_backoff
        .saturating_mul(1u32 << exp.min(31))
        .min(policy.max_backoff);
    let half = base / 2;
    let jittered = half + half.mul_f64(rng.random::<f64>());
    jittered.clamp(policy.initial_backoff, policy.max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use delay::Retrier;

    fn policy(initial_ms: u64, max_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
        }
    }

    #[test]
    fn quantized_delays_are_close() {
        for ms in [1u64, 7, 100, 250, 999, 1000, 1500, 60_000, 3_600_000] {
            let q = quantize(Duration::from_millis(ms)).as_millis() as f64;
            let error = (q - ms as f64).abs() / ms as f64;
            assert!(error <= 0.095, "{ms} -> {q}");
        }
        // Few distinct levels: a 2x range holds at most 5.
        let levels: std::collections::HashSet<_> = (500..=1000)
            .map(|ms| quantize(Duration::from_millis(ms)))
            .collect();
        assert!(levels.len() <= 5, "{levels:?}");
    }

    #[test]
    fn backoff_grows_exponentially_within_bounds() {
        let mut rng = rand::rng();
        let p = policy(100, 2_000);
        for attempt in 1..20 {
            for _ in 0..50 {
                let d = backoff(&p, attempt, &mut rng);
                assert!(
                    d >= p.initial_backoff && d <= p.max_backoff,
                    "{attempt}: {d:?}"
                );
                let base = Duration::from_millis((100u64 << (attempt - 1).min(20)).min(2_000));
                assert!(
                    d <= base && d >= (base / 2).max(p.initial_backoff),
                    "{attempt}: {d:?} vs {base:?}"
                );
            }
        }
    }

    #[test]
    fn long_queue_names_get_a_digest() {
        let long = "q".repeat(250);
        let name = Retrier::delay_queue(&long, Duration::from_millis(1000));
        assert!(
            name.len() <= 255 && name.starts_with("warren.retry."),
            "{name}"
        );
        assert_eq!(
            name,
            Retrier::delay_queue(&long, Duration::from_millis(1000)),
            "stable"
        );
        assert_eq!(
            Retrier::delay_queue("orders", Duration::from_millis(1000)),
            "orders.retry.1000"
        );
    }
}
