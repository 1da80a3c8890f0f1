//! Operators and blocked keys: list them, retry (optionally corrected) or
//! skip their held message.
//!
//! A blocked key's held queue holds two copies of its failed message, so
//! that someone looking (a `basic.get` takes a message out of sight until
//! it is returned) never leaves the queue looking empty to another. A retry
//! publishes the released message (marked `x-warren-released: retry`) behind
//! the copies, then removes them; a skip does the same with an empty marker
//! (`skip`) after the message went, confirmed, to the group's dead-letter
//! queue. Either way a nudge goes to the partition, and the announcement to
//! every Warren, so that the partition's subscriber goes on with the key.

use lapin::message::BasicGetMessage;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::BasicProperties;

use super::io::tick;
use super::keys::{header, with_headers};
use super::{Group, KEY_HEADER, REASON_HEADER, RELEASED_HEADER, SINCE_HEADER};
use crate::amqp::{codec, Channel};
use crate::auth::{Access, Caller};
use crate::bus::control::Command;
use crate::bus::dead_letters::{replay_properties, Patch};
use crate::bus::subscribe::ATTEMPT_HEADER;
use crate::bus::Bus;
use crate::error::Error;
use crate::message::{Message, RESERVED_PREFIX};

/// How often, and how far apart, a release looks for the held message's
/// second copy before it goes on with one.
const TWIN_LOOKS: u32 = 10;
const TWIN_PAUSE: std::time::Duration = std::time::Duration::from_millis(10);

/// A blocked key as operators see it.
#[derive(Debug, Clone)]
pub struct Blocked {
    pub key: String,
    /// The held message.
    pub message: Message,
    pub reason: String,
    pub since_ms: i64,
    /// Messages of the key waiting behind it.
    pub waiting: u32,
}

/// What an operator does with a blocked key.
enum Release<'a> {
    Retry(&'a Patch),
    Skip,
}

impl Bus {
    fn group(&self, caller: &Caller, name: &str) -> Result<std::sync::Arc<Group>, Error> {
        caller.permit(Access::Admin)?;
        self.ordered
            .get(name)
            .cloned()
            .ok_or_else(|| Error::NotFound(format!("{name:?} is not an ordered group")))
    }

    /// The group's blocked keys, left as they are.
    pub async fn blocked(&self, caller: &Caller, group: &str) -> Result<Vec<Blocked>, Error> {
        let _pass = self.enter_broker()?;
        let group = self.group(caller, group)?;
        let channel = self.publish_pool.open_channel().await?;
        let result = self.list(&group, &channel).await;
        channel.close(self.publish_pool.operation_timeout()).await;
        result
    }

    async fn list(&self, group: &Group, channel: &Channel) -> Result<Vec<Blocked>, Error> {
        let mut blocked = Vec::new();
        for p in 0..group.partitions() {
            for slot in 0..group.slots() {
                let Some(held) = self.take(channel, &group.held(p, slot)).await? else {
                    continue;
                };
                self.give_back(channel, &held).await?;
                let properties = &held.delivery.properties;
                if header(properties, RELEASED_HEADER).is_some() {
                    continue;
                }
                let mut message = codec::message(held.delivery.data.clone().into(), properties);
                message
                    .headers
                    .retain(|k, _| !k.starts_with(RESERVED_PREFIX));
                let since_ms = match properties
                    .headers()
                    .as_ref()
                    .and_then(|h| h.inner().get(SINCE_HEADER).cloned())
                {
                    Some(AMQPValue::LongLongInt(ms)) => ms,
                    _ => 0,
                };
                blocked.push(Blocked {
                    key: header(properties, KEY_HEADER).unwrap_or_default(),
                    message,
                    reason: header(properties, REASON_HEADER).unwrap_or_default(),
                    since_ms,
                    waiting: self.depth(channel, &group.wait(p, slot)).await?,
                });
            }
        }
        blocked.sort_by_key(|b| b.since_ms);
        Ok(blocked)
    }

    /// Lets a blocked key go on with its held message, first (corrected by
    /// `patch`).
    pub async fn retry_blocked(
        &self,
        caller: &Caller,
        group: &str,
        key: &str,
        patch: &Patch,
    ) -> Result<(), Error> {
        caller.permit(Access::Admin)?;
        patch.check(self.config.publish.max_body_bytes)?;
        self.release(caller, group, key, Release::Retry(patch))
            .await
    }

    /// Dead-letters a blocked key's held message; the key goes on.
    pub async fn skip_blocked(&self, caller: &Caller, group: &str, key: &str) -> Result<(), Error> {
        self.release(caller, group, key, Release::Skip).await
    }

    async fn release(
        &self,
        caller: &Caller,
        group: &str,
        key: &str,
        how: Release<'_>,
    ) -> Result<(), Error> {
        let _pass = self.enter_broker()?;
        let group = self.group(caller, group)?;
        let p = group.partition(key);
        let channel = self.publish_pool.open_channel().await?;
        let result = self.release_on(&group, p, key, how, &channel).await;
        channel.close(self.publish_pool.operation_timeout()).await;
        result?;
        // The partition's subscriber (on whichever Warren) goes on: the
        // announcement is quick, the nudge certain.
        let (body, properties) = tick();
        self.retrier
            .publish(&group.queue(p), body, properties)
            .await?;
        self.announce(Command::Ordered {
            group: group.name().to_owned(),
            partition: p,
        })
        .await
    }

    async fn release_on(
        &self,
        group: &Group,
        p: u32,
        key: &str,
        how: Release<'_>,
        channel: &Channel,
    ) -> Result<(), Error> {
        let not_blocked = || Error::NotFound(format!("key {key:?} is not blocked"));
        for slot in 0..group.slots() {
            let held = group.held(p, slot);
            let Some(first) = self.take(channel, &held).await? else {
                continue;
            };
            let properties = &first.delivery.properties;
            let ours = header(properties, KEY_HEADER).as_deref() == Some(key);
            if !ours || header(properties, RELEASED_HEADER).is_some() {
                self.give_back(channel, &first).await?;
                if ours {
                    return Err(not_blocked());
                }
                continue;
            }
            // Both copies taken before the release is queued: one left
            // behind would stay ahead of it and keep the key blocked.
            let second = self.take_twin(channel, &held).await?;
            let body = first.delivery.data.clone();
            let released = match how {
                Release::Retry(patch) => {
                    let properties = replay_properties(properties, patch);
                    let properties = with_headers(
                        &properties,
                        &[
                            (RELEASED_HEADER, Some(text("retry"))),
                            (REASON_HEADER, None),
                            (SINCE_HEADER, None),
                            (ATTEMPT_HEADER, None),
                        ],
                    );
                    (patch.body.clone().unwrap_or(body.into()), properties)
                }
                Release::Skip => {
                    let dead = with_headers(
                        properties,
                        &[(REASON_HEADER, Some(text("skipped by an operator")))],
                    );
                    self.retrier
                        .publish(&group.dlq(), body.into(), dead)
                        .await?;
                    let mut marker = FieldTable::default();
                    marker.insert(KEY_HEADER.into(), text(key));
                    marker.insert(RELEASED_HEADER.into(), text("skip"));
                    (
                        bytes::Bytes::new(),
                        BasicProperties::default().with_headers(marker),
                    )
                }
            };
            self.retrier.publish(&held, released.0, released.1).await?;
            let last = second
                .as_ref()
                .map_or(first.delivery.delivery_tag, |s| s.delivery.delivery_tag);
            return self.ack_got(channel, last, true).await;
        }
        Err(not_blocked())
    }

    /// The held message's second copy. A listing may hold it for a moment
    /// (it takes and gives back), so it is looked for a few times before
    /// taking it that there is only one.
    async fn take_twin(
        &self,
        channel: &Channel,
        held: &str,
    ) -> Result<Option<BasicGetMessage>, Error> {
        for _ in 0..TWIN_LOOKS {
            if let Some(twin) = self.take(channel, held).await? {
                return Ok(Some(twin));
            }
            tokio::time::sleep(TWIN_PAUSE).await;
        }
        Ok(None)
    }

    async fn take(&self, channel: &Channel, queue: &str) -> Result<Option<BasicGetMessage>, Error> {
        let get = channel.basic_get(queue.into(), BasicGetOptions { no_ack: false });
        self.publish_pool.op("basic.get", get).await
    }

    async fn give_back(&self, channel: &Channel, got: &BasicGetMessage) -> Result<(), Error> {
        let requeue = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        let nack = channel.basic_nack(got.delivery.delivery_tag, requeue);
        self.publish_pool.op("basic.nack", nack).await
    }

    async fn ack_got(&self, channel: &Channel, tag: u64, multiple: bool) -> Result<(), Error> {
        let ack = channel.basic_ack(tag, BasicAckOptions { multiple });
        self.publish_pool.op("basic.ack", ack).await
    }

    async fn depth(&self, channel: &Channel, queue: &str) -> Result<u32, Error> {
        let passive = QueueDeclareOptions {
            passive: true,
            ..Default::default()
        };
        let declare = channel.queue_declare(queue.into(), passive, FieldTable::default());
        Ok(self
            .publish_pool
            .op("queue.declare", declare)
            .await?
            .message_count())
    }
}

fn text(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes()))
}
