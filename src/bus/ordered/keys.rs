//! What a subscriber knows of one partition: its keys, each with the one
//! message at its head and those behind it, and its slots.

use std::collections::{HashMap, VecDeque};

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
