//! Settling an ordered subscriber's deliveries: acks, retries (timed here,
//! the message unacked on the broker meanwhile), failures that block a key.

use std::time::Duration;

use lapin::types::AMQPValue;
use tracing::{info, warn};

use super::keys::{with_headers, Msg, Source};
use super::{REASON_HEADER, RELEASED_HEADER, SINCE_HEADER};
use crate::bus::retry::backoff;
use crate::bus::subscribe::{Action, ATTEMPT_HEADER};
use crate::bus::subscribe::{DeliveryId, Settle};
use crate::error::Error;

use super::consumer::{Due, Task};
use super::io::text;

/// The longest a retry of an ordered message waits (in Warren, while the
/// message stays unacked on the broker): below the broker's default
/// `consumer_timeout` of 30 minutes.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(15 * 60);

impl Task {
    /// A client's settlement or question.
    pub(super) async fn handle(&mut self, request: Settle) -> Result<(), Error> {
        match request {
            Settle::Client {
                mut ids,
                action,
                reply,
            } => {
                ids.sort_by_key(|id| (id.generation, id.tag));
                ids.dedup();
                let checked: Result<Vec<(u32, String)>, Error> = ids
                    .iter()
                    .map(|id| {
                        self.sent
                            .get(&id.tag)
                            .filter(|_| id.generation == self.generation)
                            .cloned()
                            .ok_or_else(|| {
                                Error::NotFound(format!(
                                    "delivery {id} is unknown or already settled"
                                ))
                            })
                    })
                    .collect();
                let targets = match checked {
                    Ok(t) => t,
                    Err(e) => {
                        let _ = reply.send(Err(e));
                        return Ok(());
                    }
                };
                if matches!(action, Action::Extend) {
                    for id in &ids {
                        self.deadlines.extend(id.tag);
                    }
                    let _ = reply.send(Ok(ids.len() as u32));
                    return Ok(());
                }
                let mut result = Ok(());
                for (id, (p, name)) in ids.iter().zip(targets) {
                    self.sent.remove(&id.tag);
                    self.deadlines.remove(id.tag);
                    result = self.settle_one(p, &name, action).await;
                    if result.is_err() {
                        break;
                    }
                }
                if result.is_ok() {
                    // Answered once the acks are on their way to the broker.
                    result = self.flush_acks().await;
                }
                let answer = match &result {
                    Ok(()) => Ok(ids.len() as u32),
                    Err(e) => Err(Error::unavailable(format!("the broker did not take the settlement ({e}); the deliveries are back in the queue"))),
                };
                let _ = reply.send(answer);
                result
            }
            Settle::Peek { id, reply } => {
                let _ = reply.send(self.peek(&id));
                Ok(())
            }
            Settle::Republished { .. } => Ok(()),
        }
    }

    pub(super) fn peek(&self, id: &DeliveryId) -> Result<(String, String), Error> {
        let unknown = || Error::NotFound(format!("delivery {id} is unknown or already settled"));
        let (p, name) = self
            .sent
            .get(&id.tag)
            .filter(|_| id.generation == self.generation)
            .ok_or_else(unknown)?;
        let msg = self.parts[*p as usize]
            .keys
            .get(name)
            .and_then(|k| k.current.as_ref())
            .ok_or_else(unknown)?;
        crate::bus::subscribe::reply_target(id, &msg.properties)
    }

    pub(super) async fn settle_one(
        &mut self,
        p: u32,
        name: &str,
        action: Action,
    ) -> Result<(), Error> {
        let metrics = self.s.metrics.clone();
        let Some(key) = self.parts[p as usize].keys.get_mut(name) else {
            return Ok(());
        };
        key.sent = None;
        match action {
            Action::Extend => Ok(()), // answered in `handle`
            Action::Ack => {
                metrics.acks_total.inc();
                let msg = key.current.take().expect("a sent key has a head");
                self.ack(p, msg.source).await?;
                self.advance(p, name).await
            }
            Action::DeadLetter => {
                metrics.nacks_dropped.inc();
                self.fail(p, name, "rejected by the subscriber").await
            }
            Action::Retry { delay_ms } => {
                metrics.nacks_requeued.inc();
                let policy = self.s.retrier.policy(self.s.group.name()).clone();
                let msg = key.current.as_mut().expect("a sent key has a head");
                if msg.attempt >= policy.max_attempts {
                    let reason = format!("used all {} attempts", policy.max_attempts);
                    return self.fail(p, name, &reason).await;
                }
                metrics.retries_total.inc();
                let delay = match delay_ms {
                    0 => backoff(&policy, msg.attempt, &mut rand::rng()),
                    ms => Duration::from_millis(u64::from(ms)),
                }
                .min(MAX_RETRY_DELAY);
                msg.attempt += 1;
                let token = self.next_seq;
                self.next_seq += 1;
                key.retry = Some(token);
                let due = Due {
                    generation: self.generation,
                    partition: p,
                    key: name.to_owned(),
                    token,
                };
                let tx = self.due_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = tx.send(due);
                });
                Ok(())
            }
        }
    }

    /// A delivery's ack deadline passed: Warren takes it back and hands it
    /// out again (its key still waits for it), one attempt later.
    pub(super) fn expired(&mut self, seq: u64) {
        let Some((p, name)) = self.sent.remove(&seq) else {
            return;
        };
        let Some(key) = self.parts[p as usize].keys.get_mut(&name) else {
            return;
        };
        key.sent = None;
        if let Some(msg) = key.current.as_mut() {
            msg.attempt += 1;
            msg.redelivered = true;
        }
        self.s.metrics.deadline_expired_total.inc();
        self.ready.push_back((p, name));
    }

    pub(super) fn due(&mut self, due: Due) -> Result<(), Error> {
        if due.generation != self.generation {
            return Ok(());
        }
        if let Some(key) = self.parts[due.partition as usize].keys.get_mut(&due.key) {
            if key.retry == Some(due.token) {
                key.retry = None;
                self.ready.push_back((due.partition, due.key));
            }
        }
        Ok(())
    }

    /// The key's head failed for good: block the key (held for an
    /// operator, its later messages aside) or, without blocking,
    /// dead-letter the message and go on.
    pub(super) async fn fail(&mut self, p: u32, name: &str, reason: &str) -> Result<(), Error> {
        if !self.s.group.config.block_on_failure {
            self.s.metrics.dead_lettered_total.inc();
            let msg = self.parts[p as usize]
                .keys
                .get_mut(name)
                .and_then(|k| k.current.take())
                .expect("a failed key has a head");
            match msg.source {
                // The partition dead-letters to the group's queue itself.
                Source::Partition(tag) => self.nack(p, tag, false).await?,
                source => {
                    let properties =
                        with_headers(&msg.properties, &[(REASON_HEADER, Some(text(reason)))]);
                    let dlq = self.s.group.dlq();
                    self.publish(&dlq, vec![(msg.body, properties)]).await?;
                    self.ack(p, source).await?;
                }
            }
            return self.advance(p, name).await;
        }
        self.block(p, name, reason).await
    }

    /// Blocks the key: its head goes to a slot's held queue, its later
    /// messages to the wait queue; with no slot free, the partition stops.
    pub(super) async fn block(&mut self, p: u32, name: &str, reason: &str) -> Result<(), Error> {
        let part = &mut self.parts[p as usize];
        let existing = part.keys.get(name).and_then(|k| k.slot);
        let Some(slot) = existing.or_else(|| part.claim(name)) else {
            warn!(group = self.s.group.name(), partition = p, "a key failed and every slot of its partition is taken: the partition stops until an operator frees one");
            part.stalled = Some(name.to_owned());
            self.s
                .metrics
                .ordered_events
                .with_label_values(&["stalled"])
                .inc();
            return Ok(());
        };
        let key = part.keys.get_mut(name).expect("a failed key is known");
        key.slot = Some(slot);
        key.blocked = true;
        self.s
            .metrics
            .ordered_events
            .with_label_values(&["blocked"])
            .inc();
        let msg = key.current.take().expect("a failed key has a head");
        let pending: Vec<Msg> = key.pending.drain(..).collect();
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as i64;
        let properties = with_headers(
            &msg.properties,
            &[
                (REASON_HEADER, Some(text(reason))),
                (SINCE_HEADER, Some(AMQPValue::LongLongInt(since))),
                (RELEASED_HEADER, None),
                (
                    ATTEMPT_HEADER,
                    Some(AMQPValue::LongLongInt(i64::from(msg.attempt))),
                ),
            ],
        );
        info!(
            group = self.s.group.name(),
            partition = p,
            slot,
            reason,
            "a key is blocked"
        );
        let held = self.s.group.held(p, slot);
        // Two copies: someone looking at one never leaves the queue empty.
        let copies = vec![
            (msg.body.clone(), properties.clone()),
            (msg.body.clone(), properties),
        ];
        self.publish(&held, copies).await?;
        self.ack(p, msg.source).await?;
        let wait = self.s.group.wait(p, slot);
        self.move_to(p, &wait, pending).await
    }
}
