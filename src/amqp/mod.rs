//! The AMQP side: connections, channels, topology and the message codec.
//!
//! - [`pool`]: supervised connections per role, channels opened on them.
//! - [`connect`]: one connection: the URI completed from `[amqp]`, TLS and
//!   the credentials of `[amqp.tls]` and `amqp.password_file`.
//! - [`channel`]: Warren's channel handle, counted in one ledger, and the
//!   one timeout wrapper for broker operations ([`op`]).
//! - [`probe`]: whether an exchange or queue exists (long multi-byte names
//!   on a connection of their own).
//! - [`slot`]: a kept channel reopened on demand, one opener at a time.
//! - [`args`]: dead-letter and delay-queue arguments.
//! - [`topology`]: declaring the configured exchanges, queues and bindings.
//! - [`codec`]: Warren's messages to AMQP properties and back.
//!
//! Everything that speaks AMQP lives here or in [`crate::bus`]; transports
//! never touch lapin.

pub mod args;
pub mod channel;
pub mod codec;
pub mod connect;
pub mod pool;
pub mod probe;
pub mod slot;
pub mod topology;

pub use channel::{op, Channel, Ledger};
pub use connect::Connector;
pub use pool::{reconnect_backoff, Pool, Role};
pub use slot::{Live, Slot};

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::ErrorKind;

use crate::error::Error;

/// A broker URI with its password replaced by `***`, safe for logs and errors.
pub fn mask(uri: &str) -> String {
    match url::Url::parse(uri) {
        Ok(mut url) if url.password().is_some() => {
            let _ = url.set_password(Some("***"));
            url.to_string()
        }
        Ok(url) => url.to_string(),
        // Not a URL at all: show only the scheme-ish prefix.
        Err(_) => uri.split('@').next_back().unwrap_or("").to_string(),
    }
}

/// The bus error for a lapin error: soft (channel) errors keep their AMQP
/// meaning, everything else means the broker is not usable right now.
pub fn classify(error: lapin::Error) -> Error {
    match error.kind() {
        ErrorKind::ProtocolError(e) => {
            let text = e.get_message().as_str().to_owned();
            match e.kind() {
                AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => Error::NotFound(text),
                AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED) => Error::PermissionDenied(text),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
                | AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED) => {
                    Error::FailedPrecondition(text)
                }
                AMQPErrorKind::Soft(AMQPSoftError::CONTENTTOOLARGE) => Error::InvalidArgument(text),
                _ => Error::unavailable(text),
            }
        }
        ErrorKind::ChannelsLimitReached => {
            Error::LimitReached("the broker's channel limit on this connection is reached".into())
        }
        _ => Error::broker(error.to_string(), error),
    }
}

/// Whether a lapin error closed the channel because of what was sent on it
/// (a soft error), as opposed to the connection going away.
pub fn is_channel_error(error: &lapin::Error) -> bool {
    error.is_amqp_soft_error()
}

/// The exchange a channel-close reason names: `... exchange 'name' in vhost ...`.
pub fn exchange_in(reason: &str) -> Option<String> {
    let start = reason.find("exchange '")? + "exchange '".len();
    let rest = &reason[start..];
    let end = rest.rfind("' in vhost").or_else(|| rest.find('\''))?;
    Some(rest[..end].to_owned())
}

/// The bus error for a failed publish of a message to `exchange`: a channel
/// closed because of another message's exchange is UNAVAILABLE for this one.
pub fn publish_error(error: lapin::Error, exchange: &str) -> Error {
    if is_channel_error(&error) {
        if let Some(culprit) = exchange_in(&error.to_string()) {
            if culprit != exchange {
                return Error::unavailable("the channel was closed by another message");
            }
        }
    }
    classify(error)
}

#[cfg(test)]
mod tests {
    use super::mask;

    #[test]
    fn passwords_never_show() {
        let masked = mask("amqp://user:s3cret@host:5672/%2f");
        assert!(!masked.contains("s3cret"), "{masked}");
        assert!(masked.contains("user:***@host"), "{masked}");
        assert!(!mask("amqp://user:s3cret@host:bad-port").contains("s3cret"));
        assert_eq!(mask("amqp://host/%2f"), "amqp://host/%2f");
    }
}
