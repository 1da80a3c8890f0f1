//! What a subscription holds, and how acks and nacks reach the broker.
//!
//! Acks and nacks arrive by delivery id, all-or-nothing per stream; they are
//! answered once they were sent to the broker. Acks that cover a contiguous
//! run go to the broker as one `multiple` ack. A nack with requeue moves a
//! copy into the queue's delay queue (confirmed) before the original is
//! acked.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{AMQPValue, LongString};
use lapin::BasicProperties;
use tokio::sync::oneshot;
use tracing::warn;

use super::consumer::Subscriber;
use super::delivery::{self, DeliveryId};
use crate::amqp;
use crate::error::Error;

/// What to do with settled deliveries.
#[derive(Debug, Clone, Copy)]
pub enum Action {
    /// Processed: remove from the queue.
    Ack,
    /// Rejected for good: dead-letter (or drop, without a dead-letter exchange).
    DeadLetter,
    /// Try again later: after `delay_ms`, or the policy's backoff when 0.
    Retry { delay_ms: u32 },
    /// Still working on it: the ack deadline starts again (nothing else).
    Extend,
}

/// A request to the subscription task.
pub(crate) enum Settle {
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
pub(crate) struct Held {
    pub body: Bytes,
    pub properties: BasicProperties,
    pub exchange: String,
    pub routing_key: String,
    pub attempt: u32,
}

/// What a subscription holds now.
#[derive(Default)]
pub(crate) struct State {
    pub generation: u64,
    pub held: BTreeMap<u64, Held>,
    /// Tags the client settled for a retry whose republish is not confirmed yet.
    pub retrying: BTreeSet<u64>,
    pub to_ack: Vec<u64>,
    /// Nacks to send before the acks (tag, requeue).
    pub to_nack: Vec<(u64, bool)>,
    /// Held deliveries' ack deadlines (with `ack_deadline_ms`).
    pub deadlines: super::deadline::Deadlines,
}

impl State {
    /// Forgets everything (the channel is gone, and with it what it held).
    pub fn reset(&mut self) {
        self.generation += 1;
        self.held.clear();
        self.retrying.clear();
        self.to_ack.clear();
        self.to_nack.clear();
        self.deadlines.clear();
    }
}

/// A client's settlement, answered once the broker has it.
pub(crate) type Answer = (oneshot::Sender<Result<u32, Error>>, Result<u32, Error>);

/// Answers the settlements of one flush: as decided, unless the flush failed.
pub(crate) fn answer(answers: Vec<Answer>, flushed: &Result<(), Error>) {
    for (reply, result) in answers {
        let result = match (result, flushed) {
            (Ok(_), Err(e)) => Err(Error::unavailable(format!(
                "the broker did not take the settlement ({e}); the deliveries are back in the queue"
            ))),
            (result, _) => result,
        };
        let _ = reply.send(result);
    }
}

/// Answers a request that arrives while the subscription has no channel.
pub(crate) fn refuse(request: Settle) {
    let gone = || {
        Error::NotFound(
            "the subscription lost its channel; these deliveries are back in the queue".into(),
        )
    };
    match request {
        Settle::Client { reply, .. } => {
            let _ = reply.send(Err(gone()));
        }
        Settle::Peek { reply, .. } => {
            let _ = reply.send(Err(gone()));
        }
        Settle::Republished { .. } => {}
    }
}

impl Subscriber {
    pub(crate) fn handle(&self, state: &mut State, request: Settle, answers: &mut Vec<Answer>) {
        match request {
            Settle::Client { ids, action, reply } => {
                answers.push((reply, self.settle_client(state, ids, action)));
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
        if matches!(action, Action::Extend) {
            for id in &ids {
                if id.generation != state.generation || !state.held.contains_key(&id.tag) {
                    return Err(Error::NotFound(format!(
                        "delivery {id} is unknown or already settled"
                    )));
                }
            }
            for id in &ids {
                state.deadlines.extend(id.tag);
            }
            return Ok(ids.len() as u32);
        }
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
            state.deadlines.remove(*tag);
            match action {
                Action::Extend => unreachable!("answered above"),
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
                    } else {
                        metrics.retries_total.inc();
                        // A server-named temporary queue has no delay queue (it
                        // vanishes with its connection): the copy goes straight
                        // back to it, still counted, so max_attempts holds there too.
                        let delay = match delay_ms {
                            _ if self.queue.starts_with("amq.") => None,
                            0 => Some(crate::bus::retry::backoff(
                                policy,
                                held.attempt,
                                &mut rand::rng(),
                            )),
                            ms => Some(std::time::Duration::from_millis(u64::from(ms))),
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
    fn republish(&self, generation: u64, tag: u64, held: Held, delay: Option<std::time::Duration>) {
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
            let result = match delay {
                Some(delay) => retrier.delay(&queue, delay, held.body, properties).await,
                None => retrier.publish(&queue, held.body, properties).await,
            };
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
    pub(crate) async fn flush(&self, state: &mut State) -> Result<(), Error> {
        let limit = self.ctx.pool.operation_timeout();
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
                .map_err(amqp::classify)?;
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
        result.await.map_err(amqp::classify)
    }
}

fn peek(state: &State, id: DeliveryId) -> Result<(String, String), Error> {
    let held = state
        .held
        .get(&id.tag)
        .filter(|_| id.generation == state.generation)
        .ok_or_else(|| Error::NotFound(format!("delivery {id} is unknown or already settled")))?;
    reply_target(&id, &held.properties)
}

/// Where the reply to delivery `id` goes: its reply_to and correlation_id
/// (FAILED_PRECONDITION without a reply_to).
pub(crate) fn reply_target(
    id: &DeliveryId,
    properties: &BasicProperties,
) -> Result<(String, String), Error> {
    let text = |s: &Option<lapin::types::ShortString>| {
        s.as_ref()
            .map(|s| s.as_str().to_owned())
            .unwrap_or_default()
    };
    let reply_to = text(properties.reply_to());
    if reply_to.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "delivery {id} has no reply_to: there is nobody to reply to"
        )));
    }
    Ok((reply_to, text(properties.correlation_id())))
}
