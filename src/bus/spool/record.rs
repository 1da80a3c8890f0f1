//! How a spooled publish is written: a version byte, a CRC-32 of everything
//! after it, the length of a JSON document holding everything but the body
//! (both little-endian `u32`), that document, then the body's bytes as they
//! are.
//!
//! JSON keeps the record readable by operators' tools and lets fields be
//! added later; the body stays out of it so it is neither escaped nor
//! base64-encoded. The store's commits are checksummed (a torn commit is
//! rolled back on opening); the record's own CRC catches anything else that
//! changed it, and `decode` refuses anything malformed with a reason rather
//! than panicking.

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
    /// When it was spooled (Unix epoch ms).
    #[serde(default)]
    spooled_at_ms: i64,
    /// Why the broker refused it (dead-letter spool only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

/// A record read back.
#[derive(Debug)]
pub struct Record {
    /// The publish, its schedule absolute (`deliver_at_ms`) or none.
    pub publish: Publish,
    /// When it was spooled (Unix epoch ms).
    pub spooled_at_ms: i64,
    /// Why the broker refused it (dead-letter spool only).
    pub reason: Option<String>,
}

/// The record of `publish`, whose schedule is absolute (`deliver_at_ms`)
/// or none, spooled at `spooled_at_ms`; `reason` for the dead-letter spool.
pub fn encode(publish: &Publish, spooled_at_ms: i64, reason: Option<&str>) -> Vec<u8> {
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
        spooled_at_ms,
        reason: reason.map(str::to_owned),
    };
    let json = serde_json::to_vec(&meta).expect("a publish's fields serialize");
    let mut record = Vec::with_capacity(9 + json.len() + m.body.len());
    record.push(VERSION);
    record.extend_from_slice(&[0; 4]);
    record.extend_from_slice(&(json.len() as u32).to_le_bytes());
    record.extend_from_slice(&json);
    record.extend_from_slice(&m.body);
    let crc = crc32fast::hash(&record[5..]);
    record[1..5].copy_from_slice(&crc.to_le_bytes());
    record
}

/// What a record holds.
pub fn decode(record: &[u8]) -> Result<Record, String> {
    let (&version, rest) = record.split_first().ok_or("an empty record")?;
    if version != VERSION {
        return Err(format!("record version {version}, expected {VERSION}"));
    }
    let (crc, rest) = rest
        .split_first_chunk::<4>()
        .ok_or("a record cut short in its checksum")?;
    if u32::from_le_bytes(*crc) != crc32fast::hash(rest) {
        return Err("a record whose checksum does not match (torn or damaged)".into());
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
        // Forwarding never spools it again.
        allow_spool: Some(false),
    };
    Ok(Record {
        publish,
        spooled_at_ms: meta.spooled_at_ms,
        reason: meta.reason,
    })
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
            allow_spool: Some(true),
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
        let Record {
            publish: back,
            spooled_at_ms,
            reason,
        } = decode(&encode(&publish, 1_700_000_000_123, None)).unwrap();
        assert_eq!(spooled_at_ms, 1_700_000_000_123);
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
        let reason = decode(&encode(&publish, 0, Some("no exchange")))
            .unwrap()
            .reason;
        assert_eq!(reason.as_deref(), Some("no exchange"));
    }

    #[test]
    fn malformed_records_are_refused_with_a_reason() {
        let good = encode(&sample(), 0, None);
        let error = |record: &[u8]| decode(record).unwrap_err();
        assert!(error(&[]).contains("empty"));
        assert!(error(&[9, 0, 0, 0, 0]).contains("version"));
        assert!(error(&good[..3]).contains("cut short"));
        // A record torn anywhere, or with one byte changed, fails its checksum.
        for cut in [9, 20, good.len() - 1] {
            assert!(error(&good[..cut]).contains("checksum"), "cut at {cut}");
        }
        for at in [5, 12, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x01;
            assert!(error(&bad).contains("checksum"), "byte {at} changed");
        }
    }
}
