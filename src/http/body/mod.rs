//! Reading request bodies within limits, and messages as JSON.
//!
//! - `message`: a message as JSON, in requests and in answers.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::BytesMut;
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

mod message;

pub use message::{JsonMessage, JsonOut};

use super::problem::Problem;
use crate::error::Error;
use crate::message::Message;

/// What every body read shares: the budget of bytes held at once
/// (`http.max_buffered_bytes`) and how long a client may pause
/// (`http.read_timeout`).
pub struct Limits {
    budget: Arc<Semaphore>,
    max_buffered: usize,
    read_timeout: Duration,
}

impl Limits {
    /// The limits of `[http]`.
    pub fn new(http: &crate::config::Listener) -> Self {
        Self {
            budget: Arc::new(Semaphore::new(http.max_buffered_bytes)),
            max_buffered: http.max_buffered_bytes,
            read_timeout: http.read_timeout,
        }
    }

    /// How long a client may pause sending a body.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// Counts `bytes` held against the budget until the permit is dropped
    /// (UNAVAILABLE, 503, past it).
    pub fn hold(&self, bytes: usize) -> Result<OwnedSemaphorePermit, Error> {
        let n = u32::try_from(bytes).unwrap_or(u32::MAX);
        self.budget
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| Error::Unavailable {
                reason: format!(
                    "Warren holds {} bytes of request bodies already (http.max_buffered_bytes)",
                    self.max_buffered
                ),
                retry_after: Some(Duration::from_secs(1)),
                cause: None,
            })
    }

    fn take(&self, bytes: usize, held: &mut Option<OwnedSemaphorePermit>) -> Result<(), Problem> {
        let permit = self.hold(bytes).map_err(Problem::from)?;
        match held {
            Some(h) => h.merge(permit),
            None => *held = Some(permit),
        }
        Ok(())
    }

    /// The answer to a client that paused longer than `http.read_timeout`
    /// (408, and the connection closed).
    pub fn stalled(&self) -> Problem {
        Problem::http(
            StatusCode::REQUEST_TIMEOUT,
            "request-timeout",
            format!(
                "the request body stalled for {} (http.read_timeout)",
                humantime::format_duration(self.read_timeout)
            ),
        )
        .closing()
    }
}

/// The declared `Content-Length`, if any.
pub fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
}

/// The media type of the request (`Content-Type` without parameters, lower
/// case), and the header as given.
pub fn media_type(headers: &HeaderMap) -> (String, &str) {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    (essence, content_type)
}

/// Whether a media type is JSON: `application/json` or `application/*+json`.
pub fn is_json(essence: &str) -> bool {
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// The 415 answer for a body that is not of a type the endpoint takes.
pub fn unsupported(takes: &str, content_type: &str) -> Problem {
    Problem::http(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
        format!("this endpoint takes Content-Type: {takes}, not {content_type:?}"),
    )
}

/// A request body read whole, counted against the budget until dropped.
pub struct Buffered {
    bytes: Bytes,
    _held: Option<OwnedSemaphorePermit>,
}

impl std::ops::Deref for Buffered {
    type Target = Bytes;

    fn deref(&self) -> &Bytes {
        &self.bytes
    }
}

/// Reads the whole body, refusing (413) a declared or actual size over
/// `limit` before buffering more than `limit` bytes, (503) past the budget,
/// and (408) a client that pauses longer than `http.read_timeout`.
pub async fn read(
    limits: &Limits,
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
) -> Result<Buffered, Problem> {
    let too_large = |size| {
        Problem::from(Error::TooLarge {
            what: "message body",
            size,
            limit,
        })
    };
    let declared = declared_length(headers);
    if let Some(size) = declared.filter(|&size| size > limit) {
        return Err(too_large(size));
    }
    let mut held = None;
    // One frame (the usual case) is kept as it is; more are joined.
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    let mut len = 0;
    loop {
        let frame = tokio::time::timeout(limits.read_timeout, body.frame())
            .await
            .map_err(|_| limits.stalled())?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| {
            Problem::from(Error::InvalidArgument(format!(
                "could not read the request body: {e}"
            )))
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if len + data.len() > limit {
            return Err(too_large(len + data.len()));
        }
        limits.take(data.len(), &mut held)?;
        len += data.len();
        match (&mut joined, first.take()) {
            (Some(joined), _) => joined.extend_from_slice(&data),
            (None, None) => first = Some(data),
            (None, Some(head)) => {
                let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).clamp(len, limit));
                buf.extend_from_slice(&head);
                buf.extend_from_slice(&data);
                joined = Some(buf);
            }
        }
    }
    Ok(Buffered {
        bytes: joined.map(BytesMut::freeze).or(first).unwrap_or_default(),
        _held: held,
    })
}

/// Reads a JSON request: `Content-Type` must be `application/json` or a
/// `+json` type (else 415: a browser form cannot post here), then the body
/// within `limit`, then its parse.
pub async fn read_json<T: DeserializeOwned>(
    limits: &Limits,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<(T, Buffered), Problem> {
    let (essence, content_type) = media_type(headers);
    if !is_json(&essence) {
        return Err(unsupported("application/json", content_type));
    }
    let bytes = read(limits, headers, body, limit).await?;
    Ok((json(&bytes)?, bytes))
}

/// Carries W3C trace context from the request's headers into `message`.
pub fn trace(headers: &HeaderMap, message: &mut Message) -> Result<(), Error> {
    let get = |k: &str| headers.get(k).and_then(|v| v.to_str().ok());
    message.set_trace(get("traceparent"), get("tracestate"))
}

/// Parses a JSON request body (an object) with a clear error for each
/// mistake.
pub fn json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    // (serde's derived structs also take an array of their fields in
    // order; a request is an object.)
    if bytes.trim_ascii_start().first() == Some(&b'[') {
        return Err(Error::InvalidArgument(
            "invalid JSON request: expected an object, not an array".into(),
        ));
    }
    serde_json::from_slice(bytes)
        .map_err(|e| Error::InvalidArgument(format!("invalid JSON request: {e}")))
}

/// A nested JSON object as `T`, refusing an array (which serde's derived
/// structs would take as their fields in order).
pub fn object<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::de::Error as _;
    match Option::<Map<String, Value>>::deserialize(d)? {
        None => Ok(None),
        Some(map) => serde_json::from_value(Value::Object(map))
            .map(Some)
            .map_err(D::Error::custom),
    }
}

/// How much larger than its body a JSON request may be: base64 grows bytes by
/// 4/3 and JSON escapes can grow text up to 6 times; the decoded body is then
/// held to the exact limit.
pub fn json_limit(max_body: usize) -> usize {
    max_body.saturating_mul(2).saturating_add(64 * 1024)
}

/// Integers as JSON Schema has them: `3` and `3.0` alike (a client whose
/// JSON writes every number as a float is not refused), out of range or
/// fractional numbers refused.
pub mod whole {
    use serde::de::Error as _;
    use serde::{Deserialize, Deserializer};

    /// Largest float that is still a whole number exactly (2^53).
    const MAX_EXACT: f64 = 9_007_199_254_740_992.0;

    pub fn deserialize<'de, D, T>(d: D) -> Result<T, D::Error>
    where
        D: Deserializer<'de>,
        T: TryFrom<u64> + TryFrom<i64>,
    {
        let n = serde_json::Number::deserialize(d)?;
        let out_of_range = || D::Error::custom(format!("{n} is out of range"));
        if let Some(u) = n.as_u64() {
            return T::try_from(u).map_err(|_| out_of_range());
        }
        if let Some(i) = n.as_i64() {
            return T::try_from(i).map_err(|_| out_of_range());
        }
        match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() <= MAX_EXACT => {
                T::try_from(f as i64).map_err(|_| out_of_range())
            }
            _ => Err(D::Error::custom(format!("{n} is not a whole number"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_is_an_object_not_an_array() {
        #[derive(Debug, Deserialize)]
        struct Ids {
            #[allow(dead_code)]
            ids: Vec<String>,
        }
        assert!(json::<Ids>(br#"{"ids": ["a"]}"#).is_ok());
        assert!(
            serde_json::from_slice::<Ids>(br#"[["a"]]"#).is_ok(),
            "serde would"
        );
        assert!(matches!(
            json::<Ids>(b" [[\"a\"]]"),
            Err(Error::InvalidArgument(_))
        ));
    }
}
