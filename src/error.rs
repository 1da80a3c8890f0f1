//! The bus's failures, typed once and mapped once.
//!
//! Every operation of the bus core returns [`Error`]. Each variant knows its
//! gRPC code ([`Error::code`]), its HTTP status ([`Error::http_status`]) and
//! whether trying again may succeed ([`Error::is_retryable`]); the transports
//! use these and nothing else. Messages are safe to show to clients: they never
//! carry broker credentials.

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
    /// A message is larger than allowed.
    #[error("message body of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Its size in bytes (as far as known).
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// A count limit was reached (channels, pending calls, ...).
    #[error("{0}")]
    LimitReached(String),
    /// The broker refused access (permissions, internal exchange, ...).
    #[error("{0}")]
    PermissionDenied(String),
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
    },
    /// The caller's deadline or timeout passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// Warren is shutting down and takes no new work.
    #[error("warren is shutting down")]
    ShuttingDown,
    /// An HTTP endpoint called with a method it does not take.
    #[error("this endpoint does not take that method")]
    MethodNotAllowed,
    /// A bug or an unexpected broker answer; details are in the log.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The gRPC status codes Warren uses, by number (as in `PublishResponse.code`).
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const DEADLINE_EXCEEDED: u32 = 4;
    pub const NOT_FOUND: u32 = 5;
    pub const PERMISSION_DENIED: u32 = 7;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const FAILED_PRECONDITION: u32 = 9;
    pub const UNIMPLEMENTED: u32 = 12;
    pub const INTERNAL: u32 = 13;
    pub const UNAVAILABLE: u32 = 14;
}

impl Error {
    /// An unavailable broker, with a reason.
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Error::Unavailable {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// The gRPC status code.
    pub fn code(&self) -> u32 {
        match self {
            Error::InvalidArgument(_) => code::INVALID_ARGUMENT,
            Error::NotFound(_) => code::NOT_FOUND,
            Error::Unroutable { .. } | Error::FailedPrecondition(_) => code::FAILED_PRECONDITION,
            Error::TooLarge { .. } | Error::LimitReached(_) => code::RESOURCE_EXHAUSTED,
            Error::PermissionDenied(_) => code::PERMISSION_DENIED,
            Error::Nacked | Error::Unavailable { .. } | Error::ShuttingDown => code::UNAVAILABLE,
            Error::DeadlineExceeded(_) => code::DEADLINE_EXCEEDED,
            Error::MethodNotAllowed => code::UNIMPLEMENTED,
            Error::Internal(_) => code::INTERNAL,
        }
    }

    /// The HTTP status (RFC 9110) for the same failure.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::InvalidArgument(_) => 400,
            Error::PermissionDenied(_) => 403,
            Error::NotFound(_) => 404,
            Error::TooLarge { .. } => 413,
            Error::Unroutable { .. } | Error::FailedPrecondition(_) => 422,
            Error::LimitReached(_) => 429,
            Error::Internal(_) => 500,
            Error::MethodNotAllowed => 405,
            Error::Nacked | Error::Unavailable { .. } | Error::ShuttingDown => 503,
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
            Error::Nacked => "nacked",
            Error::Unavailable { .. } => "unavailable",
            Error::DeadlineExceeded(_) => "deadline-exceeded",
            Error::ShuttingDown => "shutting-down",
            Error::MethodNotAllowed => "method-not-allowed",
            Error::Internal(_) => "internal",
        }
    }

    /// Whether the same request may succeed if tried again later.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Nacked | Error::Unavailable { .. } | Error::LimitReached(_)
        )
    }

    /// How long a client should wait before trying again (HTTP `Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Unavailable { retry_after, .. } => {
                Some(retry_after.unwrap_or(Duration::from_secs(1)))
            }
            Error::Nacked | Error::ShuttingDown | Error::LimitReached(_) => {
                Some(Duration::from_secs(1))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_contract_status() {
        let cases = [
            (Error::InvalidArgument("x".into()), 3, 400),
            (Error::NotFound("x".into()), 5, 404),
            (
                Error::Unroutable {
                    exchange: "e".into(),
                    routing_key: "k".into(),
                },
                9,
                422,
            ),
            (Error::TooLarge { size: 2, limit: 1 }, 8, 413),
            (Error::LimitReached("x".into()), 8, 429),
            (Error::unavailable("down"), 14, 503),
            (Error::DeadlineExceeded("x".into()), 4, 504),
            (Error::PermissionDenied("x".into()), 7, 403),
        ];
        for (error, grpc, http) in cases {
            assert_eq!(error.code(), grpc, "{error:?}");
            assert_eq!(error.http_status(), http, "{error:?}");
        }
    }

    #[test]
    fn unavailable_is_retryable_with_retry_after() {
        let e = Error::unavailable("down");
        assert!(e.is_retryable());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        assert!(!Error::NotFound("q".into()).is_retryable());
        assert_eq!(Error::NotFound("q".into()).retry_after(), None);
    }
}
