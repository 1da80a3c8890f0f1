//! Consumer retries with delay, held by the broker.
//!
//! A delivery nacked with `requeue=true` is republished, confirmed, into a
//! delay queue `<queue>.retry.<ms>` whose messages expire after `<ms>` and
//! dead-letter back to `<queue>`; only then is the original acked (a crash in
//! between duplicates, never loses). Nothing waits in Warren's memory, and
//! there is no busy requeue loop. Warren's `x-warren-attempt` header counts
//! the attempts (brokers from 3.13 on ignore a client's `x-death`); once a
//! message has used the policy's `max_attempts`, it is dead-lettered instead.
//!
//! Delays follow the queue's policy: exponential from `initial_backoff` to
//! `max_backoff` with jitter, rounded to a grid of quarter powers of two (at
//! most ±9 % off) so that a queue needs only a few delay queues; unused ones
//! expire on their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use rand::Rng;

use super::shared::Shared;
use super::Publish;
use crate::amqp::{self, Pool};
use crate::config::{self, QueueKind, RetryPolicy};
use crate::error::Error;
use crate::message::Message;

/// Declares delay queues and moves messages into them.
pub struct Retrier {
    config: config::Retry,
    pool: Arc<Pool>,
    publisher: Arc<Shared>,
    timeout: Duration,
    declared: Mutex<HashMap<String, Instant>>,
    channel: tokio::sync::Mutex<Option<Channel>>,
}

/// How long an unused delay queue lives beyond its delay.
const IDLE_EXPIRY: Duration = Duration::from_secs(600);

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

impl Retrier {
    pub(super) fn new(
        config: config::Retry,
        pool: Arc<Pool>,
        publisher: Arc<Shared>,
        timeout: Duration,
    ) -> Self {
        Self {
            config,
            pool,
            publisher,
            timeout,
            declared: Mutex::new(HashMap::new()),
            channel: tokio::sync::Mutex::new(None),
        }
    }

    /// The retry policy of `queue`.
    pub fn policy(&self, queue: &str) -> &RetryPolicy {
        self.config.policy(queue)
    }

    /// The delay queue's name for `queue` and `delay`.
    fn delay_queue(queue: &str, delay: Duration) -> String {
        let name = format!("{queue}.retry.{}", delay.as_millis());
        if name.len() <= 255 {
            return name;
        }
        // Too long a name: a stable digest of the queue name instead.
        let digest = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, queue.as_bytes()).simple();
        format!("warren.retry.{digest}.{}", delay.as_millis())
    }

    async fn declare(&self, name: &str, queue: &str, delay: Duration) -> Result<(), Error> {
        let fresh = |at: &Instant| at.elapsed() < IDLE_EXPIRY / 2;
        if self
            .declared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(fresh)
        {
            return Ok(());
        }
        let mut args = FieldTable::default();
        let string = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
        args.insert(
            "x-message-ttl".into(),
            AMQPValue::LongLongInt(delay.as_millis() as i64),
        );
        args.insert("x-dead-letter-exchange".into(), string(""));
        args.insert("x-dead-letter-routing-key".into(), string(queue));
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt((delay + IDLE_EXPIRY).as_millis() as i64),
        );
        if self.config.delay_queue_type == QueueKind::Quorum {
            // Dead-lettering out of a quorum queue is confirmed only so.
            args.insert("x-queue-type".into(), string("quorum"));
            args.insert("x-dead-letter-strategy".into(), string("at-least-once"));
            args.insert("x-overflow".into(), string("reject-publish"));
        }
        let mut slot = self.channel.lock().await;
        let channel = match slot.as_ref().filter(|c| c.status().connected()) {
            Some(c) => c.clone(),
            None => {
                let c = self.pool.open_channel().await?;
                *slot = Some(c.clone());
                c
            }
        };
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declare = channel.queue_declare(name.into(), options, args);
        match tokio::time::timeout(self.timeout, declare).await {
            Ok(Ok(_)) => {
                self.declared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_owned(), Instant::now());
                Ok(())
            }
            Ok(Err(e)) => {
                *slot = None;
                Err(amqp::classify(&e))
            }
            Err(_) => {
                *slot = None;
                Err(Error::unavailable(
                    "the broker did not declare a delay queue in time",
                ))
            }
        }
    }

    /// Puts a copy of a delivery into `queue`'s delay queue for `delay`
    /// (quantized), confirmed by the broker.
    pub async fn delay(
        &self,
        queue: &str,
        delay: Duration,
        body: bytes::Bytes,
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let delay = quantize(delay.max(Duration::from_millis(1)));
        let name = Self::delay_queue(queue, delay);
        self.declare(&name, queue, delay).await?;
        self.publish(&name, body, properties).await
    }

    /// Publishes to `queue` through the default exchange, properties as
    /// given, and waits for the confirm.
    pub async fn publish(
        &self,
        queue: &str,
        body: bytes::Bytes,
        properties: BasicProperties,
    ) -> Result<(), Error> {
        let publish = Publish {
            exchange: String::new(),
            routing_key: queue.to_owned(),
            message: Message {
                body,
                ..Default::default()
            },
            mandatory: true,
        };
        self.publisher
            .publish(&publish, Some(properties), Instant::now())
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
