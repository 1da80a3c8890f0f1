//! The forwarder: each Warren's competing consumer of the exit queue
//! `warren.scheduled`, which republishes every due message to its target.
//!
//! It runs from the bus's start to its shutdown, on the consuming pool,
//! in the background (a broker that is away delays neither start-up nor
//! readiness). It declares the exit before it consumes, and when its
//! channel is lost it consumes again once the broker is back, with backoff,
//! as subscriptions do. Up to [`PREFETCH`] deliveries are in hand at once;
//! each is published to its target on the forwarder's own publisher
//! session (in delivery order, mandatory, confirmed by the broker), then
//! acked. A target that is gone or unroutable when due sends the message,
//! confirmed, into `warren.scheduled.dlq` with the reason, then it is acked;
//! a broker that cannot take it now gets it back (nack with requeue) after
//! a backoff that grows while failures go on. A crash in between
//! duplicates a message, never loses one.
//!
//! On shutdown it takes no new deliveries once the drain gate closes,
//! settles those in flight (the drain waits for their publishes: each holds
//! a pass) and closes its channel, which hands back whatever is unacked.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Consumer};
use rand::Rng;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::due::{self, Target};
use super::topology::{self, DEAD_LETTER_QUEUE, EXIT};
use crate::amqp::{reconnect_backoff, Channel, Pool};
use crate::auth::Caller;
use crate::bus::drain::{Gate, Pass};
use crate::bus::exchanges::Exchanges;
use crate::bus::publish::{Publish, PublisherHandle, Publishers};
use crate::bus::retry::Retrier;
use crate::config::QueueKind;
use crate::error::Error;
use crate::message::Message;
use crate::metrics::{scheduled, Metrics};

/// Due messages in hand at once (the consumer's prefetch).
pub const PREFETCH: u16 = 64;

/// The longest wait before a message the broker could not take goes back.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// What the forwarder needs from the bus.
pub(crate) struct Forwarder {
    /// The consuming pool.
    pub pool: Arc<Pool>,
    pub exchanges: Arc<Exchanges>,
    pub publishers: Arc<Publishers>,
    /// Warren itself, as the owner of the forwarder's publisher session.
    pub caller: Caller,
    /// Publishes to the dead-letter queue on the shared channels.
    pub retrier: Arc<Retrier>,
    pub gate: Arc<Gate>,
    pub metrics: Metrics,
    pub kind: QueueKind,
    pub shutdown: CancellationToken,
    /// Failures in a row (the backoff grows with them).
    pub failures: AtomicU32,
}

/// What becomes of a delivery.
enum Settle {
    Ack,
    Requeue,
}

/// Why consuming stopped.
enum Done {
    Stopped,
    Lost(String),
}

/// The wait before a message goes back after `failures` failures in a row:
/// 500 ms doubling to [`MAX_BACKOFF`], with jitter.
fn backoff(failures: u32) -> Duration {
    let base = Duration::from_millis(500)
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    base.mul_f64(rand::rng().random_range(0.5..=1.0))
}

/// Whether a failure to forward is the target's (gone, unroutable,
/// refused): the message is dead-lettered. Any other failure is the
/// broker's or Warren's, for now: the message goes back.
fn is_targets(error: &Error) -> bool {
    matches!(
        error,
        Error::Unroutable { .. }
            | Error::NotFound(_)
            | Error::PermissionDenied(_)
            | Error::InvalidArgument(_)
            | Error::TooLarge { .. }
            | Error::FailedPrecondition(_)
    )
}

impl Forwarder {
    /// Runs until shutdown.
    pub(crate) async fn run(self) {
        let publisher = self.publishers.internal(&self.caller);
        let mut backoff = reconnect_backoff();
        let mut failing = false;
        loop {
            let opened = tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => return,
                opened = self.open() => opened,
            };
            match opened {
                Ok((channel, consumer)) => {
                    if failing {
                        info!(queue = EXIT, "forwarder consuming");
                    }
                    failing = false;
                    backoff = reconnect_backoff();
                    match self.consume(&publisher, channel, consumer).await {
                        Done::Stopped => return,
                        Done::Lost(reason) => {
                            warn!(%reason, "the forwarder lost its channel; consuming again once the broker is back")
                        }
                    }
                }
                Err(error) if failing => debug!(%error, "the forwarder cannot consume yet"),
                Err(error) => {
                    warn!(%error, queue = EXIT, "the forwarder cannot consume yet; trying again");
                    failing = true;
                }
            }
            let delay = backoff.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                _ = self.shutdown.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// Declares the exit and consumes it.
    async fn open(&self) -> Result<(Channel, Consumer), Error> {
        topology::declare_exit(&self.pool, self.kind).await?;
        let channel = self.pool.open_channel().await?;
        let started = async {
            let qos = channel.basic_qos(PREFETCH, BasicQosOptions::default());
            self.pool.op("basic.qos", qos).await?;
            let consume = channel.basic_consume(
                EXIT.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            );
            self.pool.op("basic.consume", consume).await
        }
        .await;
        match started {
            Ok(consumer) => Ok((channel, consumer)),
            Err(e) => {
                channel.close(self.pool.operation_timeout()).await;
                Err(e)
            }
        }
    }

    async fn consume(
        &self,
        publisher: &PublisherHandle,
        channel: Channel,
        mut consumer: Consumer,
    ) -> Done {
        let mut forwards = FuturesUnordered::new();
        let mut taking = true;
        let done = loop {
            tokio::select! {
                biased;
                _ = self.shutdown.cancelled() => break Done::Stopped,
                Some((tag, settle)) = forwards.next(), if !forwards.is_empty() => {
                    if let Err(e) = self.settle(&channel, tag, settle).await {
                        break Done::Lost(e.to_string());
                    }
                }
                next = consumer.next(), if taking && forwards.len() < usize::from(PREFETCH) => match next {
                    Some(Ok(delivery)) => match self.gate.enter() {
                        Ok(pass) => forwards.push(self.forward(publisher, delivery, pass)),
                        // Shutting down: it goes back when the channel closes.
                        Err(_) => taking = false,
                    },
                    Some(Err(e)) => break Done::Lost(e.to_string()),
                    None => break Done::Lost("the broker cancelled the consumer".into()),
                },
            }
        };
        if matches!(done, Done::Stopped) {
            // Settle what is in flight: the drain waited for its publishes.
            let settled = async {
                while let Some((tag, settle)) = forwards.next().await {
                    if self.settle(&channel, tag, settle).await.is_err() {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(self.pool.operation_timeout(), settled).await;
        }
        drop(forwards);
        channel.close(self.pool.operation_timeout()).await;
        done
    }

    async fn settle(&self, channel: &Channel, tag: u64, settle: Settle) -> Result<(), Error> {
        match settle {
            Settle::Ack => {
                let ack = channel.basic_ack(tag, BasicAckOptions::default());
                self.pool.op("basic.ack", ack).await
            }
            Settle::Requeue => {
                let options = BasicNackOptions {
                    multiple: false,
                    requeue: true,
                };
                self.pool
                    .op("basic.nack", channel.basic_nack(tag, options))
                    .await
            }
        }
    }

    /// Forwards or dead-letters one delivery, holding `pass` until done;
    /// one the broker could not take goes back after a backoff.
    async fn forward(
        &self,
        publisher: &PublisherHandle,
        delivery: Delivery,
        pass: Pass,
    ) -> (u64, Settle) {
        let tag = delivery.delivery_tag;
        let result = {
            let _pass = pass;
            self.deliver(publisher, delivery).await
        };
        match result {
            Ok(outcome) => {
                self.failures.store(0, Ordering::Relaxed);
                self.metrics.scheduled(outcome);
                (tag, Settle::Ack)
            }
            Err(error) => {
                let delay = backoff(self.failures.fetch_add(1, Ordering::Relaxed) + 1);
                warn!(%error, ?delay, "could not forward a due message; it goes back to {EXIT} after a backoff");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = self.shutdown.cancelled() => {}
                }
                (tag, Settle::Requeue)
            }
        }
    }

    /// The metrics outcome of a due message: forwarded or dead-lettered;
    /// an error when the broker could not take it now.
    async fn deliver(
        &self,
        publisher: &PublisherHandle,
        delivery: Delivery,
    ) -> Result<usize, Error> {
        let body = Bytes::from(delivery.data);
        let properties = delivery.properties;
        let id = properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        let Some(target) = due::target(&properties) else {
            warn!(message_id = %id, "a message in {EXIT} names no target; dead-lettering it");
            let detail = "the message names no target exchange and routing key";
            return self
                .dead_letter(body, &properties, "no-target", detail)
                .await;
        };
        let forwarded = due::forwarded(&properties);
        match self.send(publisher, &target, body.clone(), forwarded).await {
            Ok(()) => {
                debug!(message_id = %id, exchange = %target.exchange, routing_key = %target.routing_key, "due message forwarded");
                Ok(scheduled::FORWARDED)
            }
            Err(error) if is_targets(&error) => {
                warn!(message_id = %id, exchange = %target.exchange, routing_key = %target.routing_key, %error, "a due message cannot be forwarded; dead-lettering it to {DEAD_LETTER_QUEUE}");
                let detail = error.to_string();
                self.dead_letter(body, &properties, error.kind(), &detail)
                    .await
            }
            Err(error) => Err(error),
        }
    }

    /// Publishes to the target on the forwarder's session and waits for
    /// the broker's verdict.
    async fn send(
        &self,
        publisher: &PublisherHandle,
        target: &Target,
        body: Bytes,
        properties: BasicProperties,
    ) -> Result<(), Error> {
        // A missing exchange would close the session's channel: ask first.
        self.exchanges.check(&target.exchange).await?;
        let publish = Publish {
            exchange: target.exchange.clone(),
            routing_key: target.routing_key.clone(),
            message: Message {
                body,
                ..Default::default()
            },
            mandatory: target.mandatory,
            ..Default::default()
        };
        let pass = self.gate.enter()?;
        let pending = publisher.republish(publish, properties, pass).await?;
        pending
            .await
            .unwrap_or(Err(Error::ShuttingDown))
            .map(|_| ())
    }

    /// Puts a due message into the dead-letter queue, confirmed.
    async fn dead_letter(
        &self,
        body: Bytes,
        properties: &BasicProperties,
        reason: &str,
        detail: &str,
    ) -> Result<usize, Error> {
        let properties = due::dead_lettered(properties, reason, detail);
        let started = Instant::now();
        self.retrier
            .publish(DEAD_LETTER_QUEUE, body, properties)
            .await?;
        debug!(elapsed = ?started.elapsed(), reason, "due message dead-lettered");
        Ok(scheduled::DEAD_LETTERED)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_grows_to_its_bound() {
        for failures in 1..40 {
            let d = backoff(failures);
            let base = Duration::from_millis(500 << (failures - 1).min(16)).min(MAX_BACKOFF);
            assert!(d >= base / 2 && d <= base, "{failures}: {d:?}");
        }
    }

    #[test]
    fn only_the_targets_failures_dead_letter() {
        let unroutable = Error::Unroutable {
            exchange: "x".into(),
            routing_key: "k".into(),
        };
        assert!(is_targets(&unroutable));
        assert!(is_targets(&Error::NotFound("gone".into())));
        assert!(!is_targets(&Error::unavailable("down")));
        assert!(!is_targets(&Error::Nacked));
        assert!(!is_targets(&Error::ShuttingDown));
        assert!(!is_targets(&Error::LimitReached("channels".into())));
    }
}
