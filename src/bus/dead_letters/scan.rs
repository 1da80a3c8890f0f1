//! The operations on a dead-letter queue, one message at a time.

use std::collections::HashSet;
use std::sync::Arc;

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::FieldTable;
use lapin::BasicProperties;
use serde_json::Value;

use super::{DeadLetter, Outcome, Patch, Selection};
use crate::amqp::probe::{self, Kind};
use crate::amqp::{codec, Channel, Pool};
use crate::bus::retry::Retrier;
use crate::bus::subscribe::{attempt, ATTEMPT_HEADER};
use crate::error::Error;
use crate::message::check_short;

/// The dead-letter operations.
pub struct DeadLetters {
    pub(crate) pool: Arc<Pool>,
    /// For existence checks that could cost a connection.
    pub(crate) isolated: Arc<Pool>,
    pub(crate) retrier: Arc<Retrier>,
    pub(crate) max_scan: usize,
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
    // Warren's own reason first: the broker's history may predate it.
    let reason = text(&message.headers, super::REASON_HEADER)
        .or_else(|| first_death.and_then(|d| text(d, "reason")))
        .or_else(|| text(&message.headers, "x-first-death-reason"))
        .unwrap_or_default();
    let original_queue = text(&message.headers, super::QUEUE_HEADER)
        .or_else(|| first_death.and_then(|d| text(d, "queue")))
        .or_else(|| text(&message.headers, "x-first-death-queue"))
        .unwrap_or_default();
    DeadLetter {
        id: message.message_id.clone(),
        attempts: attempt(&message, false),
        message,
        reason,
        original_queue,
    }
}

/// Properties for a replay: the stored ones without the dead-lettering
/// history and attempt count, with the patch applied. Warren's routing
/// headers (a retried message's original exchange, a scheduled message's
/// target) stay whatever the patch says.
pub(crate) fn replay_properties(stored: &BasicProperties, patch: &Patch) -> BasicProperties {
    let mut headers = stored.headers().clone().unwrap_or_default().inner().clone();
    if let Some(new) = &patch.headers {
        let keep: Vec<_> = headers
            .iter()
            .filter(|(k, _)| {
                k.as_str().starts_with("x-warren-original-")
                    || k.as_str().starts_with(crate::bus::schedule::HEADER_PREFIX)
            })
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
            || k == "x-delivery-count"
            || k.starts_with(super::HEADER_PREFIX))
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
    /// The next message of `dlq`, unacked on `channel`; None when empty.
    async fn next(&self, channel: &Channel, dlq: &str) -> Result<Option<BasicGetMessage>, Error> {
        let get = channel.basic_get(dlq.into(), BasicGetOptions { no_ack: false });
        match self.pool.op("basic.get", get).await {
            Err(Error::NotFound(_)) => {
                Err(Error::NotFound(format!("queue {dlq:?} does not exist")))
            }
            other => other,
        }
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
        // basic.get on a missing queue closes the channel with a reason
        // naming it: for a name whose reason might not parse, ask first.
        if probe::is_risky(dlq)
            && !probe::exists(&self.pool, &self.isolated, Kind::Queue, dlq).await?
        {
            return Err(Error::NotFound(format!("queue {dlq:?} does not exist")));
        }
        let channel = self.pool.open_channel().await?;
        let result = work(&channel).await;
        // Closing the channel puts back whatever is still unacked.
        channel.close(self.pool.operation_timeout()).await;
        result
    }

    /// The first `limit` dead letters of `dlq`, left in place.
    pub async fn list(&self, dlq: &str, limit: usize) -> Result<Vec<DeadLetter>, Error> {
        self.with_channel(dlq, async |channel| {
            let mut letters = Vec::new();
            while letters.len() < limit {
                match self.next(channel, dlq).await? {
                    Some(got) => letters.push(view(&got)),
                    None => break,
                }
            }
            Ok(letters)
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

    /// Runs `act` on each selected dead letter of `dlq`, one at a time, up to
    /// the scan limit. A failure stops it: the outcome says what was done.
    async fn each(&self, dlq: &str, selection: &Selection, act: Act<'_>) -> Result<Outcome, Error> {
        self.with_channel(dlq, async |channel| {
            let mut outcome = Outcome::default();
            let mut found = HashSet::new();
            for _ in 0..self.max_scan {
                let got = match self.next(channel, dlq).await {
                    Ok(Some(got)) => got,
                    Ok(None) => break,
                    Err(e) if outcome.done == 0 => return Err(e),
                    Err(e) => {
                        outcome.stopped = Some(e);
                        break;
                    }
                };
                let letter = view(&got);
                if !Self::selected(selection, &letter.id) {
                    continue; // stays unacked: back in the queue at the end
                }
                if let Err(e) = self.act(channel, &got, &letter, &act).await {
                    if outcome.done == 0 {
                        return Err(e);
                    }
                    outcome.stopped = Some(e);
                    break;
                }
                found.insert(letter.id);
                outcome.done += 1;
                if let Selection::Ids(ids) = selection {
                    if found.len() == ids.len() {
                        break; // everything asked for is done
                    }
                }
            }
            outcome.missing = Self::missing(selection, &found);
            Ok(outcome)
        })
        .await
    }

    async fn ack(&self, channel: &Channel, got: &BasicGetMessage) -> Result<(), Error> {
        let ack = channel.basic_ack(got.delivery.delivery_tag, BasicAckOptions::default());
        self.pool.op("basic.ack", ack).await
    }

    async fn act(
        &self,
        channel: &Channel,
        got: &BasicGetMessage,
        letter: &DeadLetter,
        act: &Act<'_>,
    ) -> Result<(), Error> {
        if let Act::Replay(patch) = act {
            if letter.original_queue.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "dead letter {:?} does not say which queue it came from (no x-death header)",
                    letter.id
                )));
            }
            let properties = replay_properties(&got.delivery.properties, patch);
            let body = patch
                .body
                .clone()
                .unwrap_or_else(|| got.delivery.data.clone().into());
            self.retrier
                .publish(&letter.original_queue, body, properties)
                .await?;
        }
        self.ack(channel, got).await
    }

    /// Sends the selected dead letters back to their original queues, each
    /// confirmed before it is removed from `dlq`.
    pub async fn replay(
        &self,
        dlq: &str,
        selection: &Selection,
        patch: &Patch,
    ) -> Result<Outcome, Error> {
        self.each(dlq, selection, Act::Replay(patch)).await
    }

    /// Removes the selected dead letters for good.
    pub async fn discard(&self, dlq: &str, selection: &Selection) -> Result<Outcome, Error> {
        self.each(dlq, selection, Act::Discard).await
    }
}

/// What an operation does with each selected dead letter.
enum Act<'a> {
    /// Publish it (patched) to its original queue, then remove it.
    Replay(&'a Patch),
    /// Remove it.
    Discard,
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

    #[test]
    fn warren_reasons_show_and_go_on_replay_targets_stay() {
        let target = crate::bus::schedule::EXCHANGE_HEADER;
        let mut headers = FieldTable::default();
        headers.insert(target.into(), AMQPValue::LongString("shop".into()));
        headers.insert(
            super::super::REASON_HEADER.into(),
            AMQPValue::LongString("unroutable".into()),
        );
        headers.insert(
            super::super::QUEUE_HEADER.into(),
            AMQPValue::LongString("warren.scheduled".into()),
        );
        let stored = BasicProperties::default()
            .with_headers(headers)
            .with_message_id("m".into());
        let mut delivery = lapin::message::Delivery::mock(
            1,
            "".into(),
            "warren.scheduled.dlq".into(),
            false,
            b"x".to_vec(),
        );
        delivery.properties = stored.clone();
        let got = BasicGetMessage {
            delivery,
            message_count: 0,
        };
        let letter = view(&got);
        assert_eq!(letter.reason, "unroutable");
        assert_eq!(letter.original_queue, "warren.scheduled");
        let patch = Patch {
            headers: Some(serde_json::Map::new()),
            ..Default::default()
        };
        let replayed = replay_properties(&stored, &patch);
        let h = replayed.headers().as_ref().unwrap().inner();
        assert!(h.contains_key(target), "the target stays: {h:?}");
        assert!(!h.contains_key(super::super::REASON_HEADER));
        assert!(!h.contains_key(super::super::QUEUE_HEADER));
    }
}
