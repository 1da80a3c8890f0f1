//! The bus's failures, typed once and mapped once.
//!
//! Every operation of the bus core returns [`Error`]. Each variant is a kind
//! of failure; [`Error::origin`] says who caused it (the client, the broker
//! or Warren), [`Error::is_retryable`] whether the same request may succeed
//! later, and a broker fault keeps the lapin error as its `source`. The
//! transports map kinds to codes in one place each ([`Error::code`],
//! [`Error::http_status`]), the breaker and the metrics derive from the same
//! exhaustive matches: a new variant does not compile until it is mapped.
//! Messages are safe to show to clients: they never carry broker credentials.

use std::sync::Arc;
use std::time::Duration;

/// A failure of a bus operation.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The request is malformed (a bad name, property, JSON, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// An exchange or queue does not exist, or a delivery id is unknown.
    #[error("{0}")]
    NotFound(String),
    /// The broker returned a mandatory message: no queue is bound for it.
    #[error("message is unroutable: no queue is bound to exchange {exchange:?} for routing key {routing_key:?}")]
    Unroutable {
        /// The exchange it was published to.
        exchange: String,
        /// Its routing key.
        routing_key: String,
    },
    /// The operation does not apply in this state (e.g. reply without reply_to).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A request is larger than allowed.
    #[error("{what} of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// What is too large ("message body", "headers", ...).
        what: &'static str,
        /// Its size in bytes (as far as known).
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A count limit was reached (channels, pending calls, ...).
    #[error("{0}")]
    LimitReached(String),
    /// The caller may not do this: Warren's permissions (auth on), or the
    /// broker's (an internal exchange, the broker user's rights).
    #[error("{0}")]
    PermissionDenied(String),
    /// No credential, or one that does not check out (auth on).
    #[error("{0}")]
    Unauthenticated(String),
    /// The client is over its `max_publish_rate`.
    #[error("over the publish rate of {rate} messages per second for client {client:?}")]
    RateLimited {
        /// The client's name.
        client: String,
        /// Its rate.
        rate: u32,
        /// When the next message would be let through.
        retry_after: Duration,
    },
    /// The spool cannot take the message without going over `spool.max_bytes`.
    #[error("the spool is full ({bytes} of {max_bytes} bytes); try again once it has drained")]
    SpoolFull {
        /// Bytes spooled.
        bytes: u64,
        /// The limit.
        max_bytes: u64,
        /// When forwarding is likely to have made room.
        retry_after: Duration,
    },
    /// Warren holds as many message bodies as it may at once
    /// (`publish.max_bytes_in_flight`): try again shortly.
    #[error("Warren holds {limit} bytes of message bodies in flight already (publish.max_bytes_in_flight); try again shortly")]
    Overloaded {
        /// The limit.
        limit: usize,
    },
    /// The broker negatively acknowledged a message.
    #[error("the broker rejected the message (basic.nack); it was not stored")]
    Nacked,
    /// The broker cannot be reached or did not answer in time.
    #[error("broker unavailable: {reason}")]
    Unavailable {
        /// What happened.
        reason: String,
        /// When a client may try again, when known.
        retry_after: Option<Duration>,
        /// The AMQP client's error, when there was one.
        #[source]
        cause: Option<Arc<lapin::Error>>,
    },
    /// The caller's deadline or timeout passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Warren is shutting down and takes no new work.
    #[error("warren is shutting down")]
    ShuttingDown,
    /// A bug or an unexpected broker answer; details are in the log.
    #[error("internal error: {0}")]
    Internal(String),
}

/// Who caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The request: fixing it (or waiting for a limit) is the client's part.
    Client,
    /// The broker: unreachable, slow, or refusing to store.
    Broker,
    /// Warren itself: shutting down, or a bug.
    Warren,
}

/// The gRPC status codes Warren uses, by number (as in `PublishResponse.code`).
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const UNAUTHENTICATED: u32 = 16;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

impl Error {
    /// An unavailable broker, with a reason.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Error::Unavailable {
            reason: reason.into(),
            retry_after: None,
            cause: None,
        }
    }

    /// An unavailable broker because of an AMQP client error.
    pub fn broker(reason: impl Into<String>, cause: lapin::Error) -> Self {
        Error::Unavailable {
            reason: reason.into(),
            retry_after: None,
            cause: Some(Arc::new(cause)),
        }
    }

    /// Who caused it.
    pub fn origin(&self) -> Origin {
        match self {
            Error::InvalidArgument(_)
            | Error::NotFound(_)
            | Error::Unroutable { .. }
            | Error::FailedPrecondition(_)
            | Error::TooLarge { .. }
            | Error::LimitReached(_)
            | Error::PermissionDenied(_)
            | Error::Unauthenticated(_)
            | Error::RateLimited { .. }
            | Error::DeadlineExceeded(_) => Origin::Client,
            Error::Nacked | Error::Unavailable { .. } => Origin::Broker,
            Error::SpoolFull { .. }
            | Error::Overloaded { .. }
            | Error::ShuttingDown
            | Error::Internal(_) => Origin::Warren,
        }
    }

    /// The gRPC status code.
    pub fn code(&self) -> u32 {
        match self {
            Error::InvalidArgument(_) => code::INVALID_ARGUMENT,
            Error::NotFound(_) => code::NOT_FOUND,
            Error::Unroutable { .. } | Error::FailedPrecondition(_) => code::FAILED_PRECONDITION,
            Error::TooLarge { .. }
            | Error::LimitReached(_)
            | Error::RateLimited { .. }
            | Error::SpoolFull { .. }
            | Error::Overloaded { .. } => code::RESOURCE_EXHAUSTED,
            Error::PermissionDenied(_) => code::PERMISSION_DENIED,
            Error::Unauthenticated(_) => code::UNAUTHENTICATED,
            Error::Nacked | Error::Unavailable { .. } | Error::ShuttingDown => code::UNAVAILABLE,
            Error::DeadlineExceeded(_) => code::DEADLINE_EXCEEDED,
            Error::Internal(_) => code::INTERNAL,
        }
    }

    /// The HTTP status (RFC 9110) for the same failure.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidArgument(_) => 400,
            Error::Unauthenticated(_) => 401,
            Error::PermissionDenied(_) => 403,
            Error::NotFound(_) => 404,
            Error::TooLarge { .. } => 413,
            Error::Unroutable { .. } | Error::FailedPrecondition(_) => 422,
            Error::LimitReached(_) | Error::RateLimited { .. } | Error::SpoolFull { .. } => 429,
            Error::Internal(_) => 500,
            Error::Nacked
            | Error::Unavailable { .. }
            | Error::Overloaded { .. }
            | Error::ShuttingDown => 503,
            Error::DeadlineExceeded(_) => 504,
        }
    }

    /// A short, stable name of the kind of failure (problem+json `type`, logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidArgument(_) => "invalid-argument",
            Error::NotFound(_) => "not-found",
            Error::Unroutable { .. } => "unroutable",
            Error::FailedPrecondition(_) => "failed-precondition",
            Error::TooLarge { .. } => "too-large",
            Error::LimitReached(_) => "limit-reached",
            Error::PermissionDenied(_) => "permission-denied",
            Error::Unauthenticated(_) => "unauthenticated",
            Error::RateLimited { .. } => "rate-limited",
            Error::SpoolFull { .. } => "spool-full",
            Error::Overloaded { .. } => "overloaded",
            Error::Nacked => "nacked",
            Error::Unavailable { .. } => "unavailable",
            Error::DeadlineExceeded(_) => "deadline-exceeded",
            Error::ShuttingDown => "shutting-down",
            Error::Internal(_) => "internal",
        }
    }

    /// A broker condition that may pass on its own (a failover, a
    /// reconnect): worth retrying inside Warren within a budget. A limit
    /// the client reached is retryable for the client but not this: trying
    /// again at once would only wait out the budget.
    pub fn is_transient(&self) -> bool {
        self.origin() == Origin::Broker && self.is_retryable()
    }

    /// Whether the same request may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Nacked
            | Error::Unavailable { .. }
            | Error::LimitReached(_)
            | Error::RateLimited { .. }
            | Error::SpoolFull { .. }
            | Error::Overloaded { .. }
            | Error::ShuttingDown => true,
            Error::InvalidArgument(_)
            | Error::NotFound(_)
            | Error::Unroutable { .. }
            | Error::FailedPrecondition(_)
            | Error::TooLarge { .. }
            | Error::PermissionDenied(_)
            | Error::Unauthenticated(_)
            | Error::DeadlineExceeded(_)
            | Error::Internal(_) => false,
        }
    }

    /// How long a client should wait before trying again (HTTP `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        // Exactly the retryable failures say when to come back.
        match self {
            Error::Unavailable {
                retry_after: Some(after),
                ..
            } => Some(*after),
            Error::RateLimited { retry_after, .. } | Error::SpoolFull { retry_after, .. } => {
                Some(*retry_after)
            }
            e if e.is_retryable() => Some(Duration::from_secs(1)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One of each variant: the match is exhaustive, so a new variant does
    /// not compile until it is listed here with its codes.
    fn expected(error: &Error) -> (u32, u16, Origin, bool) {
        match error {
            Error::InvalidArgument(_) => (3, 400, Origin::Client, false),
            Error::NotFound(_) => (5, 404, Origin::Client, false),
            Error::Unroutable { .. } => (9, 422, Origin::Client, false),
            Error::FailedPrecondition(_) => (9, 422, Origin::Client, false),
            Error::TooLarge { .. } => (8, 413, Origin::Client, false),
            Error::LimitReached(_) => (8, 429, Origin::Client, true),
            Error::PermissionDenied(_) => (7, 403, Origin::Client, false),
            Error::Unauthenticated(_) => (16, 401, Origin::Client, false),
            Error::RateLimited { .. } => (8, 429, Origin::Client, true),
            Error::SpoolFull { .. } => (8, 429, Origin::Warren, true),
            Error::Overloaded { .. } => (8, 503, Origin::Warren, true),
            Error::Nacked => (14, 503, Origin::Broker, true),
            Error::Unavailable { .. } => (14, 503, Origin::Broker, true),
            Error::DeadlineExceeded(_) => (4, 504, Origin::Client, false),
            Error::ShuttingDown => (14, 503, Origin::Warren, true),
            Error::Internal(_) => (13, 500, Origin::Warren, false),
        }
    }

    fn every_variant() -> Vec<Error> {
        vec![
            Error::InvalidArgument("x".into()),
            Error::NotFound("x".into()),
            Error::Unroutable {
                exchange: "e".into(),
                routing_key: "k".into(),
            },
            Error::FailedPrecondition("x".into()),
            Error::TooLarge {
                what: "message body",
                size: 2,
                limit: 1,
            },
            Error::LimitReached("x".into()),
            Error::PermissionDenied("x".into()),
            Error::Unauthenticated("x".into()),
            Error::RateLimited {
                client: "c".into(),
                rate: 1,
                retry_after: Duration::from_millis(10),
            },
            Error::SpoolFull {
                bytes: 2,
                max_bytes: 1,
                retry_after: Duration::from_secs(1),
            },
            Error::Overloaded { limit: 1 },
            Error::Nacked,
            Error::unavailable("down"),
            Error::DeadlineExceeded("x".into()),
            Error::ShuttingDown,
            Error::Internal("x".into()),
        ]
    }

    #[test]
    fn every_variant_has_its_contract_codes() {
        let all = every_variant();
        let kinds: std::collections::HashSet<_> = all.iter().map(Error::kind).collect();
        assert_eq!(
            kinds.len(),
            all.len(),
            "one of each variant, kinds distinct"
        );
        for error in all {
            let (grpc, http, origin, retryable) = expected(&error);
            assert_eq!(error.code(), grpc, "{error:?}");
            assert_eq!(error.http_status(), http, "{error:?}");
            assert_eq!(error.origin(), origin, "{error:?}");
            assert_eq!(error.is_retryable(), retryable, "{error:?}");
            // Every retryable failure tells the client when to come back.
            assert_eq!(
                error.retry_after().is_some(),
                retryable,
                "{error:?} retry_after"
            );
        }
    }

    #[test]
    fn a_broker_fault_keeps_its_cause() {
        use std::error::Error as _;
        let cause = lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
            lapin::ConnectionState::Closed,
        ));
        let e = Error::broker("the connection closed", cause);
        assert!(e.source().is_some(), "the lapin error is the source");
        assert_eq!(e.origin(), Origin::Broker);
        assert_eq!(e.to_string(), "broker unavailable: the connection closed");
    }
}
