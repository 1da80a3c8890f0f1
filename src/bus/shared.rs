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
//! `publish.retry_budget`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel};
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::publisher::{retry_backoff, verdict, Context};
use super::{Confirmed, Publish};
use crate::amqp::{self, codec};
use crate::error::Error;

/// One shared channel: the live one and its generation, reopened on demand.
#[derive(Default)]
struct Slot {
    current: Mutex<Option<(Channel, u64)>>,
    reopen: tokio::sync::Mutex<()>,
    generation: AtomicU64,
}

/// The shared channels.
pub struct Shared {
    ctx: Context,
    slots: Vec<Slot>,
    next: AtomicUsize,
    in_flight: TaskTracker,
}

impl Slot {
    fn live(&self) -> Option<(Channel, u64)> {
        let current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        current
            .as_ref()
            .filter(|(c, _)| c.status().connected())
            .cloned()
    }

    async fn channel(&self, ctx: &Context) -> Result<(Channel, u64), Error> {
        if let Some(live) = self.live() {
            return Ok(live);
        }
        let _one_at_a_time = self.reopen.lock().await;
        if let Some(live) = self.live() {
            return Ok(live); // reopened by whoever held the lock before us
        }
        let channel = ctx.pool.open_channel().await?;
        let select = channel.confirm_select(ConfirmSelectOptions::default());
        let selected = match tokio::time::timeout(ctx.confirm_timeout, select).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(amqp::classify(&e)),
            Err(_) => Err(Error::unavailable(
                "the broker did not enable confirms in time",
            )),
        };
        if let Err(e) = selected {
            ctx.pool.close_channel(&channel).await;
            return Err(e);
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let old = self
            .current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .replace((channel.clone(), generation));
        if let Some((old, _)) = old {
            ctx.pool.close_channel(&old).await;
        }
        Ok((channel, generation))
    }

    /// Drops the channel of `generation` if it is still the current one.
    async fn invalidate(&self, generation: u64, ctx: &Context) {
        let old = {
            let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
            match current.as_ref() {
                Some((_, g)) if *g == generation => current.take(),
                _ => None,
            }
        };
        if let Some((channel, _)) = old {
            ctx.pool.close_channel(&channel).await;
        }
    }
}

impl Shared {
    pub(super) fn new(ctx: Context, channels: usize) -> Self {
        Self {
            ctx,
            slots: (0..channels).map(|_| Slot::default()).collect(),
            next: AtomicUsize::new(0),
            in_flight: TaskTracker::new(),
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
        let _counted = self.in_flight.token();
        let slot = &self.slots[self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len()];
        let properties = properties.unwrap_or_else(|| codec::properties(&publish.message));
        let result = self.attempt(slot, publish, properties, started).await;
        self.ctx.record(started, &result);
        result
    }

    async fn attempt(
        &self,
        slot: &Slot,
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
            let (channel, generation) = match slot.channel(ctx).await {
                Ok(live) => live,
                Err(e) if e.is_retryable() && within_budget => {
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
                Ok(Ok(confirmation)) => return verdict(confirmation.into(), publish),
                Ok(Err(error)) => error,
                Err(_) => {
                    slot.invalidate(generation, ctx).await;
                    return Err(Error::unavailable(format!(
                        "the broker did not confirm the message within {:?}",
                        ctx.confirm_timeout
                    )));
                }
            };
            slot.invalidate(generation, ctx).await;
            if amqp::is_channel_error(&error) {
                // Closed by what was sent on it: this message, or another one.
                if let Some(e) = ctx.caught(&error, &publish.exchange, &mut unexplained) {
                    return Err(e);
                }
            } else if !within_budget {
                return Err(amqp::classify(&error));
            } else {
                tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(1))).await;
            }
            ctx.metrics.retries_total.inc();
            debug!(%error, "shared publishing channel failed; publishing again");
        }
    }

    /// Waits for the publishes in flight, then closes the channels.
    pub async fn close(&self) {
        self.in_flight.close();
        self.in_flight.wait().await;
        for slot in &self.slots {
            let current = slot
                .current
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            if let Some((channel, _)) = current {
                self.ctx.pool.close_channel(&channel).await;
            }
        }
    }
}
