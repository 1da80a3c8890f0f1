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

impl Message {
    /// Checks every property against AMQP's limits, so that nothing invalid
    /// reaches (and closes) a channel.
    pub fn validate(&self, max_body: usize) -> Result<(), Error> {
        if self.body.len() > max_body {
            return Err(Error::TooLarge {
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
        for key in self.headers.keys() {
            check_short("a header name", key)?;
        }
        crate::amqp::codec::check_headers(&self.headers)
    }

    /// Gives the message a fresh id when it has none.
    pub fn ensure_id(&mut self) {
        if self.message_id.is_empty() {
            self.message_id = uuid::Uuid::new_v4().to_string();
        }
    }
}
