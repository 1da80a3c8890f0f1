//! The bus's message: body and AMQP properties, independent of any transport.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::Error;

/// AMQP application headers: JSON-shaped values (numbers keep integer or
/// float type), mapped to typed AMQP field values by [`crate::amqp::codec`].
pub type Headers = Map<String, Value>;

/// A message as published or delivered. Empty strings and zeros mean "absent".
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Message {
    /// The payload, never copied between transport and broker.
    pub body: Bytes,
    /// MIME type of the body.
    pub content_type: String,
    /// Encoding of the body (`gzip`, ...).
    pub content_encoding: String,
    /// Application headers.
    pub headers: Headers,
    /// Application message id; Warren assigns one when absent.
    pub message_id: String,
    /// Correlates a reply with its request.
    pub correlation_id: String,
    /// The `type` property.
    pub kind: String,
    /// Priority 0-255.
    pub priority: u32,
    /// Per-message TTL in milliseconds, 0 for none.
    pub expiration_ms: u64,
    /// Seconds since the Unix epoch, 0 for none.
    pub timestamp: i64,
    /// The `app-id` property.
    pub app_id: String,
    /// Delivery mode 1 instead of 2.
    pub transient: bool,
    /// Where replies go.
    pub reply_to: String,
    /// The `user-id` property (the broker checks it against the connection's user).
    pub user_id: String,
}

/// Longest AMQP short string: names, keys and most properties.
pub const MAX_SHORT: usize = 255;

/// Checks that `value` fits in an AMQP short string.
pub fn check_short(what: &str, value: &str) -> Result<(), Error> {
    if value.len() > MAX_SHORT {
        return Err(Error::InvalidArgument(format!(
            "{what} is {} bytes long; AMQP allows at most {MAX_SHORT}",
            value.len()
        )));
    }
    Ok(())
}

/// Header names with this prefix are Warren's bookkeeping (attempts, the
/// original exchange of a retried message); clients may not set them.
pub const RESERVED_PREFIX: &str = "x-warren-";

/// Checks headers a client sends: encodable, names that fit, and none of
/// Warren's own.
pub fn check_client_headers(headers: &Headers) -> Result<(), Error> {
    for key in headers.keys() {
        check_short("a header name", key)?;
        if key.to_ascii_lowercase().starts_with(RESERVED_PREFIX) {
            return Err(Error::InvalidArgument(format!(
                "header {key:?}: names starting with {RESERVED_PREFIX} are Warren's own"
            )));
        }
    }
    crate::amqp::codec::check_headers(headers)
}

impl Message {
    /// Checks every property against AMQP's limits, so that nothing invalid
    /// reaches (and closes) a channel.
    pub fn validate(&self, max_body: usize) -> Result<(), Error> {
        if self.body.len() > max_body {
            return Err(Error::TooLarge {
                what: "message body",
                size: self.body.len(),
                limit: max_body,
            });
        }
        for (what, value) in [
            ("content_type", &self.content_type),
            ("content_encoding", &self.content_encoding),
            ("message_id", &self.message_id),
            ("correlation_id", &self.correlation_id),
            ("type", &self.kind),
            ("app_id", &self.app_id),
            ("reply_to", &self.reply_to),
            ("user_id", &self.user_id),
        ] {
            check_short(what, value)?;
        }
        if self.priority > 255 {
            return Err(Error::InvalidArgument(format!(
                "priority {} is out of range 0-255",
                self.priority
            )));
        }
        if self.timestamp < 0 {
            return Err(Error::InvalidArgument(format!(
                "timestamp {} is before the Unix epoch",
                self.timestamp
            )));
        }
        check_client_headers(&self.headers)
    }

    /// Carries W3C trace context (`traceparent`, `tracestate`) from the
    /// request into the message's headers, unless the message sets its own.
    /// A malformed `traceparent` is refused: it would break the trace
    /// downstream without anyone noticing.
    pub fn set_trace(
        &mut self,
        traceparent: Option<&str>,
        tracestate: Option<&str>,
    ) -> Result<(), Error> {
        let Some(parent) = traceparent else {
            return Ok(());
        };
        if !is_traceparent(parent) {
            return Err(Error::InvalidArgument(format!(
                "traceparent {parent:?} is not a W3C trace context"
            )));
        }
        if !self.headers.contains_key("traceparent") {
            self.headers
                .insert("traceparent".into(), Value::String(parent.to_owned()));
            if let Some(state) = tracestate.filter(|s| !s.is_empty() && s.len() <= 512) {
                self.headers
                    .insert("tracestate".into(), Value::String(state.to_owned()));
            }
        }
        Ok(())
    }

    /// Gives the message a fresh id when it has none.
    pub fn ensure_id(&mut self) {
        if self.message_id.is_empty() {
            self.message_id = uuid::Uuid::new_v4().to_string();
        }
    }
}

/// `version-traceid-parentid-flags`, lower-case hex, ids not all zero.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, n: usize| {
        s.len() == n
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() >= 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && parts[1].bytes().any(|b| b != b'0')
        && hex(parts[2], 16)
        && parts[2].bytes().any(|b| b != b'0')
        && hex(parts[3], 2)
        && (parts.len() == 4 || parts[0] != "00")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_context_is_carried_unless_set() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut m = Message::default();
        m.set_trace(Some(tp), Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(m.headers["traceparent"], tp);
        assert_eq!(m.headers["tracestate"], "congo=t61rcWkgMzE");
        let own = "00-11111111111111111111111111111111-2222222222222222-00";
        let mut m = Message::default();
        m.headers.insert("traceparent".into(), own.into());
        m.set_trace(Some(tp), None).unwrap();
        assert_eq!(m.headers["traceparent"], own);
        let mut m = Message::default();
        m.set_trace(None, Some("x=y")).unwrap();
        assert!(m.headers.is_empty());
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(
                Message::default().set_trace(Some(bad), None).is_err(),
                "{bad}"
            );
        }
    }
}
