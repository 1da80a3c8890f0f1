//! What a subscriber knows of one partition: its keys, each with the one
//! message at its head and those behind it, and its slots.

use std::collections::{BTreeSet, HashMap, VecDeque};

use bytes::Bytes;
use lapin::types::AMQPValue;
use lapin::BasicProperties;

use crate::amqp::Channel;

/// Where a message a subscriber holds came from (a delivery tag on the
/// partition's channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// The partition queue.
    Partition(u64),
    /// A slot's held queue (a released message).
    Held(u64),
    /// A slot's wait queue.
    Wait(u64),
    /// The partition's handover queue (what a leaving subscriber held).
    Handover(u64),
}

impl Source {
    /// Read from the partition's own queues (not a slot's): a subscriber
    /// that leaves hands these over.
    pub fn in_partition(self) -> bool {
        matches!(self, Source::Partition(_) | Source::Handover(_))
    }

    pub fn tag(self) -> u64 {
        match self {
            Source::Partition(t) | Source::Held(t) | Source::Wait(t) | Source::Handover(t) => t,
        }
    }
}

/// A message held by the subscriber (unacked on the broker).
#[derive(Debug)]
pub struct Msg {
    pub source: Source,
    /// Arrival order at this subscriber.
    pub seq: u64,
    pub body: Bytes,
    pub properties: BasicProperties,
    pub redelivered: bool,
    /// 1 on first delivery, counting Warren's retries.
    pub attempt: u32,
}

/// One key of a partition.
#[derive(Debug, Default)]
pub struct Key {
    /// The key's head: ready, with the client, or waiting for a retry.
    pub current: Option<Msg>,
    /// The delivery id's sequence number while the client holds `current`.
    pub sent: Option<u64>,
    /// A retry timer runs for `current` (its token).
    pub retry: Option<u64>,
    /// Later messages from the partition, in order.
    pub pending: VecDeque<Msg>,
    /// The slot this key holds (blocked, or taken aside while busy).
    pub slot: Option<usize>,
    /// Its failed message is held for an operator.
    pub blocked: bool,
}

impl Key {
    /// Nothing held, nothing aside: the key can be forgotten.
    pub fn is_idle(&self) -> bool {
        self.current.is_none() && self.pending.is_empty() && self.slot.is_none()
    }
}

/// One partition as its subscriber sees it.
pub struct Partition {
    /// Its own channel: closing it hands the partition to another subscriber.
    pub channel: Option<Channel>,
    /// The consumer on it (a handle to the same deliveries the task reads).
    pub consumer: Option<lapin::Consumer>,
    /// The slots were read since this subscriber became the active one.
    pub loaded: bool,
    pub keys: HashMap<String, Key>,
    /// Which key holds each slot.
    pub slots: Vec<Option<String>>,
    /// A key that failed with no slot free: the partition waits for one.
    pub stalled: Option<String>,
    /// Counts the channels opened for it (deliveries of an older one are
    /// ignored).
    pub epoch: u64,
    /// Being let go to another subscriber: nothing more is handed out.
    pub releasing: bool,
    /// Its channel's delivery tags: what is held, what awaits an ack.
    pub tags: Tags,
}

/// A channel's delivery tags, so that acks go out as one `multiple` ack
/// where they can. Tags count up from 1 per channel, shared by deliveries
/// and gets; a `multiple` ack may only cover tags this side has seen (a
/// delivery still in lapin's buffer must not be acked unseen) and none it
/// still holds.
#[derive(Debug, Default)]
pub struct Tags {
    /// Every tag up to this one was seen.
    prefix: u64,
    /// Tags seen above `prefix`, with gaps below them.
    above: BTreeSet<u64>,
    /// Held: seen and not settled.
    unacked: BTreeSet<u64>,
    /// Settled by acks not sent yet.
    to_ack: Vec<u64>,
}

impl Tags {
    /// A delivery or a get with this tag arrived (it is held).
    pub fn held(&mut self, tag: u64) {
        if tag == self.prefix + 1 {
            self.prefix = tag;
            while self.above.remove(&(self.prefix + 1)) {
                self.prefix += 1;
            }
        } else if tag > self.prefix {
            self.above.insert(tag);
        }
        self.unacked.insert(tag);
    }

    /// To be acked with the next flush.
    pub fn ack(&mut self, tag: u64) {
        self.unacked.remove(&tag);
        self.to_ack.push(tag);
    }

    /// Settled otherwise (nacked now).
    pub fn nacked(&mut self, tag: u64) {
        self.unacked.remove(&tag);
    }

    /// The acks to send: `(tag, multiple)`.
    pub fn flush(&mut self) -> Vec<(u64, bool)> {
        if self.to_ack.is_empty() {
            return Vec::new();
        }
        let mut tags = std::mem::take(&mut self.to_ack);
        tags.sort_unstable();
        let held = self.unacked.first().map_or(u64::MAX, |t| t - 1);
        let bound = held.min(self.prefix);
        let run = tags.partition_point(|&t| t <= bound);
        let mut out = Vec::with_capacity(tags.len() - run + 1);
        match run {
            0 => {}
            1 => out.push((tags[0], false)),
            _ => out.push((tags[run - 1], true)),
        }
        out.extend(tags[run..].iter().map(|&t| (t, false)));
        out
    }
}

impl Partition {
    pub fn new(slots: usize) -> Self {
        Self {
            channel: None,
            consumer: None,
            loaded: false,
            keys: HashMap::new(),
            slots: vec![None; slots],
            stalled: None,
            epoch: 0,
            releasing: false,
            tags: Tags::default(),
        }
    }

    /// Forgets everything (its channel is gone and with it what it held).
    pub fn reset(&mut self) {
        self.channel = None;
        self.consumer = None;
        self.loaded = false;
        self.keys.clear();
        self.slots.iter_mut().for_each(|s| *s = None);
        self.stalled = None;
        self.releasing = false;
        self.tags = Tags::default();
    }

    pub fn free_slots(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }

    /// Takes a free slot for `key`.
    pub fn claim(&mut self, key: &str) -> Option<usize> {
        let free = self.slots.iter().position(Option::is_none)?;
        self.slots[free] = Some(key.to_owned());
        Some(free)
    }
}

/// A string header of `properties`.
pub fn header(properties: &BasicProperties, name: &str) -> Option<String> {
    match properties.headers().as_ref()?.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// A numeric header of `properties`.
fn number(properties: &BasicProperties, name: &str) -> Option<u64> {
    let value = properties.headers().as_ref()?.inner().get(name)?;
    let n = match value {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        _ => return None,
    };
    u64::try_from(n).ok()
}

/// The attempt of a delivery, as [`crate::bus::subscribe::attempt`] counts
/// it, read straight from its AMQP headers.
pub fn attempt(properties: &BasicProperties, redelivered: bool) -> u32 {
    let clamp = |n: u64| n.min(u64::from(u32::MAX)) as u32;
    let retries = number(properties, crate::bus::subscribe::ATTEMPT_HEADER)
        .map_or(1, clamp)
        .max(1);
    let returns = number(properties, "x-delivery-count").map_or(u32::from(redelivered), clamp);
    retries.saturating_add(returns)
}

/// `properties` with headers set (`Some`) or removed (`None`).
pub fn with_headers(
    properties: &BasicProperties,
    changes: &[(&str, Option<AMQPValue>)],
) -> BasicProperties {
    let mut headers = properties
        .headers()
        .clone()
        .unwrap_or_default()
        .inner()
        .clone();
    for (name, value) in changes {
        match value {
            Some(v) => {
                headers.insert((*name).into(), v.clone());
            }
            None => {
                headers.remove(*name);
            }
        }
    }
    headers.remove("x-delivery-count");
    properties.clone().with_headers(headers.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_are_one_multiple_ack_below_anything_held_or_unseen() {
        let mut tags = Tags::default();
        for t in 1..=5 {
            tags.held(t);
        }
        for t in [1, 2, 4] {
            tags.ack(t);
        }
        // 3 is held: 1 and 2 together, 4 alone.
        assert_eq!(tags.flush(), [(2, true), (4, false)]);
        tags.ack(3);
        assert_eq!(tags.flush(), [(3, false)]);
        // A get's tag (8) seen before 6 and 7: those may be in lapin's
        // buffer, so 8 goes alone.
        tags.held(8);
        tags.ack(5);
        tags.ack(8);
        assert_eq!(tags.flush(), [(5, false), (8, false)]);
        tags.held(6);
        tags.held(7);
        tags.ack(7);
        tags.ack(6);
        assert_eq!(tags.flush(), [(7, true)]);
        for t in 9..=11 {
            tags.held(t);
        }
        tags.nacked(10);
        tags.ack(9);
        tags.ack(11);
        assert_eq!(
            tags.flush(),
            [(11, true)],
            "a nacked tag is no longer outstanding: one ack covers 9 and 11"
        );
        assert!(tags.flush().is_empty());
    }
}
