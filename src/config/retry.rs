//! `[retry]`: the default retry policy and the policies of single queues.

use std::time::Duration;

use serde::Deserialize;

use super::{invalid, Error, QueueKind};

/// A queue's retry policy.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Deliveries a message gets in all; past it, a requeue dead-letters it.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// `[retry]`: the default policy, per-queue policies, the delay queues.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retry {
    /// Deliveries a message gets in all (default policy).
    pub max_attempts: u32,
    /// Delay before the second attempt (default policy).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest delay (default policy).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Policies of single queues: `[retry.queues."orders"]`.
    pub queues: std::collections::BTreeMap<String, RetryPolicy>,
    /// Type of the delay queues: `quorum` (dead-letters back at least once)
    /// or `classic`.
    pub delay_queue_type: QueueKind,
    #[serde(skip)]
    default_policy: RetryPolicy,
}

impl Default for Retry {
    fn default() -> Self {
        let p = RetryPolicy::default();
        Self {
            max_attempts: p.max_attempts,
            initial_backoff: p.initial_backoff,
            max_backoff: p.max_backoff,
            queues: Default::default(),
            delay_queue_type: QueueKind::Quorum,
            default_policy: p,
        }
    }
}

impl Retry {
    /// The policy of `queue`: its own, else the default.
    pub fn policy(&self, queue: &str) -> &RetryPolicy {
        self.queues.get(queue).unwrap_or(&self.default_policy)
    }

    pub(super) fn settle_default(&mut self) {
        self.default_policy = RetryPolicy {
            max_attempts: self.max_attempts,
            initial_backoff: self.initial_backoff,
            max_backoff: self.max_backoff,
        };
    }

    pub(super) fn validate(&self) -> Result<(), Error> {
        let policies = std::iter::once(("retry".to_string(), &self.default_policy)).chain(
            self.queues
                .iter()
                .map(|(q, p)| (format!("retry.queues.{q:?}"), p)),
        );
        for (key, p) in policies {
            if p.max_attempts == 0 {
                return Err(invalid(
                    format!("{key}.max_attempts"),
                    0,
                    "must be at least 1",
                ));
            }
            if p.initial_backoff.is_zero() || p.initial_backoff > p.max_backoff {
                return Err(invalid(
                    format!("{key}.initial_backoff"),
                    humantime::format_duration(p.initial_backoff),
                    "must be above 0 and at most max_backoff",
                ));
            }
        }
        if self.delay_queue_type == QueueKind::Stream {
            return Err(invalid(
                "retry.delay_queue_type",
                "stream",
                "expected quorum or classic",
            ));
        }
        Ok(())
    }
}
