//! How a spooled publish is written: a version byte, the length of a JSON
//! document holding everything but the body (little-endian `u32`), that
//! document, then the body's bytes as they are.
//!
//! JSON keeps the record readable by operators' tools and lets fields be
//! added later; the body stays out of it so it is neither escaped nor
//! base64-encoded. The store checksums its pages, so a record read back is
//! the record written; `decode` still refuses anything malformed with a
//! reason rather than panicking.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::bus::{Publish, Schedule};
use crate::message::{Headers, Message};

const VERSION: u8 = 1;

/// Everything of a publish but the body.
#[derive(Serialize, Deserialize)]
struct Meta {
    exchange: String,
    routing_key: String,
    mandatory: bool,
    ordering_key: String,
    deliver_at_ms: i64,
    content_type: String,
    content_encoding: String,
    headers: Headers,
    message_id: String,
    correlation_id: String,
    kind: String,
    priority: u32,
    expiration_ms: u64,
    timestamp: i64,
    app_id: String,
    transient: bool,
    reply_to: String,
    user_id: String,
    /// Why the broker refused it (dead-letter spool only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// The record of `publish`, whose schedule is absolute (`deliver_at_ms`)
/// or none; `reason` for the dead-letter spool.
pub fn encode(publish: &Publish, reason: Option<&str>) -> Vec<u8> {
    let m = &publish.message;
    let meta = Meta {
        exchange: publish.exchange.clone(),
        routing_key: publish.routing_key.clone(),
        mandatory: publish.mandatory,
        ordering_key: publish.ordering_key.clone(),
        deliver_at_ms: publish.schedule.deliver_at_ms,
        content_type: m.content_type.clone(),
        content_encoding: m.content_encoding.clone(),
        headers: m.headers.clone(),
        message_id: m.message_id.clone(),
        correlation_id: m.correlation_id.clone(),
        kind: m.kind.clone(),
        priority: m.priority,
        expiration_ms: m.expiration_ms,
        timestamp: m.timestamp,
        app_id: m.app_id.clone(),
        transient: m.transient,
        reply_to: m.reply_to.clone(),
        user_id: m.user_id.clone(),
        reason: reason.map(str::to_owned),
    };
    let json = serde_json::to_vec(&meta).expect("a publish's fields serialize");
    let mut record = Vec::with_capacity(5 + json.len() + m.body.len());
    record.push(VERSION);
    record.extend_from_slice(&(json.len() as u32).to_le_bytes());
    record.extend_from_slice(&json);
    record.extend_from_slice(&m.body);
    record
}

/// The publish a record holds.
pub fn decode(record: &[u8]) -> Result<Publish, String> {
    decode_dead(record).map(|(publish, _)| publish)
}

/// The publish a record holds, and the reason it was refused when it is
/// from the dead-letter spool.
pub fn decode_dead(record: &[u8]) -> Result<(Publish, Option<String>), String> {
    let (&version, rest) = record.split_first().ok_or("an empty record")?;
    if version != VERSION {
        return Err(format!("record version {version}, expected {VERSION}"));
    }
    let (len, rest) = rest
        .split_first_chunk::<4>()
        .ok_or("a record cut short in its length")?;
    let len = u32::from_le_bytes(*len) as usize;
    if rest.len() < len {
        return Err("a record cut short in its fields".into());
    }
    let (json, body) = rest.split_at(len);
    let meta: Meta = serde_json::from_slice(json).map_err(|e| format!("a record's fields: {e}"))?;
    let message = Message {
        body: Bytes::copy_from_slice(body),
        content_type: meta.content_type,
        content_encoding: meta.content_encoding,
        headers: meta.headers,
        message_id: meta.message_id,
        correlation_id: meta.correlation_id,
        kind: meta.kind,
        priority: meta.priority,
        expiration_ms: meta.expiration_ms,
        timestamp: meta.timestamp,
        app_id: meta.app_id,
        transient: meta.transient,
        reply_to: meta.reply_to,
        user_id: meta.user_id,
    };
    let publish = Publish {
        exchange: meta.exchange,
        routing_key: meta.routing_key,
        message,
        mandatory: meta.mandatory,
        ordering_key: meta.ordering_key,
        schedule: Schedule {
            delay_ms: 0,
            deliver_at_ms: meta.deliver_at_ms,
        },
    };
    Ok((publish, meta.reason))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Publish {
        let headers = json!({"n": 1, "f": 1.5, "big": u64::MAX, "nested": {"a": [true, null]}});
        Publish {
            exchange: "orders".into(),
            routing_key: "eu.created".into(),
            mandatory: true,
            ordering_key: "customer-7".into(),
            schedule: Schedule {
                delay_ms: 0,
                deliver_at_ms: 1_800_000_000_000,
            },
            message: Message {
                body: Bytes::from_static(b"\x00\xffnot json {"),
                content_type: "application/octet-stream".into(),
                headers: headers.as_object().unwrap().clone(),
                message_id: "m-1".into(),
                priority: 9,
                expiration_ms: 60_000,
                timestamp: 1_700_000_000,
                transient: true,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_publish_comes_back_as_it_went_in() {
        let publish = sample();
        let (back, reason) = decode_dead(&encode(&publish, None)).unwrap();
        assert_eq!(back.message, publish.message);
        assert_eq!(
            (
                back.exchange.as_str(),
                back.routing_key.as_str(),
                back.mandatory
            ),
            ("orders", "eu.created", true)
        );
        assert_eq!(back.ordering_key, "customer-7");
        assert_eq!(back.schedule, publish.schedule);
        assert_eq!(reason, None);
        let (_, reason) = decode_dead(&encode(&publish, Some("no exchange"))).unwrap();
        assert_eq!(reason.as_deref(), Some("no exchange"));
    }

    #[test]
    fn malformed_records_are_refused_with_a_reason() {
        let good = encode(&sample(), None);
        assert!(decode(&[]).is_err());
        assert!(decode(&[9, 0, 0, 0, 0]).unwrap_err().contains("version"));
        assert!(decode(&good[..3]).unwrap_err().contains("length"));
        assert!(decode(&good[..20]).unwrap_err().contains("fields"));
        let mut bad = good.clone();
        bad[6] = b'!';
        assert!(decode(&bad).is_err());
    }
}
