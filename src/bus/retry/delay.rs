//! Consumer retries with delay, held by the broker.
//!
//! A delivery nacked with `requeue=true` is republished, confirmed, into a
//! delay queue `<queue>.retry.<ms>` whose messages expire after `<ms>` and
//! dead-letter back to `<queue>`; only then is the original acked (a crash in
//! between duplicates, never loses). Nothing waits in Warren's memory, and
//! there is no busy requeue loop. Warren's `x-warren-attempt` header counts
//! the attempts (brokers from 3.13 on ignore a client's `x-death`); once a
//! message has used the policy's `max_attempts`, it is dead-lettered instead.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::QueueDeclareOptions;
use lapin::BasicProperties;

use super::quantize;
use crate::amqp::{args, Channel, Pool, Slot};
use crate::bus::publish::Shared;
use crate::bus::Publish;
use crate::config::{self, RetryPolicy};
use crate::error::Error;
use crate::message::Message;

/// Declares delay queues and moves messages into them.
pub struct Retrier {
    config: config::Retry,
    pool: Arc<Pool>,
    publisher: Arc<Shared>,
    declared: Mutex<HashMap<String, Instant>>,
    channel: Slot<Channel>,
}

/// How long an unused delay queue lives beyond its delay.
const IDLE_EXPIRY: Duration = Duration::from_secs(600);

impl Retrier {
    pub(crate) fn new(config: config::Retry, pool: Arc<Pool>, publisher: Arc<Shared>) -> Self {
        Self {
            config,
            pool,
            publisher,
            declared: Mutex::new(HashMap::new()),
            channel: Slot::default(),
        }
    }

    /// The retry policy of `queue`.
    pub fn policy(&self, queue: &str) -> &RetryPolicy {
        self.config.policy(queue)
    }

    /// The delay queues this Warren declared lately (they expire unused,
    /// so some may be gone), by name.
    pub(crate) fn delay_queues(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .declared
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|(_, at)| at.elapsed() < IDLE_EXPIRY)
            .map(|(name, _)| name.clone())
            .collect();
        names.sort();
        names
    }

    /// The delay queue's name for `queue` and `delay`.
    pub(crate) fn delay_queue(queue: &str, delay: Duration) -> String {
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
        let args = args::delay_queue(delay, queue, IDLE_EXPIRY, self.config.delay_queue_type);
        let (channel, generation) = self
            .channel
            .get(async || self.pool.open_channel().await)
            .await?;
        let options = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let declare = channel.queue_declare(name.into(), options, args);
        match self.pool.op("queue.declare", declare).await {
            Ok(_) => {
                self.declared
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(name.to_owned(), Instant::now());
                Ok(())
            }
            Err(e) => {
                // A refused declare closes the channel; a timeout leaves it unknown.
                drop(self.channel.invalidate(generation));
                Err(e)
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
            ..Default::default()
        };
        self.publisher
            .publish(&publish, Some(properties), Instant::now())
            .await
            .map(|_| ())
    }
}
