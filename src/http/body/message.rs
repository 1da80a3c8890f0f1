//! A message as JSON: the request form (`JsonMessage`, with `body` or
//! `body_base64`) and the answer form (`JsonOut`).

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::whole;
use crate::error::Error;
use crate::message::Message;

/// A message as JSON (the proto's field names). Unknown fields are refused.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(default)]
pub struct JsonMessage {
    /// Any JSON value: a string is sent as its UTF-8 bytes, anything else as
    /// compact JSON (content type `application/json` unless set).
    #[schema(value_type = Option<Value>)]
    pub body: Option<Value>,
    /// The body as base64 bytes, instead of `body`.
    #[schema(format = Byte)]
    pub body_base64: Option<String>,
    pub content_type: String,
    pub content_encoding: String,
    /// AMQP application headers (names starting with `x-warren-` are
    /// Warren's own and refused).
    pub headers: Map<String, Value>,
    /// Set by Warren (a UUID) when empty.
    pub message_id: String,
    pub correlation_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    /// 0-255; only meaningful on priority queues.
    #[serde(deserialize_with = "whole::deserialize")]
    #[schema(maximum = 255)]
    pub priority: u32,
    /// Per-message TTL in ms; 0 means none.
    #[serde(deserialize_with = "whole::deserialize")]
    #[schema(maximum = 315_360_000_000_u64)]
    pub expiration_ms: u64,
    /// Seconds since the Unix epoch; 0 means none.
    #[serde(deserialize_with = "whole::deserialize")]
    #[schema(minimum = 0)]
    pub timestamp: i64,
    pub app_id: String,
    /// Not persisted (delivery mode 1).
    pub transient: bool,
    pub reply_to: String,
    /// Must be Warren's broker user when set.
    pub user_id: String,
    /// Anything else: refused, so that a misspelt field is not ignored.
    #[serde(flatten)]
    #[schema(ignore)]
    pub unknown: Map<String, Value>,
}

impl JsonMessage {
    /// The bus message; refuses unknown fields and `body` with `body_base64`.
    pub fn into_message(self) -> Result<Message, Error> {
        if let Some(field) = self.unknown.keys().next() {
            return Err(Error::InvalidArgument(format!("unknown field {field:?}")));
        }
        let mut content_type = self.content_type;
        let body = match (self.body, self.body_base64) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidArgument(
                    "give either body or body_base64, not both".into(),
                ))
            }
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map(Bytes::from)
                .map_err(|e| {
                    Error::InvalidArgument(format!("body_base64 is not valid base64: {e}"))
                })?,
            (Some(Value::String(text)), None) => Bytes::from(text),
            (Some(Value::Null), None) | (None, None) => Bytes::new(),
            (Some(value), None) => {
                if content_type.is_empty() {
                    content_type = "application/json".into();
                }
                Bytes::from(value.to_string())
            }
        };
        Ok(Message {
            body,
            content_type,
            content_encoding: self.content_encoding,
            headers: self.headers,
            message_id: self.message_id,
            correlation_id: self.correlation_id,
            kind: self.kind,
            priority: self.priority,
            expiration_ms: self.expiration_ms,
            timestamp: self.timestamp,
            app_id: self.app_id,
            transient: self.transient,
            reply_to: self.reply_to,
            user_id: self.user_id,
        })
    }
}

/// A delivered or replied message as JSON: `body` when the bytes are UTF-8,
/// else `body_base64`; empty properties left out.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DeliveredMessage)]
pub struct JsonOut {
    /// The body as text, when it is valid UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The body as base64, when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = Byte)]
    pub body_base64: Option<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub content_type: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub content_encoding: String,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub headers: Map<String, Value>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub correlation_id: String,
    #[serde(rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(skip_serializing_if = "is_zero_u32")]
    pub priority: u32,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub expiration_ms: u64,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub timestamp: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app_id: String,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub transient: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reply_to: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user_id: String,
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

impl From<Message> for JsonOut {
    fn from(m: Message) -> Self {
        let (body, body_base64) = match std::str::from_utf8(&m.body) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&m.body)),
            ),
        };
        Self {
            body,
            body_base64,
            content_type: m.content_type,
            content_encoding: m.content_encoding,
            headers: m.headers,
            message_id: m.message_id,
            correlation_id: m.correlation_id,
            kind: m.kind,
            priority: m.priority,
            expiration_ms: m.expiration_ms,
            timestamp: m.timestamp,
            app_id: m.app_id,
            transient: m.transient,
            reply_to: m.reply_to,
            user_id: m.user_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Message, Error> {
        serde_json::from_value::<JsonMessage>(v)
            .unwrap()
            .into_message()
    }

    #[test]
    fn string_bodies_are_utf8_and_others_compact_json() {
        let m = parse(json!({"body": "héllo"})).unwrap();
        assert_eq!(&m.body[..], "héllo".as_bytes());
        assert_eq!(m.content_type, "");
        let m = parse(json!({"body": {"a": [1, 2]}})).unwrap();
        assert_eq!(&m.body[..], br#"{"a":[1,2]}"#);
        assert_eq!(m.content_type, "application/json");
        let m = parse(json!({"body": {"a": 1}, "content_type": "application/vnd.x+json"})).unwrap();
        assert_eq!(m.content_type, "application/vnd.x+json");
    }

    #[test]
    fn bad_bodies_are_refused() {
        assert!(parse(json!({"body": "a", "body_base64": "YQ=="})).is_err());
        assert!(parse(json!({"body_base64": "not base64!"})).is_err());
        assert!(parse(json!({"bodyy": "typo"})).is_err());
        assert_eq!(
            &parse(json!({"body_base64": "AAEC"})).unwrap().body[..],
            &[0, 1, 2]
        );
    }

    #[test]
    fn whole_numbers_may_be_written_as_floats() {
        let m = parse(json!({"priority": 3.0, "expiration_ms": 1e3, "timestamp": 7})).unwrap();
        assert_eq!((m.priority, m.expiration_ms, m.timestamp), (3, 1000, 7));
        for bad in [
            json!({"priority": 3.5}),
            json!({"priority": -1}),
            json!({"expiration_ms": -1.0}),
            json!({"priority": 1e300}),
            json!({"priority": "3"}),
        ] {
            assert!(
                serde_json::from_value::<JsonMessage>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn delivered_bodies_are_text_or_base64() {
        let out = JsonOut::from(Message {
            body: Bytes::from_static(b"hi"),
            ..Default::default()
        });
        assert_eq!(out.body.as_deref(), Some("hi"));
        let out = JsonOut::from(Message {
            body: Bytes::from_static(&[0xff, 0]),
            ..Default::default()
        });
        assert_eq!(out.body_base64.as_deref(), Some("/wA="));
    }
}
