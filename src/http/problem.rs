//! Errors as `application/problem+json` (RFC 9457): bus errors, and the few
//! failures of HTTP itself (an unknown method, an unreadable path).

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use crate::error::Error;

/// An HTTP error response.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    kind: &'static str,
    detail: String,
    code: Option<u32>,
    retryable: bool,
    retry_after: Option<Duration>,
    /// Warren is going away: the client must not reuse the connection.
    close: bool,
    /// A credential is needed: `WWW-Authenticate: Bearer`.
    challenge: bool,
    /// Members beyond RFC 9457's (`replayed` of a partial replay, ...).
    extra: Map<String, Value>,
}

impl From<Error> for Problem {
    fn from(e: Error) -> Self {
        Problem {
            status: StatusCode::from_u16(e.http_status())
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            kind: e.kind(),
            detail: e.to_string(),
            code: Some(e.code()),
            retryable: e.is_retryable(),
            retry_after: e.retry_after(),
            close: matches!(e, Error::ShuttingDown),
            challenge: matches!(e, Error::Unauthenticated(_)),
            extra: Map::new(),
        }
    }
}

impl Problem {
    /// A failure of HTTP itself, with no bus error behind it.
    pub fn http(status: StatusCode, kind: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            kind,
            detail: detail.into(),
            code: None,
            retryable: false,
            retry_after: None,
            close: false,
            challenge: false,
            extra: Map::new(),
        }
    }

    /// 405: the endpoint exists but does not take the method.
    pub fn method_not_allowed() -> Self {
        Self::http(
            StatusCode::METHOD_NOT_ALLOWED,
            "method-not-allowed",
            "this endpoint does not take that method",
        )
    }

    /// Asks the client to close the connection after this answer.
    pub fn closing(mut self) -> Self {
        self.close = true;
        self
    }

    /// Adds a member to the body.
    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    /// The problem document (also the data of an SSE `error` event).
    pub fn body(&self) -> Value {
        let body = Body {
            kind: format!("urn:warren:problem:{}", self.kind),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            retryable: self.retryable,
            code: self.code,
            extra: self.extra.clone(),
        };
        serde_json::to_value(body).unwrap_or_else(|_| json!({}))
    }
}

/// The body of a problem response (RFC 9457).
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct Body {
    /// `urn:warren:problem:<kind>`: `invalid-argument`, `not-found`,
    /// `unroutable`, `too-large`, `unavailable`, ...
    #[serde(rename = "type")]
    #[schema(example = "urn:warren:problem:not-found")]
    kind: String,
    /// The status's reason phrase.
    title: String,
    /// The HTTP status.
    #[schema(minimum = 400, maximum = 599)]
    status: u16,
    /// What went wrong, for people.
    detail: String,
    /// Whether the same request may succeed later.
    retryable: bool,
    /// The gRPC status code of the same failure (absent for failures of
    /// HTTP itself: 405, 408, 415, 421).
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u32>,
    /// More members: `replayed` or `discarded` (how many were done) when a
    /// dead-letter operation stopped part-way.
    #[serde(flatten)]
    #[schema(ignore)]
    extra: Map<String, Value>,
}

/// Turns an error response that is not a problem yet (the rejection of one
/// of axum's extractors: plain text) into one, with its text as `detail`.
pub async fn every_error_a_problem(response: Response) -> Response {
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|ct| ct == "application/problem+json");
    if !(status.is_client_error() || status.is_server_error()) || is_problem {
        return response;
    }
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let kind = if status.is_client_error() {
        "invalid-request"
    } else {
        "internal"
    };
    let detail = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_owned()
    } else {
        text
    };
    Problem::http(status, kind, detail).into_response()
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let mut response = (self.status, self.body().to_string()).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if self.challenge {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"warren\""),
            );
        }
        if self.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(after) = self.retry_after {
            // Whole seconds, rounded up: a client that waits this long
            // finds the open period over.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}
