//! One subscription: its own channel and consumer, owned by one task.
//!
//! The task pulls a delivery from the broker only when the client's stream
//! has room (so memory is bounded by the prefetch), remembers what is unacked,
//! and settles acks and nacks that arrive by delivery id: acks that cover a
//! contiguous run go to the broker as one `multiple` ack. Ending the task
//! closes the channel, and the broker takes back whatever was unacked.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, LongString};
use lapin::{BasicProperties, Channel, Consumer};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::consume::{Opened, Opener};
use super::delivery::{self, Delivery, DeliveryId};
use crate::amqp::{self, codec, Pool};
use crate::error::Error;
use crate::metrics::Metrics;

/// What to do with settled deliveries.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Processed: remove from the queue.
    Ack,
    /// Rejected for good: dead-letter (or drop, without a dead-letter exchange).
    DeadLetter,
    /// Try again later: after `delay_ms`, or the policy's backoff when 0.
    Retry { delay_ms: u32 },
}

/// A request to the subscription task.
pub(super) enum Settle {
    /// From a client, by delivery id.
    Client {
        ids: Vec<DeliveryId>,
        action: Action,
        reply: oneshot::Sender<Result<u32, Error>>,
    },
    /// Where to send the reply to a delivery (reply_to, correlation_id).
    Peek {
        id: DeliveryId,
        reply: oneshot::Sender<Result<(String, String), Error>>,
    },
    /// A retry was republished (or failed to be): settle the original.
    Republished { generation: u64, tag: u64, ok: bool },
}

/// A delivery the client holds.
struct Held {
    body: Bytes,
    properties: BasicProperties,
    exchange: String,
    routing_key: String,
    attempt: u32,
}

/// What a subscription task needs.
pub(super) struct Context {
    pub pool: Arc<Pool>,
    pub metrics: Metrics,
    pub instance: u64,
    pub retrier: Arc<super::retry::Retrier>,
}

pub(super) struct Subscriber {
    pub id: u64,
    /// Opens the consumer again after the connection is lost.
    pub opener: Opener,
    pub queue: String,
    pub channel: Channel,
    pub consumer: Consumer,
    pub auto_ack: bool,
    pub ctx: Context,
    pub settle: mpsc::Receiver<Settle>,
    pub settle_tx: mpsc::Sender<Settle>,
    pub out: mpsc::Sender<Result<Delivery, Error>>,
    pub cancel: CancellationToken,
}

struct State {
    generation: u64,
    held: BTreeMap<u64, Held>,
    /// Tags the client settled for a retry whose republish is not confirmed yet.
    retrying: BTreeSet<u64>,
    to_ack: Vec<u64>,
    /// Nacks to send before the acks (tag, requeue).
    to_nack: Vec<(u64, bool)>,
}

impl Subscriber {
    pub async fn run(mut self) {
        let mut state = State {
            generation: 0,
            held: BTreeMap::new(),
            retrying: BTreeSet::new(),
            to_ack: Vec::new(),
            to_nack: Vec::new(),
        };
        let mut permit = None;
        let end: Option<Error> = loop {
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break None,
                Some(request) = self.settle.recv() => {
                    self.handle(&mut state, request);
                    while let Ok(request) = self.settle.try_recv() {
                        self.handle(&mut state, request);
                    }
                    if let Err(e) = self.flush(&mut state).await {
                        // The channel's state is unknown: start afresh.
                        match self.resume(&mut state, &e.to_string()).await {
                            Ok(true) => {}
                            Ok(false) => break None,
                            Err(e) => break Some(e),
                        }
                    }
                }
                reserved = self.out.clone().reserve_owned(), if permit.is_none() => match reserved {
                    Ok(p) => permit = Some(p),
                    Err(_) => break None, // the client went away
                },
                next = self.consumer.next(), if permit.is_some() => match next {
                    Some(Ok(d)) => {
                        let (tag, delivery) = self.accept(&mut state, d);
                        if self.auto_ack {
                            state.to_ack.push(tag);
                            if let Err(e) = self.flush(&mut state).await {
                                match self.resume(&mut state, &e.to_string()).await {
                                    Ok(true) => {}
                                    Ok(false) => break None,
                                    Err(e) => break Some(e),
                                }
                            }
                        }
                        self.ctx.metrics.deliveries_total.inc();
                        permit.take().expect("checked").send(Ok(delivery));
                    }
                    Some(Err(e)) if !amqp::is_channel_error(&e) => {
                        match self.resume(&mut state, &e.to_string()).await {
                            Ok(true) => {}
                            Ok(false) => break None,
                            Err(e) => break Some(e),
                        }
                    }
                    Some(Err(e)) => break Some(amqp::classify(&e)),
                    None if !self.channel.status().connected() => {
                        match self.resume(&mut state, "the channel closed").await {
                            Ok(true) => {}
                            Ok(false) => break None,
                            Err(e) => break Some(e),
                        }
                    }
                    None => break Some(Error::unavailable(format!("the broker cancelled the consumer of queue {:?}", self.queue))),
                },
            }
        };
        if let Some(error) = end {
            warn!(subscription = self.id, queue = %self.queue, %error, "subscription ended by the broker");
            let _ = self.out.try_send(Err(error));
        }
        // Closing the channel hands every unacked delivery back at once.
        self.ctx.pool.close_channel(&self.channel).await;
        debug!(
            subscription = self.id,
            unacked = state.held.len(),
            "subscription closed"
        );
    }

    /// The connection was lost: what the client held is back in the queue
    /// (its ids now answer NOT_FOUND); consume again once the broker is back.
    /// False when the subscription ended meanwhile; an error when the broker
    /// is back but refuses the subscription (its queue is gone, say).
    async fn resume(&mut self, state: &mut State, why: &str) -> Result<bool, Error> {
        warn!(subscription = self.id, queue = %self.queue, reason = why, "subscription lost its channel; resuming when the broker is back");
        state.generation += 1;
        state.held.clear();
        state.retrying.clear();
        state.to_ack.clear();
        state.to_nack.clear();
        self.ctx.pool.close_channel(&self.channel).await;
        let mut backoff = crate::amqp::reconnect_backoff();
        loop {
            match self.opener.open().await {
                Ok(Opened {
                    channel,
                    queue,
                    consumer,
                }) => {
                    self.channel = channel;
                    self.queue = queue;
                    self.consumer = consumer;
                    tracing::info!(subscription = self.id, queue = %self.queue, "subscription resumed");
                    return Ok(true);
                }
                Err(e) if !e.is_retryable() => return Err(e),
                Err(e) => {
                    debug!(subscription = self.id, error = %e, "cannot resume the subscription yet")
                }
            }
            let delay = backoff.next().unwrap_or(std::time::Duration::from_secs(5));
            tokio::select! {
                _ = self.cancel.cancelled() => return Ok(false),
                _ = self.out.closed() => return Ok(false),
                _ = tokio::time::sleep(delay) => {}
            }
        }
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
        message.headers.retain(|k, _| !k.starts_with("x-warren-"));
        let id = DeliveryId {
            instance: self.ctx.instance,
            subscription: self.id,
            generation: state.generation,
            tag: d.delivery_tag,
        };
        if !self.auto_ack {
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
        };
        (d.delivery_tag, delivery)
    }

    fn handle(&self, state: &mut State, request: Settle) {
        match request {
            Settle::Client { ids, action, reply } => {
                let _ = reply.send(self.settle_client(state, ids, action));
            }
            Settle::Peek { id, reply } => {
                let _ = reply.send(peek(state, id));
            }
            Settle::Republished {
                generation,
                tag,
                ok,
            } => {
                if generation != state.generation || !state.retrying.remove(&tag) {
                    return;
                }
                if ok {
                    state.to_ack.push(tag);
                } else {
                    // The copy was not confirmed: let the broker redeliver the original.
                    state.to_nack.push((tag, true));
                }
            }
        }
    }

    /// All-or-nothing: every id must be unsettled on this stream.
    fn settle_client(
        &self,
        state: &mut State,
        ids: Vec<DeliveryId>,
        action: Action,
    ) -> Result<u32, Error> {
        let mut tags = BTreeSet::new();
        for id in &ids {
            if id.generation != state.generation || !state.held.contains_key(&id.tag) {
                return Err(Error::NotFound(format!(
                    "delivery {id} is unknown or already settled"
                )));
            }
            tags.insert(id.tag);
        }
        let metrics = &self.ctx.metrics;
        for tag in &tags {
            let held = state.held.remove(tag).expect("checked above");
            match action {
                Action::Ack => {
                    metrics.acks_total.inc();
                    state.to_ack.push(*tag);
                }
                Action::DeadLetter => {
                    metrics.nacks_dropped.inc();
                    metrics.dead_lettered_total.inc();
                    state.to_nack.push((*tag, false));
                }
                Action::Retry { delay_ms } => {
                    metrics.nacks_requeued.inc();
                    let policy = self.ctx.retrier.policy(&self.queue);
                    if held.attempt >= policy.max_attempts {
                        // Used up: dead-letter instead of requeueing.
                        tracing::info!(queue = %self.queue, attempts = held.attempt, "dead-lettering a message that used all its attempts");
                        metrics.dead_lettered_total.inc();
                        state.to_nack.push((*tag, false));
                    } else if self.queue.starts_with("amq.") {
                        // A server-named temporary queue has no delay queue
                        // (it vanishes with its connection): the broker requeues.
                        metrics.retries_total.inc();
                        state.to_nack.push((*tag, true));
                    } else {
                        metrics.retries_total.inc();
                        let delay = match delay_ms {
                            0 => super::retry::backoff(policy, held.attempt, &mut rand::rng()),
                            ms => std::time::Duration::from_millis(u64::from(ms)),
                        };
                        state.retrying.insert(*tag);
                        self.republish(state.generation, *tag, held, delay);
                    }
                }
            }
        }
        Ok(tags.len() as u32)
    }

    /// Puts a copy with the next attempt count into the queue's delay queue,
    /// confirmed, before the original is acked: a crash in between
    /// duplicates, never loses.
    fn republish(&self, generation: u64, tag: u64, held: Held, delay: std::time::Duration) {
        let mut headers = held.properties.headers().clone().unwrap_or_default();
        let attempt = i64::from(held.attempt) + 1;
        headers.insert(
            delivery::ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(attempt),
        );
        for (name, value) in [
            (delivery::ORIGINAL_EXCHANGE_HEADER, &held.exchange),
            (delivery::ORIGINAL_ROUTING_KEY_HEADER, &held.routing_key),
        ] {
            headers.insert(
                name.into(),
                AMQPValue::LongString(LongString::from(value.as_bytes())),
            );
        }
        let mut inner = headers.inner().clone();
        inner.remove("x-delivery-count");
        let properties = held.properties.with_headers(inner.into());
        let (retrier, settle, queue) = (
            self.ctx.retrier.clone(),
            self.settle_tx.clone(),
            self.queue.clone(),
        );
        tokio::spawn(async move {
            let result = retrier.delay(&queue, delay, held.body, properties).await;
            if let Err(e) = &result {
                warn!(%queue, error = %e, "could not move a message to its delay queue; the broker redelivers it");
            }
            let ok = result.is_ok();
            let _ = settle
                .send(Settle::Republished {
                    generation,
                    tag,
                    ok,
                })
                .await;
        });
    }

    /// Sends pending acks: one `multiple` ack for the run below every tag
    /// still outstanding, single acks for the rest.
    async fn flush(&self, state: &mut State) -> Result<(), Error> {
        let limit = self.opener.timeout;
        match tokio::time::timeout(limit, self.send_settlements(state)).await {
            Ok(result) => result,
            Err(_) => Err(Error::unavailable("the broker did not take acks in time")),
        }
    }

    async fn send_settlements(&self, state: &mut State) -> Result<(), Error> {
        // Nacks first: a later `multiple` ack then cannot cover their tags.
        for (tag, requeue) in std::mem::take(&mut state.to_nack) {
            let options = BasicNackOptions {
                requeue,
                multiple: false,
            };
            self.channel
                .basic_nack(tag, options)
                .await
                .map_err(|e| amqp::classify(&e))?;
        }
        if state.to_ack.is_empty() {
            return Ok(());
        }
        let mut tags = std::mem::take(&mut state.to_ack);
        tags.sort_unstable();
        let outstanding = [state.held.keys().next(), state.retrying.iter().next()]
            .into_iter()
            .flatten()
            .min()
            .copied()
            .unwrap_or(u64::MAX);
        let run = tags.partition_point(|&t| t < outstanding);
        let ack = |tag, multiple| self.channel.basic_ack(tag, BasicAckOptions { multiple });
        let result = async {
            if run > 1 {
                ack(tags[run - 1], true).await?;
            } else if run == 1 {
                ack(tags[0], false).await?;
            }
            for &tag in &tags[run..] {
                ack(tag, false).await?;
            }
            Ok::<_, lapin::Error>(())
        };
        result.await.map_err(|e| amqp::classify(&e))
    }
}

fn peek(state: &State, id: DeliveryId) -> Result<(String, String), Error> {
    let held = state
        .held
        .get(&id.tag)
        .filter(|_| id.generation == state.generation)
        .ok_or_else(|| Error::NotFound(format!("delivery {id} is unknown or already settled")))?;
    let reply_to = held
        .properties
        .reply_to()
        .as_ref()
        .map(|r| r.as_str().to_owned())
        .unwrap_or_default();
    if reply_to.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "delivery {id} has no reply_to: there is nobody to reply to"
        )));
    }
    let correlation_id = held
        .properties
        .correlation_id()
        .as_ref()
        .map(|c| c.as_str().to_owned())
        .unwrap_or_default();
    Ok((reply_to, correlation_id))
}
