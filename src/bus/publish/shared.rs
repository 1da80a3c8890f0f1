//! The shared publishing channels, used directly by the requests' own tasks.
//!
//! Unary publishes that name no publisher, replies, retries and replays have
//! no order to keep among themselves, so they skip the publisher task: the
//! request's task publishes on one of `amqp.shared_publishers` confirm-mode
//! channels and awaits the confirm itself (two thread hand-offs fewer per
//! message than going through a publisher task). When a channel fails under
//! a publish, the publish that caused it (the exchange named in the close
//! reason) fails; the others open a fresh channel and publish again, with
//! backoff and jitter while the broker is away, within
//! `publish.retry_budget`; so does a publish the broker nacked, on a fresh
//! channel (the nacking one is replaced). The calls in flight are the drain's: each holds
//! a pass from the bus's gate.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use tracing::debug;

use super::verdict::{retry_backoff, verdict, Context, Outcome};
use super::{Confirmed, Publish};
use crate::amqp::{self, codec, Channel, Slot};
use crate::error::Error;

/// The shared channels.
pub struct Shared {
    ctx: Context,
    slots: Vec<Slot<Channel>>,
    next: AtomicUsize,
}

impl Shared {
    pub(crate) fn new(ctx: Context, channels: usize) -> Self {
        Self {
            ctx,
            slots: (0..channels).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// Publishes a validated message and waits for its confirm. With
    /// `properties`, they are sent as they are (a republished delivery keeps
    /// its exact header types).
    pub async fn publish(
        &self,
        publish: &Publish,
        properties: Option<BasicProperties>,
        started: Instant,
    ) -> Result<Confirmed, Error> {
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let properties = properties.unwrap_or_else(|| codec::properties(&publish.message));
        let waiting = self.ctx.breaker.waiting();
        let result = self.attempt(slot, publish, properties, started).await;
        waiting.settled();
        self.ctx.record(started, publish, &result);
        result
    }

    async fn attempt(
        &self,
        slot: &Slot<Channel>,
        publish: &Publish,
        properties: BasicProperties,
        started: Instant,
    ) -> Result<Confirmed, Error> {
        let ctx = &self.ctx;
        let mut backoff = retry_backoff();
        let mut unexplained = 0;
        let options = BasicPublishOptions {
            mandatory: publish.mandatory,
            immediate: false,
        };
        loop {
            let within_budget = started.elapsed() < ctx.retry_budget;
            let (channel, generation) = match slot
                .get(async || ctx.pool.open_confirm_channel().await)
                .await
            {
                Ok(live) => live,
                Err(e) if e.is_transient() && within_budget => {
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep(
                        delay.min(ctx.retry_budget.saturating_sub(started.elapsed())),
                    )
                    .await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let sent = async {
                channel
                    .basic_publish(
                        publish.exchange.as_str().into(),
                        publish.routing_key.as_str().into(),
                        options,
                        &publish.message.body,
                        properties.clone(),
                    )
                    .await?
                    .await
            };
            let error = match tokio::time::timeout(ctx.confirm_timeout, sent).await {
                Ok(Ok(confirmation)) => {
                    let outcome = Outcome::from(confirmation);
                    if !matches!(outcome, Outcome::Nacked) || !within_budget {
                        return verdict(outcome, publish);
                    }
                    // The broker refused to store it on this channel (after a
                    // failover, a channel that published before the new
                    // leader was elected is nacked for a while). A fresh
                    // channel may well take it: replace this one and retry.
                    if let Some(nacking) = slot.invalidate(generation) {
                        debug!("replacing a shared channel the broker nacks on");
                        drop(nacking);
                    }
                    ctx.metrics.retries_total.inc();
                    let delay = backoff.next().unwrap_or(Duration::from_secs(1));
                    tokio::time::sleep(
                        delay.min(ctx.retry_budget.saturating_sub(started.elapsed())),
                    )
                    .await;
                    continue;
                }
                Ok(Err(error)) => error,
                Err(_) => {
                    // Its state is unknown: a fresh one for the next publish.
                    if let Some(stale) = slot.invalidate(generation) {
                        stale.close(ctx.pool.operation_timeout()).await;
                    }
                    return Err(Error::unavailable(format!(
                        "the broker did not confirm the message within {:?}",
                        ctx.confirm_timeout
                    )));
                }
            };
            drop(slot.invalidate(generation));
            if amqp::is_channel_error(&error) {
                // Closed by what was sent on it: this message, or another one.
                if let Some(e) = ctx.caught(&error, &publish.exchange, &mut unexplained) {
                    return Err(e);
                }
            } else if !within_budget {
                return Err(amqp::classify(error));
            } else {
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(1))).await;
            }
            ctx.metrics.retries_total.inc();
            debug!(%error, "shared publishing channel failed; publishing again");
        }
    }

    /// Closes the channels (after the drain: nothing is in flight on them).
    pub async fn close(&self, timeout: Duration) {
        for slot in &self.slots {
            if let Some(channel) = slot.take() {
                channel.close(timeout).await;
            }
        }
    }
}
