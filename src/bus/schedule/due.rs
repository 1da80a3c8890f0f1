//! What a due message becomes: its target, read from Warren's headers, and
//! the properties it is forwarded or dead-lettered with.
//!
//! Forwarded, it is the message the client published: Warren's scheduling
//! headers go, and so do the broker's traces of the wait (the `x-death`
//! entries and `x-first-death-*` / `x-last-death-*` headers naming a
//! `warren.delay.*` level, the exit queue's `x-delivery-count`); its TTL
//! and transient delivery come back. Every other property and header is
//! kept as it is, exact AMQP types and `message_id` included. Dead-lettered,
//! it keeps its scheduling headers (a replay goes through the forwarder
//! again) and gets Warren's dead-letter reason.

use std::collections::BTreeMap;

use lapin::types::{AMQPValue, FieldArray, FieldTable, ShortString};
use lapin::BasicProperties;

use super::{
    EXCHANGE_HEADER, EXIT, EXPIRATION_HEADER, HEADER_PREFIX, MANDATORY_HEADER, ROUTING_KEY_HEADER,
    TRANSIENT_HEADER,
};
use crate::amqp::{args, codec};
use crate::bus::dead_letters;

/// Where a due message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub exchange: String,
    pub routing_key: String,
    /// Fails (and is dead-lettered) when unroutable.
    pub mandatory: bool,
}

type Headers = BTreeMap<ShortString, AMQPValue>;

fn headers(properties: &BasicProperties) -> Headers {
    properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default()
}

fn text(headers: &Headers, key: &str) -> Option<String> {
    codec::from_amqp(headers.get(key)?)
        .as_str()
        .map(str::to_owned)
}

/// The target a scheduled message names; `None` when it names none.
pub fn target(properties: &BasicProperties) -> Option<Target> {
    let headers = headers(properties);
    // Names AMQP can carry (the headers may not be Warren's own).
    let name = |key| text(&headers, key).filter(|n| n.len() <= crate::message::MAX_SHORT);
    Some(Target {
        exchange: name(EXCHANGE_HEADER)?,
        routing_key: name(ROUTING_KEY_HEADER)?,
        mandatory: headers
            .get(MANDATORY_HEADER)
            .and_then(|v| codec::from_amqp(v).as_bool())
            .unwrap_or(true),
    })
}

/// Whether a value names one of the chain's levels.
fn is_level(value: Option<&AMQPValue>) -> bool {
    value
        .map(codec::from_amqp)
        .is_some_and(|v| v.as_str().is_some_and(|q| q.starts_with("warren.delay.")))
}

/// Removes the broker's traces of the wait in the chain.
fn strip_chain(headers: &mut Headers) {
    headers.remove("x-delivery-count");
    if let Some(AMQPValue::FieldArray(deaths)) = headers.get("x-death") {
        let kept: Vec<AMQPValue> = deaths
            .as_slice()
            .iter()
            .filter(|d| !matches!(d, AMQPValue::FieldTable(t) if is_level(t.inner().get("queue"))))
            .cloned()
            .collect();
        if kept.is_empty() {
            headers.remove("x-death");
        } else {
            headers.insert(
                "x-death".into(),
                AMQPValue::FieldArray(FieldArray::from(kept)),
            );
        }
    }
    for which in ["x-first-death-", "x-last-death-"] {
        if is_level(headers.get(format!("{which}queue").as_str())) {
            for field in ["queue", "reason", "exchange"] {
                headers.remove(format!("{which}{field}").as_str());
            }
        }
    }
}

fn with_headers(properties: BasicProperties, headers: Headers) -> BasicProperties {
    properties.with_headers(FieldTable::from(headers))
}

/// The properties a due message is forwarded to its target with.
pub fn forwarded(properties: &BasicProperties) -> BasicProperties {
    let mut headers = headers(properties);
    let expiration = headers
        .get(EXPIRATION_HEADER)
        .and_then(|v| codec::from_amqp(v).as_u64())
        .filter(|ms| *ms > 0);
    let transient = headers
        .get(TRANSIENT_HEADER)
        .and_then(|v| codec::from_amqp(v).as_bool())
        .unwrap_or(false);
    strip_chain(&mut headers);
    headers.retain(|k, _| !k.as_str().starts_with(HEADER_PREFIX));
    let mut forwarded = properties.clone();
    if let Some(ms) = expiration {
        forwarded = forwarded.with_expiration(ms.to_string().into());
    }
    if transient {
        forwarded = forwarded.with_delivery_mode(1);
    }
    with_headers(forwarded, headers)
}

/// The properties a due message that cannot be forwarded is kept with in
/// the dead-letter queue: its scheduling headers (a replay forwards it
/// again), Warren's reason, persistent.
pub fn dead_lettered(properties: &BasicProperties, reason: &str, detail: &str) -> BasicProperties {
    let mut headers = headers(properties);
    strip_chain(&mut headers);
    headers.retain(|k, _| !k.as_str().starts_with(dead_letters::HEADER_PREFIX));
    headers.insert(dead_letters::REASON_HEADER.into(), args::string(reason));
    headers.insert(dead_letters::QUEUE_HEADER.into(), args::string(EXIT));
    headers.insert(dead_letters::DETAIL_HEADER.into(), args::string(detail));
    with_headers(properties.clone().with_delivery_mode(2), headers)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::LongString;

    fn s(v: &str) -> AMQPValue {
        AMQPValue::LongString(LongString::from(v))
    }

    fn death(queue: &str, reason: &str) -> AMQPValue {
        let mut t = FieldTable::default();
        t.insert("queue".into(), s(queue));
        t.insert("reason".into(), s(reason));
        t.insert("count".into(), AMQPValue::LongLongInt(1));
        AMQPValue::FieldTable(t)
    }

    /// A message as the forwarder gets it after waiting in levels 1 and 0.
    fn due(extra: &[(&str, AMQPValue)]) -> BasicProperties {
        let mut h = FieldTable::default();
        h.insert(EXCHANGE_HEADER.into(), s("shop"));
        h.insert(ROUTING_KEY_HEADER.into(), s("orders.new"));
        h.insert(MANDATORY_HEADER.into(), AMQPValue::Boolean(true));
        h.insert(super::super::DUE_HEADER.into(), AMQPValue::LongLongInt(1));
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                death("warren.delay.0", "expired"),
                death("warren.delay.1", "expired"),
            ])),
        );
        h.insert("x-first-death-queue".into(), s("warren.delay.1"));
        h.insert("x-first-death-reason".into(), s("expired"));
        h.insert("x-first-death-exchange".into(), s("warren.delay.1"));
        h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
        for (k, v) in extra {
            h.insert((*k).into(), v.clone());
        }
        BasicProperties::default()
            .with_headers(h)
            .with_message_id("m1".into())
            .with_delivery_mode(2)
    }

    #[test]
    fn the_target_is_read_back() {
        let t = target(&due(&[])).unwrap();
        assert_eq!(t.exchange, "shop");
        assert_eq!(t.routing_key, "orders.new");
        assert!(t.mandatory);
        assert_eq!(target(&BasicProperties::default()), None);
    }

    #[test]
    fn forwarded_messages_are_what_the_client_published() {
        let client = [
            ("tenant", s("a")),
            ("n", AMQPValue::LongInt(7)),
            (EXPIRATION_HEADER, AMQPValue::LongLongInt(60_000)),
            (TRANSIENT_HEADER, AMQPValue::Boolean(true)),
        ];
        let p = forwarded(&due(&client));
        let h = p.headers().as_ref().unwrap().inner();
        let keys: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(keys, vec!["n", "tenant"], "only the client's headers");
        assert_eq!(h["n"], AMQPValue::LongInt(7), "exact types kept");
        assert_eq!(p.message_id().as_ref().unwrap().as_str(), "m1");
        assert_eq!(p.expiration().as_ref().unwrap().as_str(), "60000");
        assert_eq!(*p.delivery_mode(), Some(1));
        let bare = forwarded(&due(&[]));
        assert!(bare.headers().as_ref().unwrap().inner().is_empty());
        assert!(bare.expiration().is_none());
        assert_eq!(*bare.delivery_mode(), Some(2));
    }

    #[test]
    fn deaths_outside_the_chain_stay() {
        let mut p = due(&[]);
        let mut h = p.headers().clone().unwrap();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                death("warren.delay.0", "expired"),
                death("orders", "rejected"),
            ])),
        );
        h.insert("x-first-death-queue".into(), s("orders"));
        p = p.with_headers(h);
        let f = forwarded(&p);
        let h = f.headers().as_ref().unwrap().inner();
        let AMQPValue::FieldArray(deaths) = &h["x-death"] else {
            panic!("{h:?}")
        };
        assert_eq!(deaths.as_slice(), &[death("orders", "rejected")]);
        assert_eq!(h["x-first-death-queue"], s("orders"));
        assert!(h.contains_key("x-first-death-reason"));
    }

    #[test]
    fn dead_letters_keep_the_target_and_say_why() {
        let p = dead_lettered(
            &due(&[(TRANSIENT_HEADER, AMQPValue::Boolean(true))]),
            "unroutable",
            "no queue",
        );
        let h = p.headers().as_ref().unwrap().inner();
        assert_eq!(h[EXCHANGE_HEADER], s("shop"));
        assert_eq!(h[TRANSIENT_HEADER], AMQPValue::Boolean(true));
        assert_eq!(h[dead_letters::REASON_HEADER], s("unroutable"));
        assert_eq!(h[dead_letters::QUEUE_HEADER], s(EXIT));
        assert_eq!(h[dead_letters::DETAIL_HEADER], s("no queue"));
        assert!(!h.contains_key("x-death") && !h.contains_key("x-delivery-count"));
        assert_eq!(*p.delivery_mode(), Some(2));
        let again = dead_lettered(&p, "not-found", "gone");
        let h = again.headers().as_ref().unwrap().inner();
        assert_eq!(h[dead_letters::REASON_HEADER], s("not-found"));
        assert_eq!(target(&again).unwrap().routing_key, "orders.new");
    }
}
