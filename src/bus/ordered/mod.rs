//! Ordered groups: per-key FIFO over partitions, blocking a key on failure.
//!
//! A group `g` with `n` partitions is, on the broker:
//! - the direct exchange `g`, to which publishers send with the key in the
//!   header `x-warren-ordering-key` and the routing key `p`: the partition,
//!   `crc32(key) % n` (CRC-32/ISO-HDLC of the key's UTF-8 bytes, as zlib,
//!   Go's `hash/crc32` and .NET's `Crc32` compute it);
//! - one quorum queue per partition, `g.<p>`, bound with key `p`, with a
//!   single active consumer: a partition is served by one subscriber at a
//!   time, and when it goes away its unacked messages come back in order to
//!   the next one;
//! - per partition, `slots` pairs of classic queues `g.<p>.held.<s>` and
//!   `g.<p>.wait.<s>`: a key taken aside (blocked, or busy) holds a slot;
//!   `held` keeps its failed message, `wait` its later messages, in order;
//! - per partition a classic queue `g.<p>.handover`, where a subscriber
//!   that leaves puts what it held, in order, for the next one (the broker
//!   may give the next subscriber later messages before it has returned the
//!   leaving one's unacked ones);
//! - `g.subscribers`, where each subscriber has a consumer (never a
//!   message): how partitions are spread over them (see `balance`);
//! - `g.dlq`, where skipped and (without blocking) failed messages go.
//!
//! Everything a key's order depends on is in these queues, so it survives
//! SIGKILL of any Warren and restarts of the broker. See `consumer` for how
//! a subscriber serves the partitions, and `operate` for the operators'
//! view of blocked keys.

mod balance;
mod consumer;
mod flow;
mod handover;
mod io;
mod keys;
mod operate;
mod settle;

use std::collections::HashMap;
use std::sync::Arc;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::ExchangeKind;
use serde_json::Value;

use crate::amqp::{args, Channel, Pool};
use crate::bus::Publish;
use crate::config::{self, QueueKind};
use crate::error::Error;
use crate::message::check_short;

pub(crate) use consumer::Subscriber;
pub use operate::Blocked;
pub use settle::MAX_RETRY_DELAY;

/// The header carrying a message's ordering key.
pub const KEY_HEADER: &str = "x-warren-ordering-key";
/// Set on a held message an operator let go again.
pub const RELEASED_HEADER: &str = "x-warren-released";
/// Why a key was blocked.
pub const REASON_HEADER: &str = "x-warren-blocked-reason";
/// When a key was blocked (Unix ms).
pub const SINCE_HEADER: &str = "x-warren-blocked-since";
/// Marks a nudge to read the slots again (never delivered to clients).
pub const TICK_HEADER: &str = "x-warren-ordered-tick";

/// One configured group.
#[derive(Debug)]
pub struct Group {
    pub config: config::Ordered,
}

impl Group {
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The partition of `key`: CRC-32 of its bytes modulo the partitions.
    pub fn partition(&self, key: &str) -> u32 {
        crc32fast::hash(key.as_bytes()) % self.config.partitions
    }

    pub fn partitions(&self) -> u32 {
        self.config.partitions
    }

    pub fn slots(&self) -> usize {
        self.config.slots() as usize
    }

    pub fn queue(&self, partition: u32) -> String {
        format!("{}.{partition}", self.name())
    }

    pub fn held(&self, partition: u32, slot: usize) -> String {
        format!("{}.{partition}.held.{slot}", self.name())
    }

    pub fn wait(&self, partition: u32, slot: usize) -> String {
        format!("{}.{partition}.wait.{slot}", self.name())
    }

    /// Where a leaving subscriber puts what it held, in order, for the next.
    pub fn handover(&self, partition: u32) -> String {
        format!("{}.{partition}.handover", self.name())
    }

    /// Where every subscriber of the group has a consumer (never a message):
    /// their count.
    pub fn presence(&self) -> String {
        format!("{}.subscribers", self.name())
    }

    pub fn dlq(&self) -> String {
        format!("{}.dlq", self.name())
    }

    /// Declares the group's exchange and queues (idempotent).
    pub async fn declare(&self, pool: &Pool, channel: &Channel) -> Result<(), Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let exchange = channel.exchange_declare(
            self.name().into(),
            ExchangeKind::Direct,
            durable,
            FieldTable::default(),
        );
        pool.op("exchange.declare", exchange).await?;
        let durable = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let mut quorum = FieldTable::default();
        quorum.insert("x-queue-type".into(), args::string("quorum"));
        let dlq = self.dlq();
        let declare = channel.queue_declare(dlq.as_str().into(), durable, quorum.clone());
        pool.op("queue.declare", declare).await?;
        let presence = self.presence();
        let declare =
            channel.queue_declare(presence.as_str().into(), durable, FieldTable::default());
        pool.op("queue.declare", declare).await?;
        let mut partition = quorum;
        partition.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        // RabbitMQ 4 dead-letters a quorum queue's message after 20
        // returns by default; returns are how a partition changes hands.
        partition.insert("x-delivery-limit".into(), AMQPValue::LongInt(1_000_000_000));
        args::dead_letter_to(&mut partition, &dlq, QueueKind::Quorum);
        for p in 0..self.partitions() {
            let queue = self.queue(p);
            let declare = channel.queue_declare(queue.as_str().into(), durable, partition.clone());
            pool.op("queue.declare", declare).await?;
            let bind = channel.queue_bind(
                queue.as_str().into(),
                self.name().into(),
                p.to_string().as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            );
            pool.op("queue.bind", bind).await?;
            let handover = self.handover(p);
            let declare =
                channel.queue_declare(handover.as_str().into(), durable, FieldTable::default());
            pool.op("queue.declare", declare).await?;
            for s in 0..self.slots() {
                for side in [self.held(p, s), self.wait(p, s)] {
                    let declare =
                        channel.queue_declare(side.as_str().into(), durable, FieldTable::default());
                    pool.op("queue.declare", declare).await?;
                }
            }
        }
        Ok(())
    }

    /// How many broker operations `declare` makes.
    pub fn declarations(&self) -> usize {
        3 + self.partitions() as usize * (3 + 2 * self.slots())
    }
}

/// The configured groups by name.
#[derive(Debug, Default)]
pub struct Groups(HashMap<String, Arc<Group>>);

impl Groups {
    pub fn new(configs: &[config::Ordered]) -> Self {
        Self(
            configs
                .iter()
                .map(|c| (c.name.clone(), Arc::new(Group { config: c.clone() })))
                .collect(),
        )
    }

    pub fn get(&self, name: &str) -> Option<&Arc<Group>> {
        self.0.get(name)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Group>> {
        self.0.values()
    }

    /// Routes a publish to an ordered group to its key's partition, with
    /// the key in its headers. A key is required for a group and refused
    /// for anything else.
    pub fn route(&self, publish: &mut Publish) -> Result<(), Error> {
        let key = std::mem::take(&mut publish.ordering_key);
        let Some(group) = self.get(&publish.exchange) else {
            if key.is_empty() {
                return Ok(());
            }
            return Err(Error::InvalidArgument(format!(
                "ordering_key is only for ordered groups, and {:?} is not one",
                publish.exchange
            )));
        };
        if key.is_empty() {
            return Err(Error::InvalidArgument(format!(
                "{:?} is an ordered group: a publish to it needs an ordering_key",
                publish.exchange
            )));
        }
        check_short("ordering_key", &key)?;
        publish.routing_key = group.partition(&key).to_string();
        publish
            .message
            .headers
            .insert(KEY_HEADER.into(), Value::String(key));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(partitions: u32) -> Groups {
        Groups::new(&[config::Ordered {
            name: "orders".into(),
            partitions,
            block_on_failure: true,
            max_blocked_keys: 32,
        }])
    }

    #[test]
    fn keys_map_to_partitions_by_crc32() {
        let groups = group(8);
        let g = groups.get("orders").unwrap();
        // zlib.crc32(b"customer-42") == 0x49fda815 in Python.
        assert_eq!(crc32fast::hash(b"customer-42"), 0x49fd_a815);
        assert_eq!(g.partition("customer-42"), 0x49fd_a815 % 8);
        let spread: std::collections::HashSet<u32> =
            (0..1000).map(|i| g.partition(&format!("k{i}"))).collect();
        assert_eq!(spread.len(), 8);
    }

    #[test]
    fn publishes_to_a_group_need_a_key_and_only_groups_take_one() {
        let groups = group(4);
        let mut p = Publish {
            exchange: "orders".into(),
            routing_key: "ignored".into(),
            ordering_key: "customer-42".into(),
            ..Default::default()
        };
        groups.route(&mut p).unwrap();
        assert_eq!(p.routing_key, (0x49fd_a815_u32 % 4).to_string());
        assert_eq!(p.message.headers[KEY_HEADER], "customer-42");
        let mut keyless = Publish {
            exchange: "orders".into(),
            ..Default::default()
        };
        assert!(matches!(
            groups.route(&mut keyless),
            Err(Error::InvalidArgument(_))
        ));
        let mut stray = Publish {
            exchange: "events".into(),
            ordering_key: "k".into(),
            ..Default::default()
        };
        assert!(matches!(
            groups.route(&mut stray),
            Err(Error::InvalidArgument(_))
        ));
        let mut plain = Publish {
            exchange: "events".into(),
            ..Default::default()
        };
        groups.route(&mut plain).unwrap();
        assert!(plain.message.headers.is_empty());
    }
}
