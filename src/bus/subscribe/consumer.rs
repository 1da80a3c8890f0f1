//! One subscription: its own channel and consumer, owned by one task.
//!
//! The task pulls a delivery from the broker only when the client's stream
//! has room (so memory is bounded by the prefetch), remembers what is unacked,
//! and settles acks and nacks that arrive by delivery id (see `settle`).
//! When the connection is lost it consumes again once the broker is back;
//! meanwhile acks and nacks are answered at once (their deliveries went back
//! to the queue). Ending the task closes the channel, and the broker takes
//! back whatever was unacked.

use std::sync::Arc;

use bytes::Bytes;
use futures::{FutureExt, StreamExt};
use lapin::options::{BasicCancelOptions, BasicNackOptions};
use lapin::Consumer;
use serde_json::Value;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::delivery::{self, Delivery, DeliveryId, Outgoing};
use super::open::{Opened, Opener};
use super::settle::{Held, Settle, State};
use crate::amqp::{self, codec, Channel, Pool};
use crate::error::Error;
use crate::message::RESERVED_PREFIX;
use crate::metrics::Metrics;

/// What a subscription task needs.
pub(crate) struct Context {
    pub pool: Arc<Pool>,
    pub metrics: Metrics,
    pub retrier: Arc<crate::bus::retry::Retrier>,
}

pub(crate) struct Subscriber {
    pub id: u64,
    /// The secret part of its delivery ids (never logged).
    pub key: u128,
    /// Opens the consumer again after the connection is lost.
    pub opener: Opener,
    pub queue: String,
    pub channel: Channel,
    /// None while the queue is paused.
    pub consumer: Option<Consumer>,
    /// The queue's paused flag (None for a temporary queue).
    pub paused: Option<watch::Receiver<bool>>,
    pub auto_ack: bool,
    pub ctx: Context,
    pub settle: mpsc::Receiver<Settle>,
    pub settle_tx: mpsc::Sender<Settle>,
    pub out: mpsc::Sender<Outgoing>,
    pub cancel: CancellationToken,
}

impl Subscriber {
    pub async fn run(mut self) {
        let mut state = State {
            deadlines: super::Deadlines::new(self.opener.request.ack_deadline_ms),
            ..Default::default()
        };
        let mut permit = None;
        let end: Option<Error> = loop {
            // Some(reason) when the channel is lost and must be resumed.
            let lost: Option<String> = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break None,
                Some(request) = self.settle.recv() => {
                    let mut answers = Vec::new();
                    self.handle(&mut state, request, &mut answers);
                    while let Ok(request) = self.settle.try_recv() {
                        self.handle(&mut state, request, &mut answers);
                    }
                    let flushed = self.flush(&mut state).await;
                    super::settle::answer(answers, &flushed);
                    flushed.err().map(|e| e.to_string())
                }
                reserved = self.out.clone().reserve_owned(), if permit.is_none() => match reserved {
                    Ok(p) => {
                        permit = Some(p);
                        None
                    }
                    Err(_) => break None, // the client went away
                },
                tag = state.deadlines.expired(), if state.deadlines.enabled() => {
                    if state.held.remove(&tag).is_some() {
                        // Past its deadline: back to the queue, alone.
                        self.ctx.metrics.deadline_expired_total.inc();
                        state.to_nack.push((tag, true));
                    }
                    self.flush(&mut state).await.err().map(|e| e.to_string())
                }
                paused = changed(&mut self.paused) => {
                    self.pause_or_resume(paused).await.err().map(|e| e.to_string())
                }
                next = next_of(&mut self.consumer), if permit.is_some() && self.consumer.is_some() => match next {
                    Some(Ok(d)) => {
                        let (tag, delivery) = self.accept(&mut state, d);
                        let acked = if self.auto_ack {
                            state.to_ack.push(tag);
                            self.flush(&mut state).await.err().map(|e| e.to_string())
                        } else {
                            None
                        };
                        self.ctx.metrics.deliveries_total.inc();
                        if let Some(p) = permit.take() {
                            p.send(Ok(Box::new(delivery)));
                        }
                        acked
                    }
                    Some(Err(e)) if !amqp::is_channel_error(&e) => Some(e.to_string()),
                    Some(Err(e)) => break Some(amqp::classify(e)),
                    None if !self.channel.is_open() => Some("the channel closed".into()),
                    None => break Some(Error::unavailable(format!("the broker cancelled the consumer of queue {:?}", self.queue))),
                },
            };
            if let Some(why) = lost {
                match self.resume(&mut state, &why).await {
                    Ok(true) => {}
                    Ok(false) => break None,
                    Err(e) => break Some(e),
                }
            }
        };
        if let Some(error) = end {
            warn!(subscription = self.id, queue = %self.queue, %error, "subscription ended by the broker");
            // The client must see the error, not a clean end: through the
            // slot already held, or the next one it frees.
            match permit.take() {
                Some(p) => {
                    p.send(Err(error));
                }
                None => tokio::select! {
                    reserved = self.out.reserve() => if let Ok(p) = reserved { p.send(Err(error)) },
                    _ = self.cancel.cancelled() => {}
                },
            }
        }
        let unacked = state.held.len();
        // Closing the channel hands every unacked delivery back at once.
        self.channel
            .clone()
            .close(self.ctx.pool.operation_timeout())
            .await;
        debug!(subscription = self.id, unacked, "subscription closed");
    }

    /// The connection was lost: what the client held is back in the queue
    /// (its ids now answer NOT_FOUND, at once, while this waits); consume
    /// again once the broker is back. False when the subscription ended
    /// meanwhile; an error when the broker is back but refuses the
    /// subscription (its queue is gone, say).
    async fn resume(&mut self, state: &mut State, why: &str) -> Result<bool, Error> {
        warn!(subscription = self.id, queue = %self.queue, reason = why, "subscription lost its channel; resuming when the broker is back");
        state.reset();
        let old = self.channel.clone();
        old.close(self.ctx.pool.operation_timeout()).await;
        self.consumer = None;
        let mut backoff = crate::amqp::reconnect_backoff();
        let paused = self.paused.as_ref().is_some_and(|p| *p.borrow());
        let attempt = async {
            loop {
                match self.opener.open(paused).await {
                    Ok(opened) => return Ok(opened),
                    Err(e) if !e.is_retryable() => return Err(e),
                    Err(e) => {
                        debug!(subscription = self.id, error = %e, "cannot resume the subscription yet")
                    }
                }
                let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(5));
                tokio::time::sleep(delay).await;
            }
        };
        tokio::pin!(attempt);
        let opened: Result<Opened, Error> = loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => return Ok(false),
                _ = self.out.closed() => return Ok(false),
                Some(request) = self.settle.recv() => super::settle::refuse(request),
                opened = &mut attempt => break opened,
            }
        };
        let Opened {
            channel,
            queue,
            consumer,
        } = opened?;
        self.channel = channel;
        self.queue = queue;
        self.consumer = consumer;
        info!(subscription = self.id, queue = %self.queue, "subscription resumed");
        Ok(true)
    }

    /// Stops or starts consuming as the queue is paused or resumed. Pausing
    /// cancels the consumer and hands back what the broker had sent ahead
    /// (not yet given to the client); what the client holds stays ackable.
    async fn pause_or_resume(&mut self, paused: bool) -> Result<(), Error> {
        let pool = &self.ctx.pool;
        match (paused, self.consumer.take()) {
            (true, Some(mut consumer)) => {
                let cancel = self
                    .channel
                    .basic_cancel(consumer.tag(), BasicCancelOptions::default());
                pool.op("basic.cancel", cancel).await?;
                // Everything sent before the cancel-ok is buffered by now.
                while let Some(Some(next)) = consumer.next().now_or_never() {
                    let Ok(d) = next else { break };
                    let requeue = BasicNackOptions {
                        requeue: true,
                        multiple: false,
                    };
                    self.channel
                        .basic_nack(d.delivery_tag, requeue)
                        .await
                        .map_err(amqp::classify)?;
                }
                info!(subscription = self.id, queue = %self.queue, "subscription paused");
            }
            (false, None) => {
                self.consumer = Some(self.opener.consume(&self.channel, &self.queue).await?);
                info!(subscription = self.id, queue = %self.queue, "subscription resumed after a pause");
            }
            (_, consumer) => self.consumer = consumer,
        }
        Ok(())
    }

    fn accept(&self, state: &mut State, d: lapin::message::Delivery) -> (u64, Delivery) {
        let body = Bytes::from(d.data);
        let mut message = codec::message(body.clone(), &d.properties);
        let attempt = delivery::attempt(&message, d.redelivered);
        let original = |name: &str, actual: &str| match message.headers.get(name) {
            Some(Value::String(s)) => s.clone(),
            _ => actual.to_owned(),
        };
        let exchange = original(delivery::ORIGINAL_EXCHANGE_HEADER, d.exchange.as_str());
        let routing_key = original(
            delivery::ORIGINAL_ROUTING_KEY_HEADER,
            d.routing_key.as_str(),
        );
        // Warren's bookkeeping is in `attempt`, `exchange` and `routing_key`;
        // the client sees the headers its publisher sent.
        message
            .headers
            .retain(|k, _| !k.starts_with(RESERVED_PREFIX));
        let id = DeliveryId {
            subscription: self.key,
            generation: state.generation,
            tag: d.delivery_tag,
        };
        if !self.auto_ack {
            state.deadlines.start(d.delivery_tag);
            state.held.insert(
                d.delivery_tag,
                Held {
                    body,
                    properties: d.properties,
                    exchange: exchange.clone(),
                    routing_key: routing_key.clone(),
                    attempt,
                },
            );
        }
        let delivery = Delivery {
            id: id.to_string(),
            reply_to: message.reply_to.clone(),
            message,
            exchange,
            routing_key,
            redelivered: d.redelivered,
            attempt,
            queue: self.queue.clone(),
            ordering_key: String::new(),
        };
        (d.delivery_tag, delivery)
    }
}

/// The next delivery of a consumer (never called without one).
async fn next_of(
    consumer: &mut Option<Consumer>,
) -> Option<Result<lapin::message::Delivery, lapin::Error>> {
    match consumer {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// The paused flag's next value; pending forever without one.
async fn changed(paused: &mut Option<watch::Receiver<bool>>) -> bool {
    if let Some(p) = paused {
        if p.changed().await.is_ok() {
            return *p.borrow_and_update();
        }
    }
    std::future::pending().await
}
