//! Deliveries: their ids and the attempt count.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::error::Error;
use crate::message::{check_short, Message};

/// Header in which Warren counts the deliveries of a message it republished
/// for a retry (brokers from 3.13 on ignore a client's `x-death`).
pub const ATTEMPT_HEADER: &str = "x-warren-attempt";
/// The exchange a retried message was first published to.
pub const ORIGINAL_EXCHANGE_HEADER: &str = "x-warren-original-exchange";
/// The routing key a retried message was first published with.
pub const ORIGINAL_ROUTING_KEY_HEADER: &str = "x-warren-original-routing-key";

/// What a subscriber asks for.
#[derive(Debug, Clone, Default)]
pub struct SubscribeRequest {
    /// The queue; with `exchange`, the durable queue to declare and bind
    /// (empty: a temporary exclusive queue for this subscription alone).
    pub queue: String,
    /// Most unacked deliveries at once; 0 for the configured default.
    pub prefetch: u32,
    /// At-most-once: Warren acks each delivery as it hands it over.
    pub auto_ack: bool,
    /// An exchange to bind the queue to.
    pub exchange: String,
    /// Binding keys for `exchange`.
    pub binding_keys: Vec<String>,
    /// Header matches (headers exchanges).
    pub header_match: BTreeMap<String, String>,
    /// `x-match=all` instead of `any`.
    pub match_all: bool,
    /// Consumer priority (`x-priority`), 0 for none.
    pub consumer_priority: i32,
    /// A delivery neither acked nor extended within this many ms is
    /// requeued by Warren; 0 for no deadline.
    pub ack_deadline_ms: u32,
}

impl SubscribeRequest {
    /// Checks the request before anything reaches the broker; the prefetch
    /// to use.
    pub(crate) fn validate(
        &self,
        config: &crate::config::Subscribe,
        frame_max: usize,
    ) -> Result<u16, Error> {
        let r = self;
        check_short("queue", &r.queue)?;
        check_short("exchange", &r.exchange)?;
        if r.queue.is_empty() && r.exchange.is_empty() {
            return Err(Error::InvalidArgument(
                "name a queue, or an exchange to bind a temporary queue to".into(),
            ));
        }
        if r.exchange.is_empty() && (!r.binding_keys.is_empty() || !r.header_match.is_empty()) {
            return Err(Error::InvalidArgument(
                "binding_keys and header_match need an exchange".into(),
            ));
        }
        for key in &r.binding_keys {
            check_short("a binding key", key)?;
        }
        for (name, value) in &r.header_match {
            check_short("a header_match name", name)?;
            check_short("a header_match value", value)?;
        }
        // The match goes to the broker as a binding's arguments, in one
        // frame: over the frame size, the broker closes the connection.
        let size: usize = r
            .header_match
            .iter()
            .map(|(k, v)| 1 + k.len() + 1 + 4 + v.len())
            .sum::<usize>()
            + 4
            + 3 * 256;
        if size > frame_max {
            return Err(Error::TooLarge {
                what: "header_match",
                size,
                limit: frame_max,
            });
        }
        if r.ack_deadline_ms > super::MAX_ACK_DEADLINE_MS {
            return Err(Error::InvalidArgument(format!(
                "ack_deadline_ms {} is above the limit of {} (the broker's default consumer_timeout, 30 minutes)",
                r.ack_deadline_ms,
                super::MAX_ACK_DEADLINE_MS
            )));
        }
        match r.prefetch {
            0 => Ok(config.default_prefetch),
            n if n > u32::from(config.max_prefetch) => Err(Error::InvalidArgument(format!(
                "prefetch {n} is above the limit of {} (subscribe.max_prefetch)",
                config.max_prefetch
            ))),
            n => Ok(n as u16),
        }
    }
}

/// What a subscription's task hands its stream: a delivery (boxed, so the
/// queue between them holds pointers and an idle stream's first block is
/// small), or the error that ends the stream.
pub(crate) type Outgoing = Result<Box<Delivery>, Error>;

/// One delivered message.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Opaque id for ack, nack and reply.
    pub id: String,
    /// The message.
    pub message: Message,
    /// The exchange it was first published to.
    pub exchange: String,
    /// Its routing key when first published.
    pub routing_key: String,
    /// The broker's redelivered flag.
    pub redelivered: bool,
    /// 1 on first delivery, counting every later one.
    pub attempt: u32,
    /// Where a reply goes (the reply-to property).
    pub reply_to: String,
    /// The queue it came from (for an ordered group: the group).
    pub queue: String,
    /// Its ordering key (ordered groups), else empty.
    pub ordering_key: String,
}

/// Where a delivery id points: the subscription (128 random bits, so ids
/// cannot be guessed), its channel generation and the delivery tag.
/// Rendered as three hex numbers joined by `-`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DeliveryId {
    pub subscription: u128,
    pub generation: u64,
    pub tag: u64,
}

impl DeliveryId {
    /// Parses an id; anything malformed is NOT_FOUND, as ids are opaque.
    pub fn parse(id: &str) -> Result<Self, Error> {
        let unknown = || Error::NotFound(format!("unknown delivery id {id:?}"));
        let mut parts = id.split('-');
        let mut next = || {
            parts
                .next()
                .filter(|p| {
                    !p.is_empty() && p.len() <= 32 && p.bytes().all(|b| b.is_ascii_hexdigit())
                })
                .ok_or_else(unknown)
        };
        let subscription = u128::from_str_radix(next()?, 16).map_err(|_| unknown())?;
        let generation = u64::from_str_radix(next()?, 16).map_err(|_| unknown())?;
        let tag = u64::from_str_radix(next()?, 16).map_err(|_| unknown())?;
        if next().is_ok() {
            return Err(unknown());
        }
        Ok(Self {
            subscription,
            generation,
            tag,
        })
    }
}

impl std::fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:032x}-{:x}-{:x}",
            self.subscription, self.generation, self.tag
        )
    }
}

fn header_u32(message: &Message, name: &str) -> Option<u32> {
    match message.headers.get(name)? {
        Value::Number(n) => n.as_u64().map(|n| n.min(u64::from(u32::MAX)) as u32),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// The delivery's attempt: Warren's own count of retries (1 when absent)
/// plus the broker's returns of this copy: a quorum queue's exact
/// `x-delivery-count`, or for other queues the redelivered flag.
pub fn attempt(message: &Message, redelivered: bool) -> u32 {
    let retries = header_u32(message, ATTEMPT_HEADER).unwrap_or(1).max(1);
    let returns = match header_u32(message, "x-delivery-count") {
        Some(count) => count,
        None => u32::from(redelivered),
    };
    retries.saturating_add(returns)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_round_trip_and_garbage_is_not_found() {
        let id = DeliveryId {
            subscription: rand::random(),
            generation: 1,
            tag: 99,
        };
        assert_eq!(DeliveryId::parse(&id.to_string()).unwrap(), id);
        for bad in ["", "x", "1-2", "1-2-3-4", "g-1-1", "1--1", "+1-1-1", "1-1-"] {
            assert!(
                matches!(DeliveryId::parse(bad), Err(Error::NotFound(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn attempts_count_retries_and_broker_returns() {
        let mut m = Message::default();
        assert_eq!(attempt(&m, false), 1);
        assert_eq!(attempt(&m, true), 2);
        m.headers = json!({"x-delivery-count": 3}).as_object().unwrap().clone();
        assert_eq!(attempt(&m, true), 4, "quorum count wins over the flag");
        m.headers = json!({"x-warren-attempt": 3}).as_object().unwrap().clone();
        assert_eq!(attempt(&m, false), 3);
        assert_eq!(attempt(&m, true), 4);
    }
}
