//! Dead letters that operators can work with: list without removing, replay
//! to the original queue (optionally corrected), discard.
//!
//! Messages are taken from the dead-letter queue with `basic.get` and held
//! unacked on a channel of this operation's own; whatever is not replayed or
//! discarded goes back when the channel closes. A replayed message is acked
//! (leaves the dead-letter queue) only after its publish to the original
//! queue was confirmed: a crash in between may duplicate, never lose.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::Value;

use super::delivery::{self, ATTEMPT_HEADER};
use super::retry::Retrier;
use crate::amqp::{self, codec, Pool};
use crate::error::Error;
use crate::message::{check_short, Headers, Message};

/// A dead-lettered message as operators see it.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The message's `message_id`.
    pub id: String,
    pub message: Message,
    /// Why it was dead-lettered (`rejected`, `expired`, `maxlen`, ...).
    pub reason: String,
    /// The queue it was dead-lettered from.
    pub original_queue: String,
    /// The deliveries it had.
    pub attempts: u32,
}

/// Which dead letters an operation takes.
#[derive(Debug, Clone)]
pub enum Selection {
    /// Those with these message ids.
    Ids(Vec<String>),
    /// All of them (up to the scan limit).
    All,
}

/// Corrections applied to replayed messages; `None` keeps the stored value.
#[derive(Debug, Clone, Default)]
pub struct Patch {
    pub body: Option<bytes::Bytes>,
    pub content_type: Option<String>,
    pub content_encoding: Option<String>,
    /// Replaces the application headers (Warren's own are kept).
    pub headers: Option<Headers>,
}

/// What an operation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Messages replayed or discarded.
    pub done: u32,
    /// Requested ids that were not found in the dead-letter queue.
    pub missing: Vec<String>,
}

/// The dead-letter operations.
pub struct DeadLetters {
    pub(super) pool: Arc<Pool>,
    pub(super) retrier: Arc<Retrier>,
    pub(super) timeout: Duration,
    pub(super) max_scan: usize,
}

fn text(headers: &serde_json::Map<String, Value>, key: &str) -> Option<String> {
    headers.get(key).and_then(Value::as_str).map(str::to_owned)
}

fn view(got: &BasicGetMessage) -> DeadLetter {
    let message = codec::message(got.delivery.data.clone().into(), &got.delivery.properties);
    let first_death = message
        .headers
        .get("x-death")
        .and_then(Value::as_array)
        .and_then(|deaths| deaths.first())
        .and_then(Value::as_object);
    let reason = first_death
        .and_then(|d| text(d, "reason"))
        .or_else(|| text(&message.headers, "x-first-death-reason"))
        .unwrap_or_default();
    let original_queue = first_death
        .and_then(|d| text(d, "queue"))
        .or_else(|| text(&message.headers, "x-first-death-queue"))
        .unwrap_or_default();
    DeadLetter {
        id: message.message_id.clone(),
        attempts: delivery::attempt(&message, false),
        message,
        reason,
        original_queue,
    }
}

/// Properties for a replay: the stored ones without the dead-lettering
/// history and attempt count, with the patch applied.
fn replay_properties(stored: &BasicProperties, patch: &Patch) -> BasicProperties {
    let mut headers = stored.headers().clone().unwrap_or_default().inner().clone();
    if let Some(new) = &patch.headers {
        let keep: Vec<_> = headers
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("x-warren-original-"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        headers = codec::to_table(new).inner().clone();
        headers.extend(keep);
    }
    headers.retain(|k, _| {
        let k = k.as_str();
        !(k == "x-death"
            || k.starts_with("x-first-death-")
            || k.starts_with("x-last-death-")
            || k == ATTEMPT_HEADER
            || k == "x-delivery-count")
    });
    let mut properties = stored.clone().with_headers(FieldTable::from(headers));
    if let Some(ct) = patch.content_type.as_deref() {
        properties = properties.with_content_type(ct.into());
    }
    if let Some(ce) = patch.content_encoding.as_deref() {
        properties = properties.with_content_encoding(ce.into());
    }
    properties
}

impl DeadLetters {
    async fn op<T>(
        &self,
        what: &str,
        f: impl std::future::Future<Output = lapin::Result<T>>,
    ) -> Result<T, Error> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map_err(|e| amqp::classify(&e)),
            Err(_) => Err(Error::unavailable(format!(
                "the broker did not answer {what} in time"
            ))),
        }
    }

    /// Takes up to `max` messages from `dlq`, unacked on `channel`.
    async fn take(
        &self,
        channel: &Channel,
        dlq: &str,
        max: usize,
    ) -> Result<Vec<BasicGetMessage>, Error> {
        let mut taken = Vec::new();
        while taken.len() < max {
            let get = channel.basic_get(dlq.into(), BasicGetOptions { no_ack: false });
            match self.op("basic.get", get).await {
                Ok(Some(message)) => taken.push(message),
                Ok(None) => break,
                Err(Error::NotFound(_)) => {
                    return Err(Error::NotFound(format!("queue {dlq:?} does not exist")))
                }
                Err(e) => return Err(e),
            }
        }
        Ok(taken)
    }

    async fn with_channel<T>(
        &self,
        dlq: &str,
        work: impl AsyncFnOnce(&Channel) -> Result<T, Error>,
    ) -> Result<T, Error> {
        check_short("dead-letter queue", dlq)?;
        if dlq.is_empty() {
            return Err(Error::InvalidArgument("name a dead-letter queue".into()));
        }
        let channel = self.pool.open_channel().await?;
        let result = work(&channel).await;
        // Closing the channel puts back whatever is still unacked.
        self.pool.close_channel(&channel).await;
        result
    }

    /// The first `limit` dead letters of `dlq`, left in place.
    pub async fn list(&self, dlq: &str, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        self.with_channel(dlq, async |channel| {
            Ok(self
                .take(channel, dlq, limit)
                .await?
                .iter()
                .map(view)
                .collect())
        })
        .await
    }

    fn selected(selection: &Selection, id: &str) -> bool {
        match selection {
            Selection::All => true,
            Selection::Ids(ids) => !id.is_empty() && ids.iter().any(|i| i == id),
        }
    }

    fn missing(selection: &Selection, found: &HashSet<String>) -> Vec<String> {
        match selection {
            Selection::All => Vec::new(),
            Selection::Ids(ids) => ids
                .iter()
                .filter(|id| !found.contains(*id))
                .cloned()
                .collect(),
        }
    }

    /// Sends the selected dead letters back to their original queues, each
    /// confirmed before it is removed from `dlq`.
    pub async fn replay(
        &self,
        dlq: &str,
        selection: &Selection,
        patch: &Patch,
    ) -> Result<Outcome, Error> {
        self.with_channel(dlq, async |channel| {
            let mut outcome = Outcome::default();
            let mut found = HashSet::new();
            for got in self.take(channel, dlq, self.max_scan).await? {
                let letter = view(&got);
                if !Self::selected(selection, &letter.id) {
                    continue;
                }
                if letter.original_queue.is_empty() {
                    return Err(Error::FailedPrecondition(format!(
                        "dead letter {:?} does not say which queue it came from (no x-death header)",
                        letter.id
                    )));
                }
                let properties = replay_properties(&got.delivery.properties, patch);
                let body = patch.body.clone().unwrap_or_else(|| got.delivery.data.clone().into());
                self.retrier.publish(&letter.original_queue, body, properties).await?;
                let ack = channel.basic_ack(got.delivery.delivery_tag, BasicAckOptions::default());
                self.op("basic.ack", ack).await?;
                found.insert(letter.id);
                outcome.done += 1;
            }
            outcome.missing = Self::missing(selection, &found);
            Ok(outcome)
        })
        .await
    }

    /// Removes the selected dead letters for good.
    pub async fn discard(&self, dlq: &str, selection: &Selection) -> Result<Outcome, Error> {
        self.with_channel(dlq, async |channel| {
            let mut outcome = Outcome::default();
            let mut found = HashSet::new();
            for got in self.take(channel, dlq, self.max_scan).await? {
                let letter = view(&got);
                if Self::selected(selection, &letter.id) {
                    let ack =
                        channel.basic_ack(got.delivery.delivery_tag, BasicAckOptions::default());
                    self.op("basic.ack", ack).await?;
                    found.insert(letter.id);
                    outcome.done += 1;
                }
            }
            outcome.missing = Self::missing(selection, &found);
            Ok(outcome)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{AMQPValue, FieldArray, LongString};

    #[test]
    fn replay_drops_the_history_and_applies_the_patch() {
        let mut death = FieldTable::default();
        death.insert("queue".into(), AMQPValue::LongString("orders".into()));
        let mut headers = FieldTable::default();
        headers.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::FieldTable(death)])),
        );
        headers.insert(
            "x-first-death-queue".into(),
            AMQPValue::LongString("orders".into()),
        );
        headers.insert(ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(5));
        headers.insert(
            "x-warren-original-exchange".into(),
            AMQPValue::LongString("shop".into()),
        );
        headers.insert(
            "tenant".into(),
            AMQPValue::LongString(LongString::from("a")),
        );
        let stored = BasicProperties::default()
            .with_headers(headers)
            .with_message_id("m".into());
        let kept = replay_properties(&stored, &Patch::default());
        let h = kept.headers().as_ref().unwrap().inner();
        assert!(h.contains_key("tenant") && h.contains_key("x-warren-original-exchange"));
        assert!(
            !h.contains_key("x-death")
                && !h.contains_key(ATTEMPT_HEADER)
                && !h.contains_key("x-first-death-queue")
        );
        let patch = Patch {
            headers: Some(
                serde_json::json!({"tenant": "b"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        let fixed = replay_properties(&stored, &patch);
        let h = fixed.headers().as_ref().unwrap().inner();
        assert_eq!(h["tenant"], AMQPValue::LongString("b".into()));
        assert!(
            h.contains_key("x-warren-original-exchange"),
            "Warren's own headers stay"
        );
        assert_eq!(
            fixed.content_type().as_ref().unwrap().as_str(),
            "text/plain"
        );
        assert_eq!(fixed.message_id().as_ref().unwrap().as_str(), "m");
    }
}
